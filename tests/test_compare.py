"""analysis.compare: verdicts that hold up statistically, exact modelled diffs, clear refusals."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pyperf
import pytest

from pinning.analysis.compare import (
    SIGNIFICANT,
    VERDICTS,
    Comparison,
    compare_files,
    main,
    parse_threshold,
)
from pinning.analysis.results import load_results
from pinning.model.names import InputError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "quick-sample.json"
REFERENCE = ROOT / "results" / "quick-reference.json"
NAME = "startup/upfront/4GiB/4k"


def metadata(name: str = NAME, **extra: object) -> dict[str, object]:
    """Metadata shaped like a real startup benchmark's."""
    pages = 4 * 2**18
    md: dict[str, object] = {
        "name": name, "unit": "second", "date": "2026-01-01 00:00:00",
        "pinbench.schema": 1, "pinbench.suite": "quick", "pinbench.family": "startup",
        "pinbench.version": "0.1.0", "cost.profile": "default", "hostname": "testhost",
        "param.workload": "startup", "param.strategy": "upfront",
        "param.guest_size": 4 * 2**30, "param.level": "4k", "measured.phases": "startup",
        "events.startup.pins": pages, "events.startup.npf_exits": 0,
        "events.startup.metadata_bytes": 8 * pages,
        "model.startup_ns": 662.0 * pages, "model.total_ns": 662.0 * pages,
        "model.measured_ns": 662.0 * pages,
    }
    md.update(extra)
    return md


def draw(seed: int, runs: int, per_run: int, scale: float = 1e-3, sigma: float = 0.05
         ) -> list[list[float]]:
    """``runs`` x ``per_run`` right-skewed timings (lognormal around ``scale`` seconds)."""
    rng = np.random.default_rng(seed)
    return [list(scale * rng.lognormal(0.0, sigma, per_run)) for _ in range(runs)]


def write(path: Path, benches: list[tuple[str, list[list[float]], dict[str, object]]],
          warmup: float | None = None) -> Path:
    """A pyperf results file: per benchmark its name, values per run and metadata."""
    suite = None
    for name, runs, md in benches:
        bench = pyperf.Benchmark([
            pyperf.Run(values, warmups=[(1, warmup)] if warmup else None,
                       metadata={**md, "name": name}, collect_metadata=False)
            for values in runs])
        if suite is None:
            suite = pyperf.BenchmarkSuite([bench])
        else:
            suite.add_benchmark(bench)
    assert suite is not None
    suite.dump(str(path), replace=True)
    return path


def pair(tmp_path: Path, base_runs: list[list[float]], head_runs: list[list[float]],
         base_md: dict[str, object] | None = None, head_md: dict[str, object] | None = None
         ) -> tuple[Path, Path]:
    base = write(tmp_path / "base.json", [(NAME, base_runs, base_md or metadata())])
    head = write(tmp_path / "head.json", [(NAME, head_runs, head_md or metadata())])
    return base, head


def only_row(c: Comparison) -> dict[str, object]:
    assert len(c.rows) == 1
    return c.rows.iloc[0].to_dict()


# ---- the verdicts -----------------------------------------------------------------------------
def test_fast_run_against_default_run_is_no_change(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # pyperf compare_to calls any pair of samples of different lengths significant;
    # here 60 values (20 runs x 3) against 6 (3 runs x 2, --fast style), same distribution.
    # Each run also carries a 10x warmup that must not count as a value.
    names = [NAME, "startup/demand/4GiB/4k", "teardown/upfront/8GiB/4k"]
    base = write(tmp_path / "default.json",
                 [(n, draw(10 + i, 20, 3, scale=10.0**-(i + 2)), metadata(n))
                  for i, n in enumerate(names)], warmup=1.0)
    head = write(tmp_path / "fast.json",
                 [(n, draw(20 + i, 3, 2, scale=10.0**-(i + 2)), metadata(n))
                  for i, n in enumerate(names)], warmup=1.0)
    c = compare_files(base, head)
    assert list(c.rows["name"]) == names
    assert (c.rows["base_n"] == 60).all() and (c.rows["head_n"] == 6).all()
    assert (c.rows["verdict"] == "no significant change").all(), c.rows
    assert not c.rows["gates"].any()
    assert ((c.rows["ratio_lo"] < 1) & (c.rows["ratio_hi"] > 1)).all()
    assert (c.rows["ratio_hi"] - c.rows["ratio_lo"] > 0.02).all()  # wide: only 6 values
    assert c.exit_status() == 0
    assert main(base, head) == 0
    assert "no significant change" in capsys.readouterr().out


def test_false_positive_rate_with_unequal_sizes(tmp_path: Path) -> None:
    # 100 benchmarks, each 60 values against 6 from one distribution: at alpha = 0.05 the
    # verdicts may be wrong for about 5 % of them, not for all of them.
    names = [f"startup/upfront/{i + 1}GiB/4k" for i in range(100)]
    base = write(tmp_path / "b.json", [(n, draw(1000 + i, 20, 3, sigma=0.1), metadata(n))
                                       for i, n in enumerate(names)])
    head = write(tmp_path / "h.json", [(n, draw(2000 + i, 3, 2, sigma=0.1), metadata(n))
                                       for i, n in enumerate(names)])
    c = compare_files(base, head, n_boot=500)
    wrong = int(c.rows["verdict"].isin(SIGNIFICANT).sum())
    assert wrong <= 8, c.rows[c.rows["verdict"].isin(SIGNIFICANT)]
    assert c.geomean_lo < 1 < c.geomean_hi
    # a long suite's Markdown keeps the changes in view and folds the full table
    md = c.format("md")
    assert "<details><summary>All 100 benchmarks</summary>" in md
    assert md.count("| startup/upfront/") == 100 + wrong


def test_real_slowdown_is_slower_and_gates(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    base, head = pair(tmp_path, draw(1, 20, 3), draw(2, 20, 3, scale=1.2e-3))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["verdict"] == "slower" and row["gates"]
    assert 1.15 < row["ratio"] < 1.25
    assert 1 < row["ratio_lo"] < row["ratio"] < row["ratio_hi"]
    assert row["p_value"] < 1e-6
    assert c.exit_status() == 1 and c.gating == [NAME]
    assert main(base, head) == 1
    out = capsys.readouterr().out
    assert "slower (GATES)" in out and "Result: FAIL" in out
    # the same files swapped: the exact inverse ratio, the same p-value, faster
    s = only_row(compare_files(head, base))
    assert s["verdict"] == "faster" and not s["gates"]
    assert math.isclose(s["ratio"], 1 / row["ratio"])
    assert math.isclose(s["p_value"], row["p_value"])


def test_real_speedup_is_faster_and_passes(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(3, 20, 3), draw(4, 20, 3, scale=0.8e-3))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["verdict"] == "faster" and not row["gates"]
    assert row["ratio_lo"] < row["ratio"] < row["ratio_hi"] < 1
    assert c.exit_status() == 0


def test_small_slowdown_below_threshold_does_not_gate(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(5, 20, 3, sigma=0.01),
                      draw(6, 20, 3, scale=1.03e-3, sigma=0.01))
    c = compare_files(base, head, threshold=0.05)
    row = only_row(c)
    assert row["verdict"] == "slower"  # real and detected ...
    assert 1.02 < row["ratio"] < 1.04
    assert not row["gates"] and c.exit_status() == 0  # ... but within the 5 % allowed
    strict = compare_files(base, head, threshold=0.02)
    assert only_row(strict)["gates"] and strict.exit_status() == 1


def least_processes(alpha: float, m: int) -> int:
    """The least n per side whose complete separation, 2 / C(2n, n) (the exact two-sided
    Mann-Whitney p), passes Holm's first step alpha / m -- written out independently."""
    n = 1
    while 2 / math.comb(2 * n, n) >= alpha / m:
        n += 1
    return n


def test_too_few_values_cannot_tell_and_say_how_many_are_needed(tmp_path: Path) -> None:
    # 3 values against 3: Mann-Whitney's smallest two-sided p is 0.1, so even a 2x
    # slowdown cannot be significant: the verdict says so, not "no significant change".
    base, head = pair(tmp_path, draw(7, 1, 3), draw(8, 1, 3, scale=2e-3))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["ratio"] > 1.8 and math.isclose(row["p_value"], 0.1)
    assert math.isclose(row["min_p"], 0.1) and not row["reachable"]
    assert row["verdict"] == "cannot tell" and c.exit_status() == 0
    assert row["needed_processes"] == least_processes(0.05, 1) == 4
    text = c.format("text")
    assert "cannot tell (needs >= 4 processes per side)" in text
    assert "no significant change" not in text.split("Result:")[0]


def process_draw(seed: int, runs: int, per_run: int, between: float, within: float = 0.01,
                 scale: float = 1e-3) -> list[list[float]]:
    """Timings whose processes differ by a lognormal offset of sigma ``between`` (the noise
    of this kind of machine) while values within a process differ by only ``within``."""
    rng = np.random.default_rng(seed)
    return [list(scale * rng.lognormal(0.0, between) * rng.lognormal(0.0, within, per_run))
            for _ in range(runs)]


def test_between_process_noise_is_not_significant(tmp_path: Path) -> None:
    # A/A with 30 % process-to-process noise and 1 % within: the process is the unit, so
    # about alpha of the benchmarks come out significant. Pooling the same values as if
    # from one process each (the naive test) calls most of them significant.
    names = [f"startup/upfront/{i + 1}GiB/4k" for i in range(40)]
    b_runs = [process_draw(100 + i, 4, 5, between=0.3) for i in range(40)]
    h_runs = [process_draw(200 + i, 4, 5, between=0.3) for i in range(40)]
    base = write(tmp_path / "b.json", [(n, r, metadata(n))
                                       for n, r in zip(names, b_runs, strict=True)])
    head = write(tmp_path / "h.json", [(n, r, metadata(n))
                                       for n, r in zip(names, h_runs, strict=True)])
    c = compare_files(base, head, n_boot=500)
    assert (c.rows["unit"] == "process").all()
    assert (c.rows["base_runs"] == 4).all() and (c.rows["base_n"] == 20).all()
    raw = int((c.rows["p_value"] < 0.05).sum())
    assert raw <= 6, c.rows  # about alpha of 40 before adjustment
    # 4 against 4 cannot pass Holm over 40 (2/70 > 0.05/40): none could be flagged
    assert not c.rows["verdict"].isin(SIGNIFICANT).any()
    assert (c.rows["verdict"] == "cannot tell").all()
    assert (c.rows["needed_processes"] == least_processes(0.05, 40)).all()
    assert c.exit_status() == 0
    assert not any("pooled" in n for n in c.notes)

    pooled_b = write(tmp_path / "pb.json", [(n, [[v for run in r for v in run]], metadata(n))
                                            for n, r in zip(names, b_runs, strict=True)])
    pooled_h = write(tmp_path / "ph.json", [(n, [[v for run in r for v in run]], metadata(n))
                                            for n, r in zip(names, h_runs, strict=True)])
    naive = compare_files(pooled_b, pooled_h, n_boot=500)
    assert (naive.rows["unit"] == "value").all()
    assert int((naive.rows["p_value"] < 0.05).sum()) >= 4 * max(raw, 3)
    assert naive.rows["verdict"].isin(SIGNIFICANT).sum() >= 3  # even after Holm
    note = next(n for n in naive.notes if "single worker process" in n and "pooled" in n)
    assert "not in their intervals" in note and "overconfident" not in note
    assert "cannot" not in note  # 20 values a side can reach significance


def test_slowdown_of_every_process_is_detected_with_4_vs_4(tmp_path: Path) -> None:
    base, head = pair(tmp_path, process_draw(1, 4, 5, between=0.05),
                      process_draw(2, 4, 5, between=0.05, scale=1.5e-3))
    row = only_row(compare_files(base, head))
    assert row["unit"] == "process" and (row["base_runs"], row["head_runs"]) == (4, 4)
    assert math.isclose(row["p_value"], 2 / math.comb(8, 4))  # complete separation
    assert row["verdict"] == "slower" and row["gates"]
    assert 1 < row["ratio_lo"] < row["ratio"] < row["ratio_hi"]
    assert "4x5" in compare_files(base, head).format("text")


def test_three_processes_a_side_cannot_gate_and_say_so(tmp_path: Path) -> None:
    base, head = pair(tmp_path, process_draw(3, 3, 5, between=0.01),
                      process_draw(4, 3, 5, between=0.01, scale=2e-3))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["ratio"] > 1.9 and math.isclose(row["p_value"], 0.1)
    assert row["verdict"] == "cannot tell" and c.exit_status() == 0
    assert row["needed_processes"] == 4 and math.isinf(row["mde"])
    design = c.design_lines()
    assert len(design) == 1 and "3x5 against 3x5" in design[0]
    assert "no change can be significant" in design[0]


def test_holm_adjustment() -> None:
    from pinning.analysis.compare import holm

    adj = holm(np.array([0.01, 0.04, 0.03, np.nan]))
    assert np.allclose(adj[:3], [0.03, 0.06, 0.06]) and np.isnan(adj[3])
    assert holm(np.array([0.5, 0.9])).tolist() == [1.0, 1.0]


def test_one_slowdown_among_many_still_gates_with_8_processes(tmp_path: Path) -> None:
    # Holm over 20 benchmarks needs p < 0.0025 for the smallest: 8 processes a side reach it
    names = [f"teardown/demand/{i + 1}GiB/4k" for i in range(20)]
    base = write(tmp_path / "b.json", [(n, process_draw(300 + i, 8, 3, between=0.05),
                                        metadata(n)) for i, n in enumerate(names)])
    head = write(tmp_path / "h.json", [
        (n, process_draw(400 + i, 8, 3, between=0.05, scale=1.3e-3 if i == 7 else 1e-3),
         metadata(n)) for i, n in enumerate(names)])
    c = compare_files(base, head)
    assert c.gating == [names[7]]
    row = c.rows.set_index("name").loc[names[7]]
    assert row["p_holm"] < 0.05 and row["p_holm"] >= row["p_value"]


def test_two_stage_bootstrap_keeps_each_process_length() -> None:
    from pinning.analysis.compare import _boot_runs

    # one process of a single value 1.0, one of many values 3.0: every replicate's
    # per-process medians are 1 or 3, so their median is 1, 2 or 3
    runs = [np.array([1.0]), np.full(9, 3.0)]
    reps = _boot_runs(runs, 400, np.random.default_rng(0))
    assert set(np.unique(reps)) == {1.0, 2.0, 3.0}
    # within-process resampling: a process of spread values gives spread replicates
    spread = [np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])]
    reps = _boot_runs(spread, 400, np.random.default_rng(0))
    assert reps.min() < 2.0 < reps.max()


def test_geomean_and_deterministic_intervals(tmp_path: Path) -> None:
    names = ["a/slow", "b/fast", "c/same"]
    scales = [1.2e-3, 0.8e-3, 1e-3]
    base = write(tmp_path / "b.json", [(n, draw(30 + i, 10, 3), metadata(n))
                                       for i, n in enumerate(names)])
    head = write(tmp_path / "h.json", [(n, draw(40 + i, 10, 3, scale=s), metadata(n))
                                       for i, (n, s) in enumerate(zip(names, scales,
                                                                      strict=True))])
    c = compare_files(base, head)
    assert list(c.rows["verdict"]) == ["slower", "faster", "no significant change"]
    assert math.isclose(c.geomean, float(np.prod(c.rows["ratio"])) ** (1 / 3))
    assert c.geomean_lo < c.geomean < c.geomean_hi
    assert c.geomean_hi - c.geomean_lo < 0.05
    again = compare_files(base, head)
    assert again.rows.equals(c.rows) and again.geomean_lo == c.geomean_lo
    other = compare_files(base, head, seed=1)
    assert not np.array_equal(other.rows["ratio_lo"], c.rows["ratio_lo"])
    # a benchmark's interval does not depend on which other benchmarks the files hold
    sub_b = write(tmp_path / "sb.json", [(names[2], draw(32, 10, 3), metadata(names[2]))])
    sub_h = write(tmp_path / "sh.json", [(names[2], draw(42, 10, 3), metadata(names[2]))])
    sub = only_row(compare_files(sub_b, sub_h))
    assert (sub["ratio_lo"], sub["ratio_hi"]) == tuple(c.rows.iloc[2][["ratio_lo", "ratio_hi"]])


# ---- what a comparison can see ----------------------------------------------------------------
def suite_files(tmp_path: Path, n: int, base_draw, head_draw) -> tuple[Path, Path, list[str]]:
    """n benchmarks; ``base_draw(i)`` / ``head_draw(i)`` give benchmark i's runs."""
    names = [f"startup/upfront/{i + 1}GiB/4k" for i in range(n)]
    base = write(tmp_path / "b.json", [(nm, base_draw(i), metadata(nm))
                                       for i, nm in enumerate(names)])
    head = write(tmp_path / "h.json", [(nm, head_draw(i), metadata(nm))
                                       for i, nm in enumerate(names)])
    return base, head, names


def test_two_quick_runs_cannot_tell_and_say_how_many_processes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The quick suite's design: 36 benchmarks, 1 process x 5 values a side (pooled). Even
    # a 2x slowdown of one benchmark (complete separation) gives p = 2/252 = 0.0079, 0.286
    # after Holm over 36: no change can be flagged, and the output must say so.
    base, head, names = suite_files(
        tmp_path, 36, lambda i: draw(500 + i, 1, 5),
        lambda i: draw(600 + i, 1, 5, scale=2e-3 if i == 0 else 1e-3))
    c = compare_files(base, head)
    row = c.rows.set_index("name").loc[names[0]]
    assert math.isclose(row["p_value"], 2 / math.comb(10, 5))
    assert math.isclose(row["p_holm"], 36 * 2 / math.comb(10, 5))
    needed = least_processes(0.05, 36)
    assert needed == 7
    assert (c.rows["verdict"] == "cannot tell").all()
    assert (c.rows["needed_processes"] == needed).all() and not c.rows["reachable"].any()
    assert np.isinf(c.rows["mde"]).all()
    assert math.isclose(c.alpha_holm, 0.05 / 36) and c.needed_processes == needed
    assert c.exit_status() == 0  # exit semantics unchanged: nothing gates
    assert main(base, head) == 0
    out = capsys.readouterr().out
    row_line = next(ln for ln in out.splitlines() if ln.startswith(names[0] + " "))
    assert row_line.endswith(f"cannot tell (needs >= {needed} processes per side)")
    design = [ln for ln in out.splitlines() if ln.startswith("Design:")]
    assert len(design) == 1  # one line says it for the whole suite
    assert "1x5 against 1x5" in design[0] and "0.0079" in design[0]
    assert f"0.05/36 = {0.05 / 36:.4f}" in design[0]
    result = out.splitlines()[-1]
    assert result.startswith("Result: CANNOT TELL") and f"needs >= {needed}" in result
    assert "no significant change" not in row_line
    note = next(n for n in c.notes if "pooled" in n)
    assert "overconfident" not in note and "not in their intervals" in note
    assert "none of them can reach significance after Holm over 36" in note
    md = c.format("md")
    assert md.startswith("### ⚠️ pinbench compare — CANNOT TELL")
    doc = json.loads(c.format("json"))
    assert doc["measured"]["reachable"] is False
    assert doc["measured"]["needed_processes"] == needed
    assert doc["measured"]["rows"][0]["mde"] is None  # infinite: nothing detectable


def test_six_processes_a_side_detect_a_30_percent_slowdown(tmp_path: Path) -> None:
    base, head = pair(tmp_path, process_draw(21, 6, 3, between=0.05),
                      process_draw(22, 6, 3, between=0.05, scale=1.3e-3))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["reachable"] and math.isclose(row["min_p"], 2 / math.comb(12, 6))
    assert row["verdict"] == "slower" and row["gates"]
    assert 1 < row["mde"] < row["ratio"]  # detected, so it was above what can be seen
    assert row["mde_faster"] < 1
    assert "slower (GATES)" in c.format("text")


def quantile_draw(runs: int, between: float, offset: float, scale: float = 1e-3
                  ) -> list[list[float]]:
    """``runs`` processes whose log medians sit at the normal quantiles (i + offset) / runs
    with sigma ``between``: the same spread whatever the number of processes."""
    from scipy.stats import norm

    return [[scale * math.exp(between * norm.ppf((i + offset) / runs)) * f
             for f in (0.995, 1.0, 1.005)] for i in range(runs)]


def test_mde_shrinks_as_processes_grow(tmp_path: Path) -> None:
    # An A/A of processes spread by 10 % (the same spread at every n): the smallest
    # detectable slowdown falls as the number of processes per side grows.
    mdes, fasters = [], []
    for n in (4, 8, 16, 32):
        sub = tmp_path / str(n)
        sub.mkdir()
        base, head = pair(sub, quantile_draw(n, 0.1, 0.25), quantile_draw(n, 0.1, 0.75))
        row = only_row(compare_files(base, head, n_boot=1000))
        assert row["reachable"] and row["verdict"] == "no significant change"
        mdes.append(row["mde"])
        fasters.append(row["mde_faster"])
    assert all(a > b for a, b in itertools.pairwise(mdes)), mdes
    assert all(a < b for a, b in itertools.pairwise(fasters)), fasters
    assert mdes[-1] < 1.1 < 1.2 < mdes[0]  # 4 a side need complete separation
    # fewer than 4 a side: nothing is detectable
    base, head = pair(tmp_path, quantile_draw(3, 0.1, 0.25), quantile_draw(3, 0.1, 0.75))
    assert math.isinf(only_row(compare_files(base, head))["mde"])


def test_mde_is_where_a_shift_of_the_same_data_becomes_significant(tmp_path: Path) -> None:
    # Move head's processes so that the ratio of medians is just above / below the MDE:
    # above, the benchmark is flagged; below, it is not.
    b_runs = process_draw(31, 8, 3, between=0.08)
    h_runs = process_draw(32, 8, 3, between=0.08)
    base, head = pair(tmp_path, b_runs, h_runs)
    row = only_row(compare_files(base, head))
    b_med = float(np.median([np.median(r) for r in b_runs]))
    h_med = float(np.median([np.median(r) for r in h_runs]))
    for factor, flagged in ((1.002, True), (0.998, False)):
        scale = row["mde"] * factor * b_med / h_med
        sub = tmp_path / str(factor)
        sub.mkdir()
        moved = pair(sub, b_runs, [[v * scale for v in r] for r in h_runs])
        verdict = only_row(compare_files(*moved))["verdict"]
        assert (verdict == "slower") is flagged, (factor, verdict, row["mde"])


def test_geomean_verdict_of_a_suite_wide_shift(tmp_path: Path) -> None:
    # 12 benchmarks of 4 processes a side: none alone can pass Holm over 12 (2/70 > 0.05/12),
    # but every one 15 % slower is a suite-wide slowdown the geometric mean shows.
    base, head, _ = suite_files(
        tmp_path, 12, lambda i: process_draw(900 + i, 4, 3, between=0.05),
        lambda i: process_draw(950 + i, 4, 3, between=0.05, scale=1.15e-3))
    c = compare_files(base, head)
    assert (c.rows["verdict"] == "cannot tell").all()
    assert c.geo.verdict == "slower" and 1 < c.geomean_lo < c.geomean < c.geomean_hi
    assert c.geo.reachable and 1 < c.geo.mde < c.geomean
    assert "two-stage bootstrap over its processes" in c.geo.method
    assert c.exit_status() == 0  # the geometric mean does not gate
    text = c.format("text")
    assert f"[{c.geomean_lo:.3f}, {c.geomean_hi:.3f}]" in text
    assert "geometric mean +" in text.splitlines()[-1] and ": slower;" in text.splitlines()[-1]
    doc = json.loads(c.format("json"))["measured"]
    assert doc["geomean_verdict"] == "slower" and doc["geomean_lo"] == c.geomean_lo
    assert doc["geomean_mde"] == c.geo.mde
    # the same design without the shift
    same = tmp_path / "aa"
    same.mkdir()
    aa_b, aa_h, _ = suite_files(
        same, 12, lambda i: process_draw(900 + i, 4, 3, between=0.05),
        lambda i: process_draw(950 + i, 4, 3, between=0.05))
    aa = compare_files(aa_b, aa_h)
    assert aa.geo.verdict == "no significant change"
    assert aa.geomean_lo < 1 < aa.geomean_hi


def test_geomean_of_pooled_runs_resamples_benchmarks(tmp_path: Path) -> None:
    # The case: two quick runs (1 process x 5 values a side), every benchmark about
    # 28 % slower, processes differing by 10 %. No benchmark can be flagged; the geometric
    # mean, bootstrapped over the 36 benchmarks (each its own pair of processes), can.
    base, head, _ = suite_files(
        tmp_path, 36, lambda i: process_draw(1100 + i, 1, 5, between=0.1),
        lambda i: process_draw(1200 + i, 1, 5, between=0.1, scale=1.28e-3))
    c = compare_files(base, head)
    assert (c.rows["verdict"] == "cannot tell").all()
    assert c.geo.verdict == "slower" and c.geo.pairs == 36
    assert "over the benchmarks" in c.geo.method
    # its width is that of a mean over 36 benchmarks' log ratios (normal approximation),
    # not of the values' 1 % spread within a process
    logs = np.log(c.rows["ratio"].to_numpy(float))
    expected = 2 * 1.96 * logs.std(ddof=1) / math.sqrt(36)
    assert 0.75 * expected < math.log(c.geomean_hi / c.geomean_lo) < 1.25 * expected


def test_geomean_cannot_tell_from_one_pooled_benchmark(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(41, 1, 20), draw(42, 1, 20, scale=1.5e-3))
    c = compare_files(base, head)
    assert only_row(c)["verdict"] == "slower"  # its 20 values can: they say so in a note
    assert c.geo.verdict == "cannot tell"  # one pair of processes cannot speak for the suite
    # a sign test needs 6 pairs (2/2**6 < 0.05 <= 2/2**5); 4 processes a side suffice here
    assert c.geo.pairs == 1 and c.geo.pairs_needed == 6 and c.geo.needed_processes == 4
    assert "cannot tell (needs >= 4 processes per side)" in c.format("text")


def test_every_verdict_is_counted_in_the_result_line(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(7, 1, 3), draw(8, 1, 3))
    last = compare_files(base, head).format("text").splitlines()[-1]
    assert all(f" {v}" in last for v in VERDICTS)


# ---- modelled metadata ------------------------------------------------------------------------
def test_model_change_is_reported_and_gates_only_on_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head_md = metadata(**{"events.startup.pins": 4 * 2**18 - 1, "model.remap_ns": 5.0})
    base, head = pair(tmp_path, draw(9, 5, 3), draw(9, 5, 3), head_md=head_md)
    c = compare_files(base, head)
    assert only_row(c)["verdict"] == "no significant change"
    assert c.model_changes.to_dict("records") == [
        {"name": NAME, "key": "events.startup.pins", "base": 1048576, "head": 1048575},
        {"name": NAME, "key": "model.remap_ns", "base": None, "head": 5.0},
    ]
    assert c.exit_status() == 0
    assert c.exit_status(fail_on_model_change=True) == 1
    assert main(base, head, fail_on_model_change=True) == 1
    out = capsys.readouterr().out
    assert "events.startup.pins" in out and "1048575" in out and "(absent)" in out
    assert "Result: FAIL: 2 modelled values changed" in out
    assert main(base, head) == 0
    assert "does not gate" in capsys.readouterr().out


def test_model_changes_come_first_with_their_relative_size(tmp_path: Path) -> None:
    pins = 4 * 2**18
    head_md = metadata(**{"events.startup.pins": int(pins * 1.032),
                          "model.startup_ns": 662.0 * pins * 0.5, "model.remap_ns": 5.0})
    base, head = pair(tmp_path, draw(9, 5, 3), draw(10, 5, 3), head_md=head_md)
    c = compare_files(base, head)
    text = c.format("text")
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith(NAME))
    timed = next(i for i, ln in enumerate(lines) if ln.startswith("SIMULATOR SPEED"))
    assert lines[2].startswith("MODELLED") and first < timed
    change = {ln.split()[1]: ln.split()[-2:] for ln in lines[:timed] if ln.startswith(NAME)}
    assert change["events.startup.pins"] == ["+3.2", "%"]
    assert change["model.startup_ns"] == ["-50", "%"]
    assert change["model.remap_ns"][-1] == "added"
    md = c.format("md")
    assert md.index("| events.startup.pins |") < md.index("#### Simulator speed")
    assert "| +3.2 % |" in md and "| -50 % |" in md
    rel = {r["key"]: r["relative"] for r in json.loads(c.format("json"))["modelled"]
           ["model_changes"]}
    assert rel == {"events.startup.pins": pytest.approx(0.032, abs=1e-6),
                   "model.startup_ns": -0.5, "model.remap_ns": None}


def test_identical_metadata_is_no_model_change(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(11, 5, 3), draw(12, 5, 3))
    c = compare_files(base, head)
    assert c.model_changes.empty
    assert list(c.model_changes.columns) == ["name", "key", "base", "head"]
    assert c.exit_status(fail_on_model_change=True) == 0


# ---- files --------------------------------------------------------------------------------------
def test_benchmarks_in_one_file_only_are_listed(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", [(NAME, draw(1, 3, 3), metadata()),
                                       ("gone/x", draw(2, 3, 3), metadata("gone/x"))])
    head = write(tmp_path / "h.json", [("new/y", draw(3, 3, 3), metadata("new/y")),
                                       (NAME, draw(4, 3, 3), metadata())])
    c = compare_files(base, head)
    assert list(c.rows["name"]) == [NAME]
    assert c.only_base == ["gone/x"] and c.only_head == ["new/y"]
    text = c.format("text")
    assert "Only in base (1): gone/x" in text and "Only in head (1): new/y" in text


def refused(base: Path, head: Path) -> str:
    with pytest.raises(InputError) as info:
        compare_files(base, head)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_refuses_different_suites(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(1, 3, 3), draw(2, 3, 3),
                      head_md=metadata(**{"pinbench.suite": "full"}))
    msg = refused(base, head)
    assert str(base) in msg and str(head) in msg and "'quick'" in msg and "'full'" in msg


def test_other_schema_compares_measured_and_lists_one_modelled_change(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(1, 3, 3), draw(2, 3, 3),
                      head_md=metadata(**{"pinbench.schema": 2}))
    c = compare_files(base, head)
    assert c.rows["ratio"].notna().all()  # measured: compared
    assert c.model_changes[["key", "base", "head"]].values.tolist() == [
        ["pinbench.schema", "1", "2"]]
    assert any("counting rules differ" in n for n in c.notes)
    assert c.exit_status(fail_on_model_change=True) == 1


def test_refuses_unknown_schema_version(tmp_path: Path) -> None:
    base, head = pair(tmp_path, draw(1, 3, 3), draw(2, 3, 3),
                      head_md=metadata(**{"pinbench.schema": 99}))
    msg = refused(base, head)
    assert str(head) in msg and "schema version 99" in msg


def test_refuses_no_common_benchmark(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", [("a/x", draw(1, 3, 3), metadata("a/x"))])
    head = write(tmp_path / "h.json", [("b/y", draw(2, 3, 3), metadata("b/y"))])
    msg = refused(base, head)
    assert "no benchmark in common" in msg and str(base) in msg and str(head) in msg


def test_refuses_non_pinbench_files(tmp_path: Path) -> None:
    good = write(tmp_path / "good.json", [(NAME, draw(1, 3, 3), metadata())])
    plain = tmp_path / "plain.json"
    plain.write_text('{"x": 1}')
    assert "not a pyperf results file" in refused(good, plain)
    other = write(tmp_path / "other.json", [(NAME, draw(1, 3, 3), {"unit": "second"})])
    assert "not a pinbench results file" in refused(other, good)
    assert "no such results file" in refused(good, tmp_path / "missing.json")
    with pytest.raises(InputError):
        main(good, tmp_path / "missing.json")


def test_real_results_files() -> None:
    same = compare_files(REFERENCE, REFERENCE)
    n = len(load_results(REFERENCE))
    assert n >= 36 and len(same.rows) == n and not same.only_base and not same.only_head
    # one process x 3 values a side, pooled: 2/20 cannot pass 0.05/n
    assert (same.rows["ratio"] == 1).all() and (same.rows["verdict"] == "cannot tell").all()
    assert (same.rows["needed_processes"] == least_processes(0.05, n)).all()
    assert same.geo.verdict == "no significant change" and same.geomean_lo == 1
    assert same.model_changes.empty and same.geomean == 1 and same.exit_status(True) == 0
    # the older sample is results schema 1 (the reference 2): the timed values of the
    # benchmarks both have are compared, the modelled ones as one change of the counting
    # rules; the quick suite changed since (gmem, 4 GiB fault storms), so some are new
    common = set(load_results(SAMPLE)["name"]) & set(load_results(REFERENCE)["name"])
    c = compare_files(SAMPLE, REFERENCE)
    assert len(common) >= 8 and {"startup/upfront/64GiB/4k", "startup/demand/4GiB/4k"} <= common
    assert c.suite == "quick" and len(c.rows) == len(common)
    assert len(c.only_head) == n - len(common)
    assert c.rows["ratio"].notna().all()
    assert c.model_changes[["key", "base", "head"]].values.tolist() == [
        ["pinbench.schema", "1", "2"]]
    assert any("counting rules differ" in n for n in c.notes)
    assert any("cost.npf_exit_ns 2000.0 → 560.0" in n for n in c.notes)
    assert c.exit_status(fail_on_model_change=True) == 1


# ---- output ------------------------------------------------------------------------------------
@pytest.fixture
def slow(tmp_path: Path) -> Comparison:
    base = write(tmp_path / "b.json", [(NAME, draw(1, 20, 3), metadata()),
                                       ("a|b", draw(2, 20, 3), metadata("a|b"))])
    head = write(tmp_path / "h.json", [
        (NAME, draw(3, 20, 3, scale=1.3e-3), metadata(**{"events.startup.pins": 7})),
        ("a|b", draw(4, 20, 3), metadata("a|b"))])
    return compare_files(base, head)


def test_text_output(slow: Comparison) -> None:
    text = slow.format("text")
    lines = text.splitlines()
    assert "SIMULATOR SPEED" in text and "MODELLED" in text
    assert text.index("MODELLED") < text.index("SIMULATOR SPEED")  # exact changes first
    assert "Mann-Whitney U" in text and "95 % two-stage bootstrap CI" in text
    assert "ratio of medians exceeds 1.05 (threshold 5 %)" in text
    at = next(i for i, ln in enumerate(lines) if ln.startswith("benchmark ") and "verdict" in ln)
    header = lines[at]
    row = next(ln for ln in lines[at:] if ln.startswith(NAME))
    assert row.index("slower (GATES)") == header.index("verdict")  # aligned columns
    assert lines[-1].startswith("Result: FAIL: 1 benchmark significantly slower")
    assert lines[-1].endswith("(exit 1)")


def test_markdown_output(slow: Comparison) -> None:
    md = slow.format("md", fail_on_model_change=True)
    lines = md.splitlines()
    assert lines[0].startswith("### ❌ pinbench compare — FAIL: 1 benchmark")
    assert "#### Simulator speed" in md and "#### Modelled" in md
    assert md.index("#### Modelled") < md.index("#### Simulator speed")
    assert "Mann-Whitney U" in md and "threshold 5 %" in md
    timed = md.index("#### Simulator speed")
    table = [ln for ln in md[timed:].splitlines() if ln.startswith("| ")]
    assert table[0].startswith("| benchmark | base median |")
    assert set(table[1].replace("|", "").split()) == {"---", "--:"}
    assert sum(NAME in ln and "🔴 slower (GATES)" in ln for ln in table) == 1
    assert any(ln.startswith("| a\\|b |") for ln in table)  # a pipe cannot break the table
    assert all(ln.count(" | ") == table[0].count(" | ") for ln in table[:4])
    assert "`--fail-on-model-change`" in md and "events.startup.pins" in md


def test_json_output(slow: Comparison) -> None:
    doc = json.loads(slow.format("json"))
    assert doc["base"].endswith("b.json") and doc["head"].endswith("h.json")
    assert doc["threshold"] == 0.05 and doc["exit_status"] == 1
    assert "Mann-Whitney" in doc["measured"]["test"] and doc["measured"]["unit"] == "second"
    rows = {r["name"]: r for r in doc["measured"]["rows"]}
    assert rows[NAME]["verdict"] == "slower" and rows[NAME]["gates"] is True
    assert rows[NAME]["base_n"] == 60
    assert set(rows[NAME]) == set(slow.rows.columns)
    assert doc["measured"]["gating"] == [NAME]
    assert doc["measured"]["geomean_lo"] <= doc["measured"]["geomean"]
    assert doc["modelled"]["model_changes"] == [
        {"name": NAME, "key": "events.startup.pins", "base": 1048576, "head": 7,
         "relative": (7 - 1048576) / 1048576}]
    assert doc["only_base"] == [] and doc["only_head"] == []


def test_unknown_format(slow: Comparison) -> None:
    with pytest.raises(InputError, match="unknown format 'html'"):
        slow.format("html")


@pytest.mark.parametrize(("text", "value"), [
    ("5%", 0.05), ("0.05", 0.05), (" 2.5 % ", 0.025), ("0", 0.0), ("0%", 0.0),
    ("150%", 1.5), (".1", 0.1),
])
def test_parse_threshold(text: str, value: float) -> None:
    assert math.isclose(parse_threshold(text), value)


@pytest.mark.parametrize("text", ["5", "1", "-1%", "-0.1", "abc", "", "5%%", "nan", "1e999%"])
def test_parse_threshold_refuses(text: str) -> None:
    with pytest.raises(InputError, match="threshold"):
        parse_threshold(text)


def test_help_prints_percent_signs_once() -> None:
    # argparse %-formats an argument's help but not a parser's description, so "95%%" in a
    # description reached the user as "95%%".
    import argparse

    from pinning.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {name: sub.format_help() for name, sub in subs.choices.items()}
    assert "compare" in helps and len(helps) >= 5
    assert "95%" in helps["compare"]
    for name, text in [("pinbench", parser.format_help()), *helps.items()]:
        assert "%%" not in text and "%(" not in text, name


def test_runs_one_after_the_other_qualify_the_geometric_mean(tmp_path: Path) -> None:
    # Every benchmark 20 % faster in head, measured an hour after base: the geometric mean
    # is significant, but a shared change may be the machine's, and the output says so.
    names = [f"startup/upfront/{i + 1}GiB/4k" for i in range(8)]
    base = write(tmp_path / "b.json", [
        (n, process_draw(1300 + i, 4, 3, between=0.02), metadata(n, date="2026-01-01 10:00:00"))
        for i, n in enumerate(names)])
    head = write(tmp_path / "h.json", [
        (n, process_draw(1400 + i, 4, 3, between=0.02, scale=0.8e-3),
         metadata(n, date="2026-01-01 11:00:00")) for i, n in enumerate(names)])
    c = compare_files(base, head)
    assert c.geo.verdict == "faster" and c.geo.sequential
    assert any("one after the other" in n and "2026-01-01 10:00" in n for n in c.notes)
    assert "faster (runs one after the other" in c.format("text").splitlines()[-1]
    # the same runs at overlapping times (interleaved, as compare-branches runs them)
    same = write(tmp_path / "h2.json", [
        (n, process_draw(1400 + i, 4, 3, between=0.02, scale=0.8e-3),
         metadata(n, date="2026-01-01 10:00:00")) for i, n in enumerate(names)])
    c2 = compare_files(base, same)
    assert c2.geo.verdict == "faster" and not c2.geo.sequential
    assert not any("one after the other" in n for n in c2.notes)


# ---- hosts ---------------------------------------------------------------------------------------
def hosted(name: str = NAME, host: str | None = "alpha", **extra: object) -> dict[str, object]:
    """A benchmark's metadata as run on ``host`` (None: no hostname, as in older files)."""
    md = metadata(name, **extra)
    if host is None:
        del md["hostname"]
    else:
        md["hostname"] = host
    return md


def test_other_host_is_not_compared_and_never_gates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 8 processes a side and head 3x slower: on one host this gates (below); on two it is
    # not compared at all -- the medians stay, no ratio, "cannot tell", exit 0.
    base, head = pair(tmp_path, process_draw(51, 8, 3, between=0.05),
                      process_draw(52, 8, 3, between=0.05, scale=3e-3),
                      hosted(host="alpha"), hosted(host="beta"))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["head_median_s"] / row["base_median_s"] > 2.5  # the medians are kept
    assert all(math.isnan(row[k]) for k in ("ratio", "ratio_lo", "ratio_hi", "p_value",
                                            "p_holm", "min_p"))
    assert row["verdict"] == "cannot tell" and not row["gates"] and not row["reachable"]
    assert (row["base_host"], row["head_host"], row["hosts_differ"]) == ("alpha", "beta", True)
    assert c.gating == [] and c.tests == 0 and c.exit_status() == 0
    assert math.isnan(c.geomean) and c.geo.method == "nothing compared"
    note = next(n for n in c.notes if n.startswith("measured values not compared"))
    assert note == (f"measured values not compared for 1 benchmark ({NAME}): base ran on host "
                    "alpha, head on host beta; measured times compare only on one host (pass "
                    "--across-hosts to compare anyway); modelled values are compared")
    assert not any("different machines" in n for n in c.notes)  # nothing compared them
    assert main(base, head) == 0
    out = capsys.readouterr().out
    assert "cannot tell (not compared: hosts differ)" in out
    last = out.splitlines()[-1]
    assert last.startswith("Result: NOT COMPARED: base and head ran on different hosts")
    assert "1 cannot tell (1 not compared: hosts differ)" in last and last.endswith("(exit 0)")
    assert c.format("md").startswith("### ⚠️ pinbench compare — NOT COMPARED")
    doc = json.loads(c.format("json"))
    assert doc["exit_status"] == 0 and doc["measured"]["across_hosts"] is False
    assert doc["measured"]["reachable"] is False
    rec = doc["measured"]["rows"][0]
    assert rec["ratio"] is None and rec["verdict"] == "cannot tell"
    assert (rec["base_host"], rec["head_host"], rec["hosts_differ"]) == ("alpha", "beta", True)


def test_same_host_is_compared_as_before(tmp_path: Path) -> None:
    base, head = pair(tmp_path, process_draw(51, 8, 3, between=0.05),
                      process_draw(52, 8, 3, between=0.05, scale=3e-3),
                      hosted(host="alpha"), hosted(host="alpha"))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["verdict"] == "slower" and row["gates"] and c.exit_status() == 1
    assert (row["base_host"], row["head_host"], row["hosts_differ"]) == ("alpha", "alpha", False)
    assert not any("not compared" in n or "different machines" in n for n in c.notes)


def test_hosts_are_judged_per_benchmark(tmp_path: Path) -> None:
    # A distributed run: two benchmarks ran base and head on one host each, three moved from
    # alpha to beta and one from alpha to gamma. Only the first two are compared: Holm's m,
    # the design and the geometric mean are theirs; one note per pair of hosts.
    names = [f"startup/upfront/{i + 1}GiB/4k" for i in range(6)]
    heads = ["alpha", "delta", "beta", "beta", "beta", "gamma"]
    base = write(tmp_path / "b.json", [
        (n, process_draw(60 + i, 8, 3, between=0.05),
         hosted(n, "delta" if i == 1 else "alpha")) for i, n in enumerate(names)])
    head = write(tmp_path / "h.json", [
        (n, process_draw(70 + i, 8, 3, between=0.05, scale=1.2e-3 if i < 2 else 5e-3),
         hosted(n, h)) for i, (n, h) in enumerate(zip(names, heads, strict=True))])
    c = compare_files(base, head)
    assert list(c.rows["hosts_differ"]) == [False, False, True, True, True, True]
    assert c.rows["ratio"].notna().tolist() == [True, True, False, False, False, False]
    assert c.tests == 2 and math.isclose(c.alpha_holm, 0.05 / 2)
    assert math.isclose(c.geomean, math.sqrt(c.rows["ratio"].iloc[0] * c.rows["ratio"].iloc[1]))
    assert c.geomean < 1.3  # the 5x of the other hosts is not in it
    assert c.gating == names[:2]  # 20 % slower on one host each: gates
    assert (c.rows["verdict"].iloc[2:] == "cannot tell").all()
    notes = [n for n in c.notes if n.startswith("measured values not compared")]
    assert len(notes) == 2
    assert notes[0].startswith(f"measured values not compared for 3 benchmarks ({names[2]}, "
                               f"{names[3]}, {names[4]}): base ran on host alpha, head on "
                               "host beta;")
    assert "1 benchmark" in notes[1] and "head on host gamma" in notes[1]
    design = c.design_lines()
    assert len(design) == 1 and design[0].startswith("2 benchmarks")
    assert "over 2 benchmarks" in c.format("text")


def test_across_hosts_compares_with_the_machines_note(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, head = pair(tmp_path, process_draw(51, 8, 3, between=0.05),
                      process_draw(52, 8, 3, between=0.05, scale=3e-3),
                      hosted(host="alpha"), hosted(host="beta"))
    c = compare_files(base, head, across_hosts=True)
    row = only_row(c)
    assert row["hosts_differ"] and row["ratio"] > 2.5
    assert row["verdict"] == "slower" and row["gates"] and c.exit_status() == 1
    assert "measured on different machines (hostname 'alpha' vs 'beta'): measured ratios " \
           "compare machines too" in c.notes
    assert not any(n.startswith("measured values not compared") for n in c.notes)
    assert json.loads(c.format("json"))["measured"]["across_hosts"] is True
    assert main(base, head, across_hosts=True) == 1
    assert "slower (GATES)" in capsys.readouterr().out
    assert main(base, head) == 0


def test_model_changes_are_listed_across_hosts(tmp_path: Path) -> None:
    # Another host and everything a distributed run records about where it ran differ; only
    # the modelled keys count as model changes, and they are compared whatever the host.
    provenance = {"cpu_model_name": "Intel(R) Xeon(R)", "platform": "Linux-6.1-x86_64",
                  "host.kernel": "6.1.0", "host.thp": "madvise", "host.mem_available_gib": 30.5,
                  "version.numba": "0.60.0", "version.numpy": "2.0.1",
                  "pinbench.worker": "tcp://10.0.0.1:1234"}
    other = {"cpu_model_name": "AMD EPYC 7763", "platform": "Linux-6.8-x86_64",
             "host.kernel": "6.8.0", "host.thp": "always", "host.mem_available_gib": 250.0,
             "version.numba": "0.61.0", "version.numpy": "2.1.0",
             "pinbench.worker": "tcp://10.0.0.2:4321"}
    base_md = hosted(host="alpha", **provenance)
    head_md = hosted(host="beta", **other, **{"events.startup.pins": 7})
    base, head = pair(tmp_path, draw(9, 5, 3), draw(9, 5, 3), base_md, head_md)
    c = compare_files(base, head)
    assert only_row(c)["hosts_differ"] and math.isnan(only_row(c)["ratio"])
    assert c.model_changes.to_dict("records") == [
        {"name": NAME, "key": "events.startup.pins", "base": 4 * 2**18, "head": 7}]
    assert c.exit_status() == 0 and c.exit_status(fail_on_model_change=True) == 1
    assert main(base, head, fail_on_model_change=True) == 1
    # the provenance alone, on one host: no model change at all
    sub = tmp_path / "same"
    sub.mkdir()
    same = pair(sub, draw(9, 5, 3), draw(10, 5, 3), base_md,
                hosted(host="beta", **other))
    assert compare_files(*same).model_changes.empty
    assert compare_files(*same, across_hosts=True).model_changes.empty


def test_unknown_host_is_compared(tmp_path: Path) -> None:
    # Files from before hostname was recorded: we cannot tell the hosts differ, so compare.
    for b_host, h_host in ((None, "beta"), ("alpha", None), (None, None)):
        sub = tmp_path / f"{b_host}-{h_host}"
        sub.mkdir()
        base, head = pair(sub, process_draw(51, 8, 3, between=0.05),
                          process_draw(52, 8, 3, between=0.05, scale=3e-3),
                          hosted(host=b_host), hosted(host=h_host))
        c = compare_files(base, head)
        row = only_row(c)
        assert (row["base_host"], row["head_host"]) == (b_host, h_host)
        assert not row["hosts_differ"] and row["verdict"] == "slower" and row["gates"]
        assert not any(n.startswith("measured values not compared") for n in c.notes)


def test_hosts_of_a_benchmark_are_those_of_its_runs() -> None:
    from pinning.analysis.compare import _hosts, _hosts_differ

    class Bench:  # pyperf.Benchmark refuses runs of different hostnames: a stand-in
        def __init__(self, *hosts: str | None, empty: str | None = None) -> None:
            self.runs = [pyperf.Run([1.0], metadata={"name": NAME, **(
                {"hostname": h} if h else {})}, collect_metadata=False) for h in hosts]
            if empty:  # a run without values (e.g. calibration) does not count
                self.runs.append(pyperf.Run([], warmups=[(1, 1.0)], metadata={
                    "name": NAME, "hostname": empty}, collect_metadata=False))

        def get_runs(self) -> list[pyperf.Run]:
            return self.runs

    assert _hosts(Bench("a", "a", empty="z")) == {"a"}
    assert _hosts(Bench("a", "b")) == {"a", "b"}
    assert _hosts(Bench(None, "a")) == {"a"}
    assert _hosts(Bench(None)) == frozenset()
    a, b, ab, unknown = frozenset("a"), frozenset("b"), frozenset("ab"), frozenset()
    assert not _hosts_differ(a, a) and _hosts_differ(a, b)
    assert _hosts_differ(ab, a) and _hosts_differ(a, ab) and _hosts_differ(ab, ab)
    assert _hosts_differ(ab, unknown) and _hosts_differ(unknown, ab)
    assert not _hosts_differ(unknown, a) and not _hosts_differ(a, unknown)
    assert not _hosts_differ(unknown, unknown)


def test_a_side_on_several_hosts_is_not_compared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pinning.analysis.compare as compare

    # pyperf itself refuses a benchmark whose runs name different hosts (hostname is one of
    # the metadata it checks run by run), so such a file does not load ...
    good = write(tmp_path / "good.json", [(NAME, draw(1, 2, 3), hosted(host="alpha"))])
    doc = json.loads(good.read_text())
    bench = doc["benchmarks"][0]
    host = bench.get("metadata", {}).pop("hostname", None) or doc["metadata"].pop("hostname")
    assert host == "alpha"
    for run, h in zip(bench["runs"], ("alpha", "beta"), strict=True):
        run.setdefault("metadata", {})["hostname"] = h
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="hostname"):
        compare_files(mixed, good)
    # ... but compare is ready for one: a side on several hosts is not compared
    real = compare._hosts
    monkeypatch.setattr(compare, "_hosts", lambda b: frozenset({"alpha", "beta"})
                        if b.get_metadata().get("hostname") == "several" else real(b))
    base, head = pair(tmp_path, process_draw(51, 8, 3, between=0.05),
                      process_draw(52, 8, 3, between=0.05, scale=3e-3),
                      hosted(host="alpha"), hosted(host="several"))
    c = compare_files(base, head)
    row = only_row(c)
    assert row["head_host"] == "alpha, beta" and row["hosts_differ"]
    assert math.isnan(row["ratio"]) and not row["gates"] and c.exit_status() == 0
    assert any("base ran on host alpha, head on several hosts (alpha, beta)" in n
               for n in c.notes)
    assert only_row(compare_files(base, head, across_hosts=True))["gates"]

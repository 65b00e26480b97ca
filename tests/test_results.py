"""analysis.results: the loader round-trips real results, fills gaps, refuses bad files clearly."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyperf
import pytest

from pinning.analysis.results import (
    COUNTERS,
    PARAMS,
    latency_quantiles,
    load_results,
    of_kind,
    read_suite,
    timeline,
)
from pinning.model.names import BACKINGS, TIME_KINDS, WALL_KINDS, InputError, time_label

SAMPLE = Path(__file__).parent / "data" / "quick-sample.json"
GROUND = Path(__file__).parent / "data" / "ground-sample.json"


def pinbench_metadata(family: str = "startup", strategy: str = "upfront", gib: int = 4,
                      **extra: object) -> dict[str, object]:
    """Metadata shaped like a real benchmark's (only the startup phase ran)."""
    pages = gib * 2**18
    md: dict[str, object] = {
        "pinbench.schema": 1, "pinbench.suite": "synthetic", "pinbench.family": family,
        "pinbench.version": "0.1.0", "cost.profile": "default",
        "param.workload": family, "param.strategy": strategy,
        "param.guest_size": gib * 2**30, "param.level": "4k", "param.vcpus": 1,
        "param.pattern": "sequential", "param.layout": "slices",
        "param.touch_fraction": 1.0, "param.seed": 0, "param.backing": "sim",
        "param.remap_fraction": 0.1, "measured.phases": "startup",
        "events.startup.pins": pages, "events.startup.metadata_bytes": 8 * pages,
        "model.startup_ns": 662.0 * pages, "model.total_ns": 662.0 * pages,
        "model.measured_ns": 662.0 * pages, "hostname": "testhost",
    }
    md.update(extra)
    return md


def write_suite(path: Path, benches: list[tuple[str, list[float], dict[str, object]]]) -> Path:
    """A pyperf results file of (name, values, metadata) benchmarks."""
    suite = None
    for name, values, md in benches:
        run = pyperf.Run(values, metadata={"name": name, "date": "2026-01-01 00:00:00", **md},
                         collect_metadata=False)
        bench = pyperf.Benchmark([run])
        if suite is None:
            suite = pyperf.BenchmarkSuite([bench])
        else:
            suite.add_benchmark(bench)
    assert suite is not None
    suite.dump(str(path), replace=True)
    return path


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_results(SAMPLE)


def test_sample_round_trips(sample: pd.DataFrame) -> None:
    assert len(sample) == 36
    assert sample["name"].is_unique
    expected = ["file", "suite", "name", "family", *PARAMS, "guest_gib", "median_s", "iqr_s",
                "mean_s", "std_s", "n", "model_total_ns", "model_measured_ns",
                "vcpu_access_faults_per_s", "vcpu_access_latency_quantiles_ns",
                "vcpu_access_timeline", "cpu_model_name", "hostname", "platform", "cpu_count",
                "date"]
    assert not [c for c in expected if c not in sample]
    assert sample["family"].value_counts().to_dict() == {
        "startup": 12, "fault_storm": 8, "lifecycle": 12, "remap": 2, "teardown": 2}
    assert sample["guest_size"].dtype == np.int64
    assert (sample["guest_gib"] * 2**30 == sample["guest_size"]).all()
    suite = pyperf.BenchmarkSuite.load(str(SAMPLE))
    by_name = sample.set_index("name")
    for bench in suite.get_benchmarks():
        row = by_name.loc[bench.get_name()]
        md = bench.get_metadata()
        for key, value in md.items():
            parts = key.split(".")
            if parts[0] == "events":
                assert row[f"events_{parts[1]}_{parts[2]}"] == value, key
            elif parts[0] == "model":
                assert row[f"model_{parts[1]}"] == value, key
            elif key == "param.workload":
                assert row["family"] == value
            elif key.startswith("param."):
                assert row[parts[1]] == value, key
        values = np.array(bench.get_values())
        assert row["median_s"] == pytest.approx(np.median(values))
        assert row["mean_s"] == pytest.approx(values.mean())
        assert row["n"] == len(values)
        assert row["hostname"] == md["hostname"]


def test_every_counter_of_every_phase_with_zero_where_not_run(sample: pd.DataFrame) -> None:
    for phase in ("startup", "access", "remap", "teardown"):
        for counter in COUNTERS:
            assert sample[f"events_{phase}_{counter}"].dtype == np.int64
    startup = sample[sample["family"] == "startup"]
    assert (startup["events_remap_pins"] == 0).all()
    assert (startup["model_remap_ns"] == 0).all()


def test_values_long_format() -> None:
    v = load_results(SAMPLE, values=True)
    assert len(v) == 36 * 5
    assert not v["is_warmup"].any()
    assert set(v["run"]) == {0}
    assert sorted(set(v["value_index"])) == [0, 1, 2, 3, 4]
    first = v[v["name"] == "startup/upfront/4GiB/4k"]
    suite = pyperf.BenchmarkSuite.load(str(SAMPLE))
    assert first["value_s"].tolist() == list(suite.get_benchmark(
        "startup/upfront/4GiB/4k").get_values())


def test_warmups_flagged(tmp_path: Path) -> None:
    run = pyperf.Run([0.2, 0.4], warmups=[(2, 1.0)], collect_metadata=False,
                     metadata={"name": "startup/upfront/4GiB/4k", **pinbench_metadata()})
    path = tmp_path / "w.json"
    pyperf.BenchmarkSuite([pyperf.Benchmark([run])]).dump(str(path))
    v = load_results(path, values=True, warmups=True)
    assert v["is_warmup"].tolist() == [True, False, False]
    assert v["value_s"].tolist() == pytest.approx([0.5, 0.2, 0.4])  # warmup: per loop
    assert len(load_results(path, values=True)) == 2
    assert load_results(path)["median_s"].iloc[0] == pytest.approx(0.3)


def test_two_files_keep_both(tmp_path: Path) -> None:
    a = write_suite(tmp_path / "a.json", [("startup/upfront/4GiB/4k", [0.1, 0.2],
                                           pinbench_metadata())])
    df = load_results([a, SAMPLE])
    assert len(df) == 37
    assert set(df["file"]) == {str(a), str(SAMPLE)}


def test_quantiles_and_timeline(sample: pd.DataFrame) -> None:
    row = sample.set_index("name").loc["fault_storm/demand/8GiB/4k/4vcpu/random"]
    q = latency_quantiles(row)
    assert q.shape == (101,)
    assert (np.diff(q) >= 0).all()
    assert q[50] == pytest.approx(row["vcpu_access_latency_p50_ns"], rel=1e-4)
    tl = timeline(row, "access")
    assert list(tl.columns) == ["time_ns", "pinned_pages"]
    assert tl["pinned_pages"].iloc[-1] == 2 * 2**20  # 8 GiB in 4 KiB pages
    assert (np.diff(tl["time_ns"]) >= 0).all()
    # pyperf metadata works too
    md = pyperf.BenchmarkSuite.load(str(SAMPLE)).get_benchmark(row.name).get_metadata()
    assert np.array_equal(latency_quantiles(md), q)
    with pytest.raises(InputError, match=r"vcpu\.remap\.timeline"):
        timeline(row, "remap")


def test_unknown_keys_ignored_missing_optional_keys_nan(tmp_path: Path) -> None:
    md = pinbench_metadata(**{"future.thing": "x", "vcpu.access.new_field": 3.0})
    del md["model.total_ns"], md["param.seed"]
    path = write_suite(tmp_path / "r.json", [("startup/upfront/4GiB/4k", [0.5], md)])
    df = load_results(path)
    assert len(df) == 1
    row = df.iloc[0]
    assert math.isnan(row["model_total_ns"])
    assert math.isnan(row["seed"])
    assert math.isnan(row["std_s"])  # one value
    assert math.isnan(row["vcpu_access_faults_per_s"])
    assert row["events_access_pins"] == 0
    assert not any("future" in c or "new_field" in c for c in df.columns)


def _bad(tmp_path: Path, text: str, name: str = "bad.json") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such results file"),
    ("hello, world", "not JSON"),
    ("TRUNCATE", "truncated JSON"),
    ('{"a": 1}', "not a pyperf results file"),
    ("[1, 2, 3]", "not a pyperf results file"),
    ('{"version": "1.0", "benchmarks": []}', "no benchmark"),
    ('{"version": "0.0.1", "benchmarks": [{}]}', "not a valid pyperf results file"),
])
def test_bad_files_one_line_naming_the_file(tmp_path: Path, content: str | None,
                                            message: str) -> None:
    if content is None:
        path = tmp_path / "missing.json"
    elif content == "TRUNCATE":
        path = _bad(tmp_path, SAMPLE.read_text()[:5000])
    else:
        path = _bad(tmp_path, content)
    with pytest.raises(InputError) as err:
        load_results(path)
    text = str(err.value)
    assert str(path) in text
    assert message in text
    assert "\n" not in text


def test_not_pinbench_and_other_schema(tmp_path: Path) -> None:
    plain = write_suite(tmp_path / "plain.json", [("bench", [1.0], {"unit": "second"})])
    with pytest.raises(InputError, match=r"plain\.json.*no pinbench\.schema") as err:
        load_results(plain)
    assert "\n" not in str(err.value)
    newer = write_suite(tmp_path / "newer.json", [
        ("startup/upfront/4GiB/4k", [1.0], pinbench_metadata(**{"pinbench.schema": 3}))])
    with pytest.raises(InputError, match=r"newer\.json: results schema version 3 .*reads "
                                         r"schemas 1, 2"):
        read_suite(newer)


def test_every_row_says_what_its_wall_time_is(sample: pd.DataFrame) -> None:
    """sim: simulator speed (pinbench's own bookkeeping); real and kvm: measured."""
    assert (sample["backing"] == "sim").all()
    assert (sample["wall_kind"] == "simulator").all()
    ground = load_results(GROUND)
    assert set(ground["backing"]) == {"kvm", "real"}
    assert (ground["wall_kind"] == "measured").all()
    both = load_results([SAMPLE, GROUND], values=True)
    assert dict(zip(both["backing"], both["wall_kind"], strict=True)) == {
        "sim": "simulator", "kvm": "measured", "real": "measured"}
    assert set(of_kind(both, "measured")["backing"]) == {"kvm", "real"}
    assert set(of_kind(both, "simulator")["backing"]) == {"sim"}
    assert len(of_kind(both, "measured")) + len(of_kind(both, "simulator")) == len(both)
    with pytest.raises(InputError, match="modelled"):
        of_kind(both, "modelled")  # modelled is no row's wall time


def test_results_without_a_backing_are_the_sims(tmp_path: Path) -> None:
    """Old results recorded no backing: everything then ran on the sim."""
    md = pinbench_metadata()
    del md["param.backing"]
    path = write_suite(tmp_path / "old.json", [("startup/upfront/4GiB/4k", [0.5], md)])
    row = load_results(path).iloc[0]
    assert row["backing"] is None and row["wall_kind"] == "simulator"


def test_one_vocabulary_for_the_kinds_of_time() -> None:
    """Every backing has a kind of wall time; the sim's is never called measured, and each
    backing's measured.what metadata begins with its kind's words."""
    from pinning.harness.backings import TABLE

    assert set(WALL_KINDS) == set(BACKINGS)
    assert WALL_KINDS["sim"] == "simulator" and time_label("simulator") == "simulator speed"
    assert set(WALL_KINDS.values()) | {"modelled"} == set(TIME_KINDS)
    for name, backing in TABLE.items():
        assert backing.measures.startswith(f"{time_label(WALL_KINDS[name])}: "), name
    assert "not a cost of pinning" in TABLE["sim"].measures
    assert "measured" not in TABLE["sim"].measures

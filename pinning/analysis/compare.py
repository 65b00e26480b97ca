"""Compare two pinbench results files: measured times with statistics, modelled metadata exactly.

**Measured** (each benchmark's pyperf values, wall time in seconds, grouped by the
worker process -- pyperf "run" -- that produced them). On this kind of machine most of
the variance is *between* processes (how a process's arrays and the hypervisor below
back its memory), while values within one process agree to a few percent; treating all
values as independent would call that between-process noise significant. So:

* **Both sides with >= 2 processes (hierarchical):** the unit is the process. The
  centre of a side is the median of its per-process medians; its confidence interval
  is a two-stage bootstrap (processes resampled with replacement, then values within
  each resampled process) of the ratio head/base; the two-sided Mann-Whitney U test
  (:func:`scipy.stats.mannwhitneyu`) compares the per-process medians. 4 processes
  against 4 is the smallest design that can reach p < 0.05.
* **A side with a single process:** the values are pooled as independent draws (the
  only thing possible), and a note says that between-process variance is then not in
  the interval.

The bootstrap has ``n_boot`` replicates and its generator is seeded from ``seed`` and
the benchmark's name, so a result does not depend on which other benchmarks are in the
files. A suite tests many benchmarks at once, so the p-values are Holm-Bonferroni
adjusted over the benchmarks compared (``p_holm``): an A/A comparison then fails with
probability <= ``alpha`` however many benchmarks the suite has. A change is
**significant** when the CI (level 1 - ``alpha``) excludes 1 *and* ``p_holm`` <
``alpha``, both on the same side of 1: "slower" or "faster", else "no significant
change". A benchmark **gates** when it is "slower" and its ratio exceeds 1 + ``threshold``.

Neither test assumes equal sample sizes, unlike ``pyperf compare_to``, whose t-test
raises on samples of different lengths and then calls the difference significant (a
``--fast`` run against a default run is "significant" everywhere). With few units the
tests are simply unable to reach significance (3 against 3: Mann-Whitney's smallest p
is 0.1), and the output says so.

**Modelled** (the deterministic ``events.*`` and ``model.*`` metadata of each benchmark
in both files) are compared exactly: any difference is listed, including keys present
on one side only; they gate only with ``fail_on_model_change``. ``vcpu.*`` outputs are
not compared (their scalars feed ``model.<phase>_ns``).
"""

from __future__ import annotations

import json
import math
import re
import sys
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyperf
from scipy import stats as sps

from pinning.analysis.results import PHASES, read_suite
from pinning.model.names import InputError

__all__ = ["VERDICTS", "Comparison", "compare_files", "main", "parse_threshold"]

VERDICTS = ("faster", "slower", "no significant change")
FORMATS = ("text", "md", "json")
ROW_COLUMNS = ("name", "base_median_s", "head_median_s", "base_n", "head_n", "base_runs",
               "head_runs", "unit", "ratio", "ratio_lo", "ratio_hi", "p_value", "p_holm",
               "verdict", "gates")
#: The unit of the statistics: per-process medians, or (a side with one process) values.
UNITS = ("process", "value")
MODEL_COLUMNS = ("name", "key", "base", "head")
MODEL_PREFIXES = ("events.", "model.")
#: Longer Markdown tables are folded into a <details> block (job summaries stay readable).
MD_ROWS = 40
#: Machine metadata whose difference makes a measured comparison suspect.
_MACHINE_KEYS = ("hostname", "cpu_model_name")
#: Largest resample matrix (values) built at once by the bootstrap.
_CHUNK = 1_000_000
_THRESHOLD_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(%?)\s*$")


def parse_threshold(text: str) -> float:
    """A slowdown threshold as a fraction: ``"5%"`` and ``"0.05"`` are both 0.05.

    A bare number must be below 1 (``"5"`` is ambiguous: write ``5%``); negative,
    non-finite or unparsable text raises InputError.
    """
    m = _THRESHOLD_RE.match(str(text))
    if not m:
        raise InputError(f"threshold {text!r} is not a number or percentage (e.g. 5% or 0.05)")
    value = float(m.group(1))
    if m.group(2):
        value /= 100.0
    elif value >= 1:
        raise InputError(f"threshold {text!r} is ambiguous: write a percentage ({text}%) or a "
                         "fraction below 1 (0.05 = 5%)")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"threshold {text!r} must be zero or more")
    return value


@dataclass
class Comparison:
    """Result of :func:`compare_files` (see the module docstring for the statistics)."""

    rows: pd.DataFrame
    only_base: list[str]
    only_head: list[str]
    geomean: float
    geomean_lo: float
    geomean_hi: float
    model_changes: pd.DataFrame
    threshold: float
    base: Path
    head: Path
    alpha: float = 0.05
    n_boot: int = 2000
    seed: int = 0
    suite: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def gating(self) -> list[str]:
        """Names of the benchmarks that gate (significantly slower beyond the threshold)."""
        return [str(n) for n in self.rows.loc[self.rows["gates"], "name"]]

    def exit_status(self, fail_on_model_change: bool = False) -> int:
        """0 if no benchmark gates (and, with the flag, no modelled change), else 1."""
        if self.gating:
            return 1
        if fail_on_model_change and len(self.model_changes):
            return 1
        return 0

    # ---- descriptions shared by every format ---------------------------------------------
    def _conf(self) -> str:
        return f"{_num(100 * (1 - self.alpha))} %"

    def test_description(self) -> str:
        """One sentence naming the statistics used."""
        return (f"head/base ratio of the medians of per-process medians with a {self._conf()} "
                f"two-stage bootstrap CI ({self.n_boot} resamples of processes, then of values "
                f"within them; seed {self.seed}); significant when the CI excludes 1 and the "
                f"two-sided Mann-Whitney U test of the per-process medians gives "
                f"p < {_num(self.alpha)} after Holm's adjustment over the benchmarks "
                f"(a side with one process: its values, pooled)")

    def gating_rule(self) -> str:
        """One sentence stating when a benchmark gates."""
        return (f"a benchmark gates when it is significantly slower and its ratio of medians "
                f"exceeds {1 + self.threshold:.4g} (threshold {_pct(self.threshold)})")

    def _headline(self, fail_on_model_change: bool) -> str:
        gating = self.gating
        n_model = len(self.model_changes)
        if gating:
            head = (f"FAIL: {_plural(len(gating), 'benchmark')} significantly slower by more "
                    f"than {_pct(self.threshold)} (measured)")
        elif fail_on_model_change and n_model:
            head = f"FAIL: {_plural(n_model, 'modelled value')} changed"
        else:
            head = (f"PASS: no benchmark significantly slower by more than "
                    f"{_pct(self.threshold)} (measured)")
        counts = self.rows["verdict"].value_counts()
        parts = [f"{int(counts.get(v, 0))} {v}" for v in VERDICTS]
        model = (f"{_plural(n_model, 'modelled change')}"
                 + (" (gates: --fail-on-model-change)" if fail_on_model_change and n_model
                    else ""))
        return f"{head}; {', '.join(parts)}; {model}"

    def _measured_table(self, markers: bool) -> tuple[list[str], list[list[str]]]:
        header = ["benchmark", "base median", "head median", "n base", "n head", "head/base",
                  f"{self._conf()} CI", "p", "p Holm", "verdict"]
        # n is "processes x values per process" (or the total when they differ)
        body = []
        for r in self.rows.itertuples(index=False):
            verdict = str(r.verdict)
            if r.gates:
                verdict += " (GATES)"
            if markers:
                verdict = {"slower": "🔴 ", "faster": "🟢 "}.get(str(r.verdict), "") + verdict
            body.append([str(r.name), _time(r.base_median_s), _time(r.head_median_s),
                         _n_text(r.base_runs, r.base_n), _n_text(r.head_runs, r.head_n),
                         _ratio(r.ratio),
                         f"[{_ratio(r.ratio_lo)}, {_ratio(r.ratio_hi)}]", _p(r.p_value),
                         _p(r.p_holm),
                         verdict])
        return header, body

    def _model_table(self) -> tuple[list[str], list[list[str]]]:
        header = ["benchmark", "key", "base", "head", "change"]
        body = [[str(r.name), str(r.key), _value(r.base), _value(r.head),
                 _change(r.base, r.head)] for r in self.model_changes.itertuples(index=False)]
        return header, body

    def _geomean_line(self) -> str:
        n = int(self.rows["ratio"].notna().sum())
        return (f"geometric mean of head/base over {_plural(n, 'benchmark')}: "
                f"{_ratio(self.geomean)} ({_signed_pct(self.geomean)}), {self._conf()} CI "
                f"[{_ratio(self.geomean_lo)}, {_ratio(self.geomean_hi)}] (bootstrap "
                f"replicates of every benchmark's ratio)")

    # ---- formats --------------------------------------------------------------------------
    def format(self, fmt: str = "text", *, fail_on_model_change: bool = False) -> str:
        """The comparison as ``text`` (aligned table), ``md`` (GitHub Markdown) or ``json``."""
        if fmt == "text":
            return self._text(fail_on_model_change)
        if fmt == "md":
            return self._markdown(fail_on_model_change)
        if fmt == "json":
            return self._json(fail_on_model_change)
        raise InputError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")

    def _text(self, fail_on_model_change: bool) -> str:
        out = [f"pinbench compare: base {self.base}, head {self.head} (suite {self.suite})",
               "",
               "MEASURED: wall time of the model's bookkeeping (pyperf values, seconds).",
               f"Test: {self.test_description()}.",
               f"Gate: {self.gating_rule()}.",
               ""]
        out += _aligned(*self._measured_table(markers=False), right=range(1, 9))
        out += ["", f"Measured {self._geomean_line()}."]
        if self.only_base:
            out.append(f"Only in base ({len(self.only_base)}): {', '.join(self.only_base)}")
        if self.only_head:
            out.append(f"Only in head ({len(self.only_head)}): {', '.join(self.only_head)}")
        out += ["", "MODELLED: deterministic metadata (events.*, model.*), compared exactly"
                + ("; a change gates (--fail-on-model-change)." if fail_on_model_change
                   else "; reported, does not gate.")]
        if len(self.model_changes):
            out += _aligned(*self._model_table(), right=range(2, 5))
        else:
            out.append("No modelled value changed.")
        for note in self.notes:
            out.append(f"Note: {note}")
        out += ["", f"Result: {self._headline(fail_on_model_change)} "
                    f"(exit {self.exit_status(fail_on_model_change)})"]
        return "\n".join(out) + "\n"

    def _markdown(self, fail_on_model_change: bool) -> str:
        status = self.exit_status(fail_on_model_change)
        icon = "❌" if status else "✅"
        out = [f"### {icon} pinbench compare — {_md(self._headline(fail_on_model_change))}",
               "",
               f"Base `{self.base}` → head `{self.head}` · suite `{self.suite}` · "
               f"{_plural(len(self.rows), 'benchmark')} in common",
               "",
               "#### Measured (wall time of the model's bookkeeping, pyperf values)",
               "",
               f"{_cap(_md(self.test_description()))}. {_cap(_md(self.gating_rule()))}.",
               ""]
        header, body = self._measured_table(markers=True)
        if len(body) <= MD_ROWS:
            out += _md_table(header, body, right=range(1, 9))
        else:  # a long suite: the significant changes in view, every benchmark folded
            changed = [r for r, v in zip(body, self.rows["verdict"], strict=True)
                       if v != "no significant change"]
            if changed:
                out += _md_table(header, changed, right=range(1, 9))
            else:
                out.append("No significant change.")
            out += ["", f"<details><summary>All {len(body)} benchmarks</summary>", ""]
            out += _md_table(header, body, right=range(1, 9))
            out += ["", "</details>"]
        out += ["", f"{_cap(_md(self._geomean_line()))}."]
        if self.only_base:
            out += ["", f"Only in base ({len(self.only_base)}): "
                    + ", ".join(f"`{n}`" for n in self.only_base)]
        if self.only_head:
            out += ["", f"Only in head ({len(self.only_head)}): "
                    + ", ".join(f"`{n}`" for n in self.only_head)]
        out += ["", "#### Modelled (deterministic `events.*`, `model.*` metadata, compared "
                "exactly)", ""]
        if len(self.model_changes):
            gate = ("A change gates (`--fail-on-model-change`)." if fail_on_model_change
                    else "Reported; does not gate without `--fail-on-model-change`.")
            n_bench = self.model_changes["name"].nunique()
            out += [f"{_plural(len(self.model_changes), 'value')} changed in "
                    f"{_plural(n_bench, 'benchmark')}. {gate}", ""]
            fold = len(self.model_changes) > MD_ROWS
            if fold:
                out += ["<details><summary>Modelled changes</summary>", ""]
            out += _md_table(*self._model_table(), right=range(2, 5))
            if fold:
                out += ["", "</details>"]
        else:
            out.append("No modelled value changed.")
        if self.notes:
            out += [""] + [f"> **Note:** {_md(n)}" for n in self.notes]
        return "\n".join(out) + "\n"

    def _json(self, fail_on_model_change: bool) -> str:
        doc = {
            "tool": "pinbench compare",
            "base": str(self.base),
            "head": str(self.head),
            "suite": self.suite,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "measured": {
                "what": "wall time of the model's bookkeeping (pyperf values)",
                "unit": "second",
                "test": self.test_description(),
                "gating_rule": self.gating_rule(),
                "rows": _records(self.rows),
                "geomean": self.geomean,
                "geomean_lo": self.geomean_lo,
                "geomean_hi": self.geomean_hi,
                "gating": self.gating,
            },
            "modelled": {
                "what": "deterministic events.* and model.* metadata, compared exactly",
                "gates": fail_on_model_change,
                "model_changes": _records(self.model_changes),
            },
            "only_base": self.only_base,
            "only_head": self.only_head,
            "notes": self.notes,
            "fail_on_model_change": fail_on_model_change,
            "exit_status": self.exit_status(fail_on_model_change),
            "summary": self._headline(fail_on_model_change),
        }
        return json.dumps(_jsonable(doc), indent=2, ensure_ascii=False) + "\n"


# ---- comparison ---------------------------------------------------------------------------
def compare_files(base: str | Path, head: str | Path, *, threshold: float = 0.05,
                  n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> Comparison:
    """Compare two pinbench results files of the same suite and schema (module docstring).

    A benchmark gates when its verdict is "slower" (bootstrap CI of the ratio above 1 and
    Mann-Whitney p < ``alpha``) and its ratio of medians exceeds 1 + ``threshold``.

    Raises InputError (one line naming the files) for a file that is not a pinbench
    result, files of different suites, or no benchmark in common. Files of different
    results schemas compare their measured values; their modelled values differ as a whole.
    """
    base, head = Path(base), Path(head)
    if not (math.isfinite(threshold) and threshold >= 0):
        raise InputError(f"threshold {threshold!r} must be zero or more")
    if not 0 < alpha < 1:
        raise InputError(f"alpha {alpha!r} must be between 0 and 1")
    if n_boot < 1:
        raise InputError(f"n_boot {n_boot!r} must be at least 1")
    suites = {}
    for path in (base, head):
        try:
            suites[path] = read_suite(path)
        except InputError as exc:
            raise InputError(f"cannot compare {base} with {head}: {exc}") from None
    b_benches = _benchmarks(suites[base])
    h_benches = _benchmarks(suites[head])
    b_suite, h_suite = _suite_name(b_benches), _suite_name(h_benches)
    if b_suite != h_suite:
        raise InputError(f"{base} holds suite {b_suite!r} but {head} holds suite {h_suite!r}: "
                         "results of different suites cannot be compared")
    b_schema, h_schema = _schema(b_benches), _schema(h_benches)
    common = [n for n in b_benches if n in h_benches]
    if not common:
        raise InputError(f"{base} and {head} have no benchmark in common "
                         f"({len(b_benches)} and {len(h_benches)} benchmarks)")
    only_base = [n for n in b_benches if n not in h_benches]
    only_head = [n for n in h_benches if n not in b_benches]

    level = 1 - alpha
    rows, log_boot, notes = [], [], []
    for name in common:
        row, boot = _compare_values(name, _run_values(b_benches[name]),
                                    _run_values(h_benches[name]), n_boot=n_boot, seed=seed,
                                    alpha=alpha)
        rows.append(row)
        if boot is not None:
            log_boot.append(np.log(boot))
        if boot is None:
            side = "base" if not row["base_median_s"] > 0 else "head"
            notes.append(f"{name}: not compared (no measured value, or a median of 0, in {side})")
    frame = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    frame = frame.astype({"base_n": "int64", "head_n": "int64", "base_runs": "int64",
                          "head_runs": "int64", "gates": bool})
    _verdicts(frame, alpha, threshold)

    valid = frame["ratio"].notna() & (frame["ratio"] > 0)
    if valid.any() and log_boot:
        geomean = float(np.exp(np.log(frame.loc[valid, "ratio"]).mean()))
        reps = np.exp(np.mean(np.vstack(log_boot), axis=0))
        lo, hi = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
        geo = (geomean, float(lo), float(hi))
    else:
        geo = (math.nan, math.nan, math.nan)

    if b_schema == h_schema:
        model_changes = _model_changes(b_benches, h_benches, common)
    else:  # the counting rules changed: key by key would list every benchmark
        model_changes = pd.DataFrame([{"name": "(every benchmark)", "key": "pinbench.schema",
                                       "base": b_schema, "head": h_schema}],
                                     columns=list(MODEL_COLUMNS), dtype=object)
        notes.append(f"results schema {b_schema} (base) vs {h_schema} (head): the model's "
                     "counting rules differ between them, so modelled values are not compared "
                     "key by key (one modelled change is listed); measured values are")
    notes += _small_sample_notes(frame, alpha)
    notes += _pooled_notes(frame)
    notes += _machine_notes(b_benches, h_benches, common)
    return Comparison(rows=frame, only_base=only_base, only_head=only_head,
                      geomean=geo[0], geomean_lo=geo[1], geomean_hi=geo[2],
                      model_changes=model_changes,
                      threshold=float(threshold), base=base, head=head, alpha=alpha,
                      n_boot=n_boot, seed=seed, suite=b_suite, notes=notes)


def _run_values(bench: pyperf.Benchmark) -> list[np.ndarray]:
    """A benchmark's measured values, one array per worker process (runs without any dropped)."""
    runs = [np.asarray(r.values, dtype=float) for r in bench.get_runs()]
    return [v for v in runs if v.size]


def _compare_values(name: str, base: Sequence[np.ndarray], head: Sequence[np.ndarray], *,
                    n_boot: int, seed: int, alpha: float
                    ) -> tuple[dict[str, Any], np.ndarray | None]:
    """One benchmark's row (verdict not yet set: :func:`_verdicts`) and its bootstrap
    replicates of the ratio (None if not compared).

    ``base`` and ``head`` hold one array of values per worker process.
    """
    hier = len(base) >= 2 and len(head) >= 2
    row: dict[str, Any] = {"name": name, "base_n": sum(len(v) for v in base),
                           "head_n": sum(len(v) for v in head), "base_runs": len(base),
                           "head_runs": len(head), "unit": UNITS[0] if hier else UNITS[1],
                           "base_median_s": math.nan, "head_median_s": math.nan,
                           "ratio": math.nan, "ratio_lo": math.nan, "ratio_hi": math.nan,
                           "p_value": math.nan, "p_holm": math.nan,
                           "verdict": "no significant change", "gates": False}
    if not base or not head:
        return row, None
    if hier:
        b_units = np.array([np.median(v) for v in base])
        h_units = np.array([np.median(v) for v in head])
    else:
        b_units, h_units = np.concatenate(base), np.concatenate(head)
    b_med, h_med = float(np.median(b_units)), float(np.median(h_units))
    row.update(base_median_s=b_med, head_median_s=h_med)
    if not (b_med > 0 and h_med > 0):
        return row, None
    ratio = h_med / b_med
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if hier:
        boot = _boot_runs(head, n_boot, rng) / _boot_runs(base, n_boot, rng)
    else:
        boot = _boot_medians(h_units, n_boot, rng) / _boot_medians(b_units, n_boot, rng)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    p = float(sps.mannwhitneyu(h_units, b_units, alternative="two-sided").pvalue)
    if not math.isfinite(p):  # every value equal on both sides
        p = 1.0
    row.update(ratio=ratio, ratio_lo=float(lo), ratio_hi=float(hi), p_value=p)
    return row, boot


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN): family-wise error control."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else np.array([])
    out[order] = np.minimum(adj, 1.0)
    return out


def _verdicts(frame: pd.DataFrame, alpha: float, threshold: float) -> None:
    """Set p_holm, verdict and gates of every row (in place)."""
    frame["p_holm"] = holm(frame["p_value"].to_numpy())
    sig = frame["p_holm"] < alpha
    slower = sig & (frame["ratio_lo"] > 1) & (frame["ratio"] > 1)
    faster = sig & (frame["ratio_hi"] < 1) & (frame["ratio"] < 1)
    frame["verdict"] = np.where(slower, "slower",
                                np.where(faster, "faster", "no significant change"))
    frame["gates"] = slower & (frame["ratio"] > 1 + threshold)


def _boot_medians(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Medians of ``n_boot`` resamples (with replacement) of ``values``."""
    n = len(values)
    step = max(1, _CHUNK // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.median(values[idx], axis=1)
    return out


def _boot_runs(runs: Sequence[np.ndarray], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Two-stage bootstrap: medians of per-process medians, processes then values resampled.

    Runs are padded into one matrix (NaN past a run's length) so that a replicate is a
    gather plus ``nanmedian``; each resampled run keeps its own number of values.
    """
    n_runs = len(runs)
    width = max(len(v) for v in runs)
    table = np.full((n_runs, width), np.nan)
    for i, v in enumerate(runs):
        table[i, :len(v)] = v
    lengths = np.array([len(v) for v in runs])
    step = max(1, _CHUNK // (n_runs * width))
    out = np.empty(n_boot)
    cols = np.arange(width)
    for start in range(0, n_boot, step):
        stop = min(n_boot, start + step)
        pick = rng.integers(0, n_runs, size=(stop - start, n_runs))
        n = lengths[pick][..., None]
        idx = (rng.random((stop - start, n_runs, width)) * n).astype(np.int64)
        vals = table[pick[..., None], idx]
        vals = np.where(cols < n, vals, np.nan)
        out[start:stop] = np.median(np.nanmedian(vals, axis=2), axis=1)
    return out


def _benchmarks(suite: pyperf.BenchmarkSuite) -> dict[str, pyperf.Benchmark]:
    return {b.get_name(): b for b in suite.get_benchmarks()}


def _suite_name(benches: Mapping[str, pyperf.Benchmark]) -> str:
    names = sorted({str(b.get_metadata().get("pinbench.suite", "?")) for b in benches.values()})
    return "+".join(names)


def _schema(benches: Mapping[str, pyperf.Benchmark]) -> str:
    return "+".join(sorted({str(b.get_metadata().get("pinbench.schema"))
                            for b in benches.values()}))


def _model_changes(b_benches: Mapping[str, pyperf.Benchmark],
                   h_benches: Mapping[str, pyperf.Benchmark], common: Sequence[str]
                   ) -> pd.DataFrame:
    rows = []
    for name in common:
        bm = {k: v for k, v in b_benches[name].get_metadata().items()
              if k.startswith(MODEL_PREFIXES)}
        hm = {k: v for k, v in h_benches[name].get_metadata().items()
              if k.startswith(MODEL_PREFIXES)}
        keys = list(bm) + [k for k in hm if k not in bm]
        for key in sorted(keys, key=_key_order):
            if key not in bm or key not in hm or bm[key] != hm[key]:
                rows.append({"name": name, "key": key, "base": bm.get(key), "head": hm.get(key)})
    return pd.DataFrame(rows, columns=list(MODEL_COLUMNS), dtype=object)


def _key_order(key: str) -> tuple[int, int, str]:
    """events before model; phases in lifecycle order."""
    parts = key.split(".")
    phase = parts[1].removesuffix("_ns") if len(parts) > 1 else ""
    rank = PHASES.index(phase) if phase in PHASES else len(PHASES)
    return (0 if key.startswith("events.") else 1, rank, key)


def _small_sample_notes(frame: pd.DataFrame, alpha: float) -> list[str]:
    """Benchmarks whose numbers of units cannot give p < alpha whatever the values."""
    weak: dict[str, list[str]] = {}
    for r in frame.itertuples(index=False):
        hier = r.unit == UNITS[0]
        nb, nh = (r.base_runs, r.head_runs) if hier else (r.base_n, r.head_n)
        if nb and nh and 2 / math.comb(nb + nh, nb) >= alpha:
            pair = f"{nb} vs {nh} {'processes' if hier else 'values'}"
            weak.setdefault(pair, []).append(str(r.name))
    if not weak:
        return []
    n = sum(len(v) for v in weak.values())
    return [f"{_plural(n, 'benchmark')} ({', '.join(sorted(weak))}) cannot reach "
            f"p < {_num(alpha)} with so few units: 'no significant change' there means "
            "'not enough data': run more worker processes (4 vs 4 is the least that can)"]


def _pooled_notes(frame: pd.DataFrame) -> list[str]:
    """Benchmarks compared value by value because a side has a single worker process."""
    pooled = frame.loc[(frame["unit"] == UNITS[1]) & frame["ratio"].notna(), "name"]
    if pooled.empty:
        return []
    return [f"{_plural(len(pooled), 'benchmark')} had a single worker process on a side, so "
            "their values were pooled as independent: variance between processes (the larger "
            "part on a shared or virtual machine) is not in their intervals and their verdicts "
            "can be overconfident; gate with >= 4 processes per side (e.g. --suite ci)"]


def _machine_notes(b_benches: Mapping[str, pyperf.Benchmark],
                   h_benches: Mapping[str, pyperf.Benchmark], common: Sequence[str]) -> list[str]:
    """Warn when the files were measured on different machines or cost profiles."""
    notes = []
    bmd, hmd = b_benches[common[0]].get_metadata(), h_benches[common[0]].get_metadata()
    for key in _MACHINE_KEYS:
        if bmd.get(key) != hmd.get(key):
            notes.append(f"measured on different machines ({key} {bmd.get(key)!r} vs "
                         f"{hmd.get(key)!r}): measured ratios compare machines too")
            break
    costs = sorted(k for k in {*bmd, *hmd} if k.startswith("cost.") and k != "cost.source"
                   and bmd.get(k) != hmd.get(k))
    if costs:
        diffs = ", ".join(f"{k} {_value(bmd.get(k))} → {_value(hmd.get(k))}" for k in costs)
        notes.append(f"the cost profiles differ ({diffs}): modelled times change with them")
    return notes


# ---- entry point --------------------------------------------------------------------------
def main(base: str | Path, head: str | Path, *, threshold: float = 0.05, fmt: str = "text",
         fail_on_model_change: bool = False) -> int:
    """Print the comparison in ``fmt`` to stdout and return the exit status (0 or 1).

    InputError propagates (the CLI prints it as one line, exit 2).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    comparison = compare_files(base, head, threshold=threshold)
    sys.stdout.write(comparison.format(fmt, fail_on_model_change=fail_on_model_change))
    sys.stdout.flush()
    return comparison.exit_status(fail_on_model_change)


# ---- formatting helpers -------------------------------------------------------------------
def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _num(v: float) -> str:
    return f"{v:g}"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _time(seconds: float) -> str:
    if _missing(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(seconds) >= scale:
            return f"{seconds / scale:.4g} {unit}"
    return f"{seconds / 1e-9:.4g} ns"


def _ratio(v: float) -> str:
    return "-" if _missing(v) else f"{v:.3f}"


def _signed_pct(ratio: float) -> str:
    return "-" if _missing(ratio) else f"{100 * (ratio - 1):+.1f} %"


def _n_text(runs: int, n: int) -> str:
    if runs > 1 and n % runs == 0:
        return f"{runs}x{n // runs}"
    return str(n)


def _p(p: float) -> str:
    if _missing(p):
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _value(v: Any) -> str:
    return "(absent)" if v is None else str(v)


def _change(base: Any, head: Any) -> str:
    if isinstance(base, int | float) and isinstance(head, int | float) and base:
        return f"{100 * (head - base) / base:+.3g} %"
    return ""


def _aligned(header: list[str], body: list[list[str]], right: Iterable[int]) -> list[str]:
    right = set(right)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in body)]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _md_table(header: list[str], body: list[list[str]], right: Iterable[int]) -> list[str]:
    right = set(right)
    align = ["--:" if i in right else "---" for i in range(len(header))]
    rows = [header, align, *([_md(c) for c in r] for r in body)]
    return ["| " + " | ".join(r) + " |" for r in rows]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _jsonable(v) for k, v in rec.items()} for rec in frame.to_dict("records")]


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v

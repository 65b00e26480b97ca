"""Compare two pinbench results files: modelled metadata exactly, timed values with statistics.

**Modelled** (the deterministic ``events.*`` and ``model.*`` metadata of each benchmark
in both files, listed first) are compared exactly, whatever host ran them: any
difference is listed with its relative size, including keys present on one side only;
they gate only with ``fail_on_model_change``. ``vcpu.*`` outputs are not compared (their
scalars feed ``model.<phase>_ns``), nor is the provenance of a run (``hostname``,
``cpu_model_name``, ``platform``, ``host.*``, ``version.*``, ``pinbench.worker``, ...):
only the two prefixes count.

**Timed** (each benchmark's pyperf values, wall time in seconds, grouped by the worker
process -- pyperf "run" -- that produced them). What they time depends on the backing
that ran: on ``sim`` they are **simulator speed** (the wall time of pinbench's own
bookkeeping: how fast pinbench's code runs, what gates pinbench in CI, not a cost of
pinning); on ``real`` and ``kvm`` they are **measured** (wall time of real memory or a
real KVM guest on this host). On this kind of machine most of the variance is *between*
processes (how a process's arrays and the hypervisor below back its memory), while
values within one process agree to a few percent; treating all values as independent
would call that between-process noise significant. So:

* **Both sides with >= 2 processes (hierarchical):** the unit is the process. The
  centre of a side is the median of its per-process medians; its confidence interval
  is a two-stage bootstrap (processes resampled with replacement, then values within
  each resampled process) of the ratio head/base; the two-sided Mann-Whitney U test
  (:func:`scipy.stats.mannwhitneyu`) compares the per-process medians.
* **A side with a single process:** the values are pooled as independent draws (the
  only thing possible). Variance between processes is then not in the interval, so a
  change the test flags may be the difference between two processes; and with few
  values no change can reach significance at all after Holm (below).

The bootstrap has ``n_boot`` replicates and its generator is seeded from ``seed`` and
the benchmark's name, so a result does not depend on which other benchmarks are in the
files. A suite tests many benchmarks at once, so the p-values are Holm-Bonferroni
adjusted over the m benchmarks compared (``p_holm``): an A/A comparison then fails with
probability <= ``alpha`` however many benchmarks the suite has. A change is
**significant** when the CI (level 1 - ``alpha``) excludes 1 *and* ``p_holm`` <
``alpha``, both on the same side of 1: "slower" or "faster"; otherwise "no significant
change", or "cannot tell" when the design could not have shown one (below). A benchmark
**gates** when it is "slower" and its ratio exceeds 1 + ``threshold``.

**What a comparison can see.** Holm's first step compares the most significant
benchmark's p with ``alpha / m``. Whatever the values, Mann-Whitney cannot give n1
against n2 untied units a p below ``2 / C(n1 + n2, n1)`` (scipy's exact test, used up
to 8 units on a side; beyond, scipy's normal approximation, whose floor is higher:
:func:`pinning.analysis.stats.mannwhitney_min_p`), the row's ``min_p``. A benchmark is
**reachable** when ``min_p < alpha / m``: it could be significant were it the only
change in the suite. (When several change together Holm's later steps are more lenient,
so an unreachable benchmark can still come out significant beside others; its verdict
is then "slower" or "faster".) An unreachable benchmark without a significant change
gets the verdict **"cannot tell"** and ``needed_processes``, the least n per side with
``min_p(n, n) < alpha / m`` (:func:`~pinning.analysis.stats.units_needed`): 4 for one
benchmark, 7 for the 63 of ``quick``. Two ``quick`` runs (1 process x 5 values a side,
pooled) have ``min_p`` = 2/252 = 0.0079 against 0.05/63 = 0.0008: nothing can be flagged.

The **minimum detectable effect** ``mde`` is an approximation, stated here because it is
one: the benchmark's own units (per-process medians, or pooled values) are taken on a
log scale, each side is centred on its median, and head is moved up until both (i)
Mann-Whitney gives p < ``alpha / m`` (:func:`~pinning.analysis.stats.shift_to_significance`)
and (ii) the bootstrap CI, moved with it at its observed relative width, excludes 1
(``ratio / ratio_lo``). ``mde`` is that ratio of medians, ``mde_faster`` the same
downwards. It is the change these samples' own spread would just call significant as
the only change in the suite: a true change of that size is flagged about half the
time (not with 80 % power), and it is only as good as the spread it is estimated from
(rough with few units). It is infinite (JSON null) for an unreachable benchmark.

**The suite's geometric mean** of the ratios gets a verdict of its own (one test at
``alpha``, not part of Holm's family; it does not gate). Its CI: when every benchmark
has >= 2 processes a side, the per-benchmark two-stage bootstrap replicates (processes,
then values) averaged over the benchmarks on the log scale -- the CI of these
benchmarks' mean change. When a side had a single process, values cannot speak for
processes, so the bootstrap resamples the benchmarks' log ratios instead: each benchmark
ran its own processes, so their spread carries the between-process variance (and any
real difference between the benchmarks' changes: conservative). "slower" when the CI
is above 1, "faster" below, "no significant change" across it, and "cannot tell" when
there are fewer independent pairs of processes (pooled: benchmarks; else the processes
of the smaller side, summed) than a sign test needs at ``alpha``
(:func:`~pinning.analysis.stats.sign_test_units`: 6 at 0.05; a percentile bootstrap over
fewer excludes 1 too easily) and no benchmark could be significant on its own. Its
``geomean_mde`` is ``geomean / geomean_lo``: the suite-wide change at which the CI,
moved with it, excludes 1.

**Hosts.** A benchmark's host is the set of pyperf ``hostname`` values of its runs
(pyperf records it per worker process; a distributed run may put a benchmark's base and
head -- or, in principle, its runs -- on different hosts). Wall times of two hosts differ
by the machines, not by the code, so a benchmark's timed values are compared only when
base and head ran on one host: when each side ran on one known host and the hosts
differ, or a side's runs span several hosts, the row keeps its medians but gets no
ratio, CI or p (it is "cannot tell", takes no part in Holm's m or the geometric mean, and
never gates) and a note names the hosts. A side without ``hostname`` (older files) is an
unknown host: it cannot be told apart, so it is compared, as before. ``across_hosts``
compares across hosts anyway, with a note that the ratios then compare machines too.
The modelled values are compared in every case.

Neither test assumes equal sample sizes, unlike ``pyperf compare_to``, whose t-test
raises on samples of different lengths and then calls the difference significant (a
``--fast`` run against a default run is "significant" everywhere).
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
from pinning.analysis.stats import (
    mannwhitney_min_p,
    shift_to_significance,
    sign_test_units,
    units_needed,
)
from pinning.model.names import TIME_KINDS, InputError

__all__ = ["SIGNIFICANT", "VERDICTS", "Comparison", "compare_files", "main",
           "parse_threshold"]

#: Every verdict, of a benchmark and of the geometric mean. "cannot tell": no change
#: could have been significant with this design (see the module docstring).
VERDICTS = ("faster", "slower", "no significant change", "cannot tell")
#: The verdicts of a significant change.
SIGNIFICANT = VERDICTS[:2]
FORMATS = ("text", "md", "json")
ROW_COLUMNS = ("name", "base_median_s", "head_median_s", "base_n", "head_n", "base_runs",
               "head_runs", "unit", "ratio", "ratio_lo", "ratio_hi", "p_value", "p_holm",
               "verdict", "gates", "min_p", "reachable", "needed_processes", "mde",
               "mde_faster", "base_host", "head_host", "hosts_differ")
#: The unit of the statistics: per-process medians, or (a side with one process) values.
UNITS = ("process", "value")
MODEL_COLUMNS = ("name", "key", "base", "head")
MODEL_PREFIXES = ("events.", "model.")
#: What the timed values are, by the backing that ran them: (kind, what).
TIMED_KINDS = {
    # the kinds' one home is names.TIME_KINDS; "mixed" is a comparison's own case
    "sim": TIME_KINDS["simulator"],
    "measured": TIME_KINDS["measured"],
    "mixed": ("timed", "wall time: simulator speed on the sim backing, measured on real "
              "and kvm"),
}
#: Longer Markdown tables are folded into a <details> block (job summaries stay readable).
MD_ROWS = 40
#: Machine metadata whose difference makes a measured comparison suspect.
_MACHINE_KEYS = ("hostname", "cpu_model_name")
#: Benchmarks named in a note before the rest are counted.
_NOTE_NAMES = 8
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
class Geomean:
    """The suite's geometric mean of head/base ratios and its own verdict (module docstring)."""

    value: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    verdict: str = "cannot tell"
    #: How the CI was made (one phrase).
    method: str = ""
    #: Independent pairs of processes behind the CI, and how many a sign test needs.
    pairs: int = 0
    pairs_needed: int = 0
    reachable: bool = False
    #: Processes per side with which the verdict could be reached (when it cannot).
    needed_processes: int = 0
    #: Smallest suite-wide slowdown (ratio) the CI would exclude 1 at; inf if unreachable.
    mde: float = math.inf
    #: The two files ran one after the other (not interleaved): a suite-wide change also
    #: holds whatever changed on the machine between them.
    sequential: bool = False


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
    geo: Geomean = field(default_factory=Geomean)
    #: "sim", "measured" or "mixed": what the timed values are (TIMED_KINDS).
    timed: str = "sim"
    #: Measured values were compared across hosts too (module docstring, "Hosts").
    across_hosts: bool = False

    @property
    def gating(self) -> list[str]:
        """Names of the benchmarks that gate (significantly slower beyond the threshold)."""
        return [str(n) for n in self.rows.loc[self.rows["gates"], "name"]]

    @property
    def tests(self) -> int:
        """m: the number of benchmarks whose p-values Holm adjusts over."""
        return int(np.isfinite(self.rows["p_value"].to_numpy(float)).sum())

    @property
    def alpha_holm(self) -> float:
        """alpha / m: what the most significant benchmark's p must be below (Holm's first
        step), and so what a lone change must reach."""
        return self.alpha / max(1, self.tests)

    @property
    def needed_processes(self) -> int:
        """Processes per side with which a lone change could be significant after Holm."""
        return units_needed(self.alpha_holm)

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

    def _kind(self) -> tuple[str, str]:
        return TIMED_KINDS[self.timed]

    def test_description(self) -> str:
        """One sentence naming the statistics used."""
        return (f"head/base ratio of the medians of per-process medians with a {self._conf()} "
                f"two-stage bootstrap CI ({self.n_boot} resamples of processes, then of values "
                f"within them; seed {self.seed}); significant when the CI excludes 1 and the "
                f"two-sided Mann-Whitney U test of the per-process medians gives "
                f"p < {_num(self.alpha)} after Holm's adjustment over the benchmarks "
                f"(a side with one process: its values, pooled); MDE: the smallest slowdown "
                f"this benchmark's own spread and numbers would call significant as the only "
                f"change (an approximation: see pinbench compare's documentation)")

    def gating_rule(self) -> str:
        """One sentence stating when a benchmark gates."""
        return (f"a benchmark gates when it is significantly slower and its ratio of medians "
                f"exceeds {1 + self.threshold:.4g} (threshold {_pct(self.threshold)})")

    def _compared(self) -> pd.DataFrame:
        return self.rows[self.rows["ratio"].notna()]

    def _host_blind(self) -> bool:
        """Nothing was compared because base and head ran on different hosts."""
        return self._compared().empty and bool(self.rows["hosts_differ"].any())

    def _blind(self) -> bool:
        """No compared benchmark could have been significant on its own."""
        rows = self._compared()
        return bool(len(rows)) and not rows["reachable"].any()

    def design_lines(self) -> list[str]:
        """One line per design (numbers of processes and values per side) in the rows:
        what Holm needs, the smallest p the design can give, and what follows from it."""
        rows = self._compared()
        if rows.empty:
            return []
        m, level = self.tests, self.alpha_holm
        keys = ["unit", "base_runs", "head_runs", "base_n", "head_n"]
        out = []
        for key, group in rows.groupby(keys, sort=False):
            unit, b_runs, h_runs, b_n, h_n = key
            pooled = unit == UNITS[1]
            nb, nh = (b_n, h_n) if pooled else (b_runs, h_runs)
            shape = (f"{_n_text(b_runs, b_n)} against {_n_text(h_runs, h_n)} "
                     + ("(a side with one process, so values pooled" if pooled
                        else "(unit: the process") + f": {nb} against {nh})")
            min_p = float(group["min_p"].iloc[0])
            head = (f"{_plural(len(group), 'benchmark')}, {shape}: Holm over {m} needs "
                    f"p < {_num(self.alpha)}/{m} = {_p(level)} for the most significant; "
                    f"the smallest p {nb} against {nh} can give is {_p(min_p)}")
            if min_p >= level:
                out.append(f"{head}, so no change can be significant: cannot tell "
                           f"(needs >= {int(group['needed_processes'].iloc[0])} processes "
                           "per side)")
                continue
            mde = group["mde"].to_numpy(float)
            mde = mde[np.isfinite(mde)]
            span = (f"; MDE {_signed_pct(float(mde.min()))} to {_signed_pct(float(mde.max()))} "
                    f"(median {_signed_pct(float(np.median(mde)))})" if mde.size else "")
            out.append(f"{head}, so a change can be significant{span}")
        return out

    def _cannot_tell_text(self) -> str:
        return f"cannot tell (needs >= {self.needed_processes} processes per side)"

    def _headline(self, fail_on_model_change: bool) -> str:
        gating = self.gating
        n_model = len(self.model_changes)
        kind = self._kind()[0]
        if gating:
            head = (f"FAIL: {_plural(len(gating), 'benchmark')} significantly slower by more "
                    f"than {_pct(self.threshold)} ({kind})")
        elif fail_on_model_change and n_model:
            head = f"FAIL: {_plural(n_model, 'modelled value')} changed"
        elif self._host_blind():
            head = (f"NOT COMPARED: base and head ran on different hosts ({kind} values "
                    "compare only on one host; --across-hosts compares anyway)")
        elif self._blind():
            head = (f"CANNOT TELL: no benchmark's change ({kind}) could be significant after "
                    f"Holm over {self.tests}; needs >= {self.needed_processes} processes per "
                    "side")
        else:
            head = (f"PASS: no benchmark significantly slower by more than "
                    f"{_pct(self.threshold)} ({kind})")
        counts = self.rows["verdict"].value_counts()
        parts = [f"{int(counts.get(v, 0))} {v}" for v in VERDICTS]
        other_hosts = int((self.rows["hosts_differ"] & self.rows["ratio"].isna()).sum())
        if other_hosts:
            parts[-1] += f" ({other_hosts} not compared: hosts differ)"
        model = (f"{_plural(n_model, 'modelled change')}"
                 + (" (gates: --fail-on-model-change)" if fail_on_model_change and n_model
                    else ""))
        geo = f"geometric mean {_signed_pct(self.geomean)}: {self._geo_verdict()}"
        return f"{head}; {', '.join(parts)}; {geo}; {model}"

    def _verdict_text(self, r: Any, markers: bool) -> str:
        verdict = str(r.verdict)
        if verdict == "cannot tell":
            verdict = (f"cannot tell (needs >= {r.needed_processes} processes per side)"
                       if not _missing(r.ratio) else
                       "cannot tell (not compared: hosts differ)" if r.hosts_differ else
                       "cannot tell (not compared)")
        if r.gates:
            verdict += " (GATES)"
        if markers:
            verdict = {"slower": "🔴 ", "faster": "🟢 "}.get(str(r.verdict), "") + verdict
        return verdict

    def _measured_table(self, markers: bool) -> tuple[list[str], list[list[str]]]:
        header = ["benchmark", "base median", "head median", "n base", "n head", "head/base",
                  f"{self._conf()} CI", "p", "p Holm", "MDE", "verdict"]
        # n is "processes x values per process" (or the total when they differ)
        body = []
        for r in self.rows.itertuples(index=False):
            body.append([str(r.name), _time(r.base_median_s), _time(r.head_median_s),
                         _n_text(r.base_runs, r.base_n), _n_text(r.head_runs, r.head_n),
                         _ratio(r.ratio),
                         f"[{_ratio(r.ratio_lo)}, {_ratio(r.ratio_hi)}]", _p(r.p_value),
                         _p(r.p_holm), _mde(r.mde, r.ratio),
                         self._verdict_text(r, markers)])
        return header, body

    def _model_table(self) -> tuple[list[str], list[list[str]]]:
        header = ["benchmark", "key", "base", "head", "change"]
        body = [[str(r.name), str(r.key), _value(r.base), _value(r.head),
                 _change(r.base, r.head)] for r in self.model_changes.itertuples(index=False)]
        return header, body

    def _geo_verdict(self) -> str:
        if self._compared().empty:
            return "cannot tell (nothing compared)"
        if self.geo.verdict == "cannot tell":
            return f"cannot tell (needs >= {self.geo.needed_processes} processes per side)"
        if self.geo.sequential and self.geo.verdict in SIGNIFICANT:
            return f"{self.geo.verdict} (runs one after the other: the machine may have changed)"
        return self.geo.verdict

    def _geomean_line(self) -> str:
        n = int(self.rows["ratio"].notna().sum())
        g = self.geo
        line = (f"geometric mean of head/base over {_plural(n, 'benchmark')}: "
                f"{_ratio(self.geomean)} ({_signed_pct(self.geomean)}), {self._conf()} CI "
                f"[{_ratio(self.geomean_lo)}, {_ratio(self.geomean_hi)}] ({g.method}): "
                f"{self._geo_verdict()}")
        if g.reachable and math.isfinite(g.mde):
            line += f"; the least suite-wide slowdown it would show: {_signed_pct(g.mde)}"
        elif not g.reachable and n:
            line += (f" ({_plural(g.pairs, 'independent pair')} of processes; a verdict "
                     f"needs {g.pairs_needed})")
        return line

    def _model_heading(self, fail_on_model_change: bool) -> str:
        return ("deterministic metadata (events.*, model.*), compared exactly"
                + ("; a change gates (--fail-on-model-change)." if fail_on_model_change
                   else "; reported, does not gate."))

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
        kind, what = self._kind()
        out = [f"pinbench compare: base {self.base}, head {self.head} (suite {self.suite})",
               "",
               f"MODELLED: {self._model_heading(fail_on_model_change)}"]
        if len(self.model_changes):
            out += _aligned(*self._model_table(), right=range(2, 5))
        else:
            out.append("No modelled value changed.")
        out += ["",
                f"{kind.upper()}: {what} (pyperf values, seconds).",
                f"Test: {self.test_description()}.",
                f"Gate: {self.gating_rule()}."]
        out += [f"Design: {line}." for line in self.design_lines()]
        out.append("")
        out += _aligned(*self._measured_table(markers=False), right=range(1, 10))
        out += ["", f"{_cap(kind)}: {self._geomean_line()}."]
        if self.only_base:
            out.append(f"Only in base ({len(self.only_base)}): {', '.join(self.only_base)}")
        if self.only_head:
            out.append(f"Only in head ({len(self.only_head)}): {', '.join(self.only_head)}")
        if self.notes:
            out.append("")
        for note in self.notes:
            out.append(f"Note: {note}")
        out += ["", f"Result: {self._headline(fail_on_model_change)} "
                    f"(exit {self.exit_status(fail_on_model_change)})"]
        return "\n".join(out) + "\n"

    def _markdown(self, fail_on_model_change: bool) -> str:
        status = self.exit_status(fail_on_model_change)
        icon = "❌" if status else ("⚠️" if self._blind() or self._host_blind() else "✅")
        kind, what = self._kind()
        out = [f"### {icon} pinbench compare — {_md(self._headline(fail_on_model_change))}",
               "",
               f"Base `{self.base}` → head `{self.head}` · suite `{self.suite}` · "
               f"{_plural(len(self.rows), 'benchmark')} in common",
               "",
               "#### Modelled (deterministic `events.*`, `model.*` metadata, compared "
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
        out += ["", f"#### {_cap(kind)} ({what}; pyperf values)", "",
                f"{_cap(_md(self.test_description()))}. {_cap(_md(self.gating_rule()))}.", ""]
        out += [f"- **Design:** {_md(line)}." for line in self.design_lines()]
        out.append("")
        header, body = self._measured_table(markers=True)
        if len(body) <= MD_ROWS:
            out += _md_table(header, body, right=range(1, 10))
        else:  # a long suite: the significant changes in view, every benchmark folded
            changed = [r for r, v in zip(body, self.rows["verdict"], strict=True)
                       if v in SIGNIFICANT]
            if changed:
                out += _md_table(header, changed, right=range(1, 10))
            elif self._host_blind():
                out.append("Not compared: base and head ran on different hosts.")
            elif self._blind():
                out.append(f"No change could be significant: {self._cannot_tell_text()}.")
            else:
                out.append("No significant change.")
            out += ["", f"<details><summary>All {len(body)} benchmarks</summary>", ""]
            out += _md_table(header, body, right=range(1, 10))
            out += ["", "</details>"]
        out += ["", f"{_cap(_md(self._geomean_line()))}."]
        if self.only_base:
            out += ["", f"Only in base ({len(self.only_base)}): "
                    + ", ".join(f"`{n}`" for n in self.only_base)]
        if self.only_head:
            out += ["", f"Only in head ({len(self.only_head)}): "
                    + ", ".join(f"`{n}`" for n in self.only_head)]
        if self.notes:
            out += [""] + [f"> **Note:** {_md(n)}" for n in self.notes]
        return "\n".join(out) + "\n"

    def _json(self, fail_on_model_change: bool) -> str:
        kind, what = self._kind()
        g = self.geo
        changes = [{**rec, "relative": _relative(rec["base"], rec["head"])}
                   for rec in _records(self.model_changes)]
        doc = {
            "tool": "pinbench compare",
            "base": str(self.base),
            "head": str(self.head),
            "suite": self.suite,
            "threshold": self.threshold,
            "alpha": self.alpha,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "modelled": {
                "what": "deterministic events.* and model.* metadata, compared exactly",
                "gates": fail_on_model_change,
                "model_changes": changes,
            },
            "measured": {
                "kind": kind,
                "what": f"{what} (pyperf values)",
                "unit": "second",
                "test": self.test_description(),
                "gating_rule": self.gating_rule(),
                "tests": self.tests,
                "alpha_holm": self.alpha_holm,
                "reachable": not (self._blind() or self._host_blind()),
                "across_hosts": self.across_hosts,
                "needed_processes": self.needed_processes,
                "design": self.design_lines(),
                "rows": _records(self.rows),
                "geomean": self.geomean,
                "geomean_lo": self.geomean_lo,
                "geomean_hi": self.geomean_hi,
                "geomean_verdict": g.verdict,
                "geomean_ci": g.method,
                "geomean_reachable": g.reachable,
                "geomean_pairs": g.pairs,
                "geomean_pairs_needed": g.pairs_needed,
                "geomean_needed_processes": g.needed_processes,
                "geomean_mde": g.mde,
                "geomean_sequential": g.sequential,
                "gating": self.gating,
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
                  n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                  across_hosts: bool = False) -> Comparison:
    """Compare two pinbench results files of the same suite and schema (module docstring).

    A benchmark gates when its verdict is "slower" (bootstrap CI of the ratio above 1 and
    Mann-Whitney p < ``alpha`` after Holm) and its ratio of medians exceeds 1 + ``threshold``.
    Its measured values are compared only when base and head ran on one host (or a side's
    host is unknown), unless ``across_hosts``; its modelled values always are.

    Raises InputError (one line naming the files) for a file that is not a pinbench
    result, files of different suites, or no benchmark in common. Files of different
    results schemas compare their timed values; their modelled values differ as a whole.
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

    rows, log_boot, units, notes = [], [], [], []
    for name in common:
        b_hosts, h_hosts = _hosts(b_benches[name]), _hosts(h_benches[name])
        differ = _hosts_differ(b_hosts, h_hosts)
        row, boot, pair = _compare_values(name, _run_values(b_benches[name]),
                                          _run_values(h_benches[name]), n_boot=n_boot,
                                          seed=seed, alpha=alpha,
                                          stats=across_hosts or not differ)
        row.update(base_host=_host_text(b_hosts), head_host=_host_text(h_hosts),
                   hosts_differ=differ)
        rows.append(row)
        units.append(pair)
        if boot is not None:
            log_boot.append(np.log(boot))
        elif not differ or across_hosts or not (row["base_median_s"] > 0
                                                 and row["head_median_s"] > 0):
            side = "base" if not row["base_median_s"] > 0 else "head"
            notes.append(f"{name}: not compared (no measured value, or a median of 0, in {side})")
    frame = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    frame = frame.astype({"base_n": "int64", "head_n": "int64", "base_runs": "int64",
                          "head_runs": "int64", "gates": bool, "reachable": bool,
                          "needed_processes": "int64", "hosts_differ": bool})
    _detectability(frame, units, alpha)
    _verdicts(frame, alpha, threshold)
    geo = _geomean(frame, log_boot, alpha=alpha, n_boot=n_boot, seed=seed)

    if b_schema == h_schema:
        model_changes = _model_changes(b_benches, h_benches, common)
    else:  # the counting rules changed: key by key would list every benchmark
        model_changes = pd.DataFrame([{"name": "(every benchmark)", "key": "pinbench.schema",
                                       "base": b_schema, "head": h_schema}],
                                     columns=list(MODEL_COLUMNS), dtype=object)
        notes.append(f"results schema {b_schema} (base) vs {h_schema} (head): the model's "
                     "counting rules differ between them, so modelled values are not compared "
                     "key by key (one modelled change is listed); timed values are")
    notes += _host_notes(frame, across_hosts)
    notes += _pooled_notes(frame, alpha)
    notes += _machine_notes(b_benches, h_benches, frame)
    compared = [str(n) for n in frame.loc[frame["ratio"].notna(), "name"]]
    order = _sequential_note(b_benches, h_benches, compared) if compared else ""
    if order:
        geo.sequential = True
        notes.append(order)
    return Comparison(rows=frame, only_base=only_base, only_head=only_head,
                      geomean=geo.value, geomean_lo=geo.lo, geomean_hi=geo.hi,
                      model_changes=model_changes,
                      threshold=float(threshold), base=base, head=head, alpha=alpha,
                      n_boot=n_boot, seed=seed, suite=b_suite, notes=notes, geo=geo,
                      timed=_timed_kind(b_benches, h_benches, common),
                      across_hosts=across_hosts)


def _run_values(bench: pyperf.Benchmark) -> list[np.ndarray]:
    """A benchmark's measured values, one array per worker process (runs without any dropped)."""
    runs = [np.asarray(r.values, dtype=float) for r in bench.get_runs()]
    return [v for v in runs if v.size]


def _compare_values(name: str, base: Sequence[np.ndarray], head: Sequence[np.ndarray], *,
                    n_boot: int, seed: int, alpha: float, stats: bool = True
                    ) -> tuple[dict[str, Any], np.ndarray | None,
                               tuple[np.ndarray, np.ndarray] | None]:
    """One benchmark's row (detectability: :func:`_detectability`, verdict:
    :func:`_verdicts`, not yet set), its bootstrap replicates of the ratio and the units
    the test compared, base and head (both None if not compared).

    ``base`` and ``head`` hold one array of values per worker process. Without ``stats``
    the row gets only its medians (base and head not to be compared: other hosts).
    """
    hier = len(base) >= 2 and len(head) >= 2
    row: dict[str, Any] = {"name": name, "base_n": sum(len(v) for v in base),
                           "head_n": sum(len(v) for v in head), "base_runs": len(base),
                           "head_runs": len(head), "unit": UNITS[0] if hier else UNITS[1],
                           "base_median_s": math.nan, "head_median_s": math.nan,
                           "ratio": math.nan, "ratio_lo": math.nan, "ratio_hi": math.nan,
                           "p_value": math.nan, "p_holm": math.nan,
                           "verdict": "cannot tell", "gates": False, "min_p": math.nan,
                           "reachable": False, "needed_processes": 0, "mde": math.inf,
                           "mde_faster": math.nan, "base_host": None, "head_host": None,
                           "hosts_differ": False}
    if not base or not head:
        return row, None, None
    if hier:
        b_units = np.array([np.median(v) for v in base])
        h_units = np.array([np.median(v) for v in head])
    else:
        b_units, h_units = np.concatenate(base), np.concatenate(head)
    b_med, h_med = float(np.median(b_units)), float(np.median(h_units))
    row.update(base_median_s=b_med, head_median_s=h_med)
    if not (stats and b_med > 0 and h_med > 0):
        return row, None, None
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
    return row, boot, (b_units, h_units)


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


def _detectability(frame: pd.DataFrame,
                   units: Sequence[tuple[np.ndarray, np.ndarray] | None], alpha: float) -> None:
    """Set min_p, reachable, needed_processes, mde and mde_faster of every row (in place).

    ``units`` are each row's compared units (base, head), None where it was not compared.
    The level is Holm's first step, alpha / m: what a lone change must reach.
    """
    m = int(np.isfinite(frame["p_value"].to_numpy(float)).sum())
    level = alpha / max(1, m)
    needed = units_needed(level)
    for i, pair in enumerate(units):
        if pair is None:
            continue
        b_units, h_units = pair
        min_p = mannwhitney_min_p(len(b_units), len(h_units))
        reachable = min_p < level
        mde, mde_faster = math.inf, math.nan  # no change either way could be flagged
        if reachable and (b_units > 0).all() and (h_units > 0).all():
            b_log = np.log(b_units) - np.log(np.median(b_units))
            h_log = np.log(h_units) - np.log(np.median(h_units))
            up = shift_to_significance(b_log, h_log, level)
            down = shift_to_significance(h_log, b_log, level)  # head down = base up
            row = frame.iloc[i]
            ratio, lo, hi = (float(row[c]) for c in ("ratio", "ratio_lo", "ratio_hi"))
            # the CI moved with the change, at its observed relative width
            mde = max(math.exp(up), ratio / lo if lo > 0 else math.inf)
            mde_faster = min(math.exp(-down), ratio / hi if hi > 0 else 0.0)
        frame.loc[frame.index[i], ["min_p", "reachable", "needed_processes", "mde",
                                   "mde_faster"]] = [min_p, reachable, needed, mde, mde_faster]
    frame["reachable"] = frame["reachable"].astype(bool)
    frame["needed_processes"] = frame["needed_processes"].astype("int64")


def _verdicts(frame: pd.DataFrame, alpha: float, threshold: float) -> None:
    """Set p_holm, verdict and gates of every row (in place; after :func:`_detectability`)."""
    frame["p_holm"] = holm(frame["p_value"].to_numpy())
    sig = frame["p_holm"] < alpha
    slower = sig & (frame["ratio_lo"] > 1) & (frame["ratio"] > 1)
    faster = sig & (frame["ratio_hi"] < 1) & (frame["ratio"] < 1)
    # not significant: "cannot tell" where no change could have been (or nothing compared)
    none = np.where(frame["reachable"] & frame["ratio"].notna(), VERDICTS[2], VERDICTS[3])
    frame["verdict"] = np.where(slower, "slower", np.where(faster, "faster", none))
    frame["gates"] = slower & (frame["ratio"] > 1 + threshold)


def _geomean(frame: pd.DataFrame, log_boot: Sequence[np.ndarray], *, alpha: float,
             n_boot: int, seed: int) -> Geomean:
    """The suite's geometric mean of the ratios, its CI and verdict (module docstring).

    ``log_boot`` holds the log bootstrap replicates of each compared row, in row order.
    """
    valid = frame["ratio"].notna() & (frame["ratio"] > 0)
    pairs_needed = sign_test_units(alpha)
    rows = frame[valid]
    if rows.empty or not log_boot:
        return Geomean(pairs_needed=pairs_needed, method="nothing compared",
                       needed_processes=max(2, pairs_needed))
    logs = np.log(rows["ratio"].to_numpy(float))
    value = float(np.exp(logs.mean()))
    per_process = bool((rows["unit"] == UNITS[0]).all())
    if per_process:
        reps = np.exp(np.mean(np.vstack(log_boot), axis=0))
        method = ("each benchmark's two-stage bootstrap over its processes, averaged over "
                  "the benchmarks")
        pairs = int(np.minimum(rows["base_runs"], rows["head_runs"]).sum())
        # a benchmark that could be significant alone makes the average able to be too
        alone = bool((rows["min_p"] < alpha).any())
    else:
        rng = np.random.default_rng([seed, zlib.crc32(b"geomean")])
        idx = rng.integers(0, len(logs), size=(n_boot, len(logs)))
        reps = np.exp(logs[idx].mean(axis=1))
        method = ("bootstrap over the benchmarks' ratios: a side had one process, so the "
                  "spread between benchmarks stands for the spread between processes")
        pairs = len(logs)
        alone = False
    lo, hi = (float(q) for q in np.quantile(reps, [alpha / 2, 1 - alpha / 2]))
    reachable = pairs >= pairs_needed or alone
    m = len(logs)
    needed = min(max(2, math.ceil(pairs_needed / m)), units_needed(alpha))
    if not reachable:
        verdict = VERDICTS[3]
    elif lo > 1:
        verdict = "slower"
    elif hi < 1:
        verdict = "faster"
    else:
        verdict = VERDICTS[2]
    mde = value / lo if reachable and lo > 0 else math.inf
    return Geomean(value=value, lo=lo, hi=hi, verdict=verdict, method=method, pairs=pairs,
                   pairs_needed=pairs_needed, reachable=reachable, needed_processes=needed,
                   mde=mde)


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


def _pooled_notes(frame: pd.DataFrame, alpha: float) -> list[str]:
    """What is true of benchmarks compared value by value (a side had a single process)."""
    pooled = frame[(frame["unit"] == UNITS[1]) & frame["ratio"].notna()]
    if pooled.empty:
        return []
    m = int(np.isfinite(frame["p_value"].to_numpy(float)).sum())
    needed = int(pooled["needed_processes"].iloc[0])
    blind = pooled[~pooled["reachable"]]
    text = (f"{_plural(len(pooled), 'benchmark')} had a single worker process on a side, so "
            "their values were pooled: variance between processes (the larger part on a "
            "shared or virtual machine) is not in their intervals, so a change they flag may "
            "be the difference between two processes rather than between base and head")
    if len(blind):
        floor = float(blind["min_p"].min())
        text += (f"; and with so few values {'none' if len(blind) == len(pooled) else 'some'} "
                 f"of them can reach significance after Holm over {m} (the smallest p they "
                 f"can give is {_p(floor)}, the most significant needs "
                 f"p < {_p(alpha / max(1, m))})")
    return [text + f". Run >= {needed} worker processes per side (e.g. --suite ci)"]


def _sequential_note(b_benches: Mapping[str, pyperf.Benchmark],
                     h_benches: Mapping[str, pyperf.Benchmark], common: Sequence[str]) -> str:
    """A note when one file's runs all ended before the other's began (not interleaved),
    else "". Each benchmark's own processes are compared, but a change shared by every
    benchmark -- the geometric mean -- then also holds any drift of the machine."""
    spans = []
    for benches in (b_benches, h_benches):
        dates = [benches[n].get_dates() for n in common]
        dates = [d for d in dates if d]
        if not dates:
            return ""
        spans.append((min(d[0] for d in dates), max(d[1] for d in dates)))
    (b0, b1), (h0, h1) = spans
    if not (b1 < h0 or h1 < b0):
        return ""
    fmt = "%Y-%m-%d %H:%M"
    return (f"base ran {b0:{fmt}} to {b1:{fmt}} and head {h0:{fmt}} to {h1:{fmt}}, one after "
            "the other: a change shared by every benchmark (the geometric mean) also holds "
            "any change of the machine's load or state between the runs; pinbench "
            "compare-branches interleaves the sides")


def _timed_kind(b_benches: Mapping[str, pyperf.Benchmark],
                h_benches: Mapping[str, pyperf.Benchmark], common: Sequence[str]) -> str:
    """What the timed values are: "sim" (simulator speed), "measured" (real or kvm
    backing) or "mixed", from the benchmarks' ``param.backing`` (schema 1: sim)."""
    backings = {str(b[n].get_metadata().get("param.backing", "sim"))
                for b in (b_benches, h_benches) for n in common}
    if backings == {"sim"}:
        return "sim"
    return "measured" if "sim" not in backings else "mixed"


def _hosts(bench: pyperf.Benchmark) -> frozenset[str]:
    """The hosts that ran a benchmark's measured values: pyperf's ``hostname`` of each run
    with values (empty: unknown, e.g. a file older than the metadata)."""
    return frozenset(str(h) for r in bench.get_runs() if r.values
                     if (h := r.get_metadata().get("hostname")) not in (None, ""))


def _hosts_differ(base: frozenset[str], head: frozenset[str]) -> bool:
    """Base and head did not run on one host: each on one known host and they differ, or
    a side's runs span several hosts. An unknown side (no hostname) cannot be told apart."""
    return len(base) > 1 or len(head) > 1 or (len(base) == len(head) == 1 and base != head)


def _host_text(hosts: frozenset[str]) -> str | None:
    """A row's host: the name, names joined by ", " (several), None (unknown)."""
    return ", ".join(sorted(hosts)) if hosts else None


def _where(host: str | None) -> str:
    if host is None:
        return "an unknown host"
    return f"several hosts ({host})" if ", " in host else f"host {host}"


def _names_text(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NOTE_NAMES])
    more = len(names) - _NOTE_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


def _host_notes(frame: pd.DataFrame, across_hosts: bool) -> list[str]:
    """Per pair of hosts, the benchmarks whose measured values were not compared because
    base and head ran on different hosts (none with ``across_hosts``: the machines note
    says what those ratios then hold)."""
    if across_hosts:
        return []
    skipped = frame[frame["hosts_differ"] & frame["ratio"].isna()]
    notes = []
    for (b_host, h_host), group in skipped.groupby(["base_host", "head_host"], sort=False,
                                                    dropna=False):
        b_host = None if _missing(b_host) else str(b_host)
        h_host = None if _missing(h_host) else str(h_host)
        names = [str(n) for n in group["name"]]
        notes.append(f"measured values not compared for {_plural(len(names), 'benchmark')} "
                     f"({_names_text(names)}): base ran on {_where(b_host)}, head on "
                     f"{_where(h_host)}; measured times compare only on one host (pass "
                     "--across-hosts to compare anyway); modelled values are compared")
    return notes


def _machine_notes(b_benches: Mapping[str, pyperf.Benchmark],
                   h_benches: Mapping[str, pyperf.Benchmark], frame: pd.DataFrame
                   ) -> list[str]:
    """Warn when compared measured values ran on different machines (hosts: the rows;
    else the first compared benchmark's CPU), or the cost profiles differ."""
    notes = []
    compared = frame[frame["ratio"].notna()]
    across = compared[compared["hosts_differ"]]
    if len(across):  # only with across_hosts
        pairs = list(dict.fromkeys(zip(across["base_host"], across["head_host"], strict=True)))
        which = "; ".join(f"{b!r} vs {h!r}" for b, h in pairs)
        some = ("" if len(across) == len(compared)
                else f", {len(across)} of {len(compared)} compared benchmarks")
        notes.append(f"measured on different machines (hostname {which}{some}): measured "
                     "ratios compare machines too")
    elif len(compared):
        name = compared["name"].iloc[0]
        bmd, hmd = b_benches[name].get_metadata(), h_benches[name].get_metadata()
        for key in _MACHINE_KEYS:
            if bmd.get(key) != hmd.get(key):
                notes.append(f"measured on different machines ({key} {bmd.get(key)!r} vs "
                             f"{hmd.get(key)!r}): measured ratios compare machines too")
                break
    first = frame["name"].iloc[0]
    bmd, hmd = b_benches[first].get_metadata(), h_benches[first].get_metadata()
    costs = sorted(k for k in {*bmd, *hmd} if k.startswith("cost.") and k != "cost.source"
                   and bmd.get(k) != hmd.get(k))
    if costs:
        diffs = ", ".join(f"{k} {_value(bmd.get(k))} → {_value(hmd.get(k))}" for k in costs)
        notes.append(f"the cost profiles differ ({diffs}): modelled times change with them")
    return notes


# ---- entry point --------------------------------------------------------------------------
def main(base: str | Path, head: str | Path, *, threshold: float = 0.05, fmt: str = "text",
         fail_on_model_change: bool = False, across_hosts: bool = False) -> int:
    """Print the comparison in ``fmt`` to stdout and return the exit status (0 or 1).

    ``across_hosts`` compares measured values of benchmarks that base and head ran on
    different hosts too (module docstring, "Hosts"). InputError propagates (the CLI
    prints it as one line, exit 2).
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    comparison = compare_files(base, head, threshold=threshold, across_hosts=across_hosts)
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
    """"processes x values per process", or the total when processes differ in length."""
    if runs >= 1 and n % runs == 0:
        return f"{runs}x{n // runs}"
    return str(n)


def _p(p: float) -> str:
    if _missing(p):
        return "-"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _value(v: Any) -> str:
    return "(absent)" if v is None else str(v)


def _relative(base: Any, head: Any) -> float | None:
    """(head - base) / base of two numbers (None: not numbers, or base 0)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (base, head))
    if numbers and base:
        return (head - base) / base
    return None


def _change(base: Any, head: Any) -> str:
    rel = _relative(base, head)
    if rel is not None:
        return f"{100 * rel:+.3g} %"
    if base is None and head is not None:
        return "added"
    if head is None and base is not None:
        return "removed"
    return "changed" if base != head else ""


def _mde(mde: float, ratio: float) -> str:
    if _missing(ratio):
        return "-"
    return "none" if not math.isfinite(mde) else _signed_pct(mde)


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

"""The question pinbench exists for, answered on the model: which strategy is cheaper for
this guest, by how much, from which touch fraction on, and how sure.

Everything here is **modelled** (events x cost profile, the guest's accesses by the vCPU
model): each figure comes from :func:`pinning.model.lifecycle.run_lifecycle`, the same
path a suite's benchmark takes.

* :func:`side_by_side` -- each strategy's modelled time per phase and in all, the
  cheapest one named and every other one's ratio to it.
* :func:`break_even` -- the touch fraction at which two strategies cost the same, found
  by a root search over the fraction (:func:`scipy.optimize.brentq`, to
  :data:`FRACTION_TOL`), each point a full lifecycle; none when one strategy is cheaper
  at both ends of 0..1.
* :func:`sensitivity` -- each cost marked as an assumption in the profile (and any the
  user names) set to the ends of a range (default x0.5 and x2; a measured cost named by
  the user: the min and max of its measurement), and for each end the ratio, the
  break-even and whether the cheaper strategy flips: a tornado table.

A :class:`Lifecycles` caches every lifecycle it ran by strategy, touch fraction and
costs, and re-prices instead of re-running where that is exact: a changed cost whose
events never occur in the guest's accesses (e.g. WBINVD, at teardown only; CLFLUSH under
a strategy that never flushes in a fault; the lock's costs where no fault took a lock)
changes only the startup and teardown sums, which are events x cost; every other change
re-runs the lifecycle (the vCPU model's queueing is not linear in the costs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
from scipy.optimize import brentq

from pinning.model import strategies
from pinning.model.config import BenchConfig
from pinning.model.costs import EVENT_COST, CostProfile, modelled_ns
from pinning.model.names import InputError
from pinning.model.workloads import Workload

#: The touch fraction's tolerance of the break-even search (half a percent of the guest).
FRACTION_TOL = 5e-3
#: Default range of a varied assumption: its value times these factors.
DEFAULT_FACTORS = (0.5, 2.0)
#: The phases the vCPU model prices (their time is a makespan, not a sum).
_VCPU_PHASES = ("access", "remap")
#: Cost key -> the counters it prices (EVENT_COST read the other way).
_PRICED: dict[str, list[str]] = {}
for _counter, (_key, _) in EVENT_COST.items():
    _PRICED.setdefault(_key, []).append(_counter)
#: Costs the vCPU model uses only inside a lock's section.
_LOCK_KEYS = ("lock_hold_ns", "lock_cv")


@dataclass(frozen=True)
class Outcome:
    """One strategy's modelled lifecycle: time per phase (ns) and events per phase."""

    strategy: str
    touch_fraction: float
    model_ns: dict[str, float]
    events: dict[str, dict[str, int]]
    error: str | None = None
    #: whether any fault of the vCPU model held a lock (else lock costs cannot matter)
    locked: bool = True

    @property
    def total_ns(self) -> float:
        return float(sum(self.model_ns.values()))


class Lifecycles:
    """Modelled lifecycles of one configuration for any strategy, touch fraction and costs.

    ``config`` gives everything but the strategy and the touch fraction; ``workload``
    (a trace's) replaces its pattern, and then the touch fraction cannot change.
    ``max_workers`` > 1 lets independent points run in forked processes: the caller
    says how many fit in memory (a worker keeps up to
    :data:`pinning.model.lifecycle.STATE_CACHE_BYTES` of states of its own).
    """

    def __init__(self, config: BenchConfig, profile: CostProfile,
                 workload: Workload | None = None, max_workers: int = 1) -> None:
        self.config = config
        self.profile = profile
        self.workload = workload
        #: processes independent points may run in (see :func:`parallel`)
        self.max_workers = max_workers
        self.runs = 0  # lifecycles run (not re-priced, not cached)
        self._cache: dict[tuple, Outcome] = {}
        # The guest's accesses at a fraction are the same for every strategy and cost:
        # built once (a 64 GiB guest's random order takes ~0.3 s).
        self._workloads: dict[float, Workload] = {}

    def outcome(self, strategy: str, fraction: float | None = None,
                changes: dict[str, float] | None = None) -> Outcome:
        """The lifecycle of ``strategy`` at ``fraction`` (default: the configuration's) with
        ``changes`` to the profile's costs."""
        fraction = self.config.touch_fraction if fraction is None else float(fraction)
        changes = dict(changes or {})
        key = (strategy, fraction, tuple(sorted(changes.items())))
        if key not in self._cache:
            self._cache[key] = self._evaluate(strategy, fraction, changes)
        return self._cache[key]

    def record(self, strategy: str, res: Any) -> None:
        """Take a lifecycle already run for ``strategy`` at the configuration's fraction and
        the profile's costs (a :class:`~pinning.model.lifecycle.LifecycleResult`: its
        events and modelled times are the model's on every backing)."""
        key = (strategy, self.config.touch_fraction, ())
        self._cache[key] = _outcome(strategy, self.config.touch_fraction, res, self.profile)

    def prefetch(self, points: Iterable[tuple[str, float | None, dict[str, float] | None]]
                 ) -> None:
        """Evaluate the points not yet known, in parallel where CPUs and memory allow
        (each point is independent: a lifecycle of its own)."""
        todo, seen = [], set()
        for strategy, fraction, changes in points:
            f = self.config.touch_fraction if fraction is None else float(fraction)
            key = (strategy, f, tuple(sorted((changes or {}).items())))
            if key not in self._cache and key not in seen:
                seen.add(key)
                todo.append((strategy, f, dict(changes or {})))
        for point, (out, runs) in zip(todo, parallel(self, _point_task, todo), strict=True):
            strategy, f, changes = point
            self._cache[(strategy, f, tuple(sorted(changes.items())))] = out
            self.runs += runs

    def total_ns(self, strategy: str, fraction: float | None = None,
                 changes: dict[str, float] | None = None) -> float:
        return self.outcome(strategy, fraction, changes).total_ns

    def _evaluate(self, strategy: str, fraction: float, changes: dict[str, float]) -> Outcome:
        if changes:
            base = self.outcome(strategy, fraction)
            if _repriceable(base, changes):
                profile = self.profile.with_costs(**changes)
                model = {phase: (ns if phase in _VCPU_PHASES
                                 else modelled_ns(base.events[phase], profile))
                         for phase, ns in base.model_ns.items()}
                return replace(base, model_ns=model)
        from pinning.model.lifecycle import run_lifecycle

        profile = self.profile.with_costs(**changes) if changes else self.profile
        config = replace(self.config.for_strategy(strategy)[0], touch_fraction=fraction,
                         backing="sim", host="warm")
        workload = self.workload
        if workload is None:
            from pinning.model.lifecycle import build_workload

            if fraction not in self._workloads:
                self._workloads.clear()  # the last fraction only: they can be large
                self._workloads[fraction] = build_workload(config)
            workload = self._workloads[fraction]
        res = run_lifecycle(config, profile, workload=workload)
        self.runs += 1
        return _outcome(strategy, fraction, res, profile)


def _outcome(strategy: str, fraction: float, res: Any, profile: CostProfile) -> Outcome:
    # A lock held for 0 ns leaves no trace: then whether faults took one is unknown.
    held = any(v.lock_hold_ns > 0 for v in res.vcpu.values())
    return Outcome(strategy, fraction, dict(res.model_ns),
                   {p: dict(ev) for p, ev in res.events.items()}, res.error,
                   locked=held or profile.costs["lock_hold_ns"] == 0)


def _repriceable(base: Outcome, changes: dict[str, float]) -> bool:
    """Whether ``changes`` move only the startup and teardown sums of ``base`` (exact)."""
    for key in changes:
        if key in _LOCK_KEYS and not base.locked:
            continue  # no fault took a lock: no hold to price, no hold time drawn
        if key not in _PRICED:  # the guest's touch, the fault spread: vCPU model only
            return False
        for phase in _VCPU_PHASES:
            events = base.events.get(phase, {})
            if any(events.get(counter, 0) for counter in _PRICED[key]):
                return False
    return True


# -------------------------------------------------------------------------- parallel

#: The Lifecycles a forked worker inherits (set right before the pool forks).
_INHERITED: Lifecycles | None = None


def workers(lc: Lifecycles, tasks: int) -> int:
    """Processes for ``tasks`` independent lifecycles: at most ``lc.max_workers`` (its
    creator knows the memory: each worker holds guests' arrays of its own) and this
    machine's CPUs; 1 where fork is missing."""
    if tasks < 2 or not hasattr(os, "fork"):
        return 1
    return max(1, min(lc.max_workers, os.cpu_count() or 1, tasks))


def parallel(lc: Lifecycles, fn: Callable[[Any], Any], tasks: Sequence[Any]) -> list[Any]:
    """``[fn(task) for task in tasks]``, spread over :func:`workers` forked processes that
    inherit ``lc`` (its cache, the compiled kernels); ``fn`` reads it as
    ``_INHERITED`` and returns the runs it made last, which the caller adds to
    ``lc.runs``. Serial when one worker is all there is room for."""
    global _INHERITED
    _INHERITED = lc
    n = workers(lc, len(tasks))
    if n == 1:
        # In this process: the tasks count their runs into lc too, and return them as a
        # worker would -- counted once, by the caller.
        before = lc.runs
        out = [fn(task) for task in tasks]
        lc.runs = before
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(fn, tasks))


def _point_task(point: tuple[str, float, dict[str, float]]) -> tuple[Outcome, int]:
    lc = _INHERITED
    assert lc is not None
    runs = lc.runs
    out = lc.outcome(*point)
    return out, lc.runs - runs


# --------------------------------------------------------------------------- answers


def parse_strategies(text: str) -> tuple[str, ...]:
    """``upfront,demand`` or ``all`` -> the strategies, in registry order; InputError for
    an unknown or repeated one."""
    known = strategies.names()
    if text.strip() == "all":
        return known
    names = [s.strip() for s in text.split(",")]
    for name in names:
        if name not in known:
            raise InputError(f"unknown strategy {name!r} (choose from {', '.join(known)}, "
                             "a comma-separated list of them, or all)")
    if len(set(names)) != len(names):
        raise InputError(f"strategy listed twice in {text!r}")
    return tuple(names)


@dataclass(frozen=True)
class SideBySide:
    """Each strategy's modelled lifecycle, the cheapest named, every ratio to it."""

    outcomes: dict[str, Outcome]

    @property
    def cheapest(self) -> str:
        ok = {s: o for s, o in self.outcomes.items() if o.error is None}
        return min(ok or self.outcomes, key=lambda s: (ok or self.outcomes)[s].total_ns)

    def ratio(self, strategy: str) -> float:
        """``strategy``'s modelled total over the cheapest one's (>= 1)."""
        best = self.outcomes[self.cheapest].total_ns
        return self.outcomes[strategy].total_ns / best if best > 0 else math.nan


def side_by_side(lc: Lifecycles, names: Sequence[str]) -> SideBySide:
    """The strategies' modelled lifecycles at the configuration's touch fraction."""
    return SideBySide({s: lc.outcome(s) for s in names})


@dataclass(frozen=True)
class BreakEven:
    """Where two strategies' modelled totals cross over the touch fraction 0..1."""

    a: str
    b: str
    #: the touch fraction at which they cost the same; None if they do not cross in 0..1
    fraction: float | None
    #: the cheaper strategy below and above the fraction (without one: at 0 and at 1;
    #: "neither" where they cost the same)
    cheaper_below: str
    cheaper_above: str
    #: the range of fractions searched
    searched: tuple[float, float] = (0.0, 1.0)

    def text(self) -> str:
        lo, hi = self.searched
        span = f"{lo:g}..{hi:g}"
        if self.fraction is None:
            at0 = (f"equal at {lo:g}" if self.cheaper_below == "neither"
                   else f"{self.cheaper_below} cheaper at {lo:g}")
            if self.cheaper_below == self.cheaper_above:
                return (f"none in {span}: {self.cheaper_below} is cheaper at {lo:g} and "
                        f"at {hi:g}")
            return f"none in {span}: {at0}, {self.cheaper_above} cheaper at {hi:g}"
        return (f"{self.fraction:.3f}: {self.cheaper_below} cheaper below, "
                f"{self.cheaper_above} above")


def break_even(lc: Lifecycles, a: str, b: str, changes: dict[str, float] | None = None,
               guess: float | None = None,
               window: tuple[float, float] | None = None) -> BreakEven:
    """The touch fraction at which ``a`` and ``b`` cost the same (modelled), by brentq.

    Each point of the search is a full lifecycle of both strategies at that fraction.
    With ``guess`` (the fraction found before a change of the costs) secant steps come
    first -- from the window's ends, or from the guess and the configuration's
    fraction -- accepted when the last slope puts the root within FRACTION_TOL; else,
    as without a guess, brentq over the bracket
    [0, fraction] or [fraction, 1] that changes sign (the lifecycle at fraction 1, the
    slowest of a large guest, only when needed). Without a crossing: the cheaper at 0
    and at 1. ``window`` = (lo, hi) searches that range only (a crossing outside it is
    not looked for; the result's ``searched`` says so).
    """
    if lc.workload is not None:
        raise InputError("a break-even touch fraction needs a pattern: a trace's accesses "
                         "are fixed")
    if lc.config.pattern == "boot":
        raise InputError("the boot pattern has no touch fraction: no break-even")

    def diff(f: float) -> float:
        return lc.total_ns(b, f, changes) - lc.total_ns(a, f, changes)

    def cheaper(d: float) -> str:
        return a if d > 0 else b if d < 0 else "neither"

    known = lc.config.touch_fraction
    low, high = window or (0.0, 1.0)
    if guess is not None:
        # Secant steps from two points already known: the window's ends (the totals at
        # 0 are re-priced, those at the configuration's fraction are the ratio's), else
        # the guess and the configuration's fraction.
        start = (low, high) if window is not None else (guess, known)
        found = _secant(diff, *start, (low, high))
        if found is not None:
            f, slope = found
            return BreakEven(a, b, f, cheaper(-slope), cheaper(slope), (low, high))
    # Brackets in the order of their cost: split at the configuration's own fraction
    # (already run), and 0..1 last. A tie at 0 or 1 is not a break-even (at 0 nothing
    # is touched): only a crossing inside is.
    if window is not None:
        brackets = [window]
    else:
        brackets = [(0.0, known), (known, 1.0)] if 0.0 < known < 1.0 else [(0.0, 1.0)]
    for lo, hi in brackets:
        d_lo, d_hi = diff(lo), diff(hi)
        if d_lo * d_hi < 0:
            f = brentq(diff, lo, hi, xtol=FRACTION_TOL)
            return BreakEven(a, b, float(f), cheaper(d_lo), cheaper(d_hi), (low, high))
        for f, d, other in ((lo, d_lo, d_hi), (hi, d_hi, d_lo)):
            if d == 0 and 0.0 < f < 1.0 and other != 0:  # a tie inside: the crossing
                near, far = cheaper(other), cheaper(-other)  # the other end's side, beyond
                return BreakEven(a, b, f, *((near, far) if f == hi else (far, near)),
                                 (low, high))
    return BreakEven(a, b, None, cheaper(diff(low)), cheaper(diff(high)), (low, high))


def _secant(diff, guess: float, other: float, within: tuple[float, float] = (0.0, 1.0),
            steps: int = 3) -> tuple[float, float] | None:
    """A root of ``diff`` by secant steps from ``guess`` and ``other``, with
    the slope there; accepted only when the last step's slope puts the root within
    FRACTION_TOL of it (the totals are near affine in the fraction, so one or two steps
    usually do). None: let the bracketing search decide."""
    f0 = guess
    f1 = other if abs(other - guess) > FRACTION_TOL else min(1.0, guess + 0.05)
    if f1 == f0:
        f1 = max(0.0, guess - 0.05)
    d0, d1 = diff(f0), diff(f1)
    for _ in range(steps):
        if d1 == d0:
            return None
        slope = (d1 - d0) / (f1 - f0)
        f2 = f1 - d1 / slope
        if not within[0] < f2 < within[1]:
            return None
        d2 = diff(f2)
        slope2 = (d2 - d1) / (f2 - f1) if f2 != f1 else slope
        if slope2 != 0 and abs(d2 / slope2) < FRACTION_TOL and (slope2 > 0) == (slope > 0):
            return f2, slope2
        f0, d0, f1, d1 = f1, d1, f2, d2
    return None


def break_evens(lc: Lifecycles, names: Sequence[str]) -> list[BreakEven]:
    """The break-even of every pair: the points every search starts from -- each
    strategy at 0, and at 1 where a pair does not change sign between 0 and the
    configuration's fraction -- evaluated first, in parallel."""
    known = lc.config.touch_fraction
    lc.prefetch([(s, f, None) for s in names for f in (0.0, known)])
    ends = set()
    for a, b in pairs(names):
        d0 = lc.total_ns(b, 0.0) - lc.total_ns(a, 0.0)
        dk = lc.total_ns(b, known) - lc.total_ns(a, known)
        if not (0.0 < known < 1.0 and d0 * dk < 0):
            ends.update((a, b))
    lc.prefetch([(s, 1.0, None) for s in names if s in ends])
    return [break_even(lc, a, b) for a, b in pairs(names)]


def pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every pair of strategies, in the order given."""
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]


# ---------------------------------------------------------------------- sensitivity


@dataclass(frozen=True)
class Varied:
    """A cost the sensitivity analysis varies, over [low, high]."""

    key: str
    kind: str  # the profile's provenance of the value
    base: float
    low: float
    high: float
    how: str  # "x0.5..x2" or "measured min..max"


def varied_costs(profile: CostProfile, named: Iterable[str] = (),
                 factors: tuple[float, float] = DEFAULT_FACTORS) -> list[Varied]:
    """The costs to vary: every one the profile marks as an assumption, plus ``named``.

    An assumption (or a named value without a measured range) goes from its value times
    ``factors[0]`` to times ``factors[1]``; a named measured value over the min..max of
    its measurement.
    """
    values = profile.values()
    named = list(dict.fromkeys(named))
    for key in named:
        if key not in values:
            raise InputError(f"unknown cost key {key!r} to vary (a profile has: "
                             f"{', '.join(values)})")
    lo_f, hi_f = factors
    if not (0 < lo_f < 1 < hi_f) or not all(map(math.isfinite, factors)):
        raise InputError(f"the sensitivity range x{lo_f:g}..x{hi_f:g} must have a low "
                         "factor between 0 and 1 and a high factor above 1")
    keys = [k for k in values if profile.kind(k) == "assumption"] + \
        [k for k in named if profile.kind(k) != "assumption"]
    out = []
    for key in keys:
        value, kind = values[key], profile.kind(key)
        mark = profile.provenance.get(key)
        if kind == "measured" and mark is not None and mark.low is not None:
            out.append(Varied(key, kind, value, mark.low, mark.high,
                              "measured min..max"))
        else:
            out.append(Varied(key, kind, value, value * lo_f, value * hi_f,
                              f"x{lo_f:g}..x{hi_f:g}"))
    return out


SENSITIVITY_COLUMNS = ("key", "kind", "range", "base", "low", "high", "ratio_low",
                       "ratio_high", "break_even_low", "break_even_high", "cheaper_low",
                       "cheaper_high", "flips", "swing")


def sensitivity(lc: Lifecycles, names: Sequence[str], costs: Sequence[Varied]
                ) -> tuple[pd.DataFrame, dict]:
    """The tornado table: for each varied cost, at its low and its high end, the ratio of
    the base runner-up to the base cheapest strategy (modelled totals at the
    configuration's touch fraction), their break-even touch fraction (searched between
    0 and the configuration's fraction, or between it and 1 where the base's lies;
    NaN: none there) and the cheapest of all the strategies; ``flips`` when that is not
    the base's cheapest. Rows sorted by the ratio's swing, widest first. Also returns
    the base: its pair, ratio, break-even and the window searched (``searched``).
    """
    if len(names) < 2:
        raise InputError("--sensitivity compares strategies: give two or more "
                         "(--strategy upfront,demand or all)")
    base = side_by_side(lc, names)
    winner = base.cheapest
    runner = min((s for s in names if s != winner), key=lambda s: base.ratio(s))
    fractional = lc.workload is None and lc.config.pattern != "boot"
    base_be = break_even(lc, winner, runner) if fractional else None
    guess = base_be.fraction if base_be else None
    # Each end's break-even is searched on the side of the configuration's fraction
    # where the base one lies (below it when there is none): both ends of that window
    # are known already (the fraction's totals are the ratio's; 0 is re-priced), so no
    # end needs the slow lifecycles near fraction 1 unless the base's crossing is there.
    # A crossing that leaves the window has moved past the configuration's fraction
    # (the pair's order there flips: the ratio crosses 1) or is gone.
    known = lc.config.touch_fraction
    if not 0.0 < known < 1.0:
        window = (0.0, 1.0)
    elif guess is None or guess <= known:
        window = (0.0, known)
    else:
        window = (known, 1.0)
    if guess is not None:
        # The base's crossing again, by the ends' own search: an end whose cost changes
        # no total in the window then meets the same points, all known, and agrees.
        again = break_even(lc, winner, runner, None, guess, window)
        guess = again.fraction if again.fraction is not None else guess
    global _FOCUS
    _FOCUS = (tuple(names), winner, runner, fractional, guess, window)
    ends = [(v.key, value) for v in costs for value in (v.low, v.high)]
    results = iter(parallel(lc, _end_task, ends))
    rows = []
    for v in costs:
        row: dict = {"key": v.key, "kind": v.kind, "range": v.how, "base": v.base,
                     "low": v.low, "high": v.high}
        for end in ("low", "high"):
            totals, fraction, runs = next(results)
            lc.runs += runs
            row[f"ratio_{end}"] = (totals[runner] / totals[winner]
                                   if totals[winner] > 0 else math.nan)
            row[f"cheaper_{end}"] = min(totals, key=totals.__getitem__)
            row[f"break_even_{end}"] = math.nan if fraction is None else fraction
        row["flips"] = row["cheaper_low"] != winner or row["cheaper_high"] != winner
        row["swing"] = abs(row["ratio_high"] - row["ratio_low"])
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))
    frame = frame.sort_values("swing", ascending=False, kind="stable").reset_index(drop=True)
    summary = {"cheapest": winner, "runner_up": runner, "ratio": base.ratio(runner),
               "break_even": base_be.fraction if base_be else None,
               "searched": list(window) if fractional else None}
    return frame, summary


#: What every end of a sensitivity run compares (set before the pool forks).
_FOCUS: tuple = ()


def _end_task(end: tuple[str, float]) -> tuple[dict[str, float], float | None, int]:
    """One end of one varied cost: every strategy's total at the configuration's
    fraction, and the focus pair's break-even (None: none in 0..1)."""
    lc = _INHERITED
    assert lc is not None
    names, winner, runner, fractional, guess, window = _FOCUS
    runs = lc.runs
    changes = {end[0]: end[1]}
    totals = {s: lc.total_ns(s, None, changes) for s in names}
    be = break_even(lc, winner, runner, changes, guess, window) if fractional else None
    return totals, (be.fraction if be else None), lc.runs - runs


def cached_sensitivity(config: BenchConfig, names: Sequence[str], profile: CostProfile,
                       costs: Sequence[Varied]) -> tuple[pd.DataFrame, dict]:
    """:func:`sensitivity` of a pattern's configuration, from the model's cache when it
    already ran (reports draw it again and again); keyed by this module's source too."""
    from dataclasses import asdict
    from hashlib import sha256
    from pathlib import Path

    from pinning.model.cache import cached

    def compute() -> dict:
        frame, summary = sensitivity(Lifecycles(config, profile), names, costs)
        return {"rows": frame.to_dict(orient="records"), "summary": summary}

    key = [sha256(Path(__file__).read_bytes()).hexdigest(), asdict(config), list(names),
           profile.costs, profile.spread, [asdict(v) for v in costs]]
    out = cached("sensitivity", key, compute)
    return pd.DataFrame(out["rows"], columns=list(SENSITIVITY_COLUMNS)), out["summary"]

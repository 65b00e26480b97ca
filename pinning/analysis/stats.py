"""Statistics over loaded results: scaling exponents, break-even, fault latency, published data.

Every function takes the frames of :func:`pinning.analysis.results.load_results` and says in its
output which numbers are **modelled** (event counts x cost profile, vCPU model) and which
**measured** (wall time of real memory or a real KVM guest: the real and kvm backings'
rows; callers pass no sim rows as measured, whose wall time is simulator speed).
Deterministic: bootstraps use ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from pinning.analysis.summary import pair_key, strategies_in
from pinning.model import strategies
from pinning.model.names import InputError

METRICS = ("measured", "modelled")
#: Parameters that, with the strategy, identify a series along guest size.
SERIES_KEYS = ("strategy", "level", "vcpus", "pattern", "layout", "touch_fraction",
               "remap_fraction", "backing")

#: DESIGN §2: the RFC series' own boot times (second posting, 8 Mar 2022, kernel
#: 5.17-rc6; CPU and backing not stated). Total guest boot, so ≈5.6 s are fixed.
#: One ``<strategy>_s`` column per strategy the series measured.
PUBLISHED_BOOT = pd.DataFrame({
    "guest_gb": [4, 16, 64, 128, 192],
    "upfront_s": [6.16, 7.38, 12.17, 18.20, 24.56],
    "demand_s": [5.71, 5.91, 6.16, 6.50, 6.80],
})
PUBLISHED_SOURCE = ("RFC 'KVM: SVM: Implement demand page pinning', second posting "
                    "(8 Mar 2022, kernel 5.17-rc6): total guest boot time")
#: The fixed part of a published boot: the 4 GB demand-pinned boot (≈ no pinning work).
PUBLISHED_FIXED_S = 5.71
#: The strategies the published table has a column of.
PUBLISHED_STRATEGIES = tuple(c.removesuffix("_s") for c in PUBLISHED_BOOT.columns
                             if c.endswith("_s"))


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InputError(f"metric {metric!r} is not one of {', '.join(METRICS)}")


def _family(df: pd.DataFrame, family: str) -> pd.DataFrame:
    if "family" not in df or not (df["family"] == family).any():
        raise InputError(f"no {family} benchmarks in the results")
    return df[df["family"] == family]


def _loglog_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares of log y = log a + k log x: (k, a, standard error of k)."""
    lx, ly = np.log(x), np.log(y)
    k, loga = np.polyfit(lx, ly, 1)
    n = len(lx)
    if n > 2:
        resid = ly - (loga + k * lx)
        se = math.sqrt(float(resid @ resid) / (n - 2) / float(((lx - lx.mean()) ** 2).sum()))
    else:
        se = math.nan
    return float(k), float(math.exp(loga)), se


def _slopes(lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Least-squares slopes of many series at once: ly has shape (n_boot, n_sizes)."""
    dx = lx - lx.mean()
    return ((ly - ly.mean(axis=1, keepdims=True)) @ dx) / float(dx @ dx)


def scaling_fit(df: pd.DataFrame, family: str = "startup", *, metric: str = "measured",
                level: str | None = None, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Fit time ∝ size^k per strategy (and level, and any other parameter that varies).

    x is the guest size in GiB, y the time in seconds, so ``a`` is the time of a 1 GiB
    guest. ``metric="measured"``: y = median of the measured values per size; with a
    per-value frame (``load_results(values=True)``) the 95 % CI is a percentile
    bootstrap (each size's values resampled with replacement, medians refitted,
    ``n_boot`` times); with a per-benchmark frame there is no CI (NaN).
    ``metric="modelled"``: y = ``model_measured_ns`` (modelled time of the measured
    phases, deterministic); the CI is a t-interval on the fit's residuals (3+ sizes;
    with 2 sizes the line is exact and k_lo = k_hi = k). A series whose time is 0 at
    every size is reported as k = 0 (constant) with a note; zero times among positive
    ones are dropped (and noted). Needs 2+ sizes in some series, else InputError.
    """
    _check_metric(metric)
    fam = _family(df, family)
    if level is not None:
        fam = fam[fam["level"] == level]
        if fam.empty:
            raise InputError(f"no {family} benchmarks at level {level}")
    per_value = metric == "measured" and "value_s" in fam
    ycol = "value_s" if per_value else ("median_s" if metric == "measured"
                                        else "model_measured_ns")
    if ycol not in fam or fam[ycol].isna().all():
        raise InputError(f"{family} benchmarks have no {ycol} ({metric} time)")
    keys = [k for k in SERIES_KEYS if k in fam and fam[k].notna().all()]
    rng = np.random.default_rng(seed)
    rows = []
    for group, sub in fam.groupby(keys, sort=True):
        sizes = np.sort(sub["guest_gib"].unique())
        if len(sizes) < 2:
            continue
        per_size = [sub.loc[sub["guest_gib"] == s, ycol].to_numpy(float) for s in sizes]
        if metric == "modelled":
            per_size = [v / 1e9 for v in per_size]
        y = np.array([np.median(v) for v in per_size])
        row = dict(zip(keys, group, strict=True))
        row.update(metric=metric, n_sizes=len(sizes), gib_min=sizes[0], gib_max=sizes[-1],
                   note="")
        keep = y > 0
        if not keep.any():
            row.update(k=0.0, k_lo=0.0, k_hi=0.0, a=0.0, ci="none",
                       note=f"{metric} time is 0 at every size (constant)")
            rows.append(row)
            continue
        if not keep.all():
            row["note"] = f"dropped {int((~keep).sum())} size(s) with {metric} time 0"
            sizes, y = sizes[keep], y[keep]
            per_size = [v for v, kp in zip(per_size, keep, strict=True) if kp]
            row["n_sizes"] = len(sizes)
            if len(sizes) < 2:
                row.update(k=math.nan, k_lo=math.nan, k_hi=math.nan, a=math.nan, ci="none")
                rows.append(row)
                continue
        k, a, se = _loglog_fit(sizes, y)
        row.update(k=k, a=a)
        if metric == "modelled":
            if len(sizes) > 2:
                t = sps.t.ppf(0.975, len(sizes) - 2)
                row.update(k_lo=k - t * se, k_hi=k + t * se, ci="t-interval on residuals")
            else:
                row.update(k_lo=k, k_hi=k, ci="exact (2 sizes)")
        elif per_value:
            lx = np.log(sizes)
            boot = np.empty((n_boot, len(sizes)))
            for j, v in enumerate(per_size):
                v = v[v > 0]
                idx = rng.integers(0, len(v), size=(n_boot, len(v)))
                boot[:, j] = np.log(np.median(v[idx], axis=1))
            slopes = _slopes(lx, boot)
            lo, hi = np.percentile(slopes, [2.5, 97.5])
            row.update(k_lo=float(lo), k_hi=float(hi), ci=f"bootstrap (n={n_boot}, percentile)")
        else:
            row.update(k_lo=math.nan, k_hi=math.nan,
                       ci="none (per-benchmark medians; load values=True for a bootstrap)")
        rows.append(row)
    if not rows:
        raise InputError(f"{family} {metric} scaling fit needs at least 2 guest sizes "
                         f"per strategy; the results have "
                         f"{fam['guest_gib'].nunique()} size(s) per series")
    head = ["strategy", "k", "k_lo", "k_hi", "a", "n_sizes", "metric"]
    out = pd.DataFrame(rows)
    return out[head + [c for c in out.columns if c not in head]]


def published_k(*, subtract_fixed: bool = True) -> pd.DataFrame:
    """Fitted k of DESIGN §2's published boot times, per strategy (t-interval on residuals).

    ``subtract_fixed=True`` fits published - PUBLISHED_FIXED_S (the fixed boot;
    non-positive points dropped), otherwise the total boot times.
    """
    rows = []
    for strategy in PUBLISHED_STRATEGIES:
        x = PUBLISHED_BOOT["guest_gb"].to_numpy(float)
        y = PUBLISHED_BOOT[f"{strategy}_s"].to_numpy(float)
        if subtract_fixed:
            y = y - PUBLISHED_FIXED_S
        keep = y > 0
        k, a, se = _loglog_fit(x[keep], y[keep])
        t = sps.t.ppf(0.975, int(keep.sum()) - 2)
        rows.append({"strategy": strategy, "k": k, "k_lo": k - t * se, "k_hi": k + t * se,
                     "a": a, "n_sizes": int(keep.sum()), "metric": "published",
                     "note": (f"total boot - {PUBLISHED_FIXED_S} s fixed" if subtract_fixed
                              else "total boot")})
    return pd.DataFrame(rows)


def break_even(df: pd.DataFrame, *, metric: str = "modelled", guest_size: int | None = None,
               level: str | None = None, vcpus: int | None = None) -> pd.DataFrame:
    """Lifecycle cost vs touch fraction, and where each pair of strategies crosses.

    Cost in seconds: ``model_total_ns`` (modelled) or ``median_s`` (measured). One row
    per touch fraction of each (guest size, level, vCPUs, pattern, layout) series and
    each pair of strategies (``first``, ``second``, in registry order) that both have
    2+ touch fractions there; columns ``first_s``, ``second_s``, ``crossing`` (touch
    fraction where first - second changes sign, by linear interpolation between the
    bracketing points; NaN if it does not in the measured range) and ``note`` — both
    repeated on each row of a series and pair.
    """
    _check_metric(metric)
    fam = _family(df, "lifecycle")
    for key, value in (("guest_size", guest_size), ("level", level), ("vcpus", vcpus)):
        if value is not None:
            fam = fam[fam[key] == value]
    ycol = "model_total_ns" if metric == "modelled" else "median_s"
    scale = 1e-9 if metric == "modelled" else 1.0
    keys = ["guest_size", "guest_gib", "level", "vcpus", "pattern", "layout"]
    out = []
    for group, sub in fam.groupby(keys, sort=True):
        wide = sub.groupby(["touch_fraction", "strategy"])[ycol].median().unstack("strategy")
        names = strategies_in(wide.columns)
        for first, second in itertools.combinations(names, 2):
            pair = wide[[first, second]].dropna().sort_index() * scale
            if len(pair) < 2:
                continue
            t = pair.index.to_numpy(float)
            diff = (pair[first] - pair[second]).to_numpy()
            crossing, note = _crossing(t, diff, first, second)
            frame = pd.DataFrame({"first": first, "second": second, "touch_fraction": t,
                                  "first_s": pair[first].to_numpy(),
                                  "second_s": pair[second].to_numpy()})
            for k, v in zip(keys, group, strict=True):
                frame[k] = v
            frame["metric"] = metric
            frame["crossing"] = crossing
            frame["note"] = note
            out.append(frame)
    if not out:
        raise InputError("break-even needs lifecycle benchmarks of two strategies at 2+ "
                         "touch fractions with the same guest size, level and vCPUs")
    res = pd.concat(out, ignore_index=True)
    return res[[*keys, "first", "second", "touch_fraction", "first_s", "second_s", "metric",
                "crossing", "note"]]


def _crossing(t: np.ndarray, diff: np.ndarray, first: str, second: str) -> tuple[float, str]:
    """First touch fraction where diff (first - second) reaches 0, and a note."""
    rng = f"{t[0]:g}-{t[-1]:g}"
    found = []
    for i in range(len(t)):
        if diff[i] == 0:
            found.append(float(t[i]))
        elif i + 1 < len(t) and diff[i] * diff[i + 1] < 0:
            found.append(float(t[i] + (t[i + 1] - t[i]) * diff[i] / (diff[i] - diff[i + 1])))
    found = sorted(set(found))
    if not found:
        cheaper = second if diff[0] > 0 else first
        return math.nan, f"no crossing in {rng}: {cheaper} is cheaper over the whole range"
    note = f"crosses at {found[0]:.3g}"
    if len(found) > 1:
        note += f" (and {len(found) - 1} more time(s) in {rng}; first shown)"
    return found[0], note


def latency_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per fault-storm benchmark: modelled per-fault p50/p99, faults/s and lock wait share.

    ``lock_wait_share`` is the vCPU time spent waiting for the per-VM lock
    (lock_wait_ns / (vCPUs x makespan)). ``p50_extra_ns`` is a benchmark's p50 minus
    that of the same benchmark under the baseline strategy (:func:`strategies.baseline`,
    whose faults pin nothing): the fault cost a strategy adds; NaN for baseline rows
    and without a pair. All modelled (vCPU model, cost profile).
    """
    fam = _family(df, "fault_storm")
    need = ["vcpu_access_latency_p50_ns", "vcpu_access_faults_per_s"]
    missing = [c for c in need if c not in fam or fam[c].isna().all()]
    if missing:
        raise InputError(f"fault_storm benchmarks have no {', '.join(missing)} "
                         "(vCPU model output)")
    out = pd.DataFrame({
        "name": fam["name"], "strategy": fam["strategy"], "guest_gib": fam["guest_gib"],
        "level": fam["level"], "vcpus": fam["vcpus"], "pattern": fam["pattern"],
        "p50_ns": fam["vcpu_access_latency_p50_ns"],
        "p99_ns": fam["vcpu_access_latency_p99_ns"],
        "faults_per_s": fam["vcpu_access_faults_per_s"],
        "lock_wait_share": fam["vcpu_access_lock_wait_ns"]
        / (fam["vcpus"] * fam["vcpu_access_makespan_ns"]),
    })
    key = out["name"].map(pair_key)
    base = out["strategy"] == strategies.baseline()
    base_p50 = dict(zip(key[base], out.loc[base, "p50_ns"], strict=True))
    extra = out["p50_ns"] - key.map(base_p50).astype(float)
    out["p50_extra_ns"] = extra.where(~base)
    out["source"] = "modelled"
    return out.reset_index(drop=True)


# ---- what a comparison can detect (used by pinning.analysis.compare) ---------------------------
def mannwhitney_min_p(n1: int, n2: int) -> float:
    """The smallest two-sided p-value :func:`scipy.stats.mannwhitneyu` can give ``n1``
    against ``n2`` untied values, whatever they are (complete separation).

    Decides whether a comparison can be significant at all before looking at its values.
    Computed by scipy on separated samples, so it follows scipy's choice of method: exact
    (``2 / C(n1 + n2, n1)``) when a side has at most 8 values, the normal approximation
    with continuity correction beyond, whose smallest p is larger than the exact one
    (9 against 9: 0.00041, not 0.000041). 1.0 when a side is empty.
    """
    if n1 < 1 or n2 < 1:
        return 1.0
    low = np.arange(n1, dtype=float)
    high = np.arange(n1, n1 + n2, dtype=float)
    return float(sps.mannwhitneyu(high, low, alternative="two-sided").pvalue)


def units_needed(level: float, *, limit: int = 10_000) -> int:
    """The least n such that n against n units, and any number above it, can give a
    Mann-Whitney p below ``level`` (:func:`mannwhitney_min_p`).

    For a suite of m benchmarks Holm's first step needs p < alpha / m, so
    ``units_needed(alpha / m)`` is how many processes per side let a single change be
    significant. "Any number above" matters because scipy switches from the exact test to
    the normal approximation above 8 units, whose smallest p is larger. Raises InputError
    when ``level`` is not in (0, 1] or ``limit`` units do not suffice.
    """
    if not 0 < level <= 1:
        raise InputError(f"significance level {level!r} must be in (0, 1]")
    last_fail = 0
    for n in range(1, limit + 1):
        if mannwhitney_min_p(n, n) >= level:
            last_fail = n
        elif n > 8:  # normal approximation from here on: its smallest p falls with n
            return last_fail + 1
    raise InputError(f"no design up to {limit} units per side reaches p < {level:g}")


def shift_to_significance(base: np.ndarray, head: np.ndarray, level: float) -> float:
    """The least shift s >= 0 such that ``head + s`` against ``base`` gives a two-sided
    Mann-Whitney p below ``level`` with head above base; ``inf`` if no shift does.

    Used on log values centred on their medians, where ``exp(s)`` is the ratio of medians
    at which these samples' own spread would first be called significantly higher: a
    minimum detectable effect for that design and that dispersion (an effect of this size
    comes out significant in about half of repeated runs). U grows with s one pair at a
    time, at the differences ``base_i - head_j``, so the answer is one of them (found by
    bisection over them).
    """
    base = np.asarray(base, dtype=float)
    head = np.asarray(head, dtype=float)
    if base.size == 0 or head.size == 0:
        return math.inf
    edges = np.unique(np.subtract.outer(base, head).ravel())
    # a shift strictly inside each gap (and past the last edge: complete separation)
    gaps = np.diff(edges)
    pad = gaps.min() if gaps.size else 1.0
    probes = np.append(edges[:-1] + gaps / 2, edges[-1] + pad)
    mean_u = base.size * head.size / 2

    def significant(i: int) -> bool:
        res = sps.mannwhitneyu(head + probes[i], base, alternative="two-sided")
        return bool(res.statistic > mean_u and res.pvalue < level)

    if not significant(len(probes) - 1):
        return math.inf
    lo, hi = -1, len(probes) - 1  # significant(hi) holds; the predicate is monotone in i
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if significant(mid):
            hi = mid
        else:
            lo = mid
    return max(0.0, float(edges[hi]))


def sign_test_units(level: float, *, limit: int = 10_000) -> int:
    """The least number k of independent pairs for which all k moving the same way gives
    a two-sided sign-test p (:func:`scipy.stats.binomtest`, ``2 / 2**k``) below ``level``.

    A percentile bootstrap over k units excludes "no change" whenever all k move the same
    way, which without any change happens with probability ``2 / 2**k``: below this k a
    bootstrap interval over them cannot carry a verdict at ``level`` (6 at 0.05).
    """
    if not 0 < level <= 1:
        raise InputError(f"significance level {level!r} must be in (0, 1]")
    for k in range(1, limit + 1):
        if sps.binomtest(k, k).pvalue < level:
            return k
    raise InputError(f"no number of pairs up to {limit} reaches p < {level:g}")

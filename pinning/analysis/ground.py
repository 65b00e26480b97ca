"""Model against ground truth: published boot times and real-KVM measurements (tidy frames).

* :func:`published_vs_model` sets DESIGN §2's published boot times next to the model's
  startup for the same guest sizes under one or more cost profiles: per point and for
  the fitted slopes (ms per GB), with relative errors.
* :func:`kvm_vs_model` sets the kvm backing's measured startup and touch-all times (the
  ``ground`` suite) next to the model's prediction for the same configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pinning.analysis.stats import PUBLISHED_BOOT, PUBLISHED_FIXED_S, PUBLISHED_STRATEGIES
from pinning.model.cache import model_run
from pinning.model.config import BenchConfig
from pinning.model.costs import CostProfile, load_profile, modelled_ns
from pinning.model.units import PAGE_SIZE

GiB = 1 << 30
#: Guest size at which the model's startup events are counted; they are exactly linear in
#: the guest size (tests/test_ground.py checks that), so other sizes are scaled from it.
_BASE_GIB = 1


def startup_events(strategy: str, level: str = "4k") -> dict[str, int]:
    """The model's startup events for a 1 GiB guest (the model's run, cached)."""
    config = BenchConfig("startup", strategy, _BASE_GIB * GiB, level)
    return model_run(config, load_profile())["events"]["startup"]


def _slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares slope and intercept of y on x."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def published_vs_model(profiles: Sequence[CostProfile]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per point and per slope: published boot times vs the model's startup.

    Published sizes are GB as the posting gives them, taken as GiB of guest RAM. A
    point's published *startup* is its total boot minus PUBLISHED_FIXED_S (the 4 GB
    demand boot, i.e. the boot without pinning work); its relative error is
    (modelled - published) / published where the published startup is > 0. Slopes are
    least-squares fits of total boot (published) and modelled startup against size, in
    ms per GB. Returns (points, slopes).
    """
    points, slopes = [], []
    gb = PUBLISHED_BOOT["guest_gb"].to_numpy(float)
    for strategy in PUBLISHED_STRATEGIES:
        events = startup_events(strategy)
        published = PUBLISHED_BOOT[f"{strategy}_s"].to_numpy(float)
        pub_slope, _ = _slope(gb, published)
        for profile in profiles:
            per_gib_s = modelled_ns(events, profile) / 1e9 / _BASE_GIB
            model = per_gib_s * gb
            for size, total, m in zip(gb, published, model, strict=True):
                start = total - PUBLISHED_FIXED_S
                points.append({
                    "strategy": strategy, "profile": profile.name, "guest_gb": int(size),
                    "published_boot_s": total, "published_startup_s": start,
                    "modelled_startup_s": m,
                    "rel_error": (m - start) / start if start > 0 else np.nan})
            mod_slope, _ = _slope(gb, model)
            slopes.append({
                "strategy": strategy, "profile": profile.name,
                "published_ms_per_gb": pub_slope * 1e3, "modelled_ms_per_gb": mod_slope * 1e3,
                "rel_error": (mod_slope - pub_slope) / pub_slope})
    return pd.DataFrame(points), pd.DataFrame(slopes)


KVM_KEYS = ["strategy", "guest_size", "level", "vcpus", "host"]
#: (family, lifecycle phase, label) of the kvm backing's two measured quantities.
_KVM_PHASES = (("startup", "startup", "startup"), ("fault_storm", "access", "touch all"))


def _model_ns(row: pd.Series, phase: str, profile: CostProfile, cache: dict) -> float:
    """The model's time of ``phase`` for the configuration of a kvm result row, under
    ``profile`` (the model's run, cached per configuration and profile)."""
    key = (row["strategy"], int(row["guest_size"]), row["level"], int(row["vcpus"]),
           row.get("pattern") or "sequential", float(row.get("touch_fraction") or 1.0),
           profile.name, profile.source)
    if key not in cache:
        config = BenchConfig("fault_storm", key[0], key[1], key[2], vcpus=key[3],
                             pattern=key[4], touch_fraction=key[5])
        cache[key] = model_run(config, profile)["model_ns"]
    return float(cache[key].get(phase, np.nan))


def kvm_vs_model(df: pd.DataFrame,
                 profiles: Sequence[CostProfile] | None = None) -> pd.DataFrame:
    """The kvm backing's measured startup and touch-all times beside the model's.

    ``df`` is :func:`pinning.analysis.results.load_results` output; rows with ``backing == "kvm"``
    of the startup family give the measured startup (median of the values), those of
    the fault_storm family the measured touch of all memory. The model's times are the
    ``model_startup_ns`` / ``model_access_ns`` recorded with the run (under the profile
    it ran with, ``cost_profile``), or with ``profiles`` the model run again for the
    same configuration under each of them (one row per profile). Per-page figures are
    per 4 KiB page of guest RAM (startup) or per page touched (touch all).
    """
    kvm = df[df["backing"] == "kvm"] if "backing" in df else df.iloc[0:0]
    cols = ["phase", *KVM_KEYS, "profile", "measured_s", "modelled_s", "ns_per_page",
            "model_ns_per_page", "rel_error", "kvm_pf_taken", "kvm_exits"]
    out, cache = [], {}
    for family, phase, label in _KVM_PHASES:
        for _, r in kvm[kvm["family"] == family].iterrows():
            pages = r["guest_size"] // PAGE_SIZE
            if phase == "access":
                touched = r.get("kvm_pages_touched")
                pages = int(touched) if pd.notna(touched) and touched else pages
            measured = float(r["median_s"])
            if profiles is None:
                models = [(r.get("cost_profile"),
                           float(r.get(f"model_{phase}_ns", np.nan)) / 1e9)]
            else:
                models = [(p.name, _model_ns(r, phase, p, cache) / 1e9) for p in profiles]
            for name, model in models:
                out.append({
                    "phase": label, **{k: r[k] for k in KVM_KEYS}, "profile": name,
                    "measured_s": measured, "modelled_s": model,
                    "ns_per_page": measured * 1e9 / pages,
                    "model_ns_per_page": model * 1e9 / pages,
                    "rel_error": (model - measured) / measured if measured > 0 else np.nan,
                    "kvm_pf_taken": r.get("kvm_stats_pf_taken", np.nan),
                    "kvm_exits": r.get("kvm_stats_exits", np.nan)})
    frame = pd.DataFrame(out, columns=cols)
    return frame.sort_values(["phase", "profile", "strategy", "level", "vcpus", "guest_size"],
                             ascending=[False, True, True, True, True, True],
                             ignore_index=True)

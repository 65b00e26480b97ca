"""Model against ground truth: published boot times and real-KVM measurements (tidy frames).

* :func:`published_vs_model` sets DESIGN §2's published boot times (RFC v2's cover
  letter) next to the model's boot of the same guest sizes, per strategy variant and
  cost profile: modelled boot = B0 + startup + the boot's own touches, where B0, the
  fixed part of a boot, is the one constant taken from the table (the 4 GB demand
  point minus the model's own 4 GB ``demand-v2`` boot).
* :func:`kvm_vs_model` sets the kvm backing's measured startup and touch-all times (the
  ``ground`` suite) next to the model's prediction for the same configuration, and
  :func:`kvm_ranking` says whether model and measurement rank the strategies alike.

The model runs come from :func:`pinning.model.cache.model_run` (cached: a report whose
runs are cached imports no numba).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pinning.analysis.stats import PUBLISHED_BOOT
from pinning.model import strategies
from pinning.model.cache import model_run
from pinning.model.config import BenchConfig
from pinning.model.costs import SNP_COST_KEYS, CostProfile, modelled_ns
from pinning.model.units import PAGE_SIZE, unit_pages

GiB = 1 << 30
#: How the published boots are modelled: the posting's baseline kernel, a CPU that keeps
#: encrypted memory coherent (docs/model.md: Milan reports SME_COHERENT), 4 KiB pages,
#: the TDP MMU, one vCPU booting the guest's own kernel.
PUBLISHED_CONFIG = {"kernel": "5.17", "sme_coherent": "yes", "mmu": "tdp", "level": "4k",
                    "pattern": "boot", "vcpus": 1}
#: Published column -> the strategies modelled against it (RFC v2's cover letter measured
#: its own code, ``demand-v2``; RFC v1 is shown against the same column).
PUBLISHED_MODELS: dict[str, tuple[str, ...]] = {"upfront": ("upfront",),
                                                "demand": ("demand-v2", "demand")}
#: The variant whose modelled 4 GB boot fixes B0.
B0_FROM = ("demand", "demand-v2")


def boot_config(strategy: str, gib: float, **overrides: object) -> BenchConfig:
    """The configuration of a modelled published boot of a ``gib`` GiB guest."""
    return BenchConfig("boot", strategy, int(gib * GiB), **{**PUBLISHED_CONFIG, **overrides})


def modelled_boot_s(strategy: str, gib: float, profile: CostProfile,
                    **overrides: object) -> dict[str, float]:
    """The model's startup and boot-touch time (s) of a ``gib`` GiB guest's boot."""
    run = model_run(boot_config(strategy, gib, **overrides), profile)["model_ns"]
    return {"startup_s": run.get("startup", 0.0) / 1e9, "touch_s": run.get("access", 0.0) / 1e9}


def distinct_profiles(profiles: Sequence[CostProfile]) -> list[CostProfile]:
    """``profiles`` with names that tell them apart: a name two profiles share (two
    calibrations are both "calibrated") gets the profile's file name added, so that every
    table row, plot and title says which profile it is."""
    names = [p.name for p in profiles]
    return [p if names.count(p.name) == 1
            else replace(p, name=f"{p.name} ({Path(p.source).name})") for p in profiles]


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x."""
    return float(np.polyfit(x, y, 1)[0])


def published_vs_model(profiles: Sequence[CostProfile], **overrides: object
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per point and per slope: published boot times vs the model's boots.

    Published sizes are GB as the posting gives them, taken as GiB of guest RAM
    (**choice**: the posting does not say). For each profile, B0 = the published 4 GB
    demand boot minus the model's 4 GB ``demand-v2`` boot; each point's modelled boot is
    B0 + startup + the boot's touches (``overrides`` change PUBLISHED_CONFIG, e.g.
    ``level="2m"``). The 4 GB demand point is B0's and is not an error of the model's.
    Slopes are least-squares fits against size in ms per GB. Returns (points, slopes).
    """
    points, slopes = [], []
    gb = PUBLISHED_BOOT["guest_gb"].to_numpy(float)
    column, b0_strategy = B0_FROM
    for profile in distinct_profiles(profiles):
        first = modelled_boot_s(b0_strategy, gb[0], profile, **overrides)
        b0 = float(PUBLISHED_BOOT[f"{column}_s"].iloc[0]) - first["startup_s"] - first["touch_s"]
        for published_as, variants in PUBLISHED_MODELS.items():
            published = PUBLISHED_BOOT[f"{published_as}_s"].to_numpy(float)
            pub_slope = _slope(gb, published)
            for strategy in variants:
                model = []
                for size, total in zip(gb, published, strict=True):
                    run = modelled_boot_s(strategy, size, profile, **overrides)
                    boot = b0 + run["startup_s"] + run["touch_s"]
                    model.append(boot)
                    is_b0 = published_as == column and size == gb[0]
                    points.append({
                        "strategy": strategy, "published_as": published_as,
                        "profile": profile.name, "guest_gb": int(size), "b0_s": b0,
                        "startup_s": run["startup_s"], "boot_touch_s": run["touch_s"],
                        "modelled_boot_s": boot, "published_boot_s": total,
                        "rel_error": np.nan if is_b0 and strategy == b0_strategy
                        else (boot - total) / total})
                mod_slope = _slope(gb, np.array(model))
                slopes.append({
                    "strategy": strategy, "published_as": published_as,
                    "profile": profile.name, "published_ms_per_gb": pub_slope * 1e3,
                    "modelled_ms_per_gb": mod_slope * 1e3,
                    "rel_error": (mod_slope - pub_slope) / pub_slope})
    return pd.DataFrame(points), pd.DataFrame(slopes)


KVM_KEYS = ["strategy", "prefault", "guest_size", "level", "vcpus", "host"]
#: (family, lifecycle phase, label) of the kvm backing's measured quantities.
_KVM_PHASES = (("startup", "startup", "startup"), ("fault_storm", "access", "touch all"),
               ("convert", "convert", "convert"))
#: Costs of work only an SEV host does: the kvm backing runs a plain guest, which never
#: flushes caches for encryption, and has no RMP, no PSP and no private memory
#: attributes (docs/model.md, "Real backings").
SEV_ONLY_COSTS = ("clflush_page_ns", "page_flush_ns", "wbinvd_ns", *SNP_COST_KEYS)


def executed_profile(profile: CostProfile, strategy: str, level: str) -> CostProfile:
    """``profile`` priced for what the kvm backing executes of ``strategy``'s lifecycle.

    The backing runs a plain (non-SEV) guest: no cache flushes; pins only for a strategy
    that pins at startup, and those with ``mlock``, which pins a host page at a time (a
    2 MiB THP is one) where KVM's ``pin_user_pages`` counts every 4 KiB page: so a
    modelled pin costs ``pin_ns`` / pages per host page. RFC v2's pin lock stays priced
    (``lock_hold_ns`` also prices the shadow MMU's mmu_lock, which the guest does take);
    :func:`_model_s` leaves out KVM's SEV metadata.
    """
    per_host_page = unit_pages(level)
    changes: dict[str, float] = dict.fromkeys(SEV_ONLY_COSTS, 0.0)
    if strategies.get(strategy).pins_at_startup():
        changes.update(pin_ns=profile.costs["pin_ns"] / per_host_page,
                       unpin_ns=profile.costs["unpin_ns"] / per_host_page)
    else:
        changes.update(pin_ns=0.0, unpin_ns=0.0)
    return replace(profile.with_costs(**changes), name=profile.name)


def _mmu(row: pd.Series, profile: CostProfile | None) -> str:
    """The MMU the row's VM ran on: its own ``mmu`` parameter, or (results from before
    the parameter existed) the host a calibrated profile describes, else the default."""
    value = row.get("mmu")
    if isinstance(value, str) and value:
        return value
    if profile is not None and isinstance(profile.host.get("mmu"), str):
        return str(profile.host["mmu"])
    return str(BenchConfig("fault_storm").mmu)


def _model_s(row: pd.Series, phase: str, profile: CostProfile, pages: int
             ) -> tuple[float, float]:
    """The model's time (s) of ``phase`` for the configuration of a kvm result row under
    ``profile``: (what the kvm backing executes, what an SEV host pays) -- cached runs.

    The kvm guest stores to every 4 KiB page it touches, the model's pattern to one page
    per unit: at 2m, the other 511 stores per unit (``pages`` touched in all, spread
    over the vCPUs' slices) are added at ``guest_touch_ns`` each, to both. A guest_memfd
    strategy keeps its prefault; its plain VM has no launch image (the executed run has
    none)."""
    gmem = strategies.get(row["strategy"]).guest_memfd
    config = BenchConfig("convert" if phase == "convert" else "fault_storm", row["strategy"],
                         int(row["guest_size"]), row["level"], vcpus=int(row["vcpus"]),
                         pattern=row.get("pattern") or "sequential",
                         touch_fraction=float(row.get("touch_fraction") or 1.0),
                         mmu=_mmu(row, profile), prefault=_prefault(row),
                         convert_fraction=float(row.get("convert_fraction") or 0.1))
    executed = executed_profile(profile, config.strategy, config.level)
    sev = float(model_run(config, profile)["model_ns"].get(phase, np.nan)) / 1e9
    run = model_run(replace(config, image_size=0) if gmem else config, executed)
    if phase == "startup":  # a plain guest allocates none of KVM's SEV metadata
        events = {k: v for k, v in run["events"]["startup"].items() if k != "metadata_bytes"}
        return modelled_ns(events, executed) / 1e9, sev
    stores = (pages - pages // unit_pages(config.level)) * profile.costs["guest_touch_ns"]
    extra = stores / config.vcpus / 1e9
    return float(run["model_ns"].get(phase, np.nan)) / 1e9 + extra, sev + extra


def _prefault(row: pd.Series) -> str:
    """The row's prefault (results from before guest_memfd have none: "none")."""
    value = row.get("prefault")
    return value if isinstance(value, str) and value else "none"


def variant(strategy: str, prefault: str) -> str:
    """A strategy as the kvm tables name it: with its prefault where it has one."""
    return strategy if prefault == "none" else f"{strategy} ({prefault})"


def _vm_fixed_s(row: pd.Series) -> float:
    """Creating the VM and its first entry (s), as the kvm backing recorded them: measured,
    not modelled (every strategy pays it alike); 0 where the results lack them."""
    parts = [row.get("kvm_create_ns"), row.get("kvm_first_insn_ns")]
    return sum(float(p) for p in parts if p is not None and pd.notna(p)) / 1e9


def kvm_vs_model(df: pd.DataFrame,
                 profiles: Sequence[CostProfile] | None = None) -> pd.DataFrame:
    """The kvm backing's measured startup and touch-all times beside the model's.

    ``df`` is :func:`pinning.analysis.results.load_results` output; rows with ``backing ==
    "kvm"`` of the startup family give the measured startup (median of the values), those
    of the fault_storm family the measured touch of all memory. **Measured**: the phase's
    median (``measured_s``); of startup, the part the model models is the rest after the
    VM's creation and first entry (``vm_fixed_s``, measured per VM, the same for every
    strategy): ``compared_s``. **Modelled** (``modelled_s``): the model's run of the same
    configuration, on the MMU the VM ran on (:func:`_mmu`), priced for what the backing
    executes (:func:`executed_profile`); ``modelled_sev_s`` is what an SEV host pays
    (flushes, KVM's pins). Under each of ``profiles``, or else the profile the run
    recorded (the recorded model is the SEV one). ``rel_error`` = (modelled - compared) /
    compared; NaN where the model has nothing to do (a startup that pins nothing).
    Per-page figures are per 4 KiB page of guest RAM (startup) or per page touched.
    Profiles keep the order given (the last is the one a plot shows by default), named
    apart by :func:`distinct_profiles`.
    """
    if profiles is not None:
        profiles = distinct_profiles(profiles)
    kvm = df[df["backing"] == "kvm"] if "backing" in df else df.iloc[0:0]
    cols = ["phase", *KVM_KEYS, "profile", "mmu", "measured_s", "vm_fixed_s", "compared_s",
            "modelled_s", "modelled_sev_s", "ns_per_page", "model_ns_per_page", "rel_error",
            "kvm_pf_taken", "kvm_exits"]
    out = []
    for family, phase, label in _KVM_PHASES:
        for _, r in kvm[kvm["family"] == family].iterrows():
            pages = r["guest_size"] // PAGE_SIZE
            fixed = _vm_fixed_s(r) if phase == "startup" else 0.0
            if phase in ("access", "convert"):
                key = "kvm_pages_touched" if phase == "access" else "kvm_pages_retouched"
                touched = r.get(key)
                pages = int(touched) if pd.notna(touched) and touched else pages
            measured = float(r["median_s"])
            compared = max(measured - fixed, 0.0)
            if profiles is None:
                recorded = float(r.get(f"model_{phase}_ns", np.nan)) / 1e9
                models = [(r.get("cost_profile"), _mmu(r, None), recorded, recorded)]
            else:
                models = [(p.name, _mmu(r, p), *_model_s(r, phase, p, pages))
                          for p in profiles]
            for name, mmu, model, sev in models:
                nothing = model == 0.0 and phase == "startup"
                out.append({
                    "phase": label, **{k: r.get(k) for k in KVM_KEYS},
                    "prefault": _prefault(r), "profile": name,
                    "mmu": mmu, "measured_s": measured, "vm_fixed_s": fixed,
                    "compared_s": compared, "modelled_s": model, "modelled_sev_s": sev,
                    "ns_per_page": compared * 1e9 / pages,
                    "model_ns_per_page": model * 1e9 / pages,
                    "rel_error": (np.nan if nothing or compared <= 0
                                  else (model - compared) / compared),
                    "kvm_pf_taken": r.get("kvm_stats_pf_taken", np.nan),
                    "kvm_exits": r.get("kvm_stats_exits", np.nan)})
    frame = pd.DataFrame(out, columns=cols)
    # profiles in the order given (not alphabetical): "the last profile" stays the last
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["profile"]))}
    frame["_order"] = frame["profile"].map(order)
    return frame.sort_values(["phase", "_order", "strategy", "level", "vcpus", "guest_size"],
                             ascending=[False, True, True, True, True, True],
                             ignore_index=True).drop(columns="_order")


def kvm_ranking(table: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (size, level, vCPUs, host state, profile): the lifecycle cost per
    4 KiB page -- startup (without the VM's creation, which every strategy pays alike)
    plus touching all memory -- of each strategy, measured and modelled, which strategy
    each ranks cheaper, and whether they agree.

    ``table`` is :func:`kvm_vs_model` output (both phases present).
    """
    keys = ["profile", "guest_size", "level", "vcpus", "host"]
    rows = []
    table = table[table["phase"].isin(("startup", "touch all"))]
    prefault = table["prefault"] if "prefault" in table else ["none"] * len(table)
    table = table.assign(strategy=[variant(s, p) for s, p in
                                   zip(table["strategy"], prefault, strict=True)])
    for group, sub in table.groupby(keys, sort=True):
        per = sub.groupby("strategy")[["ns_per_page", "model_ns_per_page"]].sum()
        counts = sub.groupby("strategy")["phase"].nunique()
        per = per[counts == 2]  # both startup and touch-all measured
        if len(per) < 2:
            continue
        measured = per["ns_per_page"].idxmin()
        modelled = per["model_ns_per_page"].idxmin()
        row = dict(zip(keys, group, strict=True))
        for strategy, r in per.iterrows():
            row[f"{strategy}_measured_ns_per_page"] = r["ns_per_page"]
            row[f"{strategy}_modelled_ns_per_page"] = r["model_ns_per_page"]
        row.update(measured_cheaper=measured, modelled_cheaper=modelled,
                   agree=measured == modelled)
        rows.append(row)
    return pd.DataFrame(rows)


#: The relative error the real-guest target allows (issue #11; README "Model fidelity").
KVM_TOLERANCE = 0.25


def kvm_fit(table: pd.DataFrame, ranking: pd.DataFrame, profile: str,
            tolerance: float = KVM_TOLERANCE) -> dict[str, object]:
    """How well ``profile``'s model fits the warm-host kvm rows: phases compared, how many
    within ``tolerance``, the worst (as text), and ranking agreement."""
    rows = table[(table["profile"] == profile) & (table["host"] == "warm")
                 & table["rel_error"].notna()]
    worst = "none compared"
    if not rows.empty:
        w = rows.loc[rows["rel_error"].abs().idxmax()]
        worst = (f"{w['phase']} {w['strategy']} {w['guest_size'] / 2**30:g} GiB {w['level']} "
                 f"{int(w['vcpus'])} vCPU {w['rel_error']:+.0%}")
    ranked = ranking[(ranking["profile"] == profile) & (ranking["host"] == "warm")] if (
        not ranking.empty) else ranking
    return {"profile": profile, "tolerance": tolerance, "compared": len(rows),
            "within": int((rows["rel_error"].abs() <= tolerance).sum()), "worst": worst,
            "ranked": len(ranked), "agree": int(ranked["agree"].sum()) if len(ranked) else 0}

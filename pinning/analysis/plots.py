"""Plots of pinbench results: matplotlib Figures for reports, notebooks and tests.

Every function takes the frame of :func:`pinning.analysis.results.load_results`, returns a
:class:`matplotlib.figure.Figure` (object-oriented API, no pyplot state) drawn in one
shared style (``STYLE``; the same colour per strategy everywhere), labels each number
with its kind of time (:data:`pinning.model.names.TIME_KINDS`): **modelled** (event
counts x cost profile, vCPU model) or **measured** (wall time of real memory or a real
KVM guest: the real and kvm backings' rows only). The sim's wall time is simulator
speed, pinbench's own bookkeeping: no plot here draws it, nor fits or compares
strategies by it. Each raises InputError naming the missing data when the frame lacks
what it needs. Save with ``fig.savefig(path)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator, ScalarFormatter

from pinning.analysis.results import latency_quantiles, of_kind, timeline
from pinning.analysis.stats import (
    PUBLISHED_BOOT,
    PUBLISHED_FIXED_S,
    PUBLISHED_STRATEGIES,
    SERIES_KEYS,
    break_even,
    published_k,
    scaling_fit,
)
from pinning.analysis.summary import strategies_in
from pinning.model import strategies
from pinning.model.names import InputError

LEVEL_LINES = {"4k": "-", "2m": "--", "1g": ":"}
VCPU_LINES = ("-", "--", "-.", ":")
PHASE_HATCH = {"startup": "", "access": "//", "teardown": ".."}
PHASE_LABEL = {"startup": "startup", "access": "faults", "teardown": "teardown"}
MEASURED = "measured: wall time on this host"
MODELLED = "modelled: events x cost profile"
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linestyle": ":",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.markersize": 5,
    "savefig.dpi": 110,
}


def _styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw inside the shared style (an rc_context: nothing global is left changed)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with mpl.rc_context(STYLE):
            return fn(*args, **kwargs)
    return wrapper


def _figure(ncols: int = 1, width: float = 5.2, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _color(strategy: str) -> str:
    """One colour per strategy, everywhere: the registry's."""
    return strategies.colour(str(strategy))


def _rows(df: pd.DataFrame, family: str | None, columns: list[str], what: str) -> pd.DataFrame:
    """The rows of ``family`` that have every column; InputError naming what is missing."""
    if family is not None:
        if "family" not in df or not (df["family"] == family).any():
            raise InputError(f"{what}: no {family} benchmarks in the results")
        df = df[df["family"] == family]
    missing = [c for c in columns if c not in df]
    if missing:
        raise InputError(f"{what}: the results have no {', '.join(missing)}")
    df = df.dropna(subset=columns)
    if df.empty:
        raise InputError(f"{what}: no {family or ''} benchmark has {', '.join(columns)}")
    return df


def _fmt_k(row: pd.Series) -> str:
    if math.isnan(row["k_lo"]):
        return f"k = {row['k']:.2f}"
    if row["k_lo"] == row["k_hi"]:
        return f"k = {row['k']:.2f} (exact)"
    return f"k = {row['k']:.2f} [{row['k_lo']:.2f}, {row['k_hi']:.2f}]"


def _level_line(level: Any) -> str:
    return LEVEL_LINES.get(str(level), "-.")


def measured_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose wall time is measured (real and kvm backings), warm host only:
    what a measured panel, fit or break-even may use. A cold host is another
    condition (HOST.md), not more values of the same one."""
    out = of_kind(df, "measured")
    if "host" in out:
        out = out[out["host"].fillna("warm") == "warm"]
    return out


def _varying(fam: pd.DataFrame, fixed: tuple[str, ...] = ("strategy", "level")) -> list[str]:
    """The series keys besides ``fixed`` that take more than one value in ``fam``."""
    return [k for k in SERIES_KEYS if k not in fixed and k in fam and fam[k].nunique() > 1]


def _series(fam: pd.DataFrame, fit: pd.Series) -> pd.DataFrame:
    """The rows of ``fam`` in the series a scaling fit's row describes (every key it has)."""
    sel = pd.Series(True, index=fam.index)
    for key in SERIES_KEYS:
        if key in fit and key in fam and pd.notna(fit[key]):
            sel &= fam[key] == fit[key]
    return fam[sel]


def _series_label(fit: pd.Series, varying: list[str]) -> str:
    parts = [str(fit["strategy"]), str(fit["level"])]
    for key in varying:
        value = fit.get(key)
        parts.append(f"{value} vCPU" if key == "vcpus" else str(value))
    return " ".join(parts)


@_styled
def plot_startup_scaling(df: pd.DataFrame, values_df: pd.DataFrame | None = None) -> Figure:
    """Startup time vs guest size, log-log, every strategy: modelled | measured panels.

    The **modelled** panel (every backing) is always drawn, with DESIGN §2's published
    boot times (RFC v2) *minus* PUBLISHED_FIXED_S = 5.71 s, the 4 GB demand boot taken
    as the fixed part of a boot (the 4 GB demand point becomes 0 and is not drawn); x
    in GB for those points. The **measured** panel is drawn only for results with real
    or kvm startup benchmarks at 2+ sizes (warm host: :func:`measured_rows`): the sim's
    wall time is simulator speed, never fitted. Each series gets its fitted line and k
    [95 % CI] in the legend (measured CI: a bootstrap when ``values_df`` =
    ``load_results(..., values=True)`` is given).
    """
    what = "startup scaling"
    fam = _rows(df, "startup", ["guest_gib", "model_measured_ns"], what)
    panels = [("modelled", fam, scaling_fit(df, "startup", metric="modelled"))]
    measured = measured_rows(fam)
    if not measured.empty:
        values = measured_rows(values_df) if values_df is not None else measured
        try:
            panels.append(("measured", measured,
                           scaling_fit(values, "startup", metric="measured")))
        except InputError:
            pass  # measured at one size only: nothing to fit (the report's table says so)
    fig, axes = _figure(len(panels), height=4.6)
    for (metric, rows, fits), ax in zip(panels, axes, strict=True):
        varying = _varying(rows)
        for _, fit in fits.iterrows():
            sub = _series(rows, fit).groupby("guest_gib")
            color, ls = _color(fit["strategy"]), _level_line(fit["level"])
            label = _series_label(fit, varying)
            if metric == "measured":
                y = sub["median_s"].median()
                err = sub["iqr_s"].median().fillna(0.0) / 2
                ax.errorbar(y.index, y.to_numpy(), yerr=err.to_numpy(), fmt="o",
                            color=color, capsize=2)
            else:
                y = sub["model_measured_ns"].median() / 1e9
                if fit["a"] == 0:
                    ax.plot([], [], ls=ls, color=color,
                            label=f"{label}: 0 s at every size (not on a log axis)")
                    continue
                ax.plot(y.index, y.to_numpy(), "s", color=color)
            x = np.geomspace(fit["gib_min"], fit["gib_max"], 50)
            ax.plot(x, fit["a"] * x ** fit["k"], ls=ls, color=color,
                    label=f"{label}: {_fmt_k(fit)}")
        title = MODELLED if metric == "modelled" else f"{MEASURED}, warm host"
        ax.set_title(f"startup ({title})")
        ax.set_ylabel(f"{metric} startup time (s)")
    ax_p = axes[0]
    pk = published_k(subtract_fixed=True).set_index("strategy")
    for strategy in PUBLISHED_STRATEGIES:
        y = PUBLISHED_BOOT[f"{strategy}_s"] - PUBLISHED_FIXED_S
        keep = y > 0
        fit = pk.loc[strategy]
        ax_p.plot(PUBLISHED_BOOT["guest_gb"][keep], y[keep], "*", ms=9, mfc="none",
                  color=_color(strategy),
                  label=f"published (RFC v2, total boot - {PUBLISHED_FIXED_S} s) {strategy}: "
                        f"{_fmt_k(fit)}")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_yscale("log")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14))
    ax_p.set_xlabel("guest size (GiB; published: GB)")
    for ax in axes[1:]:
        ax.set_xlabel("guest size (GiB)")
    return fig


@_styled
def plot_faults_vs_vcpus(df: pd.DataFrame) -> Figure:
    """Modelled faults/s vs vCPUs per strategy (fault_storm; one line per size/level/pattern).

    Only series run at 2+ vCPU counts are drawn when there are any (on the full suite
    the other patterns run at one vCPU count: see the latency table).
    """
    fam = _rows(df, "fault_storm", ["vcpus", "vcpu_access_faults_per_s"], "faults vs vCPUs")
    fig, (ax,) = _figure()
    keys = ["strategy", "guest_gib", "level", "pattern", "layout"]
    n_vcpus = fam.groupby(keys)["vcpus"].transform("nunique")
    if (n_vcpus > 1).any():
        fam = fam[n_vcpus > 1]
    for (strategy, gib, level, pattern, layout), sub in fam.groupby(keys, sort=True):
        s = sub.groupby("vcpus")["vcpu_access_faults_per_s"].median().sort_index()
        shared = "" if layout == "slices" else " shared"
        ax.plot(s.index, s.to_numpy(), marker="o", ls=_level_line(level),
                color=_color(strategy), label=f"{strategy} {gib:g}GiB {level} {pattern}{shared}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    vs = sorted(int(v) for v in fam["vcpus"].unique())
    ax.set_xticks(vs, [str(v) for v in vs])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("vCPUs")
    ax.set_ylabel("faults/s (modelled)")
    ax.set_title(f"fault storm throughput ({MODELLED}, vCPU model)")
    ax.legend()
    return fig


def _panels(fam: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """One panel per guest size and level, showing the pattern/layout with most vCPU counts.

    Keeps the panels readable on the full suite (its other patterns run at one vCPU
    count; the latency table lists them all). The panel title names what is shown.
    """
    rank = {lv: i for i, lv in enumerate(LEVEL_LINES)}
    keys = {(float(g), str(lv)) for g, lv in zip(fam["guest_gib"], fam["level"], strict=True)}
    out = []
    for gib, level in sorted(keys, key=lambda k: (k[0], rank.get(k[1], len(rank)), k[1])):
        sub = fam[(fam["guest_gib"] == gib) & (fam["level"] == level)]
        counts = sub.groupby(["pattern", "layout"])["vcpus"].nunique()
        pattern, layout = counts.sort_values(ascending=False, kind="stable").index[0]
        sub = sub[(sub["pattern"] == pattern) & (sub["layout"] == layout)]
        shared = "" if layout == "slices" else ", shared"
        out.append((f"{gib:g}GiB {level}, {pattern}{shared}", sub))
    return out


def _grid(n: int, width: float = 4.4, height: float = 3.4, ncols_max: int = 3
          ) -> tuple[Figure, list[Axes]]:
    ncols = min(n, ncols_max)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _vcpu_styles(fam: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    """Line style and width per vCPU count (more vCPUs: thicker)."""
    vs = sorted(fam["vcpus"].unique())
    return {v: {"ls": VCPU_LINES[i % len(VCPU_LINES)], "lw": 1.0 + 0.3 * i}
            for i, v in enumerate(vs)}


@_styled
def plot_latency_cdf(df: pd.DataFrame, phase: str = "access") -> Figure:
    """Modelled per-fault latency CDF from the quantiles, per strategy and vCPU count.

    One panel per guest size and level (the pattern with most vCPU counts, see
    ``_panels``); colour by strategy, line style by vCPU count; p50 and p99 dotted.
    """
    col = f"vcpu_{phase}_latency_quantiles_ns"
    fam = _rows(df, "fault_storm", [col], "latency CDF")
    panels = _panels(fam)
    fig, axes = _grid(len(panels))
    q = np.linspace(0.0, 1.0, 101)
    style = _vcpu_styles(fam)
    for ax, (title, sub) in zip(axes, panels, strict=True):
        for _, row in sub.sort_values(["strategy", "vcpus"]).iterrows():
            ax.plot(latency_quantiles(row, phase), q, color=_color(row["strategy"]),
                    **style[row["vcpus"]], label=f"{row['strategy']} {row['vcpus']} vCPU")
        for level_q in (0.5, 0.99):
            ax.axhline(level_q, color="grey", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("per-fault latency (ns, modelled)")
        ax.set_ylabel("fraction of faults")
        ax.set_title(f"fault latency CDF, {title} (modelled)")
        ax.legend(loc="lower right")
    return fig


@_styled
def plot_pinned_over_time(df: pd.DataFrame, family: str = "fault_storm",
                          phase: str = "access") -> Figure:
    """Pinned memory (GiB) over modelled time of a phase, from the vCPU model's timelines.

    Panels as in plot_latency_cdf.
    """
    col = f"vcpu_{phase}_timeline"
    fam = _rows(df, family, [col], "pinned memory over time")
    panels = _panels(fam)
    fig, axes = _grid(len(panels))
    style = _vcpu_styles(fam)
    for ax, (title, sub) in zip(axes, panels, strict=True):
        for _, row in sub.sort_values(["strategy", "vcpus"]).iterrows():
            tl = timeline(row, phase)
            ax.step(tl["time_ns"] / 1e9, tl["pinned_pages"] * 4096 / 2**30, where="post",
                    color=_color(row["strategy"]), **style[row["vcpus"]],
                    label=f"{row['strategy']} {row['vcpus']} vCPU")
        ax.set_xlabel(f"modelled time into the {phase} phase (s)")
        ax.set_ylabel("pinned memory (GiB, modelled)")
        ax.set_ylim(bottom=0)
        ax.set_title(f"pinned memory, {family} {title} (modelled)")
        ax.legend(loc="lower right")
    return fig


@_styled
def plot_metadata_bytes(df: pd.DataFrame) -> Figure:
    """Pinning metadata bytes vs guest size per strategy, log-log (counted by the model).

    The legend gives each strategy's bytes per 4 KiB page; the dashed line is the RFC
    as posted, 16 B/page (its "bitmap" took 8 B/page, plus the 8 B/page pfn array).
    """
    col = "events_startup_metadata_bytes"
    fam = _rows(df, None, ["guest_size", "strategy", col], "metadata bytes")
    fam = fam[fam[col] > 0]
    if fam.empty:
        raise InputError("metadata bytes: no benchmark has events.startup.metadata_bytes > 0")
    fig, (ax,) = _figure()
    markers = dict(zip(strategies.names(), "os^Dvx", strict=False))
    for strategy, sub in fam.groupby("strategy", sort=True):
        s = sub.groupby("guest_gib")[col].max().sort_index()
        per_page = float((s / (s.index.to_numpy() * 2**30 / 4096)).median())
        ax.plot(s.index, s.to_numpy() / 2**20, marker=markers.get(str(strategy), "^"),
                mfc="none", color=_color(strategy),
                label=f"{strategy} (modelled): {per_page:.4g} B/page")
    x = np.geomspace(fam["guest_gib"].min(), fam["guest_gib"].max(), 20)
    pages = x * 2**30 / 4096
    ax.plot(x, 16 * pages / 2**20, ls="--", color="grey", lw=1,
            label="RFC as posted: 16 B/page (8 B/page 'bitmap' + 8 B/page pfns)")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_yscale("log")
    ax.set_xlabel("guest size (GiB)")
    ax.set_ylabel("pinning metadata (MiB, modelled)")
    ax.set_title("metadata memory vs guest size (modelled: counted by the model)")
    ax.legend(loc="upper left")
    return fig


@_styled
def plot_lifecycle_bars(df: pd.DataFrame) -> Figure:
    """Lifecycle cost per strategy and size: the modelled phase split, and the measured
    total where the results have one.

    Left: modelled startup / faults / teardown stacked. Right, only for lifecycle
    benchmarks of the real or kvm backing (warm host): the measured median (IQR error
    bars), of which only the total is measured per benchmark. Separate panels, since
    a measured host is not the SEV host the model prices; the sim's wall time is
    simulator speed and is not drawn. Only the benchmarks that touch all memory (touch
    fraction 1; the break-even plot covers the rest); bars are labelled by size, and by
    level, vCPUs, pattern and backing where they vary.
    """
    phases = ["startup", "access", "teardown"]
    cols = ["guest_gib", "touch_fraction"] + [f"model_{p}_ns" for p in phases]
    fam = _rows(df, "lifecycle", cols, "lifecycle bars")
    fam = fam[fam["touch_fraction"] == fam["touch_fraction"].max()]
    varying = [k for k in ("level", "vcpus", "pattern", "backing")
               if k in fam and fam[k].nunique() > 1]

    def category(row: pd.Series) -> str:
        parts = [f"{row['guest_gib']:g}GiB"]
        parts += [f"{row[k]}vCPU" if k == "vcpus" else str(row[k]) for k in varying]
        return "\n".join(parts)

    fam = fam.assign(_cat=fam.apply(category, axis=1))
    order = (fam.sort_values(["guest_gib", *varying])["_cat"].drop_duplicates().tolist())
    measured = measured_rows(fam).dropna(subset=["median_s"]) if "median_s" in fam else (
        fam.iloc[0:0])
    ncols = 2 if len(measured) else 1
    fig, axes = _figure(ncols, width=min(8.0, max(4.5, 0.9 * len(order) + 1.5)))
    ax_p = axes[0]
    xs = np.arange(len(order))
    names = strategies_in(fam["strategy"])
    width = 0.76 / len(names)
    for i, strategy in enumerate(names):
        sub = fam[fam["strategy"] == strategy].groupby("_cat")
        off = xs + (i - (len(names) - 1) / 2) * width
        bottom = np.zeros(len(order))
        for ph in phases:
            y = (sub[f"model_{ph}_ns"].median().reindex(order) / 1e9).fillna(0.0).to_numpy()
            ax_p.bar(off, y, width, bottom=bottom, color=_color(strategy),
                     hatch=PHASE_HATCH[ph], edgecolor="white", lw=0.5,
                     alpha=1.0 if ph == "startup" else 0.75)
            bottom += y
        if ncols == 2:
            mine = measured[measured["strategy"] == strategy]
            if mine.empty:
                continue
            cats = [c for c in order if c in set(mine["_cat"])]
            at = np.array([order.index(c) for c in cats]) + (
                i - (len(names) - 1) / 2) * width
            med = mine.groupby("_cat")["median_s"].median().reindex(cats)
            iqr = mine.groupby("_cat")["iqr_s"].median().reindex(cats).fillna(0.0)
            axes[1].bar(at, med.to_numpy(), width, yerr=iqr.to_numpy() / 2, capsize=2,
                        color=_color(strategy), label=f"{strategy} (measured total)")
    for ax in axes:
        ax.set_xticks(xs, order)
        ax.grid(axis="x", visible=False)
    handles = [Patch(color=_color(s), label=s) for s in names]
    handles += [Patch(facecolor="white", hatch=PHASE_HATCH[p], edgecolor="dimgrey",
                      label=PHASE_LABEL[p]) for p in phases]
    ax_p.legend(handles=handles)
    ax_p.set_ylabel("modelled lifecycle time (s)")
    ax_p.set_title(f"lifecycle by phase ({MODELLED})")
    if ncols == 2:
        axes[1].legend()
        axes[1].set_ylabel("measured lifecycle time (s)")
        axes[1].set_title(f"lifecycle total ({MEASURED}, warm host)")
    return fig


def _draw_break_even(ax: Axes, be: pd.DataFrame, metric: str) -> None:
    """One break-even panel: each series' lifecycle cost vs touch fraction, crossings
    marked, and a note for a pair that does not cross in the range run."""
    keys = ["guest_gib", "level", "vcpus", "pattern"]
    notes = 0  # crossings and notes each get their own line: three strategies cross close
    for n, (group, sub) in enumerate(be.groupby(keys, sort=True)):
        gib, level, vcpus, pattern = group
        tag = f"{gib:g}GiB {level} {vcpus}vCPU {pattern}"
        ls = VCPU_LINES[n % len(VCPU_LINES)]
        drawn = set()
        for (first, second), pair in sub.groupby(["first", "second"], sort=False):
            for strategy, col in ((first, "first_s"), (second, "second_s")):
                if strategy not in drawn:
                    drawn.add(strategy)
                    ax.plot(pair["touch_fraction"], pair[col], marker="o", ls=ls,
                            color=_color(strategy), label=f"{strategy} {tag}")
            cross = pair["crossing"].iloc[0]
            if not math.isnan(cross):
                ax.axvline(cross, color="black", lw=0.8, ls=ls)
                ax.annotate(f"{first}/{second} break-even ≈ {cross:.2f}",
                            (cross, 0.95 - 0.06 * notes), xycoords=("data", "axes fraction"),
                            ha="right", va="top", fontsize=7.5, xytext=(-3, 0),
                            textcoords="offset points")
            else:
                ax.text(0.02, 0.95 - 0.06 * notes, pair["note"].iloc[0],
                        transform=ax.transAxes, fontsize=7.5, va="top")
            notes += 1
    ax.set_xlabel("fraction of guest memory touched")
    ax.set_ylabel(f"{metric} lifecycle time (s)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(bottom=0)
    title = MODELLED if metric == "modelled" else f"{MEASURED}, warm host"
    ax.set_title(f"break-even ({title})")
    ax.legend(loc="lower right")


@_styled
def plot_break_even(df: pd.DataFrame) -> Figure:
    """Lifecycle cost vs touch fraction per strategy, each pair's crossing marked:
    modelled, and beside it measured where the real or kvm backing ran lifecycle
    benchmarks at 2+ touch fractions (warm host). Never from simulator speed."""
    panels = [("modelled", break_even(df, metric="modelled"))]
    measured = measured_rows(df)
    if not measured.empty:
        try:
            panels.append(("measured", break_even(measured, metric="measured")))
        except InputError:
            pass  # no measured touch sweep: the modelled panel alone
    fig, axes = _figure(len(panels))
    for ax, (metric, be) in zip(axes, panels, strict=True):
        _draw_break_even(ax, be, metric)
    return fig


@_styled
def plot_kvm_vs_model(table: pd.DataFrame, profile: str | None = None) -> Figure:
    """Real KVM guest (measured) vs the model (modelled): ns per 4 KiB page against guest
    size, startup | touch-all panels, one colour per strategy, marker per backing level
    and vCPU count; measured solid with markers, modelled dashed.

    ``table`` is :func:`pinning.analysis.ground.kvm_vs_model` output; the model's line is that of
    ``profile`` (default: the last profile given to kvm_vs_model, e.g. a calibrated one),
    which the panel titles name.
    """
    if table.empty:
        raise InputError("kvm vs model: no kvm-backed benchmarks in the results "
                         "(pinbench run --suite ground)")
    profile = profile or str(table["profile"].iloc[-1])
    if profile not in set(table["profile"]):
        raise InputError(f"kvm vs model: no profile {profile!r} in the table (it has "
                         f"{', '.join(map(str, dict.fromkeys(table['profile'])))})")
    table = table[(table["host"].fillna("warm") == "warm") & (table["profile"] == profile)]
    fig, axes = _figure(2, width=5.6, height=4.0)
    markers = {("4k", 1): "o", ("4k", 2): "s", ("2m", 1): "^", ("2m", 2): "D"}
    for ax, phase in zip(axes, ("startup", "touch all"), strict=True):
        sub = table[table["phase"] == phase]
        idle = sorted(set(sub.loc[sub["model_ns_per_page"] == 0, "strategy"]))
        sub = sub[sub["model_ns_per_page"] > 0]  # what the model has no work for: no point
        if idle:
            ax.text(0.02, 0.02, f"not drawn: {', '.join(idle)} (nothing modelled)",
                    transform=ax.transAxes, fontsize=7, color="0.4")
        if "prefault" not in sub:  # tables from before guest_memfd
            sub = sub.assign(prefault="none")
        sub = sub.assign(prefault=sub["prefault"].fillna("none"))
        for (strategy, prefault, level, vcpus), g in sub.groupby(
                ["strategy", "prefault", "level", "vcpus"]):
            g = g.sort_values("guest_size")
            x = g["guest_size"] / 2**30
            name = strategy if prefault == "none" else f"{strategy} ({prefault})"
            label = f"{name} {'THP' if level == '2m' else '4K'} {vcpus} vCPU"
            # a log axis: a startup with nothing to do (0) has no point
            m, mod = g["ns_per_page"] > 0, g["model_ns_per_page"] > 0
            ax.plot(x[m], g["ns_per_page"][m], marker=markers.get((level, vcpus), "x"),
                    ls="-" if prefault == "none" else "-.", color=_color(strategy),
                    label=f"{label} (measured)")
            ax.plot(x[mod], g["model_ns_per_page"][mod], ls="--", color=_color(strategy),
                    alpha=0.6, marker=markers.get((level, vcpus), "x"), mfc="none")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("guest size (GiB)")
        ax.set_ylabel("ns per 4 KiB page")
        what = "startup without VM creation" if phase == "startup" else phase
        ax.set_title(f"{what}: KVM guest (solid, measured)\nvs model (dashed, modelled, "
                     f"{profile} profile)", fontsize=9)
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7)
    return fig


#: Every plot of a report: file stem -> (title, function).
PLOTS: dict[str, tuple[str, Callable[[pd.DataFrame], Figure]]] = {
    "startup_scaling": ("Startup time vs guest size", plot_startup_scaling),
    "faults_vs_vcpus": ("Fault-storm throughput vs vCPUs", plot_faults_vs_vcpus),
    "latency_cdf": ("Per-fault latency distribution", plot_latency_cdf),
    "pinned_over_time": ("Pinned memory over time", plot_pinned_over_time),
    "metadata_bytes": ("Metadata memory vs guest size", plot_metadata_bytes),
    "lifecycle_bars": ("Lifecycle cost", plot_lifecycle_bars),
    "break_even": ("Break-even touch fraction", plot_break_even),
}


@_styled
def plot_tornado(frame: pd.DataFrame, summary: dict[str, Any]) -> Figure:
    """The sensitivity tornado (modelled): for each varied cost, the ratio of the base
    runner-up to the base cheapest strategy at the cost's low and high end, a bar from
    one to the other around the base ratio, widest swing on top; a bar that crosses 1
    (the cheaper strategy flips) is hatched. ``frame`` and ``summary`` come from
    :func:`pinning.analysis.answer.sensitivity`."""
    if frame.empty:
        raise InputError("sensitivity: no cost was varied (the profile marks none as an "
                         "assumption)")
    rows = frame.iloc[::-1]  # widest on top
    fig, (ax,) = _figure(width=6.4, height=0.45 * len(rows) + 1.6)
    base = summary["ratio"]
    for y, (_, r) in enumerate(rows.iterrows()):
        lo, hi = sorted((r["ratio_low"], r["ratio_high"]))
        if hi - lo <= 1e-9 * base:
            ax.annotate("no effect here", (base, y), xytext=(4, -3),
                        textcoords="offset points", fontsize=6.5, color="grey")
            continue
        ax.barh(y, hi - lo, left=lo, height=0.6, color=_color(summary["cheapest"]),
                alpha=0.75, hatch="//" if r["flips"] else "", edgecolor="black",
                linewidth=0.5)
        for end in ("low", "high"):  # the cost's value, outside its end of the bar
            left = r[f"ratio_{end}"] == lo
            ax.annotate(f"{r[end]:.3g}", (r[f"ratio_{end}"], y), xytext=(-3 if left else 3, 0),
                        textcoords="offset points", ha="right" if left else "left",
                        va="center", fontsize=6.5)
    ax.axvline(base, color="black", linewidth=0.8)
    ax.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.margins(x=0.1)  # room for the values written outside the bars' ends
    ax.set_yticks(range(len(rows)), [f"{k}\n({kind}, {how})" for k, kind, how in
                                     zip(rows["key"], rows["kind"], rows["range"],
                                         strict=True)])
    ax.set_xlabel(f"modelled total, {summary['runner_up']} / {summary['cheapest']} "
                  "(1, dashed: they cost the same)")
    ax.set_title(f"How sure (modelled): each cost at the ends of its range\n"
                 f"base ratio {base:.3g} (solid line); hatched: the cheaper strategy flips",
                 loc="left")
    return fig

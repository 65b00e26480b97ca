"""Reports of pinbench results: Markdown + self-contained HTML + PNGs + CSV, and a text summary.

``write_report`` renders one list of blocks (headings, paragraphs, tables, figures,
notes) twice: ``report.md`` (tables in Markdown, PNGs linked beside it) and
``report.html`` (PNGs embedded as base64 data URIs, no external file). A plot or table
whose data are missing is replaced by a note naming them; the rest still renders.
``summary_table`` is the plain-text table ``pinbench run`` prints at the end.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from pinning.analysis import plots
from pinning.analysis.formatting import seconds
from pinning.analysis.results import load_results
from pinning.analysis.stats import (
    PUBLISHED_BOOT,
    PUBLISHED_SOURCE,
    break_even,
    latency_table,
    published_k,
    scaling_fit,
)
from pinning.analysis.summary import backings_line, kinds_in, summary_columns, summary_frame
from pinning.model import strategies
from pinning.model.names import BACKINGS, TIME_KINDS, InputError, time_label

#: The section of a report that shows the sim's wall time, apart from every cost.
SIMULATOR_SECTION = "Simulator speed: pinbench's own bookkeeping, not a cost of pinning"


def labels(df: pd.DataFrame) -> str:
    """The report's legend of the kinds of time in ``df`` (names.TIME_KINDS' words)."""
    parts = [f"**{time_label(k)}** = {'' if k == 'modelled' else 'median '}"
             f"{TIME_KINDS[k][1]}" for k in kinds_in(df)]
    return ("; ".join(parts) + ". Counts of events and bytes come from the model; access "
            "phases are priced by the vCPU model.")


# ----------------------------------------------------------------------------- blocks


@dataclass
class Block:
    """One piece of a report: kind is 'h2', 'p', 'table', 'figure' or 'note'."""

    kind: str
    text: str = ""
    table: pd.DataFrame | None = None
    png: Path | None = None


def _md_cell(value: Any) -> str:
    if isinstance(value, float):
        text = "-" if math.isnan(value) else f"{value:.4g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


_NUMBER = re.compile(r"-?[\d.,]+(e[+-]?\d+)?( [a-zµ]+)?|-")


def _numeric(column: pd.Series) -> bool:
    """Numbers, or numbers formatted with a unit ('3.83 ms'): right-aligned."""
    if pd.api.types.is_numeric_dtype(column):
        return True
    return len(column) > 0 and all(_NUMBER.fullmatch(str(v)) for v in column)


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table (GitHub Markdown) of a frame; numbers right-aligned, 4 significant digits."""
    head = [str(c) for c in table.columns]
    align = ["---:" if _numeric(table[c]) else "---" for c in table.columns]
    rows = [[_md_cell(v) for v in row] for row in table.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, align, *rows])


def _html_table(table: pd.DataFrame) -> str:
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    num = [_numeric(table[c]) for c in table.columns]
    body = []
    for row in table.itertuples(index=False):
        tds = "".join(
            f'<td{" class=num" if n else ""}>'
            f"{html.escape(_md_cell(v).replace(chr(92) + '|', '|'))}</td>"
            for v, n in zip(row, num, strict=True))
        body.append(f"<tr>{tds}</tr>")
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _to_markdown(blocks: list[Block], title: str) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            out += [f"## {b.text}", ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "note":
            out += [f"> **Not shown:** {b.text}", ""]
        elif b.kind == "table" and b.table is not None:
            out += [markdown_table(b.table), ""]
        elif b.kind == "figure" and b.png is not None:
            out += [f"![{b.text}]({b.png.name})", ""]
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.2em}
th,td{border-bottom:1px solid #ddd;padding:2px 8px;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}img{max-width:100%}.note{background:#fff4e5;
border-left:4px solid #d95f02;padding:0.4em 0.8em}code{font-size:0.9em}"""


def _inline_md(text: str) -> str:
    """Escape text for HTML and turn **bold** and `code` into tags."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _to_html(blocks: list[Block], title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if b.kind == "h2":
            out.append(f"<h2>{html.escape(b.text)}</h2>")
        elif b.kind == "p":
            out.append(f"<p>{_inline_md(b.text)}</p>")
        elif b.kind == "note":
            out.append(f'<p class="note"><b>Not shown:</b> {html.escape(b.text)}</p>')
        elif b.kind == "table" and b.table is not None:
            out.append(_html_table(b.table))
        elif b.kind == "figure" and b.png is not None:
            data = base64.b64encode(b.png.read_bytes()).decode("ascii")
            out.append(f'<figure><img alt="{html.escape(b.text)}" '
                       f'src="data:image/png;base64,{data}"></figure>')
    out.append("</body></html>")
    return "\n".join(out)


# ----------------------------------------------------------------------------- report


class _Builder:
    """Collects blocks; figures and tables whose data are missing become notes."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.blocks: list[Block] = []
        self.written: dict[str, Path] = {}

    def h2(self, text: str) -> None:
        self.blocks.append(Block("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(Block("p", text))

    def table(self, make: Callable[[], pd.DataFrame], what: str) -> None:
        try:
            self.blocks.append(Block("table", table=make()))
        except InputError as exc:
            self.blocks.append(Block("note", f"{what}: {exc}"))

    def family_table(self, df: pd.DataFrame, family: str,
                     make: Callable[[], pd.DataFrame]) -> None:
        """A family's table, or a line saying the results have none of its benchmarks."""
        if (df["family"] == family).any():
            self.table(make, family)
        else:
            self.p(f"These results hold no {family} benchmarks (`pinbench run --suite "
                   f"quick` has them).")

    def figure(self, stem: str, title: str, make: Callable[[], Figure]) -> None:
        try:
            fig = make()
        except InputError as exc:
            self.blocks.append(Block("note", f"{title} (plot): {exc}"))
            return
        path = self.outdir / f"{stem}.png"
        fig.savefig(path, format="png")
        self.written[path.name] = path
        self.blocks.append(Block("figure", title, png=path))


def scaling_fits(df: pd.DataFrame, values_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """The report's startup scaling fits: modelled (every backing), measured (the real
    and kvm backings' rows, warm host, bootstrap CI from ``values_df``), published.

    Never from simulator speed: the sim's wall time says how fast pinbench models, not
    how a kernel's cost grows. A measured fit that cannot be made (no real or kvm
    startup benchmarks at 2+ sizes) is left out.
    """
    fits = [scaling_fit(df, "startup", metric="modelled")]
    measured = plots.measured_rows(values_df if values_df is not None else df)
    if not measured.empty:
        try:
            fits.append(scaling_fit(measured, "startup", metric="measured"))
        except InputError:
            pass  # no startup at 2+ sizes measured: nothing to fit
    fits.append(published_k(subtract_fixed=True))
    out = pd.concat(fits, ignore_index=True)
    cols = ["metric", "strategy", "level", "vcpus", "backing", "k", "k_lo", "k_hi", "a",
            "n_sizes", "ci", "note"]
    out = out.reindex(columns=cols)
    for col in ("level", "vcpus", "backing"):
        out[col] = out[col].astype(object).where(out[col].notna(), "-")
    out["ci"] = out["ci"].fillna("t-interval on residuals")
    return out.rename(columns={"a": "a (s at 1 GiB)"})


def _remap_table(df: pd.DataFrame) -> pd.DataFrame:
    fam = df[df["family"] == "remap"]
    if fam.empty:
        raise InputError("no remap benchmarks in the results")
    cols = {"events_remap_pins": "re-pins", "events_remap_unpins": "unpins",
            "events_remap_page_flushes": "page flushes", "events_remap_wbinvd": "WBINVD",
            "events_remap_stale_pins_peak": "stale pins (peak)",
            "events_remap_unpinned_mapped_hazards": "unpinned mapped (hazards)"}
    out = fam[["name", *cols]].rename(columns=cols)
    out["modelled remap"] = (fam["model_remap_ns"] / 1e9).map(seconds)
    return out.reset_index(drop=True)


def _events(fam: pd.DataFrame, phases: Sequence[str], counter: str) -> pd.Series:
    """A counter's events summed over ``phases`` (0 where a phase did not run)."""
    total = pd.Series(0, index=fam.index)
    for phase in phases:
        col = f"events_{phase}_{counter}"
        if col in fam:
            total = total + fam[col].fillna(0)
    return total.astype("int64")


def _modelled(fam: pd.DataFrame, phase: str) -> pd.Series:
    col = f"model_{phase}_ns"
    return fam[col] if col in fam else pd.Series(float("nan"), index=fam.index)


def _convert_table(df: pd.DataFrame) -> pd.DataFrame:
    """The convert family's conversion phase: what converting a range to shared and back,
    then touching it again, costs each strategy (modelled counts and time)."""
    fam = df[df["family"] == "convert"]
    if fam.empty:
        raise InputError("no convert benchmarks in the results (pinbench run --suite quick)")
    counters = {"psc_exits": "exits (requests)", "attr_pages": "attributes stored",
                "rmpupdates": "RMPUPDATEs", "clflush_bytes": "CLFLUSH bytes",
                "npf_exits": "re-faults", "frames_zeroed": "pages zeroed", "pins": "pins",
                "wbinvd": "WBINVD"}
    out = pd.DataFrame({"benchmark": fam["name"]})
    for counter, heading in counters.items():
        out[heading] = _events(fam, ["convert"], counter)
    out["modelled convert"] = (_modelled(fam, "convert") / 1e9).map(seconds)
    return out.reset_index(drop=True)


def boot_table(df: pd.DataFrame) -> pd.DataFrame:
    """The boot family side by side: per strategy (and, for guest_memfd, acceptance) and
    guest size, the modelled startup, the boot's own touches and their sum, and the
    events behind them. Modelled only (the boot family runs on the sim)."""
    fam = df[df["family"] == "boot"]
    if fam.empty:
        raise InputError("no boot benchmarks in the results (pinbench run --suite quick)")
    phases = ["startup", "access"]
    gmem = fam["strategy"].map(lambda s: s in strategies.REGISTRY
                               and strategies.get(s).guest_memfd)
    accept = fam["acceptance"] if "acceptance" in fam else pd.Series(None, index=fam.index)
    startup, touches = _modelled(fam, "startup"), _modelled(fam, "access")
    out = pd.DataFrame({
        "guest": fam["guest_gib"].map(lambda g: f"{g:g} GiB"), "level": fam["level"],
        "strategy": fam["strategy"],
        "acceptance": accept.where(gmem, "-").fillna("lazy"),
        "modelled startup": (startup / 1e9).map(seconds),
        "modelled boot touches": (touches / 1e9).map(seconds),
        "modelled total": ((startup + touches) / 1e9).map(seconds),
        "faults": _events(fam, phases, "npf_exits"),
        "exits (acceptance)": _events(fam, phases, "psc_exits"),
        "pins": _events(fam, phases, "pins"),
        "RMPUPDATEs": _events(fam, phases, "rmpupdates"),
        "_size": fam["guest_size"]})
    return (out.sort_values(["_size", "level", "strategy", "acceptance"], kind="stable")
            .drop(columns="_size").reset_index(drop=True))


def break_even_table(df: pd.DataFrame) -> pd.DataFrame:
    """The report's break-even table: per series and pair of strategies, the touch
    fraction where their lifecycle costs cross, modelled (every backing) and, where
    the real or kvm backing ran a touch sweep, measured (warm host). Never from
    simulator speed."""
    rows = []
    sources = [("modelled", df)]
    measured = plots.measured_rows(df)
    if not measured.empty:
        sources.append(("measured", measured))
    for metric, rows_of in sources:
        try:
            be = break_even(rows_of, metric=metric)
        except InputError:
            if metric == "modelled":
                raise
            continue  # no measured touch sweep: the modelled rows alone
        keys = ["guest_gib", "level", "vcpus", "pattern", "first", "second"]
        for _, sub in be.groupby(keys, sort=True):
            r = sub.iloc[0]
            rows.append({"metric": metric, "guest": f"{r['guest_gib']:g} GiB",
                         "level": r["level"], "vcpus": r["vcpus"], "pattern": r["pattern"],
                         "strategies": f"{r['first']} / {r['second']}",
                         "touch fractions": ", ".join(f"{t:g}" for t in sub["touch_fraction"]),
                         "break-even": r["crossing"], "note": r["note"]})
    return pd.DataFrame(rows)


def _latency(df: pd.DataFrame) -> pd.DataFrame:
    t = latency_table(df)
    return pd.DataFrame({
        "benchmark": t["name"], "p50 (modelled)": (t["p50_ns"] / 1e9).map(seconds),
        "p99 (modelled)": (t["p99_ns"] / 1e9).map(seconds),
        f"extra p50 over {strategies.baseline()}": (t["p50_extra_ns"] / 1e9).map(seconds),
        "faults/s (modelled)": t["faults_per_s"].map(lambda x: f"{x:,.0f}"),
        "lock wait share": t["lock_wait_share"].round(4)})


def _summary_md(df: pd.DataFrame, kinds: Sequence[str]) -> pd.DataFrame:
    """The summary table in the report: the strategies side by side, for ``kinds``."""
    sf = summary_frame(df)
    out = pd.DataFrame({"family": sf["family"], "benchmark": sf["benchmark"]})
    for col, heading in summary_columns(sf, kinds):
        out[heading] = sf[col].map(seconds)
    if len(out.columns) == 2:
        raise InputError(f"no {' or '.join(time_label(k) for k in kinds)} time in the results")
    keep = out.drop(columns=["family", "benchmark"]).ne("-").any(axis=1)
    return out[keep].reset_index(drop=True)


def _sources(df: pd.DataFrame, paths: Sequence[Path]) -> str:
    def vals(col: str) -> str:
        v = sorted({str(x) for x in df[col].dropna()}) if col in df else []
        return ", ".join(v) if v else "unknown"
    dates = sorted(str(d) for d in df["date"].dropna())
    span = f"{dates[0][:19]} - {dates[-1][:19]}" if dates else "unknown"
    return (f"**Ran on {backings_line(df)}.** "
            f"Results: {', '.join(f'`{p}`' for p in paths)} ({len(df)} benchmarks; suite "
            f"{vals('suite')}; pinbench {vals('pinbench_version')}; cost profile "
            f"{vals('cost_profile')}). Machine: {vals('cpu_model_name')}, {vals('cpu_count')} "
            f"CPUs, host {vals('hostname')}, {vals('platform')}. Runs: {span}.")


def _backings_title(df: pd.DataFrame) -> str:
    """'sim backing', 'real and kvm backings': the backings the results ran on."""
    names = list(dict.fromkeys(df["backing"].fillna("sim")))
    names = [b for b in BACKINGS if b in names] + [b for b in names if b not in BACKINGS]
    if len(names) == 1:
        return f"{names[0]} backing"
    return f"{', '.join(names[:-1])} and {names[-1]} backings"


def _published(profiles: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pinning.analysis.ground import published_vs_model

    points, slopes = published_vs_model(profiles)
    return points.round(4), slopes.round(4)


def _profiles(paths: Sequence[str | Path] | None) -> list:
    """The default profile and each ``--profile``, named apart (two calibrations are both
    "calibrated": each is then named with its file, in every table and title)."""
    from pinning.analysis.ground import distinct_profiles
    from pinning.model.costs import load_profile

    return distinct_profiles([load_profile()] + [load_profile(p) for p in paths or ()])


def _kvm_table(table: pd.DataFrame) -> pd.DataFrame:
    if table.empty:
        raise InputError("no kvm-backed benchmarks in the results (pinbench run --suite "
                         "ground, on a machine with /dev/kvm)")
    table = table.assign(guest=table["guest_size"].map(lambda b: f"{b / 2**30:g} GiB"))
    cols = ["phase", "profile", "strategy", "prefault", "guest", "level", "vcpus", "host", "mmu",
            "measured_s", "vm_fixed_s", "compared_s", "modelled_s", "modelled_sev_s",
            "ns_per_page", "model_ns_per_page", "rel_error", "kvm_pf_taken", "kvm_exits"]
    return table[cols].round(4)


#: Guest size of the report's sensitivity analysis (GiB): small, so that it takes seconds.
SENSITIVITY_GIB = 1


def _sensitivity(df: pd.DataFrame, profile: Any) -> tuple[Any, pd.DataFrame, dict] | None:
    """The sensitivity of the results' lifecycle touch sweep (its configuration at its
    middle touch fraction, a SENSITIVITY_GIB guest), or None without a sweep."""
    from dataclasses import replace

    from pinning.analysis.answer import cached_sensitivity, varied_costs
    from pinning.model.config import BenchConfig

    if "family" not in df:
        return None
    sweep = df[(df["family"] == "lifecycle") & (df["touch_fraction"] < 1.0)
               & df["strategy"].isin(strategies.names())]
    names = [s for s in strategies.names() if s in set(sweep["strategy"])]
    if len(names) < 2:
        return None
    fractions = sorted(sweep["touch_fraction"].unique())
    row = sweep[sweep["touch_fraction"] == fractions[len(fractions) // 2]].iloc[0]
    config = BenchConfig(
        "lifecycle", names[0], int(row["guest_size"]), row["level"], vcpus=int(row["vcpus"]),
        pattern=row["pattern"], layout=row["layout"],
        touch_fraction=float(row["touch_fraction"]), seed=int(row["seed"]),
        **{k: str(row[k]) for k in ("kernel", "sme_coherent", "mmu")
           if k in row and isinstance(row[k], str)})
    config = replace(config, guest_size=min(config.guest_size, SENSITIVITY_GIB << 30))
    frame, summary = cached_sensitivity(config, names, profile, varied_costs(profile))
    return config, frame, summary


def _sensitivity_table(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(flips=frame["flips"].map({True: "FLIPS", False: "no"})).drop(
        columns=["swing"]).round(4)


def write_report(paths: Sequence[Path], outdir: Path,
                 profiles: Sequence[str | Path] | None = None) -> dict[str, Path]:
    """Write report.md, report.html (self-contained), the PNGs and summary.csv into outdir.

    ``profiles`` are extra cost profiles (e.g. a calibrated one) to set against the
    published boot times beside the default profile.

    Returns file name -> path of everything written. InputError if the results
    cannot be read (missing plots are notes in the report, not errors).
    """
    paths = [Path(p) for p in paths]
    df = load_results(paths)
    values_df = load_results(paths, values=True)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    kinds = kinds_in(df)
    measured = "measured" in kinds
    b = _Builder(outdir)
    b.p(_sources(df, paths))
    b.p(labels(df))
    if "simulator" in kinds:
        b.p("The sim backing's wall time is **simulator speed**: how fast pinbench's own "
            "bookkeeping runs, never a cost of pinning. Every figure, fit and break-even "
            "below is modelled" + (" or measured" if measured else "") + f"; simulator "
            f"speed has its own section at the end (\"{SIMULATOR_SECTION}\").")

    b.h2("Summary")
    b.p(("Median measured time (real and kvm backings) and modelled" if measured else
         "Modelled") + " time of each benchmark's measured phases, the strategies side by "
        "side (benchmark names with the strategy as `*`).")
    b.table(lambda: _summary_md(df, [k for k in kinds if k != "simulator"]), "summary")

    b.h2("Startup time vs guest size")
    b.p("Fitted time ∝ size^k per strategy and level, from the **modelled** startup "
        "(t-interval on the fit's residuals; an exact power law gives k_lo = k_hi)"
        + ("; and from the **measured** startup of the real and kvm backings, warm host "
           "(95 % percentile bootstrap over the values)" if measured else "")
        + f". Published: DESIGN §2's boot times ({PUBLISHED_SOURCE}) minus 5.71 s of fixed "
        "boot (the 4 GB demand boot); their demand growth is the guest faulting memory in "
        "during boot, not startup alone.")
    b.figure("startup_scaling", "Startup time vs guest size",
             lambda: plots.plot_startup_scaling(df, values_df))
    b.table(lambda: scaling_fits(df, values_df), "startup scaling fits")
    b.p("Published boot times (total boot, s):")
    b.table(lambda: PUBLISHED_BOOT.copy(), "published boot times")

    b.h2("Fault storm")
    b.p("Per-fault latency (p50/p99), faults/s and the share of vCPU time spent waiting "
        "for the per-VM lock, all modelled by the vCPU model; 'demand extra p50' is the "
        "p50 minus that of the same benchmark under upfront pinning.")
    b.table(lambda: _latency(df), "fault latency table")
    for stem in ("faults_vs_vcpus", "latency_cdf", "pinned_over_time"):
        title, fn = plots.PLOTS[stem]
        b.figure(stem, title, lambda fn=fn: fn(df))

    b.h2("Metadata memory")
    b.p("KVM's per-VM metadata per guest size (counted by the model): upfront's page array "
        "(8 B/page); the RFC's bitmap and pfn array (as posted it allocated 8 B/page for "
        "its 'bitmap', so 16 B/page in all); guest_memfd's memory-attribute xarray "
        "(9 B/page: a 576-byte node per 64 gfns).")
    b.figure("metadata_bytes", "Metadata memory vs guest size",
             lambda: plots.plot_metadata_bytes(df))

    b.h2("Guest boot")
    b.p("The boot family, **modelled**: startup plus what the guest kernel touches while "
        "booting (its memory map and a fixed working set). Under guest_memfd the guest "
        "accepts its memory first -- lazily, the 2 MiB units it uses (one request each, "
        "every page faulted in), or eagerly, all of it at boot -- so its boot is where its "
        "faults land; upfront pays at startup, demand in the boot's faults.")
    b.family_table(df, "boot", lambda: boot_table(df))

    b.h2("Lifecycle and break-even")
    b.p("The **modelled** lifecycle split into startup, faults and teardown"
        + (", beside the **measured** total of the real and kvm backings' lifecycle "
           "benchmarks (warm host)" if measured else "")
        + "; break-even = the touch fraction at which two strategies cost the same "
        "(linear interpolation between the bracketing touch fractions), modelled"
        + (", and measured where the real or kvm backing ran a touch sweep" if measured
           else "") + ".")
    for stem in ("lifecycle_bars", "break_even"):
        title, fn = plots.PLOTS[stem]
        b.figure(stem, title, lambda fn=fn: fn(df))
    b.table(lambda: break_even_table(df), "break-even")

    loaded = _profiles(profiles)  # bad profiles refused before anything is drawn
    b.h2("How sure: sensitivity of the answer")
    sens = _sensitivity(df, loaded[-1])
    if sens is None:
        b.p("No lifecycle touch sweep in these results (lifecycle benchmarks at touch "
            "fractions below 1): `pinbench simulate --strategy all --sensitivity` answers "
            "this for any configuration.")
    else:
        config, frame, summary = sens
        b.p(f"**Modelled**, under the {loaded[-1].name} profile: the lifecycle sweep's "
            f"configuration ({config.level}, {config.vcpus} vCPU, {config.pattern}, touch "
            f"fraction {config.touch_fraction:g}) for a "
            f"{config.guest_size >> 30} GiB guest (kept small so that a report takes "
            f"seconds; `pinbench simulate --strategy all --sensitivity --guest-size SIZE` "
            f"for another). Each cost the profile marks as an assumption is set to its value "
            f"x0.5 and x2, the others kept: the ratio {summary['runner_up']} / "
            f"{summary['cheapest']} (base {summary['ratio']:.3g}), their break-even touch "
            + (f"fraction (searched in {summary['searched'][0]:g}.."
               f"{summary['searched'][1]:g}; '-': none there)" if summary.get("searched")
               else "fraction") + " and the cheapest strategy at each end; a flip means "
            "the answer depends on that assumption.")
        b.figure("sensitivity", "Sensitivity (modelled)",
                 lambda: plots.plot_tornado(frame, summary))
        b.table(lambda: _sensitivity_table(frame), "sensitivity")

    b.h2("Model against published boot times")
    b.p("DESIGN §2's published boot times (RFC v2's cover letter; kernel 5.17-rc6, CPU and "
        "backing not stated) next to the model's boot of the same sizes, per variant and "
        "cost profile: **modelled** boot = B0 + startup + the boot's own touches (its memory "
        "map, 1/64 of memory, and a fixed working set: `--pattern boot`), with kernel 5.17, "
        "a coherent CPU (SME_COHERENT), 4 KiB pages, the TDP MMU, one vCPU. B0, the fixed "
        "part of a boot, is the one constant taken from the table: the 4 GB demand point "
        "minus the model's own 4 GB `demand-v2` boot (that point is therefore not an error "
        "of the model's). Published GB are taken as GiB. Relative error = (modelled - "
        "published) / published; slopes are least-squares fits in ms per GB.")
    points, slopes = _published(loaded)
    b.table(lambda: slopes, "published vs model slopes")
    b.table(lambda: points, "published vs model points")

    b.h2("Real KVM guest against the model")
    b.p("The kvm backing (`pinbench run --suite ground`): a real, plain (non-SEV) guest "
        "through /dev/kvm, warm host unless labelled cold. **Measured**: median startup "
        "(VM creation, populate + mlock for strategies that pin at startup, first guest "
        "instruction) and time for the guest to touch all its memory; of startup, the VM's "
        "creation and first entry (`vm_fixed_s`, the same for every strategy, not modelled) "
        "is set apart and the rest (`compared_s`) is compared. **Modelled** (`modelled_s`): "
        "the model run for the same configuration, on the MMU the VM ran on (the run's "
        "`mmu`, or for older results the MMU a calibrated profile records), priced for what "
        "this guest executes -- no cache flushes, pins only where the VMM mlocks at startup "
        "(one per host page); `modelled_sev_s` is what an SEV host pays for the same run. "
        "Under the default profile and each `--profile`. Relative error = (modelled - "
        "compared) / compared, per 4 KiB page. This KVM is shadow-paging and nested "
        "(HOST.md): its fault path is not an SEV host's nested-paging one. The ranking "
        "table sets startup + touch-all per page of each strategy side by side, measured "
        "and modelled, and says whether both rank the strategies alike.")
    if "backing" in df and (df["backing"] == "kvm").any():
        from pinning.analysis.ground import kvm_fit, kvm_ranking, kvm_vs_model

        kvm_rows = kvm_vs_model(df, loaded)
        ranking = kvm_ranking(kvm_rows)
        # the figure and the fit line follow the last profile given (--profile), by the
        # name every table row carries
        fit = kvm_fit(kvm_rows, ranking, loaded[-1].name)
        b.p(f"Under the {fit['profile']} profile, warm host: {fit['within']} of "
            f"{fit['compared']} compared phases within {fit['tolerance']:.0%} of the "
            f"measurement (worst {fit['worst']}); the lifecycle ranking agrees in "
            f"{fit['agree']} of {fit['ranked']} configurations.")
        b.figure("kvm_vs_model", f"Real KVM guest vs model ({loaded[-1].name} profile)",
                 lambda: plots.plot_kvm_vs_model(kvm_rows, profile=loaded[-1].name))
        b.table(lambda: _kvm_table(kvm_rows), "kvm vs model")
        b.table(lambda: ranking.round(1), "kvm vs model: lifecycle ranking")
    else:
        b.p("These results hold no kvm-backed benchmark: run `pinbench run --suite ground` "
            "where /dev/kvm exists and pass its results file too.")

    b.h2("Remap")
    b.p("Events of the remap phase (modelled counts): re-pin cost under demand; stale "
        "pins and unpinned frames mapped into the guest (hazards) under upfront.")
    b.table(lambda: _remap_table(df), "remap")

    b.h2("Conversion (private -> shared -> private)")
    b.p("The convert family's conversion phase, **modelled**: the guest converts a range "
        "to shared and back, then touches it again. Under guest_memfd each request exits "
        "to the VMM, the attributes are stored, the range is punched out of the "
        "guest_memfd (RMPUPDATE + a 4 KiB CLFLUSH per guest-owned page) and faulted in "
        "anew; under the pinning strategies the conversion is the guest's page-table bit: "
        "one exit per request, the memory and its pins stay.")
    b.family_table(df, "convert", lambda: _convert_table(df))

    if "simulator" in kinds:
        b.h2(SIMULATOR_SECTION)
        b.p("Median wall time of each sim benchmark's measured phases (pyperf values): how "
            "fast pinbench's own bookkeeping runs on the machine in the header. It is what "
            "`pinbench compare` gates pinbench's own code on in CI, not the time a kernel "
            "takes to pin, fault or tear down: no figure, fit, break-even or ranking above "
            "uses it, and it says nothing about which strategy is cheaper.")
        b.table(lambda: _summary_md(df, ["simulator"]), "simulator speed")

    title = f"pinbench report: {_backings_title(df)}"
    written = dict(b.written)
    csv = outdir / "summary.csv"
    df.to_csv(csv, index=False)
    written[csv.name] = csv
    md = outdir / "report.md"
    md.write_text(_to_markdown(b.blocks, title) + "\n", encoding="utf-8")
    written[md.name] = md
    page = outdir / "report.html"
    page.write_text(_to_html(b.blocks, title) + "\n", encoding="utf-8")
    written[page.name] = page
    return written


def main(paths: Sequence[str | Path], outdir: str | Path,
         profiles: Sequence[str | Path] | None = None) -> int:
    """CLI entry: write the report, print the paths written, return 0 (InputError propagates)."""
    written = write_report([Path(p) for p in paths], Path(outdir), profiles)
    for path in written.values():
        print(path)
    return 0


__all__ = ["boot_table", "break_even_table", "labels", "main", "markdown_table", "scaling_fits",
           "write_report"]

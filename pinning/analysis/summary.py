"""The plain-text summary ``pinbench run`` prints: light on imports (pandas only), so that
printing it does not load matplotlib and scipy into every run."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from pinning.analysis.formatting import plural, seconds
from pinning.model import strategies
from pinning.model.names import (
    BACKINGS,
    FAMILIES,
    TIME_KINDS,
    InputError,
    time_label,
    wall_kind,
)


def pair_key(name: str) -> str:
    """A benchmark name with its strategy replaced by ``*``: pairs the strategies' runs of
    the same configuration."""
    parts = name.split("/")
    if len(parts) > 1 and parts[1] in strategies.REGISTRY:
        parts[1] = "*"
    return "/".join(parts)


def strategies_in(values: Iterable[str]) -> list[str]:
    """The strategies among ``values``, in registry order (unregistered ones last)."""
    present = set(values)
    known = [s for s in strategies.names() if s in present]
    return known + sorted(str(s) for s in present - set(known))


def wall_kinds(df: pd.DataFrame) -> pd.Series:
    """The kind of each row's wall time ('measured' or 'simulator'): the frame's
    ``wall_kind`` column, or for a frame without it the kind of its backing."""
    if "wall_kind" in df:
        return df["wall_kind"]
    backing = df["backing"] if "backing" in df else pd.Series(None, index=df.index)
    return backing.map(wall_kind)


#: Order of the kinds of time in a summary: what a run measured on this host first,
#: then the model, then simulator speed, which is never a cost of pinning and comes last.
#: A summary's columns are ``<strategy>_<kind>_s``.
KIND_ORDER = ("measured", "modelled", "simulator")


def summary_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The strategies side by side per benchmark, paired by name with the strategy swapped.

    Columns: family, benchmark (strategy shown as ``*``), then per kind of time present
    and strategy: ``<strategy>_measured_s`` (median wall time of a real or kvm
    backing's benchmark), ``<strategy>_modelled_s`` (modelled time of the measured
    phases, every backing) and ``<strategy>_simulator_s`` (median wall time of a sim
    benchmark: simulator speed). A wall-time column exists only when some row has that
    kind of wall time (``wall_kind``), and is NaN on the rows of the other kind.
    """
    if df.empty:
        raise InputError("no benchmark to summarise")
    kinds = wall_kinds(df)
    d = df.assign(benchmark=df["name"].map(pair_key),
                  modelled_s=df["model_measured_ns"] / 1e9,
                  **{f"{k}_s": df["median_s"].where(kinds == k)
                     for k in KIND_ORDER if k != "modelled"})
    present = [k for k in KIND_ORDER if k == "modelled" or (kinds == k).any()]
    values = [f"{k}_s" for k in present]
    wide = d.pivot_table(index=["family", "benchmark"], columns="strategy", values=values,
                         aggfunc="median", sort=False)
    out = pd.DataFrame(index=wide.index)
    for kind in present:
        for strategy in strategies_in(df["strategy"].dropna()):
            col = (f"{kind}_s", strategy)
            out[f"{strategy}_{kind}_s"] = wide[col] if col in wide else math.nan
    out = out.reset_index()
    rank = {f: i for i, f in enumerate(FAMILIES)}
    out["_rank"] = out["family"].map(lambda f: rank.get(f, len(rank)))
    return out.sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def summary_columns(sf: pd.DataFrame, kinds: Iterable[str] = KIND_ORDER
                    ) -> list[tuple[str, str]]:
    """(column of summary_frame, heading) of each number of ``kinds``, kind by kind in
    KIND_ORDER; the heading names the strategy and the kind ('demand simulator speed')."""
    out = []
    for kind in (k for k in KIND_ORDER if k in set(kinds)):
        suffix = f"_{kind}_s"
        out += [(c, f"{c.removesuffix(suffix)} {time_label(kind)}")
                for c in sf.columns if c.endswith(suffix)]
    return out


def backings_line(df: pd.DataFrame) -> str:
    """The backing(s) that actually ran the results and how many benchmarks each:
    'the sim backing (63 benchmarks)', 'the kvm backing (12 benchmarks) and the real
    backing (4)'."""
    counts = df["backing"].fillna("sim").value_counts()
    order = [b for b in BACKINGS if b in counts] + sorted(set(counts.index) - set(BACKINGS))
    parts = [f"the {b} backing ({plural(int(counts[b]), 'benchmark') if i == 0 else counts[b]})"
             for i, b in enumerate(order)]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def kinds_in(df: pd.DataFrame) -> list[str]:
    """The kinds of time a summary of ``df`` shows, in KIND_ORDER: modelled always."""
    kinds = set(wall_kinds(df))
    return [k for k in KIND_ORDER if k == "modelled" or k in kinds]


def legend_lines(df: pd.DataFrame) -> list[str]:
    """One line per kind of time a summary of ``df`` shows: its label and what it is."""
    kinds = kinds_in(df)
    width = max(len(time_label(k)) for k in kinds)
    return [f"{time_label(k).ljust(width)} = {'' if k == 'modelled' else 'median '}"
            f"{TIME_KINDS[k][1]}" for k in kinds]


def summary_table(df: pd.DataFrame) -> str:
    """Plain-text table per workload family: the strategies side by side.

    A header naming the backing(s) that ran and each kind of time shown, then per
    family one column group per kind (measured, modelled, simulator speed: the kinds
    present), one column per strategy: the median wall time, or the modelled time of
    each benchmark's measured phases.
    """
    sf = summary_frame(df)
    profiles = sorted({str(p) for p in df["cost_profile"].dropna()}) if (
        "cost_profile" in df) else []
    profile = (f", {'cost profile' if len(profiles) == 1 else 'cost profiles'} "
               f"{', '.join(profiles)}" if profiles else "")
    lines = [f"ran on {backings_line(df)}{profile}",
             *(f"  {line}" for line in legend_lines(df))]
    kinds = kinds_in(df)
    for family, sub in sf.groupby("family", sort=False):
        groups = []  # (label, [(column, strategy)]) of the kinds this family has values of
        for kind in kinds:
            cols = [(c, h.removesuffix(f" {time_label(kind)}"))
                    for c, h in summary_columns(sf, [kind]) if sub[c].notna().any()]
            if cols:
                groups.append((time_label(kind), cols))
        head = ["benchmark", *(s for _, cols in groups for _, s in cols)]
        rows = [head, *([r["benchmark"]] + [seconds(r[c]) for _, cols in groups
                                             for c, _ in cols]
                        for _, r in sub.iterrows())]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        # each group's label spans its columns; widen the last one if the label is longer
        i, spans = 1, []
        for label, cols in groups:
            n = len(cols)
            span = sum(widths[i:i + n]) + 2 * (n - 1)
            if len(label) > span:
                widths[i + n - 1] += len(label) - span
                span = len(label)
            spans.append(label.center(span))
            i += n
        lines += ["", str(family),
                  ("  " + " " * widths[0] + "  " + "  ".join(spans)).rstrip()]
        for r in rows:
            lines.append("  " + "  ".join([r[0].ljust(widths[0])]
                                          + [c.rjust(w) for c, w in zip(r[1:], widths[1:],
                                                                        strict=True)]).rstrip())
    return "\n".join(lines)

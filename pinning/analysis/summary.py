"""The plain-text summary ``pinbench run`` prints: light on imports (pandas only), so that
printing it does not load matplotlib and scipy into every run."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from pinning.analysis.formatting import seconds
from pinning.model import strategies
from pinning.model.names import FAMILIES, InputError


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


def summary_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The strategies side by side per benchmark, paired by name with the strategy swapped.

    Columns: family, benchmark (strategy shown as ``*``), ``<strategy>_measured_s``
    (median) and ``<strategy>_modelled_s`` (modelled time of the measured phases).
    """
    if df.empty:
        raise InputError("no benchmark to summarise")
    d = df.assign(benchmark=df["name"].map(pair_key),
                  measured_s=df["median_s"], modelled_s=df["model_measured_ns"] / 1e9)
    wide = d.pivot_table(index=["family", "benchmark"], columns="strategy",
                         values=["measured_s", "modelled_s"], aggfunc="median", sort=False)
    out = pd.DataFrame(index=wide.index)
    for strategy in strategies_in(df["strategy"].dropna()):
        for what in ("measured", "modelled"):
            col = (f"{what}_s", strategy)
            out[f"{strategy}_{what}_s"] = wide[col] if col in wide else math.nan
    out = out.reset_index()
    rank = {f: i for i, f in enumerate(FAMILIES)}
    out["_rank"] = out["family"].map(lambda f: rank.get(f, len(rank)))
    return out.sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


def summary_columns(sf: pd.DataFrame) -> list[tuple[str, str]]:
    """(column of summary_frame, heading) of each number, measured then modelled."""
    names = [c.removesuffix("_measured_s") for c in sf.columns if c.endswith("_measured_s")]
    return [(f"{s}_{w}_s", f"{s} {w}") for w in ("measured", "modelled") for s in names]


def summary_table(df: pd.DataFrame) -> str:
    """Plain-text table per workload family: the strategies side by side.

    Median measured time and modelled time of each benchmark's measured phases.
    """
    sf = summary_frame(df)
    cols = summary_columns(sf)
    head = ["benchmark", *(h for _, h in cols)]
    lines = ["measured = median wall time (the model's bookkeeping on the sim backing); "
             "modelled = events x cost profile (vCPU model)"]
    for family, sub in sf.groupby("family", sort=False):
        rows = [head, *([r["benchmark"]] + [seconds(r[c]) for c, _ in cols]
                        for _, r in sub.iterrows())]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines += ["", str(family)]
        for r in rows:
            lines.append("  " + "  ".join([r[0].ljust(widths[0])]
                                          + [c.rjust(w) for c, w in zip(r[1:], widths[1:],
                                                                        strict=True)]).rstrip())
    return "\n".join(lines)

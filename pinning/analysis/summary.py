"""The plain-text summary ``pinbench run`` prints: light on imports (pandas only), so that
printing it does not load matplotlib and scipy into every run."""

from __future__ import annotations

import math

import pandas as pd

from pinning.model.units import InputError

FAMILY_ORDER = ("startup", "fault_storm", "remap", "teardown", "lifecycle")


def pair_key(name: str) -> str:
    """A benchmark name with its strategy replaced by ``*``: pairs upfront with demand."""
    parts = name.split("/")
    if len(parts) > 1 and parts[1] in ("upfront", "demand"):
        parts[1] = "*"
    return "/".join(parts)


def format_seconds(x: float) -> str:
    """A duration in s, ms, µs or ns with 3 significant digits; '-' for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x / 1e-9:.3g} ns"


def summary_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Both strategies side by side per benchmark, paired by name with the strategy swapped.

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
    for strategy in ("upfront", "demand"):
        for what in ("measured", "modelled"):
            col = (f"{what}_s", strategy)
            out[f"{strategy}_{what}_s"] = wide[col] if col in wide else math.nan
    out = out.reset_index()
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    out["_rank"] = out["family"].map(lambda f: rank.get(f, len(rank)))
    return out.sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


_SUMMARY_HEAD = ("benchmark", "upfront measured", "demand measured", "upfront modelled",
                 "demand modelled")


def _summary_cells(sub: pd.DataFrame) -> list[list[str]]:
    return [[r["benchmark"]] + [format_seconds(r[f"{s}_{w}_s"])
                                for w in ("measured", "modelled") for s in ("upfront", "demand")]
            for _, r in sub.iterrows()]


def summary_table(df: pd.DataFrame) -> str:
    """Plain-text table per workload family: upfront and demand side by side.

    Median measured time and modelled time of each benchmark's measured phases.
    """
    sf = summary_frame(df)
    lines = ["measured = median wall time (the model's bookkeeping on the sim backing); "
             "modelled = events x cost profile (vCPU model)"]
    for family, sub in sf.groupby("family", sort=False):
        rows = [list(_SUMMARY_HEAD), *_summary_cells(sub)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_SUMMARY_HEAD))]
        lines += ["", str(family)]
        for r in rows:
            lines.append("  " + "  ".join([r[0].ljust(widths[0])]
                                          + [c.rjust(w) for c, w in zip(r[1:], widths[1:],
                                                                        strict=True)]).rstrip())
    return "\n".join(lines)

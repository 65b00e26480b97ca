"""How numbers are written, everywhere: durations, ratios, percentages, counts of things.

Plain Python: the CLI, ``pinbench run``'s summary, reports and compare all format here.
"""

from __future__ import annotations

import math
from typing import Any

from pinning.model.units import format_size

__all__ = ["format_size", "missing", "pct", "plural", "ratio", "seconds", "signed_pct"]


def wall_time_heading(backing: str | None, host: str | None = None) -> str:
    """The heading of a run's wall time per phase, in the words of its kind of time:
    simulator speed on the sim (pinbench's own bookkeeping, never a cost of pinning),
    measured on the real and kvm backings (``host``: the host memory's state)."""
    from pinning.model.names import time_label, wall_kind

    kind = wall_kind(backing)
    if kind == "simulator":
        return (f"wall time of pinbench's own bookkeeping on the sim backing "
                f"({time_label(kind)}: not a cost of pinning)")
    what = {"real": "pinbench's bookkeeping on real host memory", "kvm": "a real KVM guest"}
    state = f", {host} host" if host else ""
    return f"wall time of {what.get(str(backing), str(backing))}{state} ({time_label(kind)})"


def missing(x: Any) -> bool:
    """None or NaN: a number that is not there."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def seconds(x: float | None, digits: int = 3) -> str:
    """A duration given in seconds, in s, ms, µs or ns with ``digits`` significant digits;
    '-' for a missing one."""
    if missing(x):
        return "-"
    if x == 0:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g} {unit}"
    return f"{x / 1e-9:.{digits}g} ns"


def ratio(x: float | None) -> str:
    """A ratio with three decimals; '-' for a missing one."""
    return "-" if missing(x) else f"{x:.3f}"


def pct(fraction: float) -> str:
    """``0.05`` -> ``5 %``."""
    return f"{100 * fraction:g} %"


def signed_pct(r: float | None) -> str:
    """A ratio as a signed change: ``1.279`` -> ``+27.9 %``."""
    return "-" if missing(r) else f"{100 * (r - 1):+.1f} %"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 process``, ``2 processes``: ``n`` and the word in the right number."""
    if many is None:
        many = word + ("es" if word.endswith(("s", "sh", "ch", "x")) else "s")
    return f"{n} {word if n == 1 else many}"


def simulation_text(res: dict[str, Any]) -> str:
    """A readable table of one ``pinbench simulate`` result (its JSON object)."""
    from pinning.model import strategies
    from pinning.model.names import COUNTERS
    from pinning.model.units import PAGE_SIZE

    size = format_size(res["guest_pages"] * PAGE_SIZE)
    known = strategies.REGISTRY.get(res["strategy"])
    what = f"{res['strategy']} ({known.label})" if known else res["strategy"]
    lines = [f"{what}: {size} guest ({res['guest_pages']:,} pages), "
             f"level {res['level']}, {plural(res.get('vcpus', 1), 'vCPU')}"]
    if res["error"]:
        lines.append(f"error: {res['error']}")
    lines.append("")
    lines.append("event counts (modelled)")
    for name in COUNTERS:
        value = res[name]
        extra = f"  ({format_size(value)})" if name.endswith("_bytes") and value else ""
        lines.append(f"  {name:<26}{value:>16,}{extra}")
    lines.append("")
    lines.append(f"time of each phase (modelled: events x cost profile "
                 f"{res.get('cost_profile', 'default')!r}, accesses by the vCPU model)")
    for phase, ns in res["modelled_ns"].items():
        lines.append(f"  {phase:<26}{ns / 1e6:>13.3f} ms")
    lines.append("")
    lines.append(wall_time_heading(res.get("backing"), res.get("host")))
    for phase, ns in res["elapsed_ns"].items():
        lines.append(f"  {phase:<26}{ns / 1e6:>13.3f} ms")
    kvm = res.get("kvm") or {}
    if kvm:
        lines.append("")
        lines.append("kvm: the VM's phases and KVM's statistics (measured)")
        for key, value in kvm.items():
            if key.endswith("_ns") and isinstance(value, int | float):
                lines.append(f"  {key:<26}{value / 1e6:>13.3f} ms")
        stats = kvm.get("stats") or {}
        for name, value in stats.items():
            if value:
                lines.append(f"  {name:<30}{value:>16,}")
        zero = sorted(name for name, value in stats.items() if not value)
        if zero:
            lines.append(f"  ({len(zero)} more KVM statistics are 0: {', '.join(zero)})")
    return "\n".join(lines)


def comparison_text(res: dict[str, Any]) -> str:
    """A readable side-by-side of a several-strategy ``pinbench simulate`` (its JSON):
    modelled time per phase, the answer, the break-evens, the sensitivity, the counts
    behind them, and the wall time of the runs kept apart under its own name."""
    from pinning.model import strategies
    from pinning.model.names import COUNTERS, time_label, wall_kind
    from pinning.model.units import PAGE_SIZE

    names, cfg, runs = res["strategies"], res["config"], res["runs"]
    pattern = cfg["pattern"] if cfg["pattern"] in ("trace", "boot") else (
        f"{cfg['pattern']}, touch fraction {cfg['touch_fraction']:g}, seed {cfg['seed']}")
    memlock = ("" if cfg["memlock_limit"] is None
               else f", memlock limit {format_size(cfg['memlock_limit'])}")
    lines = [f"{format_size(cfg['guest_pages'] * PAGE_SIZE)} guest "
             f"({cfg['guest_pages']:,} pages), level {cfg['level']}, "
             f"{plural(cfg['vcpus'], 'vCPU')}, pattern {pattern}{memlock}",
             f"host: kernel {cfg['kernel']}, SME_COHERENT {cfg['sme_coherent']}, MMU "
             f"{cfg['mmu']}; cost profile {res['cost_profile']['name']!r} "
             f"({res['cost_profile']['source']}); backing {cfg['backing']}"]
    gmem = [n for n in names if n in strategies.REGISTRY and strategies.get(n).guest_memfd]
    if gmem and "prefault" in cfg:  # results from before guest_memfd have no launch options
        lines.append(f"{', '.join(gmem)} launch: prefault {cfg['prefault']}, image "
                     f"{format_size(cfg['image_size'])}, acceptance {cfg['acceptance']}")

    def table(title: str, rows: list[tuple[str, list[str]]]) -> None:
        width = max(len(r[0]) for r in rows)
        cols = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
        lines.extend(["", title,
                      "  " + " " * width + "".join(f"  {n:>{w}}" for n, w in zip(
                          names, cols, strict=True))])
        for label, cells in rows:
            lines.append(f"  {label:<{width}}" + "".join(
                f"  {c:>{w}}" for c, w in zip(cells, cols, strict=True)))

    lines.extend(f"note: {n}" for n in res.get("notes", []))
    for s in names:
        if runs[s]["error"]:
            lines.append(f"{s}: error: {runs[s]['error']}")
    phases = list(dict.fromkeys(p for s in names for p in runs[s]["modelled_ns"]))
    phases.append(phases.pop(phases.index("total")))  # the total last
    table("modelled time (events x cost profile; the guest's accesses by the vCPU model)",
          [(p, [seconds(runs[s]["modelled_ns"].get(p, 0.0) / 1e9) for s in names])
           for p in phases])
    ans = res["answer"]
    best = ans["cheapest"]
    ratios = ans["ratio_to_cheapest"]
    others = sorted((s for s in names if s != best and ratios[s] is not None),
                    key=lambda s: ratios[s])
    if best is None:
        lines += ["", "answer (modelled): none: no strategy could run (errors above)"]
    else:
        lines += ["", f"answer (modelled): {best} is the cheapest, "
                  f"{seconds(ans['modelled_total_ns'][best] / 1e9)}; "
                  + ", ".join([f"{s} takes {ratios[s]:.3g}x as long" for s in others]
                              + [f"{s} could not run" for s in names if ratios[s] is None])]
    if "measured" in ans:
        m = ans["measured"]
        lines.append(f"measured ({cfg['backing']} backing, this host): {m['cheapest']} took the "
                     f"least, {seconds(m['total_ns'][m['cheapest']] / 1e9)}; " + ", ".join(
                         f"{s} {m['ratio_to_cheapest'][s]:.3g}x" for s in names
                         if s != m["cheapest"]))
    if res.get("break_even") is None:
        lines += ["", f"break-even touch fraction: not searched: {res.get('break_even_note')}"]
    else:
        lines += ["", "break-even touch fraction (modelled: where two strategies cost the "
                  "same, searched over 0..1)"]
        for be in res["break_even"]:
            pair = f"{be['a']} vs {be['b']}"
            if be["fraction"] is None:
                ends = (f"{be['cheaper_below']} cheaper at 0 and at 1"
                        if be["cheaper_below"] == be["cheaper_above"]
                        else f"{be['cheaper_below']} cheaper at 0, {be['cheaper_above']} at 1")
                lines.append(f"  {pair:<28}none in 0..1: {ends}")
            else:
                lines.append(f"  {pair:<28}{be['fraction']:.3f}: {be['cheaper_below']} cheaper "
                             f"below, {be['cheaper_above']} above")
    sens = res.get("sensitivity", False)
    if sens:
        lines += ["", sensitivity_text(sens)]
    elif sens is None:
        lines += ["", "sensitivity: not computed: fewer than two strategies ran"]
    table("event counts (modelled)",
          [(n, [f"{runs[s][n]:,}" for s in names]) for n in COUNTERS])
    kind = time_label(wall_kind(cfg["backing"]))
    table(f"{kind} (wall time of each phase"
          + (": pinbench's own bookkeeping, not a cost of pinning)" if kind ==
             "simulator speed" else f" on this host, {cfg['backing']} backing)"),
          [(p, [seconds(runs[s]["elapsed_ns"].get(p, 0) / 1e9) for s in names])
           for p in dict.fromkeys(p for s in names for p in runs[s]["elapsed_ns"])])
    return "\n".join(lines)


def sensitivity_text(sens: dict[str, Any]) -> str:
    """The tornado table of ``pinbench simulate --sensitivity`` (its JSON part)."""
    best, runner = sens["cheapest"], sens["runner_up"]
    be, window = sens["break_even"], sens.get("searched")
    head = (f"sensitivity (modelled): {runner} / {best} = {sens['ratio']:.3g} with the "
            f"profile's values" + (f", break-even {be:.3f}" if be is not None else "")
            + "; each cost below set to the ends of its range, the others kept"
            + ("; '-': no break-even in the window searched (it moved past the "
               "configuration's fraction, or is gone)" if window else ""))
    searched = (f"break-even in {window[0]:g}..{window[1]:g}" if window else "break-even")
    rows = [("cost", "kind", "range", "ratio", searched, "cheapest", "flips")]
    for r in sens["rows"]:
        def frac(x: float) -> str:
            return "-" if missing(x) else f"{x:.3f}"

        cheapest = (r["cheaper_low"] if r["cheaper_low"] == r["cheaper_high"]
                    else f"{r['cheaper_low']} / {r['cheaper_high']}")
        rows.append((r["key"], r["kind"], f"{r['low']:.4g}..{r['high']:.4g} ({r['range']})",
                     f"{r['ratio_low']:.3g}..{r['ratio_high']:.3g}",
                     f"{frac(r['break_even_low'])}..{frac(r['break_even_high'])}",
                     cheapest, "FLIPS" if r["flips"] else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [head]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                     .rstrip())
    if not sens["rows"]:
        lines.append("  (no cost to vary: the profile marks none as an assumption; name "
                     "some with --vary KEY)")
    return "\n".join(lines)

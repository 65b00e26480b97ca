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
    from pinning.model.names import COUNTERS
    from pinning.model.units import PAGE_SIZE

    size = format_size(res["guest_pages"] * PAGE_SIZE)
    lines = [f"{res['strategy']} pinning, {size} guest ({res['guest_pages']:,} pages), "
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

"""The strategies: one registry entry each, naming its kernels, metadata rule, phases and label.

Everything that lists strategies -- CLI choices, suite validation, results columns,
plot colours, report tables, compare -- iterates :data:`REGISTRY`; nothing else spells
a strategy's name. Adding a strategy is one :func:`register` call plus, if it needs
behaviour the engine does not have yet, its kernels in :mod:`pinning.model.kernels.engine`
and one dispatch line there per new kernel code.

Plain Python (no numpy): the analysis layer reads the registry without the kernels.
The kernel codes below are compile-time constants of the jitted engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pinning.model.names import InputError

# Kernel codes: which engine kernel runs a strategy's startup, fault and teardown.
#: register the region: memory-lock check, page array, populate + pin + flush every page
STARTUP_PIN_REGION = 1
#: allocate the memslot's pinned bitmap and pfn array (nothing pinned)
STARTUP_MEMSLOT = 2
#: install the nested mapping; a page whose frame nobody pins is a hazard
FAULT_MAP = 1
#: the RFC's fault path: pin every 4 KiB page of the unit (replacing a stale pin after a
#: VM_PAGE_FLUSH), then flush the whole unit, under the per-VM lock
FAULT_PIN_PAGES = 2
#: drop every pin of the region's page array
TEARDOWN_REGION = 1
#: walk the pinned bitmap and drop each set page's pin
TEARDOWN_BITMAP = 2


def _region_bytes(guest_pages: int) -> int:
    """Upfront: the region's page array, 8 bytes per page."""
    return 8 * guest_pages


def _memslot_bytes(guest_pages: int) -> int:
    """Demand: the pfn array (8 B/page) plus the bitmap in whole 64-bit words."""
    return 8 * guest_pages + 8 * ((guest_pages + 63) // 64)


@dataclass(frozen=True)
class Strategy:
    """How KVM holds a confidential guest's memory: what the engine runs, and how to show it."""

    name: str  # as users type it: --strategy NAME, suite key, results column
    label: str  # one line for legends and table headings
    description: str  # what the kernel does, for --help and reports
    colour: str  # matplotlib colour of the strategy in every plot
    startup: int  # STARTUP_* kernel code
    fault: int  # FAULT_* kernel code
    teardown: int  # TEARDOWN_* kernel code
    metadata_bytes: Callable[[int], int]  # KVM's per-VM arrays for a guest of N pages
    #: phases in which the strategy does its pinning work (where its cost lands)
    pinning_phases: tuple[str, ...]
    #: WBINVDs per VMM remap (an invalidation of the guest's memory)
    wbinvd_per_remap: int = 0
    #: whether a fault's pinning work runs under the per-VM lock (the vCPU model queues it)
    fault_lock: bool = False

    def rules(self) -> tuple[int, ...]:
        """The engine's rule vector for this strategy (indices ``R_*`` of the engine)."""
        return (self.startup, self.fault, self.teardown, self.wbinvd_per_remap,
                int(self.fault_lock))


#: Every strategy, in the order tables, legends and choices list them.
REGISTRY: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    """Add ``strategy`` to the registry (its name must be new)."""
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered already")
    REGISTRY[strategy.name] = strategy
    return strategy


def unregister(name: str) -> None:
    """Remove a strategy (tests register throwaway ones)."""
    REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
    """The registered strategies' names, in registry order."""
    return tuple(REGISTRY)


def get(name: str) -> Strategy:
    """The strategy called ``name``; InputError naming the registered ones otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown strategy {name!r} (expected one of "
                         f"{', '.join(REGISTRY)})") from None


def baseline() -> str:
    """The first strategy whose faults pin nothing: what "the extra cost of a fault" is
    measured against."""
    return next(s.name for s in REGISTRY.values() if s.fault == FAULT_MAP)


def colour(name: str) -> str:
    """A strategy's plot colour (grey for a name no longer registered, e.g. old results)."""
    s = REGISTRY.get(name)
    return s.colour if s else "#7f7f7f"


register(Strategy(
    name="upfront",
    label="upfront pinning (upstream SEV/SEV-ES)",
    description="pin and flush all guest memory when the VMM registers it, before the guest "
                "runs",
    colour="#d95f02",
    startup=STARTUP_PIN_REGION, fault=FAULT_MAP, teardown=TEARDOWN_REGION,
    metadata_bytes=_region_bytes, pinning_phases=("startup",),
    wbinvd_per_remap=1,
))
register(Strategy(
    name="demand",
    label="demand pinning (2022 RFC)",
    description="pin each page in the nested page fault path, tracked by a per-memslot "
                "bitmap and pfn array",
    colour="#1b9e77",
    startup=STARTUP_MEMSLOT, fault=FAULT_PIN_PAGES, teardown=TEARDOWN_BITMAP,
    metadata_bytes=_memslot_bytes, pinning_phases=("access", "remap"),
    fault_lock=True,
))

"""The strategies: one registry entry each, naming its kernels, metadata rule, phases and label.

Everything that lists strategies -- CLI choices, suite validation, results columns,
plot colours, report tables, compare -- iterates :data:`REGISTRY`; nothing else spells
a strategy's name. Adding a strategy is one :func:`register` call plus, if it needs
behaviour the engine does not have yet, its kernels in :mod:`pinning.model.kernels.engine`
and one dispatch line there per new kernel code. docs/model.md states each entry's rules
and the kernel functions they come from.

Plain Python (no numpy): the analysis layer reads the registry without the kernels.
The kernel codes and rule indices below are compile-time constants of the jitted engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from pinning.model.host import Host
from pinning.model.names import PREFAULTS, InputError

# Kernel codes: which engine kernel runs a strategy's startup, fault and teardown.
#: register the region: page array, populate + pin (+ flush) every page
STARTUP_PIN_REGION = 1
#: allocate the memslot's pinned bitmap and pfn array (nothing pinned)
STARTUP_MEMSLOT = 2
#: guest_memfd launch: attributes PRIVATE, the image through SNP_LAUNCH_UPDATE, prefault
STARTUP_GMEM = 3
#: install the nested mapping; a page whose frame nobody pins is a hazard
FAULT_MAP = 1
#: RFC v1 (``sev_pin_spte``): a reference on every 4 KiB page of the unit, then flush
#: the whole unit
FAULT_PIN_PAGES = 2
#: RFC v2 (``sev_pin_pfn``): one long-term pin of the unit, the fault path's own pin
#: taken and released around it
FAULT_PIN_UNIT = 3
#: guest_memfd (``kvm_gmem_get_pfn``): a private gfn's folio, zeroed and made guest-owned
#: (RMPUPDATE) at its first fault; a shared gfn faults in the VMM's memory; no pin
FAULT_GMEM = 4
#: drop every pin of the region's page array
TEARDOWN_REGION = 1
#: walk the pinned bitmap and drop each set bit's pin
TEARDOWN_BITMAP = 2
#: free every guest_memfd folio: RMPUPDATE back to the hypervisor + 4 KiB CLFLUSH if the
#: guest owned it (``sev_gmem_invalidate``)
TEARDOWN_GMEM = 3

# Where a fault's pinning work runs (the lock the vCPU model queues it on).
PIN_LOCK_NONE = "none"  # pins nothing in the fault path
PIN_LOCK_MMU = "mmu"  # inside the MMU's own section: mmu_lock (write: shadow; read: TDP)
PIN_LOCK_SLOTS_ARCH = "slots_arch"  # kvm->slots_arch_lock, a mutex

# Indices of the engine's rule vector (Strategy.rules()).
R_STARTUP = 0
R_FAULT = 1
R_TEARDOWN = 2
R_MEMLOCK_AT_STARTUP = 3  # 1: the limit is checked at registration, the VM never runs
R_METADATA_PER_PAGE = 4  # bytes of KVM's per-VM arrays per 4 KiB page
R_FLUSH = 5  # 1: CLFLUSH of what is pinned (the startup region / the fault's unit)
R_OLD_PAGE_FLUSH = 6  # 1: VM_PAGE_FLUSH of a replaced pin's pages
R_PREFETCH = 7  # 1: the shadow MMU prefetches 4 KiB neighbours
R_REMAP_WBINVD = 8  # whole-cache write-backs per invalidation of guest memory
R_TEARDOWN_WBINVD = 9  # ... at VM destroy (notifier release, sev_vm_destroy)
R_MEMSLOT_WBINVD = 10  # ... when the memslot's metadata is freed
R_PIN_LOCK = 11  # 1: the fault's pin work holds slots_arch_lock
R_MMU_LOCK = 12  # 1: every fault holds mmu_lock for write (shadow MMU)
R_PIN_UNDER_MMU = 13  # 1: the pin work runs inside that mmu_lock section
R_TRANSIENT_PIN = 14  # 1: the fault path pins and unpins the faulting page itself
R_PREFAULT = 15  # guest_memfd: index in names.PREFAULTS (none, fallocate, map)
R_IMAGE_PAGES = 16  # guest_memfd: pages put in with SNP_LAUNCH_UPDATE at launch
N_RULES = 17


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
    #: bytes of KVM's per-VM arrays per 4 KiB page of guest memory
    metadata_per_page: int
    #: phases in which the strategy does its pinning work (where its cost lands)
    pinning_phases: tuple[str, ...]
    #: the memory-lock limit is checked when the region is registered (else never)
    memlock_at_startup: bool = False
    #: whether its CLFLUSHes are skipped on CPUs with SME_COHERENT
    flush_gated_by_coherence: bool = True
    #: where its fault's pinning work runs (PIN_LOCK_*)
    pin_lock: str = PIN_LOCK_NONE
    #: whole-cache write-backs when the memslot's metadata is freed
    memslot_free_wbinvd: int = 0
    #: private memory comes from a guest_memfd (SEV-SNP): never GUP-pinned, not charged
    #: to RLIMIT_MEMLOCK, not reachable through the VMM's mapping
    guest_memfd: bool = False

    def metadata_bytes(self, guest_pages: int) -> int:
        """KVM's per-VM arrays for a guest of ``guest_pages`` pages."""
        return self.metadata_per_page * guest_pages

    def rules(self, host: Host, level: str, *, prefault: str = "none",
              image_pages: int = 0) -> tuple[int, ...]:
        """The engine's rule vector (indices ``R_*``) on ``host`` at mapping ``level``;
        a guest_memfd strategy's launch also takes ``prefault`` and ``image_pages``."""
        out = [0] * N_RULES
        out[R_STARTUP] = self.startup
        out[R_FAULT] = self.fault
        out[R_TEARDOWN] = self.teardown
        out[R_MEMLOCK_AT_STARTUP] = int(self.memlock_at_startup)
        out[R_METADATA_PER_PAGE] = self.metadata_per_page
        out[R_FLUSH] = int(not (self.flush_gated_by_coherence and host.sme_coherent))
        out[R_OLD_PAGE_FLUSH] = int(not host.sme_coherent)
        out[R_PREFETCH] = int(host.shadow_mmu and level == "4k")
        out[R_REMAP_WBINVD] = int(host.notifier_flush)
        out[R_TEARDOWN_WBINVD] = int(host.notifier_flush) + int(host.destroy_flush)
        out[R_MEMSLOT_WBINVD] = self.memslot_free_wbinvd
        out[R_PIN_LOCK] = int(self.pin_lock == PIN_LOCK_SLOTS_ARCH)
        out[R_MMU_LOCK] = int(host.shadow_mmu)
        out[R_PIN_UNDER_MMU] = int(self.pin_lock == PIN_LOCK_MMU and host.shadow_mmu)
        out[R_TRANSIENT_PIN] = int(self.fault == FAULT_PIN_UNIT)
        if self.guest_memfd:
            # Private memory has no host mapping the shadow MMU could prefetch from
            # (gfn_to_page_many_atomic walks the hva); for an SNP guest
            # sev_guest_memory_reclaimed returns at once, so neither an invalidation
            # nor the notifier's release writes back caches: only sev_vm_destroy does.
            out[R_PREFETCH] = 0
            out[R_REMAP_WBINVD] = 0
            out[R_TEARDOWN_WBINVD] = int(host.destroy_flush)
            out[R_PREFAULT] = PREFAULTS.index(prefault)
            out[R_IMAGE_PAGES] = image_pages
        return tuple(out)

    def pins_at_startup(self) -> bool:
        """Whether all of its memory is pinned before the guest runs."""
        return "startup" in self.pinning_phases


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
    description="pin (and flush) all guest memory when the VMM registers it, before the "
                "guest runs: sev_pin_memory",
    colour="#d95f02",
    startup=STARTUP_PIN_REGION, fault=FAULT_MAP, teardown=TEARDOWN_REGION,
    metadata_per_page=8, pinning_phases=("startup",), memlock_at_startup=True,
))
register(Strategy(
    name="demand",
    label="demand pinning, RFC v1 (Jan 2022)",
    description="pin each 4 KiB page in the nested page fault path (sev_pin_spte), "
                "tracked by a per-memslot bitmap and pfn array; flush every fault's unit",
    colour="#1b9e77",
    startup=STARTUP_MEMSLOT, fault=FAULT_PIN_PAGES, teardown=TEARDOWN_BITMAP,
    metadata_per_page=16, pinning_phases=("access", "remap"),
    flush_gated_by_coherence=False, pin_lock=PIN_LOCK_MMU,
))
register(Strategy(
    name="demand-v2",
    label="demand pinning, RFC v2 (Mar 2022: the published numbers)",
    description="one long-term pin per nested page fault (sev_pin_pfn) under "
                "kvm->slots_arch_lock; memory-lock limit checked at registration",
    colour="#7570b3",
    startup=STARTUP_MEMSLOT, fault=FAULT_PIN_UNIT, teardown=TEARDOWN_BITMAP,
    metadata_per_page=16, pinning_phases=("access", "remap"), memlock_at_startup=True,
    pin_lock=PIN_LOCK_SLOTS_ARCH, memslot_free_wbinvd=1,
))
register(Strategy(
    name="gmem",
    label="guest_memfd (upstream SEV-SNP, what was merged instead)",
    description="private memory from a guest_memfd: each page allocated, zeroed and made "
                "guest-owned (RMPUPDATE) at its first fault (kvm_gmem_get_pfn); no pin, "
                "no CLFLUSH until it is freed, no memory-lock accounting",
    colour="#e7298a",
    startup=STARTUP_GMEM, fault=FAULT_GMEM, teardown=TEARDOWN_GMEM,
    # the memory-attribute xarray: one 576-byte xa_node per 64 gfns (kvm->mem_attr_array)
    metadata_per_page=9, pinning_phases=(), flush_gated_by_coherence=False,
    guest_memfd=True,
))

"""A slow, plain pure-Python reference model of the pinning strategies and guest_memfd.

Written straight from docs/model.md, independently of ``pinning/model/kernels/``:
dicts, sets and lists, one step of the spec per line. It is the test oracle; speed
does not matter.

Strategies: ``upfront`` (upstream SEV: pin everything at registration), ``demand``
(RFC v1, ``sev_pin_spte``), ``demand-v2`` (RFC v2, ``sev_pin_pfn``), ``gmem``
(guest_memfd, SEV-SNP: nothing pinned; launch options ``image_pages`` and
``prefault``; conversions between private and shared). Host parameters:
``kernel`` ("X.Y" from 5.17 on), ``sme_coherent`` ("yes"/"no"), ``mmu``
("tdp"/"shadow").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PAGE_SIZE = 4096
LEVEL_UNIT_PAGES: dict[str, int] = {"4k": 1, "2m": 512, "1g": 262_144}
STRATEGY_NAMES: tuple[str, ...] = ("upfront", "demand", "demand-v2", "gmem")
PREFAULT_NAMES: tuple[str, ...] = ("none", "fallocate", "map")

# Kernel versions at which a counted rule changes (docs/model.md, "Host parameters").
FIRST_KERNEL = (5, 17)  # the RFC's baseline
NOTIFIER_FLUSH_FROM = (5, 18)  # [W]: WBINVD per invalidation and at notifier release
NO_DESTROY_FLUSH_FROM = (6, 17)  # [W17]: no flush in sev_vm_destroy
# 6.15 (FOLL_LONGTERM for the registered region) changes no count.

# Shadow MMU prefetch window (PTE_PREFETCH_NUM).
PTE_PREFETCH_NUM = 8

COUNTER_NAMES: tuple[str, ...] = (
    "npf_exits",
    "prefetched_pages",
    "frames_zeroed",
    "host_faults",
    "pins",
    "unpins",
    "clflush_bytes",
    "page_flushes",
    "wbinvd",
    "stale_pins_peak",
    "unpinned_mapped_hazards",
    "pinned_pages_peak",
    "pinned_pages_end",
    "metadata_bytes",
    "leaked_refs",
    "rmpupdates",
    "psc_exits",
    "attr_pages",
    "launch_update_pages",
)

# ("access", gfn, 1), ("remap", gfn, npages) or ("convert", gfn, npages, "shared"/"private")
Op = tuple


class MemlockError(Exception):
    """The guest needs more pages than the memory-lock limit allows."""


def parse_kernel(text: str) -> tuple[int, int]:
    """``"6.17"`` -> (6, 17); a ValueError for anything else or anything before 5.17."""
    m = re.fullmatch(r"(\d+)\.(\d+)", str(text).strip())
    if m is None:
        raise ValueError(f"kernel {text!r} is not X.Y")
    version = (int(m.group(1)), int(m.group(2)))
    if version < FIRST_KERNEL:
        raise ValueError(f"kernel {text!r} is older than 5.17")
    return version


@dataclass
class RefResult:
    """What one reference run returns: counters, error flag/message, final state."""

    counters: dict[str, int]
    error: str | None
    state: dict
    ops_done: int


@dataclass
class RefVM:
    """The whole model state: host frames, VMM mapping, nested map and KVM metadata."""

    strategy: str
    guest_pages: int
    unit_pages: int
    limit_pages: int | None  # floor(memlock_limit / 4096); None means no limit
    kernel: tuple[int, int] = FIRST_KERNEL
    sme_coherent: bool = True
    shadow_mmu: bool = False
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    host_map: dict[int, int] = field(default_factory=dict)  # gfn -> pfn (VMM mapping)
    refs: dict[int, int] = field(default_factory=dict)  # pfn -> reference count (> 0)
    pins: dict[int, int] = field(default_factory=dict)  # pfn -> pin count (> 0)
    free: list[int] = field(default_factory=list)  # free stack, bottom first
    next_pfn: int = 1  # lowest never-used pfn
    nested: set[int] = field(default_factory=set)  # units with a nested mapping
    pinned: int = 0  # 4 KiB pages held by KVM's long-lived pins now
    stale: int = 0  # stale pins now
    region: dict[int, int] = field(default_factory=dict)  # upfront page array (nonzero)
    bitmap: set[int] = field(default_factory=set)  # demand/demand-v2 pinned bitmap (set gfns)
    pfns: dict[int, int] = field(default_factory=dict)  # demand/demand-v2 pfn array (nonzero)
    image_pages: int = 0  # gmem: pages of the launch image (SNP_LAUNCH_UPDATE)
    prefault: str = "none"  # gmem: none, fallocate or map
    gmem: dict[int, int] = field(default_factory=dict)  # gmem: gfn -> folio's pfn
    private: set[int] = field(default_factory=set)  # gmem: gfns whose attribute is private
    prepared: set[int] = field(default_factory=set)  # gmem: folios zeroed/filled, guest-owned

    # ---- host parameters ---------------------------------------------------------

    def notifier_flush(self) -> bool:
        """From 5.18 every invalidation overlapping the memslot, and the notifier's
        release, does one WBINVD (WBNOINVD from 6.17), whatever the strategy."""
        return self.kernel >= NOTIFIER_FLUSH_FROM

    def destroy_flush(self) -> bool:
        """``sev_vm_destroy`` does one WBINVD before 6.17."""
        return self.kernel < NO_DESTROY_FLUSH_FROM

    # ---- host frames -------------------------------------------------------------

    def alloc_frame(self, zeroed: bool = True) -> int:
        """A new frame: the most recently freed one, else the lowest never-used pfn.
        A guest_memfd folio is not zeroed when it is allocated (``zeroed`` False)."""
        if self.free:
            pfn = self.free.pop()
        else:
            pfn = self.next_pfn
            self.next_pfn += 1
        assert pfn not in self.refs and pfn not in self.pins
        if zeroed:
            self.counters["frames_zeroed"] += 1
        return pfn

    def get_ref(self, pfn: int) -> None:
        self.refs[pfn] = self.refs.get(pfn, 0) + 1

    def put_ref(self, pfn: int) -> None:
        """Drop one reference; a frame whose reference count reaches 0 is freed."""
        self.refs[pfn] -= 1
        assert self.refs[pfn] >= 0
        if self.refs[pfn] == 0:
            del self.refs[pfn]
            assert pfn not in self.pins
            self.free.append(pfn)

    def populate_unit(self, unit: int) -> None:
        """Give every page of ``unit`` without a VMM frame one, ascending (the VMM's
        mapping holds one reference); one host fault for the unit if any page was."""
        populated = 0
        for gfn in self.unit_range(unit):
            if gfn not in self.host_map:
                pfn = self.alloc_frame()
                self.host_map[gfn] = pfn
                self.get_ref(pfn)
                populated += 1
        if populated:
            self.counters["host_faults"] += 1

    # ---- long-lived pins ---------------------------------------------------------

    def pin(self, pfn: int, pages: int = 1) -> None:
        """A long-lived KVM pin of ``pfn`` that holds ``pages`` 4 KiB pages
        (1; a demand-v2 pin holds its whole unit through the unit's first frame).

        SPEC: a demand-v2 pin adds a pin and a reference to the unit's first frame
        only ("pin and reference counts"); the unit's other frames keep just the VMM's
        reference, so a remap frees them at once (the rule "a frame whose reference
        count drops to 0 is freed" wins over "held through it", which is read as
        counting them as pinned pages, not as keeping them alive). ``stale`` and
        ``stale_pins_peak`` count pinned frames, so one per demand-v2 unit.
        """
        self.get_ref(pfn)
        self.pins[pfn] = self.pins.get(pfn, 0) + 1
        self.pinned += pages
        self.counters["pins"] += 1
        self.counters["pinned_pages_peak"] = max(self.counters["pinned_pages_peak"], self.pinned)

    def unpin(self, gfn: int, pfn: int, pages: int = 1) -> None:
        """Drop KVM's pin on ``pfn``, pinned for ``gfn``; a stale pin ends with it."""
        if self.host_map.get(gfn) != pfn:
            self.stale -= 1
        self.pins[pfn] -= 1
        if self.pins[pfn] == 0:
            del self.pins[pfn]
        self.pinned -= pages
        self.counters["unpins"] += 1
        self.put_ref(pfn)

    def transient_pin(self) -> None:
        """demand-v2: the fault path's own pin (``hva_to_pfn``), released when the
        fault ends; it holds no frame after the fault, so only the counts change.

        SPEC: it touches neither the frame's pin/reference counts in the snapshot nor
        ``pinned`` / ``pinned_pages_peak`` (those count long-lived pins only).
        """
        self.counters["pins"] += 1
        self.counters["unpins"] += 1

    def is_held(self, pfn: int) -> bool:
        """Whether a long-lived pin holds ``pfn``.

        SPEC: only used at level 4k (prefetch) and by upfront (whose pins are per
        4 KiB page), so a frame is held iff its own pin count is nonzero; the
        "held through the first frame" of a demand-v2 unit never needs asking here
        (a demand-v2 fault always ends with its unit pinned).
        """
        return self.pins.get(pfn, 0) > 0

    # ---- guest_memfd ---------------------------------------------------------------

    def gmem_folio(self, gfn: int) -> None:
        """The guest_memfd's folio for ``gfn``: allocated (one host fault, not zeroed)
        unless it exists; the page cache holds one reference."""
        if gfn in self.gmem:
            return
        pfn = self.alloc_frame(zeroed=False)
        self.gmem[gfn] = pfn
        self.get_ref(pfn)
        self.counters["host_faults"] += 1

    def gmem_prepare(self, gfn: int) -> None:
        """A folio not yet prepared is zeroed and given to the guest: one RMPUPDATE."""
        if gfn in self.prepared:
            return
        self.prepared.add(gfn)
        self.counters["frames_zeroed"] += 1
        self.counters["rmpupdates"] += 1

    def gmem_free(self, gfn: int) -> None:
        """Free ``gfn``'s folio if it has one; a guest-owned one is given back first
        (RMPUPDATE) and flushed (one 4 KiB CLFLUSH)."""
        if gfn not in self.gmem:
            return
        pfn = self.gmem.pop(gfn)
        if gfn in self.prepared:
            self.prepared.discard(gfn)
            self.counters["rmpupdates"] += 1
            self.counters["clflush_bytes"] += PAGE_SIZE
        self.put_ref(pfn)

    def convert(self, gfn: int, npages: int, to: str) -> None:
        """The guest's request to make ``[gfn, gfn+npages)`` shared or private: one exit
        for every strategy; under gmem the attributes change (nothing at all if none
        does; else the changed ones are stored and every unit of the range unmapped),
        then to shared each folio of the range is freed, to private each of the VMM's
        shared frames of the range is dropped."""
        self.counters["psc_exits"] += 1
        if self.strategy != "gmem":
            return
        rng = range(gfn, gfn + npages)
        if to == "shared":
            changed = [g for g in rng if g in self.private]
            self.private.difference_update(changed)
        else:
            changed = [g for g in rng if g not in self.private]
            self.private.update(changed)
        if changed:
            self.counters["attr_pages"] += len(changed)
            for unit in range(gfn // self.unit_pages,
                              (gfn + npages + self.unit_pages - 1) // self.unit_pages):
                self.nested.discard(unit)
        for g in rng:
            if to == "shared":
                self.gmem_free(g)
            elif g in self.host_map:
                self.put_ref(self.host_map.pop(g))

    # ---- lifecycle ---------------------------------------------------------------

    def unit_range(self, unit: int) -> range:
        return range(unit * self.unit_pages, (unit + 1) * self.unit_pages)

    def check_limit_at_startup(self) -> None:
        """upfront and demand-v2: fail before anything else if the guest needs more
        pages than floor(limit / 4096)."""
        if self.limit_pages is not None and self.guest_pages > self.limit_pages:
            raise MemlockError

    def startup(self) -> None:
        """Register the region (upfront: populate + pin all, flush unless coherent) or
        allocate the memslot's metadata (demand, demand-v2)."""
        n = self.guest_pages
        if self.strategy == "upfront":
            self.check_limit_at_startup()  # raises: every counter stays 0
            self.counters["metadata_bytes"] += 8 * n
            for unit in range(n // self.unit_pages):
                self.populate_unit(unit)
                for gfn in self.unit_range(unit):
                    pfn = self.host_map[gfn]
                    self.region[gfn] = pfn
                    self.pin(pfn)
            if not self.sme_coherent:
                self.counters["clflush_bytes"] += PAGE_SIZE * n
        elif self.strategy == "demand":
            # RFC v1 checks no limit at all.
            self.counters["metadata_bytes"] += 16 * n
        elif self.strategy == "demand-v2":
            self.check_limit_at_startup()  # raises: every counter stays 0
            self.counters["metadata_bytes"] += 16 * n
        elif self.strategy == "gmem":
            # no limit: nothing is pinned or charged to RLIMIT_MEMLOCK
            self.counters["metadata_bytes"] += 9 * n  # the attribute xarray
            self.private = set(range(n))
            self.counters["attr_pages"] += n
            for g in range(min(self.image_pages, n)):  # SNP_LAUNCH_UPDATE: filled, no zeroing
                self.gmem_folio(g)
                self.prepared.add(g)
                self.counters["rmpupdates"] += 1
                self.counters["launch_update_pages"] += 1
            if self.prefault != "none":
                for g in range(n):
                    self.gmem_folio(g)
                    if self.prefault == "map":  # a fault without an exit
                        self.gmem_prepare(g)
                        self.nested.add(g // self.unit_pages)
        else:
            raise ValueError(f"unknown strategy {self.strategy!r}")

    def access(self, gfn: int) -> None:
        """A guest access to ``gfn``: a nested page fault if its unit is unmapped."""
        unit = gfn // self.unit_pages
        if unit in self.nested:
            return
        self.counters["npf_exits"] += 1
        if self.strategy == "gmem":
            # private pages from the guest_memfd, shared ones from the VMM's memory
            # (one host fault for the unit's new frames); no pin, no hazard, no prefetch
            shared_new = 0
            for g in self.unit_range(unit):
                if g in self.private:
                    self.gmem_folio(g)
                    self.gmem_prepare(g)
                elif g not in self.host_map:
                    pfn = self.alloc_frame()
                    self.host_map[g] = pfn
                    self.get_ref(pfn)
                    shared_new += 1
            if shared_new:
                self.counters["host_faults"] += 1
            self.nested.add(unit)
            return
        self.populate_unit(unit)
        pages = self.unit_range(unit)
        if self.strategy == "upfront":
            for g in pages:
                if not self.is_held(self.host_map[g]):
                    self.counters["unpinned_mapped_hazards"] += 1
        elif self.strategy == "demand":
            for g in pages:
                pfn = self.host_map[g]
                if g in self.bitmap and self.pfns[g] == pfn:
                    continue
                if g in self.bitmap:
                    # put_page of the old frame; v1 flushes nothing here
                    self.bitmap.discard(g)
                    self.unpin(g, self.pfns[g])
                self.bitmap.add(g)
                self.pfns[g] = pfn
                self.pin(pfn)
            # the level flush: always, whatever sme_coherent says
            self.counters["clflush_bytes"] += self.unit_pages * PAGE_SIZE
        else:  # demand-v2
            g0 = unit * self.unit_pages
            pfn = self.host_map[g0]
            self.transient_pin()
            same = g0 in self.bitmap and self.pfns[g0] == pfn
            # SPEC: step 2 ("same pfn: nothing more") is unreachable in this model: an
            # unmapped unit whose bit is set was remapped, and the old frame, still
            # pinned, is alive, so the new frame differs. It is kept as written.
            if not same:
                if g0 in self.bitmap:
                    if not self.sme_coherent:
                        self.counters["page_flushes"] += self.unit_pages
                    self.bitmap.discard(g0)
                    self.unpin(g0, self.pfns[g0], self.unit_pages)
                self.pin(pfn, self.unit_pages)
                self.bitmap.add(g0)
                self.pfns[g0] = pfn
                if not self.sme_coherent:
                    self.counters["clflush_bytes"] += self.unit_pages * PAGE_SIZE
        self.nested.add(unit)
        if self.shadow_mmu and self.unit_pages == 1:
            self.prefetch(gfn)

    def prefetch(self, gfn: int) -> None:
        """The shadow MMU's ``__direct_pte_prefetch`` after mapping 4 KiB page ``gfn``."""
        base = gfn - gfn % PTE_PREFETCH_NUM
        start = None  # first page of the current run of unmapped pages
        for g in range(base, base + PTE_PREFETCH_NUM):
            # SPEC: a page past the guest's last page has no nested mapping (it can
            # join a run); a run reaching past the memslot's end maps nothing.
            if g in self.nested or g == gfn:
                if start is None:
                    continue
                if self.prefetch_run(start, g) == 0:
                    return  # a run that maps no page ends the prefetch
                start = None
            elif start is None:
                start = g
        if start is not None:
            self.prefetch_run(start, base + PTE_PREFETCH_NUM)

    def prefetch_run(self, start: int, end: int) -> int:
        """Map ``[start, end)`` from ``start`` up to the first page the VMM has no frame
        for; a run reaching past the guest's (the memslot's) end maps nothing. Return how
        many pages were mapped."""
        mapped = 0
        if end > self.guest_pages:
            return 0
        for g in range(start, end):
            if g not in self.host_map:
                break
            self.nested.add(g)  # 4k: unit == gfn
            self.counters["prefetched_pages"] += 1
            # SPEC: never true in this model: under demand/demand-v2 a page has a VMM
            # frame only if a fault mapped it (so it is never prefetched), and under
            # upfront an unpinned frame comes from a fault too. Kept as written.
            if not self.is_held(self.host_map[g]):
                self.counters["unpinned_mapped_hazards"] += 1
            mapped += 1
        return mapped

    def remap(self, gfn: int, npages: int) -> None:
        """The VMM unmaps ``[gfn, gfn+npages)``, widened to whole units (the pages get
        frames again only when a fault populates them)."""
        first_unit = gfn // self.unit_pages
        end_unit = (gfn + npages + self.unit_pages - 1) // self.unit_pages
        for unit in range(first_unit, end_unit):
            for g in self.unit_range(unit):
                if g in self.host_map:
                    pfn = self.host_map.pop(g)
                    if self.pins.get(pfn, 0) > 0:
                        self.stale += 1
                    self.put_ref(pfn)
        for unit in range(first_unit, end_unit):
            # gmem: the notifier zaps shared mappings only; a unit of private pages stays
            if self.strategy == "gmem" and all(g in self.private for g in self.unit_range(unit)):
                continue
            self.nested.discard(unit)
        self.counters["stale_pins_peak"] = max(self.counters["stale_pins_peak"], self.stale)
        # even when nothing in the range was mapped; never for an SNP guest
        if self.notifier_flush() and self.strategy != "gmem":
            self.counters["wbinvd"] += 1

    def teardown(self) -> None:
        """VM destroy, in the kernel's order.

        KVM's metadata (page array; bitmap and pfn array) is freed with the VM, so
        the final state shows it empty. The VMM's own mapping stays.
        """
        if self.notifier_flush() and self.strategy != "gmem":
            self.counters["wbinvd"] += 1  # mmu notifier release (not for an SNP guest)
        if self.destroy_flush():
            self.counters["wbinvd"] += 1  # sev_vm_destroy
        if self.strategy == "gmem":
            for g in sorted(self.gmem):
                self.gmem_free(g)
            self.private.clear()
        elif self.strategy == "upfront":
            for g in sorted(self.region):
                pfn = self.region.pop(g)
                self.unpin(g, pfn)
        elif self.strategy == "demand":
            for g in sorted(self.bitmap):
                self.bitmap.discard(g)
                self.unpin(g, self.pfns[g])
            self.pfns.clear()
        else:  # demand-v2
            self.counters["wbinvd"] += 1  # sev_free_memslot: once per memslot
            for g in sorted(self.bitmap):
                self.bitmap.discard(g)
                self.unpin(g, self.pfns[g], self.unit_pages)
            self.pfns.clear()
        self.nested.clear()

    def finish(self) -> None:
        """End-of-run counters, computed whether or not teardown ran."""
        self.counters["pinned_pages_end"] = self.pinned
        self.counters["leaked_refs"] = (sum(self.refs.values()) - len(self.host_map)
                                        - len(self.gmem))

    def snapshot(self) -> dict:
        """The state in the shape of ``pinning.model.state.snapshot``."""
        return {
            "host_map": dict(self.host_map),
            "refs": dict(self.refs),
            "pins": dict(self.pins),
            "free": list(self.free),
            "next_pfn": self.next_pfn,
            "nested": set(self.nested),
            "pinned": self.pinned,
            "stale": self.stale,
            "region": dict(self.region),
            "bitmap": set(self.bitmap),
            "pfns": {g: p for g, p in self.pfns.items() if p},
            "gmem": dict(self.gmem),
            "private": set(self.private),
            "prepared": set(self.prepared),
        }


def run_reference(
    strategy: str,
    guest_pages: int,
    level: str,
    ops: list[Op],
    memlock_limit: int | None = None,
    teardown: bool = True,
    *,
    kernel: str = "5.17",
    sme_coherent: str = "yes",
    mmu: str = "tdp",
    image_pages: int = 0,
    prefault: str = "none",
) -> RefResult:
    """Run startup, ``ops`` and (unless ``teardown`` is False) teardown; return the result.

    ``ops`` holds ``("access", gfn, 1)``, ``("remap", gfn, npages)`` and
    ``("convert", gfn, npages, "shared" | "private")`` tuples.
    """
    live, destroyed = run_reference_both(strategy, guest_pages, level, ops, memlock_limit,
                                         kernel=kernel, sme_coherent=sme_coherent, mmu=mmu,
                                         image_pages=image_pages, prefault=prefault)
    return destroyed if teardown else live


def run_reference_both(
    strategy: str,
    guest_pages: int,
    level: str,
    ops: list[Op],
    memlock_limit: int | None = None,
    *,
    kernel: str = "5.17",
    sme_coherent: str = "yes",
    mmu: str = "tdp",
    image_pages: int = 0,
    prefault: str = "none",
) -> tuple[RefResult, RefResult]:
    """One run, seen twice: (stopped before teardown, after teardown)."""
    if prefault not in PREFAULT_NAMES or (strategy != "gmem" and (prefault != "none"
                                                                 or image_pages)):
        raise ValueError("image_pages and prefault are gmem's launch options")
    if strategy not in STRATEGY_NAMES:
        raise ValueError(f"unknown strategy {strategy!r}")
    if sme_coherent not in ("yes", "no"):
        raise ValueError(f"sme_coherent {sme_coherent!r} is not yes/no")
    if mmu not in ("tdp", "shadow"):
        raise ValueError(f"mmu {mmu!r} is not tdp/shadow")
    version = parse_kernel(kernel)
    unit = LEVEL_UNIT_PAGES[level]
    if guest_pages <= 0 or guest_pages % unit:
        raise ValueError("guest is not a whole number of units")
    limit_pages = None if memlock_limit is None else memlock_limit // PAGE_SIZE
    vm = RefVM(strategy, guest_pages, unit, limit_pages, kernel=version,
               sme_coherent=sme_coherent == "yes", shadow_mmu=mmu == "shadow",
               image_pages=image_pages, prefault=prefault)
    try:
        vm.startup()
    except MemlockError:
        # upfront / demand-v2: the VM never runs and is never destroyed.
        vm.finish()
        res = RefResult(vm.counters, "memory lock limit exceeded at startup", vm.snapshot(), 0)
        return res, res
    done = 0
    for kind, gfn, npages, *to in ops:
        if not 0 <= gfn < guest_pages or npages < 1 or (
            kind != "access" and gfn + npages > guest_pages
        ):
            raise ValueError(f"operation {kind} {gfn} {npages} outside the guest")
        if kind == "access":
            vm.access(gfn)
        elif kind == "remap":
            vm.remap(gfn, npages)
        elif kind == "convert":
            vm.convert(gfn, npages, to[0])
        else:
            raise ValueError(f"unknown operation {kind!r}")
        done += 1
    vm.finish()
    live = RefResult(dict(vm.counters), None, vm.snapshot(), done)
    vm.teardown()
    vm.finish()
    return live, RefResult(vm.counters, None, vm.snapshot(), done)


# The guest kernel's fixed boot working set (docs/model.md, "Patterns": 256 MiB).
BOOT_WORKING_SET_PAGES = 256 * 1024 * 1024 // PAGE_SIZE


def pattern_ops(pattern: str, guest_pages: int, level: str, touch_fraction: float,
                seed: int = 0) -> list[Op]:
    """The access list a ``sequential``, ``random`` or ``boot`` pattern stands for
    (the same whatever the strategy and host parameters)."""
    import numpy as np  # only to reproduce the documented shuffle

    unit = LEVEL_UNIT_PAGES[level]
    n_units = guest_pages // unit
    count = int(n_units * touch_fraction)
    if pattern == "sequential":
        units = list(range(count))
    elif pattern == "random":
        arr = np.arange(n_units, dtype=np.uint32)
        np.random.default_rng(seed).shuffle(arr)
        units = [int(u) for u in arr[:count]]
    elif pattern == "boot":
        # touch fraction ignored: the first 256 MiB (or all of a smaller guest), and
        # the memory map, the last ceil(guest_pages / 64) pages; units ascending, once.
        touched = set()
        for g in range(min(BOOT_WORKING_SET_PAGES, guest_pages)):
            touched.add(g // unit)
        memmap_pages = (guest_pages + 63) // 64
        for g in range(guest_pages - memmap_pages, guest_pages):
            touched.add(g // unit)
        units = sorted(touched)
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    return [("access", u * unit, 1) for u in units]

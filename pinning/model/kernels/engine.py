"""Numba kernels: KVM's pinning bookkeeping over plain numpy arrays.

Every kernel is a pure function of its arguments; the only state is a
:class:`pinning.model.state.State` of arrays, and a strategy's behaviour is its rule
vector (``rules``, built from its registry entry: :meth:`Strategy.rules`), whose
kernel codes (:mod:`pinning.model.strategies`) select the startup, fault and teardown
kernels below. docs/model.md is the specification.

One fault kernel (:func:`fault`) serves both the bulk engine (:func:`run`) and the
vCPU model (:mod:`pinning.model.kernels.vcpu`), so a fault has one set of rules.
"""

from __future__ import annotations

import numpy as np

from pinning.model.jit import inline_kernel, kernel, prefetch
from pinning.model.names import COUNTERS, TRACE_OPS
from pinning.model.state import FREE_TOP, NEXT_PFN, PINNED, STALE
from pinning.model.strategies import (
    FAULT_GMEM,
    FAULT_MAP,
    FAULT_PIN_PAGES,
    FAULT_PIN_UNIT,
    R_FAULT,
    R_FLUSH,
    R_IMAGE_PAGES,
    R_MEMLOCK_AT_STARTUP,
    R_MEMSLOT_WBINVD,
    R_METADATA_PER_PAGE,
    R_OLD_PAGE_FLUSH,
    R_PREFAULT,
    R_PREFETCH,
    R_REMAP_WBINVD,
    R_STARTUP,
    R_TEARDOWN,
    R_TEARDOWN_WBINVD,
    STARTUP_GMEM,
    STARTUP_PIN_REGION,
    TEARDOWN_GMEM,
    TEARDOWN_REGION,
)

# Counter indices (names.COUNTERS order).
NPF_EXITS = COUNTERS.index("npf_exits")
PREFETCHED_PAGES = COUNTERS.index("prefetched_pages")
FRAMES_ZEROED = COUNTERS.index("frames_zeroed")
HOST_FAULTS = COUNTERS.index("host_faults")
PINS = COUNTERS.index("pins")
UNPINS = COUNTERS.index("unpins")
CLFLUSH_BYTES = COUNTERS.index("clflush_bytes")
PAGE_FLUSHES = COUNTERS.index("page_flushes")
WBINVD = COUNTERS.index("wbinvd")
STALE_PINS_PEAK = COUNTERS.index("stale_pins_peak")
UNPINNED_MAPPED_HAZARDS = COUNTERS.index("unpinned_mapped_hazards")
PINNED_PAGES_PEAK = COUNTERS.index("pinned_pages_peak")
PINNED_PAGES_END = COUNTERS.index("pinned_pages_end")
METADATA_BYTES = COUNTERS.index("metadata_bytes")
LEAKED_REFS = COUNTERS.index("leaked_refs")
RMPUPDATES = COUNTERS.index("rmpupdates")
PSC_EXITS = COUNTERS.index("psc_exits")
ATTR_PAGES = COUNTERS.index("attr_pages")
LAUNCH_UPDATE_PAGES = COUNTERS.index("launch_update_pages")

# Operations the engine runs. A trace holds OP_ACCESS and OP_REMAP (names.TRACE_OPS);
# the others let one operation stand for a whole pattern or a phase.
OP_ACCESS = TRACE_OPS.index("access")  # access gfns[i]
OP_REMAP = TRACE_OPS.index("remap")  # VMM remap of [gfns[i], gfns[i] + npages[i])
OP_ACCESS_RANGE = 2  # access npages[i] units in order, the first holding gfns[i]
OP_ACCESS_UNITS = 3  # access units[gfns[i] : gfns[i] + npages[i]] in order
OP_STARTUP = 4  # the strategy's startup kernel
OP_TEARDOWN = 5  # VM destroy
OP_PSC = 6  # the guest's npages[i] coalesced page-state-change requests: userspace exits
OP_TO_SHARED = 7  # the VMM converts [gfns[i], gfns[i] + npages[i]) to shared
OP_TO_PRIVATE = 8  # ... to private

# guest_memfd flags of a gfn (State.gmem_flags).
GMEM_PRIVATE = np.uint8(1)  # its memory attribute is PRIVATE (else shared)
GMEM_PREPARED = np.uint8(2)  # its folio is up to date and assigned to the guest in the RMP
# names.PREFAULTS codes (rules[R_PREFAULT]).
PREFAULT_FALLOCATE = 1
PREFAULT_MAP = 2

# Status codes returned by kernels.
OK = 0
ERR_MEMLOCK = 1
ERR_NO_FRAME = 2

PAGE_SIZE = 4096
NO_LIMIT = -1
# How many accesses ahead a random access pattern prefetches.
PREFETCH_DISTANCE = 16

# The running values ("registers") of a run travel between kernels as one tuple, in this
# order, and live in local variables inside each kernel: counters kept in an array that
# LLVM cannot prove distinct from the big int64 arrays are reloaded and stored around
# every page (5x slower measured).
(G_NPF, G_PREFETCHED, G_ZEROED, G_HOST_FAULTS, G_PINS, G_UNPINS, G_CLFLUSH, G_PAGE_FLUSHES,
 G_WBINVD, G_STALE_PEAK, G_HAZARDS, G_PINNED_PEAK, G_METADATA, G_PINNED, G_STALE, G_NEXT_PFN,
 G_FREE_TOP, G_RMP) = range(18)
#: pages in the shadow MMU's prefetch window (PTE_PREFETCH_NUM, arch/x86/kvm/mmu/mmu.c)
PTE_PREFETCH_NUM = 8


@kernel
def load_regs(st):
    """The run's registers from the state's counters and scalars."""
    c = st.counters
    s = st.scal
    return (c[NPF_EXITS], c[PREFETCHED_PAGES], c[FRAMES_ZEROED], c[HOST_FAULTS], c[PINS],
            c[UNPINS], c[CLFLUSH_BYTES], c[PAGE_FLUSHES], c[WBINVD], c[STALE_PINS_PEAK],
            c[UNPINNED_MAPPED_HAZARDS], c[PINNED_PAGES_PEAK], c[METADATA_BYTES], s[PINNED],
            s[STALE], s[NEXT_PFN], s[FREE_TOP], c[RMPUPDATES])


@kernel
def store_regs(st, regs):
    """Write the registers back into the state's counters and scalars."""
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    c = st.counters
    s = st.scal
    c[NPF_EXITS] = npf
    c[PREFETCHED_PAGES] = prefetched
    c[FRAMES_ZEROED] = zeroed
    c[HOST_FAULTS] = host_faults
    c[PINS] = pins
    c[UNPINS] = unpins
    c[CLFLUSH_BYTES] = clflush
    c[PAGE_FLUSHES] = page_flushes
    c[WBINVD] = wbinvd
    c[STALE_PINS_PEAK] = stale_peak
    c[UNPINNED_MAPPED_HAZARDS] = hazards
    c[PINNED_PAGES_PEAK] = pinned_peak
    c[METADATA_BYTES] = metadata
    s[PINNED] = pinned
    s[STALE] = stale
    s[NEXT_PFN] = next_pfn
    s[FREE_TOP] = free_top
    c[RMPUPDATES] = rmp


# ---- bits and frames ------------------------------------------------------------------


@kernel
def test_bit(bitmap, nr):
    """``test_bit(nr, bitmap)`` over uint64 words."""
    return (bitmap[nr >> 6] >> np.uint64(nr & 63)) & np.uint64(1) != 0


@kernel
def set_bit(bitmap, nr):
    """``set_bit(nr, bitmap)`` over uint64 words."""
    bitmap[nr >> 6] |= np.uint64(1) << np.uint64(nr & 63)


@kernel
def clear_bit(bitmap, nr):
    """``clear_bit(nr, bitmap)`` over uint64 words."""
    bitmap[nr >> 6] &= ~(np.uint64(1) << np.uint64(nr & 63))


@inline_kernel
def take_frame(frame_ref, free_list, next_pfn, free_top):
    """A frame for a new folio, with one reference (last freed first, else new).

    Returns ``(pfn, next_pfn, free_top)``; pfn 0 means no frame was left.
    """
    if free_top > 0:
        free_top -= 1
        pfn = free_list[free_top]
    elif next_pfn < frame_ref.shape[0]:
        pfn = next_pfn
        next_pfn += 1
    else:
        return 0, next_pfn, free_top
    frame_ref[pfn] = 1
    return pfn, next_pfn, free_top


@kernel
def populate(host_map, frame_ref, free_list, gfn, next_pfn, free_top):
    """The VMM's frame for ``gfn``, faulting one in if absent (last freed first, else new).

    Returns ``(pfn, next_pfn, free_top, zeroed)``; pfn 0 means no frame was left.
    """
    pfn = host_map[gfn]
    if pfn != 0:
        return pfn, next_pfn, free_top, 0
    pfn, next_pfn, free_top = take_frame(frame_ref, free_list, next_pfn, free_top)
    if pfn == 0:
        return 0, next_pfn, free_top, 0
    host_map[gfn] = pfn
    return pfn, next_pfn, free_top, 1


@kernel
def pin_frame(frame_ref, frame_pin, pfn):
    """Take a long-term pin: the pin count and the reference count rise."""
    frame_pin[pfn] += 1
    frame_ref[pfn] += 1


@kernel
def put_frame(frame_ref, free_list, pfn, free_top):
    """Drop one reference; a frame nothing holds goes on the free stack. Returns ``free_top``."""
    ref = frame_ref[pfn] - 1
    frame_ref[pfn] = ref
    if ref == 0:
        free_list[free_top] = pfn
        free_top += 1
    return free_top


@kernel
def unpin_frame(frame_ref, frame_pin, free_list, pfn, free_top):
    """Drop a pin; free the frame when no reference is left. Returns ``free_top``."""
    frame_pin[pfn] -= 1
    return put_frame(frame_ref, free_list, pfn, free_top)


@kernel
def gmem_folio(st, gfn, next_pfn, free_top):
    """``kvm_gmem_get_folio``: the guest_memfd's folio of ``gfn``, allocated if absent
    (order 0, not zeroed; the page cache holds its reference).

    Returns ``(pfn, allocated, next_pfn, free_top)``; pfn 0 means no frame was left.
    """
    pfn = st.gmem[gfn]
    if pfn != 0:
        return pfn, 0, next_pfn, free_top
    pfn, next_pfn, free_top = take_frame(st.frame_ref, st.free_list, next_pfn, free_top)
    if pfn != 0:
        st.gmem[gfn] = pfn
    return pfn, 1 if pfn != 0 else 0, next_pfn, free_top


@kernel
def gmem_prepare(st, gfn):
    """``kvm_gmem_get_pfn`` after the folio: a folio not yet up to date is zeroed
    (``clear_highpage``) and made the guest's (``sev_gmem_prepare``: one RMPUPDATE).
    Returns 1 if it was (one zeroed page, one RMPUPDATE), else 0."""
    if st.gmem_flags[gfn] & GMEM_PREPARED:
        return 0
    st.gmem_flags[gfn] |= GMEM_PREPARED
    return 1


@kernel
def gmem_free(st, gfn, free_top):
    """Free ``gfn``'s folio, if any (PUNCH_HOLE, or the file's release): a folio the guest
    owned goes back to the hypervisor (``sev_gmem_invalidate``: RMPUPDATE + a 4 KiB
    CLFLUSH). Returns ``(rmpupdates, clflush bytes, free_top)``."""
    pfn = st.gmem[gfn]
    if pfn == 0:
        return 0, 0, free_top
    owned = st.gmem_flags[gfn] & GMEM_PREPARED
    st.gmem_flags[gfn] &= ~GMEM_PREPARED
    st.gmem[gfn] = 0
    free_top = put_frame(st.frame_ref, st.free_list, pfn, free_top)
    if owned:
        return 1, PAGE_SIZE, free_top
    return 0, 0, free_top


# ---- startup ----------------------------------------------------------------------------


@kernel
def startup_pin_region(st, rules, unit_pages, memlock_pages, regs):
    """Upfront (``sev_pin_memory``): register the whole guest as an encrypted region and
    pin every page, faulting each unit in as one host page; flush unless coherent.

    Checked before anything is allocated or populated: a refused VM never runs.
    """
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    guest_pages = st.host_map.shape[0]
    if memlock_pages >= 0 and guest_pages > memlock_pages:
        return ERR_MEMLOCK, regs
    status = OK
    metadata += rules[R_METADATA_PER_PAGE] * guest_pages
    for first in range(0, guest_pages, unit_pages):
        new = 0
        for gfn in range(first, first + unit_pages):
            pfn, next_pfn, free_top, z = populate(st.host_map, st.frame_ref, st.free_list,
                                                  gfn, next_pfn, free_top)
            if pfn == 0:
                status = ERR_NO_FRAME
                break
            new += z
            st.region_pages[gfn] = pfn
            pin_frame(st.frame_ref, st.frame_pin, pfn)
        if status != OK:
            break
        zeroed += new
        if new > 0:
            host_faults += 1
    pins += guest_pages
    pinned += guest_pages
    pinned_peak = max(pinned_peak, pinned)
    if rules[R_FLUSH] != 0:
        clflush += guest_pages * PAGE_SIZE
    return status, (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes,
                    wbinvd, stale_peak, hazards, pinned_peak, metadata, pinned, stale,
                    next_pfn, free_top, rmp)


@kernel
def startup_memslot(st, rules, memlock_pages, regs):
    """Demand: allocate the memslot's pinned bitmap and pfn array; nothing is pinned.

    RFC v2 checks the memory-lock limit here, at region registration; RFC v1 never does.
    """
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    guest_pages = st.host_map.shape[0]
    if rules[R_MEMLOCK_AT_STARTUP] != 0 and memlock_pages >= 0 and guest_pages > memlock_pages:
        return ERR_MEMLOCK, regs
    metadata += rules[R_METADATA_PER_PAGE] * guest_pages
    return OK, (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes,
                wbinvd, stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn,
                free_top, rmp)


@kernel
def startup_gmem(st, rules, unit_pages, regs):
    """guest_memfd launch: every gfn's attribute set PRIVATE (KVM_SET_MEMORY_ATTRIBUTES,
    one xarray entry per gfn), the image's pages allocated, filled and made the guest's
    through SNP_LAUNCH_UPDATE (``kvm_gmem_populate``: one PSP command and one RMPUPDATE
    each), then the prefault: fallocate allocates every folio (not zeroed), or
    KVM_PRE_FAULT_MEMORY runs each page's fault without a guest exit. No pin, no
    memory-lock accounting."""
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    guest_pages = st.host_map.shape[0]
    metadata += rules[R_METADATA_PER_PAGE] * guest_pages
    for gfn in range(guest_pages):
        st.gmem_flags[gfn] = GMEM_PRIVATE
    st.counters[ATTR_PAGES] += guest_pages
    status = OK
    image = min(rules[R_IMAGE_PAGES], guest_pages)
    for gfn in range(image):
        pfn, new, next_pfn, free_top = gmem_folio(st, gfn, next_pfn, free_top)
        if pfn == 0:
            status = ERR_NO_FRAME
            break
        host_faults += new
        st.gmem_flags[gfn] |= GMEM_PREPARED  # filled from the image, not zeroed
        rmp += 1
    st.counters[LAUNCH_UPDATE_PAGES] += image
    prefault = rules[R_PREFAULT]
    if status == OK and prefault != 0:
        for gfn in range(guest_pages):
            pfn, new, next_pfn, free_top = gmem_folio(st, gfn, next_pfn, free_top)
            if pfn == 0:
                status = ERR_NO_FRAME
                break
            host_faults += new
            if prefault == PREFAULT_MAP:
                done = gmem_prepare(st, gfn)
                zeroed += done
                rmp += done
                st.nested[gfn // unit_pages] = 1
    return status, (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes,
                    wbinvd, stale_peak, hazards, pinned_peak, metadata, pinned, stale,
                    next_pfn, free_top, rmp)


# ---- the nested page fault -------------------------------------------------------------


@kernel
def map_run(st, start, end):
    """The shadow MMU maps pages ``start..end-1`` of a prefetch run up to the first one the
    VMM has no frame for (``gfn_to_page_many_atomic``: a run reaching past the memslot's
    end maps nothing); (pages mapped, hazards)."""
    mapped = 0
    hazards = 0
    if end > st.host_map.shape[0]:
        return mapped, hazards
    for gfn in range(start, end):
        if st.host_map[gfn] == 0:
            break
        st.nested[gfn] = 1
        mapped += 1
        if st.frame_pin[st.host_map[gfn]] == 0:
            hazards += 1
    return mapped, hazards


@kernel
def prefetch_neighbours(st, gfn):
    """``__direct_pte_prefetch`` after a 4 KiB fault on ``gfn``: in the 8-aligned window,
    each run of unmapped pages is mapped up to the first page without a host frame; a run
    that maps nothing ends the prefetch. Returns (pages mapped, hazards among them)."""
    block = gfn - (gfn & (PTE_PREFETCH_NUM - 1))
    guest_pages = st.host_map.shape[0]
    start = -1
    total = 0
    hazards = 0
    for gfn_j in range(block, block + PTE_PREFETCH_NUM):
        present = gfn_j == gfn or (gfn_j < guest_pages and st.nested[gfn_j] != 0)
        if present:
            if start >= 0:
                mapped, h = map_run(st, start, gfn_j)
                total += mapped
                hazards += h
                if mapped == 0:
                    return total, hazards
                start = -1
        elif start < 0:
            start = gfn_j
    if start >= 0:
        mapped, h = map_run(st, start, block + PTE_PREFETCH_NUM)
        total += mapped
        hazards += h
    return total, hazards


@inline_kernel
def fault(st, rules, unit, unit_pages, regs):
    """A nested page fault on ``unit``: back every page of it, run the strategy's fault
    kernel, install the nested mapping and (shadow MMU, 4k) prefetch neighbours.

    Returns (status, regs): ``OK``, or ``ERR_NO_FRAME`` if the state has too few host
    frames (a sizing bug). No fault checks the memory-lock limit: the strategies check
    it at registration, or never (docs/model.md).
    """
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    npf += 1
    first = unit * unit_pages
    end = first + unit_pages
    status = OK
    new = 0
    kind = rules[R_FAULT]
    for gfn in range(first, end):
        if kind == FAULT_GMEM and st.gmem_flags[gfn] & GMEM_PRIVATE:
            # kvm_gmem_get_pfn: the folio (allocated at first use), zeroed and made the
            # guest's once; the VMM's own mapping is not involved.
            pfn, allocated, next_pfn, free_top = gmem_folio(st, gfn, next_pfn, free_top)
            if pfn == 0:
                status = ERR_NO_FRAME
                break
            host_faults += allocated
            done = gmem_prepare(st, gfn)
            zeroed += done
            rmp += done
            continue
        pfn, next_pfn, free_top, z = populate(st.host_map, st.frame_ref, st.free_list, gfn,
                                              next_pfn, free_top)
        if pfn == 0:
            status = ERR_NO_FRAME
            break
        new += z
    zeroed += new
    if new > 0:
        host_faults += 1
    if status == OK and kind == FAULT_PIN_PAGES:
        # RFC v1, sev_pin_spte: a reference on each 4 KiB page; a replaced one is put
        # without a flush; then the whole unit is flushed, unconditionally.
        for gfn in range(first, end):
            pfn = st.host_map[gfn]
            if test_bit(st.pinned_bitmap, gfn):
                old = st.pfns[gfn]
                if old == pfn:
                    continue
                free_top = unpin_frame(st.frame_ref, st.frame_pin, st.free_list, old,
                                       free_top)
                unpins += 1
                pinned -= 1
                stale -= 1
                clear_bit(st.pinned_bitmap, gfn)
                st.pfns[gfn] = 0
            set_bit(st.pinned_bitmap, gfn)
            st.pfns[gfn] = pfn
            pin_frame(st.frame_ref, st.frame_pin, pfn)
            pins += 1
            pinned += 1
            pinned_peak = max(pinned_peak, pinned)
        if rules[R_FLUSH] != 0:
            clflush += unit_pages * PAGE_SIZE
    elif status == OK and kind == FAULT_PIN_UNIT:
        # RFC v2: hva_to_pfn's own long-term pin, then sev_pin_pfn under slots_arch_lock.
        pfn = st.host_map[first]
        pins += 1
        if not (test_bit(st.pinned_bitmap, first) and st.pfns[first] == pfn):
            if test_bit(st.pinned_bitmap, first):
                # The VMM remapped the unit: flush the old page (VM_PAGE_FLUSH unless
                # coherent), then drop its pin.
                if rules[R_OLD_PAGE_FLUSH] != 0:
                    page_flushes += unit_pages
                free_top = unpin_frame(st.frame_ref, st.frame_pin, st.free_list,
                                       st.pfns[first], free_top)
                unpins += 1
                pinned -= unit_pages
                stale -= 1
                clear_bit(st.pinned_bitmap, first)
                st.pfns[first] = 0
            set_bit(st.pinned_bitmap, first)
            st.pfns[first] = pfn
            pin_frame(st.frame_ref, st.frame_pin, pfn)
            pins += 1
            pinned += unit_pages
            pinned_peak = max(pinned_peak, pinned)
            if rules[R_FLUSH] != 0:
                clflush += unit_pages * PAGE_SIZE
        unpins += 1  # kvm_release_pfn_clean: the fault path's own pin
    elif status == OK and kind == FAULT_MAP:
        for gfn in range(first, end):
            if st.frame_pin[st.host_map[gfn]] == 0:
                hazards += 1
    # guest_memfd: private memory is never pinned and needs no pin; shared memory is
    # not encrypted, so an unpinned shared page is no hazard.
    if status == OK:
        st.nested[unit] = 1
        if rules[R_PREFETCH] != 0:
            more, h = prefetch_neighbours(st, first)
            prefetched += more
            hazards += h
    return status, (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes,
                    wbinvd, stale_peak, hazards, pinned_peak, metadata, pinned, stale,
                    next_pfn, free_top, rmp)


@inline_kernel
def prefetch_ahead(st, rules, units, i, end, unit_pages):
    """Fetch the lines a random access stream ``units[..end)`` will need a few accesses
    after position ``i``: a fault storm over a large guest is bound by cache misses.

    Two steps: the gfn-indexed arrays of the access 2 x PREFETCH_DISTANCE ahead, and the
    frame its gfn maps to (by then in cache) for the access PREFETCH_DISTANCE ahead --
    the hazard check of a fault that pins nothing reads that frame's pin count.
    """
    far = i + 2 * PREFETCH_DISTANCE
    if far < end:
        unit = np.int64(units[far])
        prefetch(st.nested, unit)
        prefetch(st.host_map, unit * unit_pages)
        if rules[R_FAULT] == FAULT_GMEM:
            prefetch(st.gmem_flags, unit * unit_pages)
            prefetch(st.gmem, unit * unit_pages)
        elif rules[R_FAULT] != FAULT_MAP:
            prefetch(st.pfns, unit * unit_pages)
            prefetch(st.pinned_bitmap, (unit * unit_pages) >> 6)
    near = i + PREFETCH_DISTANCE
    if near < end and rules[R_FAULT] == FAULT_MAP:
        pfn = st.host_map[np.int64(units[near]) * unit_pages]
        if pfn != 0:
            prefetch(st.frame_pin, pfn)


# ---- remap and teardown ----------------------------------------------------------------


@kernel
def remap(st, rules, unit_pages, gfn0, npages, regs):
    """The VMM unmaps and maps again ``[gfn0, gfn0 + npages)``, widened to whole units."""
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    first_unit = gfn0 // unit_pages
    end_unit = (gfn0 + npages + unit_pages - 1) // unit_pages
    for gfn in range(first_unit * unit_pages, end_unit * unit_pages):
        pfn = st.host_map[gfn]
        if pfn == 0:
            continue
        st.host_map[gfn] = 0
        if st.frame_pin[pfn] > 0:
            stale += 1
            stale_peak = max(stale_peak, stale)
        free_top = put_frame(st.frame_ref, st.free_list, pfn, free_top)
    gmem = rules[R_FAULT] == FAULT_GMEM
    for unit in range(first_unit, end_unit):
        # An hva-based invalidation zaps shared mappings only (KVM_FILTER_SHARED):
        # guest_memfd's private memory is not the VMM's mapping.
        if gmem and not unit_has_shared(st, unit, unit_pages):
            continue
        st.nested[unit] = 0
    # From 5.18 KVM writes back all caches on every invalidation of an SEV guest's memory
    # that overlaps a memslot (sev_guest_memory_reclaimed; never for an SNP guest).
    wbinvd += rules[R_REMAP_WBINVD]
    return (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
            stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp)


@kernel
def unit_has_shared(st, unit, unit_pages):
    """Whether any page of ``unit`` has the shared attribute (guest_memfd)."""
    for gfn in range(unit * unit_pages, (unit + 1) * unit_pages):
        if st.gmem_flags[gfn] & GMEM_PRIVATE == 0:
            return True
    return False


@kernel
def convert(st, rules, unit_pages, gfn0, npages, to_private, regs):
    """The VMM converts ``[gfn0, gfn0 + npages)`` to private or shared after the guest's
    request (KVM_HC_MAP_GPA_RANGE: the exit itself is OP_PSC).

    Only a guest_memfd strategy's memory changes; under the pinning strategies the
    encryption is the guest's page-table bit and KVM keeps the memory as it is.
    guest_memfd, as QEMU's ``kvm_convert_memory`` does it: KVM_SET_MEMORY_ATTRIBUTES
    (``kvm_vm_set_mem_attributes``: nothing if every gfn has the attribute already; else
    one store per changed gfn and a zap of the range's mappings), then the discard of the
    side no longer used: to shared, PUNCH_HOLE on the guest_memfd (each folio freed,
    ``sev_gmem_invalidate``: RMPUPDATE + 4 KiB CLFLUSH if the guest owned it); to
    private, the VMM's shared pages dropped (no WBINVD for SNP).
    """
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    if rules[R_FAULT] != FAULT_GMEM:
        return regs
    changed = 0
    for gfn in range(gfn0, gfn0 + npages):
        private = st.gmem_flags[gfn] & GMEM_PRIVATE != 0
        if private != to_private:
            changed += 1
            st.gmem_flags[gfn] ^= GMEM_PRIVATE
    if changed > 0:
        st.counters[ATTR_PAGES] += changed
        for unit in range(gfn0 // unit_pages, (gfn0 + npages + unit_pages - 1) // unit_pages):
            st.nested[unit] = 0
    for gfn in range(gfn0, gfn0 + npages):
        if to_private:
            pfn = st.host_map[gfn]
            if pfn != 0:
                st.host_map[gfn] = 0
                free_top = put_frame(st.frame_ref, st.free_list, pfn, free_top)
        else:
            r, flushed, free_top = gmem_free(st, gfn, free_top)
            rmp += r
            clflush += flushed
    return (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
            stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp)


@kernel
def teardown(st, rules, unit_pages, regs):
    """VM destroy: the notifier's release and sev_vm_destroy write back the caches (by
    kernel version), every pin KVM holds is dropped (page array, or bitmap walk after the
    memslot's own flush), all nested mappings go."""
    (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
     stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp) = regs
    wbinvd += rules[R_TEARDOWN_WBINVD]
    if rules[R_TEARDOWN] == TEARDOWN_GMEM:
        # The attribute xarray goes with the VM; the guest_memfd's release frees every
        # folio (truncate -> kvm_gmem_free_folio -> sev_gmem_invalidate).
        for gfn in range(st.gmem.shape[0]):
            r, flushed, free_top = gmem_free(st, gfn, free_top)
            rmp += r
            clflush += flushed
            st.gmem_flags[gfn] = 0
    elif rules[R_TEARDOWN] == TEARDOWN_REGION:
        region = st.region_pages
        for gfn in range(region.shape[0]):
            pfn = region[gfn]
            if pfn == 0:
                continue
            if st.host_map[gfn] != pfn:
                stale -= 1
            free_top = unpin_frame(st.frame_ref, st.frame_pin, st.free_list, pfn, free_top)
            unpins += 1
            pinned -= 1
            region[gfn] = 0
    else:
        wbinvd += rules[R_MEMSLOT_WBINVD]
        held = unit_pages if rules[R_FAULT] == FAULT_PIN_UNIT else 1
        bitmap = st.pinned_bitmap
        for word in range(bitmap.shape[0]):
            if bitmap[word] == 0:
                continue
            for gfn in range(word * 64, word * 64 + 64):
                if not test_bit(bitmap, gfn):
                    continue
                pfn = st.pfns[gfn]
                if st.host_map[gfn] != pfn:
                    stale -= 1
                free_top = unpin_frame(st.frame_ref, st.frame_pin, st.free_list, pfn, free_top)
                unpins += 1
                pinned -= held
                st.pfns[gfn] = 0
            bitmap[word] = 0
    for unit in range(st.nested.shape[0]):
        st.nested[unit] = 0
    return (npf, prefetched, zeroed, host_faults, pins, unpins, clflush, page_flushes, wbinvd,
            stale_peak, hazards, pinned_peak, metadata, pinned, stale, next_pfn, free_top, rmp)


# ---- the engine ---------------------------------------------------------------------


@kernel
def run(st, rules, unit_pages, memlock_pages, ops, gfns, npages, units):
    """Run operations on the state; returns ``(status, op index, position within the op)``.

    On success the op index is ``len(ops)``; on an error it is the failing
    operation, and the position is the failing access within it.
    """
    regs = load_regs(st)
    status = OK
    i = 0
    k = 0
    while i < ops.shape[0] and status == OK:
        op = ops[i]
        if op == OP_STARTUP:
            if rules[R_STARTUP] == STARTUP_PIN_REGION:
                status, regs = startup_pin_region(st, rules, unit_pages, memlock_pages, regs)
            elif rules[R_STARTUP] == STARTUP_GMEM:
                status, regs = startup_gmem(st, rules, unit_pages, regs)
            else:
                status, regs = startup_memslot(st, rules, memlock_pages, regs)
            if status != OK:
                break
        elif op == OP_TEARDOWN:
            regs = teardown(st, rules, unit_pages, regs)
        elif op == OP_REMAP:
            regs = remap(st, rules, unit_pages, gfns[i], npages[i], regs)
        elif op == OP_PSC:
            st.counters[PSC_EXITS] += npages[i]
        elif op == OP_TO_SHARED or op == OP_TO_PRIVATE:
            regs = convert(st, rules, unit_pages, gfns[i], npages[i], op == OP_TO_PRIVATE,
                           regs)
        else:
            count = 1 if op == OP_ACCESS else npages[i]
            for k in range(count):
                if op == OP_ACCESS:
                    unit = gfns[i] // unit_pages
                elif op == OP_ACCESS_RANGE:
                    unit = gfns[i] // unit_pages + k
                else:
                    unit = np.int64(units[gfns[i] + k])
                    prefetch_ahead(st, rules, units, gfns[i] + k, gfns[i] + count, unit_pages)
                if st.nested[unit] != 0:
                    continue
                status, regs = fault(st, rules, unit, unit_pages, regs)
                if status != OK:
                    break
            if status != OK:
                break
        i += 1
    store_regs(st, regs)
    return status, i, k


@kernel
def finish(st):
    """Fill the end-of-run counters: pages still pinned and references leaked."""
    st.counters[PINNED_PAGES_END] = st.scal[PINNED]
    refs = 0
    for pfn in range(st.frame_ref.shape[0]):
        refs += st.frame_ref[pfn]
    mapped = 0
    for gfn in range(st.host_map.shape[0]):
        if st.host_map[gfn] != 0:
            mapped += 1
    for gfn in range(st.gmem.shape[0]):  # the guest_memfd's page cache holds its folios
        if st.gmem[gfn] != 0:
            mapped += 1
    st.counters[LEAKED_REFS] = refs - mapped
    return OK

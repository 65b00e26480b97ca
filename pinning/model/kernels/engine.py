"""Numba kernels: KVM's pinning bookkeeping over plain numpy arrays.

Every kernel is a pure function of its arguments; the only state is the
``state`` tuple of arrays built by :func:`pinning.model.state.new_state`::

    (counters, scal, host_map, frame_ref, frame_pin, free_list, nested,
     region_pages, pinned_bitmap, pfns)

* ``counters`` int64[N_COUNTERS] -- the DESIGN §1a counters (indices below).
* ``scal`` int64[N_SCALARS] -- running values: pages pinned now, stale pins
  now, next never-used pfn, depth of the free stack.
* ``host_map`` int64[guest_pages] -- the VMM's mapping gfn -> pfn (0 = none).
* ``frame_ref`` / ``frame_pin`` int32[capacity + 1] -- references held on each
  host frame (VMM mapping + pins) and pins among them. pfn 0 is never
  allocated: like the RFC's ``WARN_ON(!pfns[i])`` it means "no frame".
* ``free_list`` int64[capacity] -- freed frames, reused last-freed-first.
* ``nested`` uint8[guest_pages / unit_pages] -- 1 where KVM has a nested
  mapping for the unit.
* ``region_pages`` int64[guest_pages] -- upfront only: the registered region's
  page array (pinned pfn per page); size 0 under demand.
* ``pinned_bitmap`` uint64[ceil(guest_pages / 64)] and ``pfns``
  int64[guest_pages] -- demand only: the memslot's pinned bitmap and pfn
  array; size 0 under upfront.
"""

from __future__ import annotations

import numpy as np

from pinning.model.jit import kernel, prefetch

# Counter indices; the names are DESIGN §1a's.
NPF_EXITS = 0
FRAMES_ZEROED = 1
PINS = 2
UNPINS = 3
CLFLUSH_BYTES = 4
PAGE_FLUSHES = 5
WBINVD = 6
STALE_PINS_PEAK = 7
UNPINNED_MAPPED_HAZARDS = 8
PINNED_PAGES_PEAK = 9
PINNED_PAGES_END = 10
METADATA_BYTES = 11
LEAKED_REFS = 12
N_COUNTERS = 13

COUNTER_NAMES = (
    "npf_exits",
    "frames_zeroed",
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
)

# Indices into ``scal``.
PINNED = 0
STALE = 1
NEXT_PFN = 2
FREE_TOP = 3
N_SCALARS = 4

# Strategies.
UPFRONT = 0
DEMAND = 1

# Operations the engine runs. A trace holds OP_ACCESS and OP_REMAP; the
# others let one operation stand for a whole pattern or a phase.
OP_ACCESS = 0  # access gfns[i]
OP_REMAP = 1  # VMM remap of [gfns[i], gfns[i] + npages[i])
OP_ACCESS_RANGE = 2  # access npages[i] units in order, the first holding gfns[i]
OP_ACCESS_UNITS = 3  # access units[gfns[i] : gfns[i] + npages[i]] in order
OP_STARTUP = 4  # register the region (upfront) or account the memslot metadata (demand)
OP_TEARDOWN = 5  # VM destroy

# Status codes returned by kernels.
OK = 0
ERR_MEMLOCK = 1
ERR_NO_FRAME = 2

PAGE_SIZE = 4096
NO_LIMIT = -1
# How many accesses ahead a random access pattern prefetches.
PREFETCH_DISTANCE = 16


# The helpers below return the running values they change instead of writing
# them to an array: the engine keeps counters in local variables, because
# counters in an array that LLVM cannot prove distinct from the big int64
# arrays are reloaded and stored around every page (5x slower measured).


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


@kernel
def populate(host_map, frame_ref, free_list, gfn, next_pfn, free_top):
    """The VMM's frame for ``gfn``, faulting one in if absent (last freed first, else new).

    Returns ``(pfn, next_pfn, free_top, zeroed)``; pfn 0 means no frame was left.
    """
    pfn = host_map[gfn]
    if pfn != 0:
        return pfn, next_pfn, free_top, 0
    if free_top > 0:
        free_top -= 1
        pfn = free_list[free_top]
    elif next_pfn < frame_ref.shape[0]:
        pfn = next_pfn
        next_pfn += 1
    else:
        return 0, next_pfn, free_top, 0
    frame_ref[pfn] = 1
    host_map[gfn] = pfn
    return pfn, next_pfn, free_top, 1


@kernel
def pin_frame(frame_ref, frame_pin, pfn):
    """Take a long-term pin: the pin count and the reference count rise."""
    frame_pin[pfn] += 1
    frame_ref[pfn] += 1


@kernel
def unpin_frame(frame_ref, frame_pin, free_list, pfn, free_top):
    """Drop a pin; free the frame when no reference is left. Returns ``free_top``."""
    frame_pin[pfn] -= 1
    return put_frame(frame_ref, free_list, pfn, free_top)


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
def run(state, strategy, unit_pages, memlock_pages, ops, gfns, npages, units):
    """Run operations on the state; returns ``(status, op index, position within the op)``.

    On success the op index is ``len(ops)``; on an error it is the failing
    operation, and the position is the failing access within it.
    """
    (counters, scal, host_map, frame_ref, frame_pin, free_list, nested,
     region_pages, pinned_bitmap, pfns) = state
    npf_exits = counters[NPF_EXITS]
    frames_zeroed = counters[FRAMES_ZEROED]
    pins = counters[PINS]
    unpins = counters[UNPINS]
    clflush_bytes = counters[CLFLUSH_BYTES]
    page_flushes = counters[PAGE_FLUSHES]
    wbinvd = counters[WBINVD]
    stale_pins_peak = counters[STALE_PINS_PEAK]
    hazards = counters[UNPINNED_MAPPED_HAZARDS]
    pinned_pages_peak = counters[PINNED_PAGES_PEAK]
    metadata_bytes = counters[METADATA_BYTES]
    pinned = scal[PINNED]
    stale = scal[STALE]
    next_pfn = scal[NEXT_PFN]
    free_top = scal[FREE_TOP]

    guest_pages = host_map.shape[0]
    unit_bytes = unit_pages * PAGE_SIZE
    status = OK
    i = 0
    k = 0
    while i < ops.shape[0] and status == OK:
        op = ops[i]
        if op == OP_STARTUP and strategy == UPFRONT:
            # Checked before anything is allocated or populated: a refused VM never runs.
            if memlock_pages >= 0 and guest_pages > memlock_pages:
                status = ERR_MEMLOCK
                break
            metadata_bytes += 8 * guest_pages
            for gfn in range(guest_pages):
                pfn, next_pfn, free_top, z = populate(host_map, frame_ref, free_list, gfn,
                                                      next_pfn, free_top)
                if pfn == 0:
                    status = ERR_NO_FRAME
                    break
                frames_zeroed += z
                region_pages[gfn] = pfn
                pin_frame(frame_ref, frame_pin, pfn)
            pins += guest_pages
            pinned += guest_pages
            pinned_pages_peak = max(pinned_pages_peak, pinned)
            clflush_bytes += guest_pages * PAGE_SIZE
        elif op == OP_STARTUP:
            metadata_bytes += 8 * pfns.shape[0] + 8 * pinned_bitmap.shape[0]
        elif op == OP_TEARDOWN:
            wbinvd += 1
            if strategy == UPFRONT:
                for gfn in range(region_pages.shape[0]):
                    pfn = region_pages[gfn]
                    if pfn == 0:
                        continue
                    if host_map[gfn] != pfn:
                        stale -= 1
                    free_top = unpin_frame(frame_ref, frame_pin, free_list, pfn, free_top)
                    unpins += 1
                    pinned -= 1
                    region_pages[gfn] = 0
            else:
                for word in range(pinned_bitmap.shape[0]):
                    if pinned_bitmap[word] == 0:
                        continue
                    for gfn in range(word * 64, word * 64 + 64):
                        if not test_bit(pinned_bitmap, gfn):
                            continue
                        pfn = pfns[gfn]
                        if host_map[gfn] != pfn:
                            stale -= 1
                        free_top = unpin_frame(frame_ref, frame_pin, free_list, pfn, free_top)
                        unpins += 1
                        pinned -= 1
                        pfns[gfn] = 0
                    pinned_bitmap[word] = 0
            for unit in range(nested.shape[0]):
                nested[unit] = 0
        elif op == OP_REMAP:
            first_unit = gfns[i] // unit_pages
            end_unit = (gfns[i] + npages[i] + unit_pages - 1) // unit_pages
            for gfn in range(first_unit * unit_pages, end_unit * unit_pages):
                pfn = host_map[gfn]
                if pfn == 0:
                    continue
                host_map[gfn] = 0
                if frame_pin[pfn] > 0:
                    stale += 1
                    stale_pins_peak = max(stale_pins_peak, stale)
                free_top = put_frame(frame_ref, free_list, pfn, free_top)
            for unit in range(first_unit, end_unit):
                nested[unit] = 0
            if strategy == UPFRONT:
                # Upstream KVM flushes all caches on every invalidation of SEV guest memory.
                wbinvd += 1
        else:
            count = 1 if op == OP_ACCESS else npages[i]
            for k in range(count):
                if op == OP_ACCESS:
                    unit = gfns[i] // unit_pages
                elif op == OP_ACCESS_RANGE:
                    unit = gfns[i] // unit_pages + k
                else:
                    unit = np.int64(units[gfns[i] + k])
                    if k + PREFETCH_DISTANCE < count:
                        ahead = np.int64(units[gfns[i] + k + PREFETCH_DISTANCE])
                        prefetch(nested, ahead)
                        prefetch(host_map, ahead * unit_pages)
                        if strategy == DEMAND:
                            prefetch(pfns, ahead * unit_pages)
                            prefetch(pinned_bitmap, (ahead * unit_pages) >> 6)
                if nested[unit] != 0:
                    continue
                # Nested page fault: back the whole unit, then (demand) pin it.
                npf_exits += 1
                first = unit * unit_pages
                end = first + unit_pages
                for gfn in range(first, end):
                    pfn, next_pfn, free_top, z = populate(host_map, frame_ref, free_list, gfn,
                                                          next_pfn, free_top)
                    if pfn == 0:
                        status = ERR_NO_FRAME
                        break
                    frames_zeroed += z
                if status != OK:
                    break
                if strategy == DEMAND:
                    for gfn in range(first, end):
                        pfn = host_map[gfn]
                        if test_bit(pinned_bitmap, gfn):
                            old = pfns[gfn]
                            if old == pfn:
                                continue
                            # The VMM remapped this gfn: VM_PAGE_FLUSH the old page
                            # before dropping its pin (the review's point).
                            page_flushes += 1
                            free_top = unpin_frame(frame_ref, frame_pin, free_list, old,
                                                   free_top)
                            unpins += 1
                            pinned -= 1
                            stale -= 1
                            clear_bit(pinned_bitmap, gfn)
                            pfns[gfn] = 0
                        if memlock_pages >= 0 and pinned >= memlock_pages:
                            status = ERR_MEMLOCK
                            break
                        set_bit(pinned_bitmap, gfn)
                        pfns[gfn] = pfn
                        pin_frame(frame_ref, frame_pin, pfn)
                        pins += 1
                        pinned += 1
                        pinned_pages_peak = max(pinned_pages_peak, pinned)
                    if status != OK:
                        break
                    clflush_bytes += unit_bytes
                else:
                    for gfn in range(first, end):
                        if frame_pin[host_map[gfn]] == 0:
                            hazards += 1
                nested[unit] = 1
            if status != OK:
                break
        i += 1

    counters[NPF_EXITS] = npf_exits
    counters[FRAMES_ZEROED] = frames_zeroed
    counters[PINS] = pins
    counters[UNPINS] = unpins
    counters[CLFLUSH_BYTES] = clflush_bytes
    counters[PAGE_FLUSHES] = page_flushes
    counters[WBINVD] = wbinvd
    counters[STALE_PINS_PEAK] = stale_pins_peak
    counters[UNPINNED_MAPPED_HAZARDS] = hazards
    counters[PINNED_PAGES_PEAK] = pinned_pages_peak
    counters[METADATA_BYTES] = metadata_bytes
    scal[PINNED] = pinned
    scal[STALE] = stale
    scal[NEXT_PFN] = next_pfn
    scal[FREE_TOP] = free_top
    return status, i, k


@kernel
def finish(state):
    """Fill the end-of-run counters: pages still pinned and references leaked."""
    counters, scal, host_map, frame_ref, _, _, _, _, _, _ = state
    counters[PINNED_PAGES_END] = scal[PINNED]
    refs = 0
    for pfn in range(frame_ref.shape[0]):
        refs += frame_ref[pfn]
    mapped = 0
    for gfn in range(host_map.shape[0]):
        if host_map[gfn] != 0:
            mapped += 1
    counters[LEAKED_REFS] = refs - mapped
    return OK

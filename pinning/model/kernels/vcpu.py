"""Numba kernel of the vCPU model: V vCPUs faulting concurrently, one per-VM pinning lock.

A deterministic discrete-event simulation over one :class:`pinning.model.workloads.Phase`.
Each vCPU has a clock (ns). The vCPU with the smallest clock that still has
accesses goes next (ties: the lowest index); a fault runs the engine's own fault
kernel (:func:`pinning.model.kernels.engine.fault`), so the bookkeeping is exactly
the engine's, and the counter deltas price it:

* no fault: ``guest_touch_ns``, in parallel with every other vCPU;
* a fault: ``npf_exit_ns + zero_frame_ns * frames zeroed`` in parallel, then
  (strategies whose fault pins under the per-VM lock: ``Strategy.fault_lock``) the
  section under the lock: wait until the lock is free, hold it for ``lock_hold_ns +
  pin_ns * pins + unpin_ns * unpins + page_flush_ns * page flushes + clflush_page_ns *
  flushed bytes / 4096``. Upfront faults pin nothing and take no lock.

Approximations: an access's bookkeeping is applied when its vCPU starts it,
so a second vCPU touching the same unit slightly later sees it mapped; and
vCPUs take the lock in the order they start their faults, which equals the
order they reach it whenever every fault's parallel part is the same length.

The kernel only writes into arrays the caller preallocated (see
:func:`pinning.model.vcpu.run_workload`).
"""

from __future__ import annotations

import math

import numpy as np

from pinning.model.jit import kernel
from pinning.model.kernels import engine as K

# Indices into ``prices`` (ns; the wrapper builds it from a CostProfile).
P_TOUCH = 0
P_NPF = 1
P_ZERO = 2
P_LOCK = 3
P_PIN = 4
P_UNPIN = 5
P_PAGE_FLUSH = 6
P_CLFLUSH_BYTE = 7  # clflush_page_ns / 4096
N_PRICES = 8

# Indices into ``acc`` (int64), running totals over the whole workload.
A_FAULTS = 0
A_ACCESSES = 1
A_POINTS = 2  # timeline rows written
A_EVERY = 3  # record every A_EVERY-th fault in the timeline (set by the wrapper)
A_LAST_PINNED = 4  # pages pinned just after the latest fault
A_UNTIL = 5  # faults left before the next timeline row (0: the next fault is recorded)
N_ACC = 6

# Indices into ``facc`` (float64), running values over the whole workload.
F_LOCK_FREE = 0  # when the per-VM lock is next free
F_LOCK_WAIT = 1
F_LOCK_HOLD = 2
F_LAST_T = 3  # timeline time of the latest fault
N_FACC = 4


@kernel
def latency_bin(latency, bin_edges, bins_per_decade):
    """Histogram bin of ``latency``: log-spaced edges; out-of-range values go to the end bins."""
    nbins = bin_edges.shape[0] - 1
    if latency <= bin_edges[0]:
        return 0
    b = int(math.log10(latency / bin_edges[0]) * bins_per_decade)
    if b >= nbins:
        return nbins - 1
    # log10 may round across an edge; the edges themselves decide.
    while b > 0 and latency < bin_edges[b]:
        b -= 1
    while b < nbins - 1 and latency >= bin_edges[b + 1]:
        b += 1
    return b


@kernel
def run_phase(st, rules, unit_pages, memlock_pages, units, bounds, prices, clocks, pos,
              hist, bin_edges, bins_per_decade, timeline, acc, facc):
    """Run one phase's accesses on V vCPUs; returns the engine's status (``K.OK`` if all ran).

    vCPU ``v`` performs ``units[bounds[v]:bounds[v + 1]]`` in order. ``clocks``
    (float64[V]) carry each vCPU's time in and out; ``pos`` (int64[V]) is
    scratch. ``hist`` counts fault latencies into the bins of ``bin_edges``.
    ``timeline`` (float64[cap, 2]) receives (time, pages pinned) after every
    ``acc[A_EVERY]``-th fault, counting faults over the whole workload; its
    time is when the fault's pins take effect: the lock release (locked faults),
    the fault's start (others, whose faults pin nothing). ``acc``/``facc`` hold
    the running totals.
    """
    nested = st.nested
    nv = bounds.shape[0] - 1
    for v in range(nv):
        pos[v] = bounds[v]

    touch_ns = prices[P_TOUCH]
    npf_ns = prices[P_NPF]
    zero_ns = prices[P_ZERO]
    lock_ns = prices[P_LOCK]
    pin_ns = prices[P_PIN]
    unpin_ns = prices[P_UNPIN]
    page_flush_ns = prices[P_PAGE_FLUSH]
    clflush_byte_ns = prices[P_CLFLUSH_BYTE]
    locked = rules[K.R_FAULT_LOCK] != 0

    faults = acc[A_FAULTS]
    accesses = acc[A_ACCESSES]
    points = acc[A_POINTS]
    every = acc[A_EVERY]
    until = acc[A_UNTIL]
    last_pinned = acc[A_LAST_PINNED]
    lock_free = facc[F_LOCK_FREE]
    lock_wait = facc[F_LOCK_WAIT]
    lock_hold = facc[F_LOCK_HOLD]
    last_t = facc[F_LAST_T]
    # The last row is kept for the wrapper's final point.
    cap = timeline.shape[0] - 1

    regs = K.load_regs(st)
    last_latency = -1.0
    last_bin = 0
    status = K.OK
    while True:
        # V <= 64: a linear scan beats a heap here.
        v = -1
        t = 0.0
        for w in range(nv):
            if pos[w] < bounds[w + 1] and (v < 0 or clocks[w] < t):
                v = w
                t = clocks[w]
        if v < 0:
            break
        i = pos[v]
        pos[v] = i + 1
        unit = np.int64(units[i])
        # Each vCPU's own stream is fetched ahead, as the engine's.
        K.prefetch_ahead(st, rules, units, i, bounds[v + 1], unit_pages)
        accesses += 1
        if nested[unit] != 0:
            clocks[v] = t + touch_ns
            continue

        before = regs
        status, regs = K.fault(st, rules, unit, unit_pages, memlock_pages, regs)
        faults += 1
        end = t + npf_ns + zero_ns * (regs[K.G_ZEROED] - before[K.G_ZEROED])
        t_point = t
        if locked:
            wait = lock_free - end
            if wait < 0.0:
                wait = 0.0
            held = (lock_ns
                    + pin_ns * (regs[K.G_PINS] - before[K.G_PINS])
                    + unpin_ns * (regs[K.G_UNPINS] - before[K.G_UNPINS])
                    + page_flush_ns * (regs[K.G_PAGE_FLUSHES] - before[K.G_PAGE_FLUSHES])
                    + clflush_byte_ns * (regs[K.G_CLFLUSH] - before[K.G_CLFLUSH]))
            end += wait + held
            lock_free = end
            lock_wait += wait
            lock_hold += held
            t_point = end
        clocks[v] = end
        latency = end - t
        # Latencies repeat (every uncontended fault of a kind costs the same):
        # skip the log10 then.
        if latency != last_latency:
            last_latency = latency
            last_bin = latency_bin(latency, bin_edges, bins_per_decade)
        hist[last_bin] += 1
        last_t = t_point
        last_pinned = regs[K.G_PINNED]
        # A countdown, not (faults - 1) % every: an integer division per fault costs
        # more than the rest of a hit's bookkeeping.
        if until == 0:
            until = every - 1
            if points < cap:
                timeline[points, 0] = t_point
                timeline[points, 1] = last_pinned
                points += 1
        else:
            until -= 1
        if status != K.OK:
            break

    K.store_regs(st, regs)
    acc[A_FAULTS] = faults
    acc[A_ACCESSES] = accesses
    acc[A_POINTS] = points
    acc[A_UNTIL] = until
    acc[A_LAST_PINNED] = last_pinned
    facc[F_LOCK_FREE] = lock_free
    facc[F_LOCK_WAIT] = lock_wait
    facc[F_LOCK_HOLD] = lock_hold
    facc[F_LAST_T] = last_t
    return status

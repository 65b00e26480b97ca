"""Numba kernel of the vCPU model: V vCPUs faulting concurrently, the locks they queue on.

A discrete-event simulation over one :class:`pinning.model.workloads.Phase`. Each vCPU
has a clock (ns). The vCPU with the smallest clock that still has accesses goes next
(ties: the lowest index); a fault runs the engine's own fault kernel
(:func:`pinning.model.kernels.engine.fault`), so the bookkeeping is exactly the
engine's, and the counter deltas price it (docs/model.md, "Cost model"):

* no fault: ``guest_touch_ns``, in parallel with every other vCPU;
* a fault: a part in parallel with the other vCPUs (the exit, the host fault and
  zeroing, prefetched neighbours, a guest_memfd folio's RMPUPDATE, pin work done without
  a lock), then the sections
  under locks, each waiting until its lock is free: ``kvm->slots_arch_lock`` for RFC
  v2's pinning, ``mmu_lock`` (write) for every fault under the shadow MMU (with RFC
  v1's pinning inside it). Under the TDP MMU the fault holds ``mmu_lock`` for read and
  queues on nothing.

Each fault's parallel part and each lock hold are multiplied by a gamma draw of mean 1
and coefficient of variation ``fault_cv`` / ``lock_cv`` (0: deterministic), from the
caller's seeded numpy Generator: the locks then queue below saturation as real locks do
(tests/test_queueing.py checks them against the machine-repairman model).

Events are taken in time order: a vCPU's access, or its arrival at a lock, which it
gets first come, first served. Approximation: an access's bookkeeping is applied when
its vCPU starts it, so a second vCPU touching the same unit slightly later sees it
mapped.

The kernel only writes into arrays the caller preallocated (see
:func:`pinning.model.vcpu.run_workload`).
"""

from __future__ import annotations

import math

import numpy as np

from pinning.model.jit import inline_kernel, kernel
from pinning.model.kernels import engine as K
from pinning.model.strategies import R_MMU_LOCK, R_PIN_LOCK, R_PIN_UNDER_MMU, R_TRANSIENT_PIN

# Indices into ``prices`` (ns; the wrapper builds it from a CostProfile).
P_TOUCH = 0
P_NPF = 1
P_HOST_FAULT = 2
P_ZERO_PAGE = 3  # zero_byte_ns * 4096: zeroing one 4 KiB frame
P_LOCK = 4
P_PIN = 5
P_UNPIN = 6
P_PAGE_FLUSH = 7
P_CLFLUSH_BYTE = 8  # clflush_page_ns / 4096
P_PREFETCH = 9  # spte_prefetch_ns: one page mapped by the shadow MMU's prefetch
P_FAULT_CV = 10
P_LOCK_CV = 11
P_RMPUPDATE = 12  # rmpupdate_ns: a guest_memfd folio made the guest's at its first fault
N_PRICES = 13

# Indices into ``acc`` (int64), running totals over the whole workload.
A_FAULTS = 0
A_ACCESSES = 1
A_POINTS = 2  # timeline rows written
A_EVERY = 3  # record every A_EVERY-th fault in the timeline (set by the wrapper)
A_LAST_PINNED = 4  # pages pinned once the latest finished fault's pins took effect
A_UNTIL = 5  # faults left before the next timeline row (0: the next fault is recorded)
N_ACC = 6

# Indices into ``facc`` (float64), running values over the whole workload.
F_PIN_LOCK_FREE = 0  # when slots_arch_lock is next free
F_MMU_LOCK_FREE = 1  # when mmu_lock (write) is next free
F_LOCK_WAIT = 2  # summed over vCPUs and locks
F_LOCK_HOLD = 3
F_LAST_T = 4  # timeline time of the latest fault
N_FACC = 5


@kernel
def spread(rng, cv):
    """A factor of mean 1 and coefficient of variation ``cv`` (gamma) drawn from ``rng``
    (a numpy Generator, whose state advances); 1 when cv is 0."""
    if cv <= 0.0:
        return 1.0
    shape = 1.0 / (cv * cv)
    return rng.gamma(shape, 1.0 / shape)


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


@inline_kernel
def _finish_fault(v, end, locked, clocks, stage, pending, hist, bin_edges, bins_per_decade,
                  timeline, run):
    """vCPU ``v``'s fault completes at ``end``: its latency into the histogram, a timeline
    row every ``every``-th fault. ``run`` = [last_latency, last_bin, until, points, last_t,
    last_pinned, every] (float64), updated in place."""
    clocks[v] = end
    stage[v] = STAGE_ACCESS
    latency = end - pending[v, 0]
    run[5] += pending[v, 3]  # its pins take effect now
    # Latencies repeat (every uncontended fault of a kind costs the same): skip the log10.
    if latency != run[0]:
        run[0] = latency
        run[1] = latency_bin(latency, bin_edges, bins_per_decade)
    hist[int(run[1])] += 1
    t_point = end if locked else pending[v, 0]
    run[4] = t_point
    # A countdown, not a modulo: an integer division per fault costs more than the rest
    # of a hit's bookkeeping.
    if run[2] == 0:
        run[2] = run[6] - 1
        points = int(run[3])
        if points < timeline.shape[0] - 1:  # the last row is kept for the wrapper's point
            timeline[points, 0] = t_point
            timeline[points, 1] = run[5]
            run[3] = points + 1
    else:
        run[2] -= 1


# What a vCPU does at its next event (``stage``).
STAGE_ACCESS = 0  # its next access starts
STAGE_PIN_LOCK = 1  # it arrives at slots_arch_lock
STAGE_MMU_LOCK = 2  # it arrives at mmu_lock (write)


@kernel
def run_phase(st, rules, unit_pages, units, bounds, prices, rng, clocks, pos,
              stage, pending, run, hist, bin_edges, bins_per_decade, timeline, acc, facc):
    """Run one phase's accesses on V vCPUs; returns the engine's status (``K.OK`` if all ran).

    vCPU ``v`` performs ``units[bounds[v]:bounds[v + 1]]`` in order. Events are taken in
    time order (the vCPU with the smallest clock next; ties: the lowest index): an
    access, or a vCPU arriving at a lock, which it gets when the lock is free, in the
    order the vCPUs arrive (first come, first served). ``clocks`` (float64[V]) carry
    each vCPU's time in and out; ``pos``, ``stage`` (int64[V]) and ``pending``
    (float64[V, 4]: the fault's start, its two lock holds, the pages it pins) and
    ``run`` (float64[7]) are scratch. ``hist``
    counts fault latencies into the bins of ``bin_edges``. ``timeline`` (float64[cap,
    2]) receives (time, pages pinned) after every ``acc[A_EVERY]``-th fault, counting
    faults over the whole workload; its time is when the fault's pins take effect: its
    last lock's release, or the fault's start where it takes none. ``acc``/``facc`` hold
    the running totals.
    """
    nested = st.nested
    nv = bounds.shape[0] - 1
    for v in range(nv):
        pos[v] = bounds[v]
        stage[v] = STAGE_ACCESS

    touch_ns = prices[P_TOUCH]
    npf_ns = prices[P_NPF]
    host_fault_ns = prices[P_HOST_FAULT]
    zero_page_ns = prices[P_ZERO_PAGE]
    lock_ns = prices[P_LOCK]
    pin_ns = prices[P_PIN]
    unpin_ns = prices[P_UNPIN]
    page_flush_ns = prices[P_PAGE_FLUSH]
    clflush_byte_ns = prices[P_CLFLUSH_BYTE]
    prefetch_ns = prices[P_PREFETCH]
    rmpupdate_ns = prices[P_RMPUPDATE]
    fault_cv = prices[P_FAULT_CV]
    lock_cv = prices[P_LOCK_CV]
    pin_lock = rules[R_PIN_LOCK] != 0
    mmu_lock = rules[R_MMU_LOCK] != 0
    pin_under_mmu = rules[R_PIN_UNDER_MMU] != 0
    transient = rules[R_TRANSIENT_PIN] != 0
    transient_ns = pin_ns + unpin_ns if transient else 0.0
    locked = pin_lock or mmu_lock

    faults = acc[A_FAULTS]
    accesses = acc[A_ACCESSES]
    pin_free = facc[F_PIN_LOCK_FREE]
    mmu_free = facc[F_MMU_LOCK_FREE]
    lock_wait = facc[F_LOCK_WAIT]
    lock_hold = facc[F_LOCK_HOLD]
    # The latest latency and its bin, the timeline countdown and rows, the latest
    # timeline time and pinned count, the sampling period (see _finish_fault).
    run[0] = -1.0
    run[1] = 0.0
    run[2] = acc[A_UNTIL]
    run[3] = acc[A_POINTS]
    run[4] = facc[F_LAST_T]
    run[5] = acc[A_LAST_PINNED]
    run[6] = acc[A_EVERY]

    regs = K.load_regs(st)
    status = K.OK
    while True:
        # V <= 64: a linear scan beats a heap here.
        v = -1
        t = 0.0
        for w in range(nv):
            if (stage[w] != STAGE_ACCESS or pos[w] < bounds[w + 1]) and (v < 0 or clocks[w] < t):
                v = w
                t = clocks[w]
        if v < 0:
            break
        if stage[v] == STAGE_PIN_LOCK:  # RFC v2: sev_pin_pfn under kvm->slots_arch_lock
            start = max(t, pin_free)
            pin_free = start + pending[v, 1]
            lock_wait += start - t
            lock_hold += pending[v, 1]
            if mmu_lock:
                stage[v] = STAGE_MMU_LOCK
                clocks[v] = pin_free
            else:
                _finish_fault(v, pin_free, locked, clocks, stage, pending, hist, bin_edges,
                              bins_per_decade, timeline, run)
            continue
        if stage[v] == STAGE_MMU_LOCK:  # the shadow MMU maps under mmu_lock held for write
            start = max(t, mmu_free)
            mmu_free = start + pending[v, 2]
            lock_wait += start - t
            lock_hold += pending[v, 2]
            _finish_fault(v, mmu_free, locked, clocks, stage, pending, hist, bin_edges,
                          bins_per_decade, timeline, run)
            continue

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
        status, regs = K.fault(st, rules, unit, unit_pages, regs)
        faults += 1
        pin_work = (pin_ns * (regs[K.G_PINS] - before[K.G_PINS])
                    + unpin_ns * (regs[K.G_UNPINS] - before[K.G_UNPINS])
                    + page_flush_ns * (regs[K.G_PAGE_FLUSHES] - before[K.G_PAGE_FLUSHES])
                    + clflush_byte_ns * (regs[K.G_CLFLUSH] - before[K.G_CLFLUSH])
                    - transient_ns)
        parallel = (npf_ns + transient_ns
                    + host_fault_ns * (regs[K.G_HOST_FAULTS] - before[K.G_HOST_FAULTS])
                    + zero_page_ns * (regs[K.G_ZEROED] - before[K.G_ZEROED])
                    + prefetch_ns * (regs[K.G_PREFETCHED] - before[K.G_PREFETCHED])
                    + rmpupdate_ns * (regs[K.G_RMP] - before[K.G_RMP]))
        if not (pin_lock or pin_under_mmu):
            parallel += pin_work  # no pinning, or RFC v1's under the TDP MMU's read lock
        pending[v, 0] = t
        if pin_lock:
            pending[v, 1] = (lock_ns + pin_work) * spread(rng, lock_cv)
        if mmu_lock:
            pending[v, 2] = (lock_ns + (pin_work if pin_under_mmu else 0.0)) * spread(
                rng, lock_cv)
        end = t + parallel * spread(rng, fault_cv)
        pending[v, 3] = regs[K.G_PINNED] - before[K.G_PINNED]
        if status != K.OK:
            clocks[v] = end
            break
        if pin_lock:
            stage[v] = STAGE_PIN_LOCK
            clocks[v] = end
        elif mmu_lock:
            stage[v] = STAGE_MMU_LOCK
            clocks[v] = end
        else:
            _finish_fault(v, end, locked, clocks, stage, pending, hist, bin_edges,
                          bins_per_decade, timeline, run)

    K.store_regs(st, regs)
    acc[A_FAULTS] = faults
    acc[A_ACCESSES] = accesses
    acc[A_POINTS] = int(run[3])
    acc[A_UNTIL] = int(run[2])
    acc[A_LAST_PINNED] = int(run[5])
    facc[F_PIN_LOCK_FREE] = pin_free
    facc[F_MMU_LOCK_FREE] = mmu_free
    facc[F_LOCK_WAIT] = lock_wait
    facc[F_LOCK_HOLD] = lock_hold
    facc[F_LAST_T] = run[4]
    return status

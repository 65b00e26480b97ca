"""The vCPU model: run a :class:`~pinning.model.workloads.Workload` on V concurrent vCPUs.

Time is modelled (a :class:`~pinning.model.costs.CostProfile` prices each event),
the bookkeeping is the engine's. See :mod:`pinning.model.kernels.vcpu` for the
discrete-event rules and their approximations. Steps run in order and every
step boundary is a barrier: a step starts when the previous one has finished
on all vCPUs (the engine applies each step's bookkeeping before the next). A
:class:`~pinning.model.workloads.Remap` costs the WBINVDs it counts (upfront: one), a
:class:`~pinning.model.workloads.Convert` everything it counts (the exits, the attribute
store, a discard's RMPUPDATEs and CLFLUSHes), serially.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pinning.model import strategies
from pinning.model.config import BenchConfig
from pinning.model.costs import COST_KEYS, CostProfile, modelled_ns
from pinning.model.host import Host
from pinning.model.kernels import engine as K
from pinning.model.kernels import vcpu as VK
from pinning.model.names import COUNTERS, MAX_VCPUS, InputError
from pinning.model.state import PINNED, State, frame_capacity, gmem_pages, metadata_shapes
from pinning.model.units import PAGE_SIZE, unit_pages
from pinning.model.workloads import Convert, Phase, Remap, Workload

#: Fault-latency histogram: log-spaced bins from 1 ns to 100 s, 40 per decade.
LATENCY_MIN_NS = 1.0
LATENCY_DECADES = 11
BINS_PER_DECADE = 40
#: Timeline rows: the start, at most this many sampled faults, and the last fault.
TIMELINE_SAMPLES = 1023


def latency_bin_edges() -> np.ndarray:
    """Edges (ns) of the fault-latency histogram; values outside go to the end bins."""
    n = LATENCY_DECADES * BINS_PER_DECADE
    return LATENCY_MIN_NS * 10.0 ** (np.arange(n + 1) / BINS_PER_DECADE)


@dataclass(eq=False)
class VcpuResult:
    """Modelled time and counters of one workload on V vCPUs."""

    faults: int
    accesses: int
    makespan_ns: float  # the latest vCPU clock
    faults_per_s: float
    lock_wait_ns: float  # summed over vCPUs
    lock_hold_ns: float
    latency_bin_edges_ns: np.ndarray  # float64[nbins + 1]
    latency_counts: np.ndarray  # int64[nbins], faults per bin
    timeline: np.ndarray  # float64[k, 2]: time ns, pages pinned then
    counters: dict[str, int]  # the workload's delta of each engine counter
    clocks_ns: np.ndarray  # float64[V], each vCPU's clock at the end
    #: operations completed (accesses and remaps)
    ops_done: int = 0

    def latency_quantiles_ns(self, qs: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Fault-latency quantiles from the histogram (geometric interpolation in a bin)."""
        q = np.atleast_1d(np.asarray(qs, dtype=np.float64))
        if np.any((q < 0) | (q > 1)) or np.any(np.isnan(q)):
            raise InputError(f"quantiles must lie between 0 and 1, got {q.tolist()}")
        counts = self.latency_counts.astype(np.float64)
        total = counts.sum()
        if total == 0:
            return np.full(q.shape, np.nan)
        cum = np.cumsum(counts)
        target = q * total
        # First nonempty bin whose cumulative count reaches the target.
        reach = (cum[None, :] >= target[:, None]) & (counts[None, :] > 0)
        idx = np.argmax(reach, axis=1)
        before = cum[idx] - counts[idx]
        frac = np.clip((target - before) / counts[idx], 0.0, 1.0)
        lo = self.latency_bin_edges_ns[idx]
        hi = self.latency_bin_edges_ns[idx + 1]
        return lo * (hi / lo) ** frac


def run_workload(state: State, strategy: str, level: str, workload: Workload,
                 profile: CostProfile, *, host: Host | None = None,
                 seed: int = 0) -> VcpuResult:
    """Run ``workload``'s steps on a started VM's ``state``; return modelled time and counters.

    ``state`` comes from :func:`pinning.model.state.new_state` (with ``remapped_pages``
    covering the workload's remaps) after the startup operation has run.
    (The memory-lock limit is checked at startup, never in a fault.) ``host`` is the
    host's parameters (default: the default configuration's); ``seed`` seeds the
    service times' spread.
    """
    host = host or BenchConfig("fault_storm").host_params
    rules = np.array(strategies.get(strategy).rules(host, level), dtype=np.int64)
    upages = unit_pages(level)
    guest_pages = _check_state(state, strategy, level, upages)
    nv = _check_workload(workload, guest_pages, upages)
    if not isinstance(profile, CostProfile) or set(profile.costs) != set(COST_KEYS):
        raise InputError(f"profile must be a CostProfile with costs {', '.join(COST_KEYS)}")
    remapped = workload.remapped_pages(level)
    capacity = state.capacity
    if capacity < frame_capacity(guest_pages, remapped):
        raise InputError(f"the state holds {capacity} host frames, too few for remaps of "
                         f"{remapped} pages: build it with new_state(..., remapped_pages="
                         f"{remapped})")

    prices = np.zeros(VK.N_PRICES, dtype=np.float64)
    c = profile.costs
    prices[VK.P_TOUCH] = c["guest_touch_ns"]
    prices[VK.P_NPF] = c["npf_exit_ns"]
    prices[VK.P_HOST_FAULT] = c["host_fault_ns"]
    prices[VK.P_ZERO_PAGE] = c["zero_byte_ns"] * PAGE_SIZE
    prices[VK.P_LOCK] = c["lock_hold_ns"]
    prices[VK.P_PIN] = c["pin_ns"]
    prices[VK.P_UNPIN] = c["unpin_ns"]
    prices[VK.P_PAGE_FLUSH] = c["page_flush_ns"]
    prices[VK.P_CLFLUSH_BYTE] = c["clflush_page_ns"] / PAGE_SIZE
    prices[VK.P_PREFETCH] = c["spte_prefetch_ns"]
    prices[VK.P_RMPUPDATE] = c["rmpupdate_ns"]
    prices[VK.P_FAULT_CV] = profile.spread["fault_cv"]
    prices[VK.P_LOCK_CV] = profile.spread["lock_cv"]
    rng = np.random.default_rng([seed, 0x5EED])  # the service times' own stream

    counters, scal = state.counters, state.scal
    before = counters.copy()
    edges = latency_bin_edges()
    hist = np.zeros(edges.shape[0] - 1, dtype=np.int64)
    clocks = np.zeros(nv, dtype=np.float64)
    pos = np.zeros(nv, dtype=np.int64)
    stage = np.zeros(nv, dtype=np.int64)
    pending = np.zeros((nv, 4), dtype=np.float64)
    scratch = np.zeros(7, dtype=np.float64)
    total_accesses = sum(len(s.units) for s in workload.steps if isinstance(s, Phase))
    timeline = np.zeros((TIMELINE_SAMPLES + 2, 2), dtype=np.float64)
    timeline[0] = (0.0, float(scal[PINNED]))
    acc = np.zeros(VK.N_ACC, dtype=np.int64)
    acc[VK.A_POINTS] = 1
    acc[VK.A_EVERY] = max(1, -(-total_accesses // TIMELINE_SAMPLES))
    acc[VK.A_LAST_PINNED] = scal[PINNED]
    facc = np.zeros(VK.N_FACC, dtype=np.float64)
    wbinvd_ns = c["wbinvd_ns"]

    ops_done = 0
    for step in workload.steps:
        barrier = float(clocks.max())
        if isinstance(step, Remap):
            wbinvd0 = counters[K.WBINVD]
            K.run(state, rules, upages, K.NO_LIMIT, *_remap_op(step))
            barrier += wbinvd_ns * float(counters[K.WBINVD] - wbinvd0)
            clocks.fill(barrier)
            ops_done += 1
            continue
        if isinstance(step, Convert):
            # The requests' exits, the attribute store and the discard run in KVM and
            # the VMM while the vCPUs wait (priced serially, as a remap's WBINVD is).
            step0 = counters.copy()
            K.run(state, rules, upages, K.NO_LIMIT, *_convert_ops(step))
            barrier += modelled_ns(dict(zip(COUNTERS, (int(d) for d in counters - step0),
                                            strict=True)), profile)
            clocks.fill(barrier)
            ops_done += 1
            continue
        clocks.fill(barrier)
        done0 = int(acc[VK.A_ACCESSES])
        status = VK.run_phase(state, rules, upages,
                              np.ascontiguousarray(step.units), step.bounds,
                              prices, rng, clocks, pos, stage, pending, scratch, hist, edges,
                              float(BINS_PER_DECADE),
                              timeline, acc, facc)
        if status == K.ERR_NO_FRAME:
            raise RuntimeError("vCPU model ran out of host frames: frame_capacity() is wrong")
        ops_done += int(acc[VK.A_ACCESSES]) - done0

    faults = int(acc[VK.A_FAULTS])
    npoints = int(acc[VK.A_POINTS])
    if faults and (faults - 1) % int(acc[VK.A_EVERY]) != 0:
        timeline[npoints] = (facc[VK.F_LAST_T], float(acc[VK.A_LAST_PINNED]))
        npoints += 1
    makespan = float(clocks.max())
    delta = counters - before
    return VcpuResult(
        faults=faults,
        accesses=int(acc[VK.A_ACCESSES]),
        makespan_ns=makespan,
        faults_per_s=faults / makespan * 1e9 if makespan > 0 else 0.0,
        lock_wait_ns=float(facc[VK.F_LOCK_WAIT]),
        lock_hold_ns=float(facc[VK.F_LOCK_HOLD]),
        latency_bin_edges_ns=edges,
        latency_counts=hist,
        timeline=timeline[:npoints].copy(),
        counters=dict(zip(COUNTERS, (int(d) for d in delta), strict=True)),
        clocks_ns=clocks,
        ops_done=ops_done,
    )


def _remap_op(step: Remap) -> tuple:
    return (np.array([K.OP_REMAP], dtype=np.int8), np.array([step.gfn], dtype=np.int64),
            np.array([step.npages], dtype=np.int64), np.zeros(0, dtype=np.uint32))


def _convert_ops(step: Convert) -> tuple:
    """The engine's operations of one conversion: the guest's requests, then the range."""
    op = K.OP_TO_SHARED if step.to == "shared" else K.OP_TO_PRIVATE
    return (np.array([K.OP_PSC, op], dtype=np.int8),
            np.array([0, step.gfn], dtype=np.int64),
            np.array([step.requests, step.npages], dtype=np.int64),
            np.zeros(0, dtype=np.uint32))


def _check_state(state: State, strategy: str, level: str, upages: int) -> int:
    """The guest's page count, after checking that ``state`` fits strategy and level."""
    if not isinstance(state, State):
        raise InputError("state must be a pinning.model.state.State (new_state)")
    guest_pages = state.guest_pages
    nested = state.nested
    if guest_pages == 0 or guest_pages % upages or nested.shape[0] != guest_pages // upages:
        raise InputError(f"state of {guest_pages} pages with {nested.shape[0]} nested units "
                         f"was not built for level {level}")
    shapes = metadata_shapes(strategies.get(strategy), guest_pages)
    if tuple(a.shape[0] for a in state.metadata_arrays()) != shapes or (
            state.gmem.shape[0] != gmem_pages(strategies.get(strategy), guest_pages)):
        raise InputError(f"state was not built for strategy {strategy}")
    # Every strategy's startup accounts its metadata; a VM without it never started.
    if state.counters[K.METADATA_BYTES] == 0:
        raise InputError("state has not run startup (engine.OP_STARTUP) or startup failed")
    return guest_pages


def _check_workload(workload: Workload, guest_pages: int, upages: int) -> int:
    """The number of vCPUs, after checking every step against the guest."""
    if not isinstance(workload, Workload):
        raise InputError(f"expected a Workload, got {type(workload).__name__}")
    nv = workload.nvcpus
    if isinstance(nv, bool) or not isinstance(nv, int | np.integer) or not 1 <= nv <= MAX_VCPUS:
        raise InputError(f"workload nvcpus {nv!r} must be between 1 and {MAX_VCPUS}")
    n_units = guest_pages // upages
    for i, step in enumerate(workload.steps, 1):
        if isinstance(step, Remap | Convert):
            what = "remap" if isinstance(step, Remap) else f"conversion to {step.to}"
            if not (0 <= step.gfn and 1 <= step.npages and step.gfn + step.npages <= guest_pages):
                raise InputError(f"step {i}: {what} of gfn {step.gfn}, npages {step.npages} "
                                 f"lies outside the guest's gfns 0..{guest_pages - 1}")
            continue
        if not isinstance(step, Phase):
            raise InputError(f"step {i}: expected a Phase, a Remap or a Convert, got "
                             f"{type(step).__name__}")
        units, bounds = step.units, step.bounds
        if units.ndim != 1 or units.dtype not in (np.uint32, np.int64):
            raise InputError(f"step {i}: units must be a 1-D uint32 or int64 array, "
                             f"got {units.ndim}-D {units.dtype}")
        if bounds.dtype != np.int64 or bounds.shape != (nv + 1,):
            raise InputError(f"step {i}: bounds must be int64[nvcpus + 1] = int64[{nv + 1}], "
                             f"got {bounds.dtype}{list(bounds.shape)}")
        if bounds[0] != 0 or bounds[-1] != len(units) or np.any(np.diff(bounds) < 0):
            raise InputError(f"step {i}: bounds must rise from 0 to len(units) = {len(units)}")
        if len(units) and (int(units.min()) < 0 or int(units.max()) >= n_units):
            raise InputError(f"step {i}: unit indices must lie in 0..{n_units - 1}")
    return int(nv)

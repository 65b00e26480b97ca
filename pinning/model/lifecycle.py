"""One VM lifecycle on the model: startup, the guest's workload (vCPU model), teardown.

:func:`run_lifecycle` is the one path every run takes -- ``pinbench simulate``, the
suite's benchmarks, calibration and the reports' model predictions: a configuration
(or a trace) gives the workload, the strategy's kernels do the bookkeeping, the vCPU
model prices the guest's accesses, the cost profile prices startup and teardown, and
each phase is timed the same way. A real backing passes a :class:`GuestRam` whose
real memory operations run inside the same timed phases (pinning.harness.backings).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pinning.model import strategies
from pinning.model.config import BenchConfig
from pinning.model.costs import CostProfile, modelled_ns
from pinning.model.kernels import engine as K
from pinning.model.names import COUNTERS, MEASURED_PHASES, RUN_PHASES
from pinning.model.state import State, memory_needed, new_state, reset_state, zero_metadata
from pinning.model.strategies import Strategy
from pinning.model.units import PAGE_SIZE, format_size, unit_pages
from pinning.model.vcpu import VcpuResult, run_workload
from pinning.model.workloads import Phase, Workload, make_workload


class GuestRam(Protocol):
    """Real guest memory a backing keeps beside the model's bookkeeping (backing "real")."""

    def startup(self, strategy: Strategy) -> str | None:
        """Right after the strategy's startup kernel; an error text stops the run."""

    def touch(self, phase: Phase, unit_pages: int) -> None:
        """The guest's real first touches of one phase, after its bookkeeping."""

    def teardown(self) -> None:
        """After the teardown kernel: release the memory."""


@dataclass
class LifecycleResult:
    """What one lifecycle did: per phase its wall time, its events and its modelled time.

    ``elapsed_ns`` is the wall time of each phase that ran: on the sim backing the speed
    of the model's own bookkeeping, with real memory that plus the real memory's
    operations, on a KVM guest the VM's own phases (``backing`` holds the VM's
    breakdown and KVM's statistics). ``events`` and ``model_ns`` are the model's.
    """

    config: BenchConfig
    elapsed_ns: dict[str, int] = field(default_factory=dict)
    events: dict[str, dict[str, int]] = field(default_factory=dict)
    model_ns: dict[str, float] = field(default_factory=dict)
    vcpu: dict[str, VcpuResult] = field(default_factory=dict)
    error: str | None = None
    #: operations of the workload completed (accesses and remaps, in the vCPU model's order)
    ops_done: int = 0
    #: what a real backing measured beside the phases (kvm: the VM's breakdown, KVM's stats)
    backing: dict[str, Any] = field(default_factory=dict)
    state: State | None = field(default=None, repr=False)

    def measured_s(self, family: str | None = None) -> float:
        """Seconds of the phases a family measures (default: the config's family)."""
        phases = MEASURED_PHASES[family or self.config.workload]
        return sum(self.elapsed_ns.get(p, 0) for p in phases) / 1e9

    def counters(self) -> dict[str, int]:
        """The run's counters: a phase's events are the counters' growth in it (peaks are
        running maxima), so their sum over the phases is each counter's final value."""
        return {name: sum(ev.get(name, 0) for ev in self.events.values()) for name in COUNTERS}

    @property
    def total_model_ns(self) -> float:
        return float(sum(self.model_ns.values()))


def build_workload(config: BenchConfig) -> Workload:
    """The guest's accesses (and, for the remap and convert families, the VMM's remap or
    the guest's conversions) of a configuration."""
    if "access" not in RUN_PHASES[config.workload]:
        return Workload((), config.vcpus, "no guest accesses")
    gmem = strategies.get(config.strategy).guest_memfd
    return make_workload(
        config.pattern, config.guest_pages, config.level, vcpus=config.vcpus,
        layout=config.layout, touch_fraction=config.touch_fraction, seed=config.seed,
        remap_fraction=config.remap_fraction if config.workload == "remap" else 0.0,
        convert_fraction=config.convert_fraction if config.workload == "convert" else 0.0,
        accept=config.acceptance if gmem and config.pattern == "boot" else None)


def launch_rules(strategy: Strategy, config: BenchConfig) -> np.ndarray:
    """The engine's rule vector of a configuration (its launch options included)."""
    return np.array(strategy.rules(config.host_params, config.level, prefault=config.prefault,
                                   image_pages=config.image_size // PAGE_SIZE),
                    dtype=np.int64)


# The states of the last configurations run in this process, reused by the next run of
# the same shape (see state.reset_state for why): one per strategy while they take at
# most STATE_CACHE_BYTES together -- a side-by-side of strategies alternates between
# them -- else only the last (a 1 TiB guest's arrays are ~9 GiB).
STATE_CACHE_BYTES = 4 << 30
_cached: dict[tuple, State] = {}


def _state_bytes(state: State) -> int:
    return sum(a.nbytes for a in state)


def _state_for(strategy: Strategy, config: BenchConfig, remapped: int, keep: bool) -> State:
    if keep:  # the caller keeps it: never hand it to a later run
        return new_state(strategy, config.guest_pages, config.level, remapped)
    key = (strategy, config.guest_pages, config.level, remapped)
    state = _cached.pop(key, None)
    # Keep the others only while all fit in the budget, the newest first; evict before
    # allocating, so that a run never holds more than the preflight counted for it.
    held = (_state_bytes(state) if state is not None else
            memory_needed(strategy, config.guest_pages, config.level, remapped))
    for other in reversed(list(_cached)):
        if held + _state_bytes(_cached[other]) > STATE_CACHE_BYTES:
            del _cached[other]
        else:
            held += _state_bytes(_cached[other])
    if state is None:
        state = new_state(strategy, config.guest_pages, config.level, remapped)
    else:
        reset_state(state)
    _cached[key] = state
    return state


def _limit_text(limit: int) -> str:
    return f"{limit} bytes" if limit < 1024 else format_size(limit)


def _one_op(op: int) -> tuple:
    return (np.array([op], dtype=np.int8), np.zeros(1, dtype=np.int64),
            np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.uint32))


def run_lifecycle(config: BenchConfig, profile: CostProfile, *,
                  workload: Workload | None = None, ram: GuestRam | None = None,
                  keep_state: bool = False) -> LifecycleResult:
    """Run the phases of ``config``'s family on the model; time, count and price each.

    ``workload`` replaces the configuration's pattern (e.g. a trace's:
    :func:`pinning.model.traces.workload_from_trace`); ``ram`` is a real backing's guest
    memory; ``keep_state`` keeps the arrays in the result. A memory-lock failure (at
    startup: no strategy checks the limit in a fault) is a result (``error``), not an
    exception: the VM never runs and every counter is 0.
    """
    strategy = strategies.get(config.strategy)
    host = config.host_params
    rules = launch_rules(strategy, config)
    upages = unit_pages(config.level)
    if workload is None:
        workload = build_workload(config)
    limit = config.memlock_limit
    memlock_pages = K.NO_LIMIT if limit is None else limit // PAGE_SIZE
    state = _state_for(strategy, config, workload.remapped_pages(config.level), keep_state)
    res = LifecycleResult(config, state=state if keep_state else None)

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        before = state.counters.copy()
        t0 = time.perf_counter_ns()
        out = fn()
        res.elapsed_ns[name] = time.perf_counter_ns() - t0
        res.events[name] = dict(zip(COUNTERS, (int(x) for x in state.counters - before),
                                    strict=True))
        if isinstance(out, VcpuResult):
            res.vcpu[name] = out
            res.model_ns[name] = float(out.makespan_ns)
        else:
            res.model_ns[name] = modelled_ns(res.events[name], profile)
        return out

    def startup() -> int:
        zero_metadata(state)
        status = K.run(state, rules, upages, memlock_pages, *_one_op(K.OP_STARTUP))[0]
        if status == K.OK and ram is not None:
            res.error = ram.startup(strategy)
        return status

    def access(steps: tuple) -> VcpuResult:
        out = run_workload(state, config.strategy, config.level,
                           Workload(steps, workload.nvcpus), profile, host=host,
                           seed=config.seed)
        if ram is not None:  # the guest's real touches, in its order, after the bookkeeping
            for step in steps:
                if isinstance(step, Phase):
                    ram.touch(step, upages)
        res.ops_done += out.ops_done
        return out

    def teardown() -> int:
        status = K.run(state, rules, upages, memlock_pages, *_one_op(K.OP_TEARDOWN))[0]
        if ram is not None:
            ram.teardown()
        return status

    status = phase("startup", startup)
    if status == K.ERR_MEMLOCK:
        res.error = (f"memory lock limit exceeded: registering "
                     f"{format_size(config.guest_size)} would lock more than the limit of "
                     f"{_limit_text(limit)}")
        return res
    if status != K.OK:
        raise RuntimeError("the model ran out of host frames: frame_capacity() is wrong")
    if res.error:  # the real backing could not pin: the VM never runs
        if ram is not None:
            ram.teardown()
        return res
    wanted = RUN_PHASES[config.workload]
    steps = workload.steps
    again = next((p for p in ("remap", "convert") if p in wanted), None)
    if again is not None:
        # The first pass maps the guest; the measured part is the remap (or the
        # conversions) and the re-faults.
        first = next((i for i, s in enumerate(steps) if isinstance(s, Phase)), -1) + 1
        phase("access", lambda: access(steps[:first]))
        phase(again, lambda: access(steps[first:]))
    elif "access" in wanted:
        phase("access", lambda: access(steps))
    if "teardown" in wanted:
        phase("teardown", teardown)
        K.finish(state)
        res.events["teardown"]["pinned_pages_end"] = int(state.counters[K.PINNED_PAGES_END])
        res.events["teardown"]["leaked_refs"] = int(state.counters[K.LEAKED_REFS])
    elif ram is not None:
        ram.teardown()
    return res


def warm_up() -> None:
    """Compile (or load from the numba cache) every kernel before anything is timed."""
    from pinning.model.costs import load_profile
    from pinning.model.traces import Trace, workload_from_trace

    profile = load_profile()
    trace = Trace.from_rows([("access", 0, 1), ("remap", 0, 1), ("access", 0, 1)])
    for name in strategies.names():
        config = BenchConfig("lifecycle", name, 512 * PAGE_SIZE, "2m")
        run_lifecycle(config, profile, workload=workload_from_trace(trace, 512, "2m"))
        for pattern in ("sequential", "random"):
            run_lifecycle(BenchConfig("lifecycle", name, 64 * PAGE_SIZE, "4k",
                                      pattern=pattern), profile)


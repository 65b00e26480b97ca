"""One benchmarked VM lifecycle: startup, guest workload (vCPU model), teardown, timed per phase."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pinning import kernels as K
from pinning.costs import CostProfile, modelled_ns
from pinning.levels import unit_pages
from pinning.sim import (
    memory_needed,
    new_state,
    one_op,
    reset_state,
    strategy_code,
    zero_metadata,
)
from pinning.suite import BenchConfig
from pinning.vcpu import VcpuResult, run_workload
from pinning.workload import Remap, Workload, make_workload, workload_bytes

#: Which phases each workload family's measured value covers.
MEASURED_PHASES = {
    "startup": ("startup",),
    "fault_storm": ("access",),
    "remap": ("remap",),
    "teardown": ("teardown",),
    "lifecycle": ("startup", "access", "teardown"),
}
#: Phases each family runs at all: a phase nobody measures or needs before a
#: measured one is skipped (a 1 TiB startup benchmark needs no fault storm).
RUN_PHASES = {
    "startup": ("startup",),
    "fault_storm": ("startup", "access"),
    "remap": ("startup", "access", "remap"),
    "teardown": ("startup", "access", "teardown"),
    "lifecycle": ("startup", "access", "teardown"),
}


@dataclass
class LifecycleResult:
    """Measured wall time and modelled events of each phase of one lifecycle."""

    elapsed_ns: dict[str, int] = field(default_factory=dict)
    events: dict[str, dict[str, int]] = field(default_factory=dict)
    model_ns: dict[str, float] = field(default_factory=dict)
    vcpu: dict[str, VcpuResult] = field(default_factory=dict)
    error: str | None = None

    def measured_s(self, family: str) -> float:
        """Seconds of the phases the family measures."""
        return sum(self.elapsed_ns.get(p, 0) for p in MEASURED_PHASES[family]) / 1e9


def build_workload(config: BenchConfig) -> Workload:
    """The guest's accesses (and, for the remap family, the VMM's remap) of a configuration."""
    if "access" not in RUN_PHASES[config.workload]:
        return Workload((), config.vcpus, "no guest accesses")
    return make_workload(
        config.pattern, config.guest_pages, config.level, vcpus=config.vcpus,
        layout=config.layout, touch_fraction=config.touch_fraction, seed=config.seed,
        remap_fraction=config.remap_fraction if config.workload == "remap" else 0.0)


def config_bytes(config: BenchConfig) -> int:
    """Memory one lifecycle of this configuration needs (checked before running it)."""
    frac = config.remap_fraction if config.workload == "remap" else 0.0
    remapped = int(config.guest_pages * frac) + unit_pages(config.level)
    if "access" not in RUN_PHASES[config.workload]:
        return memory_needed(config.strategy, config.guest_pages, config.level, 0, 0)
    wl = workload_bytes(config.pattern, config.guest_pages, config.level, vcpus=config.vcpus,
                        layout=config.layout, touch_fraction=config.touch_fraction,
                        seed=config.seed, remap_fraction=frac)
    return memory_needed(config.strategy, config.guest_pages, config.level, remapped, wl)


# The state of the last configuration run in this process, reused by the next
# run of the same shape (see sim.reset_state for why).
_cached: dict[tuple, tuple] = {}


def _state_for(config: BenchConfig, remapped: int) -> tuple:
    key = (config.strategy, config.guest_pages, config.level, remapped)
    state = _cached.get(key)
    if state is None:
        _cached.clear()  # one state at a time: they can be many GiB
        state = _cached[key] = new_state(config.strategy, config.guest_pages, config.level,
                                          remapped)
    else:
        reset_state(state)
    return state


def run_lifecycle(config: BenchConfig, profile: CostProfile,
                  workload: Workload | None = None) -> LifecycleResult:
    """Run startup, the workload and teardown on a fresh state; time and count each phase.

    Only the phases the configuration's family needs run (``RUN_PHASES``).
    """
    if workload is None:
        workload = build_workload(config)
    code = strategy_code(config.strategy)
    upages = unit_pages(config.level)
    remapped = sum(_widened(s.gfn, s.npages, upages) for s in workload.steps
                   if isinstance(s, Remap))
    state = _state_for(config, remapped)
    counters = state[0]
    res = LifecycleResult()

    def phase(name: str, fn) -> None:
        before = counters.copy()
        t0 = time.perf_counter_ns()
        out = fn()
        res.elapsed_ns[name] = time.perf_counter_ns() - t0
        res.events[name] = dict(zip(K.COUNTER_NAMES, (int(x) for x in counters - before),
                                    strict=True))
        if isinstance(out, VcpuResult):
            res.vcpu[name] = out
            res.model_ns[name] = float(out.makespan_ns)
            if out.error:
                res.error = out.error
        else:
            res.model_ns[name] = modelled_ns(res.events[name], profile)
        return out

    def startup() -> int:
        zero_metadata(state)
        return K.run(state, code, upages, K.NO_LIMIT, *one_op(K.OP_STARTUP))[0]

    status = phase("startup", startup)
    if status != K.OK:
        res.error = "startup failed"
        return res
    wanted = RUN_PHASES[config.workload]
    steps = workload.steps
    if "remap" in wanted:
        # The first pass maps the guest; the measured part is the remap and the re-faults.
        first, rest = steps[:1], steps[1:]
        phase("access", lambda: run_workload(state, config.strategy, config.level, K.NO_LIMIT,
                                             Workload(first, workload.nvcpus), profile))
        phase("remap", lambda: run_workload(state, config.strategy, config.level, K.NO_LIMIT,
                                            Workload(rest, workload.nvcpus), profile))
    elif "access" in wanted:
        phase("access", lambda: run_workload(state, config.strategy, config.level, K.NO_LIMIT,
                                             workload, profile))
    if "teardown" in wanted:
        phase("teardown", lambda: K.run(state, code, upages, K.NO_LIMIT,
                                        *one_op(K.OP_TEARDOWN))[0])
        K.finish(state)
        res.events["teardown"]["pinned_pages_end"] = int(counters[K.PINNED_PAGES_END])
        res.events["teardown"]["leaked_refs"] = int(counters[K.LEAKED_REFS])
    return res


def _widened(gfn: int, npages: int, upages: int) -> int:
    return ((gfn + npages + upages - 1) // upages - gfn // upages) * upages


def lifecycle_metadata(config: BenchConfig, res: LifecycleResult) -> dict[str, int | float | str]:
    """pyperf metadata of one lifecycle: events and modelled time per phase, vCPU model output."""
    md: dict[str, int | float | str] = {
        "measured.phases": ",".join(MEASURED_PHASES[config.workload]),
        "measured.what": "wall time of the simulation's bookkeeping (sim backing)",
    }
    for ph, events in res.events.items():
        for name, value in events.items():
            md[f"events.{ph}.{name}"] = value
    for ph, ns in res.model_ns.items():
        md[f"model.{ph}_ns"] = float(ns)
    md["model.total_ns"] = float(sum(res.model_ns.values()))
    md["model.measured_ns"] = float(sum(res.model_ns.get(p, 0.0)
                                        for p in MEASURED_PHASES[config.workload]))
    qs = np.linspace(0.0, 1.0, 101)
    for ph, v in res.vcpu.items():
        md[f"vcpu.{ph}.faults"] = int(v.faults)
        md[f"vcpu.{ph}.accesses"] = int(v.accesses)
        md[f"vcpu.{ph}.makespan_ns"] = float(v.makespan_ns)
        md[f"vcpu.{ph}.faults_per_s"] = float(v.faults_per_s)
        md[f"vcpu.{ph}.lock_wait_ns"] = float(v.lock_wait_ns)
        md[f"vcpu.{ph}.lock_hold_ns"] = float(v.lock_hold_ns)
        if v.faults:
            quant = v.latency_quantiles_ns(qs)
            md[f"vcpu.{ph}.latency_p50_ns"] = float(quant[50])
            md[f"vcpu.{ph}.latency_p99_ns"] = float(quant[99])
            md[f"vcpu.{ph}.latency_quantiles_ns"] = ",".join(f"{x:.6g}" for x in quant)
        tl = v.timeline
        if len(tl):
            pick = np.unique(np.linspace(0, len(tl) - 1, min(len(tl), 64)).astype(int))
            md[f"vcpu.{ph}.timeline"] = ";".join(f"{tl[i, 0]:.6g},{int(tl[i, 1])}"
                                                 for i in pick)
    if res.error:
        md["error"] = res.error
    return md

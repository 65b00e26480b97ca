"""One benchmarked VM lifecycle: startup, guest workload (vCPU model), teardown, timed per phase."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pinning.backends.hostmem import warm_host
from pinning.harness.suite import BenchConfig
from pinning.model.costs import CostProfile, modelled_ns
from pinning.model.kernels import engine as K
from pinning.model.state import (
    memory_needed,
    new_state,
    one_op,
    reset_state,
    strategy_code,
    zero_metadata,
)
from pinning.model.units import unit_pages
from pinning.model.vcpu import VcpuResult, run_workload
from pinning.model.workloads import Phase, Remap, Workload, make_workload, workload_bytes

if TYPE_CHECKING:
    from pinning.backends.realmem import GuestMemory

#: Idle seconds before a "cold" value: this VM's host reclaims idle free memory after
#: a few seconds (HOST.md), so the guest's memory is then backed afresh by the host.
COLD_WAIT_S = 10.0

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
    #: kvm backing: the VM's own measurements (pinning.backends.kvm.KvmRun.as_dict()).
    kvm: dict[str, Any] = field(default_factory=dict)

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
    if config.backing != "sim":  # guest RAM itself, beside the model's arrays
        return config.guest_size + config_bytes(replace(config, backing="sim", host="warm"))
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
    if config.backing == "kvm":
        return _run_kvm(config)
    if workload is None:
        workload = build_workload(config)
    if config.backing == "real":
        from pinning.backends.realmem import GuestMemory

        prepare_host(config)
        with GuestMemory(config.guest_size, config.level) as mem:
            return _run_model(config, profile, workload, mem)
    return _run_model(config, profile, workload, None)


def backing_unavailable(config: BenchConfig) -> str | None:
    """Why this machine cannot run the configuration's backing (None: it can)."""
    if config.backing != "kvm":
        return None
    from pinning.backends.kvm import kvm_unavailable

    reason = kvm_unavailable()
    return f"needs /dev/kvm: {reason}" if reason else None


def prepare_host(config: BenchConfig) -> None:
    """Right before a measured value of a real backing: warm the host, or let it go cold."""
    if config.host == "cold":
        time.sleep(COLD_WAIT_S)
    else:
        warm_host(config.guest_size)


def _run_kvm(config: BenchConfig) -> LifecycleResult:
    from pinning.backends import kvm

    prepare_host(config)
    run = kvm.run_vm(config.guest_size, strategy=config.strategy,
                     backing="thp" if config.level == "2m" else "4k", vcpus=config.vcpus,
                     touch_fraction=config.touch_fraction, pattern=config.pattern,
                     seed=config.seed, host=config.host)
    return LifecycleResult(elapsed_ns={"startup": run.startup_ns, "access": run.touch_ns,
                                       "teardown": run.teardown_ns},
                           error=run.error, kvm=run.as_dict())


def _run_model(config: BenchConfig, profile: CostProfile, workload: Workload,
               mem: GuestMemory | None) -> LifecycleResult:
    """The model's lifecycle; with ``mem`` (a realmem.GuestMemory) on real guest RAM too."""
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
        status = K.run(state, code, upages, K.NO_LIMIT, *one_op(K.OP_STARTUP))[0]
        if mem is not None and config.strategy == "upfront" and status == K.OK:
            mem.populate()
            res.error = mem.lock()
        return status

    def access(wl: Workload) -> VcpuResult:
        out = run_workload(state, config.strategy, config.level, K.NO_LIMIT, wl, profile)
        if mem is not None:  # the guest's real touches, in its order, after the bookkeeping
            for step in wl.steps:
                if isinstance(step, Phase):
                    mem.touch(step.units, step.bounds, upages)
        return out

    def teardown() -> int:
        status = K.run(state, code, upages, K.NO_LIMIT, *one_op(K.OP_TEARDOWN))[0]
        if mem is not None:
            mem.release()
        return status

    status = phase("startup", startup)
    if status != K.OK:
        res.error = "startup failed"
        return res
    wanted = RUN_PHASES[config.workload]
    steps = workload.steps
    if "remap" in wanted:
        # The first pass maps the guest; the measured part is the remap and the re-faults.
        first, rest = steps[:1], steps[1:]
        phase("access", lambda: access(Workload(first, workload.nvcpus)))
        phase("remap", lambda: access(Workload(rest, workload.nvcpus)))
    elif "access" in wanted:
        phase("access", lambda: access(workload))
    if "teardown" in wanted:
        phase("teardown", teardown)
        K.finish(state)
        res.events["teardown"]["pinned_pages_end"] = int(counters[K.PINNED_PAGES_END])
        res.events["teardown"]["leaked_refs"] = int(counters[K.LEAKED_REFS])
    return res


def _widened(gfn: int, npages: int, upages: int) -> int:
    return ((gfn + npages + upages - 1) // upages - gfn // upages) * upages


#: What a benchmark's measured value is, per backing (metadata ``measured.what``).
MEASURED_WHAT = {
    "sim": "wall time of the simulation's bookkeeping (sim backing)",
    "real": "wall time of the simulation's bookkeeping plus real host memory: populate + "
            "mlock at upfront startup, the guest's first touches as real host page faults "
            "(real backing)",
    "kvm": "wall time of a real KVM guest through /dev/kvm: VM creation, populate + mlock "
           "(upfront), first guest instruction, guest touching its memory, teardown "
           "(kvm backing)",
}


def lifecycle_metadata(config: BenchConfig, res: LifecycleResult,
                       model: LifecycleResult | None = None) -> dict[str, int | float | str]:
    """pyperf metadata of one lifecycle: events and modelled time per phase, vCPU model output.

    For the kvm backing ``model`` is the sim's lifecycle of the same configuration: its
    events and modelled times are the model's prediction next to the VM's measurements
    (``kvm.*``: one VM's phase breakdown and KVM's own statistics).
    """
    md: dict[str, int | float | str] = {
        "measured.phases": ",".join(MEASURED_PHASES[config.workload]),
        "measured.what": MEASURED_WHAT[config.backing],
    }
    if config.backing != "sim":
        md["host.state"] = config.host
    for key, value in res.kvm.items():
        if isinstance(value, dict):
            for name, v in value.items():
                md[f"kvm.{key}.{name}"] = v
        elif value is not None:
            md[f"kvm.{key}"] = value
    if res.error:
        md["error"] = res.error
    res = model if model is not None else res
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
    if res.error and "error" not in md:
        md["error"] = res.error
    return md

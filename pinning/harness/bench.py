"""The body of the pyperf scripts in bench/: options, forwarding to workers, metadata.

The manager process (the one ``pinbench run`` starts) only parses options and runs the
preflight check -- no numba; pyperf's worker processes load the model and run it.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pinning import __version__
from pinning.harness.backings import Backing, preflight
from pinning.harness.options import add_config_options, config_from_args
from pinning.model.config import BenchConfig, family_defaults, flag, option_fields, to_text
from pinning.model.names import MEASURED_PHASES, SCHEMA_VERSION, InputError
from pinning.model.units import format_size

#: Options of a bench script besides the BenchConfig fields (forwarded to workers too).
EXTRA_OPTIONS = ("cost_profile", "suite")


def add_options(parser: argparse.ArgumentParser, family: str) -> None:
    """The pinbench options of ``family``'s bench script (pyperf's own stay as they are)."""
    g = parser.add_argument_group("pinbench")
    add_config_options(g, parse=False, defaults=family_defaults(family))
    g.add_argument("--cost-profile", default=None, help="cost profile TOML (default: builtin)")
    g.add_argument("--suite", default="adhoc", help="suite name recorded in the metadata")


def forward_options(cmd: list[str], args: argparse.Namespace) -> None:
    """pyperf's add_cmdline_args hook: give each worker the manager's pinbench options."""
    for name in [f.name for f in option_fields()] + list(EXTRA_OPTIONS):
        value = getattr(args, name)
        if value is not None or name not in EXTRA_OPTIONS:
            cmd.extend([flag(name), to_text(value)])


def run_metadata(config: BenchConfig, backing: Backing, res: Any) -> dict[str, int | float | str]:
    """pyperf metadata of one lifecycle: what was measured, the model's events and modelled
    time per phase, the vCPU model's output, and a real backing's own measurements."""
    import numpy as np

    md: dict[str, int | float | str] = {
        "measured.phases": ",".join(MEASURED_PHASES[config.workload]),
        "measured.what": backing.measures,
    }
    if config.backing != "sim":
        md["host.state"] = config.host
    for key, value in res.backing.items():
        if isinstance(value, dict):
            for name, v in value.items():
                md[f"kvm.{key}.{name}"] = v
        elif value is not None:
            md[f"kvm.{key}"] = value
    if res.error:
        md["error"] = res.error
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
    return md


#: The variable that names, to a bench script and its pyperf workers, the dask worker
#: running them (recorded per run as ``pinbench.worker``; "local" outside a cluster).
WORKER_ENV = "PINBENCH_WORKER"


#: The pid of the process that started this one (``pinbench run``'s for its bench
#: script, a bench script's for pyperf's worker processes, a dask worker's for a
#: compare-branches side): each asks to die with its starter, so a lost dask worker
#: leaves nothing measuring behind the retry.
PARENT_ENV = "PINBENCH_PARENT_PID"


def die_with_starter(*, name_self: bool = True) -> None:
    """Exit when the process that started this one is gone, now or later (see
    :data:`PARENT_ENV`; nothing when it is not set); with ``name_self``, name this
    process in the environment as the starter of the processes it starts (a bench
    script, for pyperf's workers; ``pinbench run`` names itself per child instead, so
    that a run called in-process leaves the caller's environment alone).

    The death signal is asked for here, after exec, not in a ``preexec_fn`` (unsafe in
    a threaded parent such as a dask worker); a parent that died before the request
    shows as a changed parent pid.
    """
    import os

    starter = os.environ.get(PARENT_ENV)
    # (this process named itself before: main() called again in one process, e.g. a test)
    if starter and starter != str(os.getpid()):
        from pinning.backends.libc import die_with_parent

        die_with_parent()
        if str(os.getppid()) != starter:
            sys.exit(f"the process that started this one ({starter}) is gone")
    if name_self:
        os.environ[PARENT_ENV] = str(os.getpid())


def provenance() -> dict[str, int | float | str]:
    """Where a run ran: the dask worker, the host's detected state (kernel, THP mode, KVM's
    MMU, SME_COHERENT: :func:`pinning.harness.calibrate.detect_host`), its free memory,
    and the numba and numpy versions that computed the modelled values.

    Recorded per run beside pyperf's own ``hostname``, ``cpu_model_name`` and
    ``platform``, so that a benchmark run on a cluster says which machine measured it.
    """
    import os
    from importlib.metadata import version

    from pinning.backends.hostmem import available_memory
    from pinning.harness.calibrate import detect_host

    md: dict[str, int | float | str] = {
        "pinbench.worker": os.environ.get(WORKER_ENV) or "local",
        "version.numba": version("numba"),
        "version.numpy": version("numpy"),
        "host.mem_available_gib": round(available_memory() / (1 << 30), 2),
    }
    for m in detect_host():
        md[m.key] = str(m.value) if m.value is not None else "unknown"
    return md


def main(family: str) -> None:
    """Run one benchmark of ``family`` under pyperf (manager or worker process)."""
    import pyperf

    die_with_starter()
    runner = pyperf.Runner(add_cmdline_args=forward_options)
    add_options(runner.argparser, family)
    args = runner.parse_args()
    try:
        config = config_from_args(family, args)
        from pinning.model.costs import load_profile

        profile = load_profile(args.cost_profile)
        backing = preflight(config, what=f"{config.name} ({format_size(config.guest_size)})")
    except InputError as exc:
        print(f"{family}: error: {exc}", file=sys.stderr)
        sys.exit(2)

    metadata: dict[str, int | float | str] = {
        "pinbench.schema": SCHEMA_VERSION,
        "pinbench.version": __version__,
        "pinbench.suite": args.suite,
        "pinbench.family": family,
        "cost.profile": profile.name,
        "cost.source": profile.source,
        **{f"cost.{k}": float(v) for k, v in profile.costs.items()},
        **config.params(),
    }
    if profile.machine:
        metadata["cost.machine"] = profile.machine
    workload = None
    if runner.args.worker or runner.args.in_process:  # the process that runs the benchmark
        t_load = time.perf_counter()
        from pinning.model.lifecycle import build_workload, warm_up

        warm_up()  # the kernels from numba's cache: harness overhead, and no JIT when timed
        metadata["pinbench.load_s"] = time.perf_counter() - t_load
        metadata.update(provenance())  # before t0: harness overhead, not the run's work
        t0 = time.perf_counter()
        if config.backing != "kvm":  # the kvm guest runs its own code
            workload = build_workload(config)
        # Untimed: records the run's events, which are the same in every run.
        metadata.update(run_metadata(config, backing, backing.run(config, profile, workload)))
        metadata["pinbench.events_run_s"] = time.perf_counter() - t0

    def time_func(loops: int) -> float:
        return sum(backing.run(config, profile, workload).measured_s() for _ in range(loops))

    runner.bench_time_func(config.name, time_func, metadata=metadata)

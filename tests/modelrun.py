"""Run the model from a test's arguments the way every pinbench run does: through
:func:`pinning.model.lifecycle.run_lifecycle`, the one lifecycle."""

from __future__ import annotations

from dataclasses import dataclass

from pinning.model.config import BenchConfig
from pinning.model.costs import load_profile
from pinning.model.kernels.engine import finish
from pinning.model.lifecycle import LifecycleResult, run_lifecycle
from pinning.model.state import counters_dict, snapshot
from pinning.model.traces import Trace, workload_from_trace
from pinning.model.units import PAGE_SIZE


@dataclass
class Run:
    """A lifecycle's result with the counters and state read from its arrays."""

    result: LifecycleResult
    counters: dict[str, int]
    snapshot: dict

    @property
    def error(self) -> str | None:
        return self.result.error


def simulate(strategy: str, guest_pages: int, level: str = "4k", *, trace: Trace | None = None,
             pattern: str = "sequential", touch_fraction: float = 1.0, seed: int = 0,
             memlock_limit: int | None = None, teardown: bool = True, vcpus: int = 1,
             kernel: str = "5.17", sme_coherent: str = "yes", mmu: str = "tdp",
             image_pages: int | None = None, prefault: str = "none",
             acceptance: str = "lazy") -> Run:
    """One lifecycle of a guest of ``guest_pages`` pages: a trace, or a pattern, on a
    host of the given kernel version, coherence and MMU.

    ``teardown=False`` stops before VM destroy (the fault_storm family) and fills the
    end-of-run counters of the live VM, as the reference model's ``live`` result does.
    ``image_pages``, ``prefault`` and ``acceptance`` are a guest_memfd strategy's (None:
    the default image size).
    """
    gmem = {} if image_pages is None else {"image_size": image_pages * PAGE_SIZE}
    config = BenchConfig("lifecycle" if teardown else "fault_storm", strategy,
                         guest_pages * PAGE_SIZE, level, vcpus=vcpus, pattern=pattern,
                         touch_fraction=touch_fraction, seed=seed, memlock_limit=memlock_limit,
                         kernel=kernel, sme_coherent=sme_coherent, mmu=mmu, prefault=prefault,
                         acceptance=acceptance, **gmem)
    workload = None if trace is None else workload_from_trace(trace, guest_pages, level)
    res = run_lifecycle(config, load_profile(), workload=workload, keep_state=True)
    if teardown:
        # the lifecycle's own account of its counters agrees with its arrays
        assert res.counters() == counters_dict(res.state)
    else:
        finish(res.state)
    return Run(res, counters_dict(res.state), snapshot(res.state))

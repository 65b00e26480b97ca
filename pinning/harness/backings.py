"""The backing table: where a run's guest memory lives, each behind one small interface.

A :class:`Backing` says which configurations it can run (``validate``), why this
machine cannot run it at all (``unavailable``), how much memory a run needs
(``bytes_needed``) and runs one lifecycle (``run``). :func:`preflight` is the one
check before anything runs -- the CLI, the bench scripts' manager process and
``pinbench run`` all call it -- and imports no numba: the model's kernels load only
when :meth:`Backing.run` does.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING

from pinning.backends.hostmem import check_fits, warm_host
from pinning.model import strategies
from pinning.model.config import BenchConfig, default
from pinning.model.costs import CostProfile
from pinning.model.names import BACKINGS, PHASES, RUN_PHASES, InputError
from pinning.model.state import config_bytes
from pinning.model.units import format_size

if TYPE_CHECKING:
    from pinning.backends.realmem import GuestMemory
    from pinning.model.lifecycle import LifecycleResult
    from pinning.model.strategies import Strategy
    from pinning.model.workloads import Phase, Workload

#: Idle seconds before a "cold" value: this VM's host reclaims idle free memory after
#: a few seconds (HOST.md), so the guest's memory is then backed afresh by the host.
COLD_WAIT_S = 10.0


class Backing:
    """Where guest memory lives for a run (one entry of :data:`TABLE`)."""

    name = ""
    #: what a benchmark's value is on this backing, in the words of names.TIME_KINDS
    #: (metadata ``measured.what``)
    measures = ""

    def validate(self, config: BenchConfig) -> None:
        """Refuse a configuration this backing cannot run (one line, InputError)."""

    def unavailable(self, config: BenchConfig | None = None) -> str | None:
        """Why this machine cannot run the backing at all, or (given ``config``) that
        configuration on it; None when it can. The harness skips a benchmark with this
        line (preflight: InputError)."""
        return None

    def bytes_needed(self, config: BenchConfig, workload: Workload | None = None) -> int:
        """Memory one run needs: the model's arrays and workload, plus any real guest RAM."""
        return config_bytes(config, workload)

    def run(self, config: BenchConfig, profile: CostProfile,
            workload: Workload | None = None) -> LifecycleResult:
        """One timed, counted lifecycle of ``config`` (``workload`` replaces its pattern)."""
        raise NotImplementedError


def prepare_host(config: BenchConfig) -> None:
    """Right before a measured value of a real backing: warm the host, or let it go cold."""
    if config.host == "cold":
        time.sleep(COLD_WAIT_S)
    else:
        warm_host(config.guest_size)


class Sim(Backing):
    """The model's arrays only: frames are indices, so a 1 TiB guest fits here."""

    name = "sim"
    measures = ("simulator speed: wall time of pinbench's own bookkeeping (sim backing), "
                "not a cost of pinning")

    def validate(self, config: BenchConfig) -> None:
        if config.host != "warm":
            raise InputError("host 'cold' needs a real backing (real or kvm): the sim "
                             "touches no guest memory")

    def run(self, config, profile, workload=None):
        from pinning.model.lifecycle import run_lifecycle

        return run_lifecycle(config, profile, workload=workload)


class _RealRam:
    """Real guest RAM beside the bookkeeping (the model's GuestRam protocol)."""

    def __init__(self, mem: GuestMemory) -> None:
        self.mem = mem

    def startup(self, strategy: Strategy) -> str | None:
        # From user space a VMM can pin only all of its memory at once, before the guest
        # runs (populate + mlock): what a strategy that pins at startup does.
        if "startup" in strategy.pinning_phases:
            self.mem.populate()
            return self.mem.lock()
        return None

    def touch(self, phase: Phase, unit_pages: int) -> None:
        self.mem.touch(phase.units, phase.bounds, unit_pages)

    def teardown(self) -> None:
        self.mem.release()


def _real_levels(config: BenchConfig) -> None:
    from pinning.backends.realmem import REAL_LEVELS

    if config.level not in REAL_LEVELS:
        raise InputError(f"backing {config.backing!r} needs level "
                         f"{' or '.join(REAL_LEVELS)} (host pages of 4 KiB or transparent "
                         f"huge pages), not {config.level!r}")
    if config.workload == "remap":
        raise InputError(f"the remap family runs on the sim backing only, not "
                         f"{config.backing!r}")
    if config.memlock_limit is not None:
        raise InputError(f"memlock_limit runs on the sim only: backing {config.backing!r} "
                         f"pins with this process's own mlock, under its own RLIMIT_MEMLOCK")


class Real(Backing):
    """The model's bookkeeping plus guest RAM as a real anonymous mapping (DESIGN §3, 2)."""

    name = "real"
    measures = ("measured: wall time of pinbench's bookkeeping plus real host memory: "
                "populate + mlock at upfront startup, the guest's first touches as real host "
                "page faults (real backing)")

    def validate(self, config: BenchConfig) -> None:
        _real_levels(config)
        if strategies.get(config.strategy).guest_memfd:
            # its guest RAM is an anonymous mapping: a guest_memfd needs a VM to bind to
            raise InputError(f"backing 'real' has no guest_memfd: strategy "
                             f"{config.strategy!r} runs on the sim or, for real, on kvm")
        if config.workload == "convert":
            raise InputError("backing 'real' does not run the convert family (no guest "
                             "conversions without a guest): use the sim or kvm")

    def bytes_needed(self, config, workload=None):
        return config.guest_size + config_bytes(config, workload)

    def run(self, config, profile, workload=None):
        from pinning.backends.realmem import GuestMemory
        from pinning.model.lifecycle import run_lifecycle

        prepare_host(config)
        with GuestMemory(config.guest_size, config.level) as mem:
            return run_lifecycle(config, profile, workload=workload, ram=_RealRam(mem))


class Kvm(Backing):
    """A real KVM guest through /dev/kvm (DESIGN §3, 3), beside the model's prediction.

    A guest_memfd strategy's guest takes its RAM from a guest_memfd (pinning.backends.kvm
    .run_vm). The VM's phases map onto the lifecycle's: startup = VM creation + populate
    and mlock (a strategy that pins at startup) or the guest_memfd's prefault + the first
    guest instruction; access = the guest's first touch; convert (a family that runs
    that phase) = the discard of convert_fraction of guest RAM + the guest's re-touch of
    it; teardown = closing every fd and unmapping.
    """

    name = "kvm"
    measures = ("measured: wall time of a real KVM guest through /dev/kvm: VM creation "
                "(with its guest_memfd for a guest_memfd strategy), populate + mlock "
                "(upfront) or fallocate (guest_memfd prefault), first guest instruction, "
                "guest touching its memory, the conversion (discard of a range, PUNCH_HOLE "
                "or MADV_DONTNEED, and the guest's re-touch of it; convert family), "
                "teardown (kvm backing)")

    def __init__(self) -> None:
        self._predictions: dict[tuple, LifecycleResult] = {}

    def validate(self, config: BenchConfig) -> None:
        from pinning.backends.kvm import GUEST_PATTERNS

        _real_levels(config)
        if config.pattern not in GUEST_PATTERNS or config.layout != "slices":
            raise InputError(f"backing 'kvm' runs patterns {' and '.join(GUEST_PATTERNS)} "
                             f"with layout slices, not {config.pattern!r}/{config.layout!r}")
        if config.touch_fraction <= 0:
            raise InputError("backing 'kvm' needs touch_fraction > 0")
        # Its guest is a default VM: no encrypted launch, no memory acceptance. A value
        # the guest would ignore must not label a benchmark that measures the default.
        for key in ("image_size", "acceptance"):
            if getattr(config, key) != default(key):
                raise InputError(f"backing 'kvm' runs a default VM (no SNP launch image, no "
                                 f"memory acceptance): {key} applies to the sim and real "
                                 "backings only")

    def unavailable(self, config: BenchConfig | None = None) -> str | None:
        from pinning.backends.kvm import gmem_unavailable, kvm_unavailable

        reason = kvm_unavailable()
        if reason:
            return f"needs /dev/kvm: {reason}"
        if config is not None and strategies.get(config.strategy).guest_memfd:
            # found by running every step of a small gmem guest (cached), e.g. prefault
            # "map" where this KVM refuses KVM_PRE_FAULT_MEMORY
            reason = gmem_unavailable(config.prefault)
            if reason:
                return f"needs guest_memfd on /dev/kvm: {reason}"
        return None

    def bytes_needed(self, config, workload=None):
        return config.guest_size + config_bytes(replace(config, backing="sim", host="warm"),
                                                workload)

    def predict(self, config: BenchConfig, profile: CostProfile) -> LifecycleResult:
        """The model's lifecycle of the same configuration (cached: it is deterministic)."""
        from pinning.model.lifecycle import run_lifecycle

        key = (config, profile.name, profile.source, tuple(sorted(profile.costs.items())))
        if key not in self._predictions:
            self._predictions.clear()
            self._predictions[key] = run_lifecycle(
                replace(config, backing="sim", host="warm"), profile)
        return self._predictions[key]

    def run(self, config, profile, workload=None):
        from pinning.backends import kvm
        from pinning.model.lifecycle import LifecycleResult

        if workload is not None:
            raise InputError("backing 'kvm' runs its own guest code, not a trace")
        model = self.predict(config, profile)
        converts = "convert" in RUN_PHASES[config.workload]
        prepare_host(config)
        vm = kvm.run_vm(config.guest_size, strategy=config.strategy,
                        backing="thp" if config.level == "2m" else "4k", vcpus=config.vcpus,
                        touch_fraction=config.touch_fraction, pattern=config.pattern,
                        seed=config.seed, host=config.host, prefault=config.prefault,
                        punch_fraction=config.convert_fraction if converts else 0.0)
        # The VM runs startup, access and teardown whatever the family; convert only for
        # a family that runs that phase.
        ran = {"startup": vm.startup_ns, "access": vm.touch_ns, "teardown": vm.teardown_ns}
        if converts:
            ran["convert"] = vm.convert_ns
        return LifecycleResult(
            config, elapsed_ns={p: ran[p] for p in PHASES if p in ran},
            events=model.events, model_ns=model.model_ns, vcpu=model.vcpu, error=vm.error,
            ops_done=vm.pages_touched + vm.pages_retouched, backing=vm.as_dict())


#: Every backing, by name (names.BACKINGS, in that order).
TABLE: dict[str, Backing] = {b.name: b for b in (Sim(), Real(), Kvm())}
assert tuple(TABLE) == BACKINGS


def validate(config: BenchConfig) -> Backing:
    """Refuse a configuration no backing, or not its backing, can run; its backing."""
    config.check()
    backing = TABLE[config.backing]
    backing.validate(config)
    return backing


def preflight(config: BenchConfig, workload: Workload | None = None,
              what: str | None = None) -> Backing:
    """The one check before a run: valid for its backing, fits in memory, backing available.

    InputError (one line) otherwise; nothing is allocated and no kernel is loaded.
    """
    backing = validate(config)
    check_fits(backing.bytes_needed(config, workload),
               what or f"{config.name} ({format_size(config.guest_size)} guest)")
    reason = backing.unavailable(config)
    if reason:
        raise InputError(reason)
    return backing

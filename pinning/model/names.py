"""The names every layer shares: counters, phases, families, patterns, backings, limits.

Plain Python (no numpy, no numba), so that the CLI, the bench manager process and the
analysis layer can use them without importing the model's kernels. Each name is defined
here once; strategies have their own registry (:mod:`pinning.model.strategies`).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user: reported as one line and exit status 2."""


#: The model's event counters (DESIGN §1a names), in the order of the engine's array.
COUNTERS: tuple[str, ...] = (
    "npf_exits",
    "prefetched_pages",
    "frames_zeroed",
    "host_faults",
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
    # guest_memfd (SEV-SNP); 0 for the strategies that pin
    "rmpupdates",
    "psc_exits",
    "attr_pages",
    "launch_update_pages",
)

#: Phases a lifecycle may run, in order.
PHASES: tuple[str, ...] = ("startup", "access", "remap", "convert", "teardown")
#: Phases that run the vCPU model (guest accesses; the remap and convert phases re-fault).
VCPU_PHASES: tuple[str, ...] = ("access", "remap", "convert")

#: Workload family -> the phases it runs (a phase nobody measures or needs before a
#: measured one is skipped: a 1 TiB startup benchmark needs no fault storm).
RUN_PHASES: dict[str, tuple[str, ...]] = {
    "startup": ("startup",),
    "fault_storm": ("startup", "access"),
    "remap": ("startup", "access", "remap"),
    "teardown": ("startup", "access", "teardown"),
    "lifecycle": ("startup", "access", "teardown"),
    "boot": ("startup", "access"),
    "convert": ("startup", "access", "convert"),
}
#: Workload family -> the phases its measured value covers.
MEASURED_PHASES: dict[str, tuple[str, ...]] = {
    "startup": ("startup",),
    "fault_storm": ("access",),
    "remap": ("remap",),
    "teardown": ("teardown",),
    "lifecycle": ("startup", "access", "teardown"),
    "boot": ("startup", "access"),
    "convert": ("convert",),
}
#: The workload families, in report order (one bench/<family>.py script each).
FAMILIES: tuple[str, ...] = tuple(RUN_PHASES)

#: Access patterns of a workload (docs/model.md, "Patterns").
PATTERNS: tuple[str, ...] = ("sequential", "random", "hotset", "zipf", "strided", "boot")
#: Families that run one pattern only, and the pattern (their default; other families
#: may run it too, e.g. ``simulate --pattern boot``).
FAMILY_PATTERN: dict[str, str] = {"boot": "boot"}
#: How a workload's vCPUs share the guest: own contiguous slices, or one stream round-robin.
LAYOUTS: tuple[str, ...] = ("slices", "shared")
#: Operations of a trace file (index = the code a Trace stores): a guest access, a VMM
#: remap, a conversion of a range to shared or to private (its ``to`` column).
TRACE_OPS: tuple[str, ...] = ("access", "remap", "convert")
#: The directions of a ``convert`` operation.
CONVERT_TO: tuple[str, ...] = ("shared", "private")

#: Where guest memory lives: the sim's arrays only; a real anonymous mapping beside the
#: sim's bookkeeping (DESIGN §3 method 2); a real KVM guest through /dev/kvm (method 3).
BACKINGS: tuple[str, ...] = ("sim", "real", "kvm")
#: The three kinds of time (DESIGN §3), never mixed up: kind -> (label, what it is).
#: Every column, axis, table and section that shows a time says which kind it is.
TIME_KINDS: dict[str, tuple[str, str]] = {
    "modelled": ("modelled", "event counts x cost profile: the cost a kernel pays"),
    "measured": ("measured", "wall time of real memory or a real KVM guest on this host"),
    "simulator": ("simulator speed", "wall time of pinbench's own bookkeeping on the sim "
                                     "backing: not a cost of pinning"),
}
#: Backing -> the kind of time its wall time is. Real memory and a real KVM guest are
#: measured; the sim's wall time is only how fast pinbench models (what gates
#: pinbench's own code in CI), so it must never be read as a cost of pinning.
WALL_KINDS: dict[str, str] = {"sim": "simulator", "real": "measured", "kvm": "measured"}


def wall_kind(backing: str | None) -> str:
    """The kind of time (a TIME_KINDS key) of a benchmark's wall time on ``backing``.

    None (results from before backings existed, which all ran on the sim) is the sim.
    """
    if backing is None or backing != backing:  # None or NaN: no backing recorded
        return WALL_KINDS["sim"]
    if backing not in WALL_KINDS:
        raise InputError(f"backing {backing!r} is not one of {', '.join(WALL_KINDS)}")
    return WALL_KINDS[backing]


def time_label(kind: str) -> str:
    """The words a kind of time is shown with: 'modelled', 'measured', 'simulator speed'."""
    return TIME_KINDS[kind][0]


#: Host memory before each measured value of a real backing: warmed (populated and freed
#: right before) or cold (left idle so this VM's host has reclaimed it; HOST.md).
HOST_STATES: tuple[str, ...] = ("warm", "cold")

#: How a guest_memfd strategy's memory is faulted in before the guest runs: not at all
#: (each page at its first touch), allocated with fallocate (folios only; zeroed and
#: made private at first touch), or mapped with KVM_PRE_FAULT_MEMORY (every fault moved
#: into launch). Other strategies take "none" only.
PREFAULTS: tuple[str, ...] = ("none", "fallocate", "map")
#: When a guest with unaccepted memory accepts it (SNP/TDX): as it first uses each
#: range, or all of it at boot. Matters for guest_memfd strategies and the boot pattern.
ACCEPTANCES: tuple[str, ...] = ("lazy", "eager")
#: Whether the CPU keeps caches coherent across encryption domains (X86_FEATURE_SME_COHERENT).
SME_COHERENT: tuple[str, ...] = ("yes", "no")
#: KVM's MMU for nested page faults: the TDP MMU (an SEV host) or the legacy/shadow MMU.
MMUS: tuple[str, ...] = ("tdp", "shadow")

#: Most vCPUs a workload, the vCPU model or the kvm guest runs.
MAX_VCPUS = 64
#: Share of MemAvailable a run may plan to use: the rest is headroom for the interpreter,
#: numba, the page cache and the measurement itself.
MEMORY_HEADROOM = 0.85
#: Version of the results metadata (``pinbench.schema``); 2: kernel variants, host
#: parameters and the counting rules of docs/model.md (issue #11).
SCHEMA_VERSION = 2
#: Older schemas the results loader still reads.
READABLE_SCHEMAS: tuple[int, ...] = (1, 2)


def choice(what: str, value: object, allowed: tuple) -> None:
    """Refuse ``value`` unless it is one of ``allowed``, naming them all."""
    if value not in allowed:
        raise InputError(f"{what} {value!r} is not one of {', '.join(map(str, allowed))}")


"""Calibrate a cost profile: measure on this machine the costs user space can measure.

Each measured value is the median of several repetitions, the host warmed right
before each (HOST.md: idle memory of this VM goes back to its hypervisor, and
touching it again costs 2-5 us more per page). What cannot be executed from
user space here (SEV's VM_PAGE_FLUSH, WBINVD, KVM's per-VM lock) is carried
over from the default profile, and every key says which it is and why.

* ``host_fault_ns`` / ``zero_byte_ns``: MADV_POPULATE_WRITE of a fresh 4 KiB-backed
  mapping gives t4 per 4 KiB fault, of a fresh 2 MiB-aligned THP mapping t2 per 2 MiB
  fault; ``t4 = f + 4096 z`` and ``t2 = f + 2 MiB z`` solved per repetition.
* ``pin_ns`` / ``unpin_ns``: mlock / munlock of populated memory, per page
  (the user-space analogue of a long-term pin).
* ``clflush_page_ns``: MFENCE + CLFLUSH(OPT) of the 64 lines + MFENCE, per page just written.
* ``guest_touch_ns``: one word written to an already-present page, stride 4 KiB.
* ``npf_exit_ns`` / ``spte_prefetch_ns``: a real KVM guest (:mod:`pinning.backends.kvm`):
  per demand fault ``npf + host_fault + 4096 zero_byte``; per upfront fault (populated
  memory, the shadow MMU maps neighbours) ``npf + k spte_prefetch``.
* ``[spread] fault_cv``: coefficient of variation of single first-touch faults timed
  with the TSC (:func:`pinning.backends.cpu.fault_cycles`); ``lock_cv`` is carried.
* ``[host]``: SME_COHERENT (CPUID), the THP mode, KVM's MMU and the kernel, detected.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import re
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from pinning.backends import libc
from pinning.backends.hostmem import warm_host
from pinning.model.costs import (
    COST_KEYS,
    HOST_KEYS,
    SPREAD_KEYS,
    CostProfile,
    load_profile,
    profile_toml,
)
from pinning.model.names import InputError
from pinning.model.state import anon_array
from pinning.model.units import PAGE_SIZE

MIB = 1 << 20
HUGE_PAGE = 2 * MIB
#: Share of the largest per-fault latencies dropped as interrupts before fault_cv.
INTERRUPT_SHARE = 0.001
#: Least share of a THP mapping that must come as 2 MiB pages for the solve.
MIN_THP_SHARE = 0.5

# What the [host] detection and the THP check read (module constants: tests point them at
# fake files).
CPUINFO = "/proc/cpuinfo"
SMAPS_ROLLUP = "/proc/self/smaps_rollup"
MEMINFO = "/proc/meminfo"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
SYS_MODULE = "/sys/module"

#: Keys user space cannot measure on this machine, and why (each is carried from the default).
NOT_MEASURABLE: dict[str, str] = {
    "page_flush_ns": "SEV's VM_PAGE_FLUSH needs an SEV host and ring 0 (no SEV here)",
    "wbinvd_ns": "WBINVD is a privileged (ring-0) instruction",
    "lock_hold_ns": "KVM's per-VM pinning lock is inside the kernel (the RFC's fault path)",
    "lock_cv": "the hold times of KVM's per-VM lock are inside the kernel",
    "rmpupdate_ns": "RMPUPDATE is a ring-0 instruction of an SEV-SNP host (no SNP here)",
    "psc_exit_ns": "an SNP guest's page-state-change requests need an SEV-SNP host",
    "psp_command_ns": "SNP_LAUNCH_UPDATE is a command of an SEV-SNP host's PSP",
    "attr_store_ns": "KVM_SET_MEMORY_ATTRIBUTES is not offered by this host's default VMs "
                     "(KVM_CAP_MEMORY_ATTRIBUTES 0, HOST.md)",
}
#: Every key a calibration writes a value for, in the order of the profile.
PROFILE_VALUE_KEYS: tuple[str, ...] = COST_KEYS + SPREAD_KEYS


@dataclass
class Measurement:
    """How one key of a calibrated profile was obtained.

    ``key`` is a :data:`COST_KEYS` or :data:`SPREAD_KEYS` entry (``value`` in ns per event,
    or a coefficient of variation), or ``host.<name>`` of a :data:`HOST_KEYS` entry
    (``value`` a bool or str; None when it was not detected, and then not written).
    """

    key: str
    value: float | bool | str | None  # what is written to the profile
    measured: bool  # False: carried from the default profile (host: not detected)
    how: str  # one line: method and conditions, or why it was carried over
    spread: tuple[float, float] | None = None  # min-max of the repetitions

    @property
    def is_host(self) -> bool:
        return self.key.startswith("host.")

    @property
    def status(self) -> str:
        if self.is_host:
            return "detected" if self.measured else "not detected"
        return "measured" if self.measured else "carried"

    def value_text(self) -> str:
        if self.value is None:
            return "-"
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, str):
            return self.value
        return _fmt(self.value)


@dataclass(frozen=True)
class _Plan:
    """Sizes and repetitions of one calibration."""

    host_bytes: int  # buffer of every host-memory measurement (a multiple of 2 MiB)
    reps: int
    guest_bytes: int  # KVM guest of the npf_exit_ns / spte_prefetch_ns derivation
    kvm_reps: int
    flush_chunk: int = 256 * 1024  # written, then flushed while still in L2


_FULL = _Plan(host_bytes=512 * MIB, reps=7, guest_bytes=512 * MIB, kvm_reps=5)
_QUICK = _Plan(host_bytes=32 * MIB, reps=3, guest_bytes=64 * MIB, kvm_reps=3)


class _NotMeasured(Exception):
    """A cost this run could not measure (the message says why)."""


# ---------------------------------------------------------------- helpers


def _populate(a: np.ndarray) -> None:
    libc.populate_write(a.ctypes.data, a.nbytes, "madvise(MADV_POPULATE_WRITE)")


def _timed_ns(fn: Callable[[], object]) -> int:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


def _fmt(ns: float) -> str:
    """A value with the digits that mean something (noise is several %)."""
    a = abs(ns)
    if a >= 100:
        return f"{ns:.0f}"
    if a >= 10:
        return f"{ns:.1f}"
    if a >= 1 or a == 0:
        return f"{ns:.2f}"
    return f"{ns:.3g}"


def _round(x: float) -> float:
    """``x`` as written to the profile: 2 decimals, at least 4 significant digits."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(2, 3 - math.floor(math.log10(abs(x)))))


def _size(nbytes: int) -> str:
    if nbytes >= 1 << 30 and nbytes % (1 << 30) == 0:
        return f"{nbytes >> 30} GiB"
    return f"{nbytes >> 20} MiB"


def _summary(values: Sequence[float]) -> tuple[float, tuple[float, float], str]:
    """Median (rounded as written to the profile), min-max, and 'median of N (min-max)'."""
    med = _round(statistics.median(values))
    lo, hi = min(values), max(values)
    return med, (lo, hi), f"median of {len(values)} ({_fmt(lo)}-{_fmt(hi)})"


def _measured(key: str, values: Sequence[float], method: str) -> Measurement:
    med, spread, stats = _summary(values)
    if not (math.isfinite(med) and med > 0):
        raise _NotMeasured(f"{method}: got a median of {med!r}, not a positive {key}")
    return Measurement(key, med, True, f"{method}, {stats}", spread)


def _default_value(default: CostProfile, key: str) -> float:
    return default.costs[key] if key in default.costs else default.spread[key]


def _carried(key: str, default: CostProfile, reason: str) -> Measurement:
    return Measurement(key, _default_value(default, key), False,
                       f"{reason}; the default profile's value")


def _read(path: str) -> str | None:
    """The text of ``path``; None if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _cpu_model() -> str:
    for line in (_read(CPUINFO) or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _cpu_flags() -> set[str] | None:
    """The first CPU's flags in /proc/cpuinfo; None if it cannot be read or has none."""
    for line in (_read(CPUINFO) or "").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def machine_description() -> str:
    """``hostname (CPU model, Linux release)`` of this machine."""
    return f"{socket.gethostname()} ({_cpu_model()}, {platform.system()} {platform.release()})"


# ---------------------------------------------------------------- host faults and zeroing


def _populate_4k(plan: _Plan) -> list[float]:
    """t4: ns per 4 KiB fault of MADV_POPULATE_WRITE on fresh 4 KiB-backed mappings."""
    n = plan.host_bytes
    values = []
    for _ in range(plan.reps):
        warm_host(n)
        a = anon_array(n // 8, np.int64)  # fresh: no page present yet
        values.append(_timed_ns(lambda a=a: _populate(a)) / (n // PAGE_SIZE))
        del a
    return values


def _thp_mode() -> str | None:
    """The bracketed word of /sys/kernel/mm/transparent_hugepage/enabled; None if absent."""
    m = re.search(r"\[(\w+)\]", _read(THP_ENABLED) or "")
    return m.group(1) if m else None


def _anon_huge_bytes() -> tuple[int, str] | None:
    """(AnonHugePages in bytes, where read): this process's (smaps_rollup) where the kernel
    has it, else the whole system's (meminfo); None if neither can be read."""
    for path in (SMAPS_ROLLUP, MEMINFO):
        m = re.search(r"^AnonHugePages:\s+(\d+)\s*kB", _read(path) or "", re.MULTILINE)
        if m:
            return int(m.group(1)) * 1024, path
    return None


def _populate_2m(plan: _Plan, t4_ns: float) -> tuple[list[float], str]:
    """t2: ns per 2 MiB THP fault of MADV_POPULATE_WRITE on fresh 2 MiB-aligned mappings
    advised MADV_HUGEPAGE, and how much THP was granted.

    AnonHugePages before and after each populate counts the 2 MiB pages granted; a
    2 MiB range the kernel gave as 4 KiB pages is taken off at ``t4_ns`` per page.
    """
    from pinning.backends.realmem import GuestMemory

    mode = _thp_mode()
    if mode is None:
        raise _NotMeasured(f"no transparent huge pages in this kernel ({THP_ENABLED} missing), "
                           "so no 2 MiB fault to separate zeroing from the fault")
    if mode == "never":
        raise _NotMeasured(f"transparent huge pages are disabled ({THP_ENABLED}: [never]), "
                           "so no 2 MiB fault to separate zeroing from the fault")
    n = plan.host_bytes
    ranges = n // HUGE_PAGE
    values, shares, where = [], [], ""
    for _ in range(plan.reps):
        warm_host(n)
        mem = GuestMemory(n, "2m")
        try:
            before = _anon_huge_bytes()
            elapsed = _timed_ns(mem.populate)
            after = _anon_huge_bytes()
        finally:
            mem.release()
        if before is None or after is None:
            raise _NotMeasured(f"cannot read AnonHugePages ({SMAPS_ROLLUP}, {MEMINFO}) to "
                               "check that THP was granted")
        where = after[1]
        huge = min(ranges, max(0, (after[0] - before[0]) // HUGE_PAGE))
        if huge < MIN_THP_SHARE * ranges:
            raise _NotMeasured(f"THP not granted: {huge} of {ranges} 2 MiB ranges of a "
                               f"MADV_HUGEPAGE mapping came as huge pages (AnonHugePages of "
                               f"{where}; THP mode [{mode}])")
        small = (ranges - huge) * (HUGE_PAGE // PAGE_SIZE)
        values.append((elapsed - small * t4_ns) / huge)
        shares.append(huge / ranges)
    granted = (f"{min(shares):.0%}" if min(shares) == max(shares)
               else f"{min(shares):.0%}-{max(shares):.0%}")
    note = (f"THP [{mode}], granted for {granted} of the 2 MiB ranges (AnonHugePages of "
            f"{where} before and after)")
    if min(shares) < 1:
        note += "; ranges given as 4 KiB pages taken off at t4 each"
    return values, note


def _solve_fault_zero(t4: Sequence[float], t2: Sequence[float]
                      ) -> tuple[list[float], list[float]]:
    """Per repetition i: (f_i, z_i) of t4_i = f + 4096 z and t2_i = f + 2 MiB z."""
    z = [(b - a) / (HUGE_PAGE - PAGE_SIZE) for a, b in zip(t4, t2, strict=True)]
    f = [a - PAGE_SIZE * zi for a, zi in zip(t4, z, strict=True)]
    return f, z


def _fault_and_zero(plan: _Plan) -> list[Measurement]:
    """host_fault_ns and zero_byte_ns from 4 KiB and 2 MiB populate faults."""
    t4 = _populate_4k(plan)
    try:
        t2, thp = _populate_2m(plan, statistics.median(t4))
    except _NotMeasured as exc:
        raise _NotMeasured(f"{exc} (4 KiB populate measured {_fmt(statistics.median(t4))} ns "
                           "per fault, fault and zeroing together)") from None
    f, z = _solve_fault_zero(t4, t2)
    size = _size(plan.host_bytes)
    method = (f"solved per repetition from t4 = f + 4096 z and t2 = f + 2 MiB z, t4 = "
              f"MADV_POPULATE_WRITE of a fresh 4 KiB-backed mapping per 4 KiB fault "
              f"(median {_fmt(statistics.median(t4))} ns), t2 = of a fresh 2 MiB-aligned "
              f"MADV_HUGEPAGE mapping per 2 MiB fault (median {_fmt(statistics.median(t2))} "
              f"ns; {thp}), {size} each, warm host")
    zero = _measured("zero_byte_ns", z, f"z = (t2 - t4) / (2 MiB - 4 KiB): {method}")
    f_med, f_spread, f_stats = _summary(f)
    how = f"f = t4 - 4096 z: {method}, {f_stats}"
    if not math.isfinite(f_med):
        raise _NotMeasured(f"{how}: not a number")
    if f_med < 0:  # zeroing 4 KiB at the 2 MiB rate costs more than the whole 4 KiB fault
        how += f"; clamped at 0 from {_fmt(f_med)} (the 4 KiB fault is zeroing-bound here)"
        f_med = 0.0
    return [Measurement("host_fault_ns", f_med, True, how, f_spread), zero]


# ---------------------------------------------------------------- other host costs


def _pin_unpin(plan: _Plan) -> tuple[list[float], list[float]]:
    """ns per 4 KiB page of mlock, then munlock, of populated 4 KiB-backed memory."""
    n = plan.host_bytes
    pins, unpins = [], []
    for _ in range(plan.reps):
        warm_host(n)
        a = anon_array(n // 8, np.int64)
        _populate(a)
        addr = a.ctypes.data
        t0 = time.perf_counter_ns()
        rc = libc.mlock(addr, n)
        t1 = time.perf_counter_ns()
        libc.check(rc, "mlock")
        t2 = time.perf_counter_ns()
        rc = libc.munlock(addr, n)
        t3 = time.perf_counter_ns()
        libc.check(rc, "munlock")
        pins.append((t1 - t0) / (n // PAGE_SIZE))
        unpins.append((t3 - t2) / (n // PAGE_SIZE))
        del a
    return pins, unpins


def _clflush(plan: _Plan) -> tuple[list[float], str]:
    """ns per 4 KiB page of fence + flushing its 64 just-written lines + fence."""
    from pinning.backends import cpu as CK

    if not CK.CAN_FLUSH:
        raise _NotMeasured("the JIT is off (NUMBA_DISABLE_JIT): plain Python cannot flush")
    flags = _cpu_flags() or set()
    # The intrinsics are x86 instructions: LLVM aborts the process on a CPU without them.
    if platform.machine() not in ("x86_64", "AMD64") or not flags & {"clflush", "clflushopt"}:
        raise _NotMeasured(f"this CPU ({platform.machine()}) has no CLFLUSH/CLFLUSHOPT")
    use_opt = "clflushopt" in flags
    flush = CK.flush_pages_clflushopt if use_opt else CK.flush_pages_clflush
    insn = "CLFLUSHOPT" if use_opt else "CLFLUSH"
    n = plan.host_bytes
    chunk = plan.flush_chunk // 8
    a = anon_array(n // 8, np.int64)
    _populate(a)
    CK.dirty_lines(a, 0, chunk, 0)  # compile (or load from cache) outside the timing
    flush(a, 0, chunk)
    values = []
    for rep in range(plan.reps + 1):  # the first pass is discarded (TLB, allocator state)
        warm_host(n)
        # A timed call costs ~1 us beyond its flushes (dispatch, clock reads).
        call = statistics.median(_timed_ns(lambda: flush(a, 0, 0)) for _ in range(9))
        total = 0.0
        for start in range(0, a.shape[0], chunk):
            # Written just before, so the page's lines are dirty in L1/L2 (as after a zeroing).
            CK.dirty_lines(a, start, start + chunk, rep)
            total += _timed_ns(lambda s=start: flush(a, s, s + chunk)) - call
        if rep:
            values.append(total / (n // PAGE_SIZE))
    method = (f"MFENCE + {insn} of its 64 lines + MFENCE per 4 KiB page just written "
              f"(dirty), {plan.flush_chunk >> 10} KiB batches over {_size(n)}, warm host")
    return values, method


def _guest_touch(plan: _Plan) -> tuple[list[float], str]:
    """ns per page of writing one word to each already-present page (stride 4 KiB)."""
    from pinning.backends import cpu as CK

    n = plan.host_bytes
    stride = PAGE_SIZE // 8
    a = anon_array(n // 8, np.int64)
    _populate(a)
    if numba.config.DISABLE_JIT:
        # A Python loop would time the interpreter; NumPy's strided store is a C loop.
        def touch() -> None:
            a[::stride] = 1

        how = "NumPy strided store (JIT off)"
    else:
        def touch() -> None:
            CK.touch_pages(a, stride)

        how = "numba loop"
    touch()  # compile, and leave nothing to fault
    values = []
    for _ in range(plan.reps):
        warm_host(n)
        values.append(_timed_ns(touch) / (n // PAGE_SIZE))
    return values, (f"one 8-byte store per already-present 4 KiB-backed page, stride 4 KiB, "
                    f"{how}, {_size(n)}, warm host")


# ---------------------------------------------------------------- fault_cv


def _per_fault_ns(cycles: np.ndarray, loop_cycles: int, loop_ns: int) -> np.ndarray:
    """Per-fault cycle counts in ns, at the loop's own rate (its ns over its cycles)."""
    if loop_cycles <= 0 or loop_ns <= 0:
        raise _NotMeasured(f"the fault loop took {loop_cycles} cycles in {loop_ns} ns")
    return np.asarray(cycles, dtype=np.float64) * (loop_ns / loop_cycles)


def _cv_without_interrupts(per_fault_ns: np.ndarray) -> tuple[float, float, int]:
    """(std / mean, mean, number dropped) of the per-fault latencies without the largest
    :data:`INTERRUPT_SHARE` (a timer interrupt or a preemption inside one fault)."""
    values = np.sort(np.asarray(per_fault_ns, dtype=np.float64))
    drop = math.ceil(INTERRUPT_SHARE * values.size)
    kept = values[:values.size - drop]
    if kept.size < 2:
        raise _NotMeasured(f"{values.size} fault latencies are too few for a spread")
    mean = float(kept.mean())
    if not mean > 0:
        raise _NotMeasured(f"the mean fault latency is {mean!r} ns")
    return float(kept.std()) / mean, mean, drop


def _fault_latencies(plan: _Plan) -> list[np.ndarray]:
    """Per repetition, the ns of each first-touch fault of fresh 4 KiB pages, timed one by
    one with the TSC (converted at the rate of the whole loop, timed with perf_counter_ns)."""
    from pinning.backends import cpu as CK

    if not CK.CAN_READ_TSC:
        raise _NotMeasured("the JIT is off (NUMBA_DISABLE_JIT): plain Python cannot read "
                           "the cycle counter around one store")
    n = plan.host_bytes
    pages = n // PAGE_SIZE
    cycles = anon_array(pages, np.int64)
    _populate(cycles)  # its own faults stay out of the timing
    CK.fault_cycles(anon_array(4 * CK.WORDS_PER_PAGE, np.int64), cycles[:4])  # compile
    out = []
    for _ in range(plan.reps):
        warm_host(n)
        a = anon_array(n // 8, np.int64)
        t0 = time.perf_counter_ns()
        loop_cycles = CK.fault_cycles(a, cycles)
        loop_ns = time.perf_counter_ns() - t0
        out.append(_per_fault_ns(cycles, int(loop_cycles), loop_ns))
        del a
    return out


def _fault_cv(plan: _Plan) -> Measurement:
    reps = _fault_latencies(plan)
    cvs, means, dropped = [], [], 0
    for ns in reps:
        cv, mean, dropped = _cv_without_interrupts(ns)
        cvs.append(cv)
        means.append(mean)
    method = (f"std / mean of {reps[0].size} single first-touch faults of fresh 4 KiB pages "
              f"(one store each, cycles read around it, converted to ns at the loop's "
              f"TSC rate; mean {_fmt(statistics.median(means))} ns), the top "
              f"{INTERRUPT_SHARE:.1%} ({dropped}) dropped as interrupts, "
              f"{_size(plan.host_bytes)}, warm host")
    return _measured("fault_cv", cvs, method)


# ---------------------------------------------------------------- KVM


def _kvm_faults(plan: _Plan, host_fault: Measurement, zero_byte: Measurement,
                default: CostProfile, mmu: str | None = None) -> list[Measurement]:
    """npf_exit_ns and spte_prefetch_ns from a real KVM guest (4 KiB backing, 1 vCPU).

    Under demand every page faults once (KVM's ``pf_taken``), and each fault pays the
    exit, the host fault that allocates and zeroes the frame, and re-entry:
    ``demand_ns = npf + host_fault + 4096 zero_byte``. On populated memory (upfront) the
    shadow MMU maps up to 7 present neighbours per fault, so ``upfront_ns = npf + k
    spte_prefetch`` with ``k = pages / pf_taken - 1``. Under a TDP MMU (k < 1) nothing is
    prefetched: spte_prefetch_ns is carried. The guest's ~15 ns store to each page is in
    both (k + 1 of them per upfront fault).
    """
    try:
        from pinning.backends import kvm
    except ImportError as exc:
        raise _NotMeasured(f"the kvm backend is not available ({exc})") from None
    reason = kvm.kvm_unavailable()
    if reason is not None:
        raise _NotMeasured(f"KVM unavailable: {reason}")
    size = plan.guest_bytes
    host_page = float(host_fault.value) + PAGE_SIZE * float(zero_byte.value)
    npf, spte, ks, demand, upfront, demand_pp = [], [], [], [], [], []
    for _ in range(plan.kvm_reps):
        per_fault, faults, pages = {}, {}, {}
        for strategy in ("demand", "upfront"):
            # run_vm leaves warming to its caller: host="warm" only labels the run.
            warm_host(size)
            run = kvm.run_vm(size, strategy=strategy, backing="4k", vcpus=1,
                             touch_fraction=1.0, pattern="sequential", seed=0, host="warm")
            if run.error:
                raise _NotMeasured(f"kvm {strategy} run failed: {run.error}")
            if run.pages_touched <= 0:
                raise _NotMeasured(f"kvm {strategy} run touched no pages")
            taken = run.stats.get("pf_taken")
            if not taken:
                raise _NotMeasured(f"this KVM's stats have no pf_taken count ({strategy} run)")
            per_fault[strategy] = run.touch_ns / taken
            faults[strategy], pages[strategy] = taken, run.pages_touched
        k = pages["upfront"] / faults["upfront"] - 1
        exit_ns = per_fault["demand"] - host_page
        npf.append(exit_ns)
        ks.append(k)
        demand.append(per_fault["demand"])
        upfront.append(per_fault["upfront"])
        demand_pp.append(faults["demand"] / pages["demand"])
        if k >= 1:
            spte.append((per_fault["upfront"] - exit_ns) / k)
    # Cross-check only: this exit goes out to user space (KVM_EXIT_IO, then a
    # Python ioctl back in), which an NPF exit handled in the kernel never does.
    try:
        cross = (f"cross-check: exit to this Python VMM and back (KVM_EXIT_IO) "
                 f"{_fmt(kvm.exit_round_trip_ns())} ns")
    except (OSError, RuntimeError, ValueError) as exc:
        cross = f"cross-check: exit round trip failed ({exc})"

    def src(m: Measurement) -> str:
        return ("measured" if m.measured else "default") + f" {_fmt(float(m.value))}"

    k_med = statistics.median(ks)
    mmu_note = f"; this host's KVM MMU: {mmu}" if mmu else ""
    where = f"KVM guest {_size(size)}, 4 KiB backing, 1 vCPU, sequential, warm host"
    runs = (f"demand {_fmt(statistics.median(demand))} ns per fault (pf_taken, "
            f"{statistics.median(demand_pp):.3g} faults/page), upfront "
            f"{_fmt(statistics.median(upfront))} ns per fault (k = "
            f"{k_med:.3g} prefetched neighbours per fault)")
    exit_m = _measured(
        "npf_exit_ns", npf,
        f"{where}: demand ns per fault - host_fault_ns ({src(host_fault)}) - 4096 x "
        f"zero_byte_ns ({src(zero_byte)}); {runs}; the guest's ~15 ns store per page "
        f"included; {cross}{mmu_note}")
    if k_med < 1:
        prefetch = _carried("spte_prefetch_ns", default,
                            f"not measured: KVM mapped {k_med + 1:.3g} pages per fault on "
                            f"populated memory (k = {k_med:.3g} < 1): a TDP MMU, which "
                            f"does not prefetch{mmu_note}")
    else:
        method = (f"{where}: (upfront ns per fault - npf_exit_ns) / k, k = pages / "
                  f"pf_taken - 1 of the upfront run; {runs}; the guest's k + 1 stores "
                  f"(~15 ns each) included{mmu_note}")
        got = _round(statistics.median(spte))
        if math.isfinite(got) and got > 0:
            prefetch = _measured("spte_prefetch_ns", spte, method)
        else:
            prefetch = _carried(
                "spte_prefetch_ns", default,
                f"not measured: (upfront ns per fault - npf_exit_ns) / k gave {_fmt(got)} ns "
                f"(median of {len(spte)}): an upfront fault costs no more than the exit "
                f"({_fmt(exit_m.value)} ns), the prefetch is below the noise here; {where}; "
                f"{runs}{mmu_note}")
    return [exit_m, prefetch]


# ---------------------------------------------------------------- [host]


def _flag(path: str) -> str | None:
    """A module parameter as "Y"/"N" (also from 1/0); None where it does not exist."""
    text = _read(path)
    if text is None:
        return None
    text = text.strip().upper()
    return {"1": "Y", "0": "N"}.get(text, text[:1] or None)


def _detect_sme_coherent() -> Measurement:
    from pinning.backends import cpu as CK

    key = "host.sme_coherent"
    flags = _cpu_flags()
    listed = None if flags is None else "sme_coherent" in flags
    if not CK.CAN_CPUID:
        why = ("the JIT is off (NUMBA_DISABLE_JIT)" if numba.config.DISABLE_JIT
               else f"not x86-64 ({platform.machine()})")
        if listed is None:
            return Measurement(key, None, False, f"CPUID not executed ({why}) and {CPUINFO} "
                                                 "has no flags line")
        state = "listed" if listed else "not listed"
        return Measurement(key, listed, True, f"the sme_coherent flag of {CPUINFO} only "
                                              f"({state}; CPUID not executed: {why})")
    max_ext = CK.cpuid_regs(0x80000000)[0]
    if max_ext >= 0x8000001F:
        eax = CK.cpuid_regs(0x8000001F)[0]
        value = bool(eax >> 10 & 1)
        how = f"CPUID 0x8000001F EAX bit 10 {'set' if value else 'clear'} (EAX = {eax:#010x})"
    else:
        value = False
        how = (f"CPUID's largest extended leaf is {max_ext:#x} < 0x8000001F: no SME/SEV "
               f"leaf, so no SME_COHERENT")
    if listed is None:
        how += f"; {CPUINFO} has no flags line to cross-check"
    elif listed == value:
        how += f"; the {CPUINFO} flags agree ({'listed' if listed else 'not listed'})"
    else:
        how += (f"; the {CPUINFO} flags disagree (sme_coherent "
                f"{'listed' if listed else 'not listed'}): CPUID taken")
    return Measurement(key, value, True, how)


def _detect_thp() -> Measurement:
    mode = _thp_mode()
    if mode is None:
        return Measurement("host.thp", None, False,
                           f"{THP_ENABLED} is missing or has no bracketed mode")
    return Measurement("host.thp", mode, True, f"the bracketed word of {THP_ENABLED}")


def _detect_mmu() -> Measurement:
    key = "host.mmu"
    base = Path(SYS_MODULE)
    if not (base / "kvm").is_dir():
        return Measurement(key, None, False, f"KVM is not loaded (no {base / 'kvm'})")
    tdp_mmu = _flag(str(base / "kvm/parameters/tdp_mmu"))
    vendor = {name: _flag(str(base / f"{mod}/parameters/{name}"))
              for name, mod in (("npt", "kvm_amd"), ("ept", "kvm_intel"))}
    pvm = (base / "kvm_pvm").is_dir()
    seen = [f"kvm.tdp_mmu={tdp_mmu or 'absent'}"]
    seen += [f"{name}={v}" for name, v in vendor.items() if v is not None]
    if pvm:
        seen.append("kvm_pvm loaded")
    evidence = f"{base}: {', '.join(seen)}"
    shadow = [why for cond, why in ((tdp_mmu == "N", "the TDP MMU is off"),
                                    (pvm, "PVM paging is always shadow paging"),
                                    ("N" in vendor.values(), "nested paging is off"))
              if cond]
    if shadow:
        return Measurement(key, "shadow", True, f"shadow: {'; '.join(shadow)} ({evidence})")
    if tdp_mmu == "Y" and "Y" in vendor.values():
        return Measurement(key, "tdp", True, f"tdp: tdp_mmu Y and npt/ept Y ({evidence})")
    return Measurement(key, None, False, f"neither the TDP MMU nor shadow paging is certain "
                                         f"({evidence})")


def _detect_kernel() -> Measurement:
    release = platform.release()
    m = re.match(r"(\d+)\.(\d+)", release)
    if not m:
        return Measurement("host.kernel", None, False,
                           f"platform.release() {release!r} has no X.Y version")
    return Measurement("host.kernel", f"{m.group(1)}.{m.group(2)}", True,
                       f"X.Y of platform.release() ({release})")


def detect_host() -> list[Measurement]:
    """This machine's [host] facts, one Measurement per :data:`HOST_KEYS` entry."""
    found = {"sme_coherent": _detect_sme_coherent, "thp": _detect_thp, "mmu": _detect_mmu,
             "kernel": _detect_kernel}
    return [found[k]() for k in HOST_KEYS]


# ---------------------------------------------------------------- public API


def calibrate(*, quick: bool = False, use_kvm: bool = True
              ) -> tuple[CostProfile, list[Measurement]]:
    """Measure what this machine allows; the profile and how each key was obtained.

    The profile is named "calibrated", its ``machine`` is :func:`machine_description`,
    its description gives the date (UTC). Keys that cannot be measured here carry the
    default profile's value. The measurements are in the order of :data:`COST_KEYS`,
    :data:`SPREAD_KEYS`, then ``host.<key>`` of :data:`HOST_KEYS`. ``quick`` uses small
    buffers and 3 repetitions (a few seconds).
    """
    plan = _QUICK if quick else _FULL
    default = load_profile()
    # Other work on this machine slows every measurement: say how busy it was.
    load = f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at the start"
    got: dict[str, Measurement] = {}

    def attempt(keys: tuple[str, ...], fn: Callable[[], list[Measurement]]) -> None:
        try:
            for m in fn():
                got[m.key] = m
        except _NotMeasured as exc:
            for key in keys:
                got[key] = _carried(key, default, f"not measured: {exc}")
        except OSError as exc:
            # e.g. mlock without privilege (ENOMEM), or a kernel without MADV_POPULATE_WRITE.
            for key in keys:
                got[key] = _carried(key, default, f"not measured: {exc.strerror or exc}")

    host = {m.key: m for m in detect_host()}
    attempt(("host_fault_ns", "zero_byte_ns"), lambda: _fault_and_zero(plan))

    size = _size(plan.host_bytes)

    def pin_unpin() -> list[Measurement]:
        pins, unpins = _pin_unpin(plan)
        where = f"populated 4 KiB-backed memory, {size}, warm host"
        return [_measured("pin_ns", pins, f"mlock of {where}"),
                _measured("unpin_ns", unpins, f"munlock of mlocked {where}")]

    attempt(("pin_ns", "unpin_ns"), pin_unpin)

    def clflush() -> list[Measurement]:
        values, method = _clflush(plan)
        return [_measured("clflush_page_ns", values, method)]

    attempt(("clflush_page_ns",), clflush)

    def touch() -> list[Measurement]:
        values, method = _guest_touch(plan)
        return [_measured("guest_touch_ns", values, method)]

    attempt(("guest_touch_ns",), touch)
    attempt(("fault_cv",), lambda: [_fault_cv(plan)])

    kvm_keys = ("npf_exit_ns", "spte_prefetch_ns")
    if not use_kvm:
        for key in kvm_keys:
            got[key] = _carried(key, default, "not measured: KVM not used (use_kvm=False)")
    else:
        try:
            attempt(kvm_keys, lambda: _kvm_faults(
                plan, got["host_fault_ns"], got["zero_byte_ns"], default,
                host["host.mmu"].value))
        except Exception as exc:  # the kvm backend is young: report, keep the calibration
            for key in kvm_keys:
                got[key] = _carried(key, default, f"not measured: kvm run raised "
                                                  f"{type(exc).__name__}: {exc}")

    for key, reason in NOT_MEASURABLE.items():
        got[key] = _carried(key, default, f"cannot be measured from user space here: {reason}")

    values = [got[k] for k in PROFILE_VALUE_KEYS]
    measurements = values + [host[f"host.{k}"] for k in HOST_KEYS]
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    measured = [m.key for m in values if m.measured]
    detected = [m.key.removeprefix("host.") for m in measurements if m.is_host and m.measured]
    profile = CostProfile(
        name="calibrated",
        description=(f"Calibrated by pinbench calibrate{' --quick' if quick else ''} on {now}: "
                     f"{len(measured)} of {len(values)} keys measured on this machine "
                     f"({', '.join(measured)}; {load}); the others carried from the default "
                     f"profile; [host] detected: {', '.join(detected) or 'nothing'}"),
        machine=machine_description(),
        source=f"calibrate:{now}",
        costs={k: float(got[k].value) for k in COST_KEYS},
        spread={k: float(got[k].value) for k in SPREAD_KEYS},
        host={m.key.removeprefix("host."): m.value for m in measurements
              if m.is_host and m.measured and m.value is not None},
    )
    return profile, measurements


def calibrated_toml(profile: CostProfile, measurements: Sequence[Measurement]) -> str:
    """The TOML text of a calibrated profile, one comment line per key saying how it was got
    (a [host] key that was not detected is not written: the header says why)."""
    by_key = {m.key: m for m in measurements}
    missing = [k for k in PROFILE_VALUE_KEYS if k not in by_key]
    missing += [f"host.{k}" for k in profile.host if f"host.{k}" not in by_key]
    if missing:
        raise ValueError(f"no measurement for {', '.join(missing)}")
    header = [
        "pinbench cost profile: nanoseconds per event, written by pinbench calibrate.",
        f"Machine: {profile.machine}",
        "'measured': measured on that machine in that run (median, min-max of the repetitions);",
        "'carried': the default profile's value (see pinning/model/profiles/default.toml for",
        "its source), because it could not be measured there; 'detected': read from the host.",
    ]
    header += [f"{m.key} not detected, not written: {m.how}" for m in measurements
               if m.is_host and m.key.removeprefix("host.") not in profile.host]
    comments = {m.key: f"{m.status}: {m.how}" for m in measurements}
    return profile_toml(profile, comments, header=tuple(header))


def write_calibrated(profile: CostProfile, measurements: list[Measurement],
                     path: str | os.PathLike[str]) -> None:
    """Write the profile TOML with a comment per key on how it was obtained, atomically.

    The file is written to a temporary file next to ``path``, read back with
    :func:`load_profile` and checked equal, then renamed over ``path``. Any
    failure raises :class:`InputError` naming the path and leaves no temporary file.
    """
    path = Path(path)
    text = calibrated_toml(profile, measurements)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write cost profile {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; a profile is as readable as any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        back = load_profile(tmp)
        if (back.costs != profile.costs or back.spread != profile.spread
                or back.host != profile.host or back.name != profile.name
                or back.description != profile.description or back.machine != profile.machine):
            raise InputError(f"cannot write cost profile {path}: it would not read back equal")
        os.replace(tmp, path)
    except OSError as exc:
        _unlink(tmp)
        raise InputError(f"cannot write cost profile {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def format_measurements(measurements: Sequence[Measurement], machine: str | None = None) -> str:
    """A plain-text table: key, value, measured/carried/detected, how; labelled with the
    machine (``machine`` defaults to this machine, :func:`machine_description`)."""
    machine = machine or machine_description()
    rows = [(m.key, m.value_text(), m.status, m.how) for m in measurements]
    head = ("key", "value", "status", "how")
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    out = [f"Cost profile calibration, measured on {machine}", ""]
    out.append(f"{head[0]:<{w[0]}}  {head[1]:>{w[1]}}  {head[2]:<{w[2]}}  {head[3]}")
    out += [f"{k:<{w[0]}}  {v:>{w[1]}}  {s:<{w[2]}}  {h}" for k, v, s, h in rows]
    values = [m for m in measurements if not m.is_host]
    n = sum(m.measured for m in values)
    out += ["", f"{n} of {len(values)} keys measured here (costs in ns, spreads as "
                "coefficients of variation); 'carried' values are the default profile's "
                "(modelled, not measured on this machine)."]
    return "\n".join(out)

"""Calibrate a cost profile: measure on this machine the costs user space can measure.

Each measured cost is the median of several repetitions, the host warmed right
before each (HOST.md: idle memory of this VM goes back to its hypervisor, and
touching it again costs 2-5 us more per page). What cannot be executed from
user space here (SEV's VM_PAGE_FLUSH, WBINVD, KVM's per-VM lock) is carried
over from the default profile, and every key says which it is and why.

* ``zero_frame_ns``: MADV_POPULATE_WRITE of a fresh 4 KiB-backed mapping, per page.
* ``pin_ns`` / ``unpin_ns``: mlock / munlock of populated memory, per page
  (the user-space analogue of a long-term pin).
* ``clflush_page_ns``: MFENCE + CLFLUSH(OPT) of the 64 lines + MFENCE, per page just written.
* ``guest_touch_ns``: one word written to an already-present page, stride 4 KiB.
* ``zero_metadata_ns``: zeroing 4 KiB of an already-faulted array.
* ``npf_exit_ns``: a real KVM guest (:mod:`pinning.backends.kvm`): demand minus upfront
  guest time per page, minus the measured ``zero_frame_ns``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
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
from pinning.model.costs import COST_KEYS, CostProfile, load_profile
from pinning.model.names import InputError
from pinning.model.state import anon_array
from pinning.model.units import PAGE_SIZE

MIB = 1 << 20

#: Keys user space cannot measure on this machine, and why (each is carried from the default).
NOT_MEASURABLE: dict[str, str] = {
    "page_flush_ns": "SEV's VM_PAGE_FLUSH needs an SEV host and ring 0 (no SEV here)",
    "wbinvd_ns": "WBINVD is a privileged (ring-0) instruction",
    "lock_hold_ns": "KVM's per-VM pinning lock is inside the kernel (the RFC's fault path)",
}


@dataclass
class Measurement:
    """How one cost key of a calibrated profile was obtained."""

    key: str  # a COST_KEYS entry
    value_ns: float  # the cost written to the profile
    measured: bool  # False: carried from the default profile
    how: str  # one line: method and conditions, or why it was carried over
    spread: tuple[float, float] | None = None  # min-max of the repetitions


@dataclass(frozen=True)
class _Plan:
    """Sizes and repetitions of one calibration."""

    host_bytes: int  # buffer of every host-memory measurement
    reps: int
    guest_bytes: int  # KVM guest of the npf_exit_ns derivation
    kvm_reps: int
    flush_chunk: int = 256 * 1024  # written, then flushed while still in L2


_FULL = _Plan(host_bytes=512 * MIB, reps=7, guest_bytes=512 * MIB, kvm_reps=5)
_QUICK = _Plan(host_bytes=32 * MIB, reps=3, guest_bytes=64 * MIB, kvm_reps=3)


# ---------------------------------------------------------------- libc calls


def _populate(a: np.ndarray) -> None:
    libc.populate_write(a.ctypes.data, a.nbytes, "madvise(MADV_POPULATE_WRITE)")


def _timed_ns(fn: Callable[[], object]) -> int:
    t0 = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - t0


# ---------------------------------------------------------------- helpers


def _fmt(ns: float) -> str:
    """A cost in ns with the digits that mean something (noise is several %)."""
    if ns >= 100:
        return f"{ns:.0f}"
    if ns >= 10:
        return f"{ns:.1f}"
    return f"{ns:.2f}"


def _size(nbytes: int) -> str:
    if nbytes >= 1 << 30 and nbytes % (1 << 30) == 0:
        return f"{nbytes >> 30} GiB"
    return f"{nbytes >> 20} MiB"


def _summary(values: Sequence[float]) -> tuple[float, tuple[float, float], str]:
    """Median (rounded as written to the profile), min-max, and 'median of N (min-max)'."""
    med = round(statistics.median(values), 2)
    lo, hi = min(values), max(values)
    return med, (lo, hi), f"median of {len(values)} ({_fmt(lo)}-{_fmt(hi)})"


def _measured(key: str, values: Sequence[float], method: str) -> Measurement:
    med, spread, stats = _summary(values)
    if not (math.isfinite(med) and med > 0):
        raise _NotMeasured(f"{method}: got a median of {med!r} ns, not a positive cost")
    return Measurement(key, med, True, f"{method}, {stats}", spread)


def _carried(key: str, default: CostProfile, reason: str) -> Measurement:
    return Measurement(key, default.costs[key], False, f"{reason}; the default profile's value")


class _NotMeasured(Exception):
    """A cost this run could not measure (the message says why)."""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_description() -> str:
    """``hostname (CPU model, Linux release)`` of this machine."""
    return f"{socket.gethostname()} ({_cpu_model()}, {platform.system()} {platform.release()})"


# ---------------------------------------------------------------- measurements


def _zero_frame(plan: _Plan) -> list[float]:
    """ns per 4 KiB page of MADV_POPULATE_WRITE on fresh 4 KiB-backed mappings."""
    n = plan.host_bytes
    values = []
    for _ in range(plan.reps):
        warm_host(n)
        a = anon_array(n // 8, np.int64)  # fresh: no page present yet
        values.append(_timed_ns(lambda a=a: _populate(a)) / (n // PAGE_SIZE))
        del a
    return values


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
    flags = _cpu_flags()
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


def _zero_metadata(plan: _Plan) -> list[float]:
    """ns per 4 KiB of zeroing (ndarray.fill) an already-faulted int64 array."""
    n = plan.host_bytes
    a = anon_array(n // 8, np.int64)
    _populate(a)
    values = []
    for _ in range(plan.reps):
        warm_host(n)
        values.append(_timed_ns(lambda: a.fill(0)) / (n // PAGE_SIZE))
    return values


def _npf_exit(plan: _Plan, zero_frame: Measurement) -> Measurement:
    """npf_exit_ns from a real KVM guest: demand guest ns per fault - zero_frame_ns.

    Under demand every 4 KiB page of a 4 KiB-backed guest faults once (KVM's
    ``pf_taken``), and each fault pays the exit, KVM's fault path, the host page fault
    that allocates and zeroes the frame (zero_frame_ns, measured apart) and re-entry;
    what is left is the model's npf_exit_ns. Upfront runs are a cross-check: on
    populated memory KVM maps up to 8 present neighbours per fault (PTE prefetch), so
    upfront takes ~1 fault per 8 pages here, which the model's counting rules do not.
    """
    try:
        from pinning.backends import kvm
    except ImportError as exc:
        raise _NotMeasured(f"the kvm backend is not available ({exc})") from None
    reason = kvm.kvm_unavailable()
    if reason is not None:
        raise _NotMeasured(f"KVM unavailable: {reason}")
    size = plan.guest_bytes
    derived, upfront_fault, upfront_share = [], [], []
    for _ in range(plan.kvm_reps):
        per_fault, faults_pp = {}, {}
        for strategy in ("demand", "upfront"):
            # run_vm leaves warming to its caller: host="warm" only labels the run.
            warm_host(size)
            run = kvm.run_vm(size, strategy=strategy, backing="4k", vcpus=1,
                             touch_fraction=1.0, pattern="sequential", seed=0, host="warm")
            if run.error:
                raise _NotMeasured(f"kvm {strategy} run failed: {run.error}")
            if run.pages_touched <= 0:
                raise _NotMeasured(f"kvm {strategy} run touched no pages")
            # KVM's own count where it has one; else one fault per page touched
            faults = run.stats.get("pf_taken") or run.pages_touched
            per_fault[strategy] = run.touch_ns / faults
            faults_pp[strategy] = faults / run.pages_touched
        derived.append(per_fault["demand"] - zero_frame.value_ns)
        upfront_fault.append(per_fault["upfront"])
        upfront_share.append(faults_pp["upfront"])
    # Cross-check only: this exit goes out to user space (KVM_EXIT_IO, then a
    # Python ioctl back in), which an NPF exit handled in the kernel never does.
    try:
        cross = (f"cross-check: exit to this Python VMM and back (KVM_EXIT_IO) "
                 f"{_fmt(kvm.exit_round_trip_ns())} ns")
    except (OSError, RuntimeError, ValueError) as exc:
        cross = f"cross-check: exit round trip failed ({exc})"
    zf = ("measured" if zero_frame.measured else "default") + f" {_fmt(zero_frame.value_ns)}"
    method = (f"KVM guest {_size(size)}, 4 KiB backing, 1 vCPU, sequential, warm host: "
              f"demand guest ns per fault (pf_taken) - zero_frame_ns ({zf}); upfront "
              f"(populated) takes {statistics.median(upfront_share):.3g} faults/page at "
              f"{_fmt(statistics.median(upfront_fault))} ns each (KVM's PTE prefetch, not "
              f"in the model's counts); {cross}; this KVM is nested and shadow-paging, "
              f"likely above bare-metal NPT")
    return _measured("npf_exit_ns", derived, method)


# ---------------------------------------------------------------- public API


def calibrate(*, quick: bool = False, use_kvm: bool = True
              ) -> tuple[CostProfile, list[Measurement]]:
    """Measure what this machine allows; the profile and how each key was obtained.

    The profile is named "calibrated", its ``machine`` is :func:`machine_description`,
    its description gives the date (UTC). Keys that cannot be measured here carry the
    default profile's value. ``quick`` uses small buffers and 3 repetitions (< 10 s).
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

    size = _size(plan.host_bytes)
    attempt(("zero_frame_ns",), lambda: [_measured(
        "zero_frame_ns", _zero_frame(plan),
        f"MADV_POPULATE_WRITE of a fresh 4 KiB-backed anonymous mapping, {size}, warm host")])

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
    attempt(("zero_metadata_ns",), lambda: [_measured(
        "zero_metadata_ns", _zero_metadata(plan),
        f"ndarray.fill(0) of an already-faulted 4 KiB-backed int64 array, {size}, warm host")])

    if not use_kvm:
        got["npf_exit_ns"] = _carried("npf_exit_ns", default,
                                      "not measured: KVM not used (use_kvm=False)")
    else:
        try:
            got["npf_exit_ns"] = _npf_exit(plan, got["zero_frame_ns"])
        except _NotMeasured as exc:
            got["npf_exit_ns"] = _carried("npf_exit_ns", default, f"not measured: {exc}")
        except Exception as exc:  # the kvm backend is young: report, keep the calibration
            got["npf_exit_ns"] = _carried(
                "npf_exit_ns", default, f"not measured: kvm run raised {type(exc).__name__}: {exc}")

    for key, reason in NOT_MEASURABLE.items():
        got[key] = _carried(key, default, f"cannot be measured from user space here: {reason}")

    measurements = [got[k] for k in COST_KEYS]
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    measured = [m.key for m in measurements if m.measured]
    profile = CostProfile(
        name="calibrated",
        description=(f"Calibrated by pinbench calibrate{' --quick' if quick else ''} on {now}: "
                     f"{len(measured)} of {len(COST_KEYS)} costs measured on this machine "
                     f"({', '.join(measured)}; {load}); the others carried from the default "
                     f"profile"),
        machine=machine_description(),
        source=f"calibrate:{now}",
        costs={m.key: float(m.value_ns) for m in measurements},
    )
    return profile, measurements


def _comment(text: str) -> str:
    # A TOML comment may not hold control characters other than tab; keep it one line.
    return "".join(c if c == "\t" or (ord(c) >= 0x20 and c != "\x7f") else " " for c in text)


def _toml_str(text: str) -> str:
    # JSON's escapes (\" \\ \n \uXXXX) are all valid in a TOML basic string.
    return json.dumps(text, ensure_ascii=True)


def profile_toml(profile: CostProfile, measurements: Sequence[Measurement]) -> str:
    """The TOML text of a calibrated profile, one comment line per key saying how it was got."""
    by_key = {m.key: m for m in measurements}
    missing = [k for k in COST_KEYS if k not in by_key]
    if missing:
        raise ValueError(f"no measurement for {', '.join(missing)}")
    lines = [
        "# pinbench cost profile: nanoseconds per event, written by pinbench calibrate.",
        _comment(f"# Machine: {profile.machine}"),
        "# 'measured': measured on that machine in that run (median, min-max of the repetitions);",
        "# 'carried': the default profile's value (see pinning/profiles/default.toml for its",
        "# source), because it could not be measured there.",
        "",
    ]
    for key in COST_KEYS:
        m = by_key[key]
        value = float(profile.costs[key])
        lines.append(_comment(f"# {'measured' if m.measured else 'carried'}: {m.how}"))
        lines.append(f"{key} = {value!r}")
        lines.append("")
    lines += ["[profile]", f"name = {_toml_str(profile.name)}",
              f"description = {_toml_str(profile.description)}"]
    if profile.machine is not None:
        lines.append(f"machine = {_toml_str(profile.machine)}")
    return "\n".join(lines) + "\n"


def write_calibrated(profile: CostProfile, measurements: list[Measurement],
                     path: str | os.PathLike[str]) -> None:
    """Write the profile TOML with a comment per key on how it was obtained, atomically.

    The file is written to a temporary file next to ``path``, read back with
    :func:`load_profile` and checked equal, then renamed over ``path``. Any
    failure raises :class:`InputError` naming the path and leaves no temporary file.
    """
    path = Path(path)
    text = profile_toml(profile, measurements)
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
        if (back.costs != profile.costs or back.name != profile.name
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
    """A plain-text table: key, value, measured/carried, how; labelled with the machine.

    ``machine`` defaults to this machine (:func:`machine_description`).
    """
    machine = machine or machine_description()
    rows = [(m.key, _fmt(m.value_ns), "measured" if m.measured else "carried", m.how)
            for m in measurements]
    head = ("cost", "ns", "status", "how")
    w = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    out = [f"Cost profile calibration, measured on {machine}", ""]
    out.append(f"{head[0]:<{w[0]}}  {head[1]:>{w[1]}}  {head[2]:<{w[2]}}  {head[3]}")
    out += [f"{k:<{w[0]}}  {v:>{w[1]}}  {s:<{w[2]}}  {h}" for k, v, s, h in rows]
    n = sum(m.measured for m in measurements)
    out += ["", f"{n} of {len(measurements)} costs measured here; 'carried' values are the "
                "default profile's (modelled, not measured on this machine)."]
    return "\n".join(out)

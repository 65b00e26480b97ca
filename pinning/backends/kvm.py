"""A real KVM guest driven from Python with ioctls (DESIGN §3, method "kvm").

run_vm() creates a VM through /dev/kvm, backs its guest RAM with one anonymous
mapping (4 KiB pages or THP), optionally pins it upfront the way a VMM can from user
space (MADV_POPULATE_WRITE, then mlock), runs ring-3 guest code on each vCPU that
writes one dword into every page of its slice of guest RAM, and times each phase.
The guest and its system memslot (page tables, GDT, TSS, code, stacks, gfn table)
are described in pinning/backends/kvm_guest.py; the ioctl definitions are in
pinning/backends/kvm_uapi.py.

Each vCPU runs in its own Python thread; ioctl(KVM_RUN) is called through ctypes,
which releases the GIL, so vCPUs run in parallel. KVM's binary stats
(KVM_GET_STATS_FD) are read after the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import math
import operator
import os
import platform
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pinning.backends import kvm_guest as guest
from pinning.backends import kvm_uapi as uapi
from pinning.backends import libc
from pinning.backends.hostmem import check_fits
from pinning.backends.realmem import GuestMemory
from pinning.model import strategies
from pinning.model.names import HOST_STATES, MAX_VCPUS, InputError
from pinning.model.units import PAGE_SIZE, format_size

#: Host pages behind guest RAM: 4 KiB pages or transparent huge pages.
HOST_PAGES = ("4k", "thp")
#: The access orders the guest's code implements.
GUEST_PATTERNS = ("sequential", "random")
KVM_DEVICE = "/dev/kvm"

# --- availability -------------------------------------------------------------------------


@functools.cache
def _system_info() -> tuple[int, bytes]:
    """(size of a vCPU's kvm_run mmap, KVM_GET_SUPPORTED_CPUID as raw kvm_cpuid2 bytes)."""
    fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        mmap_size = uapi.kvm_ioctl(fd, uapi.KVM_GET_VCPU_MMAP_SIZE)
        nent = 64
        while True:  # E2BIG: the buffer is too small for all entries
            cpuid = uapi.cpuid2_with(nent)
            try:
                uapi.kvm_ioctl(fd, uapi.KVM_GET_SUPPORTED_CPUID, ctypes.addressof(cpuid))
                break
            except OSError as e:
                if e.errno != errno.E2BIG or nent >= 4096:
                    raise
                nent *= 2
        used = ctypes.sizeof(uapi.kvm_cpuid2) + cpuid.nent * ctypes.sizeof(uapi.kvm_cpuid_entry2)
        return mmap_size, ctypes.string_at(ctypes.addressof(cpuid), used)
    finally:
        os.close(fd)


@functools.cache
def _probe() -> str | None:
    if platform.machine() != "x86_64":
        return f"pinbench's KVM guest is x86-64 code; this machine is {platform.machine()}"
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} does not exist (no KVM on this machine, or not exposed to it)"
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open {KVM_DEVICE}: {e.strerror} (needs read/write access, e.g. group kvm)"
    try:
        version = uapi.kvm_ioctl(fd, uapi.KVM_GET_API_VERSION)
        if version != uapi.KVM_API_VERSION:
            return (f"{KVM_DEVICE} has KVM API version {version}, pinbench needs "
                    f"{uapi.KVM_API_VERSION}")
        if uapi.kvm_ioctl(fd, uapi.KVM_CHECK_EXTENSION, uapi.KVM_CAP_BINARY_STATS_FD) <= 0:
            return f"{KVM_DEVICE} lacks KVM_CAP_BINARY_STATS_FD (Linux >= 5.14 needed)"
    except OSError as e:
        return f"{KVM_DEVICE}: {e}"
    finally:
        os.close(fd)
    try:  # the only real test: run the smallest guest once
        _round_trips(1)
    except (OSError, RuntimeError) as e:
        return f"{KVM_DEVICE} cannot run pinbench's guest: {e}"
    return None


def kvm_unavailable() -> str | None:
    """None when /dev/kvm can run pinbench's guest here, else one line saying why
    (missing, permission, API version, or the test guest failing to run). Cached."""
    return _probe()


# --- the VM --------------------------------------------------------------------------------


@dataclass
class _Vcpu:
    index: int
    fd: int
    run: uapi.kvm_run  # view of the kvm_run mmap
    stats_fd: int = -1
    t_first_out: int = 0  # perf_counter_ns when the first `out` came back
    t_done: int = 0
    error: BaseException | None = None


class _Vm:
    """One VM and everything it holds. close() releases it all, in order, exactly once.

    Resources are registered on an ExitStack as they are acquired, so a failure at any
    point releases exactly what exists. Release order (LIFO): stats fds, uapi.kvm_run
    mmaps, vCPU fds, VM fd (the last reference: KVM destroys the VM here), system
    memory, guest RAM (munlock if locked, then munmap).
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.vm_fd = -1
        self.vcpus: list[_Vcpu] = []
        self.threads: list[threading.Thread] = []
        self.mem: GuestMemory | None = None  # guest RAM
        self.ram = 0
        self.ram_size = 0
        self.sys = 0
        self.vm_stats: _Stats | None = None
        self.vcpu_stats: _Stats | None = None  # descriptors of vCPU 0, valid for all

    # resources -----------------------------------------------------------------------
    def map_ram(self, size: int, backing: str) -> None:
        # 2 MiB-aligned, so that a 2 MiB range of the mapping is one of guest-physical
        # memory (THP, and KVM's 2 MiB shadow pages); munlock + munmap on release.
        self.mem = GuestMemory(size, "2m" if backing == "thp" else "4k")
        self._stack.callback(self._release_ram)
        self.ram, self.ram_size = self.mem.addr, size

    def _release_ram(self) -> None:
        self.mem.release()
        self.ram = 0

    def map_system(self, layout: guest.SystemLayout, table: np.ndarray | None) -> None:
        # THP where possible: the whole memslot then costs KVM one fault per 2 MiB.
        sysmem = GuestMemory(layout.size, "2m")
        self._stack.callback(sysmem.release)
        self.sys = sysmem.addr
        mem = np.ctypeslib.as_array((ctypes.c_uint8 * layout.size).from_address(self.sys))
        layout.write(mem, table)
        # Populated in full: system memory is the VMM's, not guest RAM being measured.
        sysmem.populate()

    def create(self, layout: guest.SystemLayout, regs: list[dict[str, int]]) -> None:
        """KVM_CREATE_VM, both memslots, and one set-up vCPU per entry of ``regs``."""
        mmap_size, cpuid = _system_info()
        kvm_fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.vm_fd = uapi.kvm_ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0)
        finally:
            os.close(kvm_fd)  # the VM fd does not need it
        self._stack.callback(os.close, self.vm_fd)
        for slot, (gpa, size, addr) in enumerate(
            ((0, self.ram_size, self.ram), (layout.gpa, layout.size, self.sys))
        ):
            region = uapi.kvm_userspace_memory_region(slot, 0, gpa, size, addr)
            uapi.kvm_ioctl(self.vm_fd, uapi.KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region))
        cpuid_buf = ctypes.create_string_buffer(cpuid, len(cpuid))
        for index, values in enumerate(regs):
            fd = uapi.kvm_ioctl(self.vm_fd, uapi.KVM_CREATE_VCPU, index)
            self._stack.callback(os.close, fd)
            addr = libc.map_shared(fd, mmap_size, f"mmap of vCPU {index}'s kvm_run")
            self._stack.callback(libc.munmap, addr, mmap_size)
            vcpu = _Vcpu(index, fd, uapi.kvm_run.from_address(addr))
            self.vcpus.append(vcpu)
            # CPUID first: KVM checks CR4/EFER in KVM_SET_SREGS against the guest's CPUID.
            uapi.kvm_ioctl(fd, uapi.KVM_SET_CPUID2, ctypes.addressof(cpuid_buf))
            self._set_sregs(vcpu, layout)
            r = uapi.kvm_regs(rflags=guest.RFLAGS, rip=layout.code, rsp=layout.stack_top(index))
            for name, value in values.items():
                setattr(r, name, value)
            uapi.kvm_ioctl(fd, uapi.KVM_SET_REGS, ctypes.addressof(r))

    @staticmethod
    def _set_sregs(vcpu: _Vcpu, layout: guest.SystemLayout) -> None:
        s = uapi.kvm_sregs()
        uapi.kvm_ioctl(vcpu.fd, uapi.KVM_GET_SREGS, ctypes.addressof(s))  # keep apic_base etc.
        code = uapi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=guest.CODE_SEL, type=0xB,
                           present=1, dpl=3, db=0, s=1, l=1, g=1)
        data = uapi.kvm_segment(base=0, limit=0xFFFFFFFF, selector=guest.DATA_SEL, type=0x3,
                           present=1, dpl=3, db=1, s=1, l=0, g=1)
        s.cs = code
        s.ds = s.es = s.fs = s.gs = s.ss = data
        s.tr = uapi.kvm_segment(base=layout.tss, limit=guest.TSS_LIMIT, selector=guest.TSS_SEL,
                           type=0xB, present=1, dpl=0, s=0)  # busy 64-bit TSS
        s.ldt = uapi.kvm_segment(type=0x2, unusable=1)
        s.gdt = uapi.kvm_dtable(base=layout.gdt, limit=8 * guest.GDT_ENTRIES - 1)
        s.idt = uapi.kvm_dtable(base=0, limit=0)  # no IDT: a guest exception is a triple fault
        s.cr0, s.cr3, s.cr4, s.efer = guest.CR0, layout.pml4, guest.CR4, guest.EFER
        uapi.kvm_ioctl(vcpu.fd, uapi.KVM_SET_SREGS, ctypes.addressof(s))

    def open_stats(self) -> None:
        self.vm_stats = _Stats(uapi.kvm_ioctl(self.vm_fd, uapi.KVM_GET_STATS_FD))
        self._stack.callback(os.close, self.vm_stats.fd)
        layout = None
        for vcpu in self.vcpus:
            vcpu.stats_fd = uapi.kvm_ioctl(vcpu.fd, uapi.KVM_GET_STATS_FD)
            self._stack.callback(os.close, vcpu.stats_fd)
            layout = layout or _Stats(vcpu.stats_fd)  # same descriptors for every vCPU
        self.vcpu_stats = layout

    def read_stats(self) -> dict[str, int]:
        """vCPU cumulative counters summed over vCPUs, and the VM's scalar stats as vm.*."""
        out: dict[str, int] = {}
        for vcpu in self.vcpus:
            for name, value in self.vcpu_stats.read(vcpu.stats_fd, cumulative_only=True):
                out[name] = out.get(name, 0) + value
        for name, value in self.vm_stats.read(self.vm_stats.fd, cumulative_only=False):
            out["vm." + name] = value
        return out

    def join_threads(self) -> None:
        for t in self.threads:
            t.join()
        self.threads = []

    def close(self) -> None:
        """Release everything (idempotent). vCPU threads are joined first: their kvm_run
        mappings must outlive them."""
        try:
            self.join_threads()
        finally:
            self._stack.close()


class _Stats:
    """A KVM binary stats fd: header and descriptors parsed once, values read with pread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        header = uapi.kvm_stats_header.from_buffer_copy(os.pread(fd, 24, 0))
        desc_size = ctypes.sizeof(uapi.kvm_stats_desc) + header.name_size
        raw = os.pread(fd, desc_size * header.num_desc, header.desc_offset)
        self.data_offset = header.data_offset
        self.entries: list[tuple[str, int, int]] = []  # (name, type, offset in u64s)
        self.data_size = 0
        for i in range(header.num_desc):
            d = uapi.kvm_stats_desc.from_buffer_copy(raw, i * desc_size)
            name_at = i * desc_size + ctypes.sizeof(uapi.kvm_stats_desc)
            name = raw[name_at : name_at + header.name_size].split(b"\0", 1)[0].decode()
            self.data_size = max(self.data_size, d.offset + 8 * d.size)
            kind = d.flags & uapi.KVM_STATS_TYPE_MASK
            if d.size == 1 and kind in (uapi.KVM_STATS_TYPE_CUMULATIVE, uapi.KVM_STATS_TYPE_INSTANT,
                                        uapi.KVM_STATS_TYPE_PEAK):  # histograms are left out
                self.entries.append((name, kind, d.offset // 8))

    def read(self, fd: int, *, cumulative_only: bool) -> list[tuple[str, int]]:
        data = memoryview(os.pread(fd, self.data_size, self.data_offset)).cast("Q")
        return [(name, data[off]) for name, kind, off in self.entries
                if kind == uapi.KVM_STATS_TYPE_CUMULATIVE or not cumulative_only]


# --- running vCPUs ----------------------------------------------------------------------------


def _exit_error(vcpu: _Vcpu, expected: str) -> RuntimeError:
    run = vcpu.run
    reason = run.exit_reason
    what = f"{uapi.KVM_EXIT_NAMES.get(reason, 'exit reason')} ({reason})"
    if reason == uapi.KVM_EXIT_IO:
        io = run.exit.io
        what += f", {'out' if io.direction == uapi.KVM_EXIT_IO_OUT else 'in'} port {io.port:#x}"
    elif reason == 9:  # KVM_EXIT_FAIL_ENTRY
        reason_hw = run.exit.fail_entry.hardware_entry_failure_reason
        what += f", hardware_entry_failure_reason {reason_hw:#x}"
    elif reason == 17:  # KVM_EXIT_INTERNAL_ERROR
        what += f", suberror {run.exit.internal.suberror}"
    elif reason == 8:  # KVM_EXIT_SHUTDOWN
        what += ", the guest triple-faulted"
    try:
        regs = uapi.kvm_regs()
        uapi.kvm_ioctl(vcpu.fd, uapi.KVM_GET_REGS, ctypes.addressof(regs))
        what += f", rip {regs.rip:#x}"
    except OSError:
        pass
    return RuntimeError(f"vCPU {vcpu.index}: unexpected {what} (waiting for {expected})")


def _run_until(vcpu: _Vcpu, port: int) -> None:
    """KVM_RUN until the guest does `out` to ``port``; any other exit is an error."""
    fd, run = vcpu.fd, vcpu.run
    while True:
        if libc.ioctl(fd, uapi.KVM_RUN, 0) < 0:
            e = ctypes.get_errno()
            if e in (errno.EINTR, errno.EAGAIN):  # a signal: KVM_EXIT_INTR, just re-enter
                continue
            raise OSError(e, f"vCPU {vcpu.index}: KVM_RUN: {os.strerror(e)}")
        io = run.exit.io
        if (run.exit_reason == uapi.KVM_EXIT_IO and io.direction == uapi.KVM_EXIT_IO_OUT
                and io.port == port):
            return
        raise _exit_error(vcpu, f"out to port {port:#x}")


def _vcpu_thread(vcpu: _Vcpu, start: threading.Barrier, release: threading.Barrier) -> None:
    try:
        start.wait()
        _run_until(vcpu, guest.PORT_START)
        vcpu.t_first_out = time.perf_counter_ns()
        release.wait()  # all vCPUs leave together
        _run_until(vcpu, guest.PORT_DONE)
        vcpu.t_done = time.perf_counter_ns()
    except BaseException as e:  # reported by the main thread
        vcpu.error = e
        start.abort()  # nobody waits forever for this vCPU
        release.abort()


def _run_vcpus(vm: _Vm) -> tuple[int, int]:
    """Run every vCPU's guest to PORT_DONE; return (first_insn_ns, touch_ns)."""
    marks: dict[str, int] = {}
    n = len(vm.vcpus)
    start = threading.Barrier(n, action=lambda: marks.__setitem__("start", time.perf_counter_ns()))
    release = threading.Barrier(
        n, action=lambda: marks.__setitem__("release", time.perf_counter_ns())
    )
    vm.threads = [
        threading.Thread(target=_vcpu_thread, args=(v, start, release), name=f"vcpu-{v.index}")
        for v in vm.vcpus
    ]
    for t in vm.threads:
        t.start()
    vm.join_threads()
    errors = [v.error for v in vm.vcpus if v.error is not None]
    if errors:  # the first real one; the others only saw the barrier broken
        errors.sort(key=lambda e: isinstance(e, threading.BrokenBarrierError))
        raise errors[0]
    first_insn_ns = max(v.t_first_out for v in vm.vcpus) - marks["start"]
    touch_ns = max(v.t_done for v in vm.vcpus) - marks["release"]
    return first_insn_ns, touch_ns


# --- public API ------------------------------------------------------------------------------


@dataclass
class KvmRun:
    """One run of run_vm: what was run and how long each phase took (ns)."""

    guest_size: int  # bytes of guest RAM (the measured memslot)
    strategy: str  # a registered strategy: it pins upfront if it pins at startup
    backing: str  # "4k" | "thp"
    vcpus: int
    pattern: str
    touch_fraction: float
    host: str  # "warm" | "cold" (as given; warming is the caller's job)
    create_ns: int  # KVM_CREATE_VM .. memslots set, vCPUs created and set up
    populate_ns: int  # upfront: MADV_POPULATE_WRITE of all guest RAM; demand: 0
    lock_ns: int  # upfront: mlock of all guest RAM; demand: 0
    first_insn_ns: int  # vCPUs released into KVM_RUN .. the last one's first `out`
    touch_ns: int  # vCPUs released together .. the last one's `out` to PORT_DONE
    teardown_ns: int  # fds closed (VM destroyed), munlock (upfront), munmap of guest RAM
    #                   (and of the small system memslot)
    pages_touched: int  # 4 KiB pages the guest wrote (once each)
    stats: dict[str, int] = field(default_factory=dict)  # KVM binary stats (see run_vm)
    error: str | None = None  # e.g. mlock failed: a result, not an exception

    @property
    def startup_ns(self) -> int:
        return self.create_ns + self.populate_ns + self.lock_ns + self.first_insn_ns

    @property
    def ns_per_page_touch(self) -> float:
        return self.touch_ns / self.pages_touched if self.pages_touched else math.nan

    @property
    def setup_ns_per_page(self) -> float:
        """Upfront pinning work (populate + lock) per 4 KiB page of guest RAM."""
        return (self.populate_ns + self.lock_ns) / (self.guest_size // PAGE_SIZE)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(startup_ns=self.startup_ns, ns_per_page_touch=self.ns_per_page_touch,
                 setup_ns_per_page=self.setup_ns_per_page)
        return d


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is an integer (also a numpy one) and not a bool."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _validate(guest_size: int, strategy: str, backing: str, vcpus: int, touch_fraction: float,
              pattern: str, host: str) -> None:
    strategies.get(strategy)
    for what, value, allowed in (("backing", backing, HOST_PAGES),
                                 ("pattern", pattern, GUEST_PATTERNS),
                                 ("host", host, HOST_STATES)):
        if value not in allowed:
            raise InputError(f"unknown {what} {value!r} (expected one of {', '.join(allowed)})")
    if _integer(guest_size) is None or guest_size <= 0 or guest_size % guest.HUGE_SIZE:
        raise InputError(f"guest size {guest_size!r} must be a positive multiple of 2MiB")
    if _integer(vcpus) is None or not 1 <= vcpus <= MAX_VCPUS:
        raise InputError(f"vcpus {vcpus!r} must be between 1 and {MAX_VCPUS}")
    if not 0 < touch_fraction <= 1:
        raise InputError(f"touch_fraction {touch_fraction!r} must be in (0, 1]")
    check_fits(guest_size, f"a guest of {format_size(guest_size)}")


def run_vm(guest_size: int, *, strategy: str = "demand", backing: str = "4k", vcpus: int = 1,
           touch_fraction: float = 1.0, pattern: str = "sequential", seed: int = 0,
           host: str = "warm",
           _inspect: Callable[[np.ndarray, np.ndarray], None] | None = None) -> KvmRun:
    """Create a VM, (upfront: populate+mlock all guest RAM), run the guest touching its
    memory, tear down; time each phase.

    The guest writes one dword (~gfn) to round(touch_fraction * pages) pages (at least
    1): the first ones in order (sequential) or a random subset in random order
    (random, seeded by ``seed``). vCPU i touches the i-th contiguous slice of that
    page list. ``stats`` holds this KVM's cumulative vCPU counters summed over vCPUs,
    under KVM's names, and the VM's counters/gauges as ``vm.<name>``.

    ``_inspect`` (tests): called as _inspect(ram, gfns) after the guest ran and before
    teardown; ``ram`` is guest RAM as uint32 (valid only during the call), ``gfns``
    the touched gfns in touch order.
    """
    _validate(guest_size, strategy, backing, vcpus, touch_fraction, pattern, host)
    reason = kvm_unavailable()
    if reason:
        raise InputError(reason)

    guest_size, vcpus = int(guest_size), int(vcpus)
    npages = guest_size // PAGE_SIZE
    n = min(npages, max(1, round(touch_fraction * npages)))
    bounds = [i * n // vcpus for i in range(vcpus + 1)]  # vCPU i: list[bounds[i]:bounds[i+1]]
    table = None  # random: the touched gfns in touch order, read by the guest
    if pattern == "random":
        table = np.random.default_rng(seed).permutation(npages)[:n].astype(np.uint32)
    layout = guest.SystemLayout.compute(guest_size, vcpus, n if table is not None else 0)
    regs = []
    for i in range(vcpus):
        first, count = bounds[i], bounds[i + 1] - bounds[i]
        rdi = first * PAGE_SIZE if table is None else layout.table + 4 * first
        regs.append({"rip": layout.code + guest.ENTRY[pattern], "rdi": rdi, "rcx": count})

    populate_ns = lock_ns = first_insn_ns = touch_ns = 0
    pages_touched = 0
    error = None
    vm = _Vm()
    try:
        vm.map_ram(guest_size, backing)
        vm.map_system(layout, table)
        t0 = time.perf_counter_ns()
        vm.create(layout, regs)
        create_ns = time.perf_counter_ns() - t0
        vm.open_stats()

        # A VMM can pin from user space only all at once, before the guest runs
        # (populate + mlock): the strategies that pin at startup do.
        if "startup" in strategies.get(strategy).pinning_phases:
            t0 = time.perf_counter_ns()
            try:
                vm.mem.populate()
            except OSError as exc:
                error = f"MADV_POPULATE_WRITE of guest RAM failed: {os.strerror(exc.errno)}"
            t1 = time.perf_counter_ns()
            populate_ns = t1 - t0
            if error is None:
                if _mlock(vm.ram, guest_size) < 0:
                    e = ctypes.get_errno()
                    limit = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
                    limit_text = "unlimited" if limit == resource.RLIM_INFINITY else (
                        format_size(limit))
                    error = (f"mlock of {format_size(guest_size)} of guest RAM failed: "
                             f"{errno.errorcode.get(e, e)} ({os.strerror(e)}); without "
                             f"CAP_IPC_LOCK RLIMIT_MEMLOCK ({limit_text}) limits it")
                else:
                    vm.mem.locked = True  # munlock on release
                lock_ns = time.perf_counter_ns() - t1

        if error is None:  # as upstream: if pinning fails, the VM never runs
            first_insn_ns, touch_ns = _run_vcpus(vm)
            pages_touched = n
        stats = vm.read_stats()
        if _inspect is not None:
            ram = np.ctypeslib.as_array((ctypes.c_uint32 * (guest_size // 4)).from_address(vm.ram))
            touched = table if table is not None else np.arange(n, dtype=np.uint32)
            _inspect(ram, touched[:pages_touched])
        t0 = time.perf_counter_ns()
        vm.close()
        teardown_ns = time.perf_counter_ns() - t0
    finally:
        vm.close()
    return KvmRun(guest_size, strategy, backing, vcpus, pattern, float(touch_fraction), host,
                  create_ns, populate_ns, lock_ns, first_insn_ns, touch_ns, teardown_ns,
                  pages_touched, stats, error)


def _mlock(addr: int, size: int) -> int:
    """mlock(2); a separate name so that tests can make it fail."""
    return libc.mlock(addr, size)


def _round_trips(iterations: int) -> float:
    layout = guest.SystemLayout.compute(guest.HUGE_SIZE, 1)
    vm = _Vm()
    try:
        vm.map_ram(guest.HUGE_SIZE, "4k")
        vm.map_system(layout, None)
        vm.create(layout, [{"rip": layout.code + guest.ENTRY["tick"], "rcx": iterations}])
        vcpu = vm.vcpus[0]
        _run_until(vcpu, guest.PORT_START)  # first entry: faults in code, not timed
        fd, run, io = vcpu.fd, vcpu.run, vcpu.run.exit.io
        exits = 0
        t0 = time.perf_counter_ns()
        while True:
            if libc.ioctl(fd, uapi.KVM_RUN, 0) < 0:
                e = ctypes.get_errno()
                if e in (errno.EINTR, errno.EAGAIN):
                    continue
                raise OSError(e, f"KVM_RUN: {os.strerror(e)}")
            if run.exit_reason != uapi.KVM_EXIT_IO:
                raise _exit_error(vcpu, f"out to port {guest.PORT_TICK:#x}")
            exits += 1
            if io.port == guest.PORT_DONE:
                break
            if io.port != guest.PORT_TICK:
                raise _exit_error(vcpu, f"out to port {guest.PORT_TICK:#x}")
        elapsed = time.perf_counter_ns() - t0
    finally:
        vm.close()
    return elapsed / exits  # iterations ticks + the final PORT_DONE exit


def exit_round_trip_ns(iterations: int = 20000) -> float:
    """Mean cost (not a median) of one guest `out` → KVM_EXIT_IO → KVM_RUN re-entry round
    trip, measured with a tiny guest in a loop (``iterations`` exits, after one untimed).

    Includes the Python/ctypes call of ioctl(uapi.KVM_RUN) for each exit (well under a
    microsecond) and everything KVM does on the way out to user space and back in
    (vcpu_put/vcpu_load). On PVM, where the guest's `out` in ring 3 is a #GP that KVM
    emulates (stat insn_emulation, not io_exits), the emulation is included too.
    """
    if _integer(iterations) is None or iterations < 1:
        raise InputError(f"iterations {iterations!r} must be a positive integer")
    reason = kvm_unavailable()
    if reason:
        raise InputError(reason)
    return _round_trips(int(iterations))

"""A real KVM guest driven from Python with ioctls (DESIGN §3, method "kvm").

run_vm() creates a VM through /dev/kvm, backs its guest RAM with one anonymous
mapping (4 KiB pages or THP), optionally pins it upfront the way a VMM can from user
space (MADV_POPULATE_WRITE, then mlock), runs ring-3 guest code on each vCPU that
writes one dword into every page of its slice of guest RAM, and times each phase.
The guest and its system memslot (page tables, GDT, TSS, code, stacks, gfn table)
are described in pinning/kvm_guest.py.

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
import mmap
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
from pinning.backends.realmem import GuestMemory
from pinning.model.units import PAGE_SIZE, InputError, available_memory, format_size

BACKINGS = ("4k", "thp")
PATTERNS = ("sequential", "random")
STRATEGIES = ("upfront", "demand")
HOSTS = ("warm", "cold")
MAX_VCPUS = 64
MEM_FRACTION = 0.85  # largest guest, as a fraction of MemAvailable
KVM_DEVICE = "/dev/kvm"

# --- ioctl numbers (include/uapi/asm-generic/ioctl.h, include/uapi/linux/kvm.h) -----------
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def _IO(type_: int, nr: int) -> int:
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(struct))


def _IOW(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(struct))


def _IOWR(type_: int, nr: int, struct: type) -> int:
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(struct))


# --- uapi structures ---------------------------------------------------------------------
u8, u16, u32, u64, s16 = (
    ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int16,
)


class kvm_userspace_memory_region(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),  # bytes
        ("userspace_addr", u64),  # start of the VMM's mapping backing the memslot
    ]


class kvm_regs(ctypes.Structure):
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
    )]


class kvm_segment(ctypes.Structure):
    _fields_ = [
        ("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8),
        ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8),
        ("unusable", u8), ("padding", u8),
    ]


class kvm_dtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class kvm_sregs(ctypes.Structure):
    _fields_ = [
        *[(seg, kvm_segment) for seg in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")],
        ("gdt", kvm_dtable), ("idt", kvm_dtable),
        *[(reg, u64) for reg in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")],
        ("interrupt_bitmap", u64 * 4),  # (KVM_NR_INTERRUPTS + 63) / 64
    ]


class kvm_cpuid_entry2(ctypes.Structure):
    _fields_ = [
        ("function", u32), ("index", u32), ("flags", u32),
        ("eax", u32), ("ebx", u32), ("ecx", u32), ("edx", u32), ("padding", u32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):
    """Header only; the ioctl size is the header's. entries[] follow it in memory."""

    _fields_ = [("nent", u32), ("padding", u32)]


def _cpuid2_with(nent: int) -> ctypes.Structure:
    class kvm_cpuid2_n(ctypes.Structure):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * nent)]

    return kvm_cpuid2_n(nent=nent)


class kvm_run_io(ctypes.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]  # data is at (char *)kvm_run + data_offset


class kvm_run_fail_entry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_internal(ctypes.Structure):
    _fields_ = [("suberror", u32)]


class kvm_run_exit(ctypes.Union):
    _fields_ = [("io", kvm_run_io), ("fail_entry", kvm_run_fail_entry),
                ("internal", kvm_run_internal), ("padding", ctypes.c_char * 256)]


class kvm_run(ctypes.Structure):
    """The start of struct kvm_run (the vCPU's mmap): only the fields read here."""

    _fields_ = [
        ("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8), ("if_flag", u8), ("flags", u16),
        ("cr8", u64), ("apic_base", u64),
        ("exit", kvm_run_exit),  # the anonymous union
    ]


class kvm_stats_header(ctypes.Structure):
    _fields_ = [("flags", u32), ("name_size", u32), ("num_desc", u32), ("id_offset", u32),
                ("desc_offset", u32), ("data_offset", u32)]


class kvm_stats_desc(ctypes.Structure):
    """Fixed part; a name of header.name_size bytes follows each descriptor."""

    _fields_ = [("flags", u32), ("exponent", s16), ("size", u16), ("offset", u32),
                ("bucket_size", u32)]


# Layouts as in the uapi headers (x86-64); a mistake here would corrupt ioctl arguments.
for _struct, _size in ((kvm_userspace_memory_region, 32), (kvm_regs, 144), (kvm_segment, 24),
                       (kvm_dtable, 16), (kvm_sregs, 312), (kvm_cpuid_entry2, 40),
                       (kvm_cpuid2, 8), (kvm_stats_header, 24), (kvm_stats_desc, 16)):
    assert ctypes.sizeof(_struct) == _size, _struct.__name__
assert kvm_run.exit_reason.offset == 8 and kvm_run.exit.offset == 32

KVMIO = 0xAE
KVM_API_VERSION = 12
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2)
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2)
KVM_GET_STATS_FD = _IO(KVMIO, 0xCE)
KVM_CAP_BINARY_STATS_FD = 203

_IOCTL_NAMES = {globals()[name]: name for name in (
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_RUN",
    "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_SET_CPUID2",
    "KVM_GET_STATS_FD",
)}

KVM_EXIT_IO = 2
KVM_EXIT_IO_OUT = 1
KVM_EXIT_NAMES = {
    0: "KVM_EXIT_UNKNOWN", 1: "KVM_EXIT_EXCEPTION", 2: "KVM_EXIT_IO", 3: "KVM_EXIT_HYPERCALL",
    4: "KVM_EXIT_DEBUG", 5: "KVM_EXIT_HLT", 6: "KVM_EXIT_MMIO", 7: "KVM_EXIT_IRQ_WINDOW_OPEN",
    8: "KVM_EXIT_SHUTDOWN", 9: "KVM_EXIT_FAIL_ENTRY", 10: "KVM_EXIT_INTR",
    17: "KVM_EXIT_INTERNAL_ERROR", 24: "KVM_EXIT_SYSTEM_EVENT", 29: "KVM_EXIT_X86_RDMSR",
    30: "KVM_EXIT_X86_WRMSR", 37: "KVM_EXIT_NOTIFY",
}

KVM_STATS_TYPE_MASK = 0xF
KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT, KVM_STATS_TYPE_PEAK = 0, 1, 2

# --- libc through ctypes (errno kept per thread) -------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_ioctl.restype = ctypes.c_int
_mmap = _libc.mmap  # the vCPUs' kvm_run areas (an fd's MAP_SHARED mapping)
_mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                  ctypes.c_int, ctypes.c_long]
_mmap.restype = ctypes.c_void_p
MAP_FAILED = ctypes.c_void_p(-1).value
for _fn in (_libc.munmap, _libc.mlock):
    _fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _fn.restype = ctypes.c_int


def _check(ret: int, what: str) -> int:
    if ret < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def kvm_ioctl(fd: int, request: int, arg: int = 0) -> int:
    """ioctl(fd, request, arg), retried on EINTR; OSError names the ioctl."""
    while True:
        ret = _ioctl(fd, request, arg)
        if ret >= 0:
            return ret
        e = ctypes.get_errno()
        if e != errno.EINTR:
            name = _IOCTL_NAMES.get(request, hex(request))
            raise OSError(e, f"{name}: {os.strerror(e)}")


# --- availability -------------------------------------------------------------------------


@functools.cache
def _system_info() -> tuple[int, bytes]:
    """(size of a vCPU's kvm_run mmap, KVM_GET_SUPPORTED_CPUID as raw kvm_cpuid2 bytes)."""
    fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        mmap_size = kvm_ioctl(fd, KVM_GET_VCPU_MMAP_SIZE)
        nent = 64
        while True:  # E2BIG: the buffer is too small for all entries
            cpuid = _cpuid2_with(nent)
            try:
                kvm_ioctl(fd, KVM_GET_SUPPORTED_CPUID, ctypes.addressof(cpuid))
                break
            except OSError as e:
                if e.errno != errno.E2BIG or nent >= 4096:
                    raise
                nent *= 2
        used = ctypes.sizeof(kvm_cpuid2) + cpuid.nent * ctypes.sizeof(kvm_cpuid_entry2)
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
        version = kvm_ioctl(fd, KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            return f"{KVM_DEVICE} has KVM API version {version}, pinbench needs {KVM_API_VERSION}"
        if kvm_ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD) <= 0:
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
    run: kvm_run  # view of the kvm_run mmap
    stats_fd: int = -1
    t_first_out: int = 0  # perf_counter_ns when the first `out` came back
    t_done: int = 0
    error: BaseException | None = None


class _Vm:
    """One VM and everything it holds. close() releases it all, in order, exactly once.

    Resources are registered on an ExitStack as they are acquired, so a failure at any
    point releases exactly what exists. Release order (LIFO): stats fds, kvm_run
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
            self.vm_fd = kvm_ioctl(kvm_fd, KVM_CREATE_VM, 0)
        finally:
            os.close(kvm_fd)  # the VM fd does not need it
        self._stack.callback(os.close, self.vm_fd)
        for slot, (gpa, size, addr) in enumerate(
            ((0, self.ram_size, self.ram), (layout.gpa, layout.size, self.sys))
        ):
            region = kvm_userspace_memory_region(slot, 0, gpa, size, addr)
            kvm_ioctl(self.vm_fd, KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region))
        cpuid_buf = ctypes.create_string_buffer(cpuid, len(cpuid))
        for index, values in enumerate(regs):
            fd = kvm_ioctl(self.vm_fd, KVM_CREATE_VCPU, index)
            self._stack.callback(os.close, fd)
            addr = _mmap(None, mmap_size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
            if addr == MAP_FAILED or addr is None:
                e = ctypes.get_errno()
                raise OSError(e, f"mmap of vCPU {index}'s kvm_run: {os.strerror(e)}")
            self._stack.callback(_libc.munmap, addr, mmap_size)
            vcpu = _Vcpu(index, fd, kvm_run.from_address(addr))
            self.vcpus.append(vcpu)
            # CPUID first: KVM checks CR4/EFER in KVM_SET_SREGS against the guest's CPUID.
            kvm_ioctl(fd, KVM_SET_CPUID2, ctypes.addressof(cpuid_buf))
            self._set_sregs(vcpu, layout)
            r = kvm_regs(rflags=guest.RFLAGS, rip=layout.code, rsp=layout.stack_top(index))
            for name, value in values.items():
                setattr(r, name, value)
            kvm_ioctl(fd, KVM_SET_REGS, ctypes.addressof(r))

    @staticmethod
    def _set_sregs(vcpu: _Vcpu, layout: guest.SystemLayout) -> None:
        s = kvm_sregs()
        kvm_ioctl(vcpu.fd, KVM_GET_SREGS, ctypes.addressof(s))  # keep apic_base etc.
        code = kvm_segment(base=0, limit=0xFFFFFFFF, selector=guest.CODE_SEL, type=0xB,
                           present=1, dpl=3, db=0, s=1, l=1, g=1)
        data = kvm_segment(base=0, limit=0xFFFFFFFF, selector=guest.DATA_SEL, type=0x3,
                           present=1, dpl=3, db=1, s=1, l=0, g=1)
        s.cs = code
        s.ds = s.es = s.fs = s.gs = s.ss = data
        s.tr = kvm_segment(base=layout.tss, limit=guest.TSS_LIMIT, selector=guest.TSS_SEL,
                           type=0xB, present=1, dpl=0, s=0)  # busy 64-bit TSS
        s.ldt = kvm_segment(type=0x2, unusable=1)
        s.gdt = kvm_dtable(base=layout.gdt, limit=8 * guest.GDT_ENTRIES - 1)
        s.idt = kvm_dtable(base=0, limit=0)  # no IDT: a guest exception is a triple fault
        s.cr0, s.cr3, s.cr4, s.efer = guest.CR0, layout.pml4, guest.CR4, guest.EFER
        kvm_ioctl(vcpu.fd, KVM_SET_SREGS, ctypes.addressof(s))

    def open_stats(self) -> None:
        self.vm_stats = _Stats(kvm_ioctl(self.vm_fd, KVM_GET_STATS_FD))
        self._stack.callback(os.close, self.vm_stats.fd)
        layout = None
        for vcpu in self.vcpus:
            vcpu.stats_fd = kvm_ioctl(vcpu.fd, KVM_GET_STATS_FD)
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
        header = kvm_stats_header.from_buffer_copy(os.pread(fd, 24, 0))
        desc_size = ctypes.sizeof(kvm_stats_desc) + header.name_size
        raw = os.pread(fd, desc_size * header.num_desc, header.desc_offset)
        self.data_offset = header.data_offset
        self.entries: list[tuple[str, int, int]] = []  # (name, type, offset in u64s)
        self.data_size = 0
        for i in range(header.num_desc):
            d = kvm_stats_desc.from_buffer_copy(raw, i * desc_size)
            name_at = i * desc_size + ctypes.sizeof(kvm_stats_desc)
            name = raw[name_at : name_at + header.name_size].split(b"\0", 1)[0].decode()
            self.data_size = max(self.data_size, d.offset + 8 * d.size)
            kind = d.flags & KVM_STATS_TYPE_MASK
            if d.size == 1 and kind in (KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT,
                                        KVM_STATS_TYPE_PEAK):  # histograms are left out
                self.entries.append((name, kind, d.offset // 8))

    def read(self, fd: int, *, cumulative_only: bool) -> list[tuple[str, int]]:
        data = memoryview(os.pread(fd, self.data_size, self.data_offset)).cast("Q")
        return [(name, data[off]) for name, kind, off in self.entries
                if kind == KVM_STATS_TYPE_CUMULATIVE or not cumulative_only]


# --- running vCPUs ----------------------------------------------------------------------------


def _exit_error(vcpu: _Vcpu, expected: str) -> RuntimeError:
    run = vcpu.run
    reason = run.exit_reason
    what = f"{KVM_EXIT_NAMES.get(reason, 'exit reason')} ({reason})"
    if reason == KVM_EXIT_IO:
        io = run.exit.io
        what += f", {'out' if io.direction == KVM_EXIT_IO_OUT else 'in'} port {io.port:#x}"
    elif reason == 9:  # KVM_EXIT_FAIL_ENTRY
        reason_hw = run.exit.fail_entry.hardware_entry_failure_reason
        what += f", hardware_entry_failure_reason {reason_hw:#x}"
    elif reason == 17:  # KVM_EXIT_INTERNAL_ERROR
        what += f", suberror {run.exit.internal.suberror}"
    elif reason == 8:  # KVM_EXIT_SHUTDOWN
        what += ", the guest triple-faulted"
    try:
        regs = kvm_regs()
        kvm_ioctl(vcpu.fd, KVM_GET_REGS, ctypes.addressof(regs))
        what += f", rip {regs.rip:#x}"
    except OSError:
        pass
    return RuntimeError(f"vCPU {vcpu.index}: unexpected {what} (waiting for {expected})")


def _run_until(vcpu: _Vcpu, port: int) -> None:
    """KVM_RUN until the guest does `out` to ``port``; any other exit is an error."""
    fd, run = vcpu.fd, vcpu.run
    while True:
        if _ioctl(fd, KVM_RUN, 0) < 0:
            e = ctypes.get_errno()
            if e in (errno.EINTR, errno.EAGAIN):  # a signal: KVM_EXIT_INTR, just re-enter
                continue
            raise OSError(e, f"vCPU {vcpu.index}: KVM_RUN: {os.strerror(e)}")
        io = run.exit.io
        if (run.exit_reason == KVM_EXIT_IO and io.direction == KVM_EXIT_IO_OUT
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
    strategy: str  # "upfront" | "demand"
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


def _mem_available() -> int:
    return available_memory()


def _validate(guest_size: int, strategy: str, backing: str, vcpus: int, touch_fraction: float,
              pattern: str, host: str) -> None:
    for what, value, allowed in (("strategy", strategy, STRATEGIES),
                                 ("backing", backing, BACKINGS),
                                 ("pattern", pattern, PATTERNS), ("host", host, HOSTS)):
        if value not in allowed:
            raise InputError(f"unknown {what} {value!r} (expected one of {', '.join(allowed)})")
    if _integer(guest_size) is None or guest_size <= 0 or guest_size % guest.HUGE_SIZE:
        raise InputError(f"guest size {guest_size!r} must be a positive multiple of 2MiB")
    if _integer(vcpus) is None or not 1 <= vcpus <= MAX_VCPUS:
        raise InputError(f"vcpus {vcpus!r} must be between 1 and {MAX_VCPUS}")
    if not 0 < touch_fraction <= 1:
        raise InputError(f"touch_fraction {touch_fraction!r} must be in (0, 1]")
    available = _mem_available()
    if guest_size > MEM_FRACTION * available:
        raise InputError(
            f"guest size {format_size(guest_size)} needs {format_size(guest_size)} of RAM; "
            f"only {format_size(int(MEM_FRACTION * available))} may be used "
            f"({MEM_FRACTION:.0%} of MemAvailable {format_size(available)})"
        )


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

        if strategy == "upfront":
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
    return _libc.mlock(addr, size)


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
            if _ioctl(fd, KVM_RUN, 0) < 0:
                e = ctypes.get_errno()
                if e in (errno.EINTR, errno.EAGAIN):
                    continue
                raise OSError(e, f"KVM_RUN: {os.strerror(e)}")
            if run.exit_reason != KVM_EXIT_IO:
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

    Includes the Python/ctypes call of ioctl(KVM_RUN) for each exit (well under a
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

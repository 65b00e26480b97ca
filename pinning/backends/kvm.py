"""A real KVM guest driven from Python with ioctls (DESIGN §3, method "kvm").

run_vm() creates a VM through /dev/kvm and backs its guest RAM with one anonymous
mapping (4 KiB pages or THP), optionally pinned upfront the way a VMM can from user
space (MADV_POPULATE_WRITE, then mlock) -- or, for a guest_memfd strategy, with a
guest_memfd (KVM_CREATE_GUEST_MEMFD, mmap-able and initially shared, bound with
KVM_SET_USER_MEMORY_REGION2), optionally preallocated with fallocate. It runs ring-3
guest code on each vCPU that writes one dword into every page of its slice of guest
RAM; optionally discards a range of guest RAM (the discard half of a private ->
shared conversion: PUNCH_HOLE on the guest_memfd, MADV_DONTNEED on anonymous memory)
and lets the guest touch it again; and times each phase.
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
from pinning.backends import kvm_uapi as uapi
from pinning.backends import libc
from pinning.backends.hostmem import check_fits
from pinning.backends.realmem import GuestMemory
from pinning.model import strategies
from pinning.model.names import HOST_STATES, MAX_VCPUS, PREFAULTS, InputError, choice
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


#: The guest_memfd flags pinbench's guest needs: the VMM maps the fd (the guest's RAM as
#: the VMM sees it, and the memslot's userspace_addr), and all of it starts shared, so
#: that a default VM (no private memory attributes) can fault it in.
GMEM_FLAGS = uapi.GUEST_MEMFD_FLAG_MMAP | uapi.GUEST_MEMFD_FLAG_INIT_SHARED


def kvm_capabilities() -> dict[str, int]:
    """KVM_CHECK_EXTENSION on a fresh default VM of each capability pinbench's guest_memfd
    guest depends on, by name (a VM's answer can differ from /dev/kvm's)."""
    kvm_fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        vm_fd = uapi.kvm_ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0)
    finally:
        os.close(kvm_fd)
    try:
        return {name: uapi.kvm_ioctl(vm_fd, uapi.KVM_CHECK_EXTENSION, cap)
                for cap, name in uapi.CAP_NAMES.items()}
    finally:
        os.close(vm_fd)


@functools.cache
def _gmem_probe(prefault: str) -> str | None:
    reason = kvm_unavailable()
    if reason:
        return reason
    try:
        caps = kvm_capabilities()
    except OSError as e:
        return f"{KVM_DEVICE}: {e}"
    for name, why in (("KVM_CAP_USER_MEMORY2", "no KVM_SET_USER_MEMORY_REGION2"),
                      ("KVM_CAP_GUEST_MEMFD", "no KVM_CREATE_GUEST_MEMFD")):
        if caps[name] <= 0:
            return f"{name} is {caps[name]} on this kernel: {why} (Linux >= 6.8 needed)"
    flags = caps["KVM_CAP_GUEST_MEMFD_FLAGS"]
    if flags & GMEM_FLAGS != GMEM_FLAGS:
        return (f"KVM_CAP_GUEST_MEMFD_FLAGS is {flags:#x} on this kernel: a guest_memfd "
                "cannot be mmap()ed and shared from the start (MMAP|INIT_SHARED = "
                f"{GMEM_FLAGS:#x}; Linux >= 6.18 needed)")
    # The only real test: every step of a gmem run, on the smallest guest (a refused
    # ioctl or fallocate is named with its errno; no capability is taken on trust).
    try:
        _run(guest.HUGE_SIZE, strategy="", gmem=True, pin=False, backing="4k", vcpus=1,
             touch_fraction=1.0, pattern="sequential", seed=0, host="warm", prefault=prefault,
             punch_fraction=1.0)
    except libc.CallError as e:
        line = e.line()
        cap = caps["KVM_CAP_PRE_FAULT_MEMORY"]
        if e.what == "KVM_PRE_FAULT_MEMORY" and cap <= 0:
            line += f": KVM_CAP_PRE_FAULT_MEMORY is {cap} on this kernel"
        return line
    except (OSError, RuntimeError) as e:
        return f"{KVM_DEVICE} cannot run pinbench's guest on guest_memfd memory: {e}"
    return None


def gmem_unavailable(prefault: str = "none") -> str | None:
    """None when this KVM runs pinbench's guest on guest_memfd memory with ``prefault``
    (one of names.PREFAULTS), else one line naming what is missing or the exact step this
    kernel refused and its errno, e.g. ``KVM_PRE_FAULT_MEMORY: EOPNOTSUPP (Operation not
    supported): KVM_CAP_PRE_FAULT_MEMORY is 0 on this kernel``. Found by running a 2 MiB
    gmem guest through every step once (cached per ``prefault``)."""
    choice("prefault", prefault, PREFAULTS)
    return _gmem_probe(prefault)


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


class _GmemRam:
    """Guest RAM from a guest_memfd: the fd (KVM_CREATE_GUEST_MEMFD on the VM, mmap-able,
    initially shared) and the VMM's MAP_SHARED mapping of it, which is both the memslot's
    userspace_addr and how the VMM (and the tests) see guest RAM. release() unmaps, then
    closes the fd; safe to call twice."""

    locked = False  # guest_memfd memory is never the VMM's to mlock

    def __init__(self, vm_fd: int, size: int) -> None:
        args = uapi.kvm_create_guest_memfd(size=size, flags=GMEM_FLAGS)
        self.fd = uapi.kvm_ioctl(vm_fd, uapi.KVM_CREATE_GUEST_MEMFD, ctypes.addressof(args))
        try:
            self.addr = libc.map_shared(self.fd, size, "mmap of the guest_memfd")
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size

    def preallocate(self) -> None:
        """Allocate every folio of the file up front (gmem's upfront: no mapping, no pin).
        Mode 0 is refused by guest_memfd (EOPNOTSUPP): it cannot grow the file."""
        libc.fallocate(self.fd, libc.FALLOC_FL_KEEP_SIZE, 0, self.size,
                       "fallocate(FALLOC_FL_KEEP_SIZE) of the guest_memfd")

    def punch(self, offset: int, length: int) -> None:
        """Free ``[offset, offset + length)``: KVM zaps its mappings of it, the VMM's
        mapping loses the pages too; the next touch allocates a zeroed folio."""
        libc.fallocate(self.fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, offset,
                       length, "fallocate(FALLOC_FL_PUNCH_HOLE) of the guest_memfd")

    def release(self) -> None:
        if self.addr:
            libc.munmap(self.addr, self.size)
            self.addr = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Vm:
    """One VM and everything it holds. close() releases it all, in order, exactly once.

    Resources are registered on an ExitStack as they are acquired, so a failure at any
    point releases exactly what exists. Guest RAM's release is registered first, so it
    runs last. Release order (LIFO): stats fds, uapi.kvm_run mmaps, vCPU fds, VM fd,
    system memory, guest RAM -- anonymous: munlock if locked, then munmap; guest_memfd:
    munmap, then close the fd. The VM fd is the last reference to an anonymous-RAM VM
    (KVM destroys the VM there). A guest_memfd holds its own reference to the VM
    (kvm_gmem_create takes one with kvm_get_kvm), so closing the VM fd first is safe:
    KVM destroys a gmem VM when the guest_memfd's last reference goes, i.e. once the
    mapping is gone and the fd closed.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.vm_fd = -1
        self.vcpus: list[_Vcpu] = []
        self.threads: list[threading.Thread] = []
        self.mem: GuestMemory | _GmemRam | None = None  # guest RAM
        self.ram = 0
        self.ram_size = 0
        self.sys = 0
        self.vm_stats: _Stats | None = None
        self.vcpu_stats: _Stats | None = None  # descriptors of vCPU 0, valid for all
        self._stack.callback(self._release_ram)

    # resources -----------------------------------------------------------------------
    def map_ram(self, size: int, backing: str) -> None:
        """Anonymous guest RAM (before the VM exists: it does not need it)."""
        # 2 MiB-aligned, so that a 2 MiB range of the mapping is one of guest-physical
        # memory (THP, and KVM's 2 MiB shadow pages); munlock + munmap on release.
        self.mem = GuestMemory(size, "2m" if backing == "thp" else "4k")
        self.ram, self.ram_size = self.mem.addr, size

    def _map_gmem(self, size: int) -> None:
        self.mem = _GmemRam(self.vm_fd, size)
        self.ram, self.ram_size = self.mem.addr, size

    def _release_ram(self) -> None:
        if self.mem is not None:
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

    def create(self, layout: guest.SystemLayout, regs: list[dict[str, int]], *,
               gmem: bool = False) -> None:
        """KVM_CREATE_VM, (``gmem``: guest RAM from a new guest_memfd), both memslots, and
        one set-up vCPU per entry of ``regs``."""
        mmap_size, cpuid = _system_info()
        kvm_fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.vm_fd = uapi.kvm_ioctl(kvm_fd, uapi.KVM_CREATE_VM, 0)
        finally:
            os.close(kvm_fd)  # the VM fd does not need it
        self._stack.callback(os.close, self.vm_fd)
        if gmem:
            self._map_gmem(layout.ram_size)
            region2 = uapi.kvm_userspace_memory_region2(
                slot=0, flags=uapi.KVM_MEM_GUEST_MEMFD, guest_phys_addr=0,
                memory_size=self.ram_size, userspace_addr=self.ram, guest_memfd_offset=0,
                guest_memfd=self.mem.fd)
            uapi.kvm_ioctl(self.vm_fd, uapi.KVM_SET_USER_MEMORY_REGION2,
                           ctypes.addressof(region2))
        else:
            region = uapi.kvm_userspace_memory_region(0, 0, 0, self.ram_size, self.ram)
            uapi.kvm_ioctl(self.vm_fd, uapi.KVM_SET_USER_MEMORY_REGION, ctypes.addressof(region))
        # The system memslot is the VMM's own anonymous memory in either case (a default
        # VM mixes both kinds of memslot).
        region = uapi.kvm_userspace_memory_region(1, 0, layout.gpa, layout.size, self.sys)
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
            self.set_regs(vcpu, layout, values)

    @staticmethod
    def set_regs(vcpu: _Vcpu, layout: guest.SystemLayout, values: dict[str, int]) -> None:
        r = uapi.kvm_regs(rflags=guest.RFLAGS, rip=layout.code,
                          rsp=layout.stack_top(vcpu.index))
        for name, value in values.items():
            setattr(r, name, value)
        uapi.kvm_ioctl(vcpu.fd, uapi.KVM_SET_REGS, ctypes.addressof(r))

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

    def pre_fault(self) -> None:
        """KVM_PRE_FAULT_MEMORY of all guest RAM, each vCPU its own share (the ioctl is a
        vCPU's: it maps through that vCPU's MMU); KVM advances the struct as it goes and
        may stop early (EAGAIN, or a partial count), so each range is looped over."""
        n = len(self.vcpus)
        pages = self.ram_size // PAGE_SIZE
        for i, vcpu in enumerate(self.vcpus):
            first, end = i * pages // n, (i + 1) * pages // n
            r = uapi.kvm_pre_fault_memory(gpa=first * PAGE_SIZE,
                                          size=(end - first) * PAGE_SIZE)
            while r.size:
                left = r.size
                try:
                    uapi.kvm_ioctl(vcpu.fd, uapi.KVM_PRE_FAULT_MEMORY, ctypes.addressof(r))
                except OSError as e:
                    if e.errno != errno.EAGAIN:
                        raise
                    continue
                if r.size >= left:  # success without progress: never loop forever
                    raise RuntimeError(f"vCPU {vcpu.index}: KVM_PRE_FAULT_MEMORY made no "
                                       f"progress at gpa {r.gpa:#x}")

    def discard(self, first: int, count: int) -> None:
        """Free ``count`` pages of guest RAM from page ``first``: PUNCH_HOLE on a
        guest_memfd, MADV_DONTNEED on anonymous memory (run_vm discards guest_memfd
        memory only; never call it on locked memory: MADV_DONTNEED refuses an mlocked
        range with EINVAL)."""
        offset, length = first * PAGE_SIZE, count * PAGE_SIZE
        if isinstance(self.mem, _GmemRam):
            self.mem.punch(offset, length)
        else:
            libc.check(libc.madvise(self.ram + offset, length, mmap.MADV_DONTNEED),
                       "MADV_DONTNEED of guest RAM")

    def complete_exits(self) -> None:
        """Let KVM finish each vCPU's pending `out` before its registers are replaced:
        KVM completes an I/O exit only on the next KVM_RUN, which with immediate_exit
        set returns EINTR right after, without running guest code (KVM's API doc)."""
        for vcpu in self.vcpus:
            vcpu.run.immediate_exit = 1
            try:
                if libc.ioctl(vcpu.fd, uapi.KVM_RUN, 0) < 0:
                    e = ctypes.get_errno()
                    if e not in (errno.EINTR, errno.EAGAIN):
                        raise libc.CallError(e, f"vCPU {vcpu.index}: KVM_RUN")
            finally:
                vcpu.run.immediate_exit = 0

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

    def ram_view(self) -> np.ndarray:
        """Guest RAM as uint32, through the VMM's mapping (valid until close())."""
        return np.ctypeslib.as_array((ctypes.c_uint32 * (self.ram_size // 4))
                                     .from_address(self.ram))

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
    """One run of run_vm: what was run and how long each phase took (ns).

    Phases, in order: create; populate + lock (a strategy that pins at startup) or
    prefault (a guest_memfd strategy's fallocate / KVM_PRE_FAULT_MEMORY); the first guest
    instruction; the guest's touch of its pages; with punch_fraction > 0 the conversion
    (punch, then re-touch); teardown. A phase that did not run is 0.
    """

    guest_size: int  # bytes of guest RAM (the measured memslot)
    strategy: str  # a registered strategy: it pins upfront if it pins at startup
    backing: str  # "4k" | "thp"
    vcpus: int
    pattern: str
    touch_fraction: float
    host: str  # "warm" | "cold" (as given; warming is the caller's job)
    create_ns: int  # KVM_CREATE_VM .. memslots set, vCPUs created and set up (gmem:
    #                 with KVM_CREATE_GUEST_MEMFD and the mmap of the guest_memfd)
    populate_ns: int  # upfront: MADV_POPULATE_WRITE of all guest RAM; else 0
    lock_ns: int  # upfront: mlock of all guest RAM; else 0
    first_insn_ns: int  # vCPUs released into KVM_RUN .. the last one's first `out`
    touch_ns: int  # vCPUs released together .. the last one's `out` to PORT_DONE
    teardown_ns: int  # fds closed (VM destroyed), munlock (upfront), munmap of guest RAM
    #                   (and of the small system memslot; gmem: then the guest_memfd closed)
    pages_touched: int  # 4 KiB pages the guest wrote (once each)
    stats: dict[str, int] = field(default_factory=dict)  # KVM binary stats (see run_vm)
    error: str | None = None  # e.g. mlock failed: a result, not an exception
    gmem: bool = False  # guest RAM is a guest_memfd (the strategy's guest_memfd)
    prefault: str = "none"  # gmem only: "none" | "fallocate" | "map"
    prefault_ns: int = 0  # fallocate(KEEP_SIZE) or KVM_PRE_FAULT_MEMORY of all guest RAM
    punch_fraction: float = 0.0  # the fraction of guest RAM converted (0: no conversion)
    pages_punched: int = 0  # pages discarded (0 where pinned upfront: see run_vm)
    punch_ns: int = 0  # PUNCH_HOLE of the guest_memfd / MADV_DONTNEED of the range
    pages_retouched: int = 0  # pages of the range the guest wrote again
    retouch_ns: int = 0  # vCPUs released together .. the last one done re-touching
    #: KVM's vCPU counters over the conversion (punch + re-touch): after minus before
    convert_stats: dict[str, int] = field(default_factory=dict)

    @property
    def startup_ns(self) -> int:
        return (self.create_ns + self.populate_ns + self.lock_ns + self.prefault_ns
                + self.first_insn_ns)

    @property
    def convert_ns(self) -> int:
        """The conversion: the discard (punch) and the guest using the range again."""
        return self.punch_ns + self.retouch_ns

    @property
    def ns_per_page_touch(self) -> float:
        return self.touch_ns / self.pages_touched if self.pages_touched else math.nan

    @property
    def setup_ns_per_page(self) -> float:
        """Work before the guest runs that puts guest RAM in place (populate + lock, or a
        gmem prefault) per 4 KiB page of guest RAM."""
        return (self.populate_ns + self.lock_ns + self.prefault_ns) / (
            self.guest_size // PAGE_SIZE)

    @property
    def ns_per_page_punch(self) -> float:
        return self.punch_ns / self.pages_punched if self.pages_punched else math.nan

    @property
    def ns_per_page_retouch(self) -> float:
        return self.retouch_ns / self.pages_retouched if self.pages_retouched else math.nan

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(startup_ns=self.startup_ns, convert_ns=self.convert_ns,
                 ns_per_page_touch=self.ns_per_page_touch,
                 setup_ns_per_page=self.setup_ns_per_page,
                 # None (left out of metadata), not NaN, where no conversion ran
                 ns_per_page_punch=self.ns_per_page_punch if self.pages_punched else None,
                 ns_per_page_retouch=(self.ns_per_page_retouch if self.pages_retouched
                                      else None))
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
              pattern: str, host: str, prefault: str, punch_fraction: float) -> None:
    s = strategies.get(strategy)
    for what, value, allowed in (("backing", backing, HOST_PAGES),
                                 ("pattern", pattern, GUEST_PATTERNS),
                                 ("host", host, HOST_STATES),
                                 ("prefault", prefault, PREFAULTS)):
        if value not in allowed:
            raise InputError(f"unknown {what} {value!r} (expected one of {', '.join(allowed)})")
    if _integer(guest_size) is None or guest_size <= 0 or guest_size % guest.HUGE_SIZE:
        raise InputError(f"guest size {guest_size!r} must be a positive multiple of 2MiB")
    if _integer(vcpus) is None or not 1 <= vcpus <= MAX_VCPUS:
        raise InputError(f"vcpus {vcpus!r} must be between 1 and {MAX_VCPUS}")
    if not 0 < touch_fraction <= 1:
        raise InputError(f"touch_fraction {touch_fraction!r} must be in (0, 1]")
    if (isinstance(punch_fraction, bool) or not isinstance(punch_fraction, int | float)
            or not 0 <= punch_fraction <= 1):
        raise InputError(f"punch_fraction {punch_fraction!r} must be in [0, 1]")
    if s.guest_memfd and backing != "4k":
        raise InputError(f"strategy {strategy!r} takes guest RAM from a guest_memfd, whose "
                         f"folios are 4 KiB: backing {backing!r} does not apply")
    if not s.guest_memfd and prefault != "none":
        raise InputError(f"prefault {prefault!r} applies to guest_memfd strategies only, "
                         f"not to {strategy!r}")
    check_fits(guest_size, f"a guest of {format_size(guest_size)}")


def punch_range(pages: int, fraction: float) -> tuple[int, int]:
    """(first page, page count) of the range a conversion of ``fraction`` of ``pages``
    discards: round(fraction * pages) pages (at least 1 if fraction > 0, none if 0),
    centred, its start rounded down to a 2 MiB boundary (whole huge folios and KVM's
    2 MiB mappings where the length allows)."""
    if fraction <= 0:
        return 0, 0
    count = min(pages, max(1, round(fraction * pages)))
    huge = guest.HUGE_SIZE // PAGE_SIZE
    return (pages - count) // 2 // huge * huge, count


def run_vm(guest_size: int, *, strategy: str = "demand", backing: str = "4k", vcpus: int = 1,
           touch_fraction: float = 1.0, pattern: str = "sequential", seed: int = 0,
           host: str = "warm", prefault: str = "none", punch_fraction: float = 0.0,
           _inspect: Callable[[np.ndarray, np.ndarray], None] | None = None,
           _inspect_punch: Callable[[np.ndarray, int, int], None] | None = None) -> KvmRun:
    """Create a VM, put its guest RAM in place, run the guest touching its memory,
    optionally convert part of it, tear down; time each phase (KvmRun).

    Guest RAM: anonymous memory, or for a guest_memfd strategy
    (``strategies.get(strategy).guest_memfd``) a guest_memfd created on the VM
    (KVM_CREATE_GUEST_MEMFD, MMAP | INIT_SHARED), mmap()ed MAP_SHARED and bound to the
    memslot with KVM_SET_USER_MEMORY_REGION2 (KVM_MEM_GUEST_MEMFD); the system memslot
    stays anonymous. Before the guest runs, a strategy that pins at startup populates and
    mlocks anonymous RAM (the way a VMM can pin from user space); a guest_memfd guest
    with ``prefault`` "fallocate" preallocates all of it (fallocate FALLOC_FL_KEEP_SIZE;
    mode 0 is EOPNOTSUPP on a guest_memfd), with "map" each vCPU maps its share with
    KVM_PRE_FAULT_MEMORY. Anything else starts empty and is faulted in by the touch.

    The guest writes one dword (~gfn) to round(touch_fraction * pages) pages (at least
    1): the first ones in order (sequential) or a random subset in random order
    (random, seeded by ``seed``). vCPU i touches the i-th contiguous slice of that
    page list.

    With ``punch_fraction`` > 0 a conversion follows (the discard half of private ->
    shared, then shared -> private and the guest's first touch again): the range
    :func:`punch_range` gives is discarded from a guest_memfd (PUNCH_HOLE | KEEP_SIZE,
    as QEMU's kvm_convert_memory does) and timed (punch_ns); then the vCPUs, their
    slices of that range split as for the touch, write every page of it again, in order
    (retouch_ns), whichever pages the touch had written. Anonymous guest RAM (the
    pinning strategies) is not discarded (pages_punched 0; only the re-touch runs), as
    in the model: an SEV/SEV-ES guest's conversion is its page-table bit, and QEMU
    disables RAM discard for SEV/SEV-ES guests (ram_block_discard_disable in
    sev_kvm_init), whose memory KVM pins (MADV_DONTNEED of an mlocked range would
    fail with EINVAL anyway).

    ``stats`` holds this KVM's cumulative vCPU counters summed over vCPUs, under KVM's
    names, and the VM's counters/gauges as ``vm.<name>``, at the end; ``convert_stats``
    the vCPU counters' growth over the conversion.

    A configuration this host cannot run is an InputError with one line (see
    :func:`kvm_unavailable`, :func:`gmem_unavailable`).

    ``_inspect`` (tests): called as _inspect(ram, gfns) after the guest ran (and after
    the re-touch) and before teardown; ``ram`` is guest RAM as uint32 through the VMM's
    mapping (valid only during the call), ``gfns`` the touched gfns in touch order.
    ``_inspect_punch`` (tests): called as _inspect_punch(ram, first, count) right after
    the discard, before the re-touch. Reading a discarded guest_memfd page through the
    mapping allocates it (zeroed), so the re-touch after an inspection is not timed
    as it would be.
    """
    _validate(guest_size, strategy, backing, vcpus, touch_fraction, pattern, host, prefault,
              punch_fraction)
    gmem = strategies.get(strategy).guest_memfd
    reason = gmem_unavailable(prefault) if gmem else kvm_unavailable()
    if reason:
        raise InputError(reason)
    return _run(int(guest_size), strategy=strategy, gmem=gmem,
                pin=not gmem and strategies.get(strategy).pins_at_startup(), backing=backing,
                vcpus=int(vcpus), touch_fraction=float(touch_fraction), pattern=pattern,
                seed=seed, host=host, prefault=prefault, punch_fraction=float(punch_fraction),
                _inspect=_inspect, _inspect_punch=_inspect_punch)


def _run(guest_size: int, *, strategy: str, gmem: bool, pin: bool, backing: str, vcpus: int,
         touch_fraction: float, pattern: str, seed: int, host: str, prefault: str,
         punch_fraction: float,
         _inspect: Callable[[np.ndarray, np.ndarray], None] | None = None,
         _inspect_punch: Callable[[np.ndarray, int, int], None] | None = None) -> KvmRun:
    """run_vm's work, on checked input (also the guest_memfd probe's, on a 2 MiB guest)."""
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
    punch_first, punch_count = punch_range(npages, punch_fraction)

    populate_ns = lock_ns = prefault_ns = first_insn_ns = touch_ns = 0
    punch_ns = retouch_ns = pages_touched = pages_punched = pages_retouched = 0
    convert_stats: dict[str, int] = {}
    error = None
    vm = _Vm()
    try:
        if not gmem:  # a guest_memfd needs the VM: created with it, and timed with it
            vm.map_ram(guest_size, backing)
        vm.map_system(layout, table)
        t0 = time.perf_counter_ns()
        vm.create(layout, regs, gmem=gmem)
        create_ns = time.perf_counter_ns() - t0
        vm.open_stats()

        # A VMM can pin from user space only all at once, before the guest runs
        # (populate + mlock): the strategies that pin at startup do.
        if pin:
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
        if gmem and prefault != "none":  # gmem's "upfront": nothing is pinned or locked
            t0 = time.perf_counter_ns()
            if prefault == "fallocate":
                vm.mem.preallocate()
            else:
                vm.pre_fault()
            prefault_ns = time.perf_counter_ns() - t0

        if error is None:  # as upstream: if pinning fails, the VM never runs
            first_insn_ns, touch_ns = _run_vcpus(vm)
            pages_touched = n
            if punch_count:
                before = vm.read_stats()
                t0 = time.perf_counter_ns()
                if gmem:  # only guest_memfd memory is discarded (see run_vm)
                    vm.discard(punch_first, punch_count)
                    pages_punched = punch_count
                punch_ns = time.perf_counter_ns() - t0
                if _inspect_punch is not None:
                    _inspect_punch(vm.ram_view(), punch_first, punch_count)
                vm.complete_exits()
                for i, vcpu in enumerate(vm.vcpus):
                    lo = punch_first + i * punch_count // vcpus
                    hi = punch_first + (i + 1) * punch_count // vcpus
                    vm.set_regs(vcpu, layout, {"rip": layout.code + guest.ENTRY["sequential"],
                                               "rdi": lo * PAGE_SIZE, "rcx": hi - lo})
                _, retouch_ns = _run_vcpus(vm)
                pages_retouched = punch_count
                after = vm.read_stats()
                convert_stats = {k: v - before.get(k, 0) for k, v in after.items()
                                 if not k.startswith("vm.")}
        stats = vm.read_stats()
        if _inspect is not None:
            touched = table if table is not None else np.arange(n, dtype=np.uint32)
            _inspect(vm.ram_view(), touched[:pages_touched])
        t0 = time.perf_counter_ns()
        vm.close()
        teardown_ns = time.perf_counter_ns() - t0
    finally:
        vm.close()
    return KvmRun(guest_size, strategy, backing, vcpus, pattern, float(touch_fraction), host,
                  create_ns, populate_ns, lock_ns, first_insn_ns, touch_ns, teardown_ns,
                  pages_touched, stats, error, gmem, prefault, prefault_ns,
                  float(punch_fraction), pages_punched, punch_ns, pages_retouched, retouch_ns,
                  convert_stats)


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

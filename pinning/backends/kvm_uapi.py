"""KVM's user-space API as ctypes definitions: ioctl numbers, structures, exit reasons.

Layouts follow include/uapi/linux/kvm.h (x86-64); a mistake here would corrupt ioctl
arguments, so each structure's size is asserted. The VM driver is pinning.backends.kvm.
"""

from __future__ import annotations

import ctypes

from pinning.backends import libc

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


class kvm_userspace_memory_region2(ctypes.Structure):
    """KVM_SET_USER_MEMORY_REGION2's argument: a memslot that may take its memory from a
    guest_memfd (flag KVM_MEM_GUEST_MEMFD)."""

    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
        ("guest_memfd_offset", u64),  # where the memslot starts in the guest_memfd
        ("guest_memfd", u32),  # the fd (KVM_MEM_GUEST_MEMFD)
        ("pad1", u32),
        ("pad2", u64 * 14),
    ]


class kvm_create_guest_memfd(ctypes.Structure):
    _fields_ = [("size", u64), ("flags", u64), ("reserved", u64 * 6)]


class kvm_pre_fault_memory(ctypes.Structure):
    """KVM_PRE_FAULT_MEMORY's argument; KVM advances gpa and shrinks size as it goes."""

    _fields_ = [("gpa", u64), ("size", u64), ("flags", u64), ("padding", u64 * 5)]


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


def cpuid2_with(nent: int) -> ctypes.Structure:
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
for _struct, _size in ((kvm_userspace_memory_region, 32), (kvm_userspace_memory_region2, 160),
                       (kvm_create_guest_memfd, 64), (kvm_pre_fault_memory, 64),
                       (kvm_regs, 144), (kvm_segment, 24),
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
# guest_memfd (Linux 6.8+; mmap-able and initially shared since 6.18), same header:
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)  # a VM ioctl
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xD4, kvm_create_guest_memfd)  # a VM ioctl: a new fd
KVM_PRE_FAULT_MEMORY = _IOWR(KVMIO, 0xD5, kvm_pre_fault_memory)  # a vCPU ioctl
KVM_MEM_GUEST_MEMFD = 1 << 2  # kvm_userspace_memory_region2.flags
GUEST_MEMFD_FLAG_MMAP = 1 << 0  # kvm_create_guest_memfd.flags: the fd can be mmap()ed
GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1  # ... and its memory starts shared (faultable by mmap)

# Capabilities (KVM_CHECK_EXTENSION), include/uapi/linux/kvm.h
KVM_CAP_BINARY_STATS_FD = 203
KVM_CAP_USER_MEMORY2 = 231
KVM_CAP_MEMORY_ATTRIBUTES = 233
KVM_CAP_GUEST_MEMFD = 234
KVM_CAP_PRE_FAULT_MEMORY = 236
KVM_CAP_GUEST_MEMFD_FLAGS = 244  # returns the GUEST_MEMFD_FLAG_* this VM accepts

IOCTL_NAMES = {globals()[name]: name for name in (
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_RUN",
    "KVM_GET_REGS", "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_SET_CPUID2",
    "KVM_GET_STATS_FD", "KVM_SET_USER_MEMORY_REGION2", "KVM_CREATE_GUEST_MEMFD",
    "KVM_PRE_FAULT_MEMORY",
)}
CAP_NAMES = {globals()[name]: name for name in (
    "KVM_CAP_BINARY_STATS_FD", "KVM_CAP_USER_MEMORY2", "KVM_CAP_MEMORY_ATTRIBUTES",
    "KVM_CAP_GUEST_MEMFD", "KVM_CAP_PRE_FAULT_MEMORY", "KVM_CAP_GUEST_MEMFD_FLAGS",
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


def kvm_ioctl(fd: int, request: int, arg: int = 0) -> int:
    """ioctl(fd, request, arg), retried on EINTR; OSError names the ioctl."""
    return libc.ioctl_retry(fd, request, arg, IOCTL_NAMES.get(request, hex(request)))

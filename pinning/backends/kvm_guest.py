"""What pinning/kvm.py puts into its guest: hand-assembled code and the system memslot.

Guest-physical layout (identity-mapped, so guest virtual == guest physical):

    [0, ram_size)                     memslot 0: guest RAM, the memory being measured
    [ram_size, ram_size + sys_size)   memslot 1: system memory (always populated)

Guest RAM starts at gfn 0 because nothing here needs low memory: the vCPUs start
directly in 64-bit long mode (KVM_SET_SREGS), so there is no real-mode code, BIOS
or reset vector. The system memslot follows guest RAM and holds, at these
offsets from its start:

    0x0000            PML4 (one entry)
    0x1000            PDPT (one entry per GiB covered)
    0x2000 ...        one page directory per GiB: 2 MiB pages, identity map of both memslots
    then, a page each: GDT, TSS, code; one stack page per vCPU;
    next 2 MiB        the random pattern's gfn table (uint32 per touched page)
    boundary

The memslot is backed by transparent huge pages where the host has them. Its
first 2 MiB hold the guest's page tables, which the shadow MMU write-protects, so
KVM maps that part with 4 KiB pages; the gfn table starts on the next 2 MiB
boundary so that KVM can map it with 2 MiB pages (a few faults, not one per 4 KiB
of table, during the measured touch loop).

Why the guest looks the way it does (HOST.md, "/dev/kvm"): this KVM is a shadow-
paging one (PVM) where only ring-3 guest code runs natively, so the guest code is
64-bit ring-3 code (CS/SS DPL 3) with PAE paging, the user bit set at every level,
2 MiB guest pages (1 GiB pages triple-fault: the CPUID lacks them), and a TR
loaded whose TSS has an I/O permission bitmap allowing the guest's ports, so that
`out` to a port is allowed in ring 3 and exits to the VMM as KVM_EXIT_IO (RFLAGS.IOPL
= 3 alone is not enough here: PVM clears IOPL). There is no IDT (limit 0): any guest
exception becomes a triple fault, i.e. KVM_EXIT_SHUTDOWN, reported as an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAGE_SIZE = 4096
HUGE_SIZE = 2 << 20  # a 2 MiB guest page (PDE with PS) and a host THP
GIB = 1 << 30

# I/O ports the guest writes to (`out imm8, al`); each `out` exits with KVM_EXIT_IO.
PORT_START = 0x10  # the vCPU's first instruction ran
PORT_DONE = 0x11  # the vCPU touched all of its pages
PORT_TICK = 0x12  # one iteration of the exit round-trip loop

# Page-table entry bits. Accessed and dirty are preset (as in a kernel's direct map)
# so that the shadow MMU never has to set them in the guest's tables.
_P, _RW, _US, _A, _D, _PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
TABLE_ENTRY = _P | _RW | _US | _A  # PML4E / PDPTE: user-accessible, writable
PDE_2M = _P | _RW | _US | _A | _D | _PS  # 2 MiB page, user-accessible, writable

# GDT selectors. Ring-3 selectors carry RPL 3.
CODE_SEL = (1 << 3) | 3  # 64-bit code, DPL 3
DATA_SEL = (2 << 3) | 3  # data/stack, DPL 3
TSS_SEL = 3 << 3  # 64-bit TSS (a 16-byte descriptor: GDT entries 3 and 4)
GDT_ENTRIES = 5
# 64-bit TSS (104 bytes), then an I/O permission bitmap allowing ports 0-255 (32 zero
# bytes) and its 0xff terminator byte; the limit is the offset of that last byte.
TSS_IOMAP = 104
TSS_LIMIT = TSS_IOMAP + 256 // 8

# Control registers for long mode with paging.
CR0_PE, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 4, 1 << 5, 1 << 16, 1 << 31
CR0 = CR0_PE | CR0_ET | CR0_NE | CR0_WP | CR0_PG
CR4 = 1 << 5  # PAE
EFER = (1 << 8) | (1 << 10)  # LME | LMA
# Reserved bit 1, IOPL 3: `out` allowed in ring 3 on VMX/SVM KVM. PVM (this host's
# KVM) clears IOPL in the guest's RFLAGS; there `out` in ring 3 #GPs, KVM emulates it
# and allows it by the TSS's I/O permission bitmap. So the guest has both.
RFLAGS = 0x2 | (3 << 12)


def _segment_descriptor(access: int, flags: int) -> int:
    """Flat 8-byte code/data descriptor: base 0, limit 0xfffff (4 GiB with G)."""
    return 0xFFFF | (access << 40) | (0xF << 48) | (flags << 52)


def _tss_descriptor(base: int) -> tuple[int, int]:
    """16-byte 64-bit TSS descriptor (type 0xb, busy, as it is once TR is loaded)."""
    low = (
        (TSS_LIMIT & 0xFFFF)
        | ((base & 0xFFFFFF) << 16)
        | (0x8B << 40)  # present, DPL 0, type 0xb: busy 64-bit TSS
        | (((base >> 24) & 0xFF) << 56)
    )
    return low, base >> 32


# --- guest code -------------------------------------------------------------------------
# Each program is a list of (bytes, comment) pairs, labels (str) and jumps
# ("jcc", opcode, label): rel8 offsets are resolved by _assemble.
#
# Register contract, set with KVM_SET_REGS per vCPU:
#   rdi  sequential: gpa of the vCPU's first page; random: gpa of its slice of the gfn table
#   rcx  pages to touch (may be 0), or the round-trip loop count
# Every touched page gets one dword at offset 0: the page's gfn, inverted (~gfn), so
# that a written page is told from a never-written (zero) one also for gfn 0.

_SEQUENTIAL = [
    "seq",
    (b"\xe6" + bytes([PORT_START]), "out  PORT_START, al   ; first instruction: tell the VMM"),
    (b"\x48\x85\xc9", "test rcx, rcx"),
    ("jcc", 0x74, "seq_done"),  # jz: nothing to touch
    "seq_loop",
    (b"\x48\x89\xf8", "mov  rax, rdi         ; page gpa"),
    (b"\x48\xc1\xe8\x0c", "shr  rax, 12          ; -> gfn (guest RAM starts at gpa 0)"),
    (b"\xf7\xd0", "not  eax              ; ~gfn"),
    (b"\x89\x07", "mov  [rdi], eax       ; the one write to this page"),
    (b"\x48\x81\xc7\x00\x10\x00\x00", "add  rdi, 4096        ; next page"),
    (b"\x48\xff\xc9", "dec  rcx"),
    ("jcc", 0x75, "seq_loop"),  # jnz
    "seq_done",
    (b"\xe6" + bytes([PORT_DONE]), "out  PORT_DONE, al"),
    ("jcc", 0xEB, "seq_done"),  # jmp: never re-entered; if it were, signal again
]

_RANDOM = [
    "rnd",
    (b"\xe6" + bytes([PORT_START]), "out  PORT_START, al   ; first instruction: tell the VMM"),
    (b"\x48\x85\xc9", "test rcx, rcx"),
    ("jcc", 0x74, "rnd_done"),  # jz: nothing to touch
    "rnd_loop",
    (b"\x8b\x07", "mov  eax, [rdi]       ; next gfn from the table (zero-extends rax)"),
    (b"\x48\x89\xc2", "mov  rdx, rax"),
    (b"\x48\xc1\xe2\x0c", "shl  rdx, 12          ; its gpa"),
    (b"\xf7\xd0", "not  eax              ; ~gfn"),
    (b"\x89\x02", "mov  [rdx], eax       ; the one write to this page"),
    (b"\x48\x83\xc7\x04", "add  rdi, 4           ; next table entry"),
    (b"\x48\xff\xc9", "dec  rcx"),
    ("jcc", 0x75, "rnd_loop"),  # jnz
    "rnd_done",
    (b"\xe6" + bytes([PORT_DONE]), "out  PORT_DONE, al"),
    ("jcc", 0xEB, "rnd_done"),  # jmp
]

_TICK = [
    "tick",
    (b"\xe6" + bytes([PORT_START]), "out  PORT_START, al   ; warm-up exit, not timed"),
    "tick_loop",
    (b"\xe6" + bytes([PORT_TICK]), "out  PORT_TICK, al    ; one exit per iteration"),
    (b"\x48\xff\xc9", "dec  rcx"),
    ("jcc", 0x75, "tick_loop"),  # jnz
    "tick_done",
    (b"\xe6" + bytes([PORT_DONE]), "out  PORT_DONE, al"),
    ("jcc", 0xEB, "tick_done"),  # jmp
]


def _assemble(program: list) -> tuple[bytes, dict[str, int]]:
    """Concatenate the instructions, resolving each jump's rel8 against its label."""
    labels: dict[str, int] = {}
    pc = 0
    for item in program:  # pass 1: addresses (every jump is 2 bytes: opcode, rel8)
        if isinstance(item, str):
            labels[item] = pc
        else:
            pc += 2 if item[0] == "jcc" else len(item[0])
    out = bytearray()
    for item in program:  # pass 2: bytes
        if isinstance(item, str):
            continue
        if item[0] == "jcc":
            rel = labels[item[2]] - (len(out) + 2)
            if not -128 <= rel <= 127:
                raise AssertionError(f"jump to {item[2]} out of rel8 range")
            out += bytes([item[1], rel & 0xFF])
        else:
            out += item[0]
    return bytes(out), labels


CODE, _LABELS = _assemble(_SEQUENTIAL + _RANDOM + _TICK)
#: entry point (offset into the code page) of each guest program
ENTRY = {"sequential": _LABELS["seq"], "random": _LABELS["rnd"], "tick": _LABELS["tick"]}
assert len(CODE) <= PAGE_SIZE


# --- system memslot ---------------------------------------------------------------------


def _round_up(n: int, align: int) -> int:
    return -(-n // align) * align


@dataclass(frozen=True)
class SystemLayout:
    """Guest-physical addresses of everything in the system memslot."""

    ram_size: int  # guest RAM: [0, ram_size)
    vcpus: int
    table_entries: int  # uint32 gfns for the random pattern (0: none)
    gpa: int  # start of the system memslot (= ram_size)
    size: int  # its size, a multiple of 2 MiB
    pd_count: int  # page directories (one per GiB identity-mapped)

    @classmethod
    def compute(cls, ram_size: int, vcpus: int, table_entries: int = 0) -> SystemLayout:
        # The system memslot is < 1 GiB and starts right after RAM, so one more page
        # directory than RAM needs always covers it.
        pd_count = -(-ram_size // GIB) + 1
        fixed = (2 + pd_count + 3 + vcpus) * PAGE_SIZE  # PML4, PDPT, PDs, GDT, TSS, code, stacks
        size = _round_up(fixed, HUGE_SIZE) + _round_up(4 * table_entries, HUGE_SIZE)
        return cls(ram_size, vcpus, table_entries, ram_size, size, pd_count)

    @property
    def pml4(self) -> int:
        return self.gpa

    @property
    def pdpt(self) -> int:
        return self.gpa + PAGE_SIZE

    def pd(self, i: int) -> int:
        return self.gpa + (2 + i) * PAGE_SIZE

    @property
    def gdt(self) -> int:
        return self.pd(self.pd_count)

    @property
    def tss(self) -> int:
        return self.gdt + PAGE_SIZE

    @property
    def code(self) -> int:
        return self.tss + PAGE_SIZE

    def stack_top(self, vcpu: int) -> int:
        """Initial rsp of ``vcpu`` (the guest code uses no stack; set for a sane state)."""
        return self.code + (2 + vcpu) * PAGE_SIZE

    @property
    def table(self) -> int:
        return _round_up(self.code + (1 + self.vcpus) * PAGE_SIZE, HUGE_SIZE)

    def write(self, mem: np.ndarray, table: np.ndarray | None = None) -> None:
        """Fill the system memslot's memory ``mem`` (uint8, ``size`` bytes, zeroed)."""

        def at(gpa: int, dtype, count: int) -> np.ndarray:
            off = gpa - self.gpa
            return mem[off : off + count * np.dtype(dtype).itemsize].view(dtype)

        at(self.pml4, np.uint64, 1)[0] = self.pdpt | TABLE_ENTRY
        pdpt = at(self.pdpt, np.uint64, self.pd_count)
        pdpt[:] = [self.pd(i) | TABLE_ENTRY for i in range(self.pd_count)]
        # All page directories are contiguous: entry k maps gpa k * 2 MiB.
        pdes = at(self.pd(0), np.uint64, 512 * self.pd_count)
        pdes[:] = np.arange(pdes.size, dtype=np.uint64) * np.uint64(HUGE_SIZE) | np.uint64(PDE_2M)

        gdt = at(self.gdt, np.uint64, GDT_ENTRIES)
        gdt[0] = 0
        gdt[CODE_SEL >> 3] = _segment_descriptor(0xFB, 0xA)  # P, DPL 3, code exec/read; G, L
        gdt[DATA_SEL >> 3] = _segment_descriptor(0xF3, 0xC)  # P, DPL 3, data read/write; G, D/B
        gdt[TSS_SEL >> 3], gdt[(TSS_SEL >> 3) + 1] = _tss_descriptor(self.tss)
        # TSS: stack pointers all 0 (never used: no IDT); the I/O permission bitmap
        # right after it allows every port < 256 (zero bits), then the 0xff terminator.
        at(self.tss + 102, np.uint16, 1)[0] = TSS_IOMAP
        at(self.tss + TSS_LIMIT, np.uint8, 1)[0] = 0xFF

        at(self.code, np.uint8, len(CODE))[:] = np.frombuffer(CODE, dtype=np.uint8)
        if table is not None and table.size:
            at(self.table, np.uint32, table.size)[:] = table

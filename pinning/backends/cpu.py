"""Numba kernels that run this machine's own memory operations: the streaming-write and
random-update rates, the guest's real first touches (backing "real"), and for
:mod:`pinning.harness.calibrate` touching present pages, dirtying lines, flushing pages,
timing single first-touch faults with the TSC, and reading CPUID.

The cache-flush kernels call LLVM's x86 intrinsics (CLFLUSH, CLFLUSHOPT, MFENCE),
:func:`readcyclecounter` LLVM's ``llvm.readcyclecounter`` (RDTSC on x86) and
:func:`cpuid` an x86 ``cpuid`` in LLVM inline assembly, each through
:func:`numba.extending.intrinsic`. Without the JIT (``NUMBA_DISABLE_JIT=1``) the
kernels run as Python and these helpers are no-ops returning None: :data:`CAN_FLUSH`
and :data:`CAN_READ_TSC` are then False and the caller must not report what needs them
(:func:`cpuid_regs` returns None).
"""

from __future__ import annotations

import platform

import numba

from pinning.model.jit import kernel
from pinning.model.units import PAGE_SIZE

LINE_SIZE = 64  # x86 cache line, bytes
WORDS_PER_LINE = LINE_SIZE // 8  # int64 elements per line
WORDS_PER_PAGE = PAGE_SIZE // 8
LINES_PER_PAGE = PAGE_SIZE // LINE_SIZE

#: True when the flush kernels really execute CLFLUSH/CLFLUSHOPT (the JIT is on).
CAN_FLUSH = not numba.config.DISABLE_JIT
#: True when :func:`readcyclecounter` really reads the cycle counter (the JIT is on).
CAN_READ_TSC = not numba.config.DISABLE_JIT
#: True when :func:`cpuid_regs` really executes CPUID (the JIT is on, and this is x86-64).
CAN_CPUID = not numba.config.DISABLE_JIT and platform.machine() in ("x86_64", "AMD64")


def _line_pointer(context, builder, signature, args):
    """``(i8*) &arr[index]`` in LLVM IR."""
    from llvmlite import ir
    from numba.core import cgutils

    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
    return builder.bitcast(ptr, ir.IntType(8).as_pointer())


def _call_void(builder, name: str, args, argtys) -> None:
    from llvmlite import ir
    from numba.core import cgutils

    fnty = ir.FunctionType(ir.VoidType(), argtys)
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, args)


def _clflush_codegen(context, builder, signature, args):
    from llvmlite import ir

    ptr = _line_pointer(context, builder, signature, args)
    _call_void(builder, "llvm.x86.sse2.clflush", [ptr], [ir.IntType(8).as_pointer()])
    return context.get_dummy_value()


def _clflushopt_codegen(context, builder, signature, args):
    from llvmlite import ir

    ptr = _line_pointer(context, builder, signature, args)
    _call_void(builder, "llvm.x86.clflushopt", [ptr], [ir.IntType(8).as_pointer()])
    return context.get_dummy_value()


def _mfence_codegen(context, builder, signature, args):
    _call_void(builder, "llvm.x86.sse2.mfence", [], [])
    return context.get_dummy_value()


def _readcyclecounter_codegen(context, builder, signature, args):
    from llvmlite import ir
    from numba.core import cgutils

    fnty = ir.FunctionType(ir.IntType(64), [])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.readcyclecounter")
    return builder.call(fn, [])


def _cpuid_codegen(context, builder, signature, args):
    from llvmlite import binding, ir

    # LLVM emits inline assembly through its assembly parser, which Numba does not
    # initialise (without it LLVM aborts: "Inline asm not supported by this streamer").
    binding.initialize_native_asmparser()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.LiteralStructType([i32] * 4), [i32, i32])
    # EAX = leaf, ECX = subleaf in; EAX, EBX, ECX, EDX out (LLVM saves RBX around it).
    asm = ir.InlineAsm(fnty, "cpuid", "={eax},={ebx},={ecx},={edx},{eax},{ecx}",
                       side_effect=True)
    u32 = numba.core.types.uint32
    regs = builder.call(asm, [context.cast(builder, value, ty, u32)
                              for value, ty in zip(args, signature.args, strict=True)])
    return context.make_tuple(builder, signature.return_type,
                              [builder.extract_value(regs, i) for i in range(4)])


if numba.config.DISABLE_JIT:

    def clflush(arr, index) -> None:
        """Flush the line of ``arr[index]`` (no-op without the JIT: Python cannot flush)."""

    def clflushopt(arr, index) -> None:
        """Flush the line of ``arr[index]``, weakly ordered (no-op without the JIT)."""

    def mfence() -> None:
        """Full memory fence (no-op without the JIT)."""

    def readcyclecounter() -> None:
        """The CPU's cycle counter (None without the JIT: Python cannot read it)."""
        return None

    def cpuid(leaf, subleaf) -> None:
        """CPUID's (EAX, EBX, ECX, EDX) (None without the JIT: Python cannot execute it)."""
        return None

else:

    @numba.extending.intrinsic
    def clflush(typingctx, arr, index):
        """CLFLUSH the cache line holding ``arr[index]`` (LLVM ``llvm.x86.sse2.clflush``)."""
        return numba.core.types.void(arr, index), _clflush_codegen

    @numba.extending.intrinsic
    def clflushopt(typingctx, arr, index):
        """CLFLUSHOPT the cache line holding ``arr[index]`` (LLVM ``llvm.x86.clflushopt``).

        Only call it on a CPU whose /proc/cpuinfo flags list ``clflushopt``:
        LLVM cannot select it for a CPU without it and aborts the process.
        """
        return numba.core.types.void(arr, index), _clflushopt_codegen

    @numba.extending.intrinsic
    def mfence(typingctx):
        """MFENCE (LLVM ``llvm.x86.sse2.mfence``): orders the flushes around it."""
        return numba.core.types.void(), _mfence_codegen

    @numba.extending.intrinsic
    def readcyclecounter(typingctx):
        """The CPU's cycle counter as int64 (LLVM ``llvm.readcyclecounter``: RDTSC on x86).

        RDTSC is not serialising; a page fault between two reads is, so the cycles of one
        faulting store are bracketed exactly.
        """
        return numba.core.types.int64(), _readcyclecounter_codegen

    @numba.extending.intrinsic
    def cpuid(typingctx, leaf, subleaf):
        """CPUID of ``leaf``/``subleaf``: (EAX, EBX, ECX, EDX) as uint32 (LLVM inline asm).

        x86 only: only call it where :data:`CAN_CPUID` is True.
        """
        u32 = numba.core.types.uint32
        return numba.core.types.UniTuple(u32, 4)(leaf, subleaf), _cpuid_codegen


@kernel
def touch_pages(a, stride):
    """Write one word every ``stride`` elements of ``a`` (one per page for stride 512 int64)."""
    for i in range(0, a.shape[0], stride):
        a[i] = i


@kernel
def dirty_lines(a, start, stop, value):
    """Write one word of every cache line of ``a[start:stop]`` so each line is dirty."""
    for i in range(start, stop, WORDS_PER_LINE):
        a[i] = value


# Two kernels, not one with a flag: a kernel that merely contains CLFLUSHOPT
# cannot be compiled for a CPU without it.
@kernel
def flush_pages_clflush(a, start, stop):
    """Per 4 KiB page of ``a[start:stop]``: MFENCE, CLFLUSH of its 64 lines, MFENCE.

    The fences bracket each page as Linux's clflush_cache_range() does.
    """
    for page in range(start, stop, WORDS_PER_PAGE):
        mfence()
        for i in range(page, page + WORDS_PER_PAGE, WORDS_PER_LINE):
            clflush(a, i)
        mfence()


@kernel
def flush_pages_clflushopt(a, start, stop):
    """Per 4 KiB page of ``a[start:stop]``: MFENCE, CLFLUSHOPT of its 64 lines, MFENCE."""
    for page in range(start, stop, WORDS_PER_PAGE):
        mfence()
        for i in range(page, page + WORDS_PER_PAGE, WORDS_PER_LINE):
            clflushopt(a, i)
        mfence()


@kernel
def fault_cycles(a, cycles):
    """Write one word to each of the first ``cycles.shape[0]`` 4 KiB pages of ``a`` (int64,
    fresh: each write is a first-touch page fault), one by one, ``cycles[i]`` the cycle
    count of page i's write; returns the cycle count of the whole loop (to convert to ns).

    ``cycles`` must be populated beforehand, or its own faults are timed too.
    """
    start = readcyclecounter()
    for i in range(cycles.shape[0]):
        t0 = readcyclecounter()
        a[i * WORDS_PER_PAGE] = 1
        cycles[i] = readcyclecounter() - t0
    return readcyclecounter() - start


def cpuid_regs(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int] | None:
    """(EAX, EBX, ECX, EDX) of CPUID ``leaf``/``subleaf``; None where it cannot run (the
    JIT is off, or this is not x86-64: see :data:`CAN_CPUID`)."""
    if not CAN_CPUID:
        return None
    return tuple(int(r) for r in _cpuid_kernel(leaf, subleaf))


@kernel
def _cpuid_kernel(leaf, subleaf):
    return cpuid(leaf, subleaf)


@kernel
def stream_write(a, value):
    """Write ``value`` to every element in order (the machine's streaming-write rate)."""
    for i in range(a.shape[0]):
        a[i] = value


@kernel
def random_update(a, index):
    """``a[index[i]] += 1`` for each i (the machine's cache-miss-bound update rate)."""
    for i in range(index.shape[0]):
        a[index[i]] += 1


@kernel
def touch_units(words, units, unit_pages, start, stop):
    """Write one word to each 4 KiB page of ``units[start:stop]`` (``words``: int64 view of
    guest RAM, 512 per page); the pages written. A page's first write is a host fault."""
    n = 0
    for i in range(start, stop):
        first = units[i] * unit_pages
        for p in range(first, first + unit_pages):
            words[p * 512] += 1
            n += 1
    return n

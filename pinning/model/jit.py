"""The one place that sets Numba's options for every kernel."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

from pinning.model.cache import cache_dir

F = TypeVar("F", bound=Callable)

# Keyed by every model source (see pinning.model.cache).
numba.config.CACHE_DIR = str(cache_dir())


# cache=True: a second process loads machine code instead of compiling.
# _nrt=False: kernels never allocate, and without Numba's runtime every call between
# kernels no longer takes and drops an atomic reference on each array argument --
# that alone cost ~15 ns per simulated page.
_OPTIONS = {"cache": True, "nogil": True, "boundscheck": False, "_nrt": False}


def kernel(fn: F) -> F:
    """Compile ``fn`` as a pinbench kernel: nopython, cached on disk, GIL released."""
    return numba.njit(**_OPTIONS)(fn)


def inline_kernel(fn: F) -> F:
    """A kernel that Numba inlines into each kernel that calls it (its IR, before LLVM):
    for a small function on the hot path of two kernels, e.g. the nested page fault."""
    return numba.njit(inline="always", **_OPTIONS)(fn)



def _prefetch_codegen(context, builder, signature, args):
    from llvmlite import ir
    from numba.core import cgutils

    aryty = signature.args[0]
    ary = context.make_array(aryty)(context, builder, args[0])
    ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
    i8p = ir.IntType(8).as_pointer()
    i32 = ir.IntType(32)
    fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
    fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
    # rw=1 (for write), locality=3 (keep in all cache levels), data cache.
    builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
    return context.get_dummy_value()


if numba.config.DISABLE_JIT:

    def prefetch(arr, index) -> None:
        """Hint that ``arr[index]`` will be written soon (no-op without the JIT)."""

else:

    @numba.extending.intrinsic
    def prefetch(typingctx, arr, index):
        """Hint that ``arr[index]`` will be written soon (LLVM's prefetch intrinsic).

        A random fault storm is bound by cache misses on the gfn-indexed
        arrays; fetching the lines of an access a few steps ahead overlaps them.
        """
        return numba.core.types.void(arr, index), _prefetch_codegen

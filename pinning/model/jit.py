"""The one place that sets Numba's options for every kernel."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numba

F = TypeVar("F", bound=Callable)

# Modules whose kernels call each other. Numba's disk cache is keyed by each
# function's own source file only, so a kernel in one module would keep
# running the stale machine code of a changed kernel in another (numba issue
# #1833). Keying the cache directory by all of them together avoids that.
KERNEL_MODULES = (
    "model/jit.py", "model/kernels/engine.py", "model/kernels/vcpu.py",
    "model/kernels/patterns.py", "backends/hostmem.py", "backends/cpu.py")


def _cache_dir() -> str:
    here = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in KERNEL_MODULES:
        path = here / name
        if path.exists():
            digest.update(path.read_bytes())
    base = os.environ.get("NUMBA_CACHE_DIR") or str(here / "__pycache__" / "numba")
    return os.path.join(base, f"pinbench-{digest.hexdigest()[:16]}")


numba.config.CACHE_DIR = _cache_dir()


def kernel(fn: F) -> F:
    """Compile ``fn`` as a pinbench kernel: nopython, cached on disk, GIL released."""
    # cache=True: a second process loads machine code instead of compiling.
    # _nrt=False: kernels never allocate, and without Numba's runtime every
    # call between kernels no longer takes and drops an atomic reference on
    # each array argument -- that alone cost ~15 ns per simulated page.
    return numba.njit(cache=True, nogil=True, boundscheck=False, _nrt=False)(fn)


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

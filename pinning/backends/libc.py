"""The one place pinbench calls the C library through ctypes: madvise, mlock, mmap, ioctl,
fallocate.

Every function keeps errno per thread (``use_errno``) and the helpers raise OSError
naming what failed, so callers never read errno themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os

#: Python 3.11's mmap module lacks this constant (Linux 5.14+).
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

madvise = _libc.madvise
madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
madvise.restype = ctypes.c_int
mlock = _libc.mlock
munlock = _libc.munlock
munmap = _libc.munmap
for _fn in (mlock, munlock, munmap):
    _fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    _fn.restype = ctypes.c_int
mmap_ = _libc.mmap
mmap_.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_long)
mmap_.restype = ctypes.c_void_p
MAP_FAILED = ctypes.c_void_p(-1).value
ioctl = _libc.ioctl
ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
ioctl.restype = ctypes.c_int
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)  # off_t: 64-bit
_fallocate.restype = ctypes.c_int

# fallocate(2) modes (include/uapi/linux/falloc.h)
FALLOC_FL_KEEP_SIZE = 0x01  # allocate without changing the file's size
FALLOC_FL_PUNCH_HOLE = 0x02  # free the range (must be or-ed with FALLOC_FL_KEEP_SIZE)


class CallError(OSError):
    """An OSError from a C library call or ioctl that also names the call (``what``), so
    that a caller can say which step failed and with which errno in one line."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.what = what

    def line(self) -> str:
        """``what: ERRNO (strerror)``, e.g. ``KVM_RUN: EINTR (Interrupted system call)``."""
        # Linux has one value for ENOTSUP and EOPNOTSUPP; the kernel returns it as EOPNOTSUPP
        name = ("EOPNOTSUPP" if self.errno == errno.EOPNOTSUPP
                else errno.errorcode.get(self.errno, str(self.errno)))
        return f"{self.what}: {name} ({os.strerror(self.errno)})"


def errno_error(what: str) -> CallError:
    """An OSError of the calling thread's errno, its message ``what: strerror``."""
    return CallError(ctypes.get_errno(), what)


def check(rc: int, what: str) -> int:
    """``rc`` if it is >= 0, else OSError naming ``what`` and errno."""
    if rc < 0:
        raise errno_error(what)
    return rc


def populate_write(addr: int, size: int, what: str = "MADV_POPULATE_WRITE") -> None:
    """Fault every page of ``[addr, addr + size)`` in, writable: frames allocated and zeroed."""
    check(madvise(addr, size, MADV_POPULATE_WRITE), what)


def map_shared(fd: int, size: int, what: str) -> int:
    """mmap(MAP_SHARED, read/write) of ``size`` bytes of ``fd``; the address."""
    addr = mmap_(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    if addr == MAP_FAILED or addr is None:
        raise errno_error(what)
    return addr


def ioctl_retry(fd: int, request: int, arg: int, name: str) -> int:
    """ioctl(fd, request, arg), retried on EINTR; OSError (CallError) names the ioctl."""
    while True:
        ret = ioctl(fd, request, arg)
        if ret >= 0:
            return ret
        e = ctypes.get_errno()
        if e != errno.EINTR:
            raise CallError(e, name)


def fallocate(fd: int, mode: int, offset: int, length: int, what: str) -> None:
    """fallocate(2) of ``[offset, offset + length)`` of ``fd``, retried on EINTR (os has
    only posix_fallocate, i.e. mode 0); CallError naming ``what`` otherwise."""
    while _fallocate(fd, mode, offset, length) != 0:
        if ctypes.get_errno() != errno.EINTR:
            raise errno_error(what)


_prctl = _libc.prctl
_prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
_prctl.restype = ctypes.c_int
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = 9) -> None:
    """Ask the kernel to send ``sig`` (default SIGKILL) to this process when its parent
    dies: a child started as ``preexec_fn`` then never outlives a killed parent (e.g. a
    dask worker lost mid-benchmark, whose benchmark runs again elsewhere)."""
    if _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0):
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")

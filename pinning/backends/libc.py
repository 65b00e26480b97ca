"""The one place pinbench calls the C library through ctypes: madvise, mlock, mmap, ioctl.

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


def errno_error(what: str) -> OSError:
    """An OSError of the calling thread's errno, its message ``what: strerror``."""
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


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
    """ioctl(fd, request, arg), retried on EINTR; OSError names the ioctl."""
    while True:
        ret = ioctl(fd, request, arg)
        if ret >= 0:
            return ret
        e = ctypes.get_errno()
        if e != errno.EINTR:
            raise OSError(e, f"{name}: {os.strerror(e)}")

"""Real host memory for the model's guest (``backing = "real"``, DESIGN §3 method 2).

Guest RAM is one anonymous private mapping backed by 4 KiB pages (level ``4k``) or
eligible for transparent huge pages (level ``2m``). Upfront pinning populates it
(MADV_POPULATE_WRITE: a real host page fault per page, frames allocated and zeroed)
and locks it (mlock, the user-space long-term pin) at startup; demand pinning leaves
it empty, and the guest's first touch of each page is a real host page fault. The
model's bookkeeping runs beside it as in the sim.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import threading

import numpy as np

from pinning.model.units import PAGE_SIZE, InputError, format_size

#: Python 3.11's mmap module lacks this constant (Linux 5.14+).
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
#: Host page sizes a real backing can give each level (1 GiB needs hugetlbfs: not here).
REAL_LEVELS = ("4k", "2m")
_HUGE = 2 << 20

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.mlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.munlock.argtypes = (ctypes.c_void_p, ctypes.c_size_t)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class GuestMemory:
    """A guest's RAM on a real anonymous mapping; release() (or ``with``) unmaps it.

    Also the kvm backing's guest RAM and system memslot (pinning.backends.kvm), so that real
    guest memory is mapped, advised and released in one place.
    """

    def __init__(self, guest_size: int, level: str) -> None:
        if level not in REAL_LEVELS:
            raise InputError(f"level {level!r} cannot be backed by real memory here "
                             f"(one of {', '.join(REAL_LEVELS)}; 1 GiB pages need hugetlbfs)")
        if guest_size <= 0 or guest_size % _HUGE:
            raise InputError(f"guest size {format_size(guest_size)} is not a positive "
                             "multiple of 2 MiB")
        self.size = guest_size
        self.level = level
        self.locked = False
        # Over-map by 2 MiB so that guest RAM starts 2 MiB-aligned: a THP can only back
        # an aligned 2 MiB range, and 4k backing gets the same layout for comparability.
        self._map = mmap.mmap(-1, guest_size + _HUGE,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = np.frombuffer(self._map, dtype=np.uint8)
        base = whole.ctypes.data
        skip = (-base) % _HUGE
        self.words = whole[skip:skip + guest_size].view(np.int64)
        del whole
        self.addr = base + skip
        self._map.madvise(mmap.MADV_HUGEPAGE if level == "2m" else mmap.MADV_NOHUGEPAGE)

    def populate(self) -> None:
        """Fault every page in, writable (MADV_POPULATE_WRITE): frames allocated and zeroed."""
        _check(_libc.madvise(self.addr, self.size, MADV_POPULATE_WRITE),
               f"MADV_POPULATE_WRITE of {format_size(self.size)}")

    def lock(self) -> str | None:
        """mlock all of guest RAM; the error text (e.g. RLIMIT_MEMLOCK) instead of raising."""
        if _libc.mlock(self.addr, self.size) != 0:
            err = ctypes.get_errno()
            return f"mlock of {format_size(self.size)} failed: {os.strerror(err)}"
        self.locked = True
        return None

    def touch(self, units: np.ndarray, bounds: np.ndarray, unit_pages: int) -> int:
        """Write one word to every 4 KiB page of each unit, each vCPU's slice
        ``units[bounds[v]:bounds[v+1]]`` on its own thread (the kernel releases the GIL, so
        first-touch faults of several vCPUs run in parallel as they would in a guest).
        Returns the number of pages written."""
        from pinning.backends.hostmem import touch_units  # numba: only where the model touches

        nv = len(bounds) - 1
        if nv == 1:
            return int(touch_units(self.words, units, unit_pages, 0, len(units)))
        done = [0] * nv

        def work(v: int) -> None:
            done[v] = int(touch_units(self.words, units, unit_pages, int(bounds[v]),
                                      int(bounds[v + 1])))

        threads = [threading.Thread(target=work, args=(v,)) for v in range(nv)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(done)

    def release(self) -> None:
        """munlock (if locked) and unmap; safe to call twice."""
        if self._map.closed:
            return
        if self.locked:
            _libc.munlock(self.addr, self.size)
            self.locked = False
        self.words = np.zeros(0, dtype=np.int64)  # drop the export so the map can close
        self._map.close()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def page_bytes(level: str) -> int:
    """Bytes of one host page of a real backing at ``level``."""
    return _HUGE if level == "2m" else PAGE_SIZE

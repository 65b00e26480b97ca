"""Real host memory for the model's guest (``backing = "real"``, DESIGN §3 method 2).

Guest RAM is one anonymous private mapping backed by 4 KiB pages (level ``4k``) or
eligible for transparent huge pages (level ``2m``). Upfront pinning populates it
(MADV_POPULATE_WRITE: a real host page fault per page, frames allocated and zeroed)
and locks it (mlock, the user-space long-term pin) at startup; demand pinning leaves
it empty, and the guest's first touch of each page is a real host page fault. The
model's bookkeeping runs beside it as in the sim.
"""

from __future__ import annotations

import mmap
import threading

import numpy as np

from pinning.backends import libc
from pinning.model.names import InputError
from pinning.model.units import PAGE_SIZE, format_size

#: Host page sizes a real backing can give each level (1 GiB needs hugetlbfs: not here).
REAL_LEVELS = ("4k", "2m")
HUGE_SIZE = 2 << 20


class GuestMemory:
    """A guest's RAM on a real anonymous mapping; release() (or ``with``) unmaps it.

    Also the kvm backing's guest RAM and system memslot (pinning.backends.kvm), so that real
    guest memory is mapped, advised and released in one place.
    """

    def __init__(self, guest_size: int, level: str) -> None:
        if level not in REAL_LEVELS:
            raise InputError(f"level {level!r} cannot be backed by real memory here "
                             f"(one of {', '.join(REAL_LEVELS)}; 1 GiB pages need hugetlbfs)")
        if guest_size <= 0 or guest_size % HUGE_SIZE:
            raise InputError(f"guest size {format_size(guest_size)} is not a positive "
                             "multiple of 2 MiB")
        self.size = guest_size
        self.level = level
        self.locked = False
        # Over-map by 2 MiB so that guest RAM starts 2 MiB-aligned: a THP can only back
        # an aligned 2 MiB range, and 4k backing gets the same layout for comparability.
        self._map = mmap.mmap(-1, guest_size + HUGE_SIZE,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        whole = np.frombuffer(self._map, dtype=np.uint8)
        base = whole.ctypes.data
        skip = (-base) % HUGE_SIZE
        self.words = whole[skip:skip + guest_size].view(np.int64)
        del whole
        self.addr = base + skip
        self._map.madvise(mmap.MADV_HUGEPAGE if level == "2m" else mmap.MADV_NOHUGEPAGE)

    def populate(self) -> None:
        """Fault every page in, writable (MADV_POPULATE_WRITE): frames allocated and zeroed."""
        libc.populate_write(self.addr, self.size,
                            f"MADV_POPULATE_WRITE of {format_size(self.size)}")

    def lock(self) -> str | None:
        """mlock all of guest RAM; the error text (e.g. RLIMIT_MEMLOCK) instead of raising."""
        if libc.mlock(self.addr, self.size) != 0:
            return f"mlock of {format_size(self.size)} failed: {libc.errno_error('mlock').strerror}"
        self.locked = True
        return None

    def touch(self, units: np.ndarray, bounds: np.ndarray, unit_pages: int) -> int:
        """Write one word to every 4 KiB page of each unit, each vCPU's slice
        ``units[bounds[v]:bounds[v+1]]`` on its own thread (the kernel releases the GIL, so
        first-touch faults of several vCPUs run in parallel as they would in a guest).
        Returns the number of pages written."""
        from pinning.backends.cpu import touch_units  # numba: only where the guest touches

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
            libc.munlock(self.addr, self.size)
            self.locked = False
        self.words = np.zeros(0, dtype=np.int64)  # drop the export so the map can close
        self._map.close()

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def page_bytes(level: str) -> int:
    """Bytes of one host page of a real backing at ``level``."""
    return HUGE_SIZE if level == "2m" else PAGE_SIZE

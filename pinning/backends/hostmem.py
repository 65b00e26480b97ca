"""Host memory helpers: keep this VM's host from distorting timed runs."""

from __future__ import annotations

import mmap

import numpy as np

from pinning.model.jit import kernel


def warm_host(nbytes: int) -> None:
    """Populate and free ``nbytes`` of anonymous memory right before a measured value.

    This machine is itself a VM whose idle memory is handed back to its host
    after a few seconds; touching it again costs 2-5 us more per 4 KiB page
    (HOST.md). Populating the amount a run needs makes the host give it back.
    """
    if nbytes <= 0:
        return
    buf = np.empty(nbytes // 8, dtype=np.int64)
    buf.fill(1)
    del buf


def anon_array(n: int, dtype, *, huge: bool = False) -> np.ndarray:
    """An array of ``n`` elements on its own anonymous mapping, backed by 4 KiB pages
    (or, with ``huge``, eligible for transparent huge pages); its contents are zero.

    The backing is chosen explicitly because numpy's default (MADV_HUGEPAGE on large
    arrays) gets huge pages or not depending on the host's free memory, and the sim's
    random-access speed depended on it: the same benchmark came out ~1x or ~2-3x in
    different processes. The mapping is released when the array is.
    """
    dt = np.dtype(dtype)
    nbytes = max(1, n * dt.itemsize)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE if huge else mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype=dt, count=n)


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

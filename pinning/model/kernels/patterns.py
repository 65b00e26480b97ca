"""Numba kernels of the access patterns: a fast replica of NumPy's shuffle, a Zipf rank search.

Pure functions over arrays, used by :mod:`pinning.model.workloads` for guests of
2^20 units and more, where cache misses dominate.
"""

from __future__ import annotations

import numba
import numpy as np

from pinning.model.jit import kernel, prefetch

PREFETCH_AHEAD = 32  # accesses between a prefetch and its use
#: False under NUMBA_DISABLE_JIT: the callers then use NumPy's own (same) algorithms.
JIT = not numba.config.DISABLE_JIT


@kernel
def swap_targets(raw, i, js):
    """NumPy's random_interval(i), i, i-1, ... over 32-bit draws from ``raw``: the swap targets.

    Stores them in ``js`` and returns how many (stops early when i reaches 0).
    """
    k = 0
    low = np.uint64(0xFFFFFFFF)
    for w in range(raw.shape[0]):
        for half in range(2):
            if i == 0:
                return k
            value = raw[w] & low if half == 0 else raw[w] >> np.uint64(32)
            mask = np.uint64(i)
            mask |= mask >> np.uint64(1)
            mask |= mask >> np.uint64(2)
            mask |= mask >> np.uint64(4)
            mask |= mask >> np.uint64(8)
            mask |= mask >> np.uint64(16)
            value &= mask
            if value <= np.uint64(i):  # else rejected: the next draw is tried for the same i
                js[k] = value
                k += 1
                i -= 1
    return k


@kernel
def swap_all(x, i, js, k):
    """Swap ``x[i - t]`` with ``x[js[t]]`` for t = 0 .. k-1, prefetching targets ahead."""
    for t in range(k):
        if t + PREFETCH_AHEAD < k:
            prefetch(x, js[t + PREFETCH_AHEAD])
        j = js[t]
        tmp = x[i - t]
        x[i - t] = x[j]
        x[j] = tmp


@kernel
def guided_search(cdf, guide, width, u, ranks):
    """``min(searchsorted(cdf, u, 'right'), n - 1)``, starting each search at its bucket's guide."""
    n = cdf.shape[0]
    nb = guide.shape[0]
    m = u.shape[0]
    for k in range(m):
        if k + PREFETCH_AHEAD < m:
            prefetch(guide, min(int(u[k + PREFETCH_AHEAD] / width), nb - 1))
        x = u[k]
        b = min(int(x / width), nb - 1)
        j = guide[b]
        while j > 0 and cdf[j - 1] > x:
            j -= 1
        while j < n - 1 and cdf[j] <= x:
            j += 1
        ranks[k] = j

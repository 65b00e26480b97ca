"""Host memory helpers: keep this VM's host from distorting timed runs."""

from __future__ import annotations

import numpy as np

from pinning.jit import kernel


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

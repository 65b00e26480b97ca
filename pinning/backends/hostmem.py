"""This host's memory: how much is available, and warming it before a measured value.

No numba here: the harness checks memory before anything imports the kernels.
"""

from __future__ import annotations

import os

import numpy as np

from pinning.model.names import MEMORY_HEADROOM, InputError
from pinning.model.units import format_size


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


def available_memory() -> int:
    """MemAvailable from /proc/meminfo in bytes (or physical memory where that is missing)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def usable_memory() -> tuple[int, int]:
    """(bytes a run may plan to use, MemAvailable): the headroom rule of names.MEMORY_HEADROOM."""
    avail = available_memory()
    return int(MEMORY_HEADROOM * avail), avail


def check_fits(needed: int, what: str) -> None:
    """Refuse ``what`` if it needs more than MEMORY_HEADROOM of MemAvailable, in one line.

    The line states the one rule with its three numbers ("needs X, may use 85 % of Y
    available (Z)"): naming only what is available read as a contradiction when X lay
    between the usable share and all of it.
    """
    usable, avail = usable_memory()
    if needed > usable:
        raise InputError(f"{what} does not fit: it needs {format_size(needed)}, may use "
                         f"{MEMORY_HEADROOM * 100:.0f} % of {format_size(avail)} available "
                         f"({format_size(usable)})")

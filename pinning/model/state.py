"""The model's state: the arrays the engine's kernels work on, how they are sized and allocated.

numpy only (no numba): the harness sizes a run (:func:`memory_needed`) before anything
imports the kernels.
"""

from __future__ import annotations

import mmap
from typing import NamedTuple

import numpy as np

from pinning.model import strategies
from pinning.model.config import BenchConfig
from pinning.model.names import COUNTERS, RUN_PHASES
from pinning.model.strategies import Strategy
from pinning.model.units import unit_pages
from pinning.model.workloads import Workload, workload_bytes

# Indices into State.scal: running values the counters are derived from.
PINNED = 0  # pages pinned now
STALE = 1  # stale pins now
NEXT_PFN = 2  # lowest never-used pfn
FREE_TOP = 3  # depth of the free stack
N_SCALARS = 4


class State(NamedTuple):
    """Everything one simulated VM holds; the kernels' only state.

    Host frames are indices: pfn 0 is never allocated and means "no frame" (the RFC's
    ``WARN_ON(!pfns[i])``). Arrays a strategy does not use have length 0.
    """

    #: int64[len(COUNTERS)] -- the DESIGN §1a counters, in COUNTERS order
    counters: np.ndarray
    #: int64[N_SCALARS] -- PINNED, STALE, NEXT_PFN, FREE_TOP
    scal: np.ndarray
    #: int64[guest_pages] -- the VMM's mapping gfn -> pfn (0: none)
    host_map: np.ndarray
    #: int32[capacity + 1] -- references held on each frame (VMM mapping + pins)
    frame_ref: np.ndarray
    #: int32[capacity + 1] -- pins among them
    frame_pin: np.ndarray
    #: int64[capacity] -- freed frames, reused last-freed-first
    free_list: np.ndarray
    #: uint8[guest_pages / unit_pages] -- 1 where KVM has a nested mapping of the unit
    nested: np.ndarray
    #: int64[guest_pages] -- the registered region's page array (pinned pfn per page)
    region_pages: np.ndarray
    #: uint64[ceil(guest_pages / 64)] -- the memslot's pinned bitmap
    pinned_bitmap: np.ndarray
    #: int64[guest_pages] -- the memslot's pfn array
    pfns: np.ndarray
    #: int64[guest_pages] -- guest_memfd: the folio of each gfn (0: none)
    gmem: np.ndarray
    #: uint8[guest_pages] -- guest_memfd: engine.GMEM_PRIVATE (memory attribute) and
    #: engine.GMEM_PREPARED (folio up to date and the guest's in the RMP) of each gfn
    gmem_flags: np.ndarray

    @property
    def guest_pages(self) -> int:
        return int(self.host_map.shape[0])

    @property
    def capacity(self) -> int:
        """Host frames the state can hold at once."""
        return int(self.frame_ref.shape[0]) - 1

    def metadata_arrays(self) -> tuple[np.ndarray, ...]:
        """KVM's per-VM arrays (the page array; the bitmap and pfn array)."""
        return self.region_pages, self.pinned_bitmap, self.pfns


def frame_capacity(guest_pages: int, remapped_pages: int) -> int:
    """Host frames a run can hold at once.

    Every live frame is the VMM's current frame of some gfn or a stale pinned
    frame of a remapped gfn, and each gfn has at most one of each.
    """
    return guest_pages + min(guest_pages, remapped_pages)


def metadata_shapes(strategy: Strategy, guest_pages: int) -> tuple[int, int, int]:
    """Lengths of (region_pages, pinned_bitmap, pfns) the strategy's kernels use."""
    region = guest_pages if strategy.startup == strategies.STARTUP_PIN_REGION else 0
    tracked = strategy.fault in (strategies.FAULT_PIN_PAGES, strategies.FAULT_PIN_UNIT)
    return region, (guest_pages + 63) // 64 if tracked else 0, guest_pages if tracked else 0


def gmem_pages(strategy: Strategy, guest_pages: int) -> int:
    """Length of the guest_memfd arrays (gmem, gmem_flags): the guest, or 0."""
    return guest_pages if strategy.guest_memfd else 0


def memory_needed(strategy: Strategy, guest_pages: int, level: str, remapped_pages: int = 0,
                  extra: int = 0) -> int:
    """Bytes the state's arrays take for this run, plus ``extra`` (e.g. the workload's)."""
    cap = frame_capacity(guest_pages, remapped_pages)
    n_units = guest_pages // unit_pages(level)
    host = 8 * guest_pages + 4 * 2 * (cap + 1) + 8 * cap + n_units
    region, words, pfns = metadata_shapes(strategy, guest_pages)
    return host + 8 * (region + words + pfns) + 9 * gmem_pages(strategy, guest_pages) + extra


def config_bytes(config: BenchConfig, workload: Workload | None = None) -> int:
    """Memory the model's arrays and workload take for one lifecycle of ``config`` (or of
    ``workload`` instead of the config's pattern): checked before anything is allocated."""
    strategy = strategies.get(config.strategy)
    if workload is not None:
        extra, remapped = workload.nbytes(), workload.remapped_pages(config.level)
    elif "access" not in RUN_PHASES[config.workload]:
        extra, remapped = 0, 0
    else:
        frac = config.remap_fraction if config.workload == "remap" else 0.0
        remapped = int(config.guest_pages * frac) + unit_pages(config.level)
        extra = workload_bytes(config.pattern, config.guest_pages, config.level,
                               vcpus=config.vcpus, layout=config.layout,
                               touch_fraction=config.touch_fraction, seed=config.seed,
                               remap_fraction=frac)
    return memory_needed(strategy, config.guest_pages, config.level, remapped, extra)


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


def _zeros(n: int, dtype) -> np.ndarray:
    # 4 KiB-backed on purpose (anon_array), and written now so that the simulation's
    # own page faults stay out of the timed phases.
    a = anon_array(n, dtype)
    a.fill(0)
    return a


def new_state(strategy: Strategy, guest_pages: int, level: str,
              remapped_pages: int = 0) -> State:
    """A fresh state for the engine: host arrays plus KVM's metadata for ``strategy``.

    ``remapped_pages`` bounds how many pages later remaps will touch (see
    :func:`frame_capacity`). Startup has not run yet. KVM's metadata arrays are
    allocated and faulted in here, outside any timed phase, so that a timed startup
    never depends on the allocator's or the host's state; the zeroing the kernel
    does (``__GFP_ZERO``, ``kvzalloc``) is :func:`zero_metadata`, inside it.
    """
    capacity = frame_capacity(guest_pages, remapped_pages)
    scal = np.zeros(N_SCALARS, dtype=np.int64)
    scal[NEXT_PFN] = 1
    region, words, pfns = metadata_shapes(strategy, guest_pages)
    return State(
        counters=np.zeros(len(COUNTERS), dtype=np.int64),
        scal=scal,
        host_map=_zeros(guest_pages, np.int64),
        frame_ref=_zeros(capacity + 1, np.int32),
        frame_pin=_zeros(capacity + 1, np.int32),
        free_list=_zeros(capacity, np.int64),
        nested=_zeros(guest_pages // unit_pages(level), np.uint8),
        region_pages=_zeros(region, np.int64),
        pinned_bitmap=_zeros(words, np.uint64),
        pfns=_zeros(pfns, np.int64),
        gmem=_zeros(gmem_pages(strategy, guest_pages), np.int64),
        gmem_flags=_zeros(gmem_pages(strategy, guest_pages), np.uint8),
    )


def zero_metadata(state: State) -> None:
    """Zero KVM's per-VM arrays: the first step of a timed startup."""
    for arr in state.metadata_arrays():
        arr.fill(0)


def reset_state(state: State) -> None:
    """Put a used state back to "before startup", keeping its memory.

    Reusing one state's arrays for every run of a benchmark keeps their
    backing the same from run to run: fresh multi-GiB arrays get transparent
    huge pages or not depending on fragmentation at fault time, which made
    the same startup 1x or 3x as fast from one allocation to the next.
    """
    for arr in state:
        arr.fill(0)
    state.scal[NEXT_PFN] = 1


def counters_dict(state: State) -> dict[str, int]:
    """The counters by name."""
    return dict(zip(COUNTERS, (int(c) for c in state.counters), strict=True))


def snapshot(state: State) -> dict:
    """The model's state as plain Python values, for tests and debugging.

    Keys: ``host_map`` {gfn: pfn} of mapped gfns; ``refs`` and ``pins``
    {pfn: count} of frames with a nonzero count; ``free`` the free stack,
    bottom first; ``next_pfn``; ``nested`` the set of mapped units;
    ``pinned`` pages pinned now; ``stale`` stale pins now; ``region``
    {gfn: pfn} of the upfront page array; ``bitmap`` the set gfns whose
    pinned bit is set; ``pfns`` {gfn: pfn} nonzero entries of the pfn array;
    guest_memfd: ``gmem`` {gfn: pfn} of its folios, ``private`` and ``prepared``
    the sets of gfns with those flags.
    """
    def nonzero(a: np.ndarray) -> dict[int, int]:
        idx = np.flatnonzero(a)
        return dict(zip(idx.tolist(), a[idx].tolist(), strict=True))

    bits = np.unpackbits(state.pinned_bitmap.view(np.uint8), bitorder="little")
    return {
        "host_map": nonzero(state.host_map),
        "refs": nonzero(state.frame_ref),
        "pins": nonzero(state.frame_pin),
        "free": state.free_list[: state.scal[FREE_TOP]].tolist(),
        "next_pfn": int(state.scal[NEXT_PFN]),
        "nested": set(np.flatnonzero(state.nested).tolist()),
        "pinned": int(state.scal[PINNED]),
        "stale": int(state.scal[STALE]),
        "region": nonzero(state.region_pages),
        "bitmap": set(np.flatnonzero(bits).tolist()),
        "pfns": nonzero(state.pfns),
        "gmem": nonzero(state.gmem),
        "private": set(np.flatnonzero(state.gmem_flags & 1).tolist()),
        "prepared": set(np.flatnonzero(state.gmem_flags & 2).tolist()),
    }

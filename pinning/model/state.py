"""Run one simulated VM lifecycle -- startup, guest operations, teardown -- on the kernels."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pinning.backends.hostmem import anon_array
from pinning.model.kernels import engine as K
from pinning.model.units import PAGE_SIZE, InputError, available_memory, format_size, unit_pages
from pinning.model.workloads import PATTERNS, Trace, random_units, touched_units

STRATEGIES = {"upfront": K.UPFRONT, "demand": K.DEMAND}
PHASES = ("startup", "access", "teardown")


@dataclass
class SimResult:
    """Counters, error and per-phase wall time of one simulated run."""

    strategy: str
    level: str
    guest_pages: int
    counters: dict[str, int]
    error: str | None
    elapsed_ns: dict[str, int]
    ops_done: int = 0
    state: tuple | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        """The JSON shape of ``pinbench simulate --json``."""
        return {
            "strategy": self.strategy,
            "level": self.level,
            "guest_pages": self.guest_pages,
            **self.counters,
            "error": self.error,
            "elapsed_ns": dict(self.elapsed_ns),
        }


def strategy_code(strategy: str) -> int:
    """Kernel code of a strategy name."""
    try:
        return STRATEGIES[strategy]
    except KeyError:
        raise InputError(
            f"unknown strategy {strategy!r} (expected upfront or demand)"
        ) from None


def frame_capacity(guest_pages: int, remapped_pages: int) -> int:
    """Host frames a run can hold at once.

    Every live frame is the VMM's current frame of some gfn or a stale pinned
    frame of a remapped gfn, and each gfn has at most one of each.
    """
    return guest_pages + min(guest_pages, remapped_pages)


def metadata_bytes(strategy: str, guest_pages: int) -> int:
    """Bytes of KVM's per-VM arrays: the page array (upfront), bitmap + pfn array (demand)."""
    if strategy == "upfront":
        return 8 * guest_pages
    return 8 * guest_pages + 8 * ((guest_pages + 63) // 64)


def memory_needed(strategy: str, guest_pages: int, level: str, remapped_pages: int = 0,
                  pattern_units: int = 0) -> int:
    """Bytes the simulation's arrays take for this run (checked before allocating)."""
    cap = frame_capacity(guest_pages, remapped_pages)
    n_units = guest_pages // unit_pages(level)
    host = 8 * guest_pages + 4 * 2 * (cap + 1) + 8 * cap + n_units
    return host + metadata_bytes(strategy, guest_pages) + pattern_units


def check_fits(needed: int, what: str) -> None:
    """Refuse a run whose arrays would not fit in available memory, before allocating."""
    avail = available_memory()
    # Keep headroom for the interpreter, numba and the page cache.
    if needed > 0.85 * avail:
        raise InputError(
            f"{what} needs {format_size(needed)} of memory for its arrays, "
            f"but only {format_size(avail)} is available"
        )


def _zeros(n: int, dtype) -> np.ndarray:
    # 4 KiB-backed on purpose (hostmem.anon_array), and written now so that the
    # simulation's own page faults stay out of the timed phases.
    a = anon_array(n, dtype)
    a.fill(0)
    return a


def new_host(guest_pages: int, level: str, capacity: int) -> tuple:
    """The host side of the state tuple: counters, VMM mapping, frames, nested map."""
    scal = np.zeros(K.N_SCALARS, dtype=np.int64)
    scal[K.NEXT_PFN] = 1
    return (
        np.zeros(K.N_COUNTERS, dtype=np.int64),
        scal,
        _zeros(guest_pages, np.int64),
        _zeros(capacity + 1, np.int32),
        _zeros(capacity + 1, np.int32),
        _zeros(capacity, np.int64),
        _zeros(guest_pages // unit_pages(level), np.uint8),
    )


def allocate_metadata(strategy: str, guest_pages: int) -> tuple:
    """KVM's per-VM arrays: the region's page array, or the memslot's bitmap + pfn array.

    They are allocated and faulted in here, outside any timed phase, so that
    a timed startup never depends on the allocator's or the host's state
    (glibc reuses freed heap for arrays < 32 MiB but maps fresh pages above);
    the zeroing the kernel does (``__GFP_ZERO``, ``kvzalloc``) is
    :func:`zero_metadata`, inside the timed startup.
    """
    empty_u64 = np.zeros(0, dtype=np.uint64)
    empty_i64 = np.zeros(0, dtype=np.int64)
    if strategy == "upfront":
        return _zeros(guest_pages, np.int64), empty_u64, empty_i64
    return (
        empty_i64,
        _zeros((guest_pages + 63) // 64, np.uint64),
        _zeros(guest_pages, np.int64),
    )


def zero_metadata(state: tuple) -> None:
    """Zero KVM's per-VM arrays of ``state``: the first step of a timed startup."""
    for arr in state[7:10]:
        arr.fill(0)


def new_state(strategy: str, guest_pages: int, level: str, remapped_pages: int = 0) -> tuple:
    """A fresh state tuple for kernels.run (host arrays plus KVM's metadata for ``strategy``).

    ``remapped_pages`` bounds how many pages later remaps will touch (see
    :func:`frame_capacity`). Startup has not run yet.
    """
    host = new_host(guest_pages, level, frame_capacity(guest_pages, remapped_pages))
    return (*host, *allocate_metadata(strategy, guest_pages))


def reset_state(state: tuple) -> None:
    """Put a used state back to "before startup", keeping its memory.

    Reusing one state's arrays for every run of a benchmark keeps their
    backing the same from run to run: fresh multi-GiB arrays get transparent
    huge pages or not depending on fragmentation at fault time, which made
    the same startup 1x or 3x as fast from one allocation to the next.
    """
    for arr in state:
        arr.fill(0)
    state[1][K.NEXT_PFN] = 1


def simulate(
    strategy: str,
    guest_pages: int,
    level: str = "4k",
    *,
    trace: Trace | None = None,
    pattern: str | None = None,
    touch_fraction: float = 1.0,
    seed: int = 0,
    memlock_limit: int | None = None,
    keep_state: bool = False,
    teardown: bool = True,
) -> SimResult:
    """Simulate startup, the guest's operations and teardown; return counters and timings.

    Exactly one of ``trace`` (accesses and remaps) or ``pattern``
    (``sequential`` or ``random`` over ``touch_fraction`` of the units) says
    what the guest does. ``memlock_limit`` is RLIMIT_MEMLOCK in bytes (None:
    unlimited, as for a privileged VMM). ``keep_state`` keeps the arrays in
    the result (see :func:`snapshot`); ``teardown=False`` stops before VM
    destroy so that tests can inspect a live VM.
    """
    code = strategy_code(strategy)
    upages = unit_pages(level)
    if guest_pages <= 0 or guest_pages % upages:
        raise InputError(f"guest of {guest_pages} pages is not a whole number of {level} units")
    if (trace is None) == (pattern is None):
        raise InputError("give exactly one of a trace or a pattern")
    if memlock_limit is not None and memlock_limit < 0:
        raise InputError(f"memory-lock limit {memlock_limit} must not be negative")
    n_units = guest_pages // upages
    remapped = 0
    units = None
    if trace is not None:
        trace.check(guest_pages)
        remapped = trace.remapped_pages(upages)
    elif pattern in PATTERNS:
        count = touched_units(n_units, touch_fraction)
    else:
        raise InputError(f"unknown pattern {pattern!r} (expected sequential or random)")
    unit_bytes = 4 * n_units if pattern == "random" else 0
    check_fits(memory_needed(strategy, guest_pages, level, remapped, unit_bytes),
               f"a {format_size(guest_pages * PAGE_SIZE)} {strategy} guest at {level}")
    if pattern == "random":
        units = random_units(n_units, touch_fraction, seed)

    memlock_pages = K.NO_LIMIT if memlock_limit is None else memlock_limit // PAGE_SIZE
    state = new_state(strategy, guest_pages, level, remapped)
    if trace is not None:
        work = (trace.ops, trace.gfns, trace.npages, _NO_UNITS)
    elif units is not None:
        work = one_op(K.OP_ACCESS_UNITS, 0, len(units), units)
    else:
        work = one_op(K.OP_ACCESS_RANGE, 0, count, _NO_UNITS)
    elapsed = dict.fromkeys(PHASES, 0)

    t0 = time.perf_counter_ns()
    zero_metadata(state)
    status, _, _ = K.run(state, code, upages, memlock_pages, *one_op(K.OP_STARTUP))
    elapsed["startup"] = time.perf_counter_ns() - t0

    error = None
    done = 0
    if status == K.ERR_MEMLOCK:
        error = (
            f"memory lock limit exceeded: registering {format_size(guest_pages * PAGE_SIZE)} "
            f"would lock more than the limit of {_limit_text(memlock_limit)}"
        )
    elif status == K.OK:
        t1 = time.perf_counter_ns()
        status, op_index, pos = K.run(state, code, upages, memlock_pages, *work)
        t2 = time.perf_counter_ns()
        elapsed["access"] = t2 - t1
        done = op_index if trace is not None else (count if status == K.OK else pos)
        if status == K.ERR_MEMLOCK:
            error = (
                f"memory lock limit exceeded at {'operation' if trace is not None else 'access'} "
                f"{done + 1}: pinning one more page would lock more than the limit of "
                f"{_limit_text(memlock_limit)}"
            )
        if teardown:
            K.run(state, code, upages, memlock_pages, *one_op(K.OP_TEARDOWN))
            elapsed["teardown"] = time.perf_counter_ns() - t2
    if status == K.ERR_NO_FRAME:
        raise RuntimeError("simulation ran out of host frames: frame_capacity() is wrong")
    K.finish(state)
    counters = dict(zip(K.COUNTER_NAMES, (int(c) for c in state[0]), strict=True))
    return SimResult(strategy, level, guest_pages, counters, error, elapsed, int(done),
                     state if keep_state else None)


_NO_UNITS = np.zeros(0, dtype=np.uint32)


def one_op(op: int, gfn: int = 0, npages: int = 0, units: np.ndarray = _NO_UNITS) -> tuple:
    """The (ops, gfns, npages, units) arguments of kernels.run for a single operation."""
    return (np.array([op], dtype=np.int8), np.array([gfn], dtype=np.int64),
            np.array([npages], dtype=np.int64), units)


def _limit_text(limit: int) -> str:
    return f"{limit} bytes" if limit < 1024 else format_size(limit)


def snapshot(state: tuple) -> dict:
    """The model's state as plain Python values, for tests and debugging.

    Keys: ``host_map`` {gfn: pfn} of mapped gfns; ``refs`` and ``pins``
    {pfn: count} of frames with a nonzero count; ``free`` the free stack,
    bottom first; ``next_pfn``; ``nested`` the set of mapped units;
    ``pinned`` pages pinned now; ``stale`` stale pins now; ``region``
    {gfn: pfn} of the upfront page array; ``bitmap`` the set gfns whose
    pinned bit is set; ``pfns`` {gfn: pfn} nonzero entries of the pfn array.
    """
    (_, scal, host_map, frame_ref, frame_pin, free_list, nested,
     region_pages, pinned_bitmap, pfns) = state

    def nonzero(a: np.ndarray) -> dict[int, int]:
        idx = np.flatnonzero(a)
        return dict(zip(idx.tolist(), a[idx].tolist(), strict=True))

    bits = np.unpackbits(pinned_bitmap.view(np.uint8), bitorder="little")
    return {
        "host_map": nonzero(host_map),
        "refs": nonzero(frame_ref),
        "pins": nonzero(frame_pin),
        "free": free_list[: scal[K.FREE_TOP]].tolist(),
        "next_pfn": int(scal[K.NEXT_PFN]),
        "nested": set(np.flatnonzero(nested).tolist()),
        "pinned": int(scal[K.PINNED]),
        "stale": int(scal[K.STALE]),
        "region": nonzero(region_pages),
        "bitmap": set(np.flatnonzero(bits).tolist()),
        "pfns": nonzero(pfns),
    }


def warm_up() -> None:
    """Compile (or load from the numba cache) every kernel before anything is timed."""
    ops = Trace.from_rows([("access", 0, 1), ("remap", 0, 1), ("access", 0, 1)])
    for strategy in STRATEGIES:
        simulate(strategy, 512, "2m", trace=ops)
        simulate(strategy, 64, "4k", pattern="sequential")
        simulate(strategy, 64, "4k", pattern="random")

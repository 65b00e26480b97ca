"""What the guest does: access patterns, vCPU layouts, remaps -- the workloads a lifecycle runs.

numpy only at import; the jitted pattern kernels (large shuffles, Zipf ranks) are loaded
when a guest is large enough to need them, so that sizing a workload
(:func:`workload_bytes`) imports no numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pinning.model.names import LAYOUTS, MAX_VCPUS, PATTERNS, InputError
from pinning.model.units import PAGE_SIZE, unit_pages

#: The boot pattern's fixed working set (kernel image, initrd, page tables, firmware):
#: ASSUMPTION; constant, so it moves only the intercept of boot time against guest size.
BOOT_WORKING_SET = 256 << 20
#: sizeof(struct page) on x86-64: the guest's memory map is 64 B per 4 KiB page.
STRUCT_PAGE_BYTES = 64
#: A guest's unaccepted memory is tracked, and accepted, in 2 MiB units
#: (EFI_UNACCEPTED_UNIT_SIZE = PMD_SIZE, drivers/firmware/efi/libstub/unaccepted_memory.c).
ACCEPT_UNIT_PAGES = 512
#: Entries of one page-state-change request the guest sends (VMGEXIT_PSC_MAX_ENTRY,
#: arch/x86/include/asm/sev.h; 2 MiB entries where aligned, __set_pages_state).
PSC_ENTRIES = 64


def touched_units(n_units: int, touch_fraction: float) -> int:
    """How many units a pattern touches: the fraction of the guest's units, rounded down."""
    if not 0.0 <= touch_fraction <= 1.0:
        raise InputError(f"touch fraction {touch_fraction} must lie between 0 and 1")
    return int(n_units * touch_fraction)


def random_units(n_units: int, touch_fraction: float, seed: int) -> np.ndarray:
    """A seeded random subset of the units, in random order, each once."""
    count = touched_units(n_units, touch_fraction)
    return shuffled_units(n_units, seed)[:count]


def unit_dtype(n_units: int) -> type[np.unsignedinteger] | type[np.signedinteger]:
    """dtype of unit indices of a guest of ``n_units`` units: uint32, int64 from 2^32 units."""
    return np.uint32 if n_units <= np.iinfo(np.uint32).max else np.int64


def shuffled_units(n_units: int, seed: int) -> np.ndarray:
    """``0 .. n_units-1`` shuffled by ``numpy.random.default_rng(seed).shuffle``.

    Large arrays take a jitted replica of NumPy's Fisher-Yates shuffle that
    draws the same random numbers but overlaps its cache misses (5x faster
    at 2^28 units); the result is the same permutation either way.
    """
    units = np.arange(n_units, dtype=unit_dtype(n_units))
    if _FAST_SHUFFLE_MIN <= n_units <= 1 << 32 and _jit():
        _fast_shuffle(units, seed)
    else:
        np.random.default_rng(seed).shuffle(units)
    return units


def _pattern_kernels():
    """The jitted pattern kernels (imports numba: only for guests that need them)."""
    from pinning.model.kernels import patterns

    return patterns


def _jit() -> bool:
    """Whether the pattern kernels are compiled (the same permutation either way)."""
    return _pattern_kernels().JIT


# Below this size the array fits in cache and NumPy's own shuffle is as fast.
_FAST_SHUFFLE_MIN = 1 << 20
_RAW_CHUNK = 1 << 18  # 64-bit words drawn per round of the fast shuffle


def _fast_shuffle(x: np.ndarray, seed: int, chunk: int = _RAW_CHUNK) -> None:
    """Shuffle ``x`` in place exactly as ``default_rng(seed).shuffle(x)`` does (len <= 2^32)."""
    bitgen = np.random.default_rng(seed).bit_generator
    i = x.shape[0] - 1
    js = np.empty(2 * chunk, dtype=np.int64)
    while i > 0:
        # NumPy's PCG64 next_uint32 hands out the low, then the high half of each word.
        k = _pattern_kernels().swap_targets(bitgen.random_raw(chunk), i, js)
        _pattern_kernels().swap_all(x, i, js, k)
        i -= k


# --- Workloads of the suite: what V vCPUs and the VMM do after startup. -----------


@dataclass(frozen=True)
class Phase:
    """A stretch of guest accesses by ``nvcpus`` vCPUs running concurrently.

    vCPU ``v`` touches ``units[bounds[v]:bounds[v + 1]]`` in order (each entry a
    unit index: gfn // unit_pages). Which vCPU's access comes first in time is
    decided by the vCPU model, not by this layout.
    """

    units: np.ndarray  # uint32 (int64 for guests of 2^32 units or more)
    bounds: np.ndarray  # int64[nvcpus + 1], bounds[0] == 0, bounds[-1] == len(units)

    @property
    def nvcpus(self) -> int:
        return int(self.bounds.shape[0] - 1)


@dataclass(frozen=True)
class Remap:
    """The VMM unmaps and maps again ``[gfn, gfn + npages)`` (all vCPUs wait)."""

    gfn: int
    npages: int


@dataclass(frozen=True)
class Convert:
    """The guest asks for ``[gfn, gfn + npages)`` to become ``to`` ("shared" or
    "private") in ``requests`` coalesced page-state-change requests, one userspace exit
    each, and the VMM converts it (all vCPUs wait)."""

    gfn: int
    npages: int
    to: str
    requests: int = 1


@dataclass(frozen=True)
class Workload:
    """Phases of guest accesses, VMM remaps and conversions, run in order after startup."""

    steps: tuple[Phase | Remap | Convert, ...]
    nvcpus: int
    description: str = ""

    def remapped_pages(self, level: str) -> int:
        """Pages the remaps touch, each widened to whole units (sizes the host frames)."""
        upages = unit_pages(level)
        return sum(((s.gfn + s.npages + upages - 1) // upages - s.gfn // upages) * upages
                   for s in self.steps if isinstance(s, Remap))

    def nbytes(self) -> int:
        """Bytes the phases' unit arrays take."""
        return sum(s.units.nbytes + s.bounds.nbytes for s in self.steps
                   if isinstance(s, Phase))


# Draws per round of hotset/zipf sampling: bounds their temporaries to a few MiB.
_SAMPLE_CHUNK = 1 << 20
# Bytes of temporaries per drawn access (random doubles, flags, indices, gathered units).
_SAMPLE_TEMP_PER_DRAW = 48
_FIXED_TEMP = 2 * _RAW_CHUNK * 8 + _RAW_CHUNK * 8 + (1 << 16)


def _check_params(
    *,
    pattern: str,
    touch_fraction: float,
    seed: int,
    hot_fraction: float,
    hot_share: float,
    zipf_s: float,
    stride: int,
) -> None:
    """Refuse bad pattern parameters with one message naming parameter, value and allowed values."""
    if pattern not in PATTERNS:
        raise InputError(f"pattern {pattern!r} is unknown (expected one of "
                         f"{', '.join(PATTERNS)})")
    for name, value in (("touch_fraction", touch_fraction), ("hot_fraction", hot_fraction),
                        ("hot_share", hot_share)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{name} {value} must lie between 0 and 1")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"seed {seed} must be an integer >= 0")
    if not (zipf_s > 0 and math.isfinite(zipf_s)):
        raise InputError(f"zipf_s {zipf_s} must be a finite number > 0")
    if not isinstance(stride, int | np.integer) or stride < 1:
        raise InputError(f"stride {stride} must be an integer >= 1 (units)")


def access_units(
    pattern: str,
    n_units: int,
    *,
    touch_fraction: float = 1.0,
    seed: int = 0,
    hot_fraction: float = 0.1,
    hot_share: float = 0.9,
    zipf_s: float = 1.2,
    stride: int = 512,
) -> np.ndarray:
    """The unit indices one access stream touches, in order, over units ``0 .. n_units-1``.

    All patterns make floor(touch_fraction * n_units) accesses. ``sequential``,
    ``random`` (equal to :func:`random_units`) and ``strided`` (0, S, 2S, ..., 1,
    1+S, ...) touch distinct units; ``hotset`` and ``zipf`` draw with repetition:
    hotset a uniform unit of the hot set with probability ``hot_share``, else any
    unit; zipf rank r with probability proportional to 1/r^zipf_s. The hot set
    and the rank order are the order ``random`` touches units in (same seed).
    dtype uint32, int64 from 2^32 units.
    """
    _check_params(pattern=pattern, touch_fraction=touch_fraction, seed=seed,
                  hot_fraction=hot_fraction, hot_share=hot_share, zipf_s=zipf_s, stride=stride)
    if not isinstance(n_units, int | np.integer) or n_units < 0:
        raise InputError(f"n_units {n_units} must be an integer >= 0")
    n_units = int(n_units)
    if pattern == "boot":
        raise InputError("the boot pattern depends on the guest's size in pages: "
                         "boot_units() builds it")
    count = touched_units(n_units, touch_fraction)
    dtype = unit_dtype(n_units)
    if pattern == "sequential":
        return np.arange(count, dtype=dtype)
    if pattern == "strided":
        return _strided(n_units, count, int(stride), dtype)
    if pattern == "random":
        units = shuffled_units(n_units, seed)
        return units if count == n_units else units[:count].copy()
    if count == 0:
        return np.zeros(0, dtype=dtype)
    draws = np.random.default_rng((seed, 1))  # independent of how the permutation was made
    order = shuffled_units(n_units, seed)
    if pattern == "hotset":
        hot = order[: max(1, int(hot_fraction * n_units))].copy()
        del order
        return _hotset(hot, n_units, count, hot_share, draws, dtype)
    return _zipf(order, count, zipf_s, draws)


def _strided(n: int, count: int, stride: int, dtype) -> np.ndarray:
    """The first ``count`` of 0, S, 2S, ..., 1, 1+S, ..., S-1, ... (a permutation of range(n))."""
    out = np.empty(count, dtype=dtype)
    if count == 0:
        return out
    s = min(stride, n)
    q = -(-n // s)  # offsets r < rem have q units, the others q - 1
    rem = n - (q - 1) * s
    pos = 0
    for first, last, length in ((0, rem, q), (rem, s, q - 1)):
        if length == 0 or pos >= count:
            continue
        take = min(count - pos, (last - first) * length)
        rows, extra = divmod(take, length)
        steps = np.arange(length, dtype=dtype) * dtype(s)
        block = out[pos: pos + rows * length].reshape(rows, length)
        np.add(np.arange(first, first + rows, dtype=dtype)[:, None], steps[None, :], out=block)
        if extra:
            out[pos + rows * length: pos + take] = steps[:extra] + dtype(first + rows)
        pos += take
    return out


def _hotset(hot: np.ndarray, n: int, count: int, hot_share: float,
            rng: np.random.Generator, dtype) -> np.ndarray:
    out = np.empty(count, dtype=dtype)
    for start in range(0, count, _SAMPLE_CHUNK):
        part = out[start: start + _SAMPLE_CHUNK]
        is_hot = rng.random(part.shape[0]) < hot_share
        nhot = int(np.count_nonzero(is_hot))
        part[is_hot] = hot[rng.integers(0, hot.shape[0], nhot)]
        part[~is_hot] = rng.integers(0, n, part.shape[0] - nhot)
    return out


def _zipf(order: np.ndarray, count: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """``count`` draws of order[r - 1], rank r in 1..n with probability ~ 1/r^s (inverse CDF)."""
    n = order.shape[0]
    cdf = np.arange(1, n + 1, dtype=np.float64)
    np.power(cdf, -s, out=cdf)
    np.cumsum(cdf, out=cdf)
    guide = _rank_guide(cdf) if n >= _FAST_SHUFFLE_MIN and _jit() else None
    out = np.empty(count, dtype=order.dtype)
    for start in range(0, count, _SAMPLE_CHUNK):
        part = out[start: start + _SAMPLE_CHUNK]
        u = rng.random(part.shape[0])
        u *= cdf[-1]
        np.take(order, _ranks(cdf, u, guide), out=part)
    return out


def _rank_guide(cdf: np.ndarray) -> np.ndarray:
    """Guide table: entry b is the first rank whose cdf exceeds b / G of the total (G = n/8)."""
    nb = cdf.shape[0] // 8 + 1
    edges = np.arange(nb, dtype=np.float64) * (cdf[-1] / nb)
    guide = np.searchsorted(cdf, edges, side="right")
    np.minimum(guide, cdf.shape[0] - 1, out=guide)
    return guide


def _ranks(cdf: np.ndarray, u: np.ndarray, guide: np.ndarray | None) -> np.ndarray:
    """0-based ranks: ``min(searchsorted(cdf, u, 'right'), n - 1)``, guided search if given."""
    if guide is None:
        ranks = np.searchsorted(cdf, u, side="right")
        np.minimum(ranks, cdf.shape[0] - 1, out=ranks)
    else:
        ranks = np.empty(u.shape[0], dtype=np.int64)
        _pattern_kernels().guided_search(cdf, guide, cdf[-1] / guide.shape[0], u, ranks)
    return ranks


def _describe(pattern: str, vcpus: int, layout: str, touch_fraction: float,
              remap_fraction: float, hot_fraction: float, hot_share: float, zipf_s: float,
              stride: int) -> str:
    what = {
        "hotset": f"hotset {_pct(hot_fraction)} hot, {_pct(hot_share)} of accesses",
        "zipf": f"zipf s={zipf_s:g}",
        "strided": f"strided by {stride} units",
    }.get(pattern, pattern)
    who = f"{vcpus} vCPUs ({layout})" if vcpus > 1 else "1 vCPU"
    text = f"{what}, {who}, touch {_pct(touch_fraction)}"
    return text + (f", remap {_pct(remap_fraction)}" if remap_fraction > 0 else "")


def _pct(x: float) -> str:
    return f"{100 * x:.4g}%"


def _check_workload(pattern: str, guest_pages: int, level: str, vcpus: int, layout: str,
                    remap_fraction: float) -> int:
    """Validate the workload-level parameters; return the guest's number of units."""
    if pattern not in PATTERNS:
        raise InputError(f"pattern {pattern!r} is unknown (expected one of "
                         f"{', '.join(PATTERNS)})")
    upages = unit_pages(level)
    if not isinstance(guest_pages, int | np.integer) or guest_pages <= 0 or guest_pages % upages:
        raise InputError(f"guest_pages {guest_pages} is not a positive whole number of "
                         f"{level} units ({upages} pages each)")
    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r} is unknown (expected one of {', '.join(LAYOUTS)})")
    if not isinstance(vcpus, int | np.integer) or not 1 <= vcpus <= MAX_VCPUS:
        raise InputError(f"vcpus {vcpus} must be an integer between 1 and {MAX_VCPUS}")
    if not 0.0 <= remap_fraction <= 1.0:
        raise InputError(f"remap_fraction {remap_fraction} must lie between 0 and 1")
    return int(guest_pages) // upages


def _slices(n_units: int, vcpus: int) -> list[tuple[int, int]]:
    """(start, size) of each vCPU's contiguous slice; earlier slices get the extra units."""
    base, extra = divmod(n_units, vcpus)
    sizes = [base + (v < extra) for v in range(vcpus)]
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    return list(zip(starts, sizes, strict=True))


def make_workload(
    pattern: str,
    guest_pages: int,
    level: str,
    *,
    vcpus: int = 1,
    layout: str = "slices",
    touch_fraction: float = 1.0,
    seed: int = 0,
    remap_fraction: float = 0.0,
    convert_fraction: float = 0.0,
    accept: str | None = None,
    hot_fraction: float = 0.1,
    hot_share: float = 0.9,
    zipf_s: float = 1.2,
    stride: int = 512,
) -> Workload:
    """The suite's workload: ``vcpus`` vCPUs running ``pattern`` over the guest's units.

    ``slices``: vCPU v runs the pattern (seed + v) within its own contiguous
    slice of the units; ``shared``: one stream over all units, access i made
    by vCPU i % vcpus. With ``remap_fraction`` X > 0 the VMM remaps a centred,
    unit-aligned range of max(1, floor(X * units)) units after the pass, and
    the same pass runs again. With ``convert_fraction`` X > 0 the guest converts such a
    range to shared and back to private instead (one request each), and the same pass
    runs again. ``accept`` ("lazy" or "eager", a guest with unaccepted memory: SNP) makes
    the boot pattern accept memory before touching it: the 2 MiB units its accesses
    fall in, one request per unit, or the whole guest at once in requests of
    :data:`PSC_ENTRIES` 2 MiB entries; every page accepted is touched (PVALIDATE).
    See :func:`access_units` for the patterns.
    """
    n_units = _check_workload(pattern, guest_pages, level, vcpus, layout, remap_fraction)
    if not 0.0 <= convert_fraction <= 1.0:
        raise InputError(f"convert_fraction {convert_fraction} must lie between 0 and 1")
    if accept not in (None, "lazy", "eager"):
        raise InputError(f"accept {accept!r} is not one of lazy, eager")
    params = dict(touch_fraction=touch_fraction, seed=seed, hot_fraction=hot_fraction,
                  hot_share=hot_share, zipf_s=zipf_s, stride=stride)
    _check_params(pattern=pattern, **params)
    vcpus = int(vcpus)
    dtype = unit_dtype(n_units)
    accepts: tuple[Convert, ...] = ()
    if pattern == "boot":  # one list of what the booting guest touches, in vCPU chunks
        units = boot_units(guest_pages, unit_pages(level))
        if accept is not None:
            units, accepts = _accepted(units, guest_pages, unit_pages(level), accept)
        bounds = np.linspace(0, units.shape[0], vcpus + 1).round().astype(np.int64)
    elif vcpus == 1:
        units = access_units(pattern, n_units, **params)
        bounds = np.array([0, units.shape[0]], dtype=np.int64)
    elif layout == "slices":
        slices = _slices(n_units, vcpus)
        counts = [touched_units(size, touch_fraction) for _, size in slices]
        bounds = np.cumsum([0, *counts], dtype=np.int64)
        units = np.empty(int(bounds[-1]), dtype=dtype)
        for v, (start, size) in enumerate(slices):
            part = units[bounds[v]: bounds[v + 1]]
            part[:] = access_units(pattern, size, **{**params, "seed": seed + v})
            if start:
                part += dtype(start)
    else:
        stream = access_units(pattern, n_units, **params)
        count = stream.shape[0]
        lengths = [len(range(v, count, vcpus)) for v in range(vcpus)]
        bounds = np.cumsum([0, *lengths], dtype=np.int64)
        units = np.empty(count, dtype=dtype)
        for v in range(vcpus):
            units[bounds[v]: bounds[v + 1]] = stream[v::vcpus]
        del stream
    phase = Phase(units, bounds)
    steps: tuple[Phase | Remap | Convert, ...] = (*accepts, phase)
    upages = unit_pages(level)
    if remap_fraction > 0:
        nremap = max(1, int(remap_fraction * n_units))
        first = (n_units - nremap) // 2
        steps = (*steps, Remap(first * upages, nremap * upages), phase)
    elif convert_fraction > 0:
        nconv = max(1, int(convert_fraction * n_units))
        first = (n_units - nconv) // 2
        steps = (*steps, Convert(first * upages, nconv * upages, "shared"),
                 Convert(first * upages, nconv * upages, "private"), phase)
    desc = _describe(pattern, vcpus, layout, touch_fraction, remap_fraction, hot_fraction,
                     hot_share, zipf_s, stride)
    if convert_fraction > 0 and remap_fraction <= 0:
        desc += f", convert {_pct(convert_fraction)}"
    if accept is not None:
        desc += f", {accept} acceptance"
    return Workload(steps, vcpus, desc)


def _accepted(units: np.ndarray, guest_pages: int, upages: int,
              accept: str) -> tuple[np.ndarray, tuple[Convert, ...]]:
    """What a guest with unaccepted memory touches to use ``units``, and its requests.

    Lazy: every page of each 2 MiB acceptance unit the accesses fall in (the guest
    PVALIDATEs the whole unit when it first hands out memory from it), one request per
    contiguous run of units, counted one per unit. Eager: every page, at boot.
    """
    per = max(1, ACCEPT_UNIT_PAGES // upages)  # access units per acceptance unit
    n_units = guest_pages // upages
    n_accept = -(-n_units // per)
    if accept == "eager":
        return (np.arange(n_units, dtype=units.dtype),
                (Convert(0, guest_pages, "private", -(-n_accept // PSC_ENTRIES)),))
    chunks = np.unique(units // per)
    touched = (chunks[:, None] * per + np.arange(per)).ravel()
    touched = touched[touched < n_units].astype(units.dtype)
    # Contiguous runs of accepted 2 MiB units: one Convert step each, its requests one
    # per unit (the guest accepts as it allocates, a unit at a time).
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    steps = []
    for run in np.split(chunks, breaks):
        if run.size == 0:
            continue
        gfn = int(run[0]) * per * upages
        end = min(guest_pages, (int(run[-1]) + 1) * per * upages)
        steps.append(Convert(gfn, end - gfn, "private", int(run.size)))
    return touched, tuple(steps)


def boot_units(guest_pages: int, upages: int) -> np.ndarray:
    """The units a guest's own boot touches, ascending, each once (docs/model.md, "boot"):
    a fixed working set at the bottom of memory (:data:`BOOT_WORKING_SET` bytes, or all
    of a smaller guest) and the memory map, one 64-byte ``struct page`` per 4 KiB page,
    in the last ``ceil(guest_pages / 64)`` pages."""
    n_units = guest_pages // upages
    working = min(guest_pages, BOOT_WORKING_SET // PAGE_SIZE)
    memmap = -(-guest_pages // (PAGE_SIZE // STRUCT_PAGE_BYTES))
    low_end = -(-working // upages)  # units [0, low_end) hold the working set
    map_start = (guest_pages - memmap) // upages  # units [map_start, n_units) the memmap
    dtype = unit_dtype(n_units)
    if map_start <= low_end:
        return np.arange(n_units, dtype=dtype)
    return np.concatenate((np.arange(low_end, dtype=dtype),
                           np.arange(map_start, n_units, dtype=dtype)))


def _stream_bytes(pattern: str, n: int, count: int, hot_fraction: float, stride: int,
                  isz: int) -> int:
    """Peak bytes of building one stream of ``count`` accesses over ``n`` units, output included."""
    out = count * isz
    if pattern == "random":  # the whole shuffled range, then a copy of the touched part
        return n * isz + (out if count < n else 0) + _FIXED_TEMP
    if pattern == "strided" and count:  # row and column ranges; NumPy's ufunc buffers
        s = min(stride, n)
        return out + 2 * isz * (s + n // s + 1) + (1 << 17)
    if pattern in ("sequential", "strided") or count == 0:
        return out + (1 << 16)
    temp = min(count, _SAMPLE_CHUNK) * _SAMPLE_TEMP_PER_DRAW + _FIXED_TEMP
    if pattern == "hotset":
        return n * isz + max(1, int(hot_fraction * n)) * isz + out + temp
    guide = (n // 8 + 2) * 8 + (n // 8 + 2) * 8  # the guide and its float bucket edges
    return n * 8 + n * isz + guide + out + temp  # zipf: cdf + rank order


def workload_bytes(
    pattern: str,
    guest_pages: int,
    level: str,
    *,
    vcpus: int = 1,
    layout: str = "slices",
    touch_fraction: float = 1.0,
    seed: int = 0,
    remap_fraction: float = 0.0,
    hot_fraction: float = 0.1,
    hot_share: float = 0.9,
    zipf_s: float = 1.2,
    stride: int = 512,
) -> int:
    """Upper bound of the bytes :func:`make_workload` needs at its peak (cheap, allocates nothing).

    Lets a caller refuse a configuration that does not fit before building it;
    raises InputError for the same bad input as make_workload.
    """
    n_units = _check_workload(pattern, guest_pages, level, vcpus, layout, remap_fraction)
    _check_params(pattern=pattern, touch_fraction=touch_fraction, seed=seed,
                  hot_fraction=hot_fraction, hot_share=hot_share, zipf_s=zipf_s, stride=stride)
    isz = np.dtype(unit_dtype(n_units)).itemsize
    if pattern == "boot":  # at most every unit, built at once (and, accepting, 2 MiB runs)
        return n_units * (2 * isz + 16) + 8 * (int(vcpus) + 1) + (1 << 12)
    total = touched_units(n_units, touch_fraction)  # >= the sum over slices
    extra = 8 * (int(vcpus) + 1) + (1 << 12)
    if vcpus == 1:  # the stream is the phase's array
        return _stream_bytes(pattern, n_units, total, hot_fraction, stride, isz) + extra
    if layout == "slices":  # one slice's stream at a time, copied into the phase's array
        biggest = -(-n_units // int(vcpus))
        stream = _stream_bytes(pattern, biggest, touched_units(biggest, touch_fraction),
                               hot_fraction, stride, isz)
    else:
        stream = _stream_bytes(pattern, n_units, total, hot_fraction, stride, isz)
    return total * isz + stream + extra


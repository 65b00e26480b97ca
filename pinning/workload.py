"""What the guest does: trace files and generated access patterns."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pinning import kernels as K
from pinning.levels import InputError

PATTERNS = ("sequential", "random")
# Larger gfns or page counts than any guest can have (and than int64 can hold).
MAX_GFN = 1 << 52


@dataclass(frozen=True)
class Trace:
    """A sequence of guest accesses and VMM remaps, as parallel arrays."""

    ops: np.ndarray  # int8: kernels.OP_ACCESS or kernels.OP_REMAP
    gfns: np.ndarray  # int64
    npages: np.ndarray  # int64 (1 for accesses)

    def __len__(self) -> int:
        return int(self.ops.shape[0])

    @classmethod
    def from_rows(cls, rows: list[tuple[str, int, int]]) -> Trace:
        """Build a trace from ``(op, gfn, npages)`` tuples with op ``access`` or ``remap``."""
        codes = {"access": K.OP_ACCESS, "remap": K.OP_REMAP}
        ops = np.array([codes[op] for op, _, _ in rows], dtype=np.int8)
        gfns = np.array([g for _, g, _ in rows], dtype=np.int64)
        npages = np.array([n for _, _, n in rows], dtype=np.int64)
        return cls(ops, gfns, npages)

    def remapped_pages(self, unit_pages: int) -> int:
        """Pages the trace's remaps touch, each range widened to whole units."""
        sel = self.ops == K.OP_REMAP
        first = self.gfns[sel] // unit_pages
        end = (self.gfns[sel] + self.npages[sel] + unit_pages - 1) // unit_pages
        return int(((end - first) * unit_pages).sum())

    def check(self, guest_pages: int) -> None:
        """Refuse gfns outside the guest (the kernels never see an out-of-range gfn)."""
        end = self.gfns + np.where(self.ops == K.OP_REMAP, self.npages, 1)
        bad = np.flatnonzero((self.gfns < 0) | (end > guest_pages) | (self.npages < 1))
        if bad.size:
            i = int(bad[0])
            op = "remap" if self.ops[i] == K.OP_REMAP else "access"
            raise InputError(
                f"operation {i + 1} ({op} gfn {int(self.gfns[i])}, npages "
                f"{int(self.npages[i])}) lies outside the guest's gfns 0..{guest_pages - 1}"
            )


def read_trace(path: str | Path) -> Trace:
    """Read a CSV trace with header ``op,gfn,npages`` (errors name the line)."""
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {exc.strerror}") from None
    rows: list[tuple[str, int, int]] = []
    with fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InputError(f"{path}:1: empty trace (expected header op,gfn,npages)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}:1: not a CSV file ({exc})") from None
        if header[:3] != ["op", "gfn", "npages"]:
            raise InputError(f"{path}:1: header must be op,gfn,npages, got {','.join(header)}")
        ncols = len(header)
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                rows.append(_parse_row(path, line, row, ncols))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return Trace.from_rows(rows)


def _parse_row(path: Path, line: int, row: list[str], ncols: int) -> tuple[str, int, int]:
    if len(row) != ncols:
        raise InputError(f"{path}:{line}: expected {ncols} fields, got {len(row)}")
    op, gfn_s, npages_s = (c.strip() for c in row[:3])
    if op not in ("access", "remap"):
        raise InputError(f"{path}:{line}: unknown op {op!r} (expected access or remap)")
    try:
        gfn = int(gfn_s)
    except ValueError:
        raise InputError(f"{path}:{line}: gfn {gfn_s!r} is not an integer") from None
    if gfn < 0:
        raise InputError(f"{path}:{line}: gfn {gfn} is negative")
    if gfn >= MAX_GFN:
        raise InputError(f"{path}:{line}: gfn {gfn} is out of range")
    if op == "access":
        if npages_s not in ("", "1"):
            raise InputError(f"{path}:{line}: access takes npages empty or 1, got {npages_s!r}")
        return op, gfn, 1
    try:
        npages = int(npages_s)
    except ValueError:
        raise InputError(f"{path}:{line}: npages {npages_s!r} is not an integer") from None
    if not 1 <= npages < MAX_GFN:
        raise InputError(f"{path}:{line}: remap npages must be between 1 and 2^52, got {npages}")
    return op, gfn, npages


def touched_units(n_units: int, touch_fraction: float) -> int:
    """How many units a pattern touches: the fraction of the guest's units, rounded down."""
    if not 0.0 <= touch_fraction <= 1.0:
        raise InputError(f"touch fraction {touch_fraction} must lie between 0 and 1")
    return int(n_units * touch_fraction)


def random_units(n_units: int, touch_fraction: float, seed: int) -> np.ndarray:
    """A seeded random subset of the units, in random order, each once."""
    count = touched_units(n_units, touch_fraction)
    dtype = np.uint32 if n_units <= np.iinfo(np.uint32).max else np.int64
    units = np.arange(n_units, dtype=dtype)
    np.random.default_rng(seed).shuffle(units)
    return units[:count]


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
class Workload:
    """Phases of guest accesses and VMM remaps, run in order after startup."""

    steps: tuple[Phase | Remap, ...]
    nvcpus: int
    description: str = ""

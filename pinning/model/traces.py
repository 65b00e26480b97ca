"""Trace files: a recorded sequence of guest accesses and VMM remaps, and its workload."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pinning.model.names import MAX_VCPUS, TRACE_OPS, InputError
from pinning.model.units import unit_pages
from pinning.model.workloads import Phase, Remap, Workload, unit_dtype

OP_ACCESS = TRACE_OPS.index("access")
OP_REMAP = TRACE_OPS.index("remap")
# Larger gfns or page counts than any guest can have (and than int64 can hold).
MAX_GFN = 1 << 52


@dataclass(frozen=True)
class Trace:
    """A sequence of guest accesses and VMM remaps, as parallel arrays.

    ``vcpu`` says which vCPU makes each access (int16, 0 .. MAX_VCPUS - 1); it is
    all zeros when the trace has no vcpu column (None given: filled in).
    Remaps carry a vcpu value too, but nothing uses it.
    """

    ops: np.ndarray  # int8: OP_ACCESS or OP_REMAP (names.TRACE_OPS codes)
    gfns: np.ndarray  # int64
    npages: np.ndarray  # int64 (1 for accesses)
    vcpu: np.ndarray | None = field(default=None)  # int16; never None after __init__

    def __post_init__(self) -> None:
        if self.vcpu is None:
            object.__setattr__(self, "vcpu", np.zeros(self.ops.shape[0], dtype=np.int16))

    def __len__(self) -> int:
        return int(self.ops.shape[0])

    @classmethod
    def from_rows(
        cls, rows: list[tuple[str, int, int]] | list[tuple[str, int, int, int]]
    ) -> Trace:
        """Build a trace from ``(op, gfn, npages)`` or ``(op, gfn, npages, vcpu)`` tuples.

        op is ``access`` or ``remap``; a 3-tuple means vCPU 0.
        """
        ops = np.array([TRACE_OPS.index(r[0]) for r in rows], dtype=np.int8)
        gfns = np.array([r[1] for r in rows], dtype=np.int64)
        npages = np.array([r[2] for r in rows], dtype=np.int64)
        vcpus = [r[3] if len(r) > 3 else 0 for r in rows]
        bad = [v for v in vcpus if not 0 <= v < MAX_VCPUS]
        if bad:
            raise InputError(f"vcpu {bad[0]} must be between 0 and {MAX_VCPUS - 1}")
        return cls(ops, gfns, npages, np.array(vcpus, dtype=np.int16))

    def remapped_pages(self, unit_pages: int) -> int:
        """Pages the trace's remaps touch, each range widened to whole units."""
        sel = self.ops == OP_REMAP
        first = self.gfns[sel] // unit_pages
        end = (self.gfns[sel] + self.npages[sel] + unit_pages - 1) // unit_pages
        return int(((end - first) * unit_pages).sum())

    def check(self, guest_pages: int) -> None:
        """Refuse gfns outside the guest (the kernels never see an out-of-range gfn)."""
        vcpu = self.vcpu
        assert vcpu is not None  # filled in by __post_init__
        if vcpu.shape != self.ops.shape:
            raise InputError(f"trace has {vcpu.shape[0]} vcpu entries for {len(self)} operations")
        badv = np.flatnonzero((vcpu < 0) | (vcpu >= MAX_VCPUS))
        if badv.size:
            i = int(badv[0])
            raise InputError(f"operation {i + 1}: vcpu {int(vcpu[i])} must be between 0 and "
                             f"{MAX_VCPUS - 1}")
        end = self.gfns + np.where(self.ops == OP_REMAP, self.npages, 1)
        bad = np.flatnonzero((self.gfns < 0) | (end > guest_pages) | (self.npages < 1))
        if bad.size:
            i = int(bad[0])
            op = "remap" if self.ops[i] == OP_REMAP else "access"
            raise InputError(
                f"operation {i + 1} ({op} gfn {int(self.gfns[i])}, npages "
                f"{int(self.npages[i])}) lies outside the guest's gfns 0..{guest_pages - 1}"
            )


def read_trace(path: str | Path) -> Trace:
    """Read a CSV trace with header ``op,gfn,npages`` or ``op,gfn,npages,vcpu``.

    Errors name the file and line. An empty vcpu field means vCPU 0; columns
    after npages other than ``vcpu`` are ignored.
    """
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {exc.strerror}") from None
    rows: list[tuple[str, int, int, int]] = []
    with fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InputError(f"{path}:1: empty trace (expected header op,gfn,npages)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}:1: not a CSV file ({exc})") from None
        if header[:3] != ["op", "gfn", "npages"]:
            raise InputError(f"{path}:1: header must be op,gfn,npages or op,gfn,npages,vcpu, "
                             f"got {','.join(header)}")
        ncols = len(header)
        vcol = header.index("vcpu", 3) if "vcpu" in header[3:] else None
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                rows.append(_parse_row(path, line, row, ncols, vcol))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return Trace.from_rows(rows)


def _parse_row(
    path: Path, line: int, row: list[str], ncols: int, vcol: int | None
) -> tuple[str, int, int, int]:
    if len(row) != ncols:
        raise InputError(f"{path}:{line}: expected {ncols} fields, got {len(row)}")
    op, gfn, npages = _parse_op(path, line, *(c.strip() for c in row[:3]))
    return op, gfn, npages, 0 if vcol is None else _parse_vcpu(path, line, row[vcol].strip())


def _parse_op(path: Path, line: int, op: str, gfn_s: str, npages_s: str) -> tuple[str, int, int]:
    if op not in TRACE_OPS:
        raise InputError(f"{path}:{line}: unknown op {op!r} (expected {' or '.join(TRACE_OPS)})")
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


def _parse_vcpu(path: Path, line: int, text: str) -> int:
    if not text:
        return 0
    try:
        vcpu = int(text)
    except ValueError:
        vcpu = -1
    if not 0 <= vcpu < MAX_VCPUS:
        raise InputError(f"{path}:{line}: vcpu {text!r} must be an integer between 0 and "
                         f"{MAX_VCPUS - 1} (or empty for 0)")
    return vcpu


def workload_from_trace(trace: Trace, guest_pages: int, level: str) -> Workload:
    """A trace's accesses and remaps as a workload.

    The accesses between two remaps form one Phase in which each vCPU makes its
    own accesses in trace order (phases without accesses are dropped); each
    remap is a Remap step (its vcpu ignored). nvcpus = 1 + the largest vcpu of
    an access (at least 1); every phase has that many vCPUs.
    """
    upages = unit_pages(level)
    if guest_pages <= 0 or guest_pages % upages:
        raise InputError(f"guest_pages {guest_pages} is not a positive whole number of "
                         f"{level} units ({upages} pages each)")
    trace.check(guest_pages)
    assert trace.vcpu is not None  # filled in by Trace.__post_init__
    is_access = trace.ops == OP_ACCESS
    nvcpus = int(trace.vcpu[is_access].max()) + 1 if is_access.any() else 1
    dtype = unit_dtype(guest_pages // upages)
    steps: list[Phase | Remap] = []
    remaps = np.flatnonzero(~is_access).tolist()
    start = 0
    for stop in [*remaps, len(trace)]:
        if stop > start:
            vcpu = trace.vcpu[start:stop]
            order = np.argsort(vcpu, kind="stable")
            units = (trace.gfns[start:stop][order] // upages).astype(dtype)
            counts = np.bincount(vcpu, minlength=nvcpus)
            steps.append(Phase(units, np.concatenate(([0], np.cumsum(counts))).astype(np.int64)))
        if stop < len(trace):
            steps.append(Remap(int(trace.gfns[stop]), int(trace.npages[stop])))
        start = stop + 1
    naccess = int(is_access.sum())
    desc = (f"trace: {naccess} accesses, {len(remaps)} remaps, {nvcpus} "
            f"vCPU{'s' if nvcpus > 1 else ''}")
    return Workload(tuple(steps), nvcpus, desc)

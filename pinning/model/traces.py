"""Trace files: a recorded sequence of guest accesses, VMM remaps and conversions, and
its workload."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pinning.model.names import CONVERT_TO, MAX_VCPUS, TRACE_OPS, InputError
from pinning.model.units import unit_pages
from pinning.model.workloads import Convert, Phase, Remap, Workload, unit_dtype

OP_ACCESS = TRACE_OPS.index("access")
OP_REMAP = TRACE_OPS.index("remap")
OP_CONVERT = TRACE_OPS.index("convert")
# Larger gfns or page counts than any guest can have (and than int64 can hold).
MAX_GFN = 1 << 52


@dataclass(frozen=True)
class Trace:
    """A sequence of guest accesses, VMM remaps and conversions, as parallel arrays.

    ``vcpu`` says which vCPU makes each access (int16, 0 .. MAX_VCPUS - 1); it is
    all zeros when the trace has no vcpu column (None given: filled in).
    Remaps and conversions carry a vcpu value too, but nothing uses it. ``to`` is, for
    a conversion, 1 + its index in names.CONVERT_TO (0 for other operations).
    ``lines`` is the file line of each operation, ``source`` the file (errors name
    them), when the trace was read from a file.
    """

    ops: np.ndarray  # int8: names.TRACE_OPS codes
    gfns: np.ndarray  # int64
    npages: np.ndarray  # int64 (1 for accesses)
    vcpu: np.ndarray | None = field(default=None)  # int16; never None after __init__
    to: np.ndarray | None = field(default=None)  # int8; never None after __init__
    lines: np.ndarray | None = field(default=None)
    source: str | None = None

    def __post_init__(self) -> None:
        if self.vcpu is None:
            object.__setattr__(self, "vcpu", np.zeros(self.ops.shape[0], dtype=np.int16))
        if self.to is None:
            object.__setattr__(self, "to", np.zeros(self.ops.shape[0], dtype=np.int8))

    def where(self, i: int) -> str:
        """How errors name operation ``i``: its file and line, or its position."""
        if self.lines is not None and self.source is not None:
            return f"{self.source}:{int(self.lines[i])}"
        return f"operation {i + 1}"

    def __len__(self) -> int:
        return int(self.ops.shape[0])

    @classmethod
    def from_rows(cls, rows: list[tuple], *, lines: list[int] | None = None,
                  source: str | None = None) -> Trace:
        """Build a trace from ``(op, gfn, npages)``, ``(op, gfn, npages, vcpu)`` or
        ``(op, gfn, npages, vcpu, to)`` tuples.

        op is ``access``, ``remap`` or ``convert`` (which needs ``to``: ``shared`` or
        ``private``); a 3-tuple means vCPU 0.
        """
        ops = np.array([TRACE_OPS.index(r[0]) for r in rows], dtype=np.int8)
        gfns = np.array([r[1] for r in rows], dtype=np.int64)
        npages = np.array([r[2] for r in rows], dtype=np.int64)
        vcpus = [r[3] if len(r) > 3 else 0 for r in rows]
        bad = [v for v in vcpus if not 0 <= v < MAX_VCPUS]
        if bad:
            raise InputError(f"vcpu {bad[0]} must be between 0 and {MAX_VCPUS - 1}")
        to = []
        for r in rows:
            direction = r[4] if len(r) > 4 else None
            if (r[0] == "convert") != (direction is not None):
                raise InputError(f"{r[0]} of gfn {r[1]}: a convert operation, and only one, "
                                 f"takes to = {' or '.join(CONVERT_TO)}")
            if direction is not None and direction not in CONVERT_TO:
                raise InputError(f"convert of gfn {r[1]}: to {direction!r} is not "
                                 f"{' or '.join(CONVERT_TO)}")
            to.append(0 if direction is None else 1 + CONVERT_TO.index(direction))
        return cls(ops, gfns, npages, np.array(vcpus, dtype=np.int16),
                   np.array(to, dtype=np.int8),
                   None if lines is None else np.array(lines, dtype=np.int64), source)

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
            raise InputError(f"{self.where(i)}: vcpu {int(vcpu[i])} must be between 0 and "
                             f"{MAX_VCPUS - 1}")
        end = self.gfns + np.where(self.ops == OP_ACCESS, 1, self.npages)
        bad = np.flatnonzero((self.gfns < 0) | (end > guest_pages) | (self.npages < 1))
        if bad.size:
            i = int(bad[0])
            op = TRACE_OPS[int(self.ops[i])]
            raise InputError(
                f"{self.where(i)}: {op} of gfn {int(self.gfns[i])}, npages "
                f"{int(self.npages[i])} lies outside the guest's gfns 0..{guest_pages - 1}"
            )


def read_trace(path: str | Path) -> Trace:
    """Read a CSV trace with header ``op,gfn,npages`` and optional ``vcpu`` and ``to``
    columns after them.

    Errors name the file and line (also later ones: a range outside the guest). An
    empty vcpu field means vCPU 0; ``to`` (``shared`` or ``private``) is required on a
    ``convert`` line and must be empty on others; other columns are ignored.
    """
    path = Path(path)
    try:
        fh = path.open(newline="")
    except OSError as exc:
        raise InputError(f"cannot read trace {path}: {exc.strerror}") from None
    rows: list[tuple] = []
    lines: list[int] = []
    with fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise InputError(f"{path}:1: empty trace (expected header op,gfn,npages)") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}:1: not a CSV file ({exc})") from None
        if header[:3] != ["op", "gfn", "npages"]:
            raise InputError(f"{path}:1: header must be op,gfn,npages (then optional vcpu "
                             f"and to columns), got {','.join(header)}")
        ncols = len(header)
        vcol = header.index("vcpu", 3) if "vcpu" in header[3:] else None
        tcol = header.index("to", 3) if "to" in header[3:] else None
        try:
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                rows.append(_parse_row(path, line, row, ncols, vcol, tcol))
                lines.append(line)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise InputError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return Trace.from_rows(rows, lines=lines, source=str(path))


def _parse_row(
    path: Path, line: int, row: list[str], ncols: int, vcol: int | None, tcol: int | None
) -> tuple:
    if len(row) != ncols:
        raise InputError(f"{path}:{line}: expected {ncols} fields, got {len(row)}")
    op, gfn, npages = _parse_op(path, line, *(c.strip() for c in row[:3]))
    vcpu = 0 if vcol is None else _parse_vcpu(path, line, row[vcol].strip())
    to = "" if tcol is None else row[tcol].strip()
    if op == "convert":
        if to not in CONVERT_TO:
            raise InputError(f"{path}:{line}: convert needs to = {' or '.join(CONVERT_TO)} "
                             f"(a 'to' column), got {to!r}")
        return op, gfn, npages, vcpu, to
    if to:
        raise InputError(f"{path}:{line}: only a convert line takes a 'to' value, got {to!r}")
    return op, gfn, npages, vcpu


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
        raise InputError(f"{path}:{line}: {op} npages must be between 1 and 2^52, got {npages}")
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
    """A trace's accesses, remaps and conversions as a workload.

    The accesses between two other operations form one Phase in which each vCPU
    makes its own accesses in trace order (phases without accesses are dropped); each
    remap is a Remap step, each conversion a Convert step of one request (their vcpu
    ignored). nvcpus = 1 + the largest vcpu of an access (at least 1); every phase has
    that many vCPUs.
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
    steps: list[Phase | Remap | Convert] = []
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
            gfn, npages = int(trace.gfns[stop]), int(trace.npages[stop])
            if trace.ops[stop] == OP_REMAP:
                steps.append(Remap(gfn, npages))
            else:
                steps.append(Convert(gfn, npages, CONVERT_TO[int(trace.to[stop]) - 1]))
        start = stop + 1
    naccess = int(is_access.sum())
    nremap = int((trace.ops == OP_REMAP).sum())
    nconvert = len(remaps) - nremap
    desc = (f"trace: {naccess} accesses, {nremap} remaps, "
            + (f"{nconvert} conversions, " if nconvert else "")
            + f"{nvcpus} vCPU{'s' if nvcpus > 1 else ''}")
    return Workload(tuple(steps), nvcpus, desc)

"""Shards: one suite run as N parts on N machines, and the parts merged into one file.

``pinbench run --shard I/N`` runs part I of N of a suite (:func:`select`): the parts
take similar time, because benchmarks are dealt by their estimated cost
(:meth:`Suite.estimated_s <pinning.harness.suite.Suite.estimated_s>`), and a benchmark
always lands in the same part for a given suite and N (:func:`assign` reads nothing but
the suite and N), so N machines that each read the suite agree on the split without
talking to each other. ``pinbench merge`` (:func:`merge`) joins the parts' results files
into the one pyperf file a serial run would have written, and refuses, in one line,
files that do not belong together.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pinning.harness.runner import PARTIAL_MARK, _dump_atomic, check_output
from pinning.harness.suite import Suite
from pinning.model.names import InputError

#: Metadata key ``pinbench run --shard I/N`` puts on each benchmark: ``"I/N"``.
SHARD_KEY = "pinbench.shard"
SUITE_KEY = "pinbench.suite"
SCHEMA_KEY = "pinbench.schema"
#: Metadata key of the digest of the suite a shard was cut from (:func:`split_digest`).
SPLIT_KEY = "pinbench.split"
#: Most shards a suite is split into: far more machines than a suite has use for, and a
#: bound on what merge lists as missing when a file claims a shard of a huge N.
MAX_SHARDS = 10_000

# ASCII digits only: \d would also take other scripts' digits, which int() reads too.
_SHARD_RE = re.compile(r"([0-9]+)/([0-9]+)")


def _show(text: str) -> str:
    """``text`` as typed when it is one clean printable word; its repr otherwise, so that
    a message stays one line whatever the user passed."""
    if text and text.isprintable() and text.strip() == text:
        return text
    return repr(text)


def _split(text: str) -> tuple[int, int] | None:
    """(I, N) of ``"I/N"``, or None when the text does not have that form."""
    match = _SHARD_RE.fullmatch(text)
    if not match:
        return None
    try:
        return int(match[1]), int(match[2])
    except ValueError:  # more digits than int() reads from a string
        return None


def parse_shard(text: str) -> tuple[int, int]:
    """(I, N) of ``--shard I/N``: part I (from 1) of a suite split into N parts.

    Anything else is an InputError naming the problem and the expected form.
    """
    parts = _split(text.strip())
    if parts is None:
        raise InputError(f"--shard {_show(text)}: expected I/N (part I of N, from 1), "
                         "e.g. --shard 1/4")
    index, count = parts
    if count < 1:
        raise InputError(f"--shard {_show(text)}: N must be at least 1, e.g. --shard 1/4")
    if count > MAX_SHARDS:
        raise InputError(f"--shard {_show(text)}: N must be at most {MAX_SHARDS}, "
                         "e.g. --shard 1/4")
    if not 1 <= index <= count:
        raise InputError(f"--shard {_show(text)}: I must be 1..{count}, "
                         f"e.g. --shard 1/{count}")
    return index, count


def assign(suite: Suite, count: int) -> list[int]:
    """The shard (1..count) of each of ``suite.benchmarks``, in the suite's order.

    Longest processing time first: the benchmarks by estimated cost, largest first (ties
    by name), each dealt to the shard with the least estimated load so far (ties to the
    lowest index). That keeps the heaviest and lightest shards within one benchmark's
    estimate of each other. The result depends on the suite's benchmarks, its run settings
    and ``count`` only -- not on the order the suite lists them in, nor on hash seeds,
    dict order or the clock -- so each machine of a sharded run computes the same split.
    """
    if count < 1:
        raise InputError(f"a suite is split into at least 1 shard, not {count}")
    configs = suite.benchmarks
    cost = [suite.estimated_s(c) for c in configs]
    order = sorted(range(len(configs)), key=lambda i: (-cost[i], configs[i].name))
    # Shards past the number of benchmarks never receive one (an empty shard wins every
    # tie with them by its lower index), so only that many loads are kept: the same
    # result for a huge N without a list of N loads.
    heap = [(0.0, shard) for shard in range(1, min(count, len(configs)) + 1)]
    out = [0] * len(configs)
    for i in order:
        load, shard = heapq.heappop(heap)  # least load, then lowest index
        out[i] = shard
        heapq.heappush(heap, (load + cost[i], shard))
    return out


def split_digest(suite: Suite, count: int) -> str:
    """The split of ``suite`` into ``count`` shards, hashed: every benchmark with its
    shard. Two shards with different digests were cut differently (another version of
    the suite, or of pinbench's estimates), and may overlap or leave benchmarks out."""
    import hashlib
    import json

    split = sorted(zip((c.name for c in suite.benchmarks), assign(suite, count), strict=True))
    return hashlib.sha256(json.dumps([suite.name, split]).encode()).hexdigest()[:16]


def select(suite: Suite, index: int, count: int) -> Suite:
    """The part of ``suite`` that ``--shard index/count`` runs: the same suite (name,
    settings) holding that shard's benchmarks, in the suite's order."""
    if count < 1 or not 1 <= index <= count:
        raise InputError(f"shard {index}/{count}: I must be 1..N, e.g. shard 1/4")
    shards = assign(suite, count)
    mine = tuple(c for c, s in zip(suite.benchmarks, shards, strict=True) if s == index)
    if not mine:
        # Estimates are positive, so the first N benchmarks dealt fill N distinct shards:
        # only a shard past the number of benchmarks is empty.
        n = len(suite.benchmarks)
        raise InputError(f"shard {index}/{count} of suite {suite.name} is empty: the suite "
                         f"has {n} benchmark{'s' if n != 1 else ''}; use at most {n} "
                         f"shard{'s' if n != 1 else ''}")
    return replace(suite, benchmarks=mine, shard=f"{index}/{count}",
                   split=split_digest(suite, count))


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge` wrote."""

    #: the merged results file
    output: Path
    #: benchmarks in it
    benchmarks: int
    #: the shard indices (I of I/N) found in the inputs, ascending; empty for plain runs
    shards: tuple[int, ...]
    #: N of the inputs' I/N; None when no input was a shard
    shard_count: int | None
    #: shards absent from the inputs (only with allow_missing)
    missing: tuple[int, ...]
    #: the input files, in the order given
    files: tuple[Path, ...]


@dataclass
class _Input:
    """One input file: its path and its benchmarks (pyperf.Benchmark)."""

    path: Path
    benchmarks: list[Any]


def _read(path: Path) -> _Input:
    """Read one pyperf results file (``.json`` or ``.json.gz``); one line if it is not."""
    import pyperf

    if not path.exists():
        raise InputError(f"{path}: no such results file")
    if not path.is_file():
        raise InputError(f"{path} is not a file: pass the results files to merge")
    try:
        # pyperf takes a str path: a Path would be read as an open file object
        suite = pyperf.BenchmarkSuite.load(str(path))
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a pyperf results file ({why})") from None
    benches = suite.get_benchmarks()
    for bench in benches:
        md = bench.get_metadata()
        for key in (SCHEMA_KEY, SUITE_KEY):
            if key not in md:
                raise InputError(f"{path}: benchmark {bench.get_name()!r} has no {key} "
                                 "metadata: not a pinbench results file")
        if md.get(PARTIAL_MARK):
            raise InputError(f"{path} is the partial file of an unfinished run: finish it "
                             f"first with pinbench run --resume {path}, then merge the "
                             "complete file it writes")
    return _Input(path, benches)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (the same name, a symlink or a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _agree(inputs: list[_Input], key: str, what: str, advice: str) -> None:
    """Refuse inputs whose benchmarks disagree on metadata ``key``: name the two files
    (or the one file and its two benchmarks) and the two values."""
    first: tuple[Any, Path, str] | None = None
    for inp in inputs:
        for bench in inp.benchmarks:
            value = bench.get_metadata()[key]
            if first is None:
                first = (value, inp.path, bench.get_name())
                continue
            if value != first[0]:
                v0, p0, b0 = first
                if p0 == inp.path:
                    raise InputError(f"{p0} mixes {what} {v0!r} (benchmark {b0!r}) and "
                                     f"{value!r} (benchmark {bench.get_name()!r}): {advice}")
                raise InputError(f"{p0} is of {what} {v0!r} and {inp.path} of {what} "
                                 f"{value!r}: {advice}")


def _shard_of(inp: _Input, bench: Any) -> tuple[int, int] | None:
    """(I, N) of a benchmark's SHARD_KEY; None when it has none (a plain run)."""
    value = bench.get_metadata().get(SHARD_KEY)
    if value is None:
        return None
    parts = _split(str(value))
    if parts is None or not 1 <= parts[0] <= parts[1] <= MAX_SHARDS:
        raise InputError(f"{inp.path}: benchmark {bench.get_name()!r} has {SHARD_KEY} "
                         f"{value!r}, not I/N with 1 <= I <= N <= {MAX_SHARDS}")
    return parts


def _shard_list(indices: Sequence[int], count: int, most: int = 8) -> str:
    """``2/4``, ``2/4 and 3/4``, ``1/4, 2/4 and 4/4``; past ``most``, ``..., and 9 more``."""
    names = [f"{i}/{count}" for i in indices[:most]]
    if len(indices) > most:
        return f"{', '.join(names)} and {len(indices) - most} more"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def merge(paths: Sequence[Path], output: Path, *, force: bool = False,
          allow_missing: bool = False) -> MergeReport:
    """Join the results files of a sharded run (``pinbench run --shard I/N``) into one.

    Every input must be a complete pinbench results file (not a partial one) of the same
    suite and results schema; no benchmark may be in two of them, nor one file given
    twice; the shards must be of one N, and each of 1..N present unless
    ``allow_missing``. Files of plain runs (no SHARD_KEY) merge too, when they share no
    benchmark. Each refusal is one InputError line naming the file(s), and comes before
    anything is written. The merged file holds every benchmark with its values and
    metadata (SHARD_KEY kept, as provenance), by shard index and then in each file's
    order (plain runs' after the shards, in the order given), and is written atomically:
    an interruption leaves no half file.
    """
    paths = [Path(p) for p in paths]
    output = Path(output)
    if not paths:
        raise InputError("no results file to merge: pass the shards' files, e.g. "
                         "pinbench merge full-1.json full-2.json -o full.json")
    for path in paths:
        if path == output or (output.exists() and _same_file(path, output)):
            raise InputError(f"{output} is one of the files to merge: choose another -o")
    check_output(output, force=force)
    inputs: list[_Input] = []
    for path in paths:
        for seen in inputs:
            if _same_file(seen.path, path):
                what = (f"{path} is given twice" if seen.path == path
                        else f"{seen.path} and {path} are the same file")
                raise InputError(f"{what}: pass each shard's file once")
        inputs.append(_read(path))

    _agree(inputs, SUITE_KEY, "suite", "merge the shards of one suite")
    _agree(inputs, SCHEMA_KEY, "results schema",
           "merge files written by one pinbench version (rerun the older shards)")

    # Overlap before shards: a shard run twice is two files with the same benchmarks,
    # and the benchmark's name is what the user can look for.
    where: dict[str, Path] = {}
    for inp in inputs:
        for bench in inp.benchmarks:
            name = bench.get_name()
            if name in where:
                raise InputError(f"benchmark {name!r} is in both {where[name]} and "
                                 f"{inp.path}: merge files that share no benchmark")
            where[name] = inp.path

    count: int | None = None
    count_at: tuple[Path, str] | None = None
    shard_file: dict[int, Path] = {}
    keyed: list[tuple[int, int, int, Any]] = []  # (shard or 0, file, position, bench)
    for f, inp in enumerate(inputs):
        for pos, bench in enumerate(inp.benchmarks):
            parts = _shard_of(inp, bench)
            if parts is None:
                keyed.append((0, f, pos, bench))  # a plain run's: after the shards
                continue
            index, n = parts
            if count is None:
                count, count_at = n, (inp.path, f"{index}/{n}")
            elif n != count:
                assert count_at is not None
                raise InputError(f"{count_at[0]} is shard {count_at[1]} and {inp.path} "
                                 f"shard {index}/{n}: merge the shards of one --shard I/N "
                                 "split (one N)")
            other = shard_file.setdefault(index, inp.path)
            if other != inp.path:  # (one file given twice was refused above)
                raise InputError(f"{other} and {inp.path} are both shard {index}/{n}: "
                                 "pass one file per shard")
            keyed.append((index, f, pos, bench))

    split: tuple[str, Path] | None = None  # the first digest seen, and its file
    for inp in inputs:
        for bench in inp.benchmarks:
            digest = bench.get_metadata().get(SPLIT_KEY)
            if digest is None:
                continue
            if split is None:
                split = (str(digest), inp.path)
            elif str(digest) != split[0]:
                first = split[1]
                if first == inp.path:
                    raise InputError(f"{first} holds shards of different splits of suite "
                                     f"{bench.get_metadata()[SUITE_KEY]!r}: run every shard "
                                     "from one version")
                raise InputError(f"{first} and {inp.path} are shards of different splits "
                                 f"of suite {bench.get_metadata()[SUITE_KEY]!r} (its "
                                 "benchmarks, or pinbench's estimates, changed in between): "
                                 "run every shard from one version")

    missing: tuple[int, ...] = ()
    if count is not None:
        missing = tuple(i for i in range(1, count + 1) if i not in shard_file)
        if missing and not allow_missing:
            one = len(missing) == 1
            raise InputError(f"shard{'' if one else 's'} {_shard_list(missing, count)} "
                             f"{'is' if one else 'are'} missing: pass "
                             f"{'its file' if one else 'their files'}, or --allow-missing "
                             f"to merge without {'it' if one else 'them'}")

    past = (count or 0) + 1
    keyed.sort(key=lambda k: (k[0] or past, k[1], k[2]))
    benches = [k[3] for k in keyed]

    import pyperf

    _dump_atomic(pyperf.BenchmarkSuite(benches), output)
    return MergeReport(output=output, benchmarks=len(benches),
                       shards=tuple(sorted(shard_file)), shard_count=count, missing=missing,
                       files=tuple(paths))

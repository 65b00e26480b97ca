"""Shards (pinning.harness.shard): a suite's shards partition it, stably and balanced by
estimated cost, and merging the shards' results files gives the serial run's benchmarks.

The results files merged here are fabricated inputs (pyperf objects built by hand), and
every expectation is written out from them, never taken from what merge wrote.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pyperf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinning.harness.runner import PARTIAL_MARK
from pinning.harness.shard import (
    SHARD_KEY,
    SPLIT_KEY,
    MergeReport,
    assign,
    merge,
    parse_shard,
    select,
    split_digest,
)
from pinning.harness.suite import Suite, load_suite, parse_suite
from pinning.model import strategies
from pinning.model.names import InputError

ROOT = Path(__file__).resolve().parent.parent
SIZES = ["1GiB", "2GiB", "4GiB", "8GiB", "16GiB", "32GiB", "64GiB"]
PATTERNS = ["sequential", "random", "hotset", "zipf", "strided"]
FRACTIONS = [0.05, 0.1, 0.5, 1.0]


def _toml_list(items) -> str:
    return "[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in items) + "]"


@st.composite
def suite_texts(draw) -> str:
    """TOML of a random valid suite: startup over sizes x strategies, and maybe a
    lifecycle table over patterns x touch fractions (4k: every strategy maps it)."""
    names = strategies.names()

    def some(items, most=None):
        return _toml_list(draw(st.lists(st.sampled_from(items), min_size=1, max_size=most,
                                        unique=True)))

    lines = ["[suite]",
             f'name = "{draw(st.sampled_from(["quick", "full", "mine"]))}"',
             f"processes = {draw(st.integers(1, 3))}",
             f"values = {draw(st.integers(1, 5))}",
             f"warmups = {draw(st.integers(0, 2))}",
             "",
             "[[benchmark]]",
             'workload = "startup"',
             f"strategy = {some(names)}",
             f"guest_size = {some(SIZES, 4)}"]
    if draw(st.booleans()):
        lines += ["",
                  "[[benchmark]]",
                  'workload = "lifecycle"',
                  f"strategy = {some(names)}",
                  f'guest_size = "{draw(st.sampled_from(SIZES))}"',
                  f"pattern = {some(PATTERNS)}",
                  f"touch_fraction = {some(FRACTIONS)}"]
    return "\n".join(lines) + "\n"


def _loads(suite: Suite, shards: list[int], count: int) -> list[float]:
    loads = [0.0] * count
    for config, shard in zip(suite.benchmarks, shards, strict=True):
        loads[shard - 1] += suite.estimated_s(config)
    return loads


# --- assign / select ---------------------------------------------------------------------

@settings(max_examples=60)
@given(text=suite_texts(), count=st.integers(1, 8), data=st.data())
def test_shards_partition_the_suite_stably_and_balanced(text, count, data):
    suite = parse_suite(text, "generated.toml")
    names = [c.name for c in suite.benchmarks]
    n = len(names)
    shards = assign(suite, count)
    assert len(shards) == n and all(1 <= s <= count for s in shards)

    # partition: each benchmark in exactly one shard, each shard in the suite's order
    seen: list[str] = []
    for index in range(1, count + 1):
        if index > n:
            with pytest.raises(InputError) as err:
                select(suite, index, count)
            assert "empty" in str(err.value) and "\n" not in str(err.value)
            continue
        part = select(suite, index, count)
        assert part.benchmarks, f"shard {index}/{count} of {n} benchmarks is empty"
        assert (part.name, part.processes, part.values, part.warmups) == (
            suite.name, suite.processes, suite.values, suite.warmups)
        positions = [names.index(c.name) for c in part.benchmarks]
        assert positions == sorted(positions)
        assert [shards[p] for p in positions] == [index] * len(positions)
        seen += [c.name for c in part.benchmarks]
    assert sorted(seen) == sorted(names)
    assert len(seen) == len(set(seen))

    # stable: again, from the TOML read again, and whatever order the suite lists them in
    assert assign(suite, count) == shards
    assert assign(parse_suite(text, "again.toml"), count) == shards
    perm = data.draw(st.permutations(range(n)))
    shuffled = replace(suite, benchmarks=tuple(suite.benchmarks[i] for i in perm))
    by_name = dict(zip(names, shards, strict=True))
    assert {c.name: s for c, s in zip(shuffled.benchmarks, assign(shuffled, count),
                                      strict=True)} == by_name

    # balanced: LPT's bound, heaviest - lightest <= the largest single estimate (a few
    # ulps of slack for the float sums)
    loads = _loads(suite, shards, count)
    largest = max(suite.estimated_s(c) for c in suite.benchmarks)
    assert max(loads) - min(loads) <= largest * (1 + 1e-9)


@dataclass(frozen=True)
class FixedCost(Suite):
    """A suite whose estimates are given by name (to check the dealing by hand)."""

    costs: tuple[tuple[str, float], ...] = ()

    def estimated_s(self, config) -> float:
        return dict(self.costs)[config.name]


STARTUP_7 = """
[suite]
name = "seven"
[[benchmark]]
workload = "startup"
strategy = ["upfront", "demand"]
guest_size = ["1GiB", "2GiB", "4GiB"]
[[benchmark]]
workload = "startup"
strategy = "gmem"
guest_size = "1GiB"
"""


def test_assign_deals_longest_first_to_the_least_loaded_shard():
    suite = parse_suite(STARTUP_7, "seven.toml")
    names = [c.name for c in suite.benchmarks]
    assert names == ["startup/upfront/1GiB/4k", "startup/upfront/2GiB/4k",
                     "startup/upfront/4GiB/4k", "startup/demand/1GiB/4k",
                     "startup/demand/2GiB/4k", "startup/demand/4GiB/4k",
                     "startup/gmem/1GiB/4k"]
    costs = dict(zip(names, [3.0, 2.0, 5.0, 1.0, 3.0, 4.0, 2.0], strict=True))
    fixed = FixedCost(**{**suite.__dict__, "costs": tuple(costs.items())})
    # By hand: 5 upfront/4GiB -> 1 (5, 0); 4 demand/4GiB -> 2 (5, 4); 3 demand/2GiB
    # (before upfront/1GiB by name) -> 2 (5, 7); 3 upfront/1GiB -> 1 (8, 7);
    # 2 gmem/1GiB (before upfront/2GiB) -> 2 (8, 9); 2 upfront/2GiB -> 1 (10, 9);
    # 1 demand/1GiB -> 2 (10, 10).
    assert assign(fixed, 2) == [1, 1, 1, 2, 2, 2, 2]
    # Three shards: 5 -> 1; 4 -> 2; 3 demand/2GiB -> 3 (5, 4, 3); 3 upfront/1GiB -> 3
    # (5, 4, 6); 2 gmem -> 2 (5, 6, 6); 2 upfront/2GiB -> 1 (7, 6, 6); 1 -> 2 (7, 7, 6).
    assert assign(fixed, 3) == [3, 1, 1, 2, 3, 2, 2]


def test_assign_breaks_ties_by_name_then_lowest_shard():
    suite = parse_suite(STARTUP_7, "seven.toml")
    fixed = FixedCost(**{**suite.__dict__,
                         "costs": tuple((c.name, 1.0) for c in suite.benchmarks)})
    # equal costs: dealt round-robin in name order (demand/1, demand/2, demand/4, gmem/1,
    # upfront/1, upfront/2, upfront/4) to shards 1, 2, 3, 1, 2, 3, 1
    assert assign(fixed, 3) == [2, 3, 1, 1, 2, 3, 1]


@pytest.mark.parametrize("spec", ["quick", "full"])
def test_builtin_suites_split_into_similar_parts(spec):
    suite = load_suite(spec)
    shards = assign(suite, 4)
    loads = _loads(suite, shards, 4)
    largest = max(suite.estimated_s(c) for c in suite.benchmarks)
    assert max(loads) - min(loads) <= largest * (1 + 1e-9)
    assert sum(len(select(suite, i, 4).benchmarks) for i in range(1, 5)) == len(
        suite.benchmarks)


def test_assign_does_not_depend_on_the_hash_seed():
    code = ("from pinning.harness.suite import load_suite\n"
            "from pinning.harness.shard import assign\n"
            "print(assign(load_suite('full'), 5))\n")
    outs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        outs.add(proc.stdout)
    assert len(outs) == 1


def test_empty_shard_is_one_line():
    suite = parse_suite(STARTUP_7, "seven.toml")  # 7 benchmarks
    assert len(select(suite, 7, 7).benchmarks) == 1
    with pytest.raises(InputError) as err:
        select(suite, 8, 9)
    msg = str(err.value)
    assert msg == ("shard 8/9 of suite seven is empty: the suite has 7 benchmarks; "
                   "use at most 7 shards")


def test_select_refuses_a_shard_outside_1_to_n():
    suite = parse_suite(STARTUP_7, "seven.toml")
    for index, count in [(0, 3), (4, 3), (1, 0)]:
        with pytest.raises(InputError):
            select(suite, index, count)
    with pytest.raises(InputError):
        assign(suite, 0)


def test_huge_shard_count_is_cheap_and_empty_past_the_suite():
    suite = parse_suite(STARTUP_7, "seven.toml")
    assert sorted(assign(suite, 10**12)) == [1, 2, 3, 4, 5, 6, 7]
    with pytest.raises(InputError, match="empty"):
        select(suite, 10**12, 10**12)


# --- parse_shard -------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1/1", (1, 1)), ("1/4", (1, 4)), ("4/4", (4, 4)), ("3/8", (3, 8)), (" 2/3 ", (2, 3)),
    ("07/10", (7, 10)), ("10000/10000", (10000, 10000)),
])
def test_parse_shard_good(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text, why", [
    ("0/4", "I must be 1..4"), ("5/4", "I must be 1..4"), ("1/0", "N must be at least 1"),
    ("0/0", "N must be at least 1"), ("", "expected I/N"), ("1", "expected I/N"),
    ("1/", "expected I/N"), ("/4", "expected I/N"), ("1/2/3", "expected I/N"),
    ("-1/4", "expected I/N"), ("+1/4", "expected I/N"), ("1.0/4", "expected I/N"),
    ("a/b", "expected I/N"), ("1 / 4", "expected I/N"), ("1\n/4", "expected I/N"),
    ("\u0661/\u0664", "expected I/N"),
    ("1/" + "9" * 5000, "expected I/N"), ("1/10001", "N must be at most 10000"),
])
def test_parse_shard_bad(text, why):
    with pytest.raises(InputError) as err:
        parse_shard(text)
    msg = str(err.value)
    assert why in msg and "e.g. --shard 1/" in msg
    assert "\n" not in msg and msg.startswith("--shard ")


# --- merge -------------------------------------------------------------------------------

def _bench(name: str, values: list[float], md: dict | None = None) -> pyperf.Benchmark:
    """A benchmark of two runs (values[:2], values[2:]) of suite quick, schema 2, with
    ``md`` on top (a None value drops the key)."""
    base = {"name": name, "pinbench.suite": "quick", "pinbench.schema": 2,
            "param.workload": name.split("/")[0], **(md or {})}
    base = {k: v for k, v in base.items() if v is not None}
    runs = [pyperf.Run(values[:2], metadata=base, collect_metadata=False),
            pyperf.Run(values[2:], metadata=base, collect_metadata=False)]
    return pyperf.Benchmark(runs)


def _write(path: Path, names: list[str], shard: str | None = None,
           md: dict | None = None) -> Path:
    """A results file of ``names`` (each with its own VALUES), marked shard ``shard``."""
    md = {**(md or {}), **({SHARD_KEY: shard} if shard else {})}
    pyperf.BenchmarkSuite([_bench(n, VALUES[n], md) for n in names]).dump(str(path))
    return path


ALL = [f"startup/demand/{g}GiB/4k" for g in (1, 2, 4, 8, 16, 32)] + [
    "startup/upfront/1GiB/4k", "startup/upfront/2GiB/4k"]
VALUES = {n: [(k + 1) * 1e-3, (k + 2) * 1e-3, (k + 3) * 1e-3, (k + 4) * 1e-3]
          for k, n in enumerate(ALL)}


def _read(path: Path) -> list[pyperf.Benchmark]:
    return pyperf.BenchmarkSuite.load(str(path)).get_benchmarks()


@pytest.fixture
def shards3(tmp_path) -> list[Path]:
    """Three shard files of suite quick (1/3, 2/3 as .json.gz, 3/3)."""
    return [_write(tmp_path / "s1.json", [ALL[0], ALL[3], ALL[6]], "1/3"),
            _write(tmp_path / "s2.json.gz", [ALL[1], ALL[4]], "2/3"),
            _write(tmp_path / "s3.json", [ALL[2], ALL[5], ALL[7]], "3/3")]


def test_merge_joins_shards_in_shard_order(shards3, tmp_path):
    out = tmp_path / "all.json"
    report = merge([shards3[2], shards3[0], shards3[1]], out)
    assert report == MergeReport(output=out, benchmarks=8, shards=(1, 2, 3), shard_count=3,
                                 missing=(), files=(shards3[2], shards3[0], shards3[1]))
    benches = _read(out)
    # by shard index, then each file's own order
    assert [b.get_name() for b in benches] == [ALL[0], ALL[3], ALL[6], ALL[1], ALL[4],
                                               ALL[2], ALL[5], ALL[7]]
    for bench in benches:
        name = bench.get_name()
        assert bench.get_values() == tuple(VALUES[name])
        assert len(bench.get_runs()) == 2
        md = bench.get_metadata()
        assert md["pinbench.suite"] == "quick" and md["pinbench.schema"] == 2
        assert md[SHARD_KEY] == {0: "1/3", 3: "1/3", 6: "1/3", 1: "2/3", 4: "2/3"}.get(
            ALL.index(name), "3/3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.json", "s1.json",
                                                         "s2.json.gz", "s3.json"]


def test_merge_writes_gzip_when_asked(shards3, tmp_path):
    out = tmp_path / "all.json.gz"
    merge(shards3, out)
    with gzip.open(out, "rt") as fh:
        assert fh.read(1) == "{"
    assert sorted(b.get_name() for b in _read(out)) == sorted(ALL)


def test_merge_of_one_shard_of_one(tmp_path):
    one = _write(tmp_path / "only.json", ALL[:3], "1/1")
    report = merge([one], tmp_path / "out.json")
    assert (report.benchmarks, report.shards, report.shard_count) == (3, (1,), 1)
    assert [b.get_name() for b in _read(tmp_path / "out.json")] == ALL[:3]


def test_merge_plain_runs_without_overlap(tmp_path):
    a = _write(tmp_path / "a.json", ALL[4:])
    b = _write(tmp_path / "b.json", ALL[:4])
    report = merge([a, b], tmp_path / "out.json")
    assert (report.shards, report.shard_count, report.missing) == ((), None, ())
    assert [x.get_name() for x in _read(tmp_path / "out.json")] == ALL[4:] + ALL[:4]


def test_merge_of_a_merged_file_with_the_remaining_shard(shards3, tmp_path):
    first = tmp_path / "first.json"
    merge(shards3[:2], first, allow_missing=True)
    merge([shards3[2], first], tmp_path / "all.json")
    assert sorted(b.get_name() for b in _read(tmp_path / "all.json")) == sorted(ALL)


def test_allow_missing_merges_without_the_missing_shard(shards3, tmp_path):
    out = tmp_path / "out.json"
    report = merge([shards3[0], shards3[2]], out, allow_missing=True)
    assert (report.shards, report.missing, report.benchmarks) == ((1, 3), (2,), 6)
    assert [b.get_name() for b in _read(out)] == [ALL[0], ALL[3], ALL[6], ALL[2], ALL[5],
                                                  ALL[7]]


def test_force_replaces_an_existing_output(shards3, tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old")
    merge(shards3, out, force=True)
    assert len(_read(out)) == 8


def _refused(tmp_path: Path, paths, *, out: str = "out.json", **kw) -> str:
    """The one line merge refuses with; and that it wrote nothing (no output, no temp)."""
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError) as err:
        merge(paths, tmp_path / out, **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_refuses_no_file(tmp_path):
    assert "no results file" in _refused(tmp_path, [])


def test_refuses_overlap_naming_benchmark_and_both_files(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/2")
    b = _write(tmp_path / "b.json", ALL[2:5], "2/2")
    msg = _refused(tmp_path, [a, b])
    assert ALL[2] in msg and str(a) in msg and str(b) in msg


def test_refuses_shards_cut_from_different_versions_of_a_suite(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/2", {SPLIT_KEY: "digest-of-v1"})
    b = _write(tmp_path / "b.json", ALL[3:], "2/2", {SPLIT_KEY: "digest-of-v2"})
    msg = _refused(tmp_path, [a, b])
    assert "shards of different splits of suite 'quick'" in msg
    assert str(a) in msg and str(b) in msg


def test_select_records_the_shard_and_the_splits_digest():
    suite = load_suite("quick")
    part = select(suite, 2, 3)
    assert part.shard == "2/3" and part.split == split_digest(suite, 3)
    assert all(select(suite, i, 3).split == part.split for i in (1, 3))
    # the digest follows the split: the benchmarks, N, what the estimates read
    fewer = replace(suite, benchmarks=suite.benchmarks[1:])
    assert split_digest(fewer, 3) != split_digest(suite, 3)
    assert split_digest(suite, 4) != split_digest(suite, 3)
    assert split_digest(replace(suite, source="elsewhere.toml"), 3) == split_digest(suite, 3)


def test_refuses_different_suites(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/2")
    b = _write(tmp_path / "b.json", ALL[3:], "2/2", {"pinbench.suite": "full"})
    msg = _refused(tmp_path, [a, b])
    assert str(a) in msg and str(b) in msg and "'quick'" in msg and "'full'" in msg


def test_refuses_different_schema_versions(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/2", {"pinbench.schema": 1})
    b = _write(tmp_path / "b.json", ALL[3:], "2/2")
    msg = _refused(tmp_path, [a, b])
    assert "schema" in msg and str(a) in msg and str(b) in msg


def test_refuses_a_partial_file(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/2")
    p = _write(tmp_path / "b.partial.json", ALL[3:], "2/2", {PARTIAL_MARK: True})
    msg = _refused(tmp_path, [a, p])
    assert f"pinbench run --resume {p}" in msg


def test_refuses_the_same_file_twice(shards3, tmp_path):
    msg = _refused(tmp_path, [*shards3, shards3[1]])
    assert f"{shards3[1]} is given twice" in msg
    link = tmp_path / "link.json"
    link.symlink_to(shards3[0])
    msg = _refused(tmp_path, [*shards3, link])
    assert str(shards3[0]) in msg and str(link) in msg and "same file" in msg


def test_refuses_differing_shard_counts(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/3")
    b = _write(tmp_path / "b.json", ALL[3:], "2/4")
    msg = _refused(tmp_path, [a, b])
    assert "1/3" in msg and "2/4" in msg and str(a) in msg and str(b) in msg


def test_refuses_one_shard_in_two_files(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/2")
    b = _write(tmp_path / "b.json", ALL[3:5], "1/2")
    c = _write(tmp_path / "c.json", ALL[5:], "2/2")
    msg = _refused(tmp_path, [a, b, c])
    assert "both shard 1/2" in msg and str(a) in msg and str(b) in msg


def test_refuses_missing_shards_naming_them(shards3, tmp_path):
    assert _refused(tmp_path, [shards3[0], shards3[2]]) == (
        "shard 2/3 is missing: pass its file, or --allow-missing to merge without it")
    assert _refused(tmp_path, [shards3[1]]) == (
        "shards 1/3 and 3/3 are missing: pass their files, or --allow-missing to merge "
        "without them")


def test_refuses_an_existing_output_without_force(shards3, tmp_path):
    (tmp_path / "out.json").write_text("keep me")
    assert "--force" in _refused(tmp_path, shards3)
    assert (tmp_path / "out.json").read_text() == "keep me"


def test_refuses_an_output_that_is_an_input(shards3, tmp_path):
    msg = _refused(tmp_path, shards3, out="s1.json", force=True)
    assert "one of the files to merge" in msg
    assert [b.get_name() for b in _read(shards3[0])] == [ALL[0], ALL[3], ALL[6]]


@pytest.mark.parametrize("content, why", [
    (None, "no such results file"),
    ("not json at all", "not a pyperf results file"),
    ('{"a": 1}', "not a pyperf results file"),
    ("[1, 2]", "not a pyperf results file"),
    ('{"version": "1.0", "benchmarks": [', "not a pyperf results file"),
    (b"\x1f\x8b\x08\x00garbage", "not a pyperf results file"),
])
def test_refuses_a_file_that_is_not_a_results_file(shards3, tmp_path, content, why):
    bad = tmp_path / ("bad.json.gz" if isinstance(content, bytes) else "bad.json")
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content)
    msg = _refused(tmp_path, [*shards3, bad])
    assert why in msg and str(bad) in msg


def test_refuses_a_pyperf_file_not_from_pinbench(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/2")
    b = _write(tmp_path / "b.json", ALL[3:], "2/2", {"pinbench.schema": None})
    msg = _refused(tmp_path, [a, b])
    assert "not a pinbench results file" in msg and str(b) in msg


@pytest.mark.parametrize("value", ["3/2", "0/2", "x", "1/10001"])
def test_refuses_a_bad_shard_value(tmp_path, value):
    a = _write(tmp_path / "a.json", ALL[:3], value)
    msg = _refused(tmp_path, [a])
    assert SHARD_KEY in msg and repr(value) in msg and str(a) in msg


def test_many_missing_shards_are_counted_not_all_listed(tmp_path):
    a = _write(tmp_path / "a.json", ALL[:3], "1/20")
    assert _refused(tmp_path, [a]) == (
        "shards 2/20, 3/20, 4/20, 5/20, 6/20, 7/20, 8/20, 9/20 and 11 more are missing: "
        "pass their files, or --allow-missing to merge without them")


# --- shards of a suite, merged: the serial run's benchmarks ------------------------------

def _fake_shard_runs(suite: Suite, count: int, where: Path) -> list[Path]:
    """A results file per non-empty shard, as `pinbench run --shard I/N` would write:
    one benchmark per configuration select() gives, marked with its shard."""
    files = []
    for index in range(1, min(count, len(suite.benchmarks)) + 1):
        part = select(suite, index, count)
        md = {"pinbench.suite": suite.name, SHARD_KEY: f"{index}/{count}"}
        benches = [_bench(c.name, [0.001, 0.002, 0.003, 0.004], md) for c in part.benchmarks]
        path = where / f"{suite.name}-{index}.json"
        pyperf.BenchmarkSuite(benches).dump(str(path))
        files.append(path)
    return files


@settings(max_examples=15)
@given(text=suite_texts(), count=st.integers(1, 8))
def test_merged_shards_are_the_serial_runs_benchmarks(text, count):
    suite = parse_suite(text, "generated.toml")
    serial = sorted(c.name for c in suite.benchmarks)
    with tempfile.TemporaryDirectory() as tmp:
        files = _fake_shard_runs(suite, count, Path(tmp))
        out = Path(tmp) / "all.json"
        # more shards than benchmarks: the empty ones cannot run, so they are missing
        report = merge(files, out, allow_missing=count > len(serial))
        names = [b.get_name() for b in _read(out)]
    assert sorted(names) == serial
    assert report.benchmarks == len(serial)
    assert report.missing == tuple(range(len(serial) + 1, count + 1))


def test_merged_shards_of_full_are_the_serial_runs_benchmarks(tmp_path):
    suite = load_suite("full")
    files = _fake_shard_runs(suite, 4, tmp_path)
    merge(files, tmp_path / "full.json")
    names = [b.get_name() for b in _read(tmp_path / "full.json")]
    assert sorted(names) == sorted(c.name for c in suite.benchmarks)
    assert len(names) == len(set(names))

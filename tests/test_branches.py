"""``pinbench compare-branches`` (pinning/harness/branches.py) on a scratch git repository.

The repository holds: ``bare`` (a README only), ``main`` (this project's tracked
files), ``slow`` (main + an upfront startup doing 20 redundant passes over the
VMM map) and ``broken`` (main + a teardown bench script that fails). The end-to-end
tests run a two-benchmark suite with ``deps="current"``; the numba cache is shared
by the tests of this module (kernels are keyed by their source, so each commit's
kernels compile once).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from pinning.harness import branches
from pinning.harness.suite import load_suite, parse_suite
from pinning.model.names import InputError

ROOT = Path(__file__).resolve().parents[1]
SLOW = "startup/upfront/8GiB/4k"
STEADY = "teardown/upfront/8GiB/4k"
TINY_SUITE = """
[suite]
name = "tiny"
processes = 1
values = 5
# The first startup value of a worker pays for faulting in fresh memory (~5x the others):
# a warmup keeps that outlier from blurring the comparison of 5 values against 5.
warmups = 1

[[benchmark]]
workload = ["startup", "teardown"]
strategy = "upfront"
guest_size = "8GiB"
"""
# 20 redundant passes over host_map in the upfront startup: the counters stay the same
# (the sum can only change the status if it equals an arbitrary constant, and LLVM cannot
# drop a loop whose result it compares).
SLOW_PATCH = """\
    extra = 0
    for _ in range(20):
        for g in range(guest_pages):
            extra = extra * 3 + st.host_map[g]
    if extra == 0x5EED5EED5EED5EED:
        status = ERR_NO_FRAME
"""
SLOW_ANCHOR = "    clflush += guest_pages * PAGE_SIZE\n"

needs_jit = pytest.mark.skipif(bool(os.environ.get("NUMBA_DISABLE_JIT")),
                               reason="8 GiB guests in pure Python would take minutes")


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(repo), "-c", "commit.gpgsign=false", *args],
                          check=True, capture_output=True, text=True, env=env).stdout


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of pinbench")
    repo = tmp_path_factory.mktemp("scratch")
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# scratch\n")
    commit_all(repo, "a README only")
    git(repo, "tag", "bare")
    tracked = git(ROOT, "ls-files").splitlines()
    for rel in tracked:
        src = ROOT / rel
        if rel.startswith(("results/", "notebooks/")) or not src.is_file():
            continue
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, repo / rel)
    commit_all(repo, "A: pinbench")

    git(repo, "checkout", "-q", "-b", "slow")
    kernels = repo / "pinning" / "model" / "kernels" / "engine.py"
    text = kernels.read_text()
    assert text.count(SLOW_ANCHOR) == 1
    kernels.write_text(text.replace(SLOW_ANCHOR, SLOW_PATCH + SLOW_ANCHOR))
    commit_all(repo, "B: a slower upfront startup")

    git(repo, "checkout", "-q", "-b", "broken", "main")
    script = repo / "bench" / "teardown.py"
    script.write_text(script.read_text().replace(
        'main("teardown")', 'raise RuntimeError("teardown broken on purpose")'))
    commit_all(repo, "C: the teardown bench fails")
    git(repo, "checkout", "-q", "main")
    assert git(repo, "status", "--porcelain") == ""
    return repo


@pytest.fixture(scope="module")
def numba_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("numba-cache")


@pytest.fixture
def tmpdir_empty(tmp_path, monkeypatch, numba_cache) -> Path:
    """A private temporary directory for this process and its children; must end empty."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(numba_cache))
    return tmp


@pytest.fixture
def suite_file(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return path


def assert_clean(repo: Path, tmp: Path) -> None:
    """Only the main worktree is left, git knows no other, and the temp dir is empty."""
    listed = git(repo, "worktree", "list", "--porcelain").splitlines()
    assert [ln for ln in listed if ln.startswith("worktree ")] == [f"worktree {repo}"]
    assert not any((repo / ".git" / "worktrees").glob("*"))
    assert sorted(p.name for p in tmp.iterdir()) == []
    assert git(repo, "status", "--porcelain") == ""


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


# ---- bad input: refused before anything is created --------------------------------------

def test_unknown_ref(repo, tmpdir_empty, suite_file):
    with pytest.raises(InputError) as excinfo:
        branches.main("main", "no-such-branch", suite=str(suite_file), repo=repo,
                      deps="current")
    assert "no-such-branch" in one_line_error(excinfo)
    assert_clean(repo, tmpdir_empty)


def test_ref_without_pinbench(repo, tmpdir_empty, suite_file):
    with pytest.raises(InputError) as excinfo:
        branches.main("bare", "main", suite=str(suite_file), repo=repo, deps="current")
    msg = one_line_error(excinfo)
    assert "'bare'" in msg and "no pinbench" in msg and "pinning/cli.py" in msg
    assert_clean(repo, tmpdir_empty)


def test_not_a_git_repository(tmp_path, tmpdir_empty):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InputError) as excinfo:
        branches.main("main", repo=plain, deps="current")
    assert "not a git repository" in one_line_error(excinfo)
    assert list(tmpdir_empty.iterdir()) == []


@pytest.mark.parametrize("change", ["modified", "staged", "untracked-source"])
def test_dirty_worktree(repo, tmpdir_empty, suite_file, change):
    readme = repo / "README.md"
    new = repo / "pinning" / "new_module.py"
    try:
        if change == "untracked-source":
            new.write_text("X = 1\n")
        else:
            readme.write_text(readme.read_text() + "\nmore\n")
            if change == "staged":
                git(repo, "add", "README.md")
        with pytest.raises(InputError) as excinfo:
            branches.main("main", "slow", suite=str(suite_file), repo=repo, deps="current")
        assert "uncommitted changes" in one_line_error(excinfo)
        assert list(tmpdir_empty.iterdir()) == []
    finally:
        new.unlink(missing_ok=True)
        git(repo, "reset", "-q", "--hard")
    assert_clean(repo, tmpdir_empty)


def test_untracked_results_are_not_dirty(repo):
    stray = repo / "results" / "compare-old" / "base.json"
    stray.parent.mkdir(parents=True)
    stray.write_text("{}")
    try:
        branches._check_clean(repo)  # outputs of earlier runs are not code
    finally:
        shutil.rmtree(repo / "results" / "compare-old")


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"deps": "pip"}, "deps"),
    ({"threshold": -0.1}, "threshold"),
    ({"aa": True, "head_ref": "slow"}, "--aa"),
    ({"suite": "no-such-suite"}, "no-such-suite"),
])
def test_bad_arguments(repo, tmpdir_empty, suite_file, kwargs, words):
    args = {"suite": str(suite_file), "repo": repo, "deps": "current", **kwargs}
    head = args.pop("head_ref", None)
    with pytest.raises(InputError) as excinfo:
        branches.main("main", head, **args)
    assert words in one_line_error(excinfo)
    assert_clean(repo, tmpdir_empty)


def test_existing_results_are_not_overwritten(repo, tmpdir_empty, suite_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "head.json").write_text("{}")
    with pytest.raises(InputError) as excinfo:
        branches.main("main", "slow", suite=str(suite_file), repo=repo, deps="current",
                      outdir=out)
    assert "head.json exists" in one_line_error(excinfo)
    assert (out / "head.json").read_text() == "{}"
    assert_clean(repo, tmpdir_empty)


# ---- pieces ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["quick", "full"])
def test_one_benchmark_suites_reproduce_each_config(name):
    suite = load_suite(name)
    for config in suite.benchmarks:
        text = branches.one_bench_toml(suite, config)
        one = parse_suite(text, "one.toml")
        assert one.benchmarks == (config,)
        assert (one.name, one.processes, one.values, one.warmups) == (
            suite.name, suite.processes, suite.values, suite.warmups)
        assert f"guest_size = {config.guest_size}\n" in text


def test_suggested_threshold_rule():
    # 2 x the 95th percentile of |ratio - 1|, rounded up to a whole percent, at least 1 %.
    assert branches.suggest_threshold([0.001, 0.002]) == 0.01
    assert branches.suggest_threshold([0.0, 0.01, 0.02, 0.03]) == 0.06  # p95 0.0285 -> 5.7 %
    assert branches.suggest_threshold([0.025]) == 0.05  # exactly 5 %, not 6
    rows = pd.DataFrame({"name": ["a", "b"], "ratio": [1.02, 0.97],
                         "ratio_lo": [0.99, 0.90], "ratio_hi": [1.05, 1.00]})
    noise = branches.noise_floor(rows)
    assert noise["max_dev_name"] == "b" and noise["max_dev"] == pytest.approx(0.03)
    assert noise["max_halfwidth_name"] == "b" and noise["max_halfwidth"] == pytest.approx(0.05)
    assert noise["threshold"] == 0.06
    text = branches.format_noise(noise, 0.05)
    assert "suggested threshold" in text and "6.00 %" in text and "below this noise" in text
    # per-process rows: verdicts already carry the noise; the least threshold that passes
    rows = rows.assign(unit="process", verdict=["no significant change", "faster"])
    noise = branches.noise_floor(rows)
    assert noise["per_process"] and noise["n_significant"] == 1
    assert noise["threshold"] == 0.04  # above |0.97 - 1|
    clean = branches.noise_floor(rows.assign(verdict="no significant change"))
    assert clean["threshold"] == 0.01 and "0 of 2" in branches.format_noise(clean, 0.05)


def test_setup_failure_cleans_up(repo, tmpdir_empty, suite_file, monkeypatch):
    def broken_venv(side, deps, tmp):
        raise InputError(f"{side.display}: pip install -e failed: no network")

    monkeypatch.setattr(branches, "_make_venv", broken_venv)
    with pytest.raises(InputError, match="no network"):
        branches.main("main", "slow", suite=str(suite_file), repo=repo, deps="current")
    assert_clean(repo, tmpdir_empty)


# ---- end to end --------------------------------------------------------------------------

def progress(err: str) -> list[tuple[str, str, str]]:
    """(i/N, benchmark, side) of each progress line."""
    out = []
    for line in err.splitlines():
        if line.startswith("[") and "] " in line:
            head, rest = line.split("] ", 1)
            name, side = rest.split("  ", 1)
            out.append((head[1:], name, side.split()[0]))
    return out


@needs_jit
def test_slower_commit_fails_and_is_named(repo, tmpdir_empty, suite_file, tmp_path, capsys):
    out = tmp_path / "out"
    status = branches.main("main", "slow", suite=str(suite_file), repo=repo, deps="current",
                           outdir=out, threshold=0.2)
    std = capsys.readouterr()
    assert status == 1, std.out + std.err
    # Interleaved: A then B for the first benchmark, B then A for the second.
    assert progress(std.err) == [("1/2", SLOW, "base"), ("1/2", SLOW, "head"),
                                 ("2/2", STEADY, "head"), ("2/2", STEADY, "base")]
    assert SLOW in std.out
    result = json.loads((out / "compare.json").read_text())
    assert result["exit_status"] == 1
    from pinning.analysis.compare import compare_files

    cmp = compare_files(out / "base.json", out / "head.json", threshold=0.2)
    # Only SLOW must gate: an unchanged benchmark may still differ by process-to-process
    # noise on a shared machine (up to ~1.5x seen at these sizes).
    assert SLOW in cmp.gating
    ratio = cmp.rows.set_index("name")["ratio"]
    assert ratio[SLOW] > 2
    for name in ("base.json", "head.json", "compare.md", "compare.txt",
                 "report-base/report.md", "report-head/report.html"):
        assert (out / name).is_file(), name
        assert str(out / name) in std.out
    assert SLOW in (out / "compare.md").read_text()
    assert_clean(repo, tmpdir_empty)


@needs_jit
def test_aa_run_passes_and_prints_the_noise_floor(repo, tmpdir_empty, suite_file, tmp_path,
                                                  capsys):
    out = tmp_path / "out"
    status = branches.main("main", aa=True, suite=str(suite_file), repo=repo, deps="current",
                           outdir=out)
    std = capsys.readouterr()
    assert status == 0, std.out + std.err
    assert [side for _, _, side in progress(std.err)] == ["A1", "A2", "A2", "A1"]
    assert "setting up A1" in std.err and "setting up A2" not in std.err  # one worktree
    assert "noise floor" in std.out and "suggested threshold" in std.out
    assert (out / "base.json").is_file() and (out / "head.json").is_file()
    assert_clean(repo, tmpdir_empty)


@needs_jit
def test_aa_pairs_on_a_cluster_each_run_whole_on_one_worker(repo, tmpdir_empty, suite_file,
                                                            tmp_path, capsys):
    pytest.importorskip("distributed", reason="dask.distributed is not installed "
                        "(pip install -e '.[dask]')")
    import pyperf

    out = tmp_path / "out"
    small = tmp_path / "small.toml"  # the tiny suite at 1 GiB, 2 values: placement, not speed
    small.write_text(TINY_SUITE.replace("8GiB", "1GiB").replace("values = 5", "values = 2")
                     .replace("warmups = 1", "warmups = 0"))
    status = branches.main("main", aa=True, suite=str(small), repo=repo, deps="current",
                           outdir=out, cluster="local:2")
    std = capsys.readouterr()
    assert status == 0, std.out + std.err
    # one cell per benchmark: the A/A pair of each, with both sides' rounds in it
    cells = [ln for ln in std.err.splitlines() if re.match(r"\[\d/2\] \S+ on \S+: ", ln)]
    names = [n.replace("8GiB", "1GiB") for n in (SLOW, STEADY)]
    assert sorted(ln.split()[1] for ln in cells) == sorted(names)
    sides = {label: {b.get_name(): b for b in
                     pyperf.BenchmarkSuite.load(str(out / f"{label}.json")).get_benchmarks()}
             for label in ("base", "head")}
    for name in names:
        a1, a2 = sides["base"][name], sides["head"][name]
        workers = {r.get_metadata()["pinbench.worker"] for r in [*a1.get_runs(),
                                                                 *a2.get_runs()]}
        assert len(workers) == 1 and workers != {"local"}  # the pair on one dask worker
        # the identical halves ran twice: two sets of runs, not one result handed to both
        dates = [{r.get_metadata()["date"] for r in b.get_runs()} for b in (a1, a2)]
        assert dates[0].isdisjoint(dates[1])
    assert "noise floor" in std.out
    assert_clean(repo, tmpdir_empty)


@needs_jit
def test_failing_benchmark_is_named_left_out_and_cleaned_up(repo, tmpdir_empty, suite_file,
                                                            tmp_path, capsys):
    out = tmp_path / "out"
    status = branches.main("main", "broken", suite=str(suite_file), repo=repo,
                           deps="current", outdir=out, threshold=0.2)
    std = capsys.readouterr()
    assert status == 1, std.out + std.err  # a benchmark the head broke fails the comparison
    assert f"FAILED {STEADY} at head broken@" in std.out
    assert "teardown broken on purpose" in std.out
    import pyperf

    for side in ("base", "head"):
        names = [b.get_name() for b in pyperf.BenchmarkSuite.load(str(out / f"{side}.json"))]
        assert names == [SLOW]  # left out of both sides
    assert_clean(repo, tmpdir_empty)


@needs_jit
def test_sides_alternate_process_by_process(repo, tmpdir_empty, tmp_path, capsys):
    # processes = 2: two rounds of one worker process per side, A B then B A, and
    # each side's results hold both processes as runs of one benchmark
    suite = tmp_path / "two.toml"
    suite.write_text(TINY_SUITE.replace("processes = 1", "processes = 2")
                     .replace('workload = ["startup", "teardown"]', 'workload = "startup"')
                     .replace("values = 5", "values = 2"))
    out = tmp_path / "out"
    status = branches.main("main", "slow", suite=str(suite), repo=repo, deps="current",
                           outdir=out, threshold=0.2)
    std = capsys.readouterr()
    assert status in (0, 1), std.out + std.err
    lines = [ln for ln in std.err.splitlines() if ln.startswith("[1/1]")]
    sides = [(ln.split("  ", 1)[1].split()[0], "round 1/2" in ln) for ln in lines]
    assert sides == [("base", True), ("head", True), ("head", False), ("base", False)]
    import pyperf

    for side in ("base", "head"):
        bench = pyperf.BenchmarkSuite.load(str(out / f"{side}.json")).get_benchmarks()[0]
        assert bench.get_nrun() == 2 and len(bench.get_values()) == 4
    assert "2x2" in (out / "compare.txt").read_text()
    assert_clean(repo, tmpdir_empty)


@needs_jit
def test_ctrl_c_cleans_up_and_names_what_finished(repo, tmpdir_empty, suite_file, tmp_path,
                                                  monkeypatch, capsys):
    real = branches._run_bench
    calls = []

    def interrupted_third(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(branches, "_run_bench", interrupted_third)
    out = tmp_path / "out"
    status = branches.main("main", "slow", suite=str(suite_file), repo=repo, deps="current",
                           outdir=out)
    err = capsys.readouterr().err
    assert status == 130
    assert f"interrupted; nothing written. Finished on both sides before the interrupt: {SLOW}" \
        in err
    assert not out.exists()
    assert_clean(repo, tmpdir_empty)


@needs_jit
def test_sigterm_cleans_up_like_ctrl_c(repo, tmpdir_empty, suite_file, tmp_path, monkeypatch,
                                       capsys):
    # a cancelled CI job is sent SIGTERM
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    real = branches._run_bench
    calls = []

    def terminated_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(branches, "_run_bench", terminated_second)
    out = tmp_path / "out"
    status = branches.main("main", "slow", suite=str(suite_file), repo=repo, deps="current",
                           outdir=out)
    assert status == 130
    assert "interrupted; nothing written" in capsys.readouterr().err
    assert not out.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert_clean(repo, tmpdir_empty)


# ---- CI workflows ------------------------------------------------------------------------

def test_workflows_run_the_readme_tests_and_compare_branches():
    readme = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    test_command = next(b.strip() for b in re.findall(r"```sh\n(.*?)```", readme, re.S)
                        if "pytest" in b)
    tests = (ROOT / ".github" / "workflows" / "tests.yml").read_text()
    assert f"run: {test_command}\n" in tests
    assert "push:" in tests and "pull_request:" in tests and 'python-version: "3.11"' in tests
    bench = (ROOT / ".github" / "workflows" / "benchmarks.yml").read_text()
    assert "pull_request:" in bench and "fetch-depth: 0" in bench
    assert 'pinbench compare-branches "origin/$BASE_REF" HEAD --suite ci -o bench-out' \
        in bench and "BASE_REF: ${{ github.base_ref }}" in bench
    assert 'cat bench-out/compare.md >> "$GITHUB_STEP_SUMMARY"' in bench
    assert bench.count("if: always()") == 2 and "path: bench-out/" in bench
    assert "/dev/kvm" in bench

"""``pinbench compare-branches``: benchmark two git refs, interleaved, and compare them.

Each ref gets a detached ``git worktree`` and a virtual environment of its own in
a temporary directory, so each side runs its own code. The suite is read with
the *current* pinbench and split into one-benchmark suite files; each is run
with ``<venv>/bin/pinbench run`` on one side, then the other (the side that goes
first alternates from benchmark to benchmark), so drift of a shared machine hits
both alike. The parts are merged into ``base.json`` and ``head.json`` and compared
with :func:`pinning.analysis.compare.compare_files`.

Dependencies of each side (``deps``):

* ``"install"``: ``python -m venv`` and ``pip install -q -e <worktree>``, so each
  ref gets the dependency versions its own ``pyproject.toml`` asks for (network
  or a pip cache needed; what CI uses).
* ``"current"`` (fast, offline; for tests): a venv without pip whose one ``.pth``
  file puts the worktree first on ``sys.path`` and the current interpreter's
  site-packages (``sysconfig.get_paths()["purelib"]``) after it, plus a
  ``pinbench`` console script: the ref's own code on the dependencies installed
  here. (This is what an editable install amounts to; ``pip install
  --no-build-isolation`` is not used because it would build with the current
  environment's setuptools, which may be older than the ref's build needs.)

Either way the venv must import ``pinning`` from its worktree, or setup fails.
Worktrees and the temporary directory are removed afterwards, also on an error
or Ctrl-C.

A benchmark that fails on one side is named and left out of both; one that fails
at head makes the exit status 1. The checkout must be clean: changes to tracked
files, or untracked files under ``pinning/`` or ``bench/``, would be benchmarked
on neither side (other untracked files, e.g. earlier results, are allowed).
``aa=True`` runs the base ref twice in one worktree and venv and prints the noise
floor with a suggested threshold (:func:`suggest_threshold`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pinning.harness.suite import Suite, load_suite

if TYPE_CHECKING:
    from pinning.harness.cluster import ClusterRun
from pinning.model.config import BenchConfig
from pinning.model.names import InputError, time_label, wall_kind

DEPS_MODES = ("install", "current")
# What a ref must hold to be benchmarked.
REQUIRED_PATHS = ("pinning/cli.py", "bench", "pyproject.toml")
# Untracked files here would be benchmarked in neither worktree: they make the checkout dirty.
SOURCE_DIRS = ("pinning/", "bench/")
# Variables that would make a side's processes import another checkout's code.
_SCRUBBED_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PINBENCH_BENCH_DIR",
                 "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
OUTPUT_NAMES = ("base.json", "head.json", "compare.md", "compare.json", "compare.txt")


@dataclass
class Side:
    """One side of the comparison: a ref checked out in a worktree with its own venv."""

    label: str  # "base" or "head": the results file's name
    ref: str
    sha: str
    display: str = ""  # how progress names it
    worktree: Path | None = None
    venv: Path | None = None
    parts: dict[str, Path] = field(default_factory=dict)  # config name -> part file
    failed: dict[str, str] = field(default_factory=dict)  # config name -> why


# -- git and processes ----------------------------------------------------------------------

def _git(repo: Path, *args: str, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                          check=False)
    if check and proc.returncode:
        raise InputError(f"git {' '.join(args)} failed: {_last_line(proc)}")
    return proc


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in f"{proc.stderr or ''}\n{proc.stdout or ''}".splitlines()
             if ln.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def _run(cmd: Sequence[str | Path], *, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on Ctrl-C stop the whole group, then re-raise."""
    argv = [str(c) for c in cmd]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = proc.communicate()
    except KeyboardInterrupt:
        _stop_group(proc)
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _side_env(venv: Path) -> dict[str, str]:
    """The environment of a side's processes: its venv first, nothing pointing elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


# -- validation -----------------------------------------------------------------------------

def _repo_root(repo: str | Path) -> Path:
    path = Path(repo)
    if not path.is_dir():
        raise InputError(f"{repo}: not a git repository (no such directory)")
    proc = _git(path, "rev-parse", "--show-toplevel")
    if proc.returncode:
        raise InputError(f"{repo}: not a git repository (or a bare one)")
    return Path(proc.stdout.strip())


def _resolve(root: Path, ref: str) -> str:
    proc = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if proc.returncode or not proc.stdout.strip():
        raise InputError(f"unknown git ref {ref!r}: not a commit in {root}")
    sha = proc.stdout.strip()
    for path in REQUIRED_PATHS:
        if _git(root, "cat-file", "-e", f"{sha}:{path}").returncode:
            raise InputError(f"ref {ref!r} ({sha[:10]}) has no pinbench: {path} is missing")
    return sha


def _check_clean(root: Path) -> None:
    proc = _git(root, "status", "--porcelain", "--untracked-files=all", check=True)
    dirty = [ln for ln in proc.stdout.splitlines()
             if ln and (not ln.startswith("??") or ln[3:].lstrip('"').startswith(SOURCE_DIRS))]
    if dirty:
        raise InputError(f"{root} has uncommitted changes ({dirty[0].strip()}"
                         f"{f' and {len(dirty) - 1} more' if len(dirty) > 1 else ''}): "
                         "commit or stash them; compare-branches benchmarks commits only")


def _slug(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", ref).strip("-") or "ref"


# -- one side's checkout --------------------------------------------------------------------

def _add_worktree(root: Path, side: Side, path: Path) -> None:
    proc = _git(root, "worktree", "add", "--detach", str(path), side.sha)
    if proc.returncode:
        raise InputError(f"{side.display}: git worktree add failed: {_last_line(proc)}")
    side.worktree = path


def _make_venv(side: Side, deps: str, tmp: Path) -> None:
    """Give ``side`` a venv in ``<worktree>/.venv`` that runs the worktree's pinbench."""
    assert side.worktree is not None
    wt = side.worktree
    venv = wt / ".venv"
    py = venv / "bin" / "python"

    def step(what: str, cmd: Sequence[str | Path]) -> subprocess.CompletedProcess:
        proc = _run(cmd, cwd=tmp, env=_side_env(venv))
        if proc.returncode:
            raise InputError(f"{side.display}: {what} failed: {_last_line(proc)}")
        return proc

    if deps == "install":
        step("python -m venv", [sys.executable, "-m", "venv", venv])
        step("pip install -e", [py, "-m", "pip", "install", "-q", "-e", wt])
    else:
        step("python -m venv", [sys.executable, "-m", "venv", "--without-pip", venv])
        site = Path(step("sysconfig", [py, "-I", "-c", "import sysconfig; "
                                       "print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
        here = sysconfig.get_paths()
        lines = [str(wt), *dict.fromkeys([here["purelib"], here["platlib"]])]
        (site / "pinbench-current-deps.pth").write_text("\n".join(lines) + "\n")
        script = venv / "bin" / "pinbench"
        script.write_text(f"#!{py}\nimport sys\n\nfrom pinning.cli import main\n\n"
                          "if __name__ == '__main__':\n    sys.exit(main())\n")
        script.chmod(0o755)
    where = step("import check", [py, "-I", "-c", "import pinning; print(pinning.__file__)"])
    found = Path(where.stdout.strip()).resolve()
    if not found.is_relative_to(wt.resolve()):
        raise InputError(f"{side.display}: its venv imports pinning from {found}, "
                         f"not from its worktree {wt}")
    side.venv = venv


# -- the benchmarks -------------------------------------------------------------------------

def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def one_bench_toml(suite: Suite, config: BenchConfig) -> str:
    """A suite TOML of the one benchmark ``config`` with ``suite``'s run settings.

    The keys a benchmark needs are always written; other fields only where they
    differ from their default, so a ref that predates a newer parameter still
    reads the file (guest_size is an int of bytes).
    """
    head = {"name": suite.name, "processes": suite.processes, "values": suite.values,
            "warmups": suite.warmups}
    if suite.cost_profile:
        profile = Path(suite.cost_profile)
        head["cost_profile"] = str(profile.resolve()) if profile.is_file() else str(profile)
    bench = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in ("workload", "strategy", "guest_size") or value != f.default:
            bench[f.name] = value
    lines = ["[suite]", *(f"{k} = {_toml_value(v)}" for k, v in head.items()),
             "", "[[benchmark]]", *(f"{k} = {_toml_value(v)}" for k, v in bench.items())]
    return "\n".join(lines) + "\n"


def _run_bench(side: Side, name: str, suite_file: Path, part: Path, cwd: Path,
               extra_env: dict[str, str] | None = None) -> str:
    """Run one benchmark on one side, record its part file or its failure; the outcome."""
    assert side.venv is not None
    t0 = time.monotonic()
    proc = _run([side.venv / "bin" / "pinbench", "run", "--suite", suite_file, "-o", part],
                env={**_side_env(side.venv), **(extra_env or {})}, cwd=cwd)
    wall = time.monotonic() - t0
    if proc.returncode == 0 and part.is_file():
        import pyperf

        side.parts[name] = part
        bench = pyperf.BenchmarkSuite.load(str(part)).get_benchmarks()[0]
        # on the sim backing the value times pinbench's own bookkeeping
        kind = time_label(wall_kind(bench.get_metadata().get("param.backing")))
        return f"{bench.median() * 1e3:.3f} ms median ({kind}), {wall:.1f} s wall"
    lines = [ln.strip() for ln in f"{proc.stdout}\n{proc.stderr}".splitlines() if ln.strip()]
    why = next((ln for ln in lines if ln.startswith(("FAILED ", "skipped "))),
               lines[-1] if lines else f"exit status {proc.returncode}")
    side.failed[name] = why
    return f"FAILED: {why}"


def _merge(parts: Sequence[Path], output: Path) -> None:
    """One pyperf suite of every part's benchmarks, written to a temp file then renamed."""
    import pyperf

    benches = [b for p in parts for b in pyperf.BenchmarkSuite.load(str(p)).get_benchmarks()]
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    os.unlink(tmp)  # pyperf refuses to overwrite a file
    try:
        pyperf.BenchmarkSuite(benches).dump(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


# -- A/A noise floor ------------------------------------------------------------------------

def suggest_threshold(deviations: Sequence[float]) -> float:
    """The threshold a *pooled* A/A run suggests: 2 x the 95th percentile of |ratio - 1|.

    Rounded up to a whole percent, at least 1 %. The percentile interpolates
    linearly (numpy's default), so with few benchmarks it is close to the largest.
    Used when a side had a single worker process, whose verdicts cannot account for
    variance between processes, so only a threshold above the ratios' spread protects.
    """
    import numpy as np

    devs = np.asarray([d for d in deviations if not math.isnan(d)], dtype=float)
    if devs.size == 0:
        return math.nan
    p95 = float(np.percentile(devs, 95))
    return _whole_pct(2 * p95)


def _whole_pct(fraction: float) -> float:
    return max(1, math.ceil(round(fraction * 100, 9))) / 100


def noise_floor(rows) -> dict[str, object]:
    """The noise of an A/A comparison's rows (``name``, ``ratio``, ``ratio_lo``, ``ratio_hi``,
    optionally ``unit`` and ``verdict`` from :func:`pinning.analysis.compare.compare_files`).

    Returns ``max_dev`` / ``max_dev_name`` (largest |ratio - 1|), ``p95_dev``,
    ``max_halfwidth`` / ``max_halfwidth_name`` (widest CI half-width of the ratio),
    ``n_significant`` and ``threshold``. When every row used the process as its unit the
    verdicts already account for between-process noise (and Holm for the number of
    benchmarks), so the threshold is the smallest whole percent (>= 1 %) above every
    significant |ratio - 1| of the A/A -- the least with which it passes; otherwise
    :func:`suggest_threshold` of the spread.
    """
    import numpy as np

    dev = (rows["ratio"].astype(float) - 1.0).abs()
    half = (rows["ratio_hi"].astype(float) - rows["ratio_lo"].astype(float)) / 2
    hier = "unit" in rows and bool((rows["unit"] == "process").all())
    from pinning.analysis.compare import SIGNIFICANT

    # "cannot tell" is no more a significant change than "no significant change"
    sig = rows["verdict"].isin(SIGNIFICANT) if "verdict" in rows else dev < 0
    if hier:
        worst = float(dev[sig].max()) if sig.any() else 0.0
        threshold = _whole_pct(worst + 1e-9) if sig.any() else 0.01
    else:
        threshold = suggest_threshold(dev)
    out: dict[str, object] = {"n": len(rows), "max_dev": math.nan, "max_dev_name": "-",
                              "p95_dev": math.nan, "max_halfwidth": math.nan,
                              "max_halfwidth_name": "-", "n_significant": int(sig.sum()),
                              "per_process": hier, "threshold": threshold}
    if dev.notna().any():
        i = dev.idxmax()
        out |= {"max_dev": float(dev[i]), "max_dev_name": rows.loc[i, "name"],
                "p95_dev": float(np.percentile(dev.dropna(), 95))}
    if half.notna().any():
        j = half.idxmax()
        out |= {"max_halfwidth": float(half[j]), "max_halfwidth_name": rows.loc[j, "name"]}
    return out


def format_noise(noise: dict[str, object], threshold: float, level: str = "95 %") -> str:
    """The A/A summary: noise floor and the suggested threshold (``level``: the CI's)."""
    def pct(x: object) -> str:
        return "n/a" if isinstance(x, float) and math.isnan(x) else f"{float(x) * 100:.2f} %"

    if noise.get("per_process"):
        rule = ("the least whole percent above every significant |ratio - 1|, >= 1 %: "
                "per-process statistics, Holm-adjusted")
    else:
        rule = ("2 x the 95th percentile of |ratio - 1|, rounded up to a whole percent, "
                ">= 1 %: a side had one process, so verdicts ignore between-process noise")
    items = [("significant (should be ~none)",
              f"{noise.get('n_significant', 0)} of {noise['n']}"),
             ("largest |ratio - 1|", f"{pct(noise['max_dev'])}  ({noise['max_dev_name']})"),
             ("95th percentile of |ratio - 1|", pct(noise["p95_dev"])),
             (f"widest {level} CI half-width",
              f"{pct(noise['max_halfwidth'])}  ({noise['max_halfwidth_name']})"),
             ("suggested threshold", f"{pct(noise['threshold'])}  ({rule})")]
    lines = [f"noise floor (A/A: the same commit twice, {noise['n']} benchmarks, measured)",
             *(f"  {label:<32}{value}" for label, value in items)]
    suggested = noise["threshold"]
    if isinstance(suggested, float) and suggested > threshold:
        lines.append(f"  the threshold given, {pct(threshold)}, is below this noise floor: "
                     f"use --threshold {float(suggested) * 100:g}% or more")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------

def main(base_ref: str, head_ref: str | None = None, *, suite: str = "quick",
         outdir: str | Path | None = None, aa: bool = False, threshold: float = 0.05,
         repo: str | Path = ".", deps: str = "install",
         fail_on_model_change: bool = False, cluster: str | None = None) -> int:
    """Benchmark ``base_ref`` and ``head_ref`` (default HEAD) interleaved, compare them.

    With ``cluster`` (``ADDRESS`` or ``local:N``) each benchmark's pair runs on one worker
    of a dask.distributed cluster whose workers see this file system.

    Writes ``base.json``, ``head.json``, ``compare.{md,json,txt}`` and
    ``report-base/``, ``report-head/`` into ``outdir`` (default
    ``results/compare-<base>-<head>-<date>``); ``deps``: see the module docstring.
    Returns the comparison's exit status (0 ok, 1 regression, or a benchmark that
    failed at head, or nothing to compare); with ``aa`` (``base_ref`` against
    itself, one worktree run twice) 0 unless a benchmark failed; 130 on Ctrl-C.
    Bad input raises InputError before anything is created.
    """
    if deps not in DEPS_MODES:
        raise InputError(f"deps {deps!r} is not one of {', '.join(DEPS_MODES)}")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise InputError(f"threshold {threshold!r} must be zero or more")
    if aa and head_ref is not None:
        raise InputError("--aa runs the base ref against itself: give no head ref")
    root = _repo_root(repo)
    head_ref = head_ref or "HEAD"
    base = Side("base", base_ref, _resolve(root, base_ref))
    if aa:
        head = Side("head", base_ref, base.sha)
        base.display = f"A1 {base_ref}@{base.sha[:7]}"
        head.display = f"A2 {base_ref}@{base.sha[:7]}"
    else:
        head = Side("head", head_ref, _resolve(root, head_ref))
        base.display = f"base {base_ref}@{base.sha[:7]}"
        head.display = f"head {head_ref}@{head.sha[:7]}"
    _check_clean(root)
    the_suite = load_suite(suite)
    if outdir is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        other = "aa" if aa else _slug(head_ref)
        outdir = Path("results") / f"compare-{_slug(base_ref)}-{other}-{stamp}"
    out = Path(outdir)
    taken = [n for n in OUTPUT_NAMES if (out / n).exists()]
    if taken:
        raise InputError(f"{out / taken[0]} exists: choose another output directory")
    import pinning.analysis.compare  # noqa: F401  (fail now, not after the benchmarks)

    run = None
    if cluster is not None:
        from pinning.harness.cluster import ClusterRun

        # Connected (and the workers checked) before minutes of worktrees and venvs.
        run = ClusterRun(cluster, describe=_describe_pair).__enter__()

    tmp = Path(tempfile.mkdtemp(prefix="pinbench-branches-"))
    worktrees: list[Path] = []
    # A cancelled CI job gets SIGTERM, not Ctrl-C: clean up the same way.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        for side in (base, head):
            if aa and side is head:  # A/A: the same worktree and venv, run a second time
                head.worktree, head.venv = base.worktree, base.venv
                continue
            print(f"setting up {side.display}: worktree, venv (deps={deps})", file=sys.stderr,
                  flush=True)
            path = tmp / side.label
            worktrees.append(path)
            _add_worktree(root, side, path)
            _make_venv(side, deps, tmp)
        _run_interleaved(the_suite, base, head, tmp, run)
        return _finish(the_suite, base, head, out, threshold, aa, fail_on_model_change)
    except KeyboardInterrupt:
        done = [c.name for c in the_suite.benchmarks
                if c.name in base.parts and c.name in head.parts]
        written = "some results written" if (out / "base.json").exists() else "nothing written"
        print(f"pinbench compare-branches: interrupted; {written}. Finished on both "
              f"sides before the interrupt: {', '.join(done) or 'none'}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if run is not None:
            run.close()
        _cleanup(root, worktrees, tmp)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


#: Most rounds a benchmark's worker processes are split into (see _run_interleaved).
ROUNDS = 4


def _run_interleaved(suite: Suite, base: Side, head: Side, tmp: Path,
                     cluster: ClusterRun | None = None) -> None:
    """Each benchmark on both sides in rounds of worker processes, alternating the sides.

    The worker process is the unit of ``compare``'s statistics, so the sides alternate
    round by round (A B, B A, A B, B A), each round a share of the suite's processes: a
    burst of load on this shared machine then lands on both sides' processes alike
    instead of on all of one side's. A side's processes of a benchmark are merged into one
    pyperf benchmark afterwards. One benchmark's pair -- every round of both sides -- is
    one cell (:func:`pair_cell`): here, one after the other, or on ``cluster`` (an open
    :class:`~pinning.harness.cluster.ClusterRun`) on one dask worker each, so a pair
    never spans two hosts.
    """
    configs = suite.benchmarks
    total = len(configs)
    (tmp / "cells").mkdir()
    cwd = Path.cwd()
    if cluster is None:
        for i, config in enumerate(configs, start=1):
            def say(line: str, i: int = i) -> None:
                print(f"[{i}/{total}] {line}", file=sys.stderr, flush=True)

            _apply(pair_cell("local", i, config, suite, base, head, tmp, cwd, say),
                   base, head, config.name)
        return
    from pinning.harness.cluster import Job, cell_resources

    def fallback(name: str, status: str, why: str) -> PairResult:
        return PairResult(outcome={base.label: why, head.label: why})

    jobs = [Job(c.name, _pair_job, (i, c, suite, base, head, tmp, cwd), cell_resources(c),
                fallback, suite.estimated_s(c)) for i, c in enumerate(configs, start=1)]
    for outcome in cluster.run(jobs):
        for line in outcome.result.lines:
            print(f"  {line}", file=sys.stderr, flush=True)
        _apply(outcome.result, base, head, outcome.job.name)


@dataclass
class PairResult:
    """What one pair cell gave: each side's merged part file, or why it has none."""

    parts: dict[str, Path] = field(default_factory=dict)  # side label -> part file
    outcome: dict[str, str] = field(default_factory=dict)  # side label -> why it failed
    lines: list[str] = field(default_factory=list)  # its progress lines (on a cluster)


def _describe_pair(job, result: PairResult) -> str:
    """A pair cell's progress line on a cluster."""
    if result.outcome:
        return "; ".join(f"{label} FAILED: {why}" for label, why in result.outcome.items())
    return "both sides ran (their rounds below)"


def _pair_job(worker: str, workdir: Path, i: int, config: BenchConfig, suite: Suite,
              base: Side, head: Side, tmp: Path, cwd: Path) -> PairResult:
    """On a dask worker: one pair cell, its progress lines kept for the client."""
    for side in (base, head):
        if side.venv is None or not side.venv.is_dir():
            why = (f"worker {worker} cannot see {side.venv}: compare-branches --cluster "
                   "needs workers that share this machine's file system")
            return PairResult(outcome={base.label: why, head.label: why})
    lines: list[str] = []
    result = pair_cell(worker, i, config, suite, base, head, tmp, cwd, lines.append)
    result.lines = lines
    return result


def pair_cell(worker: str, i: int, config: BenchConfig, suite: Suite, base: Side,
              head: Side, tmp: Path, cwd: Path, say: Callable[[str], None]) -> PairResult:
    """One benchmark on both sides, its rounds interleaved: the part file of each side
    (its rounds' processes merged into one benchmark) or why it failed.

    ``base`` and ``head`` are only read (on a cluster they are the worker's copies);
    their processes carry ``worker`` (:data:`pinning.harness.bench.WORKER_ENV`); ``say``
    takes each round's progress line.
    """
    from pinning.harness.bench import PARENT_ENV, WORKER_ENV

    name = config.name
    # Up to ROUNDS rounds per benchmark: every `pinbench run` costs ~1 s besides its
    # workers, so 8 processes go as 4 rounds of 2 (A B, B A, A B, B A).
    rounds = min(max(1, suite.processes), ROUNDS)
    sizes = [suite.processes // rounds + (r < suite.processes % rounds) for r in range(rounds)]
    sides = {side.label: replace(side, parts={}, failed={}) for side in (base, head)}
    done: dict[str, list[Path]] = {label: [] for label in sides}
    # A directory of this attempt's own: a retry on another worker must not meet the
    # part files of an attempt whose worker was lost.
    cell = Path(tempfile.mkdtemp(prefix=f"{i}-", dir=tmp / "cells"))
    # the sides' processes die with this one (a dask worker, lost mid-cell)
    env = {WORKER_ENV: worker, PARENT_ENV: str(os.getpid())}
    for r in range(rounds):
        suite_file = cell / f"{r}.toml"
        suite_file.write_text(one_bench_toml(replace(suite, processes=sizes[r]), config))
        order = (base, head) if (i + r) % 2 else (head, base)
        for side in (sides[s.label] for s in order):
            if name in side.failed:
                continue
            part = cell / f"{side.label}.{r}.json"
            outcome = _run_bench(side, name, suite_file, part, cwd, env)
            if name in side.parts:
                done[side.label].append(side.parts.pop(name))
            where = f" (round {r + 1}/{rounds})" if rounds > 1 else ""
            say(f"{name}  {side.display}{where}: {outcome}")
    result = PairResult()
    for label, side in sides.items():
        if name in side.failed:
            result.outcome[label] = side.failed[name]
        elif done[label]:
            result.parts[label] = _merge_runs(done[label], cell / f"{label}.json")
    return result


def _apply(result: PairResult, base: Side, head: Side, name: str) -> None:
    """Enter a pair cell's outcome in the sides."""
    for side in (base, head):
        if side.label in result.outcome:
            side.failed[name] = result.outcome[side.label]
        elif side.label in result.parts:
            side.parts[name] = result.parts[side.label]


def _merge_runs(parts: Sequence[Path], output: Path) -> Path:
    """One benchmark holding the runs (worker processes) of every part file."""
    import pyperf

    bench = pyperf.Benchmark.load(str(parts[0]))
    for part in parts[1:]:
        bench.add_runs(pyperf.Benchmark.load(str(part)))
    bench.dump(str(output), replace=True)
    return output


def _finish(suite: Suite, base: Side, head: Side, out: Path, threshold: float, aa: bool,
            fail_on_model_change: bool) -> int:
    """Merge, compare, write every output file, print; the exit status."""
    from pinning.analysis.compare import compare_files

    both = [c.name for c in suite.benchmarks if c.name in base.parts and c.name in head.parts]
    failed = [(side, name, why) for side in (base, head) for name, why in side.failed.items()]
    for side, name, why in failed:
        print(f"FAILED {name} at {side.display}: {why} (left out of both sides)")
    if not both:
        print("no benchmark ran on both sides: nothing to compare")
        return 1
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    for side in (base, head):
        path = out / f"{side.label}.json"
        _merge([side.parts[n] for n in both], path)
        files.append(path)
    comparison = compare_files(files[0], files[1], threshold=threshold)
    for fmt, ext in (("md", "md"), ("json", "json"), ("text", "txt")):
        path = out / f"compare.{ext}"
        _write_text(path, comparison.format(fmt, fail_on_model_change=fail_on_model_change))
        files.append(path)
    for side, src in ((base, files[0]), (head, files[1])):
        try:
            from pinning.analysis.report import write_report

            files.extend(write_report([src], out / f"report-{side.label}").values())
        except Exception as exc:  # a report is extra: the comparison still stands
            print(f"warning: report-{side.label} not written: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
    print()
    print(comparison.format("text", fail_on_model_change=fail_on_model_change))
    if aa:
        print()
        level = f"{(1 - comparison.alpha) * 100:g} %"
        print(format_noise(noise_floor(comparison.rows), threshold, level))
    print()
    print("files:")
    for path in files:
        print(f"  {path}")
    if aa:
        return 1 if failed else 0
    status = comparison.exit_status(fail_on_model_change)
    if head.failed:
        print(f"{len(head.failed)} benchmark(s) failed at {head.display}: exit status 1")
        status = max(status, 1)
    return status


def _cleanup(root: Path, worktrees: Sequence[Path], tmp: Path) -> None:
    """Remove the worktrees (also from git's list) and the temporary directory.

    A second Ctrl-C during the second or so this takes is ignored, so it always finishes.
    """
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals cannot be changed
        previous = None
    try:
        for path in worktrees:
            _git(root, "worktree", "remove", "--force", str(path))
        _git(root, "worktree", "prune")
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)

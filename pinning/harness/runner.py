"""``pinbench run``: run a suite's bench scripts under pyperf and gather one results file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pinning.harness.backings import TABLE, preflight
from pinning.harness.bench import PARENT_ENV, WORKER_ENV
from pinning.harness.suite import Suite
from pinning.model.config import BenchConfig
from pinning.model.names import InputError, time_label, wall_kind
from pinning.model.units import format_size

# The bench scripts of a checkout; PINBENCH_BENCH_DIR points elsewhere (e.g. a
# directory of scripts of your own with the same names and options).
BENCH_DIR = Path(os.environ.get("PINBENCH_BENCH_DIR")
                 or Path(__file__).resolve().parents[2] / "bench")


@dataclass
class RunReport:
    """What happened to each benchmark of a suite run."""

    done: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_s: dict[str, float] = field(default_factory=dict)
    work_s: dict[str, float] = field(default_factory=dict)
    #: the complete results file, when every benchmark ran or was skipped
    output: Path | None = None
    #: the partial results file, when the run was interrupted or a benchmark failed
    partial: Path | None = None
    #: benchmarks in the file written (those taken over from a resumed file included)
    finished: int = 0
    #: benchmarks of the suite not in the file written (failed, skipped or not reached)
    missing: list[str] = field(default_factory=list)
    #: benchmarks taken over from the partial file being resumed
    resumed: int = 0

    def overhead(self) -> tuple[float, float]:
        """(seconds, share of the wall time) the harness spent outside benchmark work.

        Work is what pyperf's workers report as each run's duration (the timed
        lifecycles with their untimed setup) plus the worker's untimed lifecycle
        that records the events; the rest of each benchmark's wall time is
        interpreter start, imports, numba cache load and pyperf.
        """
        wall = sum(self.wall_s.values())
        over = wall - sum(self.work_s.values())
        return over, (over / wall if wall else 0.0)


class Progress:
    """A live line on a terminal (i/N, elapsed, ETA); plain lines elsewhere (CI, pipes).

    The ETA weighs each benchmark by its estimated cost (:meth:`Suite.estimated_s
    <pinning.harness.suite.Suite.estimated_s>`): elapsed / estimated-done x
    estimated-remaining. Extrapolating elapsed / count instead ran 3x optimistic,
    because a suite's benchmarks grow in size as it goes.
    """

    def __init__(self, estimates: Sequence[float], stream=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.estimates = list(estimates)
        self.total = len(self.estimates)
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.clock = clock
        self.start = clock()
        self.done_est = 0.0  # estimates of the benchmarks that ran
        self.left_est = sum(self.estimates)  # estimates of those not yet ended

    def eta_s(self) -> float | None:
        """Seconds left: elapsed time per estimated second so far, times the estimated
        seconds left; None before any benchmark has run."""
        if self.done_est <= 0:
            return None
        return (self.clock() - self.start) / self.done_est * self.left_est

    def _eta(self) -> str:
        elapsed = self.clock() - self.start
        eta = self.eta_s()
        if eta is None:
            return f"{elapsed:5.0f} s elapsed"
        return f"{elapsed:5.0f} s elapsed, ETA {eta if eta > 0 else 0.0:4.0f} s"

    def begin(self, i: int, name: str) -> None:
        """Benchmark ``i`` (from 1) starts: update the live line."""
        if self.live:
            self.stream.write(f"\r\033[K[{i}/{self.total}] {name}  ({self._eta()})")
            self.stream.flush()

    def end(self, i: int, name: str, outcome: str, *, ran: bool = True) -> None:
        """Benchmark ``i`` ended: one line with its outcome. A benchmark that did not run
        (skipped) leaves the remaining estimate without adding to the done one."""
        est = self.estimates[i - 1]
        self.left_est -= est
        if ran:
            self.done_est += est
        if self.live:
            self.stream.write("\r\033[K")
        print(f"[{i}/{self.total}] {name}: {outcome}  ({self._eta()})", file=self.stream,
              flush=True)


def bench_script(family: str) -> Path:
    """The pyperf script of a workload family."""
    path = BENCH_DIR / f"{family}.py"
    if not path.is_file():
        raise InputError(f"bench script {path} not found: install pinbench from a checkout "
                         "(pip install -e .)")
    return path


def worker_command(config: BenchConfig, suite: Suite, out: Path,
                   cost_profile: str | None) -> list[str]:
    """The bench script command line of one configuration."""
    cmd = [sys.executable, str(bench_script(config.workload)), *config.to_argv(),
           "--suite", suite.name, "-o", str(out), "--quiet",
           "--values", str(suite.values), "--warmups", str(suite.warmups), "--loops", "1"]
    if suite.processes == 1:
        # One worker process is one process: pyperf's manager runs the benchmark itself
        # (--in-process) instead of starting a second interpreter, with pinbench's imports
        # and kernel loading, only to hand it one process's values.
        cmd += ["--processes", "1", "--in-process"]
    else:
        cmd += ["--processes", str(suite.processes),
                "--inherit-environ",
                "NUMBA_CACHE_DIR,NUMBA_DISABLE_JIT,NUMBA_NUM_THREADS,CI,"
                f"{WORKER_ENV},{PARENT_ENV}"]
    profile = cost_profile or suite.cost_profile
    if profile:
        cmd += ["--cost-profile", str(profile)]
    return cmd


PARTIAL_MARK = "pinbench.partial"
#: Metadata only a partial file carries (dropped when its benchmarks join a complete one).
PARTIAL_KEYS = (PARTIAL_MARK, "pinbench.missing", "pinbench.failed", "pinbench.suite_source",
                "pinbench.cost_profile")


def _split_suffix(path: Path) -> tuple[str, str]:
    """(stem, suffix) of a results file name: ``x.json.gz`` -> (``x``, ``.json.gz``)."""
    name = path.name
    for suffix in (".json.gz", ".json"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)], suffix
    return name, ""


def partial_path(output: Path) -> Path:
    """Where a run whose results go to ``NAME.json`` keeps them if it cannot finish:
    ``NAME.partial.json`` beside it."""
    stem, suffix = _split_suffix(output)
    return output.with_name(f"{stem}.partial{suffix or '.json'}")


def is_partial_name(path: Path) -> bool:
    """Whether a file name is one :func:`partial_path` gives (``*.partial.json``)."""
    stem, suffix = _split_suffix(path)
    return bool(suffix) and stem.endswith(".partial") and stem != ".partial"


def complete_path(partial: Path) -> Path:
    """``NAME.json`` of ``NAME.partial.json``: where its resumed run writes."""
    stem, suffix = _split_suffix(partial)
    return partial.with_name(f"{stem.removesuffix('.partial')}{suffix}")


def check_output(output: Path, *, force: bool = False, resuming: Path | None = None) -> None:
    """Refuse, in one line and before anything runs, an output the run could not write.

    The directory must exist and take a new file (tried: root may write where the
    permission bits say no, and /sys or /proc refuse everyone); the output must not be
    a directory or anything but a regular file, nor exist without ``force``; the name
    must not be a partial file's; and a partial file of the same name from an earlier
    run (other than the one being resumed) is kept unless ``force``.
    """
    if is_partial_name(output):
        raise InputError(f"{output}: names ending in .partial.json are kept for the partial "
                         "files of unfinished runs: choose another -o")
    parent = output.parent
    if not parent.exists():
        raise InputError(f"{parent} does not exist: create it or choose another -o")
    if not parent.is_dir():
        raise InputError(f"{parent} is not a directory: choose another -o")
    if output.is_dir():
        raise InputError(f"{output} is a directory: -o names the results file, "
                         f"e.g. {output / 'NAME.json'}")
    if output.exists() and not output.is_file():
        raise InputError(f"{output} is not a regular file: choose another -o")
    if output.exists() and not force:
        raise InputError(f"{output} exists: choose another -o or pass --force")
    partial = partial_path(output)
    if (partial.exists() and not force
            and (resuming is None or partial.resolve() != resuming.resolve())):
        raise InputError(f"{partial} exists from an unfinished run: resume it with "
                         f"pinbench run --resume {partial}, or pass --force to start afresh")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise InputError(f"cannot write in {parent} ({why}): choose another -o") from None
    os.close(fd)
    os.unlink(probe)


@dataclass
class Resume:
    """A partial results file being resumed: its finished benchmarks and how it was run."""

    path: Path
    suite: str
    suite_source: str
    benchmarks: list  # pyperf.Benchmark, without the partial file's own metadata
    cost_profile: str | None = None
    #: ``I/N`` when the partial run was one shard of its suite (``run --shard``)
    shard: str | None = None

    @property
    def names(self) -> list[str]:
        """The benchmarks the file holds."""
        return [b.get_name() for b in self.benchmarks]


def read_partial(path: Path) -> Resume:
    """Read a ``NAME.partial.json`` that :func:`run_suite` wrote; one line if it is not one."""
    import gzip
    import json

    import pyperf

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such partial results file")
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        suite = pyperf.BenchmarkSuite.loads(json.dumps(data))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a pyperf results file ({exc})") from None
    md = suite.get_benchmarks()[0].get_metadata()
    if not md.get(PARTIAL_MARK):
        raise InputError(f"{path} is not a partial results file (no {PARTIAL_MARK} in its "
                         "metadata): nothing to resume")
    # Drop the partial file's own marks, wherever pyperf put them (the suite's common
    # metadata, a benchmark's, a run's), so that the complete file carries none.
    tables = [data.get("metadata", {})]
    for bench in data["benchmarks"]:
        tables.append(bench.get("metadata", {}))
        tables.extend(run.get("metadata", {}) for run in bench["runs"])
    for table in tables:
        for key in PARTIAL_KEYS:
            table.pop(key, None)
    return Resume(path=path, suite=str(md.get("pinbench.suite", "")),
                  suite_source=str(md.get("pinbench.suite_source", "")),
                  benchmarks=pyperf.BenchmarkSuite.loads(json.dumps(data)).get_benchmarks(),
                  cost_profile=md.get("pinbench.cost_profile"),
                  shard=md.get("pinbench.shard"))


def check_resume(resume: Resume, suite: Suite) -> None:
    """Refuse to resume a partial file with a suite it was not run from."""
    if resume.suite != suite.name:
        raise InputError(f"{resume.path} is a partial run of suite {resume.suite!r}, not "
                         f"{suite.name!r}: resume it without --suite or with its own suite")
    names = {c.name for c in suite.benchmarks}
    extra = [n for n in resume.names if n not in names]
    if extra:
        raise InputError(f"{resume.path} holds benchmark {extra[0]!r}, which suite "
                         f"{suite.name!r} ({suite.source}) does not have: the suite has "
                         "changed since; run it afresh")


def run_suite(suite: Suite, output: Path, *, force: bool = False,
              cost_profile: str | None = None, stream=None,
              resume: Resume | None = None, cluster: str | None = None) -> RunReport:
    """Run every benchmark of ``suite`` (those ``resume`` lacks) and write one pyperf file.

    Each benchmark is one *cell* (:func:`run_cell`): here, one after the other, or with
    ``cluster`` (``ADDRESS`` or ``local:N``) on the workers of a dask.distributed cluster
    (:func:`pinning.harness.cluster.run_cells`). A suite that is one shard of another
    (:func:`pinning.harness.shard.select`) records its ``I/N`` and the whole suite's
    digest on each benchmark, so that ``pinbench merge`` can check the shards it joins.

    The output is checked before anything runs (:func:`check_output`). A configuration
    that does not fit in memory is skipped; a failing one is reported by name and the
    rest still run. When every benchmark ran (or was skipped) the complete file is
    written to ``output`` atomically, and a resumed partial file is removed. When one
    failed, or on Ctrl-C, the finished ones go to :func:`partial_path` instead, marked
    partial; on Ctrl-C the running worker is stopped first and KeyboardInterrupt then
    propagates with the report attached as ``exc.report``.
    """
    output = Path(output)
    check_output(output, force=force, resuming=resume.path if resume else None)
    if cost_profile:
        from pinning.model.costs import load_profile

        load_profile(cost_profile)  # refuse a bad profile before running anything
    import pyperf

    stream = stream or sys.stderr
    report = RunReport()
    finished: dict[str, pyperf.Benchmark] = {}
    if resume:
        check_resume(resume, suite)
        finished = {b.get_name(): b for b in resume.benchmarks}
        report.resumed = len(finished)
    todo = [c for c in suite.benchmarks if c.name not in finished]
    marks = {}
    if suite.shard:
        from pinning.harness.shard import SHARD_KEY, SPLIT_KEY

        marks = {SHARD_KEY: suite.shard, SPLIT_KEY: suite.split}
    with tempfile.TemporaryDirectory(prefix="pinbench-") as tmp:
        try:
            if cluster:
                from pinning.harness.cluster import run_cells

                cells = run_cells(cluster, todo, suite, cost_profile, stream)
            else:
                cells = _serial_cells(todo, suite, cost_profile, Path(tmp), stream)
            for cell in cells:
                _record(cell, finished, report, marks)
        except KeyboardInterrupt as exc:
            with _sigint_ignored():  # a second Ctrl-C must not cut the partial file short
                _save(suite, finished, report, output, cost_profile, resume, stream,
                      complete=False)
            exc.report = report  # type: ignore[attr-defined]
            raise
    _save(suite, finished, report, output, cost_profile, resume, stream,
          complete=not report.failed)
    return report


@dataclass
class CellResult:
    """What one cell -- one benchmark with all its pyperf worker processes -- gave back.

    Plain data (it crosses from a dask worker to the client): the benchmark as the pyperf
    JSON text its bench script wrote, or why there is none.
    """

    name: str
    #: "done", "skipped" (does not fit or cannot run where it was sent) or "failed"
    status: str
    why: str = ""
    bench_json: str | None = None
    #: wall seconds of the cell (the bench script, start to end)
    wall_s: float = 0.0
    #: the dask worker that ran it ("local" when run here)
    worker: str = "local"
    #: how many times the cell was started (2: its first worker was lost mid-cell)
    attempts: int = 1

    @cached_property
    def _parsed(self):
        import pyperf

        return pyperf.BenchmarkSuite.loads(self.bench_json or "").get_benchmarks()[0]

    def benchmark(self):
        """The pyperf Benchmark of a done cell (parsed once: the progress line and the
        results both read it)."""
        return self._parsed


def run_cell(config: BenchConfig, suite: Suite, cost_profile: str | None, workdir: Path,
             worker: str | None = None) -> CellResult:
    """Run one benchmark (the preflight check, then its bench script with all its pyperf
    worker processes) on this host; what it gave. Runs here or on a dask worker
    (``worker``, default: the one :data:`WORKER_ENV` names, e.g. for compare-branches'
    pair cells, else "local")."""
    name = config.name
    worker = worker or os.environ.get(WORKER_ENV) or "local"
    try:
        preflight(config, what=name)
    except InputError as exc:
        return CellResult(name, "skipped", str(exc), worker=worker)
    fd, out = tempfile.mkstemp(prefix="cell-", suffix=".json", dir=workdir)
    os.close(fd)
    os.unlink(out)  # pyperf refuses to overwrite a file
    t0 = time.monotonic()
    try:
        ok, why = _run_one(worker_command(config, suite, Path(out), cost_profile),
                           env={**os.environ, WORKER_ENV: worker})
        wall = time.monotonic() - t0
        if not ok:
            return CellResult(name, "failed", why, wall_s=wall, worker=worker)
        return CellResult(name, "done", bench_json=Path(out).read_text(), wall_s=wall,
                          worker=worker)
    finally:
        if os.path.exists(out):
            os.unlink(out)


def _serial_cells(todo: Sequence[BenchConfig], suite: Suite, cost_profile: str | None,
                  workdir: Path, stream) -> Iterator[CellResult]:
    """The cells of ``todo`` one after the other on this machine, with the progress line."""
    progress = Progress([suite.estimated_s(c) for c in todo], stream)
    for i, config in enumerate(todo, start=1):
        progress.begin(i, config.name)
        cell = run_cell(config, suite, cost_profile, workdir)
        progress.end(i, config.name, cell_outcome(cell, config), ran=cell.status != "skipped")
        yield cell


def cell_outcome(cell: CellResult, config: BenchConfig) -> str:
    """How a progress line tells what a cell gave: its median, labelled, or why none."""
    if cell.status == "skipped":
        return f"skipped: {cell.why}"
    if cell.status == "failed":
        return f"FAILED: {cell.why}"
    # on the sim backing the value times pinbench's own bookkeeping
    kind = time_label(wall_kind(config.backing))
    return f"{cell.benchmark().median() * 1e3:.3f} ms median ({kind}), {cell.wall_s:.1f} s wall"


def _record(cell: CellResult, finished: dict, report: RunReport, marks: dict) -> None:
    """Enter one cell's outcome in the report and its benchmark among the finished."""
    name = cell.name
    if cell.status == "skipped":
        report.skipped.append((name, cell.why))
        return
    report.wall_s[name] = cell.wall_s
    if cell.status == "failed":
        report.failed.append((name, cell.why))
        return
    bench = cell.benchmark()
    if cell.attempts > 1:  # its first worker was lost mid-cell: this is the retry's
        marks = {**marks, "pinbench.attempts": cell.attempts}
    if marks:
        bench.update_metadata(marks)
    finished[name] = bench
    report.done.append(name)
    report.work_s[name] = sum(r.get_metadata().get("duration", 0.0)
                              + r.get_metadata().get("pinbench.events_run_s", 0.0)
                              for r in bench.get_runs())


def _save(suite: Suite, finished: dict, report: RunReport, output: Path,
          cost_profile: str | None, resume: Resume | None, stream, *, complete: bool) -> None:
    """Write the finished benchmarks, in the suite's order: the complete file, or the
    partial one marked with what it lacks. Nothing finished: nothing written."""
    import pyperf

    benches = [finished[c.name] for c in suite.benchmarks if c.name in finished]
    report.finished = len(benches)
    report.missing = [c.name for c in suite.benchmarks if c.name not in finished]
    if not benches:
        return
    if complete:
        report.output = _dump_safely(pyperf.BenchmarkSuite(benches), output, stream)
        if resume and resume.path.exists():
            resume.path.unlink()  # its benchmarks are all in the complete file now
        return
    # A suite file by its absolute path: --resume may be run from another directory.
    source = suite.source
    if not source.startswith("builtin:"):
        source = str(Path(source).resolve())
    marks: dict[str, object] = {PARTIAL_MARK: True, "pinbench.suite_source": source,
                                "pinbench.missing": ",".join(report.missing)}
    if report.failed:
        marks["pinbench.failed"] = ",".join(name for name, _ in report.failed)
    if cost_profile:
        marks["pinbench.cost_profile"] = str(cost_profile)
    for bench in benches:
        bench.update_metadata(marks)
    report.partial = _dump_safely(pyperf.BenchmarkSuite(benches), partial_path(output), stream)


def _dump_safely(results, path: Path, stream) -> Path:
    """Write ``results`` to ``path``; if that fails now (the directory was checked before
    the run, but a disk fills or a directory goes), to the temporary directory instead,
    and say so: a finished benchmark is never thrown away."""
    try:
        _dump_atomic(results, path)
        return path
    except OSError as exc:
        stem, suffix = _split_suffix(path)
        fd, spare = tempfile.mkstemp(prefix=f"{stem}.", suffix=suffix or ".json")
        os.close(fd)
        os.unlink(spare)
        results.dump(spare)
        print(f"pinbench run: could not write {path} ({exc.strerror or exc}); "
              f"wrote {spare} instead", file=stream, flush=True)
        return Path(spare)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT for the duration (where signals can be set: the main thread)."""
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _run_one(cmd: list[str], env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Run one bench script in its own process group; (ok, last line of its errors).

    The script dies with the process that started it (:data:`PARENT_ENV`): a dask worker
    killed mid-cell leaves no benchmark running on behind the retry.
    """
    env = {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=env)
    try:
        stdout, stderr = proc.communicate()
    except KeyboardInterrupt:
        # The worker processes pyperf spawned share the script's process group.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    if proc.returncode == 0:
        return True, ""
    lines = [ln for ln in (stderr + stdout).strip().splitlines() if ln.strip()]
    return False, (lines[-1] if lines else f"exit status {proc.returncode}")


def _dump_atomic(results, output: Path) -> None:
    """Write the pyperf file next to its final name, then rename it into place, so that
    an interrupted write leaves the old file (or none), never half a file."""
    # pyperf compresses when the name it writes ends in .gz: keep that ending
    gz = ".gz" if output.name.endswith(".gz") else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=f".tmp{gz}",
                               dir=output.parent)
    os.close(fd)
    os.unlink(tmp)  # pyperf refuses to overwrite an existing file
    try:
        results.dump(tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def describe(config: BenchConfig) -> str:
    """One line about a configuration for ``pinbench list``."""
    needed = TABLE[config.backing].bytes_needed(config)
    return f"{config.name:<60} needs {format_size(needed):>9}"

"""``pinbench run``: run a suite's bench scripts under pyperf and gather one results file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pinning.harness.backings import TABLE, preflight
from pinning.harness.suite import Suite
from pinning.model.config import BenchConfig
from pinning.model.names import InputError
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
    output: Path | None = None

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
    """A live line on a terminal (i/N, elapsed, ETA); plain lines elsewhere (CI, pipes)."""

    def __init__(self, total: int, stream=None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.start = time.monotonic()

    def _eta(self, done: int) -> str:
        elapsed = time.monotonic() - self.start
        if done == 0:
            return f"{elapsed:5.0f} s elapsed"
        left = elapsed / done * (self.total - done)
        return f"{elapsed:5.0f} s elapsed, ETA {left:4.0f} s"

    def begin(self, i: int, name: str) -> None:
        if self.live:
            self.stream.write(f"\r\033[K[{i}/{self.total}] {name}  ({self._eta(i - 1)})")
            self.stream.flush()

    def end(self, i: int, name: str, outcome: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        print(f"[{i}/{self.total}] {name}: {outcome}  ({self._eta(i)})", file=self.stream,
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
                "--inherit-environ", "NUMBA_CACHE_DIR,NUMBA_DISABLE_JIT,NUMBA_NUM_THREADS,CI"]
    profile = cost_profile or suite.cost_profile
    if profile:
        cmd += ["--cost-profile", str(profile)]
    return cmd


def run_suite(suite: Suite, output: Path, *, force: bool = False,
              cost_profile: str | None = None, stream=None) -> RunReport:
    """Run every benchmark of ``suite`` and write one pyperf suite file atomically.

    A configuration that does not fit in memory is skipped; a failing one is
    reported by name and the rest still run. On Ctrl-C the running worker is
    stopped, no results file is written, and KeyboardInterrupt propagates with
    the report attached as ``exc.report``.
    """
    import pyperf

    output = Path(output)
    if output.exists() and not force:
        raise InputError(f"{output} exists: choose another -o or pass --force")
    if cost_profile:
        from pinning.model.costs import load_profile

        load_profile(cost_profile)  # refuse a bad profile before running anything
    stream = stream or sys.stderr
    report = RunReport()
    progress = Progress(len(suite.benchmarks), stream)
    benches = []
    with tempfile.TemporaryDirectory(prefix="pinbench-") as tmp:
        try:
            for i, config in enumerate(suite.benchmarks, start=1):
                name = config.name
                try:
                    preflight(config, what=name)
                except InputError as exc:
                    report.skipped.append((name, str(exc)))
                    progress.end(i, name, f"skipped: {exc}")
                    continue
                progress.begin(i, name)
                out = Path(tmp) / f"{i}.json"
                t0 = time.monotonic()
                ok, why = _run_one(worker_command(config, suite, out, cost_profile))
                report.wall_s[name] = time.monotonic() - t0
                if ok:
                    benches.append(pyperf.Benchmark.load(str(out)))
                    report.done.append(name)
                    report.work_s[name] = sum(
                        r.get_metadata().get("duration", 0.0)
                        + r.get_metadata().get("pinbench.events_run_s", 0.0)
                        for r in benches[-1].get_runs())
                    progress.end(i, name, f"{benches[-1].median() * 1e3:.3f} ms median "
                                          f"(measured), {report.wall_s[name]:.1f} s wall")
                else:
                    report.failed.append((name, why))
                    progress.end(i, name, f"FAILED: {why}")
        except KeyboardInterrupt as exc:
            exc.report = report  # type: ignore[attr-defined]
            raise
        if benches:
            results = pyperf.BenchmarkSuite(benches)
            _dump_atomic(results, output)
            report.output = output
    return report


def _run_one(cmd: list[str]) -> tuple[bool, str]:
    """Run one bench script in its own process group; (ok, last line of its errors)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
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
    """Write the pyperf file next to its final name, then rename it into place."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
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

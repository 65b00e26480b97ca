"""``--cluster``: cells on a dask.distributed LocalCluster of 2 single-threaded workers.

What is checked is where and how often cells ran and what they recorded -- never a
measured value: a clustered run's modelled metadata equals a serial run's; each
benchmark's runs carry one worker and one host; identical cells are two tasks; a worker
killed mid-cell gives one retry and no duplicate; a worker with forged canary counts is
refused; bad addresses and a missing dask are one line, exit 2.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pyperf
import pytest

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed "
                                  "(pip install -e '.[dask]')")

import cloudpickle  # noqa: E402  (dask's own dependency)
import dask  # noqa: E402

from pinning.cli import main  # noqa: E402
from pinning.harness import cluster as C  # noqa: E402
from pinning.harness.runner import run_suite  # noqa: E402
from pinning.harness.suite import parse_suite  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Functions of this module run on the workers, which cannot import it.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SUITE = """
[suite]
name = "clustered"
processes = 2
values = 1

[[benchmark]]
workload = "startup"
strategy = ["upfront", "demand-v2", "gmem"]
guest_size = "1GiB"
"""
#: prefixes of the metadata a run's model computes (deterministic on every host)
MODELLED = ("events.", "model.", "vcpu.", "param.", "cost.")


@pytest.fixture(scope="module")
def suite():
    return parse_suite(SUITE, "test_cluster")


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster of 2 single-threaded worker processes (with nannies, which restart a
    killed worker), declaring what ``dask worker --resources`` would; its address."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
            resources={"cell": 1, "memory_gib": 4}, silence_logs=logging.ERROR)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def serial(suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial") / "serial.json"
    report = run_suite(suite, out)
    assert report.failed == [] and report.output == out
    return {b.get_name(): b for b in pyperf.BenchmarkSuite.load(str(out)).get_benchmarks()}


def benches(path: Path) -> dict[str, pyperf.Benchmark]:
    return {b.get_name(): b for b in pyperf.BenchmarkSuite.load(str(path)).get_benchmarks()}


def run_values(bench: pyperf.Benchmark, key: str) -> set:
    return {r.get_metadata().get(key) for r in bench.get_runs()}


def modelled(bench: pyperf.Benchmark) -> dict:
    return {k: v for k, v in bench.get_metadata().items() if k.startswith(MODELLED)}


def worker_names(address: str) -> dict[str, str]:
    """address -> name of the fixture's 2 workers (waiting for one a nanny restarts)."""
    with distributed.Client(address) as client:
        client.wait_for_workers(2, timeout=60)
        return {a: str(w["name"]) for a, w in client.scheduler_info(n_workers=-1)["workers"]
                .items()}


def processes_with(entry: str) -> list[str]:
    """The pids of the live processes whose environment holds ``entry`` (NAME=value)."""
    out = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if entry.encode() in environ.read_bytes().split(b"\0"):
                out.append(environ.parent.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return out


class Lines:
    """A stream that keeps what was written (the progress lines)."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


# -- results ---------------------------------------------------------------------------------

def test_clustered_run_has_the_serial_runs_modelled_metadata(suite, serial, scheduler,
                                                             tmp_path):
    out = tmp_path / "clustered.json"
    stream = Lines()
    report = run_suite(suite, out, cluster=scheduler, stream=stream)
    assert report.failed == [] and report.skipped == [] and report.output == out
    got = benches(out)
    assert list(got) == list(serial)  # the suite's order, whatever order cells finished in
    names = set(worker_names(scheduler).values())
    for name, bench in got.items():
        assert modelled(bench) == modelled(serial[name]), name
        assert modelled(bench)  # the comparison compared something
        # every run of a benchmark from one worker and one host
        (worker,) = run_values(bench, "pinbench.worker")
        assert worker in names
        assert run_values(bench, "hostname") == {socket.gethostname()}
        assert len(bench.get_runs()) == suite.processes
        for key in ("host.kernel", "host.thp", "version.numba", "version.numpy"):
            assert len(run_values(bench, key)) == 1 and None not in run_values(bench, key)
    for bench in serial.values():
        assert run_values(bench, "pinbench.worker") == {"local"}
    # progress: the cells' counts per line and the per-worker table
    assert "(done 3, running 0, queued 0)" in stream.text
    assert "workers:" in stream.text and "accepted" in stream.text


def test_identical_cells_are_two_tasks(suite, scheduler):
    """An A/A pair's halves are the same function on the same arguments: dask's key
    hashing would run it once and hand both the same result."""
    config = suite.benchmarks[0]
    job = C.Job(config.name, C._bench_cell, (config, suite, None), C.cell_resources(config),
                lambda name, status, why: None)
    with C.ClusterRun(scheduler, Lines()) as run:
        outcomes = list(run.run([job, job]))
    assert len(outcomes) == 2
    results = [o.result for o in outcomes]
    assert all(r.status == "done" for r in results)
    dates = [{run.get_metadata()["date"] for run in r.benchmark().get_runs()}
             for r in results]
    assert dates[0].isdisjoint(dates[1])  # two executions, not one result twice


def test_cells_go_only_where_their_resources_are(suite, scheduler):
    """The fixture's workers declare cell=1 and memory_gib=4 and no kvm: a kvm cell, or one
    needing more memory, is skipped with the reason instead of waiting forever."""
    from pinning.model.config import BenchConfig

    kvm = BenchConfig(workload="startup", strategy="upfront", guest_size=64 << 20,
                      backing="kvm")
    assert C.cell_resources(kvm)["kvm"] == 1
    big = BenchConfig(workload="startup", strategy="upfront", guest_size=8 << 30,
                      backing="real")
    assert C.cell_resources(big)["memory_gib"] > 8
    with C.ClusterRun(scheduler, Lines()) as run:
        assert run.unmet(C.cell_resources(suite.benchmarks[0])) is None
        assert "no accepted worker has /dev/kvm" in run.unmet(C.cell_resources(kvm))
        assert "largest accepted worker offers memory_gib=4" in run.unmet(
            C.cell_resources(big))
        job = C.Job(big.name, C._bench_cell, (big, suite, None), C.cell_resources(big),
                    lambda name, status, why: (status, why))
        (outcome,) = run.run([job])
    assert outcome.result[0] == "skipped" and outcome.attempts == 0


def test_killed_worker_retries_the_cell_once_without_duplicate(scheduler, tmp_path):
    suite = parse_suite(SUITE.replace('["upfront", "demand-v2", "gmem"]', '"upfront"')
                        .replace('"1GiB"', '["1GiB", "2GiB"]'), "kill")
    killed: list[dict] = []
    lock = threading.Lock()

    def kill_first(event):
        msg = event[1]
        with lock:
            if not killed:
                killed.append(msg)
                os.kill(msg["pid"], signal.SIGKILL)  # the worker process, mid-cell

    out = tmp_path / "killed.json"
    stream = Lines()
    with distributed.Client(scheduler) as watcher:
        watcher.subscribe_topic(C.TOPIC, kill_first)
        report = run_suite(suite, out, cluster=scheduler, stream=stream)
    assert len(killed) == 1
    assert report.failed == [] and report.output == out
    got = benches(out)
    assert sorted(got) == sorted(c.name for c in suite.benchmarks)  # each once
    attempts = {name: b.get_metadata().get("pinbench.attempts", 1) for name, b in got.items()}
    assert sorted(attempts.values()) == [1, 2]  # the killed cell ran again, once
    retried = next(name for name, n in attempts.items() if n == 2)
    # no run of the killed attempt slipped in: exactly the suite's processes
    assert len(got[retried].get_runs()) == suite.processes
    assert f"{retried}: worker" in stream.text
    assert "was lost mid-cell; started again on" in stream.text
    # nothing of the killed attempt is still running (the bench script and its pyperf
    # processes die with the worker that started them)
    assert processes_with(f"PINBENCH_PARENT_PID={killed[0]['pid']}") == []


def _forge() -> None:
    """On a worker: make its canary report one pin more for every strategy."""
    import pinning.harness.cluster as cluster

    real = cluster.canary_counts

    def forged():
        counts = real()
        for by_key in counts.values():
            by_key["pins"] += 1
        return counts

    cluster._real_canary = real
    cluster.canary_counts = forged


def _unforge() -> None:
    import pinning.harness.cluster as cluster

    cluster.canary_counts = getattr(cluster, "_real_canary", cluster.canary_counts)


def test_worker_with_forged_counts_is_refused(suite, scheduler, tmp_path):
    names = worker_names(scheduler)
    forged_addr = sorted(names)[0]
    out = tmp_path / "forged.json"
    stream = Lines()
    with distributed.Client(scheduler) as client:
        client.run(_forge, workers=[forged_addr])
        try:
            report = run_suite(suite, out, cluster=scheduler, stream=stream)
        finally:
            client.run(_unforge, workers=[forged_addr])
    refused = names[forged_addr]
    line = next(ln for ln in stream.text.splitlines() if ln.startswith(f"worker {refused} "))
    assert line.startswith(f"worker {refused} refused: its modelled counts differ from this "
                           "machine's (")
    # the differing counters, worker's value != client's
    assert " pins " in line and line.endswith("worker != client)")
    assert report.failed == [] and report.output == out
    for bench in benches(out).values():
        assert run_values(bench, "pinbench.worker") == {names[a] for a in names
                                                        if a != forged_addr}


def test_local_cluster_from_the_command_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SUITE.replace('["upfront", "demand-v2", "gmem"]',
                                                   '["upfront", "gmem"]'))
    assert main(["run", "--suite", "s.toml", "--cluster", "local:2", "-o", "r.json"]) == 0
    err = capsys.readouterr().err
    assert "dask cluster local:2: dashboard http" in err
    assert err.count("accepted: its canary counts match") == 2
    got = benches(tmp_path / "r.json")
    assert len(got) == 2
    assert all(run_values(b, "pinbench.worker") <= {"0", "1"} for b in got.values())


def test_ctrl_c_keeps_the_finished_cells_and_leaves_nothing_behind(tmp_path, sigint_default):
    """A terminal's Ctrl-C reaches the whole process group, local:N's workers too: the
    client keeps the finished cells in the partial file, no worker prints a traceback,
    and no worker, bench script or scratch directory is left."""
    (tmp_path / "s.toml").write_text(SUITE.replace('"1GiB"', '["1GiB", "2GiB", "4GiB"]'))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pinning", "run", "--suite", "s.toml",
                             "--cluster", "local:2", "-o", "r.json"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(scratch)})
    err = []
    # Until the second cell's line: a cell's line is printed just before the run records
    # it, so by the second line the first is surely recorded.
    for line in proc.stderr:
        err.append(line)
        if line.startswith("[2/9] "):
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err.append(rest)
    text = "".join(err)
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "pinbench run: interrupted; " in text
    partial = benches(tmp_path / "r.partial.json")
    assert 1 <= len(partial) < 9
    assert not (tmp_path / "r.json").exists()
    assert list(scratch.iterdir()) == []  # the workers' scratch space went with them
    assert processes_with(f"TMPDIR={scratch}") == []


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, words", [
    ("local:0", "local:N needs a whole number of workers from 1 to"),
    ("local:two", "local:N needs a whole number of workers from 1 to"),
    ("local:99999", "local:N needs a whole number of workers from 1 to"),
    ("tcp://127.0.0.1:1", "no dask scheduler answered"),
    ("no-port-here", "not a scheduler address"),
    ("tcp://a\nb:1", "'tcp://a\\nb:1': expected a scheduler address"),
])
def test_bad_cluster_is_one_line_exit_2(spec, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(C, "CONNECT_TIMEOUT_S", 1)
    (tmp_path / "s.toml").write_text(SUITE)
    out = tmp_path / "r.json"
    assert main(["run", "--suite", str(tmp_path / "s.toml"), "--cluster", spec,
                 "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.partial.json"))


def test_missing_dask_says_how_to_install(tmp_path):
    (tmp_path / "s.toml").write_text(SUITE)
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from pinning.cli import main\n"
            "sys.exit(main(['run', '--suite', 's.toml', '--cluster', 'local:2', "
            "'-o', 'r.json']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr == ("pinbench run: error: --cluster needs dask.distributed, which is "
                           "not installed: pip install -e '.[dask]'\n")
    assert not (tmp_path / "r.json").exists()


# -- shards ----------------------------------------------------------------------------------

def test_shards_run_and_merge_to_the_serial_set(serial, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.toml").write_text(SUITE)
    for i in (1, 2):
        assert main(["run", "--suite", "s.toml", "--shard", f"{i}/2", "-o", f"{i}.json"]) == 0
    assert main(["merge", "1.json", "2.json", "-o", "all.json"]) == 0
    merged = benches(tmp_path / "all.json")
    assert sorted(merged) == sorted(serial)
    shards = {run_values(b, "pinbench.shard").pop() for b in merged.values()}
    assert shards == {"1/2", "2/2"}
    for name, bench in merged.items():
        assert modelled(bench) == modelled(serial[name])
    capsys.readouterr()
    assert main(["merge", "1.json", "1.json", "-o", "again.json"]) == 2
    assert capsys.readouterr().err.count("\n") == 1

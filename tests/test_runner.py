"""``pinbench run`` and ``pinbench list``: results file, bad input, skips, failures, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyperf
import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY_SUITE = """
[suite]
name = "tiny"
processes = 1
values = 2
[[benchmark]]
workload = ["startup", "teardown"]
strategy = ["upfront", "demand"]
guest_size = "8MiB"
[[benchmark]]
workload = "fault_storm"
strategy = "demand"
guest_size = "8MiB"
vcpus = [1, 4]
pattern = "random"
"""


def pinbench(*argv: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "pinning", *argv], capture_output=True,
                          text=True, check=False, env=env, cwd=cwd)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SUITE)
    return path


def test_run_writes_one_pyperf_file_that_pyperf_reads(tiny, tmp_path):
    out = tmp_path / "res" / "tiny.json"
    proc = pinbench("run", "--suite", str(tiny), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    suite = pyperf.BenchmarkSuite.load(str(out))
    names = suite.get_benchmark_names()
    assert names == ["startup/upfront/8MiB/4k", "startup/demand/8MiB/4k",
                     "teardown/upfront/8MiB/4k", "teardown/demand/8MiB/4k",
                     "fault_storm/demand/8MiB/4k/1vcpu/random",
                     "fault_storm/demand/8MiB/4k/4vcpu/random"]
    md = suite.get_benchmark("fault_storm/demand/8MiB/4k/4vcpu/random").get_metadata()
    assert md["pinbench.suite"] == "tiny" and md["param.vcpus"] == 4
    assert md["events.access.npf_exits"] == 2048  # every 4k unit of 8 MiB faulted once
    assert md["vcpu.access.faults"] == 2048
    # Plain lines when not on a terminal, one per benchmark, then the summary.
    assert proc.stderr.count("[") >= 6 and "\r" not in proc.stderr
    assert "6 benchmarks ran, 0 skipped, 0 failed" in proc.stdout
    assert str(out) in proc.stdout
    # ...and ends with both strategies side by side per family, and the report command.
    assert "measured = median wall time" in proc.stdout
    assert f"pinbench report {out}" in proc.stdout
    # pyperf's own tools accept the file unchanged.
    for cmd in (["stats"], ["dump"], ["compare_to", str(out)]):
        res = subprocess.run([sys.executable, "-m", "pyperf", *cmd, str(out)],
                             capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
    # No temporary file is left beside the result.
    assert [p.name for p in out.parent.iterdir()] == ["tiny.json"]


def test_existing_file_needs_force(tiny, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("precious")
    proc = pinbench("run", "--suite", str(tiny), "-o", str(out))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pinbench run: error: {out} exists: choose another -o or " \
                                  "pass --force"
    assert out.read_text() == "precious"


def test_force_overwrites(tmp_path):
    suite = tmp_path / "one.toml"
    suite.write_text("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='4MiB'\n")
    out = tmp_path / "r.json"
    out.write_text("old")
    proc = pinbench("run", "--suite", str(suite), "-o", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["benchmarks"]


def test_unknown_suite_key_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='4MiB'\n"
                   "vcpu=2\n")
    for cmd in ("run", "list"):
        proc = pinbench(cmd, "--suite", str(bad))
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1
        assert f"{bad}: [[benchmark]] #1: unknown key 'vcpu' (allowed:" in lines[0]


def test_too_big_configuration_is_skipped_and_the_rest_run(tmp_path):
    suite = tmp_path / "big.toml"
    suite.write_text("[suite]\nprocesses=1\nvalues=1\n[[benchmark]]\nworkload='startup'\n"
                     "strategy='upfront'\nguest_size=['64TiB', '4MiB']\n")
    out = tmp_path / "r.json"
    proc = pinbench("run", "--suite", str(suite), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "skipped startup/upfront/64TiB/4k:" in proc.stdout
    assert "does not fit: it needs" in proc.stdout
    assert pyperf.BenchmarkSuite.load(str(out)).get_benchmark_names() == [
        "startup/upfront/4MiB/4k"]


def test_kvm_benchmark_is_skipped_with_the_reason_where_kvm_is_unusable(tmp_path, monkeypatch,
                                                                        capsys):
    import pinning.backends.kvm
    from pinning.harness.runner import run_suite
    from pinning.harness.suite import load_suite

    monkeypatch.setattr(pinning.backends.kvm, "kvm_unavailable",
                        lambda: "/dev/kvm: No such file or directory")
    path = tmp_path / "k.toml"
    path.write_text("[suite]\nprocesses=1\nvalues=1\n[[benchmark]]\nworkload='startup'\n"
                    "strategy='upfront'\nguest_size='4MiB'\nbacking=['kvm', 'sim']\n")
    report = run_suite(load_suite(str(path)), tmp_path / "r.json", stream=sys.stderr)
    assert report.skipped == [("startup/upfront/4MiB/4k/kvm/1vcpu/sequential",
                               "needs /dev/kvm: /dev/kvm: No such file or directory")]
    assert report.done == ["startup/upfront/4MiB/4k"] and not report.failed


def test_failing_benchmark_is_named_others_run_exit_1(tiny, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    for script in (ROOT / "bench").glob("*.py"):
        (bench / script.name).write_text(script.read_text())
    (bench / "teardown.py").write_text("import sys\nsys.exit('teardown broke on purpose')\n")
    out = tmp_path / "r.json"
    env = {**os.environ, "PINBENCH_BENCH_DIR": str(bench)}
    proc = pinbench("run", "--suite", str(tiny), "-o", str(out), env=env)
    assert proc.returncode == 1
    assert "FAILED teardown/upfront/8MiB/4k: teardown broke on purpose" in proc.stdout
    assert "FAILED teardown/demand/8MiB/4k" in proc.stdout
    names = pyperf.BenchmarkSuite.load(str(out)).get_benchmark_names()
    assert len(names) == 4 and not any(n.startswith("teardown/") for n in names)


def test_ctrl_c_leaves_no_file_and_names_finished_benchmarks(tmp_path):
    suite = tmp_path / "slow.toml"
    suite.write_text("[suite]\nprocesses=1\nvalues=1\n[[benchmark]]\nworkload='startup'\n"
                     "strategy='demand'\nguest_size='4MiB'\n[[benchmark]]\n"
                     "workload='lifecycle'\nstrategy='demand'\nguest_size='64GiB'\n"
                     "pattern='random'\n")
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "pinning", "run", "--suite", str(suite),
                             "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    # Wait until the first benchmark is done and the second has started.
    deadline = time.monotonic() + 60
    seen = ""
    while "[1/2] startup/demand/4MiB/4k:" not in seen and time.monotonic() < deadline:
        seen += proc.stderr.readline()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted; no results file written" in stderr
    assert "Finished before the interrupt: startup/demand/4MiB/4k" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    assert list(tmp_path.glob("*.tmp")) == []


def test_list_names_every_benchmark(tiny):
    proc = pinbench("list", "--suite", str(tiny))
    assert proc.returncode == 0
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("suite tiny") and "6 benchmarks" in lines[0]
    assert lines[1].split()[0] == "startup/upfront/8MiB/4k"


def test_bad_cost_profile_is_refused_before_running(tiny, tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text("pin_ns = -1\n")
    out = tmp_path / "r.json"
    proc = pinbench("run", "--suite", str(tiny), "-o", str(out), "--cost-profile", str(bad))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and str(bad) in proc.stderr
    assert not out.exists()


def test_progress_is_a_live_line_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from pinning.harness.runner import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        p = Progress(2, stream)
        p.begin(1, "a/b")
        p.end(1, "a/b", "ok")
        p.begin(2, "c/d")
        p.end(2, "c/d", "ok")
    assert "\r\033[K[1/2] a/b" in tty.getvalue() and "ETA" in tty.getvalue()
    assert "\r" not in pipe.getvalue()
    assert pipe.getvalue().splitlines()[0].startswith("[1/2] a/b: ok")
    assert len(pipe.getvalue().splitlines()) == 2


@pytest.mark.parametrize("processes", [1, 2])
def test_one_process_runs_in_process_more_spawn_workers(tmp_path, processes):
    from pinning.harness.runner import worker_command
    from pinning.harness.suite import parse_suite

    text = (f"[suite]\nprocesses={processes}\nvalues=2\n[[benchmark]]\nworkload='startup'\n"
            "strategy='demand'\nguest_size='8MiB'\n")
    suite = parse_suite(text, "p.toml")
    cmd = worker_command(suite.benchmarks[0], suite, tmp_path / "x.json", None)
    assert ("--in-process" in cmd) == (processes == 1)
    path = tmp_path / "p.toml"
    path.write_text(text)
    out = tmp_path / "p.json"
    proc = pinbench("run", "--suite", str(path), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    bench = pyperf.BenchmarkSuite.load(str(out)).get_benchmarks()[0]
    runs = bench.get_runs()
    assert len(runs) == processes and all(len(r.values) == 2 for r in runs)
    # each run was made by its own process, which loaded the kernels and ran the model
    for run in runs:
        md = run.get_metadata()
        assert md["pinbench.load_s"] > 0 and md["events.startup.metadata_bytes"] > 0

"""``pinbench run`` and ``pinbench list``: results file, bad input, skips, failures, Ctrl-C."""

from __future__ import annotations

import io
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
    out.parent.mkdir()  # -o's directory must exist (test_bad_output_is_refused_...)
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
    assert "= median wall time" in proc.stdout  # the legend of the value column
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


def test_failing_benchmark_is_named_others_run_exit_1_and_resume_runs_it_again(tiny, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    for script in (ROOT / "bench").glob("*.py"):
        (bench / script.name).write_text(script.read_text())
    (bench / "teardown.py").write_text("import sys\nsys.exit('teardown broke on purpose')\n")
    out = tmp_path / "r.json"
    partial = tmp_path / "r.partial.json"
    env = {**os.environ, "PINBENCH_BENCH_DIR": str(bench)}
    proc = pinbench("run", "--suite", str(tiny), "-o", str(out), env=env)
    assert proc.returncode == 1
    assert "FAILED teardown/upfront/8MiB/4k: teardown broke on purpose" in proc.stdout
    assert "FAILED teardown/demand/8MiB/4k" in proc.stdout
    # The four that ran are kept, in a partial file; no complete file pretends otherwise.
    assert not out.exists()
    assert (f"4 of 6 benchmarks finished and are in {partial}; run the 2 missing with: "
            f"pinbench run --resume {partial}") in proc.stderr
    result = pyperf.BenchmarkSuite.load(str(partial))
    names = result.get_benchmark_names()
    assert len(names) == 4 and not any(n.startswith("teardown/") for n in names)
    md = result.get_benchmarks()[0].get_metadata()
    assert md["pinbench.partial"] is True
    assert md["pinbench.failed"] == md["pinbench.missing"] == \
        "teardown/upfront/8MiB/4k,teardown/demand/8MiB/4k"
    # Fixed, --resume runs the failed ones only (the suite read from the partial file,
    # from another directory) and completes the file.
    proc = pinbench("run", "--resume", str(partial), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert f"2 benchmarks ran (4 more from {partial}), 0 skipped, 0 failed" in proc.stdout
    assert proc.stderr.count("[") == 2 and "teardown/upfront/8MiB/4k" in proc.stderr
    done = pyperf.BenchmarkSuite.load(str(out))
    assert done.get_benchmark_names() == [
        "startup/upfront/8MiB/4k", "startup/demand/8MiB/4k", "teardown/upfront/8MiB/4k",
        "teardown/demand/8MiB/4k", "fault_storm/demand/8MiB/4k/1vcpu/random",
        "fault_storm/demand/8MiB/4k/4vcpu/random"]
    assert not partial.exists()
    assert not any("pinbench.partial" in run.get_metadata()
                   for b in done.get_benchmarks() for run in b.get_runs())


def test_ctrl_c_writes_the_finished_benchmarks_to_a_partial_file(tmp_path, sigint_default):
    suite = tmp_path / "slow.toml"
    suite.write_text("[suite]\nprocesses=1\nvalues=1\n[[benchmark]]\nworkload='startup'\n"
                     "strategy='demand'\nguest_size='4MiB'\n[[benchmark]]\n"
                     "workload='lifecycle'\nstrategy='demand'\nguest_size='64GiB'\n"
                     "pattern='random'\n")
    out = tmp_path / "r.json"
    partial = tmp_path / "r.partial.json"
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
    assert (f"pinbench run: interrupted; 1 of 2 benchmarks finished and are in {partial}; "
            f"run the 1 missing with: pinbench run --resume {partial}") in stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    result = pyperf.BenchmarkSuite.load(str(partial))
    assert result.get_benchmark_names() == ["startup/demand/4MiB/4k"]
    md = result.get_benchmarks()[0].get_metadata()
    assert md["pinbench.partial"] is True and md["pinbench.suite"] == "slow"
    assert md["pinbench.missing"] == "lifecycle/demand/64GiB/4k/1vcpu/random"
    assert md["pinbench.suite_source"] == str(suite.resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.partial.json", "slow.toml"]


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
        p = Progress([1.0, 1.0], stream)
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


# --- output checks, partial files and --resume, with a stand-in for the bench scripts ---


def _config_of(cmd: list[str]):
    """The BenchConfig a bench script command line runs (what worker_command wrote)."""
    from pinning.model.config import BenchConfig, flag, option_fields, parse_value

    kw = {f.name: parse_value(f.name, cmd[cmd.index(flag(f.name)) + 1], text=True)
          for f in option_fields()}
    return BenchConfig(Path(cmd[1]).stem, **kw)


class FakeWorkers:
    """Stands in for runner._run_one: writes a small pyperf file for each benchmark, and
    records which ran; fails the families in ``fail``, and is Ctrl-C'd on call ``stop_at``."""

    def __init__(self, *, stop_at: int | None = None, fail: tuple[str, ...] = ()) -> None:
        self.ran: list[str] = []
        self.stop_at = stop_at
        self.fail = fail

    def __call__(self, cmd: list[str], env: dict[str, str] | None = None) -> tuple[bool, str]:
        config = _config_of(cmd)
        if self.stop_at is not None and len(self.ran) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.ran.append(config.name)
        if config.workload in self.fail:
            return False, f"{config.workload} broke on purpose"
        md = {"name": config.name, "pinbench.suite": cmd[cmd.index("--suite") + 1],
              "duration": 0.5}
        run = pyperf.Run([0.001, 0.002], metadata=md, collect_metadata=False)
        pyperf.Benchmark([run]).dump(cmd[cmd.index("-o") + 1])
        return True, ""


@pytest.fixture
def fake(monkeypatch):
    """Install FakeWorkers(**kw) as the runner's worker; returns the installer. The run's
    summary table, which reads the full metadata of real benchmarks, is left out."""
    import pinning.analysis.results as results
    import pinning.analysis.summary as summary
    import pinning.harness.runner as runner

    monkeypatch.setattr(results, "load_results", lambda path: None)
    monkeypatch.setattr(summary, "summary_table", lambda frame: "(summary table)")

    def install(**kw) -> FakeWorkers:
        workers = FakeWorkers(**kw)
        monkeypatch.setattr(runner, "_run_one", workers)
        return workers

    return install


TINY_NAMES = ["startup/upfront/8MiB/4k", "startup/demand/8MiB/4k", "teardown/upfront/8MiB/4k",
              "teardown/demand/8MiB/4k", "fault_storm/demand/8MiB/4k/1vcpu/random",
              "fault_storm/demand/8MiB/4k/4vcpu/random"]


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from pinning.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", ["unwritable", "directory", "no-parent", "parent-is-file",
                                  "partial-name", "partial-exists", "special-file"])
def test_bad_output_is_refused_before_anything_runs(tiny, tmp_path, fake, capsys, case):
    workers = fake()
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "old.partial.json").write_text("kept")
    output, extra, expected = {
        "unwritable": ("/proc/pinbench.json", [], "cannot write in /proc ("),
        "directory": (str(tmp_path / "dir"), ["--force"], "is a directory: -o names the "
                                                         "results file, e.g."),
        "no-parent": (str(tmp_path / "nope" / "r.json"), [], "nope does not exist: create "
                                                           "it or choose another -o"),
        "parent-is-file": (str(tmp_path / "file" / "r.json"), [], "file is not a directory"),
        "partial-name": (str(tmp_path / "r.partial.json"), [], "names ending in .partial.json "
                                                              "are kept for the partial files"),
        "partial-exists": (str(tmp_path / "old.json"), [],
                           f"{tmp_path / 'old.partial.json'} exists from an unfinished run: "
                           f"resume it with pinbench run --resume"),
        "special-file": ("/dev/null", ["--force"], "/dev/null is not a regular file"),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = _main(capsys, "run", "--suite", str(tiny), "-o", output, *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and expected in err
    assert workers.ran == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "old.partial.json").read_text() == "kept"


def test_output_check_needs_no_numba(tiny):
    # The check comes before the model's kernels are imported: a bad -o costs a second,
    # not a suite.
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pinning", "run",
                           "--suite", str(tiny), "-o", "/proc/pinbench.json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("pinbench run: error: cannot write in /proc")
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in lines if ln.startswith("import time:")]
    assert "pinning.harness.suite" in imported  # the import log is there...
    assert not any(m.split(".")[0] == "numba" for m in imported)  # ...and numba is not


def test_default_output_goes_to_results_made_if_missing(tiny, tmp_path, fake, monkeypatch):
    from pinning.cli import main

    fake()
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--suite", str(tiny)]) == 0
    written = list((tmp_path / "results").glob("tiny-*.json"))
    assert len(written) == 1
    assert pyperf.BenchmarkSuite.load(str(written[0])).get_benchmark_names() == TINY_NAMES


def test_default_output_refused_when_results_is_a_file(tiny, tmp_path, fake, capsys,
                                                       monkeypatch):
    workers = fake()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").write_text("not a directory")
    code, _, err = _main(capsys, "run", "--suite", str(tiny))
    assert code == 2 and workers.ran == []
    assert err.startswith("pinbench run: error: cannot make results/ for the results")


def test_ctrl_c_on_the_third_benchmark_keeps_the_two_finished(tiny, tmp_path, fake, capsys):
    workers = fake(stop_at=3)
    out = tmp_path / "r.json"
    partial = tmp_path / "r.partial.json"
    code, _, err = _main(capsys, "run", "--suite", str(tiny), "-o", str(out))
    assert code == 130
    assert workers.ran == TINY_NAMES[:2]
    assert f"interrupted; 2 of 6 benchmarks finished and are in {partial}" in err
    assert f"run the 4 missing with: pinbench run --resume {partial}" in err
    assert not out.exists()
    result = pyperf.BenchmarkSuite.load(str(partial))
    assert result.get_benchmark_names() == TINY_NAMES[:2]
    md = result.get_benchmarks()[1].get_metadata()
    assert md["pinbench.partial"] is True and md["pinbench.suite"] == "tiny"
    assert md["pinbench.missing"].split(",") == TINY_NAMES[2:]
    assert "pinbench.failed" not in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.partial.json", "tiny.toml"]


def test_ctrl_c_before_any_benchmark_finished_writes_nothing(tiny, tmp_path, fake, capsys):
    fake(stop_at=1)
    code, _, err = _main(capsys, "run", "--suite", str(tiny), "-o", str(tmp_path / "r.json"))
    assert code == 130
    assert "interrupted before any benchmark finished; no results file written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.toml"]


def test_resume_runs_only_the_missing_and_writes_the_complete_file(tiny, tmp_path, fake):
    from pinning.harness.runner import read_partial, run_suite
    from pinning.harness.suite import load_suite

    suite = load_suite(str(tiny))
    out = tmp_path / "r.json"
    partial = tmp_path / "r.partial.json"
    fake(fail=("teardown",))
    report = run_suite(suite, out, stream=io.StringIO())
    # a failure keeps the finished ones in the partial file, not in the complete one
    assert report.partial == partial and report.output is None and not out.exists()
    assert report.failed and report.missing == TINY_NAMES[2:4]
    md = pyperf.BenchmarkSuite.load(str(partial)).get_benchmarks()[0].get_metadata()
    assert md["pinbench.failed"].split(",") == TINY_NAMES[2:4]

    workers = fake()
    report = run_suite(suite, out, stream=io.StringIO(), resume=read_partial(partial))
    assert workers.ran == TINY_NAMES[2:4]  # the failed ones again, nothing else
    assert report.output == out and report.partial is None and report.resumed == 4
    result = pyperf.BenchmarkSuite.load(str(out))
    assert result.get_benchmark_names() == TINY_NAMES  # the suite's order
    assert not partial.exists()
    for bench in result.get_benchmarks():  # nothing says partial any more
        assert not any(k in bench.get_metadata() for k in ("pinbench.partial",
                                                           "pinbench.missing"))
        for run in bench.get_runs():
            assert "pinbench.partial" not in run.get_metadata()


def test_resume_interrupted_again_keeps_both_runs_benchmarks(tiny, tmp_path, fake, capsys):
    out = tmp_path / "r.json"
    partial = tmp_path / "r.partial.json"
    fake(stop_at=2)
    assert _main(capsys, "run", "--suite", str(tiny), "-o", str(out))[0] == 130
    workers = fake(stop_at=3)
    code, _, err = _main(capsys, "run", "--resume", str(partial))
    assert code == 130 and workers.ran == TINY_NAMES[1:3]
    assert "3 of 6 benchmarks finished" in err
    assert pyperf.BenchmarkSuite.load(str(partial)).get_benchmark_names() == TINY_NAMES[:3]


@pytest.mark.parametrize("case", ["other-suite", "changed-suite", "not-partial", "profile"])
def test_resume_with_a_mismatch_is_refused_before_running(tiny, tmp_path, fake, capsys, case):
    out = tmp_path / "r.json"
    partial = tmp_path / "r.partial.json"
    profile = ROOT / "pinning" / "model" / "profiles" / "default.toml"
    fake(stop_at=3)
    assert _main(capsys, "run", "--suite", str(tiny), "-o", str(out),
                 "--cost-profile", str(profile))[0] == 130
    other = tmp_path / "other.toml"
    other.write_text(TINY_SUITE.replace('"tiny"', '"other"'))
    argv, expected = {
        "other-suite": (["--suite", str(other)],
                        f"{partial} is a partial run of suite 'tiny', not 'other'"),
        "changed-suite": (["--suite", str(tiny)],
                          "holds benchmark 'startup/upfront/8MiB/4k', which suite 'tiny'"),
        "not-partial": ([], "is not a partial results file"),
        "profile": (["--cost-profile", str(tiny)], f"was run with --cost-profile {profile}"),
    }[case]
    if case == "changed-suite":
        tiny.write_text(TINY_SUITE.replace('["upfront", "demand"]', '"demand"'))
    resume = partial
    if case == "not-partial":
        fake()
        _main(capsys, "run", "--suite", str(tiny), "-o", str(tmp_path / "full.json"))
        resume = tmp_path / "full.json"
    workers = fake()
    code, _, err = _main(capsys, "run", "--resume", str(resume), *argv)
    assert code == 2 and workers.ran == []
    assert len(err.strip().splitlines()) == 1 and expected in err
    assert partial.exists() and not out.exists()


def test_memory_rule_is_stated_once_with_its_three_numbers(monkeypatch):
    from pinning.backends import hostmem
    from pinning.model.names import InputError

    GiB = 1 << 30
    monkeypatch.setattr(hostmem, "available_memory", lambda: int(23.10 * GiB))
    hostmem.check_fits(int(19.0 * GiB), "fits")  # under 85 % of 23.10 GiB = 19.635 GiB
    with pytest.raises(InputError) as exc:
        hostmem.check_fits(int(22.18 * GiB), "a guest of 22 GiB")
    assert str(exc.value) == ("a guest of 22 GiB does not fit: it needs 22.18GiB, may use "
                              "85 % of 23.10GiB available (19.63GiB)")


class _Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("estimates, eta", [([1.0, 1.0, 8.0], 90.0), ([8.0, 1.0, 1.0], 2.5),
                                            ([2.0, 4.0, 4.0], 40.0)])
def test_eta_is_proportional_to_the_estimated_remaining_not_to_the_count(estimates, eta):
    from pinning.harness.runner import Progress

    clock = _Clock()
    stream = io.StringIO()
    p = Progress(estimates, stream, clock=clock)
    assert p.eta_s() is None
    p.begin(1, "first")
    clock.now = 10.0  # the first benchmark took 10 s
    p.end(1, "first", "ok")
    # 10 s per estimated first's seconds, times the estimated seconds left; the old
    # elapsed / count x benchmarks left would say 20 s in every case.
    assert p.eta_s() == pytest.approx(eta)
    assert stream.getvalue().endswith(f"(   10 s elapsed, ETA {eta:4.0f} s)\n")


def test_eta_leaves_out_a_skipped_benchmark():
    from pinning.harness.runner import Progress

    clock = _Clock()
    p = Progress([2.0, 6.0, 2.0], io.StringIO(), clock=clock)
    clock.now = 4.0
    p.end(1, "a", "ok")
    p.end(2, "b", "skipped: does not fit", ran=False)  # took no time, has none left
    assert p.eta_s() == pytest.approx(4.0 / 2.0 * 2.0)


def test_eta_at_the_end_is_zero_not_minus_zero():
    from pinning.harness.runner import Progress

    clock = _Clock()
    stream = io.StringIO()
    # Estimates whose float sum leaves a hair below zero once all are subtracted.
    p = Progress([0.1, 0.2, 2.3], stream, clock=clock)
    clock.now = 6.0
    for i, name in enumerate("abc", start=1):
        p.end(i, name, "ok")
    assert p.left_est < 0  # the rounding this guards against
    assert stream.getvalue().splitlines()[-1].endswith("ETA    0 s)")


def test_run_feeds_the_suites_estimates_to_the_progress_line(tiny, tmp_path, fake,
                                                             monkeypatch):
    import pinning.harness.runner as runner
    from pinning.harness.suite import load_suite

    seen = []
    real = runner.Progress

    def spy(estimates, stream=None, **kw):
        seen.append(list(estimates))
        return real(estimates, stream, **kw)

    monkeypatch.setattr(runner, "Progress", spy)
    fake()
    suite = load_suite(str(tiny))
    runner.run_suite(suite, tmp_path / "r.json", stream=io.StringIO())
    assert seen == [[suite.estimated_s(c) for c in suite.benchmarks]]

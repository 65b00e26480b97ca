"""QEMU as a peer (pinning/backends/qemu.py, bench/qemu_peer.py): real QEMU starts at small sizes.

Tests that start QEMU skip where qemu-system-x86_64 or /dev/kvm is missing; input checks
and the bench script's missing-QEMU paths run everywhere.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pinning.backends import qemu
from pinning.backends.qemu import QemuError, qemu_unavailable, start_to_qmp
from pinning.model.names import InputError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "qemu_peer.py"
MiB = 1 << 20

UNAVAILABLE = qemu_unavailable()
needs_qemu = pytest.mark.skipif(UNAVAILABLE is not None,
                                reason=f"QEMU cannot run here: {UNAVAILABLE}")


def our_processes(qemu_only: bool = False) -> set[int]:
    """pids of the QEMUs (and watchdogs) that start_to_qmp started; zombies excluded."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or not any(b"pinbench-qemu-" in a for a in argv):
            continue
        if not qemu_only or os.path.basename(argv[0]) == b"qemu-system-x86_64":
            pids.add(int(entry))
    return pids


def our_tmpdirs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "pinbench-qemu-*")))


@pytest.fixture
def leaves_nothing():
    """Fail if the test leaves a QEMU, a watchdog or a temp dir of its own behind."""
    procs, dirs = our_processes(), our_tmpdirs()
    yield
    assert our_processes() <= procs
    assert our_tmpdirs() <= dirs


@pytest.mark.parametrize(("size", "kwargs", "message"), [
    (0, {}, "greater than zero"),
    (-2 * MiB, {}, "greater than zero"),
    (3 * MiB, {}, "multiple of 2MiB"),
    (1 << 50, {}, "does not fit"),
    (64 * MiB, {"host": "tepid"}, "host state"),
    (64 * MiB, {"timeout": 0}, "timeout"),
])
def test_bad_input_is_one_line_input_error(size, kwargs, message, leaves_nothing):
    with pytest.raises(InputError, match=message) as info:
        start_to_qmp(size, prealloc=False, **kwargs)
    assert "\n" not in str(info.value)


def test_missing_qemu_says_how_to_install(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert qemu.qemu_binary() is None
    assert qemu_unavailable() == "qemu-system-x86_64 not found: apt-get install qemu-system-x86"


def test_command_line():
    cmd = qemu.qemu_command("qemu-system-x86_64", 256 * MiB, True, "/t/qmp.sock")
    assert " ".join(cmd) == (
        "qemu-system-x86_64 -enable-kvm -machine q35,memory-backend=ram0 "
        "-object memory-backend-ram,id=ram0,size=268435456,prealloc=on -m 256M "
        "-S -nodefaults -display none -qmp unix:/t/qmp.sock,server=on,wait=off")


@needs_qemu
def test_start_to_qmp_with_and_without_prealloc(leaves_nothing):
    off = start_to_qmp(256 * MiB, prealloc=False)
    on = start_to_qmp(256 * MiB, prealloc=True)
    for r in (off, on):
        assert r.ready_ns > 0 and r.guest_size == 256 * MiB and r.host == "warm"
        assert r.version[0].isdigit()
        assert json.loads(json.dumps(r.as_dict()))["prealloc"] is r.prealloc
    # Timing alone is too noisy on a shared 2-core host to compare reliably at this
    # size; QEMU's resident memory when QMP was ready shows prealloc did its work.
    assert on.rss_bytes >= 256 * MiB
    assert off.rss_bytes < 128 * MiB


@needs_qemu
def test_timeout_kills_qemu(leaves_nothing):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        start_to_qmp(64 * MiB, prealloc=True, host="cold", timeout=0.001)
    assert time.monotonic() - t0 < 10


@needs_qemu
def test_qemu_failure_is_reported_and_cleaned_up(monkeypatch, leaves_nothing):
    real = qemu.qemu_command
    monkeypatch.setattr(qemu, "qemu_command", lambda *a: [*real(*a), "-no-such-option"])
    with pytest.raises(QemuError, match="no-such-option"):
        start_to_qmp(64 * MiB, prealloc=False, host="cold")


@needs_qemu
def test_qemu_dies_with_a_killed_caller(leaves_nothing):
    """SIGKILL of the calling process cannot run its cleanup: the watchdog kills QEMU."""
    child = subprocess.Popen([sys.executable, "-c", (
        "import time, pinning.backends.qemu as q\n"
        "q._Qmp.read = lambda self, deadline: time.sleep(60)\n"
        "q.start_to_qmp(64 << 20, prealloc=False, host='cold')\n")], cwd=ROOT)
    before = our_processes(qemu_only=True)
    try:
        deadline = time.monotonic() + 20
        while not (started := our_processes(qemu_only=True) - before):
            assert time.monotonic() < deadline, "QEMU did not start"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 10
    while our_processes(qemu_only=True) & started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not our_processes(qemu_only=True) & started


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False, env=env, timeout=120)


def test_bench_script_without_qemu(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    out = tmp_path / "o.json"
    proc = run_script("--sizes", "64MiB", "-o", str(out), env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "qemu_peer: error: qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    proc = run_script("--sizes", "64MiB", "--skip-missing", "-o", str(out), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "qemu_peer: skipped: qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    assert not out.exists()


def test_bench_script_bad_size(tmp_path):
    proc = run_script("--sizes", "3MiB", "-o", str(tmp_path / "o.json"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "qemu_peer: error: guest size 3MiB is not a multiple of 2MiB"


@needs_qemu
def test_bench_script_end_to_end(tmp_path, leaves_nothing):
    import pyperf

    out = tmp_path / "out.json"
    proc = run_script("--sizes", "64MiB", "--processes", "1", "--values", "1",
                      "--warmups", "0", "--loops", "1", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    suite = pyperf.BenchmarkSuite.load(str(out))
    names = [b.get_name() for b in suite.get_benchmarks()]
    assert names == ["qemu/start_to_qmp/64MiB/prealloc-off",
                     "qemu/start_to_qmp/64MiB/prealloc-on"]
    for bench, prealloc in zip(suite.get_benchmarks(), ("off", "on"), strict=True):
        md = bench.get_metadata()
        assert md["param.guest_size"] == 64 * MiB and md["param.prealloc"] == prealloc
        assert md["pinbench.family"] == "qemu_peer" and md["pinbench.schema"] == 1
        assert md["host.state"] == "warm" and md["unit"] == "second"
        assert md["qemu.version"][0].isdigit()
        assert f"prealloc={prealloc}" in md["qemu.command"]
        assert bench.get_nvalue() == 1 and 0 < bench.median() < 30

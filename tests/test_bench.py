"""Every script in bench/ runs with tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# Each bench script and the arguments that make it a smoke test.
TINY = ["--guest-size", "8MiB", "--processes", "1", "--values", "1", "--warmups", "0",
        "--loops", "1"]
SMOKE_ARGS = {
    "kernel_rates.py": ["--quick"],
    "startup.py": [*TINY, "--strategy", "upfront", "--level", "2m"],
    "fault_storm.py": [*TINY, "--strategy", "demand", "--vcpus", "4", "--pattern", "zipf"],
    "remap.py": [*TINY, "--strategy", "upfront", "--remap-fraction", "0.25"],
    "teardown.py": [*TINY, "--strategy", "demand", "--touch-fraction", "0.5"],
    "lifecycle.py": [*TINY, "--strategy", "demand", "--pattern", "random",
                     "--layout", "shared", "--vcpus", "2"],
    "boot.py": [*TINY, "--strategy", "demand-v2", "--level", "2m"],
    "convert.py": [*TINY, "--strategy", "gmem", "--convert-fraction", "0.25",
                   "--prefault", "fallocate", "--image-size", "1MiB"],
    # tests/test_qemu.py runs it end to end where QEMU is installed
    "qemu_peer.py": ["--sizes", "64MiB", "--values", "1", "--loops", "1", "--skip-missing"],
    "populate_vs_qemu.py": ["--sizes", "64MiB", "--repeat", "1"],
    "cluster_overhead.py": ["--workers", "2", "--cells", "6"],
}


def test_every_bench_script_has_a_smoke_test():
    scripts = {p.name for p in BENCH.glob("*.py")}
    assert scripts == set(SMOKE_ARGS), "add new bench scripts to SMOKE_ARGS"


@pytest.mark.slow
def test_kernel_rates_quick(tmp_path):
    out = tmp_path / "rates.json"
    proc = subprocess.run([sys.executable, str(BENCH / "kernel_rates.py"),
                           *SMOKE_ARGS["kernel_rates.py"], "--json", str(out)],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["model"]["demand_random_faults_per_s"][0] > 0
    assert report["reference"]["demand_random_faults_per_s"][0] > 0
    big = report["big"]
    assert [b["strategy"] for b in big] == ["upfront", "demand"]
    assert all(b["pins"] == b["guest_pages"] and b["error"] is None for b in big)
    assert report["jit"]["empty_cache_s"] > 0 and report["jit"]["warm_cache_s"] > 0
    assert "first call of the kernels" in proc.stdout


PYPERF_SCRIPTS = sorted(set(SMOKE_ARGS) - {"kernel_rates.py", "qemu_peer.py",
                                            "populate_vs_qemu.py", "cluster_overhead.py"})


def test_cluster_overhead_smoke(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed "
                        "(pip install -e '.[dask]')")
    proc = subprocess.run([sys.executable, str(BENCH / "cluster_overhead.py"),
                           *SMOKE_ARGS["cluster_overhead.py"]],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("setup (local:2: start, dashboard, canary on every worker): ")
    # every cell came back (from one worker or both: dask decides)
    assert lines[1].startswith(("6 empty cells on 1 workers: ", "6 empty cells on 2 workers: "))
    assert lines[1].endswith("ms of client + scheduler overhead per cell (measured: wall x "
                             "workers used / cells)")


def test_populate_vs_qemu_smoke(tmp_path):
    out = tmp_path / "pq.json"
    proc = subprocess.run([sys.executable, str(BENCH / "populate_vs_qemu.py"),
                           *SMOKE_ARGS["populate_vs_qemu.py"], "--json", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    if "skipped:" in proc.stdout:
        pytest.skip(proc.stdout.strip())
    res = json.loads(out.read_text())["64MiB"]
    assert res["kvm_thp_populate_ns"]["median"] > 0 and res["kvm_4k_lock_ns"]["median"] > 0
    assert res["qemu_on_ns"]["median"] > 0
    assert "ratio kvm populate / QEMU prealloc" in proc.stdout


@pytest.mark.parametrize("script", PYPERF_SCRIPTS)
def test_pyperf_script_records_parameters_events_and_model(tmp_path, script):
    import pyperf

    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(BENCH / script), *SMOKE_ARGS[script],
                           "-o", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    bench = pyperf.Benchmark.load(str(out))
    md = bench.get_metadata()
    family = script.removesuffix(".py")
    assert bench.get_name().startswith(f"{family}/")
    assert md["param.workload"] == family and md["param.guest_size"] == 8 << 20
    from pinning.model.names import SCHEMA_VERSION

    assert md["pinbench.schema"] == SCHEMA_VERSION == 2
    # the host the model ran on is a parameter of the run, with its default
    assert (md["param.kernel"], md["param.sme_coherent"], md["param.mmu"]) == (
        "5.17", "yes", "tdp")
    # the run's events were recorded by the workers, identical in every run
    from pinning.model.lifecycle import RUN_PHASES

    phases = RUN_PHASES[family]
    assert {k.split(".")[1] for k in md if k.startswith("events.")} == set(phases)
    if "teardown" in phases:
        assert md["events.teardown.pinned_pages_end"] == 0
        assert md["events.teardown.leaked_refs"] == 0
    assert md["model.total_ns"] > 0 and md["model.measured_ns"] > 0
    assert bench.get_nvalue() == 1 and bench.median() > 0


def test_worker_receives_the_managers_options(tmp_path):
    """add_cmdline_args forwards pinbench's options: the worker's metadata shows them."""
    import pyperf

    out = tmp_path / "out.json"
    argv = [*SMOKE_ARGS["fault_storm.py"], "--seed", "5", "--touch-fraction", "0.5"]
    subprocess.run([sys.executable, str(BENCH / "fault_storm.py"), *argv, "-o", str(out)],
                   capture_output=True, text=True, check=True)
    md = pyperf.Benchmark.load(str(out)).get_metadata()
    assert md["param.seed"] == 5 and md["param.vcpus"] == 4
    assert md["param.pattern"] == "zipf" and md["param.touch_fraction"] == 0.5
    # zipf draws with repetition: half the units' worth of accesses, fewer faults
    assert md["vcpu.access.accesses"] == 1024
    assert 0 < md["vcpu.access.faults"] < 1024


def test_bad_option_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "startup.py"), *TINY, "--level", "3m",
                           "-o", str(tmp_path / "o.json")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "startup: error: level '3m' is not one of 4k, 2m, 1g"
    assert not (tmp_path / "o.json").exists()


def _kvm_reason() -> str | None:
    from pinning.backends.kvm import kvm_unavailable

    return kvm_unavailable()


@pytest.mark.parametrize("backing", ["real", "kvm"])
def test_real_backings_record_host_state_and_the_models_prediction(tmp_path, backing):
    import pyperf

    if backing == "kvm" and _kvm_reason():
        pytest.skip(f"/dev/kvm not usable here: {_kvm_reason()}")
    out = tmp_path / "out.json"
    argv = ["--guest-size", "64MiB", "--processes", "1", "--values", "1", "--warmups", "0",
            "--loops", "1", "--strategy", "upfront", "--vcpus", "2", "--backing", backing]
    proc = subprocess.run([sys.executable, str(BENCH / "lifecycle.py"), *argv,
                           "-o", str(out)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    bench = pyperf.Benchmark.load(str(out))
    md = bench.get_metadata()
    assert f"/{backing}/" in bench.get_name() and md["param.backing"] == backing
    assert md["host.state"] == "warm" and f"({backing} backing)" in md["measured.what"]
    # the model's events for the same configuration: every page pinned once, then unpinned
    assert md["events.startup.pins"] == 64 * 256 and md["events.teardown.unpins"] == 64 * 256
    assert md["model.startup_ns"] > 0
    if backing == "kvm":  # the VM's own phase breakdown and KVM's counters
        assert md["kvm.populate_ns"] > 0 and md["kvm.lock_ns"] > 0
        assert md["kvm.pages_touched"] == 64 * 256
        assert md["kvm.stats.exits"] > 0
    else:
        assert not any(k.startswith("kvm.") for k in md)

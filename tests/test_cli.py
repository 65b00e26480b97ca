"""The ``pinbench simulate`` command line: output shapes and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pinning.cli import main
from pinning.model.names import COUNTERS as COUNTER_NAMES


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["simulate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_trace(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "trace.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_json_has_every_counter_and_phase(capsys):
    code, out, err = run_cli(capsys, "--strategy", "demand", "--guest-size", "64MiB",
                             "--pattern", "random", "--touch-fraction", "0.25", "--seed", "3",
                             "--json")
    assert code == 0 and err == ""
    res = json.loads(out)  # exactly one JSON object
    assert set(COUNTER_NAMES) <= set(res)
    assert res["strategy"] == "demand" and res["level"] == "4k"
    assert res["guest_pages"] == 16384
    assert res["error"] is None
    assert set(res["elapsed_ns"]) == {"startup", "access", "teardown"}
    # a quarter of the 4k units faulted, each pinned once and unpinned at teardown
    assert res["npf_exits"] == res["pins"] == res["unpins"] == 4096


def test_trace_file_runs_and_table_labels_simulator_speed_and_modelled(capsys, tmp_path):
    trace = write_trace(tmp_path, "op,gfn,npages\naccess,0,\naccess,513,1\nremap,0,1\n"
                                  "access,5,\n")
    code, out, err = run_cli(capsys, "--strategy", "upfront", "--guest-size", "4MiB",
                             "--level", "2m", "--trace", trace)
    assert code == 0, err
    # the sim's wall time is simulator speed, never "measured" (a cost of pinning)
    assert "modelled" in out and "simulator speed" in out and "measured" not in out
    assert "unpinned_mapped_hazards" in out
    code, out, _ = run_cli(capsys, "--strategy", "upfront", "--guest-size", "4MiB",
                           "--level", "2m", "--trace", trace, "--json")
    res = json.loads(out)
    # startup pins 1024 pages; the remap widens to unit 0 (512 pages), whose
    # re-fault maps 512 fresh, unpinned frames. Kernel 5.17: no WBINVD on the
    # invalidation, one in sev_vm_destroy.
    assert res["unpinned_mapped_hazards"] == 512
    assert res["npf_exits"] == 3 and res["wbinvd"] == 1
    assert res["kernel"] == "5.17" and res["mmu"] == "tdp" and res["sme_coherent"] == "yes"
    # from 5.18 the invalidation and the notifier's release write back all caches too
    code, out, _ = run_cli(capsys, "--strategy", "upfront", "--guest-size", "4MiB",
                           "--level", "2m", "--trace", trace, "--json", "--kernel", "5.18")
    assert json.loads(out)["wbinvd"] == 3


def test_trace_vcpu_column_does_not_change_the_counts(capsys, tmp_path):
    plain = write_trace(tmp_path, "op,gfn,npages\naccess,0,\nremap,0,1\naccess,513,\n")
    with_vcpu = tmp_path / "vcpu.csv"
    with_vcpu.write_text("op,gfn,npages,vcpu\naccess,0,,3\nremap,0,1,\naccess,513,,63\n")
    results = []
    for trace in (plain, str(with_vcpu)):
        code, out, err = run_cli(capsys, "--strategy", "demand", "--guest-size", "4MiB",
                                 "--level", "2m", "--trace", trace, "--json")
        assert code == 0, err
        res = json.loads(out)
        res.pop("elapsed_ns")
        results.append(res)
    assert results[0] == results[1] and results[0]["npf_exits"] == 2


def test_memlock_failure_is_a_result_not_an_error(capsys):
    code, out, err = run_cli(capsys, "--strategy", "upfront", "--guest-size", "1GiB",
                             "--memlock-limit", "8MiB", "--pattern", "sequential", "--json")
    assert code == 0 and err == ""
    res = json.loads(out)
    assert "memory lock limit" in res["error"]
    assert res["pins"] == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--guest-size", "0"], "greater than zero"),
        (["--guest-size=-4GiB"], "greater than zero"),
        (["--guest-size", "lots"], "is not a size"),
        (["--guest-size", "4GB"], "is not a size"),
        (["--guest-size", "3KiB"], "not a multiple of the 4k"),
        (["--guest-size", "3MiB", "--level", "2m"], "not a multiple of the 2m"),
        (["--guest-size", "4GiB", "--level", "1g", "--memlock-limit", "x"], "is not a size"),
        (["--guest-size", "4GiB", "--level", "5m"], "invalid choice: '5m'"),
        (["--guest-size", "4GiB", "--touch-fraction", "1.5"], "between 0 and 1"),
        (["--guest-size", "4GiB", "--touch-fraction", "half"], "not a number"),
        (["--guest-size", "64TiB"], "does not fit: it needs"),
        (["--guest-size", "4MiB", "--seed=-1"], "seed -1 must not be negative"),
    ],
)
def test_bad_arguments_one_line_exit_2(capsys, argv, needle):
    code, out, err = run_cli(capsys, "--strategy", "demand", *argv, "--pattern", "sequential")
    assert code == 2
    assert out == ""
    assert needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("op,gfn,npages\naccess,0,\naccess,99999,\n", "outside the guest"),
        ("op,gfn,npages\naccess,0,\nremap,60,8\n", "outside the guest"),
        ("op,gfn,npages\naccess,0,\nmunmap,1,1\n", ":3: unknown op 'munmap'"),
        ("op,gfn,npages\naccess,zero,\n", ":2: gfn 'zero' is not an integer"),
        ("op,gfn,npages\naccess,-1,\n", ":2: gfn -1 is negative"),
        ("op,gfn,npages\naccess,1,2\n", ":2: access takes npages empty or 1"),
        ("op,gfn,npages\nremap,1,0\n", ":2: remap npages must be between 1 and"),
        ("op,gfn,npages\naccess,99999999999999999999999,\n", ":2: gfn 9999999999999999999"),
        ("op,gfn,npages\nremap,0,99999999999999999999999\n", ":2: remap npages must be betw"),
        (b"\xff\xfe\x00bad\n", ":1: not a CSV file"),
        ("op,gfn,npages\naccess,1\n", ":2: expected 3 fields, got 2"),
        ("gfn,op\n1,access\n", ":1: header must be op,gfn,npages"),
        ("", ":1: empty trace"),
        ('op,gfn,npages\naccess,"1\n', "malformed CSV"),
        ("op,gfn,npages,vcpu\naccess,0,,x\n", ":2: vcpu 'x' must be an integer between 0 and 63"),
        ("op,gfn,npages,vcpu\naccess,0,,64\n", ":2: vcpu '64' must be an integer between"),
    ],
)
def test_bad_trace_names_the_line(capsys, tmp_path, text, needle):
    trace = write_trace(tmp_path, text)
    code, out, err = run_cli(capsys, "--strategy", "demand", "--guest-size", "256KiB",
                             "--trace", trace)
    assert code == 2 and out == ""
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1


def test_console_script_and_module_agree(tmp_path):
    argv = ["simulate", "--strategy", "upfront", "--guest-size", "8MiB", "--level", "2m",
            "--pattern", "random", "--seed", "7", "--json"]
    exe = Path(sys.executable).with_name("pinbench")
    a = subprocess.run([str(exe), *argv], capture_output=True, text=True, check=True)
    b = subprocess.run([sys.executable, "-m", "pinning", *argv], capture_output=True, text=True,
                       check=True)
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    ra.pop("elapsed_ns")
    rb.pop("elapsed_ns")
    assert ra == rb
    assert ra["pins"] == 2048


def test_missing_pattern_or_trace_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "pinning", "simulate", "--strategy", "demand",
                           "--guest-size", "4GiB"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "pinbench simulate: error: one of the arguments --trace --pattern is required"]


def test_calibrate_writes_a_profile_run_accepts(tmp_path, capsys):
    from pinning.cli import main
    from pinning.model.costs import COST_KEYS, load_profile

    out = tmp_path / "cal.toml"
    assert main(["calibrate", "--quick", "--no-kvm", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "measured" in printed and "carried" in printed and str(out) in printed
    profile = load_profile(out)
    assert profile.name == "calibrated" and profile.machine
    assert set(profile.costs) == set(COST_KEYS)
    # an existing profile is not overwritten without --force; a missing directory is refused
    assert main(["calibrate", "--quick", "--no-kvm", "-o", str(out)]) == 2
    assert main(["calibrate", "--quick", "--no-kvm", "-o", str(tmp_path / "no" / "x.toml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "exists" in err[0] and "not a directory" in err[1]


def test_version_is_the_installed_packages(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"pinbench {version('pinbench')}\n"


@pytest.mark.parametrize("head, expected", [
    ("processes = 1\nvalues = 1", "1 benchmark, 1 process x 1 value each"),
    ("processes = 2\nvalues = 3", "1 benchmark, 2 processes x 3 values each"),
])
def test_list_counts_in_the_right_number(capsys, tmp_path, head, expected):
    suite = tmp_path / "s.toml"
    suite.write_text(f"[suite]\n{head}\n[[benchmark]]\nworkload = 'startup'\n"
                     "strategy = 'demand'\nguest_size = '4MiB'\n")
    assert main(["list", "--suite", str(suite)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"suite s ({suite}): {expected}"

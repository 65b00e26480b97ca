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
SMOKE_ARGS = {
    "kernel_rates.py": ["--quick"],
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

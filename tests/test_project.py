"""Promises the project makes about itself: README, CI, lint, the numba cache."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    commands = quick_start_commands()
    assert len(commands) == 2
    install_and_run, install_and_test = commands
    assert "pinbench" in install_and_run and "pip install" in install_and_run
    assert "pytest" in install_and_test and "pip install" in install_and_test
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def test_ruff_is_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="JIT is off")
def test_second_process_loads_kernels_from_the_numba_cache(tmp_path):
    code = (
        "import json; from pinning.model.kernels import engine as K; "
        "from pinning.model.lifecycle import warm_up; "
        "warm_up(); s = K.run.stats; "
        "print(json.dumps({'hits': sum(s.cache_hits.values()), "
        "'misses': sum(s.cache_misses.values())}))"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                      capture_output=True, text=True).stdout)
            for _ in range(2)]
    assert runs[0]["misses"] > 0 and runs[0]["hits"] == 0  # compiled and saved
    assert runs[1]["hits"] > 0 and runs[1]["misses"] == 0  # loaded, nothing compiled


def test_readme_quotes_the_calibrated_reference_profile() -> None:
    """The README's calibrated figures are the file's, as written there (rounded)."""
    from pinning.model.costs import load_profile

    profile = load_profile(ROOT / "results" / "calibrated-reference.toml")
    text = (ROOT / "README.md").read_text()
    quote = text.split("This host's calibration:", 1)[1].split("\n\n", 1)[0]
    quoted = {k: float(v.replace(" ", "")) for k, v in
              re.findall(r"`(\w+)`\s+(\d[\d ]*(?:\.\d+)?)", quote)}
    assert {"npf_exit_ns", "host_fault_ns", "zero_byte_ns", "pin_ns"} <= set(quoted)
    values = {**profile.costs, **profile.spread}
    for key, shown in quoted.items():
        digits = len(str(shown).split(".")[1]) if shown % 1 else 0
        assert round(values[key], digits) == shown, key

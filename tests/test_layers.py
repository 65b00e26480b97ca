"""The package's shape: layers whose imports point one way, one registry of strategies,
and commands that start without loading the model's kernels."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyperf
import pytest

from pinning.analysis import plots
from pinning.analysis.results import load_results
from pinning.analysis.summary import summary_frame
from pinning.harness.backings import TABLE
from pinning.harness.bench import run_metadata
from pinning.harness.suite import parse_suite
from pinning.model import strategies
from pinning.model.costs import load_profile
from pinning.model.names import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pinning"

#: layer -> the layers (or modules) it may import from, lazily or not.
ALLOWED = {
    "model": ("model",),
    "backends": ("backends", "model.names", "model.units", "model.strategies", "model.jit"),
    "analysis": ("analysis", "model"),
    "harness": ("harness", "model", "backends", "analysis"),
    "cli": ("harness", "analysis", "model"),
}


def imports_of(path: Path) -> set[str]:
    """Every pinning module ``path`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pinning"):
            base = node.module.removeprefix("pinning").lstrip(".")
            for alias in node.names:
                if alias.name != "__version__":
                    out.add(f"{base}.{alias.name}" if base else alias.name)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("pinning.") for a in node.names
                    if a.name.startswith("pinning.")}
    return out


def layer_of(path: Path) -> str:
    """``model``, ``backends``, ``harness``, ``analysis``, or a top module's name (``cli``)."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py")
                                        if layer_of(p) in ALLOWED), ids=str)
def test_imports_point_down(path: Path) -> None:
    allowed = ALLOWED[layer_of(path)]
    wrong = sorted(m for m in imports_of(path)
                   if not any(m == a or m.startswith(a + ".") for a in allowed))
    assert not wrong, f"{path.relative_to(ROOT)} imports {wrong} (allowed: {allowed})"


def test_nothing_imports_cli_or_harness_from_below() -> None:
    for path in PACKAGE.rglob("*.py"):
        if layer_of(path) in ("model", "backends", "analysis"):
            up = [m for m in imports_of(path) if m.startswith(("cli", "harness"))]
            assert not up, f"{path.relative_to(ROOT)} imports {up}"


# ---- the strategy registry ------------------------------------------------------------


@pytest.fixture
def throwaway():
    """A strategy registered for one test: demand's kernels under another name and colour."""
    s = strategies.register(replace(strategies.get("demand"), name="throwaway",
                                    label="a throwaway strategy", colour="#123456"))
    yield s
    strategies.unregister("throwaway")


def test_a_registered_strategy_needs_no_other_edit(throwaway, tmp_path: Path) -> None:
    # suite validation
    suite = parse_suite('[[benchmark]]\nworkload = "startup"\n'
                        'strategy = ["upfront", "throwaway"]\nguest_size = ["1GiB", "2GiB"]\n',
                        "t.toml")
    assert {c.strategy for c in suite.benchmarks} == {"upfront", "throwaway"}
    # runs on the sim, and its results load
    profile = load_profile()
    suite_file = None
    for config in suite.benchmarks:
        res = TABLE["sim"].run(config, profile)
        md = {"pinbench.schema": SCHEMA_VERSION, "pinbench.suite": "t",
              "pinbench.family": "startup", **config.params(),
              **run_metadata(config, TABLE["sim"], res)}
        bench = pyperf.Benchmark([pyperf.Run([res.measured_s()], collect_metadata=False,
                                             metadata={"name": config.name, **md})])
        if suite_file is None:
            suite_file = pyperf.BenchmarkSuite([bench])
        else:
            suite_file.add_benchmark(bench)
    path = tmp_path / "t.json"
    suite_file.dump(str(path))
    df = load_results(path)
    assert sorted(df["strategy"]) == ["throwaway", "throwaway", "upfront", "upfront"]
    assert "throwaway_modelled_s" in summary_frame(df)
    # its metadata is the registry's rule, as the engine counted it
    row = df[(df["strategy"] == "throwaway") & (df["guest_gib"] == 1)].iloc[0]
    assert row["events_startup_metadata_bytes"] == throwaway.metadata_bytes(1 << 18)
    # one plot draws it in its own colour
    fig = plots.plot_metadata_bytes(df)
    colours = {line.get_color() for ax in fig.axes for line in ax.lines}
    assert "#123456" in colours and strategies.colour("upfront") in colours


def test_every_strategys_metadata_rule_is_what_its_kernels_count() -> None:
    profile = load_profile()
    from pinning.model.config import BenchConfig

    for s in strategies.REGISTRY.values():
        res = TABLE["sim"].run(BenchConfig("startup", s.name, 1 << 30), profile)
        assert res.events["startup"]["metadata_bytes"] == s.metadata_bytes(1 << 18), s.name


def test_unknown_strategy_names_the_registered_ones() -> None:
    from pinning.model.names import InputError

    with pytest.raises(InputError, match="expected one of upfront, demand"):
        strategies.get("eager")


# ---- start-up: no numba where the model does not run -----------------------------------


def numba_loaded(code: str, env: dict | None = None) -> bool:
    """Run ``code`` in a fresh interpreter; whether numba got imported."""
    probe = code + "\nimport sys\nprint(json.dumps('numba' in sys.modules))\n"
    proc = subprocess.run([sys.executable, "-c", "import json\n" + probe], capture_output=True,
                          text=True, cwd=ROOT, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


CLI = ("import contextlib, io\nfrom pinning.cli import main\n"
       "with contextlib.redirect_stdout(io.StringIO()):\n    rc = main({argv!r})\n"
       "assert rc == 0, rc\n")
REFERENCE = str(ROOT / "results" / "quick-reference.json")


@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"], ["list"],
                                  ["list", "--suite", "ground"],
                                  ["compare", REFERENCE, REFERENCE]], ids=" ".join)
def test_commands_that_run_no_model_import_no_numba(argv: list[str]) -> None:
    assert not numba_loaded(CLI.format(argv=argv))


def test_merge_imports_no_numba(tmp_path: Path) -> None:
    out = tmp_path / "merged.json"
    assert not numba_loaded(CLI.format(argv=["merge", REFERENCE, "-o", str(out)]))
    assert out.is_file()


def test_report_imports_no_numba_once_its_model_runs_are_cached(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    code = CLI.format(argv=["report", REFERENCE, "-o", str(tmp_path / "r")])
    assert numba_loaded(code, env)  # the first report runs the model once
    assert not numba_loaded(code, env)  # later ones read its cached runs


def test_bench_manager_checks_memory_without_numba() -> None:
    # The manager process of a bench script: options, profile, preflight, metadata, up
    # to handing the benchmark to pyperf (which would spawn the workers).
    code = ("import sys, pyperf\n"
            "def stop(self, name, func, metadata=None):\n"
            "    print(metadata['param.guest_size'])\n"
            "pyperf.Runner.bench_time_func = stop\n"
            "sys.argv = ['startup.py', '--strategy', 'demand', '--guest-size', '4GiB']\n"
            "from pinning.harness.bench import main\n"
            "main('startup')\n")
    assert not numba_loaded(code)

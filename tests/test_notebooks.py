"""The notebooks in notebooks/: stored stripped, library calls only, and they run headless.

The execution test runs each notebook with nbclient against the reference result
(``results/quick-reference.json``, else the test sample) given as an absolute path in
PINBENCH_RESULT / PINBENCH_BASE / PINBENCH_HEAD. The executed notebook stays in memory:
nothing is written back into notebooks/.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
REFERENCE = ROOT / "results" / "quick-reference.json"
SAMPLE = ROOT / "tests" / "data" / "quick-sample.json"
NOTEBOOK_FILES = sorted(NOTEBOOKS.glob("*.ipynb"))
EXPECTED = ("compare.ipynb", "explore.ipynb")
#: Notebook-level metadata a stored notebook may carry.
METADATA_KEYS = {"kernelspec", "language_info"}
#: What a notebook must not do itself: the library loads, parses and plots.
FORBIDDEN = re.compile(r"^\s*(import|from)\s+(matplotlib|json|pyperf|gzip)\b|\bplt\.|\.split\(",
                       re.MULTILINE)


def result_file() -> Path:
    """The committed reference result if there is one, else the test sample."""
    return REFERENCE if REFERENCE.is_file() else SAMPLE


def read(path: Path) -> dict[str, Any]:
    """A notebook as plain JSON (no nbformat needed for the static checks)."""
    return json.loads(path.read_text(encoding="utf-8"))


def source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_notebooks_exist() -> None:
    assert set(EXPECTED) <= {p.name for p in NOTEBOOK_FILES}


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_is_stored_stripped(path: Path) -> None:
    """No outputs, no execution counts, no execution timing, minimal metadata."""
    nb = read(path)
    assert nb["nbformat"] == 4
    dirty = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            if cell.get("outputs") != []:
                dirty.append(f"cell {i}: outputs")
            if cell.get("execution_count") is not None:
                dirty.append(f"cell {i}: execution_count {cell.get('execution_count')}")
        elif "outputs" in cell or "execution_count" in cell:
            dirty.append(f"cell {i} ({cell['cell_type']}): outputs or execution_count")
        if "execution" in cell.get("metadata", {}):
            dirty.append(f"cell {i}: execution timing in its metadata")
    assert not dirty, (f"{path.name} is not stripped ({'; '.join(dirty)}): clear its outputs "
                       "before committing (Jupyter: Edit > Clear Outputs of All Cells)")
    extra = set(nb["metadata"]) - METADATA_KEYS
    assert not extra, f"{path.name}: notebook metadata {sorted(extra)} (keep only kernelspec)"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.name)
def test_notebook_uses_the_library_only(path: Path) -> None:
    """Parameters and imports in the first code cell; no plotting or parsing of its own."""
    cells = code_cells(read(path))
    assert cells, f"{path.name} has no code cell"
    first = source(cells[0])
    assert "os.environ.get(" in first, f"{path.name}: the first code cell sets no parameter"
    for i, cell in enumerate(cells):
        text = source(cell)
        if i:
            assert not re.search(r"^\s*(import|from)\s", text, re.MULTILINE), (
                f"{path.name}: imports belong in the first code cell:\n{text}")
        assert not FORBIDDEN.search(text), (
            f"{path.name}: a cell plots or parses by itself (use pinning.*):\n{text}")


def test_explore_shows_every_plot() -> None:
    plots = pytest.importorskip("pinning.analysis.plots")
    text = "\n".join(source(c) for c in code_cells(read(NOTEBOOKS / "explore.ipynb")))
    missing = [fn.__name__ for _, fn in plots.PLOTS.values()
               if f"plots.{fn.__name__}(" not in text]
    assert not missing, f"explore.ipynb does not call {', '.join(missing)}"
    first = source(code_cells(read(NOTEBOOKS / "explore.ipynb"))[0])
    assert 'os.environ.get("PINBENCH_RESULT", "../results/quick-reference.json")' in first


def test_explore_keeps_the_kinds_of_time_apart() -> None:
    """Fits and break-even from modelled (or the real/kvm backings' measured) times only,
    through the report's tables; simulator speed in a section of its own."""
    nb = read(NOTEBOOKS / "explore.ipynb")
    code = "\n".join(source(c) for c in code_cells(nb))
    markdown = "\n".join(source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    # a measured fit or break-even of the whole frame would be one of simulator speed
    assert 'metric="measured"' not in code
    assert "report.scaling_fits(" in code and "report.break_even_table(" in code
    assert 'results.of_kind(df, "simulator")' in code
    assert "## Simulator speed: pinbench's own bookkeeping, not a cost of pinning" in markdown
    for kind in ("**modelled**", "**measured**", "**simulator speed**"):
        assert kind in markdown, kind
    assert "model's bookkeeping" not in markdown


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_headless(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell runs without error against the reference result and every plot renders."""
    for module in ("nbformat", "nbclient", "ipykernel"):
        pytest.importorskip(module, reason=f"{module} is not installed (it is in the test "
                                           "extras: pip install -e '.[test]')")
    import nbclient
    import nbformat
    from nbclient.exceptions import CellExecutionError

    result = result_file()
    for var in ("PINBENCH_RESULT", "PINBENCH_BASE", "PINBENCH_HEAD"):
        monkeypatch.setenv(var, str(result))
    # The kernel inherits the environment: make pinning importable without an install.
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), *([path] if path else [])]))

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{name}: a cell failed\n{exc}")

    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, f"{name}: {errors[0].ename}: {errors[0].evalue}"
    plot_cells = [c for c in nb.cells if c.cell_type == "code" and "plots.plot_" in c.source]
    assert plot_cells, f"{name} draws no plot"
    for cell in plot_cells:
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert images, f"{name}: no image/png output from\n{cell.source}"
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs if o.output_type == "stream")
    assert str(result) in text, f"{name} did not read {result} (PINBENCH_* ignored?)"
    if name == "explore.ipynb":  # the reference and the sample ran on the sim backing
        summary_out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                              and "summary_table" in c.source for o in c.outputs)
        assert "ran on the sim backing" in summary_out
        assert "simulator speed" in summary_out and "measured" not in summary_out

"""pyproject.toml's optional extras: what a user installs with pip install -e '.[name]'."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def extras() -> dict[str, list[str]]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["optional-dependencies"]


def requirement(spec: str) -> tuple[str, str]:
    """A requirement's name (normalised) and its version range."""
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)", spec)
    assert m, spec
    return m.group(1).lower().replace("_", "-"), m.group(2).strip()


def test_notebooks_extra_has_jupyter_and_nbconvert() -> None:
    # the notebooks are opened with JupyterLab and exported or run with nbconvert
    names = dict(requirement(s) for s in extras().get("notebooks", []))
    assert {"jupyterlab", "nbconvert"} <= set(names), names
    for name, bounds in names.items():  # pinned ranges, like every other dependency
        assert ">=" in bounds and "<" in bounds.replace("<=", ""), (name, bounds)


def test_readme_says_how_to_install_the_notebooks_extra() -> None:
    assert "pip install -e '.[notebooks]'" in (ROOT / "README.md").read_text(encoding="utf-8")

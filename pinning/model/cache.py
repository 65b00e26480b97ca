"""The model's outputs are a pure function of its sources: what they are cached under.

Numba's machine code (:mod:`pinning.model.jit`) and the model runs the reports set
against published and measured data (:func:`model_run`) are both stored under a
directory named by a digest of every model source, so a change to any of them starts
afresh. Plain Python: a report whose model runs are cached imports no numba.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pinning.model.config import BenchConfig
from pinning.model.costs import CostProfile

_PACKAGE = Path(__file__).resolve().parents[1]
# What the kernels' machine code depends on: every module of the model (kernels call
# each other and read compile-time constants from names, state and strategies) and the
# backends' kernel module. Numba's disk cache is keyed by each function's own source
# file only, so a kernel in one module would keep running the stale machine code of a
# changed kernel in another (numba issue #1833). Keying the directory by all of them
# together avoids that.
KERNEL_SOURCES = ("model/**/*.py", "backends/cpu.py")


@functools.cache
def source_digest() -> str:
    """A digest of every source the model's results and machine code depend on."""
    digest = hashlib.sha256()
    for pattern in KERNEL_SOURCES:
        for path in sorted(_PACKAGE.glob(pattern)):
            digest.update(str(path.relative_to(_PACKAGE)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """This model's cache directory: under $NUMBA_CACHE_DIR, else the package's __pycache__."""
    base = os.environ.get("NUMBA_CACHE_DIR") or str(_PACKAGE / "__pycache__" / "numba")
    return Path(base) / f"pinbench-{source_digest()}"


def cached(kind: str, key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``'s JSON-able result, stored under this model's cache directory by
    ``kind`` and a digest of ``key`` (JSON-able): computed once per model and key."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir() / kind / f"{digest}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    out = compute()
    try:  # a cache that cannot be written is only slower
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(out, fh)
        os.replace(tmp, path)
    except OSError:
        pass
    return out


def model_run(config: BenchConfig, profile: CostProfile) -> dict[str, Any]:
    """The events and modelled time of each phase of ``config``'s lifecycle under
    ``profile`` (and its error): from the cache when this model already ran it."""

    def run() -> dict[str, Any]:
        from pinning.model.lifecycle import run_lifecycle

        res = run_lifecycle(config, profile)
        return {"events": res.events, "model_ns": res.model_ns, "error": res.error}

    return cached("runs", [asdict(config), profile.costs, profile.spread], run)

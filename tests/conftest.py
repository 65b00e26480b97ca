"""Shared pytest configuration: hypothesis profiles.

``default`` is used for local runs; ``ci`` (selected when the CI environment
variable is set) is derandomized so that a CI failure reproduces exactly, and
prints the reproduction blob of any failing example.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Make ``tests.reference`` and ``pinning`` importable whatever the rootdir/PYTHONPATH.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def sigint_default():
    """Children that take Ctrl-C: a test run started in the background (``cmd &`` in a
    non-interactive shell) inherits SIGINT ignored, and so would every process it starts;
    with a Python handler here, a child starts with SIGINT's default disposition."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

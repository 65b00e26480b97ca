"""Cost profiles: what each counted event costs in nanoseconds (modelled, not measured).

A profile is a TOML file with one number per key of :data:`COST_KEYS` at the
top level and a ``[profile]`` table (``name``, ``description``, optional
``machine``). The packaged default is ``pinning/profiles/default.toml``; each of
its values names its source or is marked as an assumption.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from pinning.model.names import InputError
from pinning.model.units import PAGE_SIZE

#: Cost keys, in the order of :meth:`CostProfile.as_array`.
COST_KEYS: tuple[str, ...] = (
    "npf_exit_ns",
    "zero_frame_ns",
    "pin_ns",
    "unpin_ns",
    "clflush_page_ns",
    "page_flush_ns",
    "wbinvd_ns",
    "lock_hold_ns",
    "guest_touch_ns",
    "zero_metadata_ns",
)

#: Counters that cost time -> the cost key that prices one of them.
EVENT_COST: dict[str, str] = {
    "npf_exits": "npf_exit_ns",
    "frames_zeroed": "zero_frame_ns",
    "pins": "pin_ns",
    "unpins": "unpin_ns",
    "clflush_bytes": "clflush_page_ns",
    "page_flushes": "page_flush_ns",
    "wbinvd": "wbinvd_ns",
    "metadata_bytes": "zero_metadata_ns",
}

#: Counters counted in a smaller unit than their cost key prices (bytes vs pages).
EVENT_UNIT: dict[str, int] = {"clflush_bytes": PAGE_SIZE, "metadata_bytes": PAGE_SIZE}

PROFILE_KEYS = ("name", "description", "machine")
_REQUIRED_PROFILE_KEYS = ("name", "description")
DEFAULT_SOURCE = "builtin:default"


@dataclass(frozen=True)
class CostProfile:
    """A named set of per-event costs in nanoseconds."""

    name: str
    description: str
    machine: str | None
    source: str  # the file it was read from, or "builtin:default"
    costs: dict[str, float] = field(hash=False)

    def as_array(self) -> np.ndarray:
        """The costs as float64, in :data:`COST_KEYS` order."""
        return np.array([self.costs[k] for k in COST_KEYS], dtype=np.float64)


def load_profile(path: str | Path | None = None) -> CostProfile:
    """Read a cost profile (None: the packaged default); bad input raises InputError."""
    if path is None:
        data = resources.files("pinning.model.profiles").joinpath("default.toml").read_bytes()
        return _parse(data, DEFAULT_SOURCE)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read cost profile {path}: {exc.strerror}") from None
    return _parse(data, str(path))


def write_profile(profile: CostProfile, path: str | Path) -> None:
    """Write ``profile`` as TOML that :func:`load_profile` reads back to equal costs and names."""
    _check_costs(profile.costs, str(path), "")
    lines = ["# pinbench cost profile: nanoseconds per event"]
    lines += [f"{key} = {float(profile.costs[key])!r}" for key in COST_KEYS]
    lines += ["", "[profile]", f"name = {_toml_str(profile.name)}",
              f"description = {_toml_str(profile.description)}"]
    if profile.machine is not None:
        lines.append(f"machine = {_toml_str(profile.machine)}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def modelled_ns(counters: dict[str, int], profile: CostProfile) -> float:
    """Σ count * cost over the counters that cost time, run serially on one CPU."""
    total = 0.0
    for name, key in EVENT_COST.items():
        count = counters.get(name, 0)
        total += count / EVENT_UNIT.get(name, 1) * profile.costs[key]
    return total


def _toml_str(text: str) -> str:
    # JSON's escapes (\" \\ \n \uXXXX) are all valid in a TOML basic string.
    return json.dumps(text, ensure_ascii=True)


def _parse(data: bytes, source: str) -> CostProfile:
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        msg = " ".join(str(exc).split())
        raise InputError(f"{source}: not valid TOML: {msg}") from None

    for key in doc:
        if key not in COST_KEYS and key != "profile":
            raise InputError(f"{_where(source, text, key)}: unknown key {key!r} "
                             f"(allowed: {', '.join(COST_KEYS)} and a [profile] table)")
    meta = doc.get("profile")
    if not isinstance(meta, dict):
        raise InputError(f"{source}: missing [profile] table "
                         f"(with keys {', '.join(PROFILE_KEYS)}; machine is optional)")
    for key, value in meta.items():
        if key not in PROFILE_KEYS:
            raise InputError(f"{_where(source, text, key)}: unknown key 'profile.{key}' "
                             f"(allowed: {', '.join(PROFILE_KEYS)})")
        if not isinstance(value, str):
            raise InputError(f"{_where(source, text, key)}: profile.{key} must be a string, "
                             f"got {value!r}")
    for key in _REQUIRED_PROFILE_KEYS:
        if key not in meta:
            raise InputError(f"{source}: missing key 'profile.{key}' "
                             f"(the [profile] table needs {', '.join(_REQUIRED_PROFILE_KEYS)})")

    costs = {k: v for k, v in doc.items() if k != "profile"}
    _check_costs(costs, source, text)
    return CostProfile(
        name=meta["name"],
        description=meta["description"],
        machine=meta.get("machine"),
        source=source,
        costs={k: float(costs[k]) for k in COST_KEYS},
    )


def _check_costs(costs: dict, source: str, text: str) -> None:
    for key in COST_KEYS:
        if key not in costs:
            raise InputError(f"{source}: missing key {key!r} "
                             f"(a profile needs all of: {', '.join(COST_KEYS)})")
        value = costs[key]
        # bool is an int subclass: `true` is not a cost.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{_where(source, text, key)}: {key} must be a number of "
                             f"nanoseconds >= 0, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{_where(source, text, key)}: {key} must be a finite number of "
                             f"nanoseconds >= 0, got {value!r}")
    for key in costs:
        if key not in COST_KEYS:
            raise InputError(f"{source}: unknown key {key!r} (allowed: {', '.join(COST_KEYS)})")


def _where(source: str, text: str, key: str) -> str:
    """``source:line`` of the line assigning ``key`` (best effort; ``source`` if not found)."""
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for lineno, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return f"{source}:{lineno}"
    return source

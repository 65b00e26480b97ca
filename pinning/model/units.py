"""Mapping levels and sizes: the units the model counts in (plain Python)."""

from __future__ import annotations

import re

from pinning.model.names import InputError

PAGE_SIZE = 4096
PAGE_SHIFT = 12

#: base pages per mapping unit at each level
LEVELS: dict[str, int] = {"4k": 1, "2m": 512, "1g": 262_144}

_SUFFIX = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str, what: str = "size") -> int:
    """Parse ``4GiB``, ``512MiB``, ``1TiB`` or a byte count into bytes (must be > 0)."""
    m = _SIZE_RE.match(str(text))
    if not m or m.group(2).lower() not in _SUFFIX:
        raise InputError(
            f"{what} {text!r} is not a size (use a number with KiB, MiB, GiB or TiB, e.g. 4GiB)"
        )
    value = float(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value <= 0:
        raise InputError(f"{what} {text!r} must be greater than zero")
    if value != int(value):
        raise InputError(f"{what} {text!r} is not a whole number of bytes")
    return int(value)


def unit_pages(level: str) -> int:
    """Base pages in one mapping unit of ``level`` (4k, 2m or 1g)."""
    try:
        return LEVELS[level]
    except KeyError:
        raise InputError(
            f"unknown level {level!r} (expected one of {', '.join(LEVELS)})"
        ) from None


def guest_pages_for(size_bytes: int, level: str) -> int:
    """Number of 4 KiB guest pages for a guest of ``size_bytes`` mapped at ``level``."""
    upages = unit_pages(level)
    unit_bytes = upages * PAGE_SIZE
    if size_bytes <= 0:
        raise InputError("guest size must be greater than zero")
    if size_bytes % unit_bytes:
        raise InputError(
            f"guest size {format_size(size_bytes)} is not a multiple of the {level} "
            f"mapping size ({format_size(unit_bytes)})"
        )
    return size_bytes // PAGE_SIZE


def format_size(nbytes: int | float) -> str:
    """Human-readable binary size, e.g. ``64GiB`` or ``1.5MiB``."""
    for suffix, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= mult:
            v = nbytes / mult
            return f"{v:.0f}{suffix}" if v == int(v) else f"{v:.2f}{suffix}"
    return f"{int(nbytes)}B"


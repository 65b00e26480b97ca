"""Cost profiles: what each counted event costs in nanoseconds (modelled, not measured).

A profile is a TOML file with one number per key of :data:`COST_KEYS` at the top level,
a ``[spread]`` table (:data:`SPREAD_KEYS`: the coefficients of variation the vCPU model
draws service times with), an optional ``[host]`` table describing the host the costs
were measured on (:data:`HOST_KEYS`; ``pinbench calibrate`` detects them), and a
``[profile]`` table (``name``, ``description``, optional ``machine``). The packaged
default is ``pinning/model/profiles/default.toml``; each of its values names its source
or is marked as an assumption.
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
    "host_fault_ns",
    "zero_byte_ns",
    "pin_ns",
    "unpin_ns",
    "clflush_page_ns",
    "page_flush_ns",
    "wbinvd_ns",
    "lock_hold_ns",
    "guest_touch_ns",
    "spte_prefetch_ns",
    "rmpupdate_ns",
    "psc_exit_ns",
    "psp_command_ns",
    "attr_store_ns",
)
#: The ``[spread]`` table: coefficient of variation of each fault's parallel part and of
#: each lock hold in the vCPU model (0: deterministic).
SPREAD_KEYS: tuple[str, ...] = ("fault_cv", "lock_cv")
#: The optional ``[host]`` table: what the costs were measured on (descriptive).
HOST_KEYS: dict[str, type] = {"sme_coherent": bool, "thp": str, "mmu": str, "kernel": str}
#: Costs of an SEV-SNP host's guest_memfd work (RMP, page-state changes, the PSP's launch
#: commands, memory attributes): the one list of them.
SNP_COST_KEYS: tuple[str, ...] = ("rmpupdate_ns", "psc_exit_ns", "psp_command_ns",
                                  "attr_store_ns")
#: Keys added with guest_memfd (issue #13): a profile written before them (e.g. by an
#: older ``pinbench calibrate``) takes the packaged default's values for them, carried.
CARRIED_IF_MISSING: tuple[str, ...] = SNP_COST_KEYS
#: Keys of earlier profiles and what replaced them (a profile naming one is refused).
REPLACED_KEYS: dict[str, str] = {
    "zero_frame_ns": "host_fault_ns + zero_byte_ns (a host fault of any size, then its bytes)",
    "zero_metadata_ns": "zero_byte_ns (KVM's arrays are zeroed at the same rate)",
}

#: Counter -> (cost key that prices it, multiplier): its modelled time is
#: count x multiplier x cost.
EVENT_COST: dict[str, tuple[str, float]] = {
    "npf_exits": ("npf_exit_ns", 1.0),
    "prefetched_pages": ("spte_prefetch_ns", 1.0),
    "host_faults": ("host_fault_ns", 1.0),
    "frames_zeroed": ("zero_byte_ns", float(PAGE_SIZE)),
    "metadata_bytes": ("zero_byte_ns", 1.0),
    "pins": ("pin_ns", 1.0),
    "unpins": ("unpin_ns", 1.0),
    "clflush_bytes": ("clflush_page_ns", 1.0 / PAGE_SIZE),
    "page_flushes": ("page_flush_ns", 1.0),
    "wbinvd": ("wbinvd_ns", 1.0),
    "rmpupdates": ("rmpupdate_ns", 1.0),
    "psc_exits": ("psc_exit_ns", 1.0),
    "launch_update_pages": ("psp_command_ns", 1.0),
    "attr_pages": ("attr_store_ns", 1.0),
}

#: How a profile's value was obtained, from the comment block above its line: the
#: default profile marks "ASSUMPTION:" (no published figure) and names a source for the
#: rest; ``pinbench calibrate`` writes "measured: ... (lo-hi)" or "carried: ...".
PROVENANCE_KINDS = ("assumption", "sourced", "measured", "carried", "unmarked")


@dataclass(frozen=True)
class Provenance:
    """Where one profile value comes from, and the range it was measured over."""

    kind: str  # one of PROVENANCE_KINDS
    #: min and max of the repetitions, for a measured value that states them
    low: float | None = None
    high: float | None = None


PROFILE_KEYS = ("name", "description", "machine")
_REQUIRED_PROFILE_KEYS = ("name", "description")
DEFAULT_SOURCE = "builtin:default"


@dataclass(frozen=True)
class CostProfile:
    """A named set of per-event costs in nanoseconds, and the spread of service times."""

    name: str
    description: str
    machine: str | None
    source: str  # the file it was read from, or "builtin:default"
    costs: dict[str, float] = field(hash=False)
    spread: dict[str, float] = field(hash=False, default_factory=lambda: dict.fromkeys(
        SPREAD_KEYS, 0.0))
    host: dict[str, object] = field(hash=False, default_factory=dict)
    #: how each cost and spread was obtained (absent: the file did not say)
    provenance: dict[str, Provenance] = field(hash=False, default_factory=dict)

    def as_array(self) -> np.ndarray:
        """The costs as float64, in :data:`COST_KEYS` order."""
        return np.array([self.costs[k] for k in COST_KEYS], dtype=np.float64)

    def with_costs(self, **changes: float) -> CostProfile:
        """The same profile with some costs (or spreads) changed, named after the change."""
        costs = {k: changes.get(k, v) for k, v in self.costs.items()}
        spread = {k: changes.get(k, v) for k, v in self.spread.items()}
        unknown = set(changes) - set(costs) - set(spread)
        if unknown:
            raise InputError(f"unknown cost key {sorted(unknown)[0]!r}")
        what = ", ".join(f"{k}={v:g}" for k, v in changes.items())
        return CostProfile(self.name, f"{self.description} ({what})", self.machine,
                           f"{self.source} [{what}]", costs, spread, dict(self.host),
                           dict(self.provenance))

    def values(self) -> dict[str, float]:
        """Every cost and spread by key."""
        return {**self.costs, **self.spread}

    def kind(self, key: str) -> str:
        """How ``key``'s value was obtained; a value carried from the default profile is
        an assumption where the default marks it so."""
        mark = self.provenance.get(key, Provenance("unmarked"))
        if mark.kind == "carried":
            default = load_profile().provenance.get(key, Provenance("unmarked"))
            return "assumption" if default.kind == "assumption" else "carried"
        return mark.kind


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


def profile_toml(profile: CostProfile, comments: dict[str, str] | None = None,
                 header: tuple[str, ...] = ("pinbench cost profile: nanoseconds per event",)
                 ) -> str:
    """The TOML text of ``profile`` (one comment line above each key that has one)."""
    comments = comments or {}

    def commented(key: str, line: str) -> list[str]:
        note = comments.get(key)
        return ([_comment(f"# {note}")] if note else []) + [line]

    lines = [_comment(f"# {h}") for h in header] + [""]
    for key in COST_KEYS:
        lines += commented(key, f"{key} = {float(profile.costs[key])!r}")
    lines += ["", "[spread]"]
    for key in SPREAD_KEYS:
        lines += commented(key, f"{key} = {float(profile.spread[key])!r}")
    if profile.host:
        lines += ["", "[host]"]
        for key, value in profile.host.items():
            text = ("true" if value else "false") if isinstance(value, bool) else _toml_str(
                str(value))
            lines += commented(f"host.{key}", f"{key} = {text}")
    lines += ["", "[profile]", f"name = {_toml_str(profile.name)}",
              f"description = {_toml_str(profile.description)}"]
    if profile.machine is not None:
        lines.append(f"machine = {_toml_str(profile.machine)}")
    return "\n".join(lines) + "\n"


def write_profile(profile: CostProfile, path: str | Path) -> None:
    """Write ``profile`` as TOML that :func:`load_profile` reads back equal."""
    _check_costs(profile.costs, str(path), "")
    Path(path).write_text(profile_toml(profile), encoding="utf-8")


def modelled_ns(counters: dict[str, int], profile: CostProfile) -> float:
    """Σ count * cost over the counters that cost time, run serially on one CPU."""
    total = 0.0
    for name, (key, scale) in EVENT_COST.items():
        total += counters.get(name, 0) * scale * profile.costs[key]
    return total


def _comment(text: str) -> str:
    # A TOML comment may not hold control characters other than tab; keep it one line.
    return "".join(c if c == "\t" or (ord(c) >= 0x20 and c != "\x7f") else " " for c in text)


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

    tables = ("profile", "spread", "host")
    costs = {k: v for k, v in doc.items() if k not in tables}
    carried = [k for k in CARRIED_IF_MISSING if k not in costs]
    if carried and source != DEFAULT_SOURCE:
        default = load_profile()
        costs.update({k: default.costs[k] for k in carried})
    _check_costs(costs, source, text)
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
    spread = doc.get("spread")
    if not isinstance(spread, dict):
        raise InputError(f"{source}: missing [spread] table (keys {', '.join(SPREAD_KEYS)}: "
                         "the coefficients of variation of the vCPU model's service times)")
    _check_numbers(spread, SPREAD_KEYS, source, text, "spread.", "coefficient of variation")
    host = doc.get("host", {})
    if not isinstance(host, dict):
        raise InputError(f"{source}: host must be a table")
    for key, value in host.items():
        if key not in HOST_KEYS:
            raise InputError(f"{_where(source, text, key)}: unknown key 'host.{key}' "
                             f"(allowed: {', '.join(HOST_KEYS)})")
        if not isinstance(value, HOST_KEYS[key]):
            raise InputError(f"{_where(source, text, key)}: host.{key} must be a "
                             f"{HOST_KEYS[key].__name__}, got {value!r}")
    return CostProfile(
        name=meta["name"],
        description=meta["description"],
        machine=meta.get("machine"),
        source=source,
        costs={k: float(costs[k]) for k in COST_KEYS},
        spread={k: float(spread[k]) for k in SPREAD_KEYS},
        host=dict(host),
        provenance={**provenance(text), **dict.fromkeys(carried, Provenance("carried"))},
    )


_MARKS = {"assumption:": "assumption", "measured:": "measured", "carried:": "carried"}
_KEY_LINE = re.compile(r"^\s*([A-Za-z_]+)\s*=")
_RANGE = re.compile(r"\((\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)-(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\)\s*$")


def provenance(text: str) -> dict[str, Provenance]:
    """How each cost and spread of a profile's TOML text was obtained, from the comment
    block right above its line (blank lines end a block): "ASSUMPTION:", "measured:"
    with its "(min-max)" at the end, "carried:", any other comment a source, none
    "unmarked" (left out)."""
    out: dict[str, Provenance] = {}
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            block.append(stripped.lstrip("#").strip())
            continue
        key = _KEY_LINE.match(line)
        if key and key.group(1) in COST_KEYS + SPREAD_KEYS and block:
            first = block[0].lower()
            kind = next((k for prefix, k in _MARKS.items() if first.startswith(prefix)),
                        "sourced")
            low = high = None
            span = _RANGE.search(" ".join(block)) if kind == "measured" else None
            if span:
                low, high = sorted((float(span.group(1)), float(span.group(2))))
            out[key.group(1)] = Provenance(kind, low, high)
        block = []
    return out


def _check_costs(costs: dict, source: str, text: str) -> None:
    _check_numbers(costs, COST_KEYS, source, text, "", "number of nanoseconds")


def _check_numbers(values: dict, keys: tuple[str, ...], source: str, text: str, prefix: str,
                   what: str) -> None:
    for key in keys:
        if key not in values:
            old = [k for k in values if k in REPLACED_KEYS]
            hint = (f"; {old[0]!r} is no longer a key: it became {REPLACED_KEYS[old[0]]} "
                    "(pinbench calibrate writes a current profile)" if old else "")
            raise InputError(f"{source}: missing key {prefix + key!r} "
                             f"(a profile needs all of: {', '.join(keys)}){hint}")
        value = values[key]
        # bool is an int subclass: `true` is not a cost.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{_where(source, text, key)}: {prefix}{key} must be a {what} "
                             f">= 0, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise InputError(f"{_where(source, text, key)}: {prefix}{key} must be a finite "
                             f"{what} >= 0, got {value!r}")
    for key in values:
        if key not in keys:
            raise InputError(f"{_where(source, text, key)}: unknown key {prefix + key!r} "
                             f"(allowed: {', '.join(keys)})")


def _where(source: str, text: str, key: str) -> str:
    """``source:line`` of the line assigning ``key`` (best effort; ``source`` if not found)."""
    pattern = re.compile(rf"""^\s*(?:{re.escape(key)}|"{re.escape(key)}"|'{re.escape(key)}')\s*=""")
    for lineno, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return f"{source}:{lineno}"
    return source

"""Benchmark configurations and suites: what ``pinbench run`` runs, read from TOML."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

from pinning.model.units import LEVELS, PAGE_SIZE, InputError, format_size, parse_size, unit_pages

FAMILIES = ("startup", "fault_storm", "remap", "teardown", "lifecycle")
#: Where guest memory lives: the sim's arrays only; a real anonymous mapping beside the
#: sim's bookkeeping (DESIGN §3 method 2); a real KVM guest through /dev/kvm (method 3).
BACKINGS = ("sim", "real", "kvm")
#: Host memory before each measured value of a real backing: warmed (populated and freed
#: right before) or cold (left idle so this VM's host has reclaimed it; HOST.md).
HOST_STATES = ("warm", "cold")
STRATEGY_NAMES = ("upfront", "demand")
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark: a workload family and every parameter of its run."""

    workload: str
    strategy: str
    guest_size: int  # bytes
    level: str = "4k"
    vcpus: int = 1
    pattern: str = "sequential"
    layout: str = "slices"
    touch_fraction: float = 1.0
    seed: int = 0
    backing: str = "sim"
    remap_fraction: float = 0.1
    host: str = "warm"

    @property
    def guest_pages(self) -> int:
        return self.guest_size // PAGE_SIZE

    @property
    def name(self) -> str:
        """Stable, readable benchmark name, e.g. ``fault_storm/demand/64GiB/4k/4vcpu/random``."""
        parts = [self.workload, self.strategy, format_size(self.guest_size), self.level]
        if self.backing != "sim":
            parts.append(self.backing if self.host == "warm" else f"{self.backing}-cold")
        if self.workload in ("fault_storm", "lifecycle", "remap") or self.backing != "sim":
            parts.append(f"{self.vcpus}vcpu")
            parts.append(self.pattern if self.layout == "slices" else f"{self.pattern}-shared")
        if self.workload != "startup" and self.touch_fraction != 1.0:
            parts.append(f"touch{_pct(self.touch_fraction)}")
        if self.workload == "remap":
            parts.append(f"remap{_pct(self.remap_fraction)}")
        if self.seed != 0 and self.pattern != "sequential":
            parts.append(f"seed{self.seed}")
        return "/".join(parts)

    def to_argv(self) -> list[str]:
        """Command-line options of a bench script that reproduce this configuration."""
        argv = []
        for f in fields(self):
            if f.name == "workload":
                continue
            value = getattr(self, f.name)
            argv += [f"--{f.name.replace('_', '-')}", str(value)]
        return argv

    def params(self) -> dict[str, str | int | float]:
        """The parameters as pyperf metadata (``param.<name>``)."""
        return {f"param.{k}": v for k, v in asdict(self).items()}

    def check(self) -> None:
        """Refuse parameters the model cannot run, with one clear line."""
        _choice("workload", self.workload, FAMILIES)
        _choice("strategy", self.strategy, STRATEGY_NAMES)
        _choice("level", self.level, tuple(LEVELS))
        _choice("backing", self.backing, BACKINGS)
        from pinning.model.workloads import ACCESS_PATTERNS, LAYOUTS

        _choice("pattern", self.pattern, ACCESS_PATTERNS)
        _choice("layout", self.layout, LAYOUTS)
        unit_bytes = unit_pages(self.level) * PAGE_SIZE
        if self.guest_size <= 0 or self.guest_size % unit_bytes:
            raise InputError(f"guest_size {format_size(self.guest_size)} is not a positive "
                             f"multiple of the {self.level} mapping size")
        if not 1 <= self.vcpus <= 64:
            raise InputError(f"vcpus {self.vcpus} must lie between 1 and 64")
        for key in ("touch_fraction", "remap_fraction"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise InputError(f"{key} {getattr(self, key)} must lie between 0 and 1")
        if self.seed < 0:
            raise InputError(f"seed {self.seed} must not be negative")
        _choice("host", self.host, HOST_STATES)
        if self.backing == "sim":
            if self.host != "warm":
                raise InputError("host 'cold' needs a real backing (real or kvm): the sim "
                                 "touches no guest memory")
            return
        if self.level not in ("4k", "2m"):
            raise InputError(f"backing {self.backing!r} needs level 4k or 2m (host pages of "
                             f"4 KiB or transparent huge pages), not {self.level!r}")
        if self.workload == "remap":
            raise InputError(f"the remap family runs on the sim backing only, not "
                             f"{self.backing!r}")
        if self.backing == "kvm":
            if self.pattern not in ("sequential", "random") or self.layout != "slices":
                raise InputError(f"backing 'kvm' runs patterns sequential and random with "
                                 f"layout slices, not {self.pattern!r}/{self.layout!r}")
            if self.touch_fraction <= 0:
                raise InputError("backing 'kvm' needs touch_fraction > 0")


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def _choice(key: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise InputError(f"{key} {value!r} is not one of {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class Suite:
    """A named list of benchmarks with pyperf's run settings."""

    name: str
    source: str
    benchmarks: tuple[BenchConfig, ...]
    processes: int = 2
    values: int = 3
    warmups: int = 0
    cost_profile: str | None = None


SUITE_KEYS = {"name", "description", "processes", "values", "warmups", "cost_profile"}
BENCH_KEYS = {f.name for f in fields(BenchConfig)}


def builtin_suites() -> list[str]:
    """Names of the suites shipped with pinbench."""
    return sorted(p.name.removesuffix(".toml")
                  for p in resources.files("pinning.harness.suites").iterdir()
                  if p.name.endswith(".toml"))


def load_suite(spec: str) -> Suite:
    """Load a suite by builtin name (``quick``, ``full``) or from a TOML file."""
    if spec in builtin_suites():
        ref = resources.files("pinning.harness.suites") / f"{spec}.toml"
        return parse_suite(ref.read_text(), f"builtin:{spec}")
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"suite {spec!r} is neither a builtin suite "
                         f"({', '.join(builtin_suites())}) nor a readable file")
    return parse_suite(path.read_text(), str(path))


def parse_suite(text: str, source: str) -> Suite:
    """Parse suite TOML; every error names the source, the key and what is allowed."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: not valid TOML ({exc})") from None
    unknown = set(doc) - {"suite", "benchmark"}
    if unknown:
        raise InputError(f"{source}: unknown table {sorted(unknown)[0]!r} "
                         "(allowed: suite, benchmark)")
    head = doc.get("suite", {})
    for key in head:
        if key not in SUITE_KEYS:
            raise InputError(f"{source}: [suite] unknown key {key!r} "
                             f"(allowed: {', '.join(sorted(SUITE_KEYS))})")
    for key in ("processes", "values"):
        if key in head and (not isinstance(head[key], int) or head[key] < 1):
            raise InputError(f"{source}: [suite] {key} must be a positive integer")
    if "warmups" in head and (not isinstance(head["warmups"], int) or head["warmups"] < 0):
        raise InputError(f"{source}: [suite] warmups must be a non-negative integer")
    configs: list[BenchConfig] = []
    for i, table in enumerate(doc.get("benchmark", []), start=1):
        configs.extend(_expand(table, f"{source}: [[benchmark]] #{i}"))
    if not configs:
        raise InputError(f"{source}: the suite has no benchmark")
    names = [c.name for c in configs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{source}: benchmark {dupes[0]!r} is listed twice")
    return Suite(
        name=head.get("name", Path(source.removeprefix("builtin:")).stem),
        source=source,
        benchmarks=tuple(configs),
        processes=head.get("processes", 2),
        values=head.get("values", 3),
        warmups=head.get("warmups", 0),
        cost_profile=head.get("cost_profile"),
    )


def _expand(table: dict, where: str) -> list[BenchConfig]:
    """A [[benchmark]] table whose values may be lists: their cartesian product."""
    for key in table:
        if key not in BENCH_KEYS:
            raise InputError(f"{where}: unknown key {key!r} "
                             f"(allowed: {', '.join(sorted(BENCH_KEYS))})")
    for key in ("workload", "strategy", "guest_size"):
        if key not in table:
            raise InputError(f"{where}: missing key {key!r}")
    keys = list(table)
    lists = [v if isinstance(v, list) else [v] for v in table.values()]
    out = []
    for combo in itertools.product(*lists):
        try:
            kw = {k: _coerce(k, v) for k, v in zip(keys, combo, strict=True)}
            config = BenchConfig(**kw)
            config.check()
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        out.append(config)
    return out


_INT_KEYS = {"vcpus", "seed"}
_FLOAT_KEYS = {"touch_fraction", "remap_fraction"}


def _coerce(key: str, value):
    """Check a TOML value's type for ``key``; sizes may be strings like ``64GiB``."""
    if key == "guest_size":
        return parse_size(str(value), "guest_size")
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{key} must be an integer, got {value!r}")
        return value
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise InputError(f"{key} must be a string, got {value!r}")
    return value

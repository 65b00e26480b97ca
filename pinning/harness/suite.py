"""Suites: what ``pinbench run`` runs, read from TOML (builtin ones in ``suites/``).

A ``[[benchmark]]`` table's keys are :class:`~pinning.model.config.BenchConfig`'s fields;
each value is read by the field's own rule, and each configuration is validated against
its backing (:func:`pinning.harness.backings.validate`) when the suite is read.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path

from pinning.harness.backings import validate
from pinning.model.config import BenchConfig, family_defaults, parse_value
from pinning.model.names import InputError


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
            kw = {k: parse_value(k, v) for k, v in zip(keys, combo, strict=True)}
            config = BenchConfig(**{**family_defaults(kw["workload"]), **kw})
            validate(config)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        out.append(config)
    return out

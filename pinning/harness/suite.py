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

from pinning.harness.backings import COLD_WAIT_S, validate
from pinning.model import strategies
from pinning.model.config import BenchConfig, family_defaults, parse_value
from pinning.model.names import RUN_PHASES, InputError
from pinning.model.units import PAGE_SIZE, unit_pages
from pinning.model.workloads import BOOT_WORKING_SET, STRUCT_PAGE_BYTES


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
    #: ``I/N`` when this is one shard of a suite (:func:`pinning.harness.shard.select`)
    shard: str | None = None
    #: with ``shard``: a digest of the whole suite it was cut from, so that ``pinbench
    #: merge`` refuses shards cut from different versions of a suite
    split: str | None = None

    def estimated_s(self, config: BenchConfig) -> float:
        """Rough wall seconds ``pinbench run`` takes for one of this suite's benchmarks
        (:func:`estimate_s` with the suite's processes, values and warmups)."""
        return estimate_s(config, processes=self.processes, values=self.values,
                          warmups=self.warmups)


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


# The constants of estimate_s: a least-squares fit (rounded) to the wall time of each
# benchmark of a quick-suite run on the 2-core reference VM (results/quick-reference.json
# and its run log; each benchmark within 0.7-1.5x, the suite's total within 1 %), and for
# the real backings to the ground suite's durations (results/ground-reference.json).
#: One process of a benchmark: interpreter start, imports, numba cache load, pyperf.
PROCESS_S = 1.6
#: Per lifecycle, per GiB of guest: the memslot's arrays at startup and teardown.
GUEST_GIB_S = 0.003
#: Per lifecycle, per guest access the vCPU model runs (a fault or a touch), in a
#: scattered order (random, hotset, zipf, strided)...
ACCESS_S = 0.25e-6
#: ...and in ascending order, which the caches follow (sequential, boot).
ASCENDING_ACCESS_S = 0.1e-6
ASCENDING_PATTERNS = ("sequential", "boot")
#: Per lifecycle, per GiB of guest, on a real backing: real memory populated and faulted
#: (4 KiB pages fault one at a time; a real KVM guest also exits per fault), by backing:
#: (at 4k, at 2m or 1g).
REAL_GIB_S: dict[str, tuple[float, float]] = {"real": (1.2, 0.5), "kvm": (4.0, 0.5)}


def guest_accesses(config: BenchConfig) -> int:
    """How many accesses the vCPU model runs in one lifecycle of ``config``.

    The touched fraction of the guest's units in the access phase; the remap family
    and convert families touch everything once more after the remap or conversion; the
    boot pattern touches its fixed working set and the guest's memory map
    (:func:`pinning.model.workloads.boot_units`, counted without building it), or under
    guest_memfd with eager acceptance all of memory.
    """
    phases = RUN_PHASES[config.workload]
    if "access" not in phases:
        return 0
    upages = unit_pages(config.level)
    n_units = config.guest_pages // upages
    if config.pattern == "boot" and strategies.get(config.strategy).guest_memfd and (
            config.acceptance == "eager"):
        per_pass = n_units  # all of memory accepted, i.e. touched, at boot
    elif config.pattern == "boot":
        working = min(config.guest_pages, BOOT_WORKING_SET // PAGE_SIZE)
        memmap = -(-config.guest_pages // (PAGE_SIZE // STRUCT_PAGE_BYTES))
        per_pass = min(n_units, -(-working // upages) + -(-memmap // upages))
    else:
        per_pass = int(n_units * config.touch_fraction)
    return per_pass * (2 if "remap" in phases or "convert" in phases else 1)


def estimate_s(config: BenchConfig, *, processes: int, values: int, warmups: int) -> float:
    """Rough wall seconds one benchmark takes under ``pinbench run``: what the progress
    line's ETA is computed from, so that a suite whose benchmarks grow is not estimated
    from its small first ones.

    Each worker process starts (``PROCESS_S``; with 2 or more workers pyperf's manager
    process starts too) and runs ``values + warmups + 1`` lifecycles (the values, the
    warmups and the untimed run that records the events). A lifecycle costs
    ``GUEST_GIB_S`` per GiB of guest, ``ACCESS_S`` per access of the vCPU model
    (:func:`guest_accesses`; ``ASCENDING_ACCESS_S`` for a pattern that touches the units
    in ascending order) and, on a real backing, ``REAL_GIB_S`` per GiB; a cold host
    idles ``COLD_WAIT_S`` before each value. It is an estimate of this harness's speed on
    a 2-core VM, not a cost of pinning: only ratios between benchmarks matter to the ETA.
    """
    gib = config.guest_size / (1 << 30)
    per_access = ASCENDING_ACCESS_S if config.pattern in ASCENDING_PATTERNS else ACCESS_S
    lifecycle = GUEST_GIB_S * gib + per_access * guest_accesses(config)
    if config.backing != "sim":
        lifecycle += REAL_GIB_S[config.backing][config.level != "4k"] * gib
    idle = COLD_WAIT_S * (values + warmups) if config.host == "cold" else 0.0
    starts = processes + (1 if processes > 1 else 0)
    return starts * PROCESS_S + processes * ((values + warmups + 1) * lifecycle + idle)

"""Load pinbench results (pyperf JSON) into tidy pandas frames.

One row per benchmark (or per value). Columns: the benchmark's parameters, the
statistics of its wall time (seconds) and ``wall_kind``, the kind of time that wall
time is (:data:`pinning.model.names.TIME_KINDS`): ``measured`` on the real and kvm
backings, ``simulator`` (simulator speed: pinbench's own bookkeeping, never a cost of
pinning) on the sim; then the **modelled** quantities from its metadata (event
counts, modelled time per phase, the vCPU model's scalars) and the machine's
metadata. The per-fault latency
quantiles and the pinned-pages timelines stay as their metadata strings in
``vcpu_<phase>_latency_quantiles_ns`` / ``vcpu_<phase>_timeline`` and are parsed on
demand by :func:`latency_quantiles` and :func:`timeline`.
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyperf

from pinning.analysis.summary import wall_kinds
from pinning.model.config import option, option_fields
from pinning.model.names import (
    COUNTERS,
    PHASES,
    READABLE_SCHEMAS,
    TIME_KINDS,
    VCPU_PHASES,
    InputError,
    wall_kind,
)

#: Scalar outputs of the vCPU model per phase (``vcpu.<phase>.<field>``).
VCPU_FIELDS = ("faults", "accesses", "makespan_ns", "faults_per_s", "lock_wait_ns",
               "lock_hold_ns", "latency_p50_ns", "latency_p99_ns")
VCPU_STRINGS = ("latency_quantiles_ns", "timeline")
#: Benchmark parameters (``param.<name>``): BenchConfig's fields and their types.
PARAMS: dict[str, type] = {f.name: option(f).type for f in option_fields()}
MACHINE = ("cpu_model_name", "hostname", "platform", "cpu_count", "date")
STATS = ("median_s", "iqr_s", "mean_s", "std_s", "n")
#: The kinds of wall time a row may have (``wall_kind``): TIME_KINDS but the modelled.
WALL_KINDS = tuple(k for k in TIME_KINDS if k != "modelled")


def load_results(paths: str | Path | Sequence[str | Path], *, values: bool = False,
                 warmups: bool = False) -> pd.DataFrame:
    """Tidy frame of one or more pinbench results files.

    One row per benchmark; with ``values=True`` one row per value (columns ``run``,
    ``value_index``, ``value_s``, ``is_warmup``), and with ``warmups=True`` also the
    warmup values (``is_warmup`` True). ``wall_kind`` says what every row's wall time
    (``median_s``, ``value_s``, ...) is: ``measured`` or ``simulator`` (see
    :func:`of_kind`). Raises InputError (one line naming
    the file) for a file that is missing, not JSON, not pyperf, not pinbench's,
    of another schema version or without benchmarks.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    rows: list[dict[str, Any]] = []
    for path in paths:
        for bench in read_suite(path).get_benchmarks():
            row = benchmark_row(bench, str(path))
            if not values:
                rows.append(row)
                continue
            for run_i, run in enumerate(bench.get_runs()):
                if warmups:
                    for w_i, (loops, raw) in enumerate(run.warmups):
                        inner = bench.get_metadata().get("inner_loops", 1)
                        rows.append({**row, "run": run_i, "value_index": w_i,
                                     "value_s": raw / (loops * inner), "is_warmup": True})
                for v_i, v in enumerate(run.values):
                    rows.append({**row, "run": run_i, "value_index": v_i, "value_s": v,
                                 "is_warmup": False})
    if not rows:
        raise InputError("no results file given")
    return _tidy(pd.DataFrame(rows))


def of_kind(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The rows of ``df`` whose wall time is of ``kind`` ('measured' or 'simulator').

    What a measured fit, break-even or plot may use: ``of_kind(df, "measured")`` holds
    only the real and kvm backings' rows, never simulator speed.
    """
    if kind not in WALL_KINDS:
        raise InputError(f"wall-time kind {kind!r} is not one of {', '.join(WALL_KINDS)}")
    return df[wall_kinds(df) == kind]


def read_suite(path: str | Path) -> pyperf.BenchmarkSuite:
    """A pinbench results file as a pyperf BenchmarkSuite, checked (see load_results)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such results file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                text = fh.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"{path}: cannot read results file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # a string or document that runs into the end of the file: cut short
        cut = exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")
        what = "truncated JSON" if cut and text.strip() else "not JSON"
        raise InputError(f"{path}: {what} (line {exc.lineno} column {exc.colno}: "
                         f"{exc.msg}); not a pyperf results file") from None
    if not isinstance(data, dict) or "benchmarks" not in data or "version" not in data:
        raise InputError(f"{path}: JSON but not a pyperf results file "
                         "(no 'version' and 'benchmarks')")
    if not data["benchmarks"]:
        raise InputError(f"{path}: the results file has no benchmark (empty suite)")
    try:
        suite = pyperf.BenchmarkSuite.loads(text)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a valid pyperf results file ({exc})") from None
    for bench in suite.get_benchmarks():
        schema = bench.get_metadata().get("pinbench.schema")
        if schema is None:
            raise InputError(f"{path}: benchmark {bench.get_name()!r} has no pinbench.schema "
                             "metadata: not a pinbench results file")
        try:
            version = int(schema)
        except (TypeError, ValueError):
            version = None
        if version not in READABLE_SCHEMAS:
            raise InputError(f"{path}: results schema version {schema!r} "
                             f"(benchmark {bench.get_name()!r}); this pinbench reads "
                             f"schemas {', '.join(map(str, READABLE_SCHEMAS))}")
    return suite


def benchmark_row(bench: pyperf.Benchmark, file: str = "") -> dict[str, Any]:
    """The columns of one benchmark (events and vCPU keys as found; _tidy fills the rest)."""
    md = bench.get_metadata()
    vals = np.asarray(bench.get_values(), dtype=float)
    row: dict[str, Any] = {
        "file": file,
        "suite": md.get("pinbench.suite"),
        "name": bench.get_name(),
        "family": md.get("pinbench.family", md.get("param.workload")),
    }
    for key, typ in PARAMS.items():
        row[key] = _typed(md.get(f"param.{key}"), typ)
    size = row["guest_size"]
    row["guest_gib"] = size / 2**30 if size is not None else math.nan
    row["wall_kind"] = wall_kind(row["backing"])
    if len(vals):
        q25, q50, q75 = np.percentile(vals, [25, 50, 75])
        row.update(median_s=float(q50), iqr_s=float(q75 - q25), mean_s=float(vals.mean()),
                   std_s=float(vals.std(ddof=1)) if len(vals) > 1 else math.nan, n=len(vals))
    else:
        row.update(median_s=math.nan, iqr_s=math.nan, mean_s=math.nan, std_s=math.nan, n=0)
    ran = []
    for key, value in md.items():
        parts = key.split(".")
        if parts[0] == "events" and len(parts) == 3:
            row[f"events_{parts[1]}_{parts[2]}"] = value
            if parts[1] not in ran:
                ran.append(parts[1])
        elif parts[0] == "model" and len(parts) == 2 and parts[1].endswith("_ns"):
            row[f"model_{parts[1]}"] = float(value)
        elif parts[0] == "kvm" and len(parts) >= 2:  # the real VM's own measurements
            row["_".join(parts)] = value
        elif parts[0] == "vcpu" and len(parts) == 3:
            if parts[2] in VCPU_STRINGS:
                row[f"vcpu_{parts[1]}_{parts[2]}"] = str(value)
            elif parts[2] in VCPU_FIELDS:
                row[f"vcpu_{parts[1]}_{parts[2]}"] = float(value)
    row["phases_run"] = ",".join(p for p in PHASES if p in ran) + "".join(
        f",{p}" for p in ran if p not in PHASES)
    row["measured_phases"] = md.get("measured.phases")
    row["cost_profile"] = md.get("cost.profile")
    row["pinbench_version"] = md.get("pinbench.version")
    row["schema"] = int(md.get("pinbench.schema"))  # checked by read_suite
    row["error"] = md.get("error")
    for key in MACHINE:
        row[key] = md.get(key)
    if row["date"] is None:
        dates = [r.get_metadata().get("date") for r in bench.get_runs()]
        dates = [d for d in dates if d]
        row["date"] = min(dates) if dates else None
    return row


def _typed(value: Any, typ: type) -> Any:
    if value is None:
        return None
    try:
        return typ(value)
    except (TypeError, ValueError):
        return None


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    """Fill every known column: events 0 where a phase did not run, other numbers NaN."""
    seen = {c.split("_")[1] for c in df.columns if c.startswith(("events_", "vcpu_"))}
    phases = list(PHASES) + sorted(seen - set(PHASES))
    seen_vcpu = {c.split("_")[1] for c in df.columns if c.startswith("vcpu_")}
    vcpu_phases = [ph for ph in phases if ph in VCPU_PHASES or ph in seen_vcpu]
    fill: dict[str, Any] = {}
    for ph in phases:
        for counter in COUNTERS:
            fill[f"events_{ph}_{counter}"] = 0
        fill[f"model_{ph}_ns"] = 0.0  # a phase that did not run cost nothing
    fill["model_total_ns"] = fill["model_measured_ns"] = math.nan
    for ph in vcpu_phases:
        for fld in VCPU_FIELDS:
            fill[f"vcpu_{ph}_{fld}"] = math.nan
        for fld in VCPU_STRINGS:
            fill[f"vcpu_{ph}_{fld}"] = None
    missing = {k: [v] * len(df) for k, v in fill.items() if k not in df}
    df = pd.concat([df, pd.DataFrame(missing, index=df.index)], axis=1)
    df = df.fillna({k: v for k, v in fill.items() if v is not None and not (
        isinstance(v, float) and math.isnan(v))})
    # one astype for all counters: a column at a time fragments the frame into ~100 blocks
    df = df.astype({c: "int64" for c in df.columns if c.startswith("events_")})
    for key, typ in PARAMS.items():
        if typ is str:
            continue
        col = pd.to_numeric(df[key], errors="coerce")
        df[key] = col.astype("int64") if typ is int and col.notna().all() else col.astype(float)
    df["cpu_count"] = pd.to_numeric(df["cpu_count"], errors="coerce")
    if df["cpu_count"].notna().all():
        df["cpu_count"] = df["cpu_count"].astype("int64")
    head = ["file", "suite", "name", "family", *PARAMS, "guest_gib", *STATS, "wall_kind"]
    if "value_s" in df:
        head += ["run", "value_index", "value_s", "is_warmup"]
    events = sorted(c for c in df.columns if c.startswith("events_"))
    model = [f"model_{ph}_ns" for ph in phases] + ["model_total_ns", "model_measured_ns"]
    vcpu = sorted(c for c in df.columns if c.startswith("vcpu_"))
    rest = [c for c in df.columns if c not in {*head, *events, *model, *vcpu}]
    # copy(): one block per dtype, not one per column added (pandas' PerformanceWarning)
    return df[head + events + model + vcpu + rest].reset_index(drop=True).copy()


def _lookup(row_or_metadata: Mapping[str, Any] | pd.Series, phase: str, field: str) -> Any:
    """``vcpu_<phase>_<field>`` of a frame row or ``vcpu.<phase>.<field>`` of pyperf metadata."""
    for key in (f"vcpu_{phase}_{field}", f"vcpu.{phase}.{field}"):
        if key in row_or_metadata:
            value = row_or_metadata[key]
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                return value
    name = row_or_metadata.get("name", "benchmark")
    raise InputError(f"{name}: no vcpu.{phase}.{field} in its metadata "
                     f"(the {phase} phase did not run the vCPU model, or had no fault)")


def latency_quantiles(row_or_metadata: Mapping[str, Any] | pd.Series,
                      phase: str = "access") -> np.ndarray:
    """The modelled per-fault latency quantiles (ns) at q = 0, 0.01 … 1: 101 values."""
    text = _lookup(row_or_metadata, phase, "latency_quantiles_ns")
    try:
        q = np.array([float(x) for x in str(text).split(",")])
    except ValueError:
        raise InputError(f"vcpu.{phase}.latency_quantiles_ns is not a list of numbers") from None
    if len(q) != 101:
        raise InputError(f"vcpu.{phase}.latency_quantiles_ns has {len(q)} values, not 101")
    return q


def timeline(row_or_metadata: Mapping[str, Any] | pd.Series, phase: str = "access"
             ) -> pd.DataFrame:
    """The modelled pinned pages over time of a phase: columns ``time_ns``, ``pinned_pages``."""
    text = _lookup(row_or_metadata, phase, "timeline")
    try:
        pairs = [p.split(",") for p in str(text).split(";") if p]
        t = [float(a) for a, _ in pairs]
        n = [int(float(b)) for _, b in pairs]
    except ValueError:
        raise InputError(f"vcpu.{phase}.timeline is not 'time_ns,pinned_pages;...'") from None
    return pd.DataFrame({"time_ns": np.array(t, dtype=float),
                         "pinned_pages": np.array(n, dtype=np.int64)})

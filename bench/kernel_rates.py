#!/usr/bin/env python3
"""How fast the model's kernels run, next to this machine's own memory rates.

Measures, in one run (medians of --repeat values, host memory warmed before each):
  * the machine: streaming int64 writes and random ``a[i] += 1`` over 2 GiB;
  * upfront startup (pages/s), demand sequential 4k faults/s, random 4k
    faults/s over a 64 GiB guest -- the engine's kernels, simulation bookkeeping, not
    real faults; and random faults through the vCPU model (the lifecycle's access path);
  * the same on the pure-Python reference model (tests/reference.py);
  * ``pinbench simulate --pattern sequential`` of a 1 TiB 4k guest, both
    strategies, each in its own process (wall time, phases, peak RSS);
  * the first call of the kernels in a new process, with an empty numba
    cache and with the cache the first process left.

Usage: python bench/kernel_rates.py [--quick] [--repeat N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pinning.backends.cpu import random_update, stream_write  # noqa: E402
from pinning.backends.hostmem import warm_host  # noqa: E402
from pinning.model import strategies  # noqa: E402
from pinning.model.config import BenchConfig  # noqa: E402
from pinning.model.costs import load_profile  # noqa: E402
from pinning.model.kernels import engine as K  # noqa: E402
from pinning.model.lifecycle import warm_up  # noqa: E402
from pinning.model.state import memory_needed, new_state, zero_metadata  # noqa: E402
from pinning.model.units import format_size  # noqa: E402
from pinning.model.vcpu import run_workload  # noqa: E402
from pinning.model.workloads import Phase, Workload, random_units  # noqa: E402

GiB = 1 << 30


def median_of(fn, repeat: int) -> tuple[float, float, float]:
    """(median, min, max) of ``repeat`` calls of ``fn`` returning a rate."""
    values = [fn() for _ in range(repeat)]
    return statistics.median(values), min(values), max(values)


def machine_rates(nbytes: int, repeat: int) -> dict:
    """Streaming-write and random-update rates of this machine over ``nbytes``."""
    a = np.zeros(nbytes // 8, dtype=np.int64)
    idx = np.random.default_rng(0).integers(0, a.shape[0], size=min(a.shape[0], 1 << 25))
    stream_write(a, 1)  # compiles, and populates the array outside the timed calls
    random_update(a[:8], idx[:8] % 8)

    def write() -> float:
        t = time.perf_counter()
        stream_write(a, 2)
        return a.shape[0] / (time.perf_counter() - t)

    def update() -> float:
        t = time.perf_counter()
        random_update(a, idx)
        return idx.shape[0] / (time.perf_counter() - t)

    w = median_of(write, repeat)
    u = median_of(update, repeat)
    return {"array_bytes": nbytes, "stream_write_words_per_s": w,
            "stream_write_bytes_per_s": tuple(x * 8 for x in w), "random_update_per_s": u}


def _op(op: int, npages: int = 0, units: np.ndarray | None = None) -> tuple:
    return (np.array([op], dtype=np.int8), np.zeros(1, dtype=np.int64),
            np.array([npages], dtype=np.int64),
            units if units is not None else np.zeros(0, dtype=np.uint32))


def model_rates(guest_pages: int, repeat: int) -> dict:
    """Upfront startup, demand sequential and random 4k fault rates of the engine's kernels,
    and random faults through the vCPU model (one vCPU)."""
    units = random_units(guest_pages, 1.0, 1)
    profile = load_profile()
    host = BenchConfig("fault_storm").host_params  # the default host: TDP MMU, coherent

    def run(strategy: str, pattern: str, phase: str) -> float:
        s = strategies.get(strategy)
        rules = np.array(s.rules(host, "4k"), dtype=np.int64)
        warm_host(memory_needed(s, guest_pages, "4k", 0, 4 * guest_pages))
        state = new_state(s, guest_pages, "4k")
        t = time.perf_counter()
        zero_metadata(state)
        K.run(state, rules, 1, K.NO_LIMIT, *_op(K.OP_STARTUP))
        elapsed = time.perf_counter() - t
        if phase == "access":
            t = time.perf_counter()
            if pattern == "sequential":
                K.run(state, rules, 1, K.NO_LIMIT, *_op(K.OP_ACCESS_RANGE, guest_pages))
            else:
                K.run(state, rules, 1, K.NO_LIMIT, *_op(K.OP_ACCESS_UNITS, guest_pages, units))
            elapsed = time.perf_counter() - t
        elif phase == "vcpu":
            work = Workload((Phase(units, np.array([0, guest_pages], dtype=np.int64)),), 1)
            t = time.perf_counter()
            run_workload(state, strategy, "4k", work, profile, host=host)
            elapsed = time.perf_counter() - t
        return guest_pages / elapsed

    return {
        "guest_pages": guest_pages,
        "upfront_startup_pages_per_s": median_of(
            lambda: run("upfront", "sequential", "startup"), repeat),
        "demand_sequential_faults_per_s": median_of(
            lambda: run("demand", "sequential", "access"), repeat),
        "demand_random_faults_per_s": median_of(
            lambda: run("demand", "random", "access"), repeat),
        "upfront_random_faults_per_s": median_of(
            lambda: run("upfront", "random", "access"), repeat),
        "vcpu_model_demand_random_faults_per_s": median_of(
            lambda: run("demand", "random", "vcpu"), repeat),
    }


def reference_rates(guest_pages: int, repeat: int) -> dict:
    """The same rates on the pure-Python reference model (tests/reference.py)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from reference import RefVM

    order = np.arange(guest_pages, dtype=np.uint32)
    np.random.default_rng(1).shuffle(order)
    patterns = {"sequential": range(guest_pages), "random": order.tolist()}

    def startup() -> float:
        vm = RefVM("upfront", guest_pages, 1, None)
        t = time.perf_counter()
        vm.startup()
        return guest_pages / (time.perf_counter() - t)

    def faults(strategy: str, pattern: str) -> float:
        vm = RefVM(strategy, guest_pages, 1, None)
        vm.startup()
        t = time.perf_counter()
        for gfn in patterns[pattern]:
            vm.access(gfn)
        return guest_pages / (time.perf_counter() - t)

    return {
        "guest_pages": guest_pages,
        "upfront_startup_pages_per_s": median_of(startup, repeat),
        "demand_sequential_faults_per_s": median_of(lambda: faults("demand", "sequential"),
                                                    repeat),
        "demand_random_faults_per_s": median_of(lambda: faults("demand", "random"), repeat),
        "upfront_random_faults_per_s": median_of(lambda: faults("upfront", "random"), repeat),
    }


def one_tib(size: str) -> list[dict]:
    """``pinbench simulate --pattern sequential`` end to end, each strategy in its own process."""
    out = []
    for strategy in ("upfront", "demand"):
        t = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pinning", "simulate", "--strategy", strategy,
             "--guest-size", size, "--pattern", "sequential", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.stdout.read(), proc.stderr.read()
        # wait4 gives this child's own peak RSS, not the maximum over all children.
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            out.append({"strategy": strategy, "size": size, "failed": stderr.strip()})
            continue
        res = json.loads(stdout)
        out.append({"strategy": strategy, "size": size, "wall_s": wall,
                    "elapsed_ns": res["elapsed_ns"], "guest_pages": res["guest_pages"],
                    "pins": res["pins"], "error": res["error"],
                    "peak_rss_bytes": usage.ru_maxrss * 1024})
    return out


def jit_first_call() -> dict:
    """First call of the kernels in a new process: empty numba cache, then warm cache."""
    code = ("import time; from pinning.model.lifecycle import warm_up; "
            "t = time.perf_counter(); warm_up(); "
            "print(time.perf_counter() - t)")
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        times = []
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                  text=True, check=True, cwd=ROOT)
            times.append(float(proc.stdout.strip()))
    return {"empty_cache_s": times[0], "warm_cache_s": times[1]}


def fmt_rate(r: tuple[float, float, float]) -> str:
    return f"{r[0] / 1e6:,.1f} M/s ({r[1] / 1e6:,.1f}-{r[2] / 1e6:,.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    repeat = 2 if args.quick else args.repeat
    guest_pages = (64 * GiB if not args.quick else 64 << 20) // 4096
    warm_up()

    report: dict = {"repeat": repeat}
    report["machine"] = machine_rates(64 << 20 if args.quick else 2 * GiB, repeat)
    report["model"] = model_rates(guest_pages, repeat)
    report["reference"] = reference_rates(1024 if args.quick else 16384, min(repeat, 3))
    report["big"] = one_tib("64MiB" if args.quick else "1TiB")
    report["jit"] = jit_first_call()

    m, k, ref = report["machine"], report["model"], report["reference"]
    print(f"machine ({format_size(m['array_bytes'])} int64 array, median (min-max) of {repeat})")
    print(f"  streaming write       {fmt_rate(m['stream_write_words_per_s'])} words, "
          f"{m['stream_write_bytes_per_s'][0] / 1e9:.1f} GB/s")
    print(f"  random a[i] += 1      {fmt_rate(m['random_update_per_s'])}")
    print(f"model, {format_size(guest_pages * 4096)} guest at 4k (sim bookkeeping)"
          f"                     reference ({ref['guest_pages']} pages)      ratio")
    for key in ("upfront_startup_pages_per_s", "demand_sequential_faults_per_s",
                "demand_random_faults_per_s", "upfront_random_faults_per_s",
                "vcpu_model_demand_random_faults_per_s"):
        line = f"  {key:<32}{fmt_rate(k[key]):<34}"
        if key in ref:
            line += f"{fmt_rate(ref[key]):<28}{k[key][0] / ref[key][0]:>8,.0f}x"
        print(line)
    for big in report["big"]:
        if "failed" in big:
            print(f"  {big['size']} {big['strategy']}: FAILED {big['failed']}")
            continue
        ph = {p: v / 1e9 for p, v in big["elapsed_ns"].items()}
        print(f"  simulate {big['size']} {big['strategy']:<8} wall {big['wall_s']:.1f} s "
              f"(startup {ph['startup']:.2f} s, access {ph['access']:.2f} s, "
              f"teardown {ph['teardown']:.2f} s), peak RSS "
              f"{format_size(big['peak_rss_bytes'])}, error {big['error']}")
    j = report["jit"]
    print(f"  first call of the kernels: {j['empty_cache_s']:.2f} s with an empty numba cache, "
          f"{j['warm_cache_s']:.2f} s from the cache")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

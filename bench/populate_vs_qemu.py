#!/usr/bin/env python3
"""Upfront populate of the kvm backing next to QEMU's own preallocation, measured in one run.

For each guest size, ``--repeat`` rounds, each of (host warmed right before every step):
  * pinning.backends.kvm.run_vm(strategy="upfront") with THP and with 4 KiB backing: the time to
    populate guest RAM (MADV_POPULATE_WRITE) and to mlock it (the guest touches one page);
  * pinning.backends.qemu.start_to_qmp with prealloc=off and prealloc=on: QEMU's preallocation is
    the difference (QEMU backs preallocated RAM with huge pages where it can).
Prints medians (min-max) and the ratio kvm populate / QEMU prealloc per size; --json
writes everything. Needs /dev/kvm and qemu-system-x86_64 (apt-get install qemu-system-x86).

Usage: python bench/populate_vs_qemu.py [--sizes 2GiB,4GiB,8GiB] [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pinning.backends.hostmem import warm_host  # noqa: E402
from pinning.model.names import InputError  # noqa: E402
from pinning.model.units import format_size, parse_size  # noqa: E402


def _med(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def _fmt(d: dict[str, float]) -> str:
    return f"{d['median'] / 1e6:8.1f} ms ({d['min'] / 1e6:.1f}-{d['max'] / 1e6:.1f})"


def measure(size: int, repeat: int) -> dict[str, object]:
    """One size: every condition ``repeat`` times, interleaved round by round."""
    from pinning.backends import kvm, qemu

    out: dict[str, list[float]] = {k: [] for k in (
        "kvm_thp_populate_ns", "kvm_thp_lock_ns", "kvm_4k_populate_ns", "kvm_4k_lock_ns",
        "qemu_off_ns", "qemu_on_ns")}
    tiny = 1 / (size // 4096)  # the guest touches one page: only the setup matters here
    for _ in range(repeat):
        for backing in ("thp", "4k"):
            warm_host(size)
            run = kvm.run_vm(size, strategy="upfront", backing=backing, touch_fraction=tiny)
            if run.error:
                raise SystemExit(f"kvm upfront {backing} {format_size(size)}: {run.error}")
            out[f"kvm_{backing}_populate_ns"].append(run.populate_ns)
            out[f"kvm_{backing}_lock_ns"].append(run.lock_ns)
        for prealloc in (False, True):
            start = qemu.start_to_qmp(size, prealloc=prealloc, host="warm")
            out[f"qemu_{'on' if prealloc else 'off'}_ns"].append(start.ready_ns)
    qemu_prealloc = [on - off for on, off in zip(out["qemu_on_ns"], out["qemu_off_ns"],
                                                 strict=True)]
    res: dict[str, object] = {k: _med(v) for k, v in out.items()}
    res["qemu_prealloc_ns"] = _med(qemu_prealloc)
    q = statistics.median(qemu_prealloc)
    res["ratio_kvm_thp_populate_to_qemu_prealloc"] = (
        statistics.median(out["kvm_thp_populate_ns"]) / q if q > 0 else float("nan"))
    res["ratio_kvm_4k_populate_to_qemu_prealloc"] = (
        statistics.median(out["kvm_4k_populate_ns"]) / q if q > 0 else float("nan"))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2GiB,4GiB,8GiB")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    try:
        sizes = [parse_size(s, "guest size") for s in args.sizes.split(",")]
        if args.repeat < 1:
            raise InputError(f"--repeat {args.repeat} must be at least 1")
    except InputError as exc:
        print(f"populate_vs_qemu: error: {exc}", file=sys.stderr)
        return 2
    from pinning.backends.kvm import kvm_unavailable
    from pinning.backends.qemu import qemu_unavailable

    missing = kvm_unavailable() or qemu_unavailable()
    if missing:
        print(f"populate_vs_qemu: skipped: {missing}")
        return 0
    results = {}
    print(f"upfront populate, kvm backing vs QEMU prealloc (measured, warm host, median "
          f"(min-max) of {args.repeat})")
    for size in sizes:
        r = measure(size, args.repeat)
        results[format_size(size)] = r
        print(f"{format_size(size):>6}  kvm THP populate {_fmt(r['kvm_thp_populate_ns'])}  "
              f"+ mlock {_fmt(r['kvm_thp_lock_ns'])}")
        print(f"{'':>6}  kvm 4K  populate {_fmt(r['kvm_4k_populate_ns'])}  "
              f"+ mlock {_fmt(r['kvm_4k_lock_ns'])}")
        print(f"{'':>6}  QEMU start to QMP: prealloc off {_fmt(r['qemu_off_ns'])}, on "
              f"{_fmt(r['qemu_on_ns'])}; prealloc alone {_fmt(r['qemu_prealloc_ns'])}")
        print(f"{'':>6}  ratio kvm populate / QEMU prealloc: THP "
              f"{r['ratio_kvm_thp_populate_to_qemu_prealloc']:.2f}, 4K "
              f"{r['ratio_kvm_4k_populate_to_qemu_prealloc']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

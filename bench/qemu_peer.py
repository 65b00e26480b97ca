#!/usr/bin/env python3
"""pyperf benchmark. QEMU as a peer of backends/kvm.py: time from starting qemu-system-x86_64
(KVM, paused with -S) to a ready QMP monitor, with guest RAM preallocated (prealloc=on: QEMU
populates all of it upfront) or not (prealloc=off: the cost of starting QEMU alone).

One benchmark per size and prealloc, e.g. ``qemu/start_to_qmp/4GiB/prealloc-on``; the host's
memory is warmed (populated and freed, pinning.backends.hostmem.warm_host) before every value.

Example: python bench/qemu_peer.py --sizes 2GiB,4GiB,8GiB -o qemu.json
Options: --sizes (default 2GiB,4GiB,8GiB), --prealloc (default off,on), --skip-missing
(exit 0 with a "skipped" line where QEMU or /dev/kvm is missing, instead of exit 2), and
pyperf's own; a QEMU start is expensive, so the defaults are 1 process, 1 warmup, 3 values
of 1 loop (pyperf's --processes, --warmups, --values, --loops change them).
"""

from __future__ import annotations

import argparse
import sys

from pinning import __version__
from pinning.backends.qemu import (
    QemuError,
    check_guest_size,
    qemu_binary,
    qemu_command,
    qemu_unavailable,
    qemu_version,
    start_to_qmp,
)
from pinning.model.names import SCHEMA_VERSION, InputError
from pinning.model.units import format_size, parse_size

FAMILY = "qemu_peer"
DEFAULT_SIZES = "2GiB,4GiB,8GiB"
PREALLOC = {"off": False, "on": True}


def add_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("qemu_peer")
    g.add_argument("--sizes", default=DEFAULT_SIZES,
                   help=f"comma-separated guest sizes (default {DEFAULT_SIZES})")
    g.add_argument("--prealloc", default="off,on",
                   help="comma-separated prealloc settings, off and/or on (default off,on)")
    g.add_argument("--skip-missing", action="store_true",
                   help="exit 0 with one 'skipped' line where QEMU or /dev/kvm is missing")


def forward_options(cmd: list[str], args: argparse.Namespace) -> None:
    """pyperf's add_cmdline_args hook: workers must register the same benchmarks."""
    cmd.extend(["--sizes", args.sizes, "--prealloc", args.prealloc])


def parse_sizes(text: str) -> list[int]:
    """Guest sizes in bytes from ``2GiB,4GiB``, each checked against this host."""
    sizes = [parse_size(s, "guest size") for s in text.split(",") if s.strip()]
    if not sizes:
        raise InputError("--sizes is empty (e.g. --sizes 2GiB,4GiB)")
    for size in sizes:
        check_guest_size(size)
    return sizes


def parse_prealloc(text: str) -> list[bool]:
    """prealloc settings from ``off,on``."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in PREALLOC]
    if bad or not names:
        raise InputError(f"--prealloc {text!r}: use off, on or off,on")
    return [PREALLOC[n] for n in names]


def bench_name(size: int, prealloc: bool) -> str:
    return f"qemu/start_to_qmp/{format_size(size)}/prealloc-{'on' if prealloc else 'off'}"


def main() -> None:
    import pyperf

    # One start of an 8 GiB preallocated guest takes seconds: few, single-loop values.
    runner = pyperf.Runner(processes=1, warmups=1, values=3, loops=1,
                           add_cmdline_args=forward_options)
    add_options(runner.argparser)
    args = runner.parse_args()
    try:
        sizes = parse_sizes(args.sizes)
        preallocs = parse_prealloc(args.prealloc)
    except InputError as exc:
        print(f"{FAMILY}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    why = qemu_unavailable()
    if why is not None:
        if args.skip_missing:
            print(f"{FAMILY}: skipped: {why}")
            sys.exit(0)
        print(f"{FAMILY}: error: {why}", file=sys.stderr)
        sys.exit(2)

    version = qemu_version()
    binary = qemu_binary() or "qemu-system-x86_64"
    for size in sizes:
        for prealloc in preallocs:
            metadata: dict[str, int | float | str] = {
                "pinbench.schema": SCHEMA_VERSION,
                "pinbench.version": __version__,
                "pinbench.family": FAMILY,
                "param.guest_size": size,
                "param.prealloc": "on" if prealloc else "off",
                "qemu.version": version,
                "qemu.command": " ".join(
                    qemu_command(binary, size, prealloc, "<tmpdir>/qmp.sock")),
                "host.state": "warm",
                "unit": "second",
            }

            def time_func(loops: int, size: int = size, prealloc: bool = prealloc) -> float:
                total_ns = 0
                for _ in range(loops):
                    try:
                        # host="warm": start_to_qmp warms the host right before each start
                        total_ns += start_to_qmp(size, prealloc=prealloc, host="warm").ready_ns
                    except QemuError as exc:
                        print(f"{FAMILY}: error: {exc}", file=sys.stderr)
                        sys.exit(1)
                return total_ns / 1e9

            runner.bench_time_func(bench_name(size, prealloc), time_func, metadata=metadata)


if __name__ == "__main__":
    main()

"""The ``pinbench`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from pinning.model.units import (
    LEVELS,
    PAGE_SIZE,
    InputError,
    format_size,
    guest_pages_for,
    parse_size,
)
from pinning.model.workloads import PATTERNS, read_trace

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _size(what: str):
    def parse(text: str) -> int:
        try:
            return parse_size(text, what)
        except InputError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _memlock(text: str) -> int | None:
    if text.strip().lower() in ("unlimited", "none", "inf"):
        return None
    if text.strip() == "0":
        return 0
    return _size("memory-lock limit")(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"touch fraction {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"touch fraction {text} must lie between 0 and 1")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed {value} must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``pinbench`` subcommand."""
    parser = _Parser(prog="pinbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser(
        "simulate",
        help="run one modelled VM lifecycle (startup, operations, teardown) and print counters",
        description="Run startup, the guest's operations and teardown on the model and print "
        "the event counters (modelled) and the wall time of each phase (measured).",
    )
    sim.add_argument("--strategy", required=True, choices=("upfront", "demand"))
    sim.add_argument("--guest-size", required=True, type=_size("guest size"),
                     help="guest memory, e.g. 4GiB (KiB, MiB, GiB, TiB)")
    sim.add_argument("--level", default="4k", choices=tuple(LEVELS),
                     help="mapping level of host backing and nested mappings (default 4k)")
    sim.add_argument("--memlock-limit", type=_memlock, default=None, metavar="SIZE",
                     help="RLIMIT_MEMLOCK of the VMM (default: unlimited, as when privileged)")
    what = sim.add_mutually_exclusive_group(required=True)
    what.add_argument("--trace", metavar="FILE", help="CSV with header op,gfn,npages")
    what.add_argument("--pattern", choices=PATTERNS)
    sim.add_argument("--touch-fraction", type=_fraction, default=1.0, metavar="F",
                     help="fraction of the guest's units a pattern touches (default 1)")
    sim.add_argument("--seed", type=_seed, default=0, help="seed of the random pattern")
    sim.add_argument("--vcpus", type=int, default=1,
                     help="vCPUs touching memory with --backing real or --backend kvm")
    sim.add_argument("--backing", default="sim", choices=("sim", "real"),
                     help="guest memory of the model: the sim's arrays only (default), or "
                          "also a real anonymous mapping (populate + mlock at upfront "
                          "startup, real first-touch faults under demand)")
    sim.add_argument("--backend", default="model", choices=("model", "kvm"),
                     help="who runs the guest: the model (default) or a real KVM VM "
                          "through /dev/kvm (the model's events are printed beside it)")
    sim.add_argument("--host", default="warm", choices=("warm", "cold"),
                     help="host memory before a real run: warmed right before (default) or "
                          "left idle so the hypervisor below reclaims it")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.set_defaults(func=cmd_simulate)

    run = sub.add_parser(
        "run", help="run a benchmark suite under pyperf and write one results file",
        description="Run every benchmark of a suite (pyperf workers, measured wall time of the "
        "model plus modelled events and times in the metadata) and write one pyperf JSON file.")
    run.add_argument("--suite", default="quick", help="quick, ci, full or a suite TOML file")
    run.add_argument("-o", "--output", default=None, metavar="FILE",
                     help="results file (default results/<suite>-<date>.json)")
    run.add_argument("--force", action="store_true", help="overwrite an existing results file")
    run.add_argument("--cost-profile", default=None, metavar="FILE",
                     help="cost profile TOML for the modelled times (default: builtin)")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser(
        "report", help="tables and plots from results files: report.md, report.html, PNGs, CSV",
        description="Write report.md, a self-contained report.html, the PNGs and summary.csv "
        "from one or more pinbench results files, and print their paths.")
    rep.add_argument("results", nargs="+", metavar="RESULT.json")
    rep.add_argument("-o", "--output", default="report", metavar="DIR",
                     help="directory to write into (default ./report)")
    rep.add_argument("--profile", action="append", default=[], metavar="PROFILE.toml",
                     help="a cost profile (e.g. from pinbench calibrate) to set against the "
                          "published boot times beside the default; repeatable")
    rep.set_defaults(func=cmd_report)

    cmp = sub.add_parser(
        "compare", help="compare two results files with statistics; exit 1 on a regression",
        description="Compare every benchmark two results files share: medians of per-process "
        "medians, ratio with a 95%% two-stage bootstrap CI, Mann-Whitney U on per-process "
        "medians, Holm-adjusted over the benchmarks, verdict; modelled metrics exactly. "
        "Exit 0 when no "
        "benchmark is significantly slower by more than the threshold, 1 when one is, "
        "2 for unusable input.")
    cmp.add_argument("base", metavar="BASE.json")
    cmp.add_argument("head", metavar="HEAD.json")
    cmp.add_argument("--threshold", default="5%", help="slowdown that gates (default 5%%)")
    cmp.add_argument("--format", dest="fmt", choices=("text", "md", "json"), default="text")
    cmp.add_argument("--fail-on-model-change", action="store_true",
                     help="also exit 1 when any event count or modelled time changed")
    cmp.set_defaults(func=cmd_compare)

    br = sub.add_parser(
        "compare-branches", help="run the suite on two git refs, interleaved, and compare them",
        description="Check each ref out in its own git worktree with its own virtual "
        "environment, run the suite for both with A and B interleaved benchmark by benchmark, "
        "compare and write a report for each; the worktrees are removed afterwards.")
    br.add_argument("base_ref", metavar="BASE_REF")
    br.add_argument("head_ref", metavar="HEAD_REF", nargs="?", default=None,
                    help="default: HEAD")
    br.add_argument("--suite", default="quick", help="quick, ci, full or a suite TOML file")
    br.add_argument("-o", "--output", default=None, metavar="DIR",
                    help="output directory (default results/compare-<base>-<head>-<date>)")
    br.add_argument("--aa", action="store_true",
                    help="run BASE_REF twice to measure the noise floor and suggest a threshold")
    br.add_argument("--threshold", default="5%", help="slowdown that gates (default 5%%)")
    br.add_argument("--deps", choices=("install", "current"), default="install",
                    help="install each ref's dependencies (default) or reuse this "
                    "environment's (fast, offline)")
    br.add_argument("--fail-on-model-change", action="store_true")
    br.set_defaults(func=cmd_compare_branches)

    cal = sub.add_parser(
        "calibrate", help="measure this machine's costs and write a cost profile",
        description="Measure the costs this machine lets pinbench measure (frame populate, "
        "mlock/munlock, CLFLUSH of a dirty page, present-page touch, metadata zeroing, and "
        "with /dev/kvm the nested-fault round trip of a real guest) and write a cost "
        "profile that `run --cost-profile` and `report --profile` accept; keys that cannot "
        "be measured here (VM_PAGE_FLUSH, WBINVD, the per-VM lock) are carried over from the "
        "default profile and marked so.")
    cal.add_argument("-o", "--output", default=None, metavar="PROFILE.toml",
                     help="profile to write (default results/calibrated-<host>.toml)")
    cal.add_argument("--quick", action="store_true",
                     help="small buffers and few repetitions (seconds, less precise)")
    cal.add_argument("--no-kvm", action="store_true",
                     help="do not run a KVM guest (npf_exit_ns carried over)")
    cal.add_argument("--force", action="store_true", help="overwrite an existing profile")
    cal.set_defaults(func=cmd_calibrate)

    lst = sub.add_parser("list", help="list the benchmarks of a suite",
                         description="List the benchmarks a suite would run.")
    lst.add_argument("--suite", default="quick", help="quick, ci, full or a suite TOML file")
    lst.set_defaults(func=cmd_list)
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    """``pinbench report``: write the report files and print their paths."""
    from pinning.analysis.report import main as report_main

    return report_main(args.results, args.output, args.profile)


def cmd_compare(args: argparse.Namespace) -> int:
    """``pinbench compare``: 0 no regression, 1 regression, 2 unusable input."""
    from pinning.analysis.compare import main as compare_main
    from pinning.analysis.compare import parse_threshold

    return compare_main(args.base, args.head, threshold=parse_threshold(args.threshold),
                        fmt=args.fmt, fail_on_model_change=args.fail_on_model_change)


def cmd_compare_branches(args: argparse.Namespace) -> int:
    """``pinbench compare-branches``: like compare, on two git refs run here."""
    from pinning.analysis.compare import parse_threshold
    from pinning.harness.branches import main as branches_main

    return branches_main(args.base_ref, args.head_ref, suite=args.suite, outdir=args.output,
                         aa=args.aa, threshold=parse_threshold(args.threshold),
                         deps=args.deps, fail_on_model_change=args.fail_on_model_change)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``pinbench calibrate``: measure, print how each cost was obtained, write the profile."""
    import socket
    from pathlib import Path

    from pinning.harness.calibrate import calibrate, format_measurements, write_calibrated

    output = Path(args.output or f"results/calibrated-{socket.gethostname()}.toml")
    if output.exists() and not args.force:
        raise InputError(f"{output} exists: choose another -o or pass --force")
    if not output.parent.is_dir():
        raise InputError(f"{output.parent} is not a directory")
    profile, measurements = calibrate(quick=args.quick, use_kvm=not args.no_kvm)
    print(format_measurements(measurements, profile.machine))
    print(profile.description)
    write_calibrated(profile, measurements, output)
    print()
    print(f"profile: {output}")
    print(f"use it:  pinbench run --cost-profile {output}   |   "
          f"pinbench report RESULTS.json --profile {output}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``pinbench list``: the benchmarks of a suite, one per line."""
    from pinning.harness.runner import describe
    from pinning.harness.suite import load_suite

    suite = load_suite(args.suite)
    print(f"suite {suite.name} ({suite.source}): {len(suite.benchmarks)} benchmarks, "
          f"{suite.processes} processes x {suite.values} values each")
    for config in suite.benchmarks:
        print(describe(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``pinbench run``: exit 0 if every benchmark ran (or was skipped for memory), 1 if not."""
    import time
    from pathlib import Path

    from pinning.harness.runner import run_suite
    from pinning.harness.suite import load_suite

    suite = load_suite(args.suite)
    output = Path(args.output or f"results/{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    start = time.monotonic()
    try:
        report = run_suite(suite, output, force=args.force, cost_profile=args.cost_profile)
    except KeyboardInterrupt as exc:
        report = getattr(exc, "report", None)
        done = ", ".join(report.done) if report and report.done else "none"
        print(f"pinbench run: interrupted; no results file written. Finished before the "
              f"interrupt: {done}", file=sys.stderr)
        return 130
    wall = time.monotonic() - start
    print(f"{len(report.done)} benchmarks ran, {len(report.skipped)} skipped, "
          f"{len(report.failed)} failed in {wall:.0f} s")
    over, share = report.overhead()
    if report.done:
        print(f"harness overhead (process start, imports, numba cache load): {over:.0f} s, "
              f"{share:.0%} of the benchmarks' wall time, "
              f"{over / len(report.wall_s):.2f} s per benchmark")
    for name, why in report.skipped:
        print(f"skipped {name}: {why}")
    for name, why in report.failed:
        print(f"FAILED {name}: {why}")
    if report.output:
        from pinning.analysis.results import load_results
        from pinning.analysis.summary import summary_table

        print()
        print(summary_table(load_results(report.output)))
        print()
        print(f"results: {report.output}")
        print(f"report:  pinbench report {report.output} -o report/{suite.name}")
    return 1 if report.failed or not report.output else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """``pinbench simulate``: one modelled lifecycle."""
    if args.backing != "sim" or args.backend != "model":
        return _simulate_real(args)
    if args.vcpus != 1 or args.host != "warm":
        raise InputError("--vcpus and --host apply to --backing real and --backend kvm")
    from pinning.model.state import simulate, warm_up

    guest_pages = guest_pages_for(args.guest_size, args.level)
    trace = read_trace(args.trace) if args.trace else None
    if trace is not None:
        trace.check(guest_pages)
    # Compile or load the kernels first so that no phase's time includes the JIT.
    warm_up()
    result = simulate(
        args.strategy,
        guest_pages,
        args.level,
        trace=trace,
        pattern=args.pattern,
        touch_fraction=args.touch_fraction,
        seed=args.seed,
        memlock_limit=args.memlock_limit,
    )
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(format_result(result.as_dict()))
    return 0


def _simulate_real(args: argparse.Namespace) -> int:
    """simulate on real memory or a real VM: one lifecycle through pinning.model.lifecycle."""
    from pinning.harness.suite import BenchConfig
    from pinning.model.costs import load_profile
    from pinning.model.lifecycle import backing_unavailable, config_bytes, run_lifecycle
    from pinning.model.state import check_fits, warm_up

    if args.trace or args.memlock_limit is not None:
        raise InputError("--trace and --memlock-limit run on the sim only (drop --backing "
                         "real / --backend kvm)")
    backing = "kvm" if args.backend == "kvm" else "real"
    config = BenchConfig("lifecycle", args.strategy, args.guest_size, args.level,
                         vcpus=args.vcpus, pattern=args.pattern,
                         touch_fraction=args.touch_fraction, seed=args.seed,
                         backing=backing, host=args.host)
    config.check()
    check_fits(config_bytes(config), config.name)
    missing = backing_unavailable(config)
    if missing:
        raise InputError(missing)
    warm_up()
    profile = load_profile()
    res = run_lifecycle(config, profile)
    model = res
    if backing == "kvm":  # the model's events for the same configuration
        from dataclasses import replace

        model = run_lifecycle(replace(config, backing="sim", host="warm"), profile)
    # a phase's events are the counters' growth in it, so their sum is the run's total
    counters: dict[str, int] = {}
    for events in model.events.values():
        for name, value in events.items():
            counters[name] = counters.get(name, 0) + value
    out = {"strategy": config.strategy, "level": config.level,
           "guest_pages": config.guest_pages, "backing": backing, "host": config.host,
           **counters, "error": res.error, "elapsed_ns": dict(res.elapsed_ns)}
    if res.kvm:
        out["kvm"] = res.kvm
    print(json.dumps(out) if args.json else format_result(out))
    return 0


def format_result(res: dict) -> str:
    """A readable table of one ``simulate`` result."""
    from pinning.model.kernels.engine import COUNTER_NAMES

    size = format_size(res["guest_pages"] * PAGE_SIZE)
    lines = [f"{res['strategy']} pinning, {size} guest ({res['guest_pages']:,} pages), "
             f"level {res['level']}"]
    if res["error"]:
        lines.append(f"error: {res['error']}")
    lines.append("")
    lines.append("event counts (modelled)")
    for name in COUNTER_NAMES:
        value = res[name]
        extra = f"  ({format_size(value)})" if name.endswith("_bytes") and value else ""
        lines.append(f"  {name:<26}{value:>16,}{extra}")
    lines.append("")
    what = {"real": "the simulation on real host memory", "kvm": "a real KVM guest"}
    host = f", {res['host']} host" if "host" in res else ""
    lines.append(f"wall time of {what.get(res.get('backing', ''), 'the simulation')}"
                 f"{host} (measured)")
    for phase, ns in res["elapsed_ns"].items():
        lines.append(f"  {phase:<26}{ns / 1e6:>13.3f} ms")
    kvm = res.get("kvm") or {}
    if kvm:
        lines.append("")
        lines.append("kvm: the VM's phases and KVM's statistics (measured)")
        for key, value in kvm.items():
            if key.endswith("_ns") and isinstance(value, int | float):
                lines.append(f"  {key:<26}{value / 1e6:>13.3f} ms")
        stats = kvm.get("stats") or {}
        for name, value in stats.items():
            if value:
                lines.append(f"  {name:<30}{value:>16,}")
        zero = sorted(name for name, value in stats.items() if not value)
        if zero:
            lines.append(f"  ({len(zero)} more KVM statistics are 0: {', '.join(zero)})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pinbench`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed in one line
        return int(exc.code or 0)
    try:
        return args.func(args)
    except InputError as exc:
        print(f"pinbench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print(f"pinbench {args.command}: error: out of memory", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"pinbench {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # e.g. `pinbench list | head`: the reader left; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())

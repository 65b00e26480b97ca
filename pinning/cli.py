"""The ``pinbench`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields

from pinning.harness.options import add_config_options, config_from_args
from pinning.model import strategies
from pinning.model.config import BenchConfig, option
from pinning.model.names import InputError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _version() -> str:
    """The installed pinbench's version (the package metadata pip wrote), else the source's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pinbench")
    except PackageNotFoundError:  # run from a checkout that was never installed
        from pinning import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``pinbench`` subcommand."""
    parser = _Parser(prog="pinbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pinbench {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sim = sub.add_parser(
        "simulate",
        help="run one VM lifecycle (startup, the guest's accesses, teardown) and print counters "
             "and times",
        description="Run startup, the guest's operations and teardown -- the same lifecycle a "
        "suite's benchmark runs -- and print the event counts and modelled time (events x "
        "cost profile, vCPU model) and the measured wall time of each phase.",
    )
    add_config_options(sim, skip=("strategy", "pattern", "remap_fraction", "convert_fraction",
                                  "backing"),
                       required=("guest_size",))
    sim.add_argument("--strategy", required=True, metavar="S[,S...]|all",
                     help="one strategy, several side by side (comma-separated), or all: "
                     f"{', '.join(strategies.names())}")
    what = sim.add_mutually_exclusive_group(required=True)
    what.add_argument("--trace", metavar="FILE",
                      help="CSV with header op,gfn,npages (optionally a vcpu column)")
    pattern = option(next(f for f in fields(BenchConfig) if f.name == "pattern"))
    what.add_argument("--pattern", choices=pattern.choices(), help=pattern.help)
    sim.add_argument("--backing", default="sim", choices=("sim", "real", "kvm"),
                     help="guest memory of the run: the sim's arrays only (default), also a "
                          "real anonymous mapping (populate + mlock at upfront startup, real "
                          "first-touch faults under demand), or a real KVM guest")
    sim.add_argument("--backend", default="model", choices=("model", "kvm"),
                     help="who runs the guest: the model (default) or a real KVM VM "
                          "(the same as --backing kvm)")
    sim.add_argument("--cost-profile", default=None, metavar="FILE",
                     help="cost profile TOML for the modelled times (default: builtin)")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sens = sim.add_argument_group(
        "sensitivity (several strategies)",
        "How sure is the answer: vary each cost the profile marks as an assumption (and "
        "each --vary KEY) over its range, one at a time, and report the ratio, the "
        "break-even and whether the cheaper strategy flips (modelled).")
    sens.add_argument("--sensitivity", action="store_true",
                      help="add the tornado table of the varied costs")
    sens.add_argument("--vary", action="append", default=[], metavar="KEY",
                      help="also vary this cost or spread key (a measured one over its "
                      "measured min..max); repeatable")
    sens.add_argument("--factors", default="0.5,2", metavar="LOW,HIGH",
                      help="range of a varied assumption: its value times LOW to times "
                      "HIGH (default 0.5,2)")
    sim.set_defaults(func=cmd_simulate)

    run = sub.add_parser(
        "run", help="run a benchmark suite under pyperf and write one results file",
        description="Run every benchmark of a suite (pyperf workers, measured wall time of the "
        "model plus modelled events and times in the metadata) and write one pyperf JSON file. "
        "On Ctrl-C or a failing benchmark, the finished ones go to NAME.partial.json "
        "(--resume runs the rest). Exit status: 0 every benchmark ran or was skipped, "
        "1 one failed or none ran, 2 bad input, 130 interrupted.")
    run.add_argument("--suite", default=None,
                     help="quick (default), ci, full or a suite TOML file; with --resume, "
                          "the partial file's suite")
    run.add_argument("-o", "--output", default=None, metavar="FILE",
                     help="results file (default results/<suite>-<date>.json, results/ "
                          "created if missing; with --resume, NAME.json of NAME.partial.json)")
    run.add_argument("--force", action="store_true",
                     help="overwrite an existing results file (and start afresh over a "
                          "partial file of the same name)")
    run.add_argument("--resume", default=None, metavar="NAME.partial.json",
                     help="run only the benchmarks missing from the partial file an "
                          "interrupted or failed run wrote, then write the complete NAME.json "
                          "and remove the partial file")
    run.add_argument("--cost-profile", default=None, metavar="FILE",
                     help="cost profile TOML for the modelled times (default: builtin)")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run only shard I of N of the suite: a stable part, balanced by "
                          "estimated time (the same benchmark is always in the same shard); "
                          "join the shards' files with pinbench merge")
    run.add_argument("--cluster", default=None, metavar="ADDRESS|local:N",
                     help="run each benchmark (with all its processes) on one worker of a "
                          "dask.distributed cluster: a scheduler's address, or local:N to "
                          "start N workers here (needs pip install -e '.[dask]')")
    run.set_defaults(func=cmd_run)

    mrg = sub.add_parser(
        "merge", help="join the results files of a suite's shards into one",
        description="Join results files of one suite (the shards of `pinbench run --shard`, "
        "or runs of disjoint parts) into one pyperf file. Refuses, in one line, files of "
        "different suites or results schemas, a benchmark in two files, partial files, "
        "shards of different counts and a missing shard.")
    mrg.add_argument("inputs", nargs="+", metavar="RESULT.json")
    mrg.add_argument("-o", "--output", required=True, metavar="FILE",
                     help="the merged results file")
    mrg.add_argument("--force", action="store_true", help="overwrite an existing output")
    mrg.add_argument("--allow-missing", action="store_true",
                     help="merge even when a shard's file is missing")
    mrg.set_defaults(func=cmd_merge)

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
        "medians, ratio with a 95% two-stage bootstrap CI, Mann-Whitney U on per-process "
        "medians, Holm-adjusted over the benchmarks, verdict (or 'cannot tell' when no change "
        "could be significant with so few processes, with how many are needed), the smallest "
        "detectable change, the geometric mean's own verdict; modelled metrics exactly, "
        "listed first, whatever the hosts; measured values only of benchmarks that ran on "
        "one host, the same on both sides (pyperf's hostname). Exit 0 when no "
        "benchmark is significantly slower by more than the threshold, 1 when one is, "
        "2 for unusable input.")
    cmp.add_argument("base", metavar="BASE.json")
    cmp.add_argument("head", metavar="HEAD.json")
    cmp.add_argument("--threshold", default="5%", help="slowdown that gates (default 5%%)")
    cmp.add_argument("--format", dest="fmt", choices=("text", "md", "json"), default="text")
    cmp.add_argument("--fail-on-model-change", action="store_true",
                     help="also exit 1 when any event count or modelled time changed")
    cmp.add_argument("--across-hosts", action="store_true",
                     help="also compare measured values of benchmarks that ran on different "
                          "hosts (by default only modelled values are compared across hosts)")
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
    br.add_argument("--cluster", default=None, metavar="ADDRESS|local:N",
                    help="run each benchmark's A/B pair (its interleaved rounds) on one worker "
                         "of a dask.distributed cluster whose workers see this file system")
    br.set_defaults(func=cmd_compare_branches)

    cal = sub.add_parser(
        "calibrate", help="measure this machine's costs and write a cost profile",
        description="Measure the costs this machine lets pinbench measure (a host fault and "
        "zeroing per byte, from 4 KiB and THP populates; mlock/munlock; CLFLUSH of a dirty "
        "page; present-page touch; the spread of single-fault latencies; and with /dev/kvm "
        "a real guest's nested-fault exit and the shadow MMU's prefetch), detect the host "
        "(SME_COHERENT, THP mode, KVM's MMU, kernel) and write a cost profile that `run "
        "--cost-profile` and `report --profile` accept; keys that cannot be measured here "
        "(VM_PAGE_FLUSH, WBINVD, the per-VM lock) are carried over from the default profile "
        "and marked so.")
    cal.add_argument("-o", "--output", default=None, metavar="PROFILE.toml",
                     help="profile to write (default results/calibrated-<host>.toml)")
    cal.add_argument("--quick", action="store_true",
                     help="small buffers and few repetitions (seconds, less precise)")
    cal.add_argument("--no-kvm", action="store_true",
                     help="do not run a KVM guest (npf_exit_ns, spte_prefetch_ns carried "
                     "over)")
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
                        fmt=args.fmt, fail_on_model_change=args.fail_on_model_change,
                        across_hosts=args.across_hosts)


def cmd_compare_branches(args: argparse.Namespace) -> int:
    """``pinbench compare-branches``: like compare, on two git refs run here."""
    from pinning.analysis.compare import parse_threshold
    from pinning.harness.branches import main as branches_main

    return branches_main(args.base_ref, args.head_ref, suite=args.suite, outdir=args.output,
                         aa=args.aa, threshold=parse_threshold(args.threshold),
                         deps=args.deps, fail_on_model_change=args.fail_on_model_change,
                         cluster=args.cluster)


def cmd_merge(args: argparse.Namespace) -> int:
    """``pinbench merge``: join shard files into one results file."""
    from pathlib import Path

    from pinning.harness.shard import merge

    merged = merge([Path(p) for p in args.inputs], Path(args.output), force=args.force,
                   allow_missing=args.allow_missing)
    print(f"{merged.benchmarks} benchmarks from {len(merged.files)} files: {merged.output}")
    return 0


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
    from pinning.analysis.formatting import plural
    from pinning.harness.runner import describe
    from pinning.harness.suite import load_suite

    suite = load_suite(args.suite)
    print(f"suite {suite.name} ({suite.source}): {plural(len(suite.benchmarks), 'benchmark')}, "
          f"{plural(suite.processes, 'process')} x {plural(suite.values, 'value')} each")
    for config in suite.benchmarks:
        print(describe(config))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``pinbench run``: exit 0 if every benchmark ran (or was skipped for memory), 1 if one
    failed or none ran, 130 on Ctrl-C; the finished benchmarks of an unfinished run are
    kept in NAME.partial.json, which ``--resume`` completes."""
    import signal
    import time
    from pathlib import Path

    from pinning.analysis.formatting import plural
    from pinning.harness.bench import die_with_starter
    from pinning.harness.runner import check_resume, complete_path, read_partial, run_suite
    from pinning.harness.suite import load_suite

    resume = None
    if args.resume:
        resume = read_partial(Path(args.resume))
        spec = args.suite or resume.suite_source.removeprefix("builtin:")
        if not spec:
            raise InputError(f"{resume.path} does not say which suite it ran: pass --suite")
        suite = load_suite(spec)
        check_resume(resume, suite)
        if (args.cost_profile and resume.cost_profile
                and args.cost_profile != resume.cost_profile):
            raise InputError(f"{resume.path} was run with --cost-profile "
                             f"{resume.cost_profile}, not {args.cost_profile}: resume it "
                             "with its own profile")
        cost_profile = args.cost_profile or resume.cost_profile
        from pinning.harness.shard import parse_shard

        if args.shard and resume.shard and parse_shard(args.shard) != parse_shard(resume.shard):
            raise InputError(f"{resume.path} is shard {resume.shard}, not {args.shard}: "
                             "resume it with its own shard")
        suite = _shard(suite, args.shard or resume.shard)
        output = Path(args.output) if args.output else complete_path(resume.path)
    else:
        suite = load_suite(args.suite or "quick")
        cost_profile = args.cost_profile
        suite = _shard(suite, args.shard)
        if args.output:
            output = Path(args.output)
        else:
            # The default lives in ./results, made here if missing (an explicit -o's
            # directory must exist: a typo there should not make a new tree).
            part = f"-shard{suite.shard.replace('/', 'of')}" if suite.shard else ""
            output = (Path("results")
                      / f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}{part}.json")
            try:
                output.parent.mkdir(exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot make {output.parent}/ for the results "
                                 f"({exc.strerror or exc}): pass -o") from None
    # A side of a compare-branches pair on a lost dask worker: stop with it.
    die_with_starter(name_self=False)
    start = time.monotonic()
    # A cancelled CI job gets SIGTERM, not Ctrl-C: keep the finished benchmarks the same way.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        report = run_suite(suite, output, force=args.force, cost_profile=cost_profile,
                           resume=resume, cluster=args.cluster)
    except KeyboardInterrupt as exc:
        report = getattr(exc, "report", None)
        if report is None or report.partial is None:
            print("pinbench run: interrupted before any benchmark finished; no results file "
                  "written", file=sys.stderr)
        else:
            _say_partial("interrupted", report, suite)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.monotonic() - start
    resumed = f" ({report.resumed} more from {resume.path})" if resume else ""
    print(f"{plural(len(report.done), 'benchmark')} ran{resumed}, "
          f"{len(report.skipped)} skipped, {len(report.failed)} failed in {wall:.0f} s")
    over, share = report.overhead()
    if report.done:
        print(f"harness overhead (process start, imports, numba cache load): {over:.0f} s, "
              f"{share:.0%} of the benchmarks' wall time, "
              f"{over / len(report.wall_s):.2f} s per benchmark")
    for name, why in report.skipped:
        print(f"skipped {name}: {why}")
    for name, why in report.failed:
        print(f"FAILED {name}: {why}")
    written = report.output or report.partial
    if written:
        from pinning.analysis.results import load_results
        from pinning.analysis.summary import summary_table

        print()
        print(summary_table(load_results(written)))
        print()
        print(f"results: {written}" + (" (partial)" if report.partial else ""))
        print(f"report:  pinbench report {written} -o report/{suite.name}")
    if report.partial:
        _say_partial(f"{plural(len(report.failed), 'benchmark')} failed", report, suite)
    return 1 if report.failed or not written else 0


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM, as Ctrl-C."""
    raise KeyboardInterrupt


def _shard(suite, shard: str | None):
    """The suite, or the part ``--shard I/N`` picks of it."""
    if not shard:
        return suite
    from pinning.harness.shard import parse_shard, select

    return select(suite, *parse_shard(shard))


def _say_partial(why: str, report, suite) -> None:
    """On stderr: why the run is unfinished, where its finished benchmarks are, how to resume."""
    print(f"pinbench run: {why}; {report.finished} of {len(suite.benchmarks)} benchmarks "
          f"finished and are in {report.partial}; run the {len(report.missing)} missing "
          f"with: pinbench run --resume {report.partial}", file=sys.stderr)


def cmd_simulate(args: argparse.Namespace) -> int:
    """``pinbench simulate``: one lifecycle per strategy on any backing, through the suite's
    own path; with several strategies, the answer side by side."""
    from pinning.analysis.answer import parse_strategies
    from pinning.analysis.formatting import comparison_text, simulation_text
    from pinning.harness.simulate import simulate
    from pinning.model.costs import load_profile

    if args.backend == "kvm" and args.backing not in ("sim", "kvm"):
        raise InputError(f"--backend kvm runs a KVM guest: it cannot also be --backing "
                         f"{args.backing}")
    names = parse_strategies(args.strategy)
    backing = "kvm" if args.backend == "kvm" else args.backing
    config = config_from_args("lifecycle", args, backing=backing, strategy=names[0],
                              pattern=args.pattern or "sequential")
    factors = _factors(args.factors)
    if (args.vary or args.factors != "0.5,2") and not args.sensitivity:
        raise InputError("--vary and --factors set the sensitivity analysis: add "
                         "--sensitivity")
    profile = load_profile(args.cost_profile)
    workload = None
    if args.trace:
        from pinning.model.traces import read_trace, workload_from_trace

        if config.vcpus != 1:
            raise InputError("--vcpus does not apply to a trace: its vcpu column says which "
                             "vCPU makes each access")
        workload = workload_from_trace(read_trace(args.trace), config.guest_pages,
                                       config.level)
    out = simulate(config, names, profile, workload, sensitivity=args.sensitivity,
                   vary=tuple(args.vary), factors=factors)
    if args.json:
        print(json.dumps(out))
    else:
        print(comparison_text(out) if len(names) > 1 else simulation_text(out))
    return 0


def _factors(text: str) -> tuple[float, float]:
    """``--factors LOW,HIGH``."""
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--factors {text!r} must be two numbers LOW,HIGH, e.g. 0.5,2") \
            from None
    return low, high


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

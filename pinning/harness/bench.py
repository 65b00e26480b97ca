"""The body of the pyperf scripts in bench/: options, forwarding to workers, metadata."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from pinning import __version__
from pinning.harness.suite import SCHEMA_VERSION, BenchConfig
from pinning.model.units import InputError, format_size, parse_size

# Options every bench script takes (besides pyperf's own); forwarded to workers.
OPTIONS = ("strategy", "guest_size", "level", "vcpus", "pattern", "layout", "touch_fraction",
           "seed", "backing", "remap_fraction", "host", "cost_profile", "suite")


def add_options(parser: argparse.ArgumentParser) -> None:
    """The pinbench options of a bench script (pyperf's own stay as they are)."""
    g = parser.add_argument_group("pinbench")
    g.add_argument("--strategy", default="demand")
    g.add_argument("--guest-size", default="1GiB")
    g.add_argument("--level", default="4k")
    g.add_argument("--vcpus", type=int, default=1)
    g.add_argument("--pattern", default="sequential")
    g.add_argument("--layout", default="slices")
    g.add_argument("--touch-fraction", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--backing", default="sim")
    g.add_argument("--remap-fraction", type=float, default=0.1)
    g.add_argument("--host", default="warm", help="warm or cold host memory (real backings)")
    g.add_argument("--cost-profile", default=None, help="cost profile TOML (default: builtin)")
    g.add_argument("--suite", default="adhoc", help="suite name recorded in the metadata")


def forward_options(cmd: list[str], args: argparse.Namespace) -> None:
    """pyperf's add_cmdline_args hook: give each worker the manager's pinbench options."""
    for name in OPTIONS:
        value = getattr(args, name)
        if value is not None:
            cmd.extend([f"--{name.replace('_', '-')}", str(value)])


def config_from_args(family: str, args: argparse.Namespace) -> BenchConfig:
    """A checked BenchConfig from a bench script's options."""
    config = BenchConfig(
        workload=family, strategy=args.strategy,
        guest_size=parse_size(args.guest_size, "guest size"), level=args.level,
        vcpus=args.vcpus, pattern=args.pattern, layout=args.layout,
        touch_fraction=args.touch_fraction, seed=args.seed, backing=args.backing,
        remap_fraction=args.remap_fraction, host=args.host)
    config.check()
    return config


def main(family: str) -> None:
    """Run one benchmark of ``family`` under pyperf (manager or worker process)."""
    import pyperf

    runner = pyperf.Runner(add_cmdline_args=forward_options)
    add_options(runner.argparser)
    args = runner.parse_args()
    try:
        config = config_from_args(family, args)
        from pinning.model.costs import load_profile
        from pinning.model.lifecycle import backing_unavailable, config_bytes, run_lifecycle
        from pinning.model.state import check_fits

        profile = load_profile(args.cost_profile)
        check_fits(config_bytes(config), f"{config.name} ({format_size(config.guest_size)})")
        missing = backing_unavailable(config)
        if missing:
            raise InputError(missing)
    except InputError as exc:
        print(f"{family}: error: {exc}", file=sys.stderr)
        sys.exit(2)

    metadata: dict[str, int | float | str] = {
        "pinbench.schema": SCHEMA_VERSION,
        "pinbench.version": __version__,
        "pinbench.suite": args.suite,
        "pinbench.family": family,
        "cost.profile": profile.name,
        "cost.source": profile.source,
        **{f"cost.{k}": float(v) for k, v in profile.costs.items()},
        **config.params(),
    }
    if profile.machine:
        metadata["cost.machine"] = profile.machine
    if runner.args.worker:
        import time

        from pinning.model.lifecycle import build_workload, lifecycle_metadata

        t0 = time.perf_counter()
        workload = build_workload(config)
        # Untimed: loads the cached kernels (no JIT in the timed region) and
        # records the run's events, which are the same in every run.
        model = None
        if config.backing == "kvm":  # the model's prediction for the same configuration
            model = run_lifecycle(replace(config, backing="sim", host="warm"), profile, workload)
        metadata.update(lifecycle_metadata(config, run_lifecycle(config, profile, workload),
                                           model))
        metadata["pinbench.events_run_s"] = time.perf_counter() - t0
    else:
        workload = None

    def time_func(loops: int) -> float:
        return sum(run_lifecycle(config, profile, workload).measured_s(family)
                   for _ in range(loops))

    runner.bench_time_func(config.name, time_func, metadata=metadata)

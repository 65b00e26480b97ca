"""Suites: TOML parsing, expansion, names, and the errors a user sees."""

from __future__ import annotations

import pytest

from pinning.harness.suite import BenchConfig, builtin_suites, load_suite, parse_suite
from pinning.model.names import InputError

GiB = 1 << 30


def test_builtin_suites_parse_and_quick_covers_what_it_promises():
    assert {"quick", "full"} <= set(builtin_suites())
    quick = load_suite("quick")
    b = quick.benchmarks
    assert {c.workload for c in b} == {"startup", "fault_storm", "remap", "teardown",
                                      "lifecycle", "boot", "convert"}
    assert {c.strategy for c in b} == {"upfront", "demand", "demand-v2", "gmem"}
    # guest_memfd boots with both acceptances, and converts beside a pinning strategy
    assert {c.acceptance for c in b if c.strategy == "gmem" and c.workload == "boot"} == {
        "lazy", "eager"}
    assert {c.strategy for c in b if c.workload == "convert"} >= {"gmem", "upfront"}
    # the published boots' sizes, each strategy booting its guest (the boot pattern)
    boots = [c for c in b if c.workload == "boot"]
    assert {c.pattern for c in boots} == {"boot"} and len({c.guest_size for c in boots}) >= 3
    assert len({c.guest_size for c in b if c.workload == "startup"}) >= 3
    assert len({c.touch_fraction for c in b if c.workload == "lifecycle"}) >= 3
    assert {"4k", "2m"} <= {c.level for c in b}
    assert {1, 4} <= {c.vcpus for c in b}
    full = load_suite("full")
    sizes = {c.guest_size for c in full.benchmarks}
    assert min(sizes) == GiB and max(sizes) == 1024 * GiB
    assert {"4k", "2m", "1g"} <= {c.level for c in full.benchmarks}
    assert {1, 64} <= {c.vcpus for c in full.benchmarks}
    assert {"sequential", "random", "hotset", "zipf", "strided"} <= {
        c.pattern for c in full.benchmarks}


def test_lists_expand_to_the_cartesian_product_with_stable_names():
    suite = parse_suite("""
[suite]
processes = 1
[[benchmark]]
workload = "fault_storm"
strategy = ["upfront", "demand"]
guest_size = "64GiB"
vcpus = [1, 4]
pattern = "random"
""", "t.toml")
    assert [c.name for c in suite.benchmarks] == [
        "fault_storm/upfront/64GiB/4k/1vcpu/random",
        "fault_storm/upfront/64GiB/4k/4vcpu/random",
        "fault_storm/demand/64GiB/4k/1vcpu/random",
        "fault_storm/demand/64GiB/4k/4vcpu/random",
    ]
    assert suite.processes == 1 and suite.name == "t"


def test_startup_name_and_argv_round_trip():
    c = BenchConfig("startup", "demand", 64 * GiB)
    assert c.name == "startup/demand/64GiB/4k"
    argv = c.to_argv()
    assert argv[argv.index("--guest-size") + 1] == str(64 * GiB)
    assert "--workload" not in argv


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[suite]\nspeed = 1\n", "t.toml: [suite] unknown key 'speed' (allowed: cost_profile"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\ncolour=1\n",
         "t.toml: [[benchmark]] #1: unknown key 'colour' (allowed: acceptance, backing, "
         "convert_fraction, guest_size"),
        ("[[benchmark]]\nworkload='reboot'\nstrategy='demand'\nguest_size='1GiB'\n",
         "workload 'reboot' is not one of startup, fault_storm, remap, teardown, lifecycle, "
         "boot"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='lazy'\nguest_size='1GiB'\n",
         "strategy 'lazy' is not one of upfront, demand, demand-v2"),
        ("[[benchmark]]\nworkload='boot'\nstrategy='demand'\nguest_size='1GiB'\n"
         "pattern='random'\n", "the boot family runs the boot pattern only (got pattern "
         "'random')"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\n"
         "kernel='5.4'\n", "kernel '5.4' is not a version the model knows"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\n"
         "kernel=6.17\n", 'kernel must be a version string like "6.10", got 6.17'),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\n"
         "mmu='ept'\n", "mmu 'ept' is not one of tdp, shadow"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\n"
         "sme_coherent='maybe'\n", "sme_coherent 'maybe' is not one of yes, no"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\nlevel='3m'\n",
         "level '3m' is not one of 4k, 2m, 1g"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\nvcpus=65\n",
         "vcpus 65 must lie between 1 and 64"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\n"
         "vcpus='four'\n", "vcpus must be an integer, got 'four'"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GB'\n",
         "is not a size"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\n", "missing key 'guest_size'"),
        ("[suite]\nname='x'\n", "t.toml: the suite has no benchmark"),
        ("[suite\n", "t.toml: not valid TOML"),
        ("[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\n"
         "[[benchmark]]\nworkload='startup'\nstrategy='demand'\nguest_size='1GiB'\n",
         "listed twice"),
        ("[[benchmark]]\nworkload='fault_storm'\nstrategy='demand'\nguest_size='1GiB'\n"
         "pattern='spiral'\n", "pattern 'spiral' is not one of sequential, random"),
    ],
)
def test_bad_suite_names_file_key_and_allowed_values(text, needle):
    with pytest.raises(InputError) as err:
        parse_suite(text, "t.toml")
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_suite_name_or_missing_file():
    with pytest.raises(InputError, match="neither a builtin suite"):
        load_suite("nonexistent-suite")


def test_guest_accesses_count_what_the_workload_touches():
    from pinning.harness.suite import guest_accesses
    from pinning.model.workloads import boot_units

    def cfg(workload, **kw):
        return BenchConfig(workload, "demand", kw.pop("size", 8 * GiB), **kw)

    assert guest_accesses(cfg("startup")) == 0
    assert guest_accesses(cfg("fault_storm", pattern="random", touch_fraction=0.25)) == \
        8 * GiB // 4096 // 4
    assert guest_accesses(cfg("fault_storm", level="2m")) == 8 * GiB // (2 << 20)
    # the remap family touches everything once more after the remap
    assert guest_accesses(cfg("remap")) == 2 * guest_accesses(cfg("lifecycle"))
    # the boot pattern, counted without building it, as boot_units builds it
    for size in (64 << 20, 4 * GiB, 64 * GiB):
        for level, upages in (("4k", 1), ("2m", 512)):
            expected = len(boot_units(size // 4096, upages))
            assert guest_accesses(cfg("boot", size=size, level=level, pattern="boot")) == \
                expected


def test_estimates_grow_with_the_work_a_benchmark_does():
    from pinning.harness.suite import estimate_s

    def est(config, processes=1, values=5, warmups=0):
        return estimate_s(config, processes=processes, values=values, warmups=warmups)

    small = BenchConfig("lifecycle", "demand", 2 * GiB, pattern="random")
    big = BenchConfig("lifecycle", "demand", 32 * GiB, pattern="random")
    assert est(big) > 4 * est(small) > 0
    # every worker process pays the same again (and pyperf's manager starts too)
    assert est(small, processes=4) > 4 * est(small)
    assert est(small, values=10) > est(small)
    kvm = BenchConfig("startup", "demand", 2 * GiB, backing="kvm")
    assert est(kvm) > est(BenchConfig("startup", "demand", 2 * GiB))
    cold = BenchConfig("startup", "demand", 2 * GiB, backing="kvm", host="cold")
    assert est(cold) - est(kvm) == pytest.approx(5 * 10.0)  # 10 s idle before each value


def test_estimates_track_the_quick_reference_run():
    # Fitted to that run: the estimates must order its benchmarks' work as it was
    # measured (the worker's own share: kernel load, events run and values).
    import math
    from pathlib import Path

    import pyperf

    ref = Path(__file__).resolve().parents[1] / "results" / "quick-reference.json"
    quick = load_suite("quick")
    est = {c.name: quick.estimated_s(c) for c in quick.benchmarks}
    pairs = []
    for bench in pyperf.BenchmarkSuite.load(str(ref)).get_benchmarks()[1:]:  # 1st: cold cache
        work = sum(r.get_metadata()["duration"] + r.get_metadata()["pinbench.events_run_s"]
                   + r.get_metadata()["pinbench.load_s"] for r in bench.get_runs())
        pairs.append((math.log(est[bench.get_name()]), math.log(work)))
    n = len(pairs)
    mx, my = (sum(p[i] for p in pairs) / n for i in (0, 1))
    cov = sum((x - mx) * (y - my) for x, y in pairs)
    corr = cov / math.sqrt(sum((x - mx) ** 2 for x, _ in pairs)
                           * sum((y - my) ** 2 for _, y in pairs))
    assert n == 54 and corr > 0.8

"""The vCPU model: engine bookkeeping, modelled time, the locks, histogram and timeline.

The expected times are written from docs/model.md's cost model, by hand: a fault's
parallel part (exit, host fault, zeroing, prefetched pages, and pin work done under no
lock) and its lock sections (RFC v2's slots_arch_lock; the shadow MMU's mmu_lock for
write, with RFC v1's pin work inside it).
"""

from __future__ import annotations

import numpy as np
import pytest

from pinning.model import state as sim
from pinning.model import strategies
from pinning.model.costs import COST_KEYS, SPREAD_KEYS, CostProfile
from pinning.model.host import Host
from pinning.model.kernels import engine as K
from pinning.model.names import InputError
from pinning.model.units import PAGE_SIZE, unit_pages
from pinning.model.vcpu import TIMELINE_SAMPLES, VcpuResult, run_workload
from pinning.model.workloads import Phase, Remap, Workload

STRATEGIES = ("upfront", "demand", "demand-v2")
TDP = Host.of("5.17", "yes", "tdp")  # the default host
SHADOW = Host.of("5.17", "yes", "shadow")

# Distinct, exactly representable costs so that sums by hand are exact.
COSTS = {
    "npf_exit_ns": 1024.0,
    "host_fault_ns": 2048.0,
    "zero_byte_ns": 1 / 16,  # 256 ns per 4 KiB frame
    "pin_ns": 64.0,
    "unpin_ns": 16.0,
    "clflush_page_ns": 512.0,
    "page_flush_ns": 128.0,
    "wbinvd_ns": 1_000_000.0,
    "lock_hold_ns": 32.0,
    "guest_touch_ns": 8.0,
    "spte_prefetch_ns": 4.0,
    "rmpupdate_ns": 256.0,
    "psc_exit_ns": 4096.0,
    "psp_command_ns": 8192.0,
    "attr_store_ns": 2.0,
}
ZERO = COSTS["zero_byte_ns"] * PAGE_SIZE


def profile(**changes: float) -> CostProfile:
    costs = {k: changes.get(k, v) for k, v in COSTS.items()}
    spread = {k: changes.get(k, 0.0) for k in SPREAD_KEYS}  # deterministic unless asked
    assert set(costs) == set(COST_KEYS)
    return CostProfile("test", "test costs", None, "test", costs, spread)


def rules(strategy: str, host: Host, level: str) -> np.ndarray:
    return np.array(strategies.get(strategy).rules(host, level), dtype=np.int64)


def engine_op(state: sim.State, strategy: str, level: str, op: int, npages: int = 0,
              host: Host = TDP) -> int:
    """One operation of the bulk engine (not the vCPU model); its status."""
    status, _, _ = K.run(state, rules(strategy, host, level), unit_pages(level), K.NO_LIMIT,
                         np.array([op], np.int8), np.zeros(1, np.int64),
                         np.array([npages], np.int64), np.zeros(0, np.uint32))
    return status


def started(strategy: str, guest_pages: int, level: str = "4k", remapped: int = 0,
            host: Host = TDP) -> sim.State:
    state = sim.new_state(strategies.get(strategy), guest_pages, level, remapped)
    assert engine_op(state, strategy, level, K.OP_STARTUP, host=host) == K.OK
    return state


def phase(units, nvcpus: int = 1) -> Phase:
    """``units`` split into ``nvcpus`` equal contiguous slices."""
    units = np.asarray(units, dtype=np.uint32)
    bounds = np.linspace(0, len(units), nvcpus + 1).round().astype(np.int64)
    return Phase(units, bounds)


def run(strategy: str, guest_pages: int, steps, nvcpus: int = 1, level: str = "4k",
        prof: CostProfile | None = None, remapped: int = 0, host: Host = TDP,
        seed: int = 0) -> tuple[VcpuResult, sim.State]:
    state = started(strategy, guest_pages, level, remapped, host)
    res = run_workload(state, strategy, level, Workload(tuple(steps), nvcpus),
                       prof or profile(), host=host, seed=seed)
    return res, state


@pytest.mark.parametrize("host", [TDP, SHADOW], ids=["tdp", "shadow"])
@pytest.mark.parametrize("level", ["4k", "2m"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_vcpu_counts_like_the_bulk_engine(strategy, level, host):
    guest_pages = 8 * 512
    n_units = guest_pages // unit_pages(level)
    res, state = run(strategy, guest_pages, [phase(np.arange(n_units))], level=level,
                     host=host)
    assert res.accesses == n_units == res.ops_done
    assert res.faults == res.counters["npf_exits"] <= n_units
    engine_op(state, strategy, level, K.OP_TEARDOWN, host=host)
    K.finish(state)
    # the bulk engine, touching every unit in one operation, counts the same
    bulk = started(strategy, guest_pages, level, host=host)
    assert engine_op(bulk, strategy, level, K.OP_ACCESS_RANGE, n_units, host=host) == K.OK
    engine_op(bulk, strategy, level, K.OP_TEARDOWN, host=host)
    K.finish(bulk)
    assert sim.counters_dict(state) == sim.counters_dict(bulk)


# Per fault at 4 KiB on the default host (5.17, coherent, TDP MMU): (parallel part, lock
# section) of a first fault and of a re-fault after a remap, from docs/model.md.
C = COSTS
FIRST_AND_REFAULT = {
    # startup populated and pinned everything: a first fault is the exit; a re-fault
    # gets a fresh frame (host fault + zeroing) and pins nothing
    "upfront": ((C["npf_exit_ns"], 0.0),
                (C["npf_exit_ns"] + C["host_fault_ns"] + ZERO, 0.0)),
    # RFC v1: get_page + an unconditional CLFLUSH of the level under mmu_lock, which
    # the TDP MMU holds for read (no queue); a re-fault drops the old pin too (no flush)
    "demand": ((C["npf_exit_ns"] + C["host_fault_ns"] + ZERO + C["pin_ns"]
                + C["clflush_page_ns"], 0.0),
               (C["npf_exit_ns"] + C["host_fault_ns"] + ZERO + C["pin_ns"] + C["unpin_ns"]
                + C["clflush_page_ns"], 0.0)),
    # RFC v2: hva_to_pfn's transient pin and unpin outside the lock; the long-lived pin
    # (and a replaced pin's unpin) under slots_arch_lock; coherent: no flush
    "demand-v2": ((C["npf_exit_ns"] + C["host_fault_ns"] + ZERO + C["pin_ns"]
                   + C["unpin_ns"], C["lock_hold_ns"] + C["pin_ns"]),
                  (C["npf_exit_ns"] + C["host_fault_ns"] + ZERO + C["pin_ns"]
                   + C["unpin_ns"], C["lock_hold_ns"] + C["pin_ns"] + C["unpin_ns"])),
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_vcpu_makespan_is_the_sum_of_access_costs(strategy):
    n = 256
    steps = [phase(np.concatenate([np.arange(n), np.arange(n // 2)])),  # n faults, n/2 hits
             Remap(0, n // 4),  # 5.17: no WBINVD on an invalidation
             phase(np.arange(n // 4))]  # re-faults onto new frames
    res, _ = run(strategy, n, steps, remapped=n // 4)
    (first, first_lock), (again, again_lock) = FIRST_AND_REFAULT[strategy]
    hits = n // 2 * C["guest_touch_ns"]
    assert res.makespan_ns == n * (first + first_lock) + hits + n // 4 * (again + again_lock)
    assert res.lock_hold_ns == n * first_lock + n // 4 * again_lock
    assert res.lock_wait_ns == 0.0
    assert res.faults == n + n // 4 and res.accesses == n + n // 2 + n // 4
    assert res.ops_done == res.accesses + 1


def test_a_remap_costs_its_wbinvd_from_5_18():
    n = 64
    steps = [phase(np.arange(n)), Remap(0, 8), phase(np.arange(8))]
    old, _ = run("upfront", n, steps, remapped=8)
    new, _ = run("upfront", n, steps, remapped=8, host=Host.of("5.18", "yes", "tdp"))
    assert new.counters["wbinvd"] == 1 and old.counters["wbinvd"] == 0
    assert new.makespan_ns - old.makespan_ns == C["wbinvd_ns"]


def test_a_non_coherent_cpu_flushes_under_the_v2_lock():
    n = 64
    host = Host.of("5.17", "no", "tdp")
    steps = [phase(np.arange(n)), Remap(0, n), phase(np.arange(n))]
    res, _ = run("demand-v2", n, steps, remapped=n, host=host)
    # each pin CLFLUSHes its page; each replaced pin is VM_PAGE_FLUSHed first
    (_, first_lock), (_, again_lock) = FIRST_AND_REFAULT["demand-v2"]
    assert res.lock_hold_ns == (n * (first_lock + C["clflush_page_ns"])
                                + n * (again_lock + C["clflush_page_ns"] + C["page_flush_ns"]))


def test_the_shadow_mmu_prefetches_and_serialises_every_fault():
    n = 64
    res, _ = run("upfront", n, [phase(np.arange(n))], host=SHADOW)
    # one fault per 8-page window: the 7 neighbours are mapped in the same fault
    assert res.faults == n // 8 and res.counters["prefetched_pages"] == n - n // 8
    per_fault = C["npf_exit_ns"] + 7 * C["spte_prefetch_ns"] + C["lock_hold_ns"]
    assert res.makespan_ns == n // 8 * per_fault + (n - n // 8) * C["guest_touch_ns"]
    assert res.lock_hold_ns == n // 8 * C["lock_hold_ns"]
    # RFC v1's pin work runs inside the write-held mmu_lock
    dem, _ = run("demand", n, [phase(np.arange(n))], host=SHADOW)
    (first, _), _ = FIRST_AND_REFAULT["demand"]
    pin_work = C["pin_ns"] + C["clflush_page_ns"]
    assert dem.faults == n and dem.lock_hold_ns == n * (C["lock_hold_ns"] + pin_work)
    assert dem.makespan_ns == n * (first + C["lock_hold_ns"])


@pytest.mark.parametrize("strategy", ["upfront", "demand"])
def test_no_lock_no_queue_under_the_tdp_mmu(strategy):
    n = 8192
    one, _ = run(strategy, n, [phase(np.arange(n), 1)], 1)
    eight, _ = run(strategy, n, [phase(np.arange(n), 8)], 8)
    assert eight.faults == one.faults == n
    assert eight.faults_per_s == pytest.approx(8 * one.faults_per_s, rel=1e-9)
    assert eight.lock_wait_ns == eight.lock_hold_ns == 0.0


@pytest.mark.parametrize(("strategy", "host"), [("demand-v2", TDP), ("upfront", SHADOW)],
                         ids=["slots_arch_lock", "mmu_lock"])
def test_a_held_lock_saturates(strategy, host):
    n = 8192
    prof = profile(npf_exit_ns=100.0, host_fault_ns=0.0, zero_byte_ns=0.0, pin_ns=0.0,
                   unpin_ns=0.0, spte_prefetch_ns=0.0, lock_hold_ns=10_000.0)
    units = np.arange(n) if host is TDP else np.arange(0, n, 8)  # shadow: one per window
    one, _ = run(strategy, n, [phase(units, 1)], 1, prof=prof, host=host)
    eight, _ = run(strategy, n, [phase(units, 8)], 8, prof=prof, host=host)
    assert one.faults == eight.faults == len(units)
    assert one.faults_per_s == pytest.approx(1e9 / 10_100.0, rel=1e-9)
    assert eight.faults_per_s == pytest.approx(1e9 / 10_000.0, rel=0.01)
    assert eight.lock_wait_ns > 0.0
    assert eight.lock_hold_ns == pytest.approx(len(units) * 10_000.0)
    # Seven vCPUs queue behind the lock: p99 latency is about 8 lock sections.
    assert eight.latency_quantiles_ns([0.99])[0] == pytest.approx(80_000.0, rel=0.1)


def test_spread_keeps_the_mean_and_follows_the_seed():
    n = 20_000
    flat, _ = run("demand-v2", n, [phase(np.arange(n))])
    spread = profile(fault_cv=0.5, lock_cv=0.5)
    a, _ = run("demand-v2", n, [phase(np.arange(n))], prof=spread, seed=1)
    b, _ = run("demand-v2", n, [phase(np.arange(n))], prof=spread, seed=1)
    c, _ = run("demand-v2", n, [phase(np.arange(n))], prof=spread, seed=2)
    # gamma factors of mean 1: one vCPU's sum of 20 000 faults within 2 %
    assert a.makespan_ns == pytest.approx(flat.makespan_ns, rel=0.02)
    assert a.makespan_ns == b.makespan_ns and a.makespan_ns != c.makespan_ns
    # the spread widens the latency distribution (a constant fills one bin)
    assert np.count_nonzero(flat.latency_counts) == 1
    assert np.count_nonzero(a.latency_counts) > 20


def test_runs_are_deterministic():
    rng = np.random.default_rng(7)
    n = 4096
    units = rng.integers(0, n // 512, size=3000).astype(np.uint32)  # overlapping, repeated
    steps = [phase(units, 5), Remap(512, 700), phase(units[::-1].copy(), 5)]
    prof = profile(fault_cv=0.5, lock_cv=0.5)
    a, sa = run("demand-v2", n, steps, 5, level="2m", remapped=1024, prof=prof, seed=3)
    b, sb = run("demand-v2", n, steps, 5, level="2m", remapped=1024, prof=prof, seed=3)
    for field in ("faults", "accesses", "makespan_ns", "lock_wait_ns", "lock_hold_ns",
                  "counters", "ops_done"):
        assert getattr(a, field) == getattr(b, field)
    for field in ("latency_counts", "timeline", "clocks_ns"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(("strategy", "nvcpus"),
                         [("demand", 1), ("demand-v2", 1), ("upfront", 8)])
def test_quantiles_bracket_a_constant_latency(strategy, nvcpus):
    n = 2048
    res, _ = run(strategy, n, [phase(np.arange(n), nvcpus)], nvcpus)
    (first, lock), _ = FIRST_AND_REFAULT[strategy]
    true = first + lock
    edges = res.latency_bin_edges_ns
    b = np.searchsorted(edges, true, side="right") - 1
    assert res.latency_counts[b] == n == res.latency_counts.sum()
    width = edges[b + 1] - edges[b]
    qs = res.latency_quantiles_ns([0.0, 0.01, 0.5, 0.99, 1.0])
    assert np.all(np.abs(qs - true) <= width)
    assert np.all((qs >= edges[b]) & (qs <= edges[b + 1]))
    assert np.all(np.diff(qs) >= 0)


def test_quantiles_without_faults_and_bad_quantiles():
    state = started("demand", 64)
    first = run_workload(state, "demand", "4k", Workload((phase(np.arange(64)),), 1),
                         profile())
    # Everything is mapped now: the same phase again only touches.
    hits_only = run_workload(state, "demand", "4k", Workload((phase(np.arange(64)),), 1),
                             profile())
    assert hits_only.faults == 0 and hits_only.makespan_ns == 64 * C["guest_touch_ns"]
    assert np.isnan(hits_only.latency_quantiles_ns([0.5])).all()
    with pytest.raises(InputError, match="between 0 and 1"):
        first.latency_quantiles_ns([1.5])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_timeline_is_short_monotone_and_ends_at_the_pinned_count(strategy):
    n = 1 << 14
    units = np.concatenate([np.arange(n), np.arange(n)])  # 2n accesses, n faults
    res, state = run(strategy, n, [phase(units, 8)], 8)
    tl = res.timeline
    assert tl.shape[1] == 2 and 2 < tl.shape[0] <= TIMELINE_SAMPLES + 2
    assert np.all(np.diff(tl[:, 0]) >= 0)
    assert tl[-1, 1] == state.scal[sim.PINNED] == n
    assert tl[0, 0] == 0.0
    assert tl[0, 1] == (n if strategy == "upfront" else 0)
    if strategy != "upfront":
        assert np.all(np.diff(tl[:, 1]) >= 0)


def test_timeline_keeps_every_fault_when_few():
    res, _ = run("demand-v2", 512, [phase(np.arange(100), 3)], 3)
    # The start, then one row per fault: pinned pages 1..100, each when its lock is
    # released (the last fault's release ends the phase).
    assert res.timeline[:, 1].tolist() == list(range(101))
    assert res.timeline[-1, 0] == res.makespan_ns
    # without a lock (RFC v1, TDP MMU) a fault's pins count from its start
    v1, _ = run("demand", 512, [phase(np.arange(100), 3)], 3)
    (first, _), _ = FIRST_AND_REFAULT["demand"]
    assert v1.timeline[:, 1].tolist() == list(range(101))
    assert v1.timeline[-1, 0] == v1.makespan_ns - first


def test_steps_are_barriers():
    p1 = Phase(np.arange(4, dtype=np.uint32), np.array([0, 1, 4], np.int64))
    p2 = Phase(np.arange(4, 6, dtype=np.uint32), np.array([0, 1, 2], np.int64))
    res, _ = run("upfront", 8, [p1, p2], 2)
    # vCPU 1 takes three faults in phase 1; both vCPUs start phase 2 after it.
    assert res.clocks_ns.tolist() == [4 * C["npf_exit_ns"]] * 2


@pytest.mark.parametrize(("change", "match"), [
    ({"nvcpus": 0}, "nvcpus 0 must be between 1 and 64"),
    ({"nvcpus": 65}, "nvcpus 65 must be between 1 and 64"),
    ({"units": np.array([0, 99], np.uint32)}, "unit indices"),
    ({"units": np.array([0, 1], np.int32)}, "uint32 or int64"),
    ({"bounds": np.array([0, 1], np.int64)}, "bounds must rise"),
    ({"bounds": np.array([0, 2], np.int32)}, "bounds must be int64"),
    ({"remap": Remap(60, 10)}, "outside the guest"),
    ({"strategy": "eager"}, "unknown strategy"),
    ({"level": "2m"}, "level 2m"),
    ({"no_startup": True}, "startup"),
    ({"remap": Remap(0, 8), "capacity": True}, "remapped_pages=8"),
])
def test_bad_input_is_refused(change, match):
    units = change.get("units", np.arange(4, dtype=np.uint32))
    bounds = change.get("bounds", np.array([0, len(units)], np.int64))
    steps = [Phase(units, bounds)]
    if "remap" in change:
        steps.append(change["remap"])
    nvcpus = change.get("nvcpus", 1)
    if "nvcpus" in change:
        steps = [Phase(units, np.zeros(max(nvcpus, 0) + 1, np.int64))]
    state = (sim.new_state(strategies.get("demand"), 64, "4k") if change.get("no_startup")
             else started("demand", 64, remapped=0 if change.get("capacity") else 64))
    with pytest.raises(InputError, match=match):
        run_workload(state, change.get("strategy", "demand"), change.get("level", "4k"),
                     Workload(tuple(steps), nvcpus), profile())


def test_incomplete_profile_is_refused():
    state = started("demand", 64)
    prof = CostProfile("x", "y", None, "test", {"pin_ns": 1.0})
    with pytest.raises(InputError, match="profile must be a CostProfile"):
        run_workload(state, "demand", "4k", Workload((phase(np.arange(4)),), 1), prof)

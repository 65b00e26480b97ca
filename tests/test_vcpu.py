"""The vCPU model: engine bookkeeping, modelled time, the per-VM lock, histogram and timeline."""

from __future__ import annotations

import numpy as np
import pytest

from pinning.model import state as sim
from pinning.model import strategies
from pinning.model.costs import COST_KEYS, CostProfile
from pinning.model.kernels import engine as K
from pinning.model.names import InputError
from pinning.model.units import unit_pages
from pinning.model.vcpu import TIMELINE_SAMPLES, VcpuResult, run_workload
from pinning.model.workloads import Phase, Remap, Workload

STRATEGIES = ("upfront", "demand")

# Distinct, exactly representable costs so that sums by hand are exact.
COSTS = {
    "npf_exit_ns": 1000.0,
    "zero_frame_ns": 256.0,
    "pin_ns": 64.0,
    "unpin_ns": 16.0,
    "clflush_page_ns": 512.0,
    "page_flush_ns": 128.0,
    "wbinvd_ns": 1_000_000.0,
    "lock_hold_ns": 32.0,
    "guest_touch_ns": 8.0,
    "zero_metadata_ns": 4096.0,  # not part of the vCPU model (startup only)
}


def profile(**overrides: float) -> CostProfile:
    costs = {**COSTS, **overrides}
    assert set(costs) == set(COST_KEYS)
    return CostProfile("test", "test costs", None, "test", costs)


def rules(strategy: str) -> np.ndarray:
    return np.array(strategies.get(strategy).rules(), dtype=np.int64)


def engine_op(state: sim.State, strategy: str, level: str, op: int, npages: int = 0) -> int:
    """One operation of the bulk engine (not the vCPU model); its status."""
    status, _, _ = K.run(state, rules(strategy), unit_pages(level), K.NO_LIMIT,
                         np.array([op], np.int8), np.zeros(1, np.int64),
                         np.array([npages], np.int64), np.zeros(0, np.uint32))
    return status


def started(strategy: str, guest_pages: int, level: str = "4k",
            remapped: int = 0) -> sim.State:
    state = sim.new_state(strategies.get(strategy), guest_pages, level, remapped)
    assert engine_op(state, strategy, level, K.OP_STARTUP) == K.OK
    return state


def phase(units, nvcpus: int = 1) -> Phase:
    """``units`` split into ``nvcpus`` equal contiguous slices."""
    units = np.asarray(units, dtype=np.uint32)
    bounds = np.linspace(0, len(units), nvcpus + 1).round().astype(np.int64)
    return Phase(units, bounds)


def run(strategy: str, guest_pages: int, steps, nvcpus: int = 1, level: str = "4k",
        prof: CostProfile | None = None, memlock_pages: int = K.NO_LIMIT,
        remapped: int = 0) -> tuple[VcpuResult, sim.State]:
    state = started(strategy, guest_pages, level, remapped)
    res = run_workload(state, strategy, level, memlock_pages, Workload(tuple(steps), nvcpus),
                       prof or profile())
    return res, state


@pytest.mark.parametrize("level", ["4k", "2m"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_vcpu_counts_like_the_sequential_pattern(strategy, level):
    guest_pages = 8 * 512
    n_units = guest_pages // unit_pages(level)
    res, state = run(strategy, guest_pages, [phase(np.arange(n_units))], level=level)
    assert res.status == K.OK and res.error is None
    assert res.faults == res.accesses == n_units == res.counters["npf_exits"]
    engine_op(state, strategy, level, K.OP_TEARDOWN)
    K.finish(state)
    # the bulk engine, touching every unit in one operation, counts the same
    bulk = started(strategy, guest_pages, level)
    assert engine_op(bulk, strategy, level, K.OP_ACCESS_RANGE, n_units) == K.OK
    engine_op(bulk, strategy, level, K.OP_TEARDOWN)
    K.finish(bulk)
    assert sim.counters_dict(state) == sim.counters_dict(bulk)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_vcpu_makespan_is_the_sum_of_access_costs(strategy):
    n = 256
    c = COSTS
    steps = [phase(np.concatenate([np.arange(n), np.arange(n // 2)])),  # n faults, n/2 hits
             Remap(0, n // 4),
             phase(np.arange(n // 4))]  # re-faults onto new frames
    res, _ = run(strategy, n, steps, remapped=n // 4)
    hits = n // 2 * c["guest_touch_ns"]
    if strategy == "upfront":
        # Startup populated every frame; a remap WBINVDs; re-faults zero new frames, pin nothing.
        first = n * c["npf_exit_ns"]
        remap = c["wbinvd_ns"]
        again = n // 4 * (c["npf_exit_ns"] + c["zero_frame_ns"])
    else:
        section = c["lock_hold_ns"] + c["pin_ns"] + c["clflush_page_ns"]
        first = n * (c["npf_exit_ns"] + c["zero_frame_ns"] + section)
        remap = 0.0
        again = n // 4 * (c["npf_exit_ns"] + c["zero_frame_ns"] + section
                          + c["unpin_ns"] + c["page_flush_ns"])
        assert res.lock_hold_ns == n * section + n // 4 * (section + c["unpin_ns"]
                                                           + c["page_flush_ns"])
    assert res.makespan_ns == first + hits + remap + again
    assert res.lock_wait_ns == 0.0
    assert res.faults == n + n // 4 and res.accesses == n + n // 2 + n // 4


def test_upfront_scales_with_vcpus():
    n = 8192
    prof = profile(lock_hold_ns=0.0)
    one, _ = run("upfront", n, [phase(np.arange(n), 1)], 1, prof=prof)
    eight, _ = run("upfront", n, [phase(np.arange(n), 8)], 8, prof=prof)
    assert eight.faults == one.faults == n
    assert eight.faults_per_s == pytest.approx(8 * one.faults_per_s, rel=1e-9)
    assert eight.lock_wait_ns == eight.lock_hold_ns == 0.0


def test_demand_saturates_on_the_per_vm_lock():
    n = 8192
    prof = profile(npf_exit_ns=100.0, zero_frame_ns=100.0, lock_hold_ns=10_000.0,
                   clflush_page_ns=0.0)
    section = 10_000.0 + COSTS["pin_ns"]
    one, _ = run("demand", n, [phase(np.arange(n), 1)], 1, prof=prof)
    eight, _ = run("demand", n, [phase(np.arange(n), 8)], 8, prof=prof)
    assert one.faults_per_s == pytest.approx(1e9 / (section + 200.0), rel=1e-9)
    assert eight.faults_per_s == pytest.approx(1e9 / section, rel=0.01)
    assert eight.lock_wait_ns > 0.0
    assert eight.lock_hold_ns == pytest.approx(n * section)
    # Seven vCPUs queue behind the lock: p99 latency is about 8 lock sections.
    assert eight.latency_quantiles_ns([0.99])[0] == pytest.approx(8 * section, rel=0.1)


def test_runs_are_deterministic():
    rng = np.random.default_rng(7)
    n = 4096
    units = rng.integers(0, n // 512, size=3000).astype(np.uint32)  # overlapping, repeated
    steps = [phase(units, 5), Remap(512, 700), phase(units[::-1].copy(), 5)]
    a, sa = run("demand", n, steps, 5, level="2m", remapped=1024)
    b, sb = run("demand", n, steps, 5, level="2m", remapped=1024)
    for field in ("status", "error", "faults", "accesses", "makespan_ns", "lock_wait_ns",
                  "lock_hold_ns", "counters"):
        assert getattr(a, field) == getattr(b, field)
    for field in ("latency_counts", "timeline", "clocks_ns"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    for x, y in zip(sa, sb, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(("level", "limit", "faults", "pins"),
                         [("4k", 10, 11, 10), ("2m", 600, 2, 600)])
def test_memlock_failure_stops_mid_phase(level, limit, faults, pins):
    n = 4 * 512
    n_units = n // unit_pages(level)
    steps = [phase(np.arange(n_units), 2), Remap(0, n), phase(np.arange(n_units), 2)]
    res, state = run("demand", n, steps, 2, level=level, memlock_pages=limit, remapped=n)
    assert res.status == K.ERR_MEMLOCK
    assert "memory lock limit exceeded" in res.error and "step 1" in res.error
    assert res.faults == res.accesses == faults
    assert res.counters["pins"] == pins == state.scal[sim.PINNED]
    assert res.counters["clflush_bytes"] == (faults - 1) * unit_pages(level) * 4096
    assert state.nested.sum() == faults - 1  # the failing fault installed no mapping


@pytest.mark.parametrize(("strategy", "nvcpus"), [("demand", 1), ("upfront", 8)])
def test_quantiles_bracket_a_constant_latency(strategy, nvcpus):
    n = 2048
    res, _ = run(strategy, n, [phase(np.arange(n), nvcpus)], nvcpus)
    c = COSTS
    if strategy == "demand":
        true = (c["npf_exit_ns"] + c["zero_frame_ns"] + c["lock_hold_ns"] + c["pin_ns"]
                + c["clflush_page_ns"])
    else:
        true = c["npf_exit_ns"]
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
    first = run_workload(state, "demand", "4k", K.NO_LIMIT,
                         Workload((phase(np.arange(64)),), 1), profile())
    # Everything is mapped now: the same phase again only touches.
    hits_only = run_workload(state, "demand", "4k", K.NO_LIMIT,
                             Workload((phase(np.arange(64)),), 1), profile())
    assert hits_only.faults == 0 and hits_only.makespan_ns == 64 * COSTS["guest_touch_ns"]
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
    assert tl[0, 1] == (0 if strategy == "demand" else n)
    if strategy == "demand":
        assert np.all(np.diff(tl[:, 1]) >= 0)


def test_timeline_keeps_every_fault_when_few():
    res, _ = run("demand", 512, [phase(np.arange(100), 3)], 3)
    # The start, then one row per fault: pinned pages 1..100.
    assert res.timeline[:, 1].tolist() == list(range(101))
    assert res.timeline[-1, 0] == res.makespan_ns


def test_steps_are_barriers():
    c = COSTS
    p1 = Phase(np.arange(4, dtype=np.uint32), np.array([0, 1, 4], np.int64))
    p2 = Phase(np.arange(4, 6, dtype=np.uint32), np.array([0, 1, 2], np.int64))
    res, _ = run("upfront", 8, [p1, p2], 2)
    # vCPU 1 takes three faults in phase 1; both vCPUs start phase 2 after it.
    assert res.clocks_ns.tolist() == [4 * c["npf_exit_ns"]] * 2


@pytest.mark.parametrize(("change", "match"), [
    ({"nvcpus": 0}, "nvcpus 0 must be between 1 and 64"),
    ({"nvcpus": 65}, "nvcpus 65 must be between 1 and 64"),
    ({"units": np.array([0, 99], np.uint32)}, "unit indices"),
    ({"units": np.array([0, 1], np.int32)}, "uint32 or int64"),
    ({"bounds": np.array([0, 1], np.int64)}, "bounds must rise"),
    ({"bounds": np.array([0, 2], np.int32)}, "bounds must be int64"),
    ({"remap": Remap(60, 10)}, "outside the guest"),
    ({"memlock": -5}, "memory-lock limit"),
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
                     change.get("memlock", K.NO_LIMIT), Workload(tuple(steps), nvcpus), profile())


def test_incomplete_profile_is_refused():
    state = started("demand", 64)
    prof = CostProfile("x", "y", None, "test", {"pin_ns": 1.0})
    with pytest.raises(InputError, match="profile must be a CostProfile"):
        run_workload(state, "demand", "4k", K.NO_LIMIT,
                     Workload((phase(np.arange(4)),), 1), prof)

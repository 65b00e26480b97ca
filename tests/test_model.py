"""Property tests: the Numba kernels agree with the pure-Python reference model.

Random traces of accesses and remaps (both strategies, 4k/2m/1g, tiny
memory-lock limits) are run through the one lifecycle (``tests.modelrun.simulate``) and
``tests.reference``; every counter, the error flag and the final state must
agree, with and without teardown. Every kernel result is also checked against
the model's invariants.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from pinning.model.traces import Trace
from tests.modelrun import simulate
from tests.reference import (
    COUNTER_NAMES,
    LEVEL_UNIT_PAGES,
    PAGE_SIZE,
    RefResult,
    pattern_ops,
    run_reference,
    run_reference_both,
)

STRATEGIES = ("upfront", "demand")


# ---- invariants -------------------------------------------------------------------


def check_invariants(snap: dict, counters: dict, strategy: str, torn_down: bool) -> None:
    """Assert the model's invariants on one final state and its counters."""
    assert set(counters) == set(COUNTER_NAMES)
    # No negative count anywhere (snapshots list nonzero entries, so > 0).
    for name, value in counters.items():
        assert value >= 0, f"counter {name} = {value}"
    for key in ("host_map", "refs", "pins", "region", "pfns"):
        for k, v in snap[key].items():
            assert k >= 0 and v > 0, f"{key}[{k}] = {v}"
    assert snap["pinned"] >= 0 and snap["stale"] >= 0
    assert snap["next_pfn"] >= 1

    refs, pins, host_map, free = snap["refs"], snap["pins"], snap["host_map"], snap["free"]
    if strategy == "upfront":
        kvm_pins = dict(snap["region"])
        assert not snap["bitmap"] and not snap["pfns"]
    else:
        kvm_pins = {g: snap["pfns"].get(g, 0) for g in snap["bitmap"]}
        assert all(kvm_pins.values()), "a set bit without a stored pfn"
        assert not snap["region"]

    # Pinned pages == set bits (demand) / nonzero page-array entries (upfront).
    assert snap["pinned"] == len(kvm_pins)
    assert sum(pins.values()) == snap["pinned"]
    assert counters["pins"] - counters["unpins"] == snap["pinned"]
    assert snap["pinned"] <= counters["pinned_pages_peak"]

    # Free stack: distinct, allocated once, holding no reference or pin.
    assert len(set(free)) == len(free)
    for pfn in free:
        assert 1 <= pfn < snap["next_pfn"]
        assert pfn not in refs and pfn not in pins
    free_set = set(free)
    # Every mapped or pinned frame is live, not on the free stack.
    for pfn in list(host_map.values()) + list(kvm_pins.values()):
        assert pfn not in free_set
        assert 1 <= pfn < snap["next_pfn"]
    # Pin count <= reference count; refs = VMM mapping + pins.
    for pfn, n in pins.items():
        assert n <= refs.get(pfn, 0)
    assert len(set(host_map.values())) == len(host_map), "a frame mapped at two gfns"
    mapped_by = {pfn: 1 for pfn in host_map.values()}
    for pfn, n in refs.items():
        assert n == mapped_by.get(pfn, 0) + pins.get(pfn, 0)
    # Every frame ever allocated is either live or free.
    assert set(refs) | free_set == set(range(1, snap["next_pfn"]))
    assert counters["frames_zeroed"] >= snap["next_pfn"] - 1

    # Stale pins: pinned frames that are no longer the VMM's frame of their gfn.
    stale = sum(1 for g, pfn in kvm_pins.items() if host_map.get(g) != pfn)
    assert snap["stale"] == stale
    assert stale <= counters["stale_pins_peak"]

    assert counters["pinned_pages_end"] == snap["pinned"]
    assert counters["leaked_refs"] == sum(refs.values()) - len(host_map)
    if strategy == "upfront":
        assert counters["page_flushes"] == 0
    else:
        assert counters["unpinned_mapped_hazards"] == 0
    if torn_down:
        assert counters["pinned_pages_end"] == 0
        assert counters["leaked_refs"] == 0
        assert not snap["nested"] and not snap["bitmap"] and not snap["region"]
        assert not pins


# ---- strategies -------------------------------------------------------------------


@st.composite
def ops_lists(draw, guest_pages: int, max_ops: int) -> list[tuple[str, int, int]]:
    """Accesses anywhere in the guest and remaps of random (unaligned) ranges.

    Half of the gfns revisit a gfn used before, so that re-faults after a remap
    (pin replacement, hazards, allocator reuse) are common.
    """
    ops: list[tuple[str, int, int]] = []
    used: list[int] = []
    for _ in range(draw(st.integers(0, max_ops))):
        if used and draw(st.booleans()):
            gfn = draw(st.sampled_from(used))
        else:
            gfn = draw(st.integers(0, guest_pages - 1))
        used.append(gfn)
        if draw(st.integers(0, 3)) == 0:
            npages = draw(st.one_of(st.integers(1, 3), st.integers(1, guest_pages)))
            ops.append(("remap", gfn, min(npages, guest_pages - gfn)))
        else:
            ops.append(("access", gfn, 1))
    return ops


def memlock_limits(guest_pages: int, unit: int) -> st.SearchStrategy[int | None]:
    """None, 0, a few pages, and values just under/at/over what the guest needs."""
    need = guest_pages * PAGE_SIZE
    edges = [need - 1, need, need + 1, need - PAGE_SIZE, need + PAGE_SIZE - 1]
    edges += [k * unit * PAGE_SIZE + d for k in (1, 2) for d in (-PAGE_SIZE, -1, 0, 1)]
    return st.one_of(
        st.none(),
        st.none(),
        st.none(),
        st.just(0),
        st.integers(0, 5 * PAGE_SIZE),
        st.integers(0, need + PAGE_SIZE),
        st.sampled_from(sorted({max(0, e) for e in edges})),
    )


@st.composite
def scenarios(draw, level: str, max_units: int, max_ops: int):
    unit = LEVEL_UNIT_PAGES[level]
    strategy = draw(st.sampled_from(STRATEGIES))
    units = draw(st.integers(1, max_units))
    guest_pages = units * unit
    ops = draw(ops_lists(guest_pages, max_ops))
    limit = draw(memlock_limits(guest_pages, unit))
    return strategy, guest_pages, level, ops, limit


# ---- comparison -------------------------------------------------------------------


def compare_with_reference(strategy, guest_pages, level, ops, limit) -> RefResult:
    """Run kernel (teardown and not) and reference; assert full agreement + invariants."""
    live, destroyed = run_reference_both(strategy, guest_pages, level, ops, limit)
    trace = Trace.from_rows(ops)
    for teardown, ref in ((True, destroyed), (False, live)):
        got = simulate(strategy, guest_pages, level, trace=trace, memlock_limit=limit,
                       teardown=teardown)
        snap = got.snapshot
        check_invariants(snap, got.counters, strategy, torn_down=teardown)
        assert got.counters == ref.counters, f"teardown={teardown}"
        assert (got.error is None) == (ref.error is None), (got.error, ref.error)
        assert snap == ref.state, f"teardown={teardown}"
        assert got.result.ops_done == ref.ops_done, f"teardown={teardown}"
    return destroyed


def label(strategy: str, ref: RefResult) -> None:
    """Record what a generated example exercised (--hypothesis-show-statistics)."""
    c = ref.counters
    event(f"{strategy}: memlock error={ref.error is not None}")
    event(f"{strategy}: stale pins={c['stale_pins_peak'] > 0}, "
          f"replaced/hazard={c['page_flushes'] + c['unpinned_mapped_hazards'] > 0}")


@settings(max_examples=300)
@given(scenarios("4k", max_units=64, max_ops=30))
def test_kernels_match_reference_4k(scenario) -> None:
    label(scenario[0], compare_with_reference(*scenario))


@settings(max_examples=150)
@given(scenarios("2m", max_units=4, max_ops=12))
def test_kernels_match_reference_2m(scenario) -> None:
    label(scenario[0], compare_with_reference(*scenario))


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=3)
@given(data=st.data())
def test_kernels_match_reference_1g(strategy, data) -> None:
    unit = LEVEL_UNIT_PAGES["1g"]
    guest_pages = data.draw(st.integers(1, 2), label="units") * unit
    ops = data.draw(ops_lists(guest_pages, max_ops=3), label="ops")
    limit = data.draw(st.one_of(st.none(), st.sampled_from(
        [0, 3 * PAGE_SIZE, (unit - 1) * PAGE_SIZE, unit * PAGE_SIZE + 1,
         (guest_pages - 1) * PAGE_SIZE, guest_pages * PAGE_SIZE])), label="limit")
    compare_with_reference(strategy, guest_pages, "1g", ops, limit)


def test_1g_remap_refault_matches_reference() -> None:
    """A fixed 1g trace that always exercises the replace / hazard path at 1g."""
    unit = LEVEL_UNIT_PAGES["1g"]
    ops = [("access", 7, 1), ("remap", unit - 3, 2), ("access", 0, 1)]
    for strategy in STRATEGIES:
        compare_with_reference(strategy, unit, "1g", ops, None)
    # A 1g demand fault that fails at the unit's last page.
    compare_with_reference("demand", unit, "1g", [("access", 9, 1)], (unit - 1) * PAGE_SIZE)


# ---- generated patterns -----------------------------------------------------------


@settings(max_examples=150)
@given(
    strategy=st.sampled_from(STRATEGIES),
    level_units=st.one_of(
        st.tuples(st.just("4k"), st.integers(1, 64)),
        st.tuples(st.just("2m"), st.integers(1, 4)),
    ),
    pattern=st.sampled_from(("sequential", "random")),
    touch_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    limit_pages=st.one_of(st.none(), st.integers(0, 4 * 512 + 1)),
)
def test_patterns_match_reference(strategy, level_units, pattern, touch_fraction, seed,
                                  limit_pages) -> None:
    level, units = level_units
    unit = LEVEL_UNIT_PAGES[level]
    guest_pages = units * unit
    limit = None if limit_pages is None else limit_pages * PAGE_SIZE
    ops = pattern_ops(pattern, guest_pages, level, touch_fraction, seed)
    ref = run_reference(strategy, guest_pages, level, ops, limit)
    got = simulate(strategy, guest_pages, level, pattern=pattern, touch_fraction=touch_fraction,
                   seed=seed, memlock_limit=limit)
    snap = got.snapshot
    check_invariants(snap, got.counters, strategy, torn_down=True)
    assert got.counters == ref.counters
    assert (got.error is None) == (ref.error is None)
    assert snap == ref.state


def test_random_pattern_order_is_the_documented_shuffle() -> None:
    """The random pattern's first faults follow default_rng(seed).shuffle(arange(units))."""
    units = np.arange(16, dtype=np.uint32)
    np.random.default_rng(5).shuffle(units)
    ops = pattern_ops("random", 16, "4k", 0.5, seed=5)
    assert [g for _, g, _ in ops] == [int(u) for u in units[:8]]
    got = simulate("demand", 16, "4k", pattern="random", touch_fraction=0.5, seed=5,
                   teardown=False)
    # Frames are allocated in fault order: the i-th touched gfn holds pfn i+1.
    assert got.snapshot["host_map"] == {int(u): i + 1 for i, u in enumerate(units[:8])}

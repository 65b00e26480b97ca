"""Property tests: the Numba kernels agree with the pure-Python reference model.

Random traces of accesses and remaps (the three strategies, 4k/2m/1g, tiny
memory-lock limits, and the host parameters: kernel version, sme_coherent, MMU)
are run through the one lifecycle (``tests.modelrun.simulate``) and
``tests.reference``; every counter, the error flag and the final state must
agree, with and without teardown. Every kernel result is also checked against
the model's invariants (docs/model.md).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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
    parse_kernel,
    pattern_ops,
    run_reference,
    run_reference_both,
)

STRATEGIES = ("upfront", "demand", "demand-v2")
# Around every version where a counted rule changes (5.18, 6.17), and 6.15 (none).
KERNELS = ("5.17", "5.18", "6.1", "6.15", "6.16", "6.17", "6.18")
COHERENT = ("yes", "no")
MMUS = ("tdp", "shadow")


@dataclass(frozen=True)
class Case:
    """One run: the strategy, the guest, the operations, the limit and the host."""

    strategy: str
    guest_pages: int
    level: str
    ops: list = field(hash=False)
    limit: int | None = None
    kernel: str = "5.17"
    sme_coherent: str = "yes"
    mmu: str = "tdp"

    @property
    def host(self) -> dict[str, str]:
        return {"kernel": self.kernel, "sme_coherent": self.sme_coherent, "mmu": self.mmu}

    @property
    def unit(self) -> int:
        return LEVEL_UNIT_PAGES[self.level]


# ---- invariants -------------------------------------------------------------------


def teardown_wbinvd(case: Case) -> int:
    """WBINVDs of one teardown: notifier release from 5.18, sev_vm_destroy before 6.17,
    and demand-v2's sev_free_memslot."""
    version = parse_kernel(case.kernel)
    n = int(version >= (5, 18)) + int(version < (6, 17))
    return n + (1 if case.strategy == "demand-v2" else 0)


def check_invariants(snap: dict, counters: dict, case: Case, torn_down: bool,
                     failed: bool) -> None:
    """Assert the model's invariants on one final state and its counters.

    ``failed``: startup failed on the memory-lock limit (the run did nothing else).
    """
    strategy, unit, n = case.strategy, case.unit, case.guest_pages
    coherent = case.sme_coherent == "yes"
    assert set(counters) == set(COUNTER_NAMES)
    # No negative count anywhere (snapshots list nonzero entries, so > 0).
    for name, value in counters.items():
        assert value >= 0, f"counter {name} = {value}"
    for key in ("host_map", "refs", "pins", "region", "pfns"):
        d = snap[key]
        assert not d or (min(d) >= 0 and min(d.values()) > 0), f"{key}: {d}"
    assert snap["pinned"] >= 0 and snap["stale"] >= 0
    assert snap["next_pfn"] >= 1

    # Only upfront and demand-v2 check the limit, only at startup, and a failed
    # startup leaves every counter 0 and the state empty.
    if failed:
        assert strategy in ("upfront", "demand-v2")
        assert case.limit is not None and n > case.limit // PAGE_SIZE
        assert all(v == 0 for v in counters.values()), counters
        assert not snap["host_map"] and not snap["refs"] and snap["next_pfn"] == 1
        return
    assert strategy == "demand" or case.limit is None or n <= case.limit // PAGE_SIZE

    refs, pins, host_map, free = snap["refs"], snap["pins"], snap["host_map"], snap["free"]
    if strategy == "upfront":
        kvm_pins = dict(snap["region"])
        assert not snap["bitmap"] and not snap["pfns"]
    else:
        kvm_pins = {g: snap["pfns"].get(g, 0) for g in snap["bitmap"]}
        assert all(kvm_pins.values()), "a set bit without a stored pfn"
        assert not snap["region"]

    # Long-lived pins: one per page-array entry / set bit, each on its own frame.
    assert sum(pins.values()) == len(kvm_pins)
    # pins - unpins: upfront and demand count 4 KiB pages, so it is the pages pinned
    # now; demand-v2 counts operations (the transient pin + unpin of every fault
    # cancel out), so it is the number of long-lived pins, each holding a unit.
    assert counters["pins"] - counters["unpins"] == len(kvm_pins)
    if strategy == "demand-v2":
        assert all(g % unit == 0 for g in kvm_pins), "a v2 bit off a unit's first page"
        assert snap["pinned"] == unit * len(kvm_pins)
        assert counters["pinned_pages_peak"] % unit == 0
    else:
        assert snap["pinned"] == len(kvm_pins)
    assert snap["pinned"] <= counters["pinned_pages_peak"]

    # Free stack: distinct, allocated once, holding no reference or pin. (Set and
    # dict operations, not loops: a 1g guest has half a million frames.)
    next_pfn = snap["next_pfn"]
    free_set = set(free)
    assert len(free_set) == len(free)
    assert not free or (min(free) >= 1 and max(free) < next_pfn)
    assert free_set.isdisjoint(refs) and free_set.isdisjoint(pins)
    # Every mapped or pinned frame is live, not on the free stack.
    live = set(host_map.values()) | set(kvm_pins.values())
    assert free_set.isdisjoint(live)
    assert not live or (min(live) >= 1 and max(live) < next_pfn)
    # Pin count <= reference count; refs = VMM mapping + pins.
    assert len(set(host_map.values())) == len(host_map), "a frame mapped at two gfns"
    expected_refs = Counter(host_map.values())
    expected_refs.update(pins)
    assert refs == dict(expected_refs)
    # Every frame ever allocated is either live or free.
    assert not refs or (min(refs) >= 1 and max(refs) < next_pfn)
    assert len(refs) + len(free) == next_pfn - 1
    assert counters["frames_zeroed"] >= next_pfn - 1
    # The VMM maps and unmaps whole units, and a host fault populates a whole unit.
    per_unit = Counter(g // unit for g in host_map) if unit > 1 else {}
    assert all(k == unit for k in per_unit.values()), "a unit partly present"
    assert counters["frames_zeroed"] == unit * counters["host_faults"]

    # Stale pins: pinned frames that are no longer the VMM's frame of their gfn.
    stale = sum(1 for g, pfn in kvm_pins.items() if host_map.get(g) != pfn)
    assert snap["stale"] == stale
    assert stale <= counters["stale_pins_peak"]

    assert counters["pinned_pages_end"] == snap["pinned"]
    assert counters["leaked_refs"] == sum(refs.values()) - len(host_map)
    assert counters["metadata_bytes"] == (8 if strategy == "upfront" else 16) * n

    # WBINVD: one per remap from 5.18, and teardown's by version and strategy.
    remaps = sum(1 for op in case.ops if op[0] == "remap")
    version = parse_kernel(case.kernel)
    expected_wbinvd = remaps if version >= (5, 18) else 0
    if torn_down:
        expected_wbinvd += teardown_wbinvd(case)
    assert counters["wbinvd"] == expected_wbinvd

    # The shadow MMU prefetches only at 4k.
    if case.mmu == "tdp" or case.level != "4k":
        assert counters["prefetched_pages"] == 0

    faults = counters["npf_exits"]
    if strategy == "upfront":
        assert counters["pins"] == n  # every page at startup
        assert counters["unpins"] == (n if torn_down else 0)
        assert counters["clflush_bytes"] == (0 if coherent else PAGE_SIZE * n)
        assert counters["page_flushes"] == 0
        assert counters["pinned_pages_peak"] == n
    elif strategy == "demand":
        # get_page per subpage, a level flush per fault whatever the coherence, no
        # VM_PAGE_FLUSH.
        assert counters["clflush_bytes"] == faults * unit * PAGE_SIZE
        assert counters["page_flushes"] == 0
        # SPEC: a fault never finds a set bit with the same pfn (an unmapped unit whose
        # bit is set was remapped, and its old frame is still alive, held by the pin),
        # so every fault pins each of its pages.
        assert counters["pins"] == faults * unit
    else:
        # Each fault: a transient pin + unpin, and one long-lived pin (the same-pfn
        # refault, which would make none, cannot happen: see demand above).
        assert counters["unpins"] >= faults
        new_pins = counters["pins"] - faults
        assert new_pins == faults
        assert counters["clflush_bytes"] == (0 if coherent else new_pins * unit * PAGE_SIZE)
        assert counters["page_flushes"] % unit == 0
        assert counters["page_flushes"] <= new_pins * unit
        if coherent:
            assert counters["page_flushes"] == 0
        if not torn_down:
            replaced = counters["unpins"] - faults
            assert counters["page_flushes"] == (0 if coherent else replaced * unit)
    if strategy != "upfront":
        # A page gets a VMM frame only in a fault, which also maps its unit, and a
        # remap drops both: so an unmapped neighbour never has a frame, the prefetch
        # maps nothing, and every mapped page is pinned: no hazard.
        assert counters["prefetched_pages"] == 0
        assert counters["unpinned_mapped_hazards"] == 0
        if not torn_down:
            assert {g // unit for g in host_map} == snap["nested"]
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
    (pin replacement, hazards, allocator reuse) are common; gfns next to one used
    before are common too, so that the shadow MMU's prefetch windows overlap.
    """
    ops: list[tuple[str, int, int]] = []
    used: list[int] = []
    for _ in range(draw(st.integers(0, max_ops))):
        if used and draw(st.booleans()):
            gfn = draw(st.sampled_from(used))
            if draw(st.booleans()):
                gfn = min(guest_pages - 1, max(0, gfn + draw(st.integers(-2, 2))))
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
def hosts(draw, level: str) -> dict[str, str]:
    """Kernel version, coherence and MMU (the shadow MMU only matters at 4k)."""
    mmu = draw(st.sampled_from(MMUS)) if level == "4k" else draw(
        st.sampled_from(("tdp", "tdp", "shadow")))
    return {"kernel": draw(st.sampled_from(KERNELS)),
            "sme_coherent": draw(st.sampled_from(COHERENT)), "mmu": mmu}


@st.composite
def scenarios(draw, level: str, max_units: int, max_ops: int) -> Case:
    unit = LEVEL_UNIT_PAGES[level]
    strategy = draw(st.sampled_from(STRATEGIES))
    units = draw(st.integers(1, max_units))
    guest_pages = units * unit
    ops = draw(ops_lists(guest_pages, max_ops))
    limit = draw(memlock_limits(guest_pages, unit))
    return Case(strategy, guest_pages, level, ops, limit, **draw(hosts(level)))


# ---- comparison -------------------------------------------------------------------


def compare_with_reference(case: Case) -> RefResult:
    """Run kernel (teardown and not) and reference; assert full agreement + invariants."""
    live, destroyed = run_reference_both(case.strategy, case.guest_pages, case.level,
                                         case.ops, case.limit, **case.host)
    for teardown, ref in ((True, destroyed), (False, live)):
        # the oracle itself keeps the invariants (checked before any kernel runs)
        check_invariants(ref.state, ref.counters, case, torn_down=teardown,
                         failed=ref.error is not None)
    trace = Trace.from_rows(case.ops)
    for teardown, ref in ((True, destroyed), (False, live)):
        got = simulate(case.strategy, case.guest_pages, case.level, trace=trace,
                       memlock_limit=case.limit, teardown=teardown, **case.host)
        snap = got.snapshot
        check_invariants(snap, got.counters, case, torn_down=teardown,
                         failed=got.error is not None)
        assert got.counters == ref.counters, f"teardown={teardown}"
        assert (got.error is None) == (ref.error is None), (got.error, ref.error)
        assert snap == ref.state, f"teardown={teardown}"
        assert got.result.ops_done == ref.ops_done, f"teardown={teardown}"
    return destroyed


def label(case: Case, ref: RefResult) -> None:
    """Record what a generated example exercised (--hypothesis-show-statistics)."""
    c = ref.counters
    s = case.strategy
    event(f"{s}: memlock error={ref.error is not None}")
    event(f"{s}: stale pins={c['stale_pins_peak'] > 0}, "
          f"hazard={c['unpinned_mapped_hazards'] > 0}")
    event(f"{s}: kernel {case.kernel}, sme_coherent={case.sme_coherent}")
    if case.mmu == "shadow" and case.level == "4k":
        event(f"{s}: shadow prefetched={c['prefetched_pages'] > 0}")


@settings(max_examples=300)
@given(scenarios("4k", max_units=64, max_ops=30))
def test_kernels_match_reference_4k(case) -> None:
    label(case, compare_with_reference(case))


@settings(max_examples=150)
@given(scenarios("2m", max_units=4, max_ops=12))
def test_kernels_match_reference_2m(case) -> None:
    label(case, compare_with_reference(case))


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
    host = data.draw(hosts("1g"), label="host")
    compare_with_reference(Case(strategy, guest_pages, "1g", ops, limit, **host))


def test_1g_remap_refault_matches_reference() -> None:
    """A fixed 1g trace that always exercises the replace / hazard path at 1g."""
    unit = LEVEL_UNIT_PAGES["1g"]
    ops = [("access", 7, 1), ("remap", unit - 3, 2), ("access", 0, 1)]
    for strategy in STRATEGIES:
        compare_with_reference(Case(strategy, unit, "1g", ops, sme_coherent="no",
                                    kernel="5.18"))
    # A limit one page short of the guest: demand-v2 fails at startup, demand ignores it.
    short = (unit - 1) * PAGE_SIZE
    failed = compare_with_reference(Case("demand-v2", unit, "1g", [("access", 9, 1)], short))
    assert failed.error is not None and failed.ops_done == 0
    ran = compare_with_reference(Case("demand", unit, "1g", [("access", 9, 1)], short))
    assert ran.error is None and ran.counters["pinned_pages_peak"] == unit


# ---- generated patterns -----------------------------------------------------------


@settings(max_examples=150)
@given(
    strategy=st.sampled_from(STRATEGIES),
    level_units=st.one_of(
        st.tuples(st.just("4k"), st.integers(1, 64)),
        st.tuples(st.just("2m"), st.integers(1, 4)),
    ),
    pattern=st.sampled_from(("sequential", "random", "boot")),
    touch_fraction=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    limit_pages=st.one_of(st.none(), st.integers(0, 4 * 512 + 1)),
    data=st.data(),
)
def test_patterns_match_reference(strategy, level_units, pattern, touch_fraction, seed,
                                  limit_pages, data) -> None:
    level, units = level_units
    unit = LEVEL_UNIT_PAGES[level]
    guest_pages = units * unit
    limit = None if limit_pages is None else limit_pages * PAGE_SIZE
    host = data.draw(hosts(level), label="host")
    ops = pattern_ops(pattern, guest_pages, level, touch_fraction, seed)
    case = Case(strategy, guest_pages, level, ops, limit, **host)
    ref = run_reference(strategy, guest_pages, level, ops, limit, **host)
    check_invariants(ref.state, ref.counters, case, torn_down=True,
                     failed=ref.error is not None)
    got = simulate(strategy, guest_pages, level, pattern=pattern, touch_fraction=touch_fraction,
                   seed=seed, memlock_limit=limit, **host)
    snap = got.snapshot
    check_invariants(snap, got.counters, case, torn_down=True, failed=got.error is not None)
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


def test_boot_pattern_touches_working_set_and_memmap() -> None:
    """``boot``: the first 256 MiB and the last ceil(guest_pages / 64) pages, by unit.

    130 units of 2m = 66 560 pages: the working set is units 0..127 (65 536 pages);
    the memory map is the last 1040 pages, gfn 65 520.. 66 559: units 127, 128, 129
    (127 already touched). So every unit, ascending, once: 130 accesses.
    """
    guest_pages = 130 * 512
    ops = pattern_ops("boot", guest_pages, "2m", 0.25, seed=3)  # fraction ignored
    assert ops == [("access", u * 512, 1) for u in range(130)]
    # 150 units: working set 0..127, memory map the last 1200 pages (gfn 75 600..):
    # units 147, 148, 149. Units 128..146 are never touched.
    ops = pattern_ops("boot", 150 * 512, "2m", 1.0)
    assert [g // 512 for _, g, _ in ops] == [*range(128), 147, 148, 149]
    for strategy in STRATEGIES:
        ref = run_reference(strategy, 150 * 512, "2m", ops)
        got = simulate(strategy, 150 * 512, "2m", pattern="boot")
        assert got.counters == ref.counters, strategy
        assert got.snapshot == ref.state, strategy


# ---- guest_memfd --------------------------------------------------------------------


@st.composite
def gmem_ops(draw, guest_pages: int, max_ops: int) -> list[tuple]:
    """Accesses, remaps and conversions (to shared and back) of random ranges, gfns
    often revisited so that re-faults after a conversion are common."""
    ops: list[tuple] = []
    used: list[int] = []
    for _ in range(draw(st.integers(0, max_ops))):
        gfn = (draw(st.sampled_from(used)) if used and draw(st.booleans())
               else draw(st.integers(0, guest_pages - 1)))
        used.append(gfn)
        npages = min(guest_pages - gfn, draw(st.integers(1, 4)))
        kind = draw(st.sampled_from(("access", "access", "access", "remap", "convert")))
        if kind == "convert":
            ops.append(("convert", gfn, npages, draw(st.sampled_from(("shared", "private")))))
        else:
            ops.append((kind, gfn, 1 if kind == "access" else npages))
    return ops


def check_gmem_invariants(snap: dict, counters: dict, ops: list, n: int, image: int,
                          kernel: str, torn_down: bool) -> None:
    """What guest_memfd never does (pin, prefetch, WBINVD but sev_vm_destroy's) and how
    its frames are held: by the VMM's mapping (shared gfns) or the guest_memfd."""
    for name in ("pins", "unpins", "pinned_pages_peak", "pinned_pages_end", "page_flushes",
                 "stale_pins_peak", "unpinned_mapped_hazards", "prefetched_pages"):
        assert counters[name] == 0, name
    assert not snap["pins"] and not snap["region"] and not snap["bitmap"] and not snap["pfns"]
    assert counters["metadata_bytes"] == 9 * n
    assert counters["launch_update_pages"] == min(image, n)
    assert counters["psc_exits"] == sum(1 for op in ops if op[0] == "convert")
    version = parse_kernel(kernel)
    assert counters["wbinvd"] == (int(version < (6, 17)) if torn_down else 0)
    host_map, gmem = snap["host_map"], snap["gmem"]
    assert not set(host_map) & snap["private"], "a private gfn backed by the VMM's memory"
    assert snap["prepared"] <= set(gmem)
    expected = Counter(host_map.values())
    expected.update(gmem.values())
    assert snap["refs"] == dict(expected)
    assert counters["leaked_refs"] == 0
    # Each guest-owned folio took one RMPUPDATE and gives it back with one more and a
    # 4 KiB CLFLUSH when it is freed.
    freed_owned = counters["clflush_bytes"] // PAGE_SIZE
    assert counters["rmpupdates"] == 2 * freed_owned + len(snap["prepared"])
    if torn_down:
        assert not gmem and not snap["private"] and not snap["nested"]


@settings(max_examples=300)
@given(data=st.data())
def test_gmem_matches_reference(data) -> None:
    guest_pages = data.draw(st.integers(1, 48), label="pages")
    ops = data.draw(gmem_ops(guest_pages, 30), label="ops")
    image = data.draw(st.integers(0, guest_pages + 2), label="image pages")
    prefault = data.draw(st.sampled_from(("none", "fallocate", "map")), label="prefault")
    host = data.draw(hosts("4k"), label="host")
    launch = {"image_pages": image, "prefault": prefault}
    live, destroyed = run_reference_both("gmem", guest_pages, "4k", ops, **host, **launch)
    rows = [(op[0], op[1], op[2], 0, op[3]) if op[0] == "convert" else op for op in ops]
    trace = Trace.from_rows(rows)
    for teardown, ref in ((True, destroyed), (False, live)):
        check_gmem_invariants(ref.state, ref.counters, ops, guest_pages, image,
                              host["kernel"], teardown)
        got = simulate("gmem", guest_pages, "4k", trace=trace, teardown=teardown, **host,
                       **launch)
        check_gmem_invariants(got.snapshot, got.counters, ops, guest_pages, image,
                              host["kernel"], teardown)
        assert got.counters == ref.counters, f"teardown={teardown}"
        assert got.snapshot == ref.state, f"teardown={teardown}"
        assert got.result.ops_done == ref.ops_done
    event(f"prefault={prefault}, converted={destroyed.counters['attr_pages'] > guest_pages}")


@settings(max_examples=60)
@given(strategy=st.sampled_from(STRATEGIES), data=st.data())
def test_conversions_of_pinning_strategies_are_exits_only(strategy, data) -> None:
    """Under SEV/SEV-ES the guest's page-table bit is the conversion: KVM counts the
    request's exit and keeps the memory as it is."""
    guest_pages = data.draw(st.integers(1, 32), label="pages")
    ops = data.draw(gmem_ops(guest_pages, 20), label="ops")
    plain = [op for op in ops if op[0] != "convert"]
    with_conv = run_reference(strategy, guest_pages, "4k", ops)
    without = run_reference(strategy, guest_pages, "4k", plain)
    expected = dict(without.counters, psc_exits=len(ops) - len(plain))
    assert with_conv.counters == expected
    rows = [(op[0], op[1], op[2], 0, op[3]) if op[0] == "convert" else op for op in ops]
    got = simulate(strategy, guest_pages, "4k", trace=Trace.from_rows(rows))
    assert got.counters == with_conv.counters
    assert got.snapshot == with_conv.state


def test_gmem_first_touch_and_conversion_by_hand() -> None:
    """Eight pages, a two-page image: the counts of docs/model.md's gmem rules, by hand."""
    ops = [("access", 0, 1), ("access", 5, 1), ("access", 6, 1),
           ("convert", 5, 2, "shared"), ("access", 5, 1), ("convert", 5, 2, "private"),
           ("access", 5, 1)]
    ref = run_reference("gmem", 8, "4k", ops, image_pages=2, kernel="6.16")
    c = ref.counters
    # launch: 8 attributes, 2 image folios (RMPUPDATE, no zeroing); first touches of 5, 6:
    # a folio each, zeroed, RMPUPDATE; gfn 0 is the image's (exit, nothing else).
    # to shared: 2 attributes, 2 folios given back (RMPUPDATE + CLFLUSH) and freed; the
    # shared touch of 5: the VMM's page (host fault, zeroed); to private: 2 attributes,
    # the VMM's page dropped; the touch of 5 again: a new folio. Teardown: 3 folios.
    assert c["npf_exits"] == 5
    assert c["attr_pages"] == 8 + 2 + 2
    assert c["psc_exits"] == 2
    assert c["launch_update_pages"] == 2
    assert c["host_faults"] == 2 + 2 + 1 + 1
    assert c["frames_zeroed"] == 2 + 1 + 1
    assert c["rmpupdates"] == 2 + 2 + 2 + 1 + 3
    assert c["clflush_bytes"] == (2 + 3) * PAGE_SIZE
    assert c["wbinvd"] == 1 and c["pins"] == 0
    got = simulate("gmem", 8, "4k", trace=Trace.from_rows(
        [(o[0], o[1], o[2], 0, o[3]) if o[0] == "convert" else o for o in ops]),
        image_pages=2, kernel="6.16")
    assert got.counters == c

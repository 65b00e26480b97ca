"""Hand-worked examples of DESIGN §1a / docs/model.md.

Every expected value below was derived by hand from the spec (the comments
show the working), not copied from a run. Each example is checked against the
kernels (the one lifecycle: ``tests.modelrun.simulate``) and against the reference model.
"""

from __future__ import annotations

import pytest

from pinning.model.traces import Trace
from tests.modelrun import simulate
from tests.reference import COUNTER_NAMES, run_reference

MIB2 = 512 * 4096  # bytes in one 2m unit


def counters(**nonzero: int) -> dict[str, int]:
    """A full counter dict: the given values, every other counter 0."""
    unknown = set(nonzero) - set(COUNTER_NAMES)
    assert not unknown, unknown
    return {name: nonzero.get(name, 0) for name in COUNTER_NAMES}


def run_both(strategy, guest_pages, level, ops, limit=None, teardown=True):
    """(kernel result, kernel snapshot, reference result) for one example."""
    got = simulate(strategy, guest_pages, level, trace=Trace.from_rows(ops),
                   memlock_limit=limit, teardown=teardown)
    ref = run_reference(strategy, guest_pages, level, ops, limit, teardown=teardown)
    return got, got.snapshot, ref


def check(strategy, guest_pages, level, ops, expected, limit=None, teardown=True,
          error=False, state=None):
    """Assert kernel and reference both give ``expected`` (and the state items given)."""
    got, snap, ref = run_both(strategy, guest_pages, level, ops, limit, teardown)
    assert ref.counters == expected, "reference model"
    assert (ref.error is not None) == error, ref.error
    assert got.counters == expected, "kernels"
    assert (got.error is not None) == error, got.error
    for key, value in (state or {}).items():
        assert ref.state[key] == value, f"reference state {key}"
        assert snap[key] == value, f"kernel state {key}"
    return got, snap


# ---- (a) the 8-page 4k walk-through ----------------------------------------------

OPS_A = [("access", 0, 1), ("access", 1, 1), ("access", 2, 1), ("access", 0, 1),
         ("remap", 0, 2), ("access", 0, 1)]


def test_a_upfront_8_pages_4k() -> None:
    expected = counters(
        # faults on gfn 0, 1, 2 (first touches: startup pins but installs no nested
        # mapping), the 2nd access to 0 is mapped (free), and 0 faults again after the
        # remap invalidated units 0 and 1: 4.
        npf_exits=4,
        # startup populates all 8 gfns (pfns 1..8); the re-fault of gfn 0 populates pfn 9.
        frames_zeroed=9,
        # startup pins all 8 pages; nothing else pins under upfront.
        pins=8,
        # teardown unpins the 8 entries of the page array.
        unpins=8,
        # 4096 bytes flushed per page pinned at startup: 8 * 4096.
        clflush_bytes=8 * 4096,
        # one per remap operation (1) + one at teardown (1).
        wbinvd=2,
        # the remap drops the VMM mapping of gfn 0 (pfn 1) and gfn 1 (pfn 2), both still
        # pinned by the region: 2 stale pins until teardown.
        stale_pins_peak=2,
        # the re-fault maps gfn 0 to new pfn 9, which nothing pins: 1 hazard.
        unpinned_mapped_hazards=1,
        # all 8 pages pinned from startup to teardown.
        pinned_pages_peak=8,
        # page array: 8 bytes per page.
        metadata_bytes=8 * 8,
    )
    check("upfront", 8, "4k", OPS_A, expected, state={
        # teardown frees the stale frames 1 and 2 (ascending gfn); the VMM keeps the rest.
        "host_map": {0: 9, 2: 3, 3: 4, 4: 5, 5: 6, 6: 7, 7: 8},
        "free": [1, 2],
        "next_pfn": 10,
        "pins": {},
        "pinned": 0,
        "stale": 0,
    })


def test_a_upfront_8_pages_4k_live() -> None:
    """Same trace, stopped before teardown."""
    expected = counters(
        npf_exits=4, frames_zeroed=9, pins=8, clflush_bytes=8 * 4096,
        wbinvd=1,  # the remap only; no teardown
        stale_pins_peak=2, unpinned_mapped_hazards=1, pinned_pages_peak=8,
        pinned_pages_end=8,  # everything still pinned
        metadata_bytes=64,
        # refs: 7 VMM-mapped frames + 8 pins = 15, minus 7 mapped frames = 8.
        leaked_refs=8,
    )
    check("upfront", 8, "4k", OPS_A, expected, teardown=False, state={
        "region": {g: g + 1 for g in range(8)},
        "nested": {0, 2},
        "stale": 2,
        "refs": {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2, 7: 2, 8: 2, 9: 1},
    })


def test_a_demand_8_pages_4k() -> None:
    expected = counters(
        # same faults as upfront: gfn 0, 1, 2, then 0 again after the remap.
        npf_exits=4,
        # gfn 0, 1, 2 -> pfns 1, 2, 3; the re-fault of gfn 0 -> pfn 4 (the old pfn 1
        # is only freed after the new frame was populated).
        frames_zeroed=4,
        # one pin per first fault (3) + the replacement pin of gfn 0 (1).
        pins=4,
        # the replaced old pin of gfn 0 (1) + teardown's bitmap walk over gfn 0, 1, 2 (3).
        unpins=4,
        # a whole 4 KiB unit per completed fault: 4 * 4096.
        clflush_bytes=4 * 4096,
        # gfn 0's old pin (pfn 1) is replaced: one VM_PAGE_FLUSH.
        page_flushes=1,
        # teardown only; demand remaps flush nothing globally.
        wbinvd=1,
        # after the remap, gfn 0 (pfn 1) and gfn 1 (pfn 2) are pinned but no longer the
        # VMM's frames (gfn 1 not even re-populated: counted by choice): 2.
        stale_pins_peak=2,
        # 3 pages pinned at most (the replacement unpins before it pins).
        pinned_pages_peak=3,
        # pfn array 8 * 8 + bitmap rounded up to one 64-bit word (8 bytes).
        metadata_bytes=8 * 8 + 8,
    )
    check("demand", 8, "4k", OPS_A, expected, state={
        # pfn 1 freed at the re-fault, pfn 2 (stale) at teardown: stack [1, 2].
        "host_map": {0: 4, 2: 3},
        "refs": {3: 1, 4: 1},
        "free": [1, 2],
        "next_pfn": 5,
        "bitmap": set(),
        "pinned": 0,
    })


def test_a_demand_8_pages_4k_live() -> None:
    expected = counters(
        npf_exits=4, frames_zeroed=4, pins=4,
        unpins=1,  # only the replacement so far
        clflush_bytes=4 * 4096, page_flushes=1,
        wbinvd=0,  # no teardown, and demand remaps add none
        stale_pins_peak=2, pinned_pages_peak=3,
        pinned_pages_end=3,  # gfn 0 (pfn 4), gfn 1 (stale pfn 2), gfn 2 (pfn 3)
        metadata_bytes=72,
        # refs: pfn 2 (pin), 3 (VMM + pin), 4 (VMM + pin) = 5, minus 2 mapped frames.
        leaked_refs=3,
    )
    check("demand", 8, "4k", OPS_A, expected, teardown=False, state={
        "bitmap": {0, 1, 2},
        "pfns": {0: 4, 1: 2, 2: 3},
        "stale": 1,  # gfn 1's pfn 2
        "free": [1],
        "nested": {0, 2},
    })


# ---- (b) 2m: a one-page remap widens to the whole unit ---------------------------

OPS_B = [("access", 700, 1), ("remap", 600, 1), ("access", 513, 1)]


def test_b_demand_2m_remap_widens_to_unit() -> None:
    # 1024-page guest = 2 units; everything happens in unit 1 (gfn 512..1023).
    expected = counters(
        # gfn 700 faults unit 1; the remap of gfn 600 invalidates unit 1; gfn 513 faults.
        npf_exits=2,
        # first fault populates 512 frames (pfns 1..512); the remap dropped all 512
        # VMM frames of the unit (not just gfn 600), so the re-fault populates 512 more.
        frames_zeroed=1024,
        # 512 first pins + 512 replacement pins.
        pins=1024,
        # 512 replaced old pins + 512 unpinned at teardown.
        unpins=1024,
        # the full 2 MiB unit per completed fault.
        clflush_bytes=2 * MIB2,
        # every page of the unit had its pin replaced.
        page_flushes=512,
        wbinvd=1,  # teardown
        # all 512 pinned frames of the unit became stale at the remap.
        stale_pins_peak=512,
        # the replacement unpins each old page before pinning the new one.
        pinned_pages_peak=512,
        # 8 * 1024 + 8 * ceil(1024 / 64) = 8192 + 128.
        metadata_bytes=8 * 1024 + 8 * 16,
    )
    check("demand", 1024, "2m", OPS_B, expected, state={
        # new frames 513..1024 for gfn 512..1023; old 1..512 freed ascending.
        "host_map": {512 + i: 513 + i for i in range(512)},
        "free": list(range(1, 513)),
        "next_pfn": 1025,
    })


def test_b_upfront_2m_remap_widens_to_unit() -> None:
    expected = counters(
        npf_exits=2,
        # startup 1024 frames + 512 new frames for unit 1 after its remap.
        frames_zeroed=1536,
        pins=1024,  # startup
        unpins=1024,  # teardown
        clflush_bytes=1024 * 4096,  # 4096 per page pinned at startup
        wbinvd=2,  # the remap + teardown
        stale_pins_peak=512,  # all of unit 1's region frames
        unpinned_mapped_hazards=512,  # every page of the re-faulted unit
        pinned_pages_peak=1024,
        metadata_bytes=8 * 1024,
    )
    check("upfront", 1024, "2m", OPS_B, expected, state={
        # the stale frames 513..1024 are freed by teardown, ascending gfn.
        "free": list(range(513, 1025)),
        "next_pfn": 1537,
        "host_map": {**{g: g + 1 for g in range(512)},
                     **{512 + i: 1025 + i for i in range(512)}},
    })


# ---- (c) memory-lock failures -----------------------------------------------------


@pytest.mark.parametrize("teardown", [True, False])
def test_c_upfront_memlock_failure(teardown) -> None:
    # 8 pages need 8 * 4096 bytes; one byte less allows floor(32767 / 4096) = 7 pages.
    # Startup fails before anything: no frame, no metadata, no fault, no teardown
    # (so not even the teardown WBINVD): every counter 0.
    ops = [("access", 0, 1), ("remap", 0, 1), ("access", 0, 1)]
    check("upfront", 8, "4k", ops, counters(), limit=8 * 4096 - 1, teardown=teardown,
          error=True, state={"host_map": {}, "refs": {}, "next_pfn": 1, "region": {},
                             "nested": set(), "free": []})


def test_c_upfront_memlock_exact_limit_succeeds() -> None:
    # (pinned + 1) * 4096 <= limit: exactly 8 pages' worth suffices for 8 pages.
    expected = counters(npf_exits=1, frames_zeroed=8, pins=8, unpins=8,
                        clflush_bytes=8 * 4096, wbinvd=1, pinned_pages_peak=8,
                        metadata_bytes=64)
    check("upfront", 8, "4k", [("access", 3, 1)], expected, limit=8 * 4096)


OPS_C = [("access", 0, 1), ("access", 512, 1), ("remap", 0, 512), ("access", 0, 1)]


def test_c_demand_memlock_failure_mid_unit_2m() -> None:
    # Limit 600 pages. Unit 0 faults and pins 512 pages; unit 1's fault populates all
    # 512 of its frames, pins gfn 512..599 (88 pages, 600 in all) and fails at gfn 600.
    # The run stops: the remap and access after it never happen (else the remap
    # would make 512 stale pins and the access would fault).
    expected = counters(
        npf_exits=2,  # the failed fault was an exit too
        frames_zeroed=1024,  # the failing unit was populated in full before pinning
        pins=600,
        unpins=600,  # teardown unpins all 600, incl. the 88 of the failed unit
        clflush_bytes=MIB2,  # only the completed fault of unit 0; none for the failed one
        wbinvd=1,  # teardown still runs
        pinned_pages_peak=600,
        metadata_bytes=8 * 1024 + 8 * 16,
    )
    check("demand", 1024, "2m", OPS_C, expected, limit=600 * 4096, error=True,
          state={"pinned": 0, "bitmap": set(), "nested": set(), "free": []})


def test_c_demand_memlock_failure_mid_unit_2m_live() -> None:
    expected = counters(
        npf_exits=2, frames_zeroed=1024, pins=600, clflush_bytes=MIB2,
        pinned_pages_peak=600, pinned_pages_end=600,
        # refs = 1024 VMM + 600 pins, minus 1024 VMM-mapped frames.
        leaked_refs=600,
        metadata_bytes=8 * 1024 + 8 * 16,
    )
    check("demand", 1024, "2m", OPS_C, expected, limit=600 * 4096 + 4095, error=True,
          teardown=False, state={
              # bits of the pages pinned before the failing one stay set ...
              "bitmap": set(range(600)),
              # ... but the failed fault installed no nested mapping.
              "nested": {0},
              "pinned": 600,
          })


def test_c_demand_memlock_zero() -> None:
    # Limit 0: the first fault populates gfn 2's frame, then cannot pin it.
    expected = counters(npf_exits=1, frames_zeroed=1, wbinvd=1, metadata_bytes=4 * 8 + 8)
    check("demand", 4, "4k", [("access", 2, 1), ("access", 3, 1)], expected, limit=0,
          error=True, state={"host_map": {2: 1}, "refs": {1: 1}, "pins": {}})


# ---- (d) upfront: remapping the same range again -----------------------------------


def test_d_upfront_second_remap_same_range() -> None:
    ops = [
        ("access", 0, 1),  # fault 1
        ("remap", 0, 1),  # pfn 1 dropped by the VMM, still pinned: 1 stale pin
        ("remap", 0, 1),  # before any re-access: nothing to drop, pfn 1 stays 1 stale pin
        ("access", 0, 1),  # fault 2: new pfn 5, unpinned -> hazard 1
        ("remap", 0, 1),  # pfn 5 (no pin) freed -> free stack [5]; still 1 stale pin
        ("access", 0, 1),  # fault 3: pfn 5 reused, unpinned -> hazard 2
    ]
    expected = counters(
        npf_exits=3,
        frames_zeroed=6,  # 4 at startup + pfn 5 twice (allocated, freed, allocated again)
        pins=4,
        unpins=4,
        clflush_bytes=4 * 4096,
        wbinvd=4,  # 3 remaps (even the one with nothing mapped) + teardown
        stale_pins_peak=1,  # pfn 1 only: it is not counted again by the 2nd/3rd remap
        unpinned_mapped_hazards=2,
        pinned_pages_peak=4,
        metadata_bytes=4 * 8,
    )
    check("upfront", 4, "4k", ops, expected, state={
        "host_map": {0: 5, 1: 2, 2: 3, 3: 4},
        "free": [1],  # the stale pfn 1, freed when teardown drops its pin
        "next_pfn": 6,
    })


# ---- (e) demand metadata with a partial bitmap word --------------------------------


@pytest.mark.parametrize(
    ("guest_pages", "strategy", "metadata"),
    [
        (65, "demand", 8 * 65 + 8 * 2),  # 65 bits need 2 words
        (64, "demand", 8 * 64 + 8 * 1),
        (1, "demand", 8 + 8),
        (65, "upfront", 8 * 65),  # page array only
    ],
)
def test_e_metadata_bytes(guest_pages, strategy, metadata) -> None:
    ops = [("access", guest_pages - 1, 1)]
    if strategy == "demand":
        # one fault: one frame, one pin (unpinned at teardown), one 4 KiB flush.
        expected = counters(npf_exits=1, frames_zeroed=1, pins=1, unpins=1, clflush_bytes=4096,
                            wbinvd=1, pinned_pages_peak=1, metadata_bytes=metadata)
    else:
        expected = counters(npf_exits=1, frames_zeroed=guest_pages, pins=guest_pages,
                            unpins=guest_pages, clflush_bytes=4096 * guest_pages, wbinvd=1,
                            pinned_pages_peak=guest_pages, metadata_bytes=metadata)
    check(strategy, guest_pages, "4k", ops, expected)


# ---- (f) allocator: last freed, first reused ---------------------------------------


def test_f_demand_replacement_frame_is_reused() -> None:
    ops = [
        ("access", 0, 1),  # gfn 0 -> pfn 1, pinned
        ("remap", 0, 1),  # pfn 1 stays alive (pinned), stale
        ("access", 0, 1),  # populate gfn 0 -> pfn 2 (stack empty); unpin pfn 1 -> freed
        ("access", 1, 1),  # populate gfn 1 -> pfn 1 from the free stack, not pfn 3
    ]
    expected = counters(npf_exits=3, frames_zeroed=3, pins=3, unpins=1,
                        clflush_bytes=3 * 4096, page_flushes=1, stale_pins_peak=1,
                        pinned_pages_peak=2, pinned_pages_end=2, leaked_refs=2,
                        metadata_bytes=4 * 8 + 8)
    check("demand", 4, "4k", ops, expected, teardown=False, state={
        "host_map": {0: 2, 1: 1},
        "pfns": {0: 2, 1: 1},
        "free": [],
        "next_pfn": 3,
    })


def test_f_demand_free_stack_is_lifo_2m() -> None:
    ops = [("access", 0, 1), ("remap", 0, 1), ("access", 0, 1), ("access", 512, 1)]
    # Re-fault of unit 0 populates pfns 513..1024 first, then frees old pfns 1..512 in
    # ascending gfn order: stack [1..512], top 512. Unit 1 is then populated ascending
    # from the top: gfn 512 -> 512, gfn 513 -> 511, ..., gfn 1023 -> 1.
    _, snap = check("demand", 1024, "2m", ops, counters(
        npf_exits=3, frames_zeroed=1536, pins=1536, unpins=512, clflush_bytes=3 * MIB2,
        page_flushes=512, stale_pins_peak=512, pinned_pages_peak=1024,
        pinned_pages_end=1024, leaked_refs=1024, metadata_bytes=8 * 1024 + 8 * 16,
    ), teardown=False, state={"free": [], "next_pfn": 1025})
    assert all(snap["host_map"][512 + i] == 512 - i for i in range(512))
    assert all(snap["host_map"][i] == 513 + i for i in range(512))

"""Hand-worked examples of docs/model.md.

Every expected value below was derived by hand from the spec (the comments show
the working), not copied from a run. Each example is checked first against the
reference model, then against the kernels (the one lifecycle: ``tests.modelrun.simulate``).

Unless an example says otherwise the host is the default one: kernel 5.17,
``sme_coherent = yes``, ``mmu = tdp``. The rules those defaults select, used all
through the working:
- at 5.17 a remap does no WBINVD, and teardown does exactly one (``sev_vm_destroy``),
  plus one more under demand-v2 (``sev_free_memslot``, once per memslot);
- with ``sme_coherent = yes`` upfront flushes nothing at startup and demand-v2 neither
  flushes the level nor VM_PAGE_FLUSHes a replaced page; demand (RFC v1) always
  flushes the level (the unit size per fault);
- metadata is 8 B/page for upfront and 16 B/page for demand and demand-v2;
- a demand-v2 fault does a transient pin + unpin (``hva_to_pfn``), plus one long-lived
  pin of the unit's first frame when the unit has none for this frame (holding
  ``unit_pages`` pinned pages), dropping the old one first if the bit was set.
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


def run_ref(strategy, guest_pages, level, ops, limit=None, teardown=True, **host):
    """The reference result of one example (``host``: kernel, sme_coherent, mmu)."""
    return run_reference(strategy, guest_pages, level, ops, limit, teardown=teardown, **host)


def run_kernel(strategy, guest_pages, level, ops, limit=None, teardown=True, **host):
    """The kernels' result of one example, through the one lifecycle."""
    return simulate(strategy, guest_pages, level, trace=Trace.from_rows(ops),
                    memlock_limit=limit, teardown=teardown, **host)


def run_both(strategy, guest_pages, level, ops, limit=None, teardown=True, **host):
    """(kernel result, kernel snapshot, reference result) for one example."""
    ref = run_ref(strategy, guest_pages, level, ops, limit, teardown, **host)
    got = run_kernel(strategy, guest_pages, level, ops, limit, teardown, **host)
    return got, got.snapshot, ref


def check(strategy, guest_pages, level, ops, expected, limit=None, teardown=True,
          error=False, state=None, **host):
    """Assert the reference, then the kernels, give ``expected`` (and the state items
    given). ``host`` holds the host parameters (kernel, sme_coherent, mmu)."""
    ref = run_ref(strategy, guest_pages, level, ops, limit, teardown, **host)
    assert ref.counters == expected, "reference model"
    assert (ref.error is not None) == error, ref.error
    for key, value in (state or {}).items():
        assert ref.state[key] == value, f"reference state {key}"
    got = run_kernel(strategy, guest_pages, level, ops, limit, teardown, **host)
    snap = got.snapshot
    assert got.counters == expected, "kernels"
    assert (got.error is not None) == error, got.error
    for key, value in (state or {}).items():
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
        # one host fault per unit populated; at 4k a unit is a page: 8 + 1.
        host_faults=9,
        # startup pins all 8 pages; nothing else pins under upfront.
        pins=8,
        # teardown unpins the 8 entries of the page array.
        unpins=8,
        # clflush_bytes 0: sme_coherent = yes, sev_clflush_pages returns at once.
        # wbinvd: the remap none (5.17); teardown sev_vm_destroy only: 1.
        wbinvd=1,
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
        npf_exits=4, frames_zeroed=9, host_faults=9, pins=8,
        wbinvd=0,  # the remap does none at 5.17, and there is no teardown
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
        host_faults=4,  # one per frame at 4k
        # one pin per first fault (3) + the replacement pin of gfn 0 (1).
        pins=4,
        # the replaced old pin of gfn 0 (1) + teardown's bitmap walk over gfn 0, 1, 2 (3).
        unpins=4,
        # a whole 4 KiB unit per fault, whatever sme_coherent says: 4 * 4096.
        clflush_bytes=4 * 4096,
        # page_flushes 0: v1 drops the replaced pin without a flush.
        # teardown sev_vm_destroy only (5.17); demand remaps flush nothing at 5.17.
        wbinvd=1,
        # after the remap, gfn 0 (pfn 1) and gfn 1 (pfn 2) are pinned but no longer the
        # VMM's frames (gfn 1 not even re-populated: counted by choice): 2.
        stale_pins_peak=2,
        # 3 pages pinned at most (the replacement unpins before it pins).
        pinned_pages_peak=3,
        # pfns (8 B/page) + pinned_bitmap (8 B/page): 16 * 8.
        metadata_bytes=16 * 8,
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
        npf_exits=4, frames_zeroed=4, host_faults=4, pins=4,
        unpins=1,  # only the replacement so far
        clflush_bytes=4 * 4096,
        wbinvd=0,  # no teardown, and no remap WBINVD at 5.17
        stale_pins_peak=2, pinned_pages_peak=3,
        pinned_pages_end=3,  # gfn 0 (pfn 4), gfn 1 (stale pfn 2), gfn 2 (pfn 3)
        metadata_bytes=128,
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


def test_a_demand_v2_8_pages_4k() -> None:
    expected = counters(
        npf_exits=4,
        # same frames as demand: gfn 0, 1, 2 -> pfns 1, 2, 3; re-fault of gfn 0 -> pfn 4.
        frames_zeroed=4,
        host_faults=4,
        # per fault: the transient pin (4 faults: 4) + a long-lived pin (first pins of
        # gfn 0, 1, 2 and the replacement on gfn 0: 4) = 8.
        pins=8,
        # the 4 transient unpins + the replaced old pin of gfn 0 (1) + teardown's
        # bitmap walk over gfn 0, 1, 2 (3) = 8.
        unpins=8,
        # clflush_bytes / page_flushes 0: sme_coherent = yes.
        # teardown at 5.17: sev_vm_destroy (1) + sev_free_memslot's WBINVD (1).
        wbinvd=2,
        stale_pins_peak=2,  # pfns 1 and 2 after the remap, as under demand
        pinned_pages_peak=3,  # one page per 4k pin; the replacement unpins first
        metadata_bytes=16 * 8,
    )
    check("demand-v2", 8, "4k", OPS_A, expected, state={
        "host_map": {0: 4, 2: 3},
        "refs": {3: 1, 4: 1},
        "free": [1, 2],  # pfn 1 at the replacement, stale pfn 2 at teardown
        "next_pfn": 5,
        "pins": {},
        "bitmap": set(),
        "pfns": {},
    })


def test_a_demand_v2_8_pages_4k_live() -> None:
    expected = counters(
        npf_exits=4, frames_zeroed=4, host_faults=4, pins=8,
        unpins=5,  # 4 transient + the replacement
        wbinvd=0,
        stale_pins_peak=2, pinned_pages_peak=3,
        pinned_pages_end=3,  # three 4k pins: pins - unpins = 8 - 5 = 3 set bits
        metadata_bytes=128,
        # refs: pfn 2 (pin), 3 (VMM + pin), 4 (VMM + pin) = 5, minus 2 mapped frames;
        # the transient pins hold nothing after their faults.
        leaked_refs=3,
    )
    check("demand-v2", 8, "4k", OPS_A, expected, teardown=False, state={
        "bitmap": {0, 1, 2},
        "pfns": {0: 4, 1: 2, 2: 3},
        "pins": {2: 1, 3: 1, 4: 1},
        "stale": 1,
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
        # one 2 MiB host fault per unit populated: 2.
        host_faults=2,
        # 512 first pins + 512 replacement pins.
        pins=1024,
        # 512 replaced old pins + 512 unpinned at teardown.
        unpins=1024,
        # the full 2 MiB unit per fault.
        clflush_bytes=2 * MIB2,
        # page_flushes 0: v1 does not flush a replaced page.
        wbinvd=1,  # teardown at 5.17
        # all 512 pinned frames of the unit became stale at the remap.
        stale_pins_peak=512,
        # the replacement unpins each old page before pinning the new one.
        pinned_pages_peak=512,
        metadata_bytes=16 * 1024,
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
        # startup: one per unit (2); the re-fault's population of unit 1: 1.
        host_faults=3,
        pins=1024,  # startup
        unpins=1024,  # teardown
        # clflush_bytes 0: coherent.
        wbinvd=1,  # teardown only at 5.17
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


def test_b_demand_v2_2m_one_pin_holds_the_unit() -> None:
    # SPEC (the folio choice): a demand-v2 pin holds the pin and a reference on the
    # unit's first frame only; the other frames keep just the VMM's reference, so the
    # remap frees them (reference count 0) and only the first frame stays, stale.
    expected = counters(
        npf_exits=2,
        # the fault of unit 1 populates gfn 512..1023 -> pfns 1..512. The remap drops all
        # 512 mappings: pfn 1 (pinned, gfn 512) stays as 1 stale pin; pfns 2..512 are
        # freed in ascending gfn order: stack [2..512], top 512. The re-fault populates
        # 512 frames: gfn 512 -> 512, gfn 513 -> 511, ..., gfn 1022 -> 2 from the stack,
        # then gfn 1023 -> new pfn 513.
        frames_zeroed=1024,
        host_faults=2,
        # fault 1: transient + first pin (2); fault 2: transient + replacement pin (2).
        pins=4,
        # fault 1: transient (1); fault 2: transient + old pin (2); teardown: 1 bit (1).
        unpins=4,
        # coherent: no level flush, no VM_PAGE_FLUSH of the replaced unit.
        wbinvd=2,  # teardown at 5.17: sev_vm_destroy + sev_free_memslot
        # one pinned frame (pfn 1) no longer the VMM's frame of gfn 512.
        stale_pins_peak=1,
        # one pin holds the 512 pages of its unit; the replacement unpins first.
        pinned_pages_peak=512,
        metadata_bytes=16 * 1024,
    )
    check("demand-v2", 1024, "2m", OPS_B, expected, state={
        # pfn 1 (the old first frame) freed when its pin was replaced: stack [1].
        "free": [1],
        "next_pfn": 514,
        "host_map": {**{512 + i: 512 - i for i in range(511)}, 1023: 513},
        "bitmap": set(),
        "pins": {},
    })


# ---- (c) memory-lock limits, per strategy ------------------------------------------


@pytest.mark.parametrize("strategy", ["upfront", "demand-v2"])
@pytest.mark.parametrize("teardown", [True, False])
def test_c_memlock_failure_at_startup(strategy, teardown) -> None:
    # 8 pages need 8 * 4096 bytes; one byte less allows floor(32767 / 4096) = 7 pages.
    # upfront (sev_pin_memory) and demand-v2 (svm_register_enc_region) both check the
    # whole guest at registration: startup fails before anything. No frame, no
    # metadata, no fault, no teardown (so not even a teardown WBINVD): every counter 0.
    ops = [("access", 0, 1), ("remap", 0, 1), ("access", 0, 1)]
    check(strategy, 8, "4k", ops, counters(), limit=8 * 4096 - 1, teardown=teardown,
          error=True, state={"host_map": {}, "refs": {}, "next_pfn": 1, "region": {},
                             "nested": set(), "free": [], "bitmap": set(), "pfns": {}})


def test_c_upfront_memlock_exact_limit_succeeds() -> None:
    # guest_pages (8) > floor(8 * 4096 / 4096) = 8 is false: startup succeeds.
    expected = counters(
        npf_exits=1,  # the access to gfn 3
        frames_zeroed=8, host_faults=8,  # startup populates all 8 (4k: a fault each)
        pins=8, unpins=8,
        wbinvd=1,  # teardown at 5.17
        pinned_pages_peak=8, metadata_bytes=64,
    )
    check("upfront", 8, "4k", [("access", 3, 1)], expected, limit=8 * 4096)


def test_c_demand_v2_memlock_exact_limit_succeeds() -> None:
    # The check counts the whole guest (8 pages <= 8), though v2 then pins 1 page.
    expected = counters(
        npf_exits=1, frames_zeroed=1, host_faults=1,  # gfn 3 -> pfn 1
        pins=2,  # transient + long-lived
        unpins=2,  # transient + teardown
        wbinvd=2,  # teardown at 5.17: sev_vm_destroy + sev_free_memslot
        pinned_pages_peak=1, metadata_bytes=16 * 8,
    )
    check("demand-v2", 8, "4k", [("access", 3, 1)], expected, limit=8 * 4096)


def test_c_demand_v2_memlock_failure_2m() -> None:
    # 1024 pages; limit 1024 * 4096 - 1 allows floor(...) = 1023 pages < 1024: fails at
    # startup, though a fault would pin only one unit. Every counter 0.
    check("demand-v2", 1024, "2m", [("access", 0, 1)], counters(),
          limit=1024 * 4096 - 1, error=True, state={"host_map": {}, "bitmap": set()})


OPS_C = [("access", 0, 1), ("access", 512, 1), ("remap", 0, 512), ("access", 0, 1)]


def test_c_demand_ignores_the_limit_2m() -> None:
    # Limit 600 pages; demand (RFC v1) checks no limit, so pinning 1024 pages is fine.
    expected = counters(
        # unit 0, unit 1, then unit 0 again after its remap.
        npf_exits=3,
        # unit 0 -> pfns 1..512; unit 1 -> 513..1024; the remap leaves 1..512 alive
        # (pinned, stale), so unit 0's re-fault takes new pfns 1025..1536.
        frames_zeroed=1536,
        host_faults=3,  # one per unit populated
        # 512 + 512 first pins + 512 replacements.
        pins=1536,
        # 512 replaced + teardown's 1024 set bits.
        unpins=1536,
        clflush_bytes=3 * MIB2,  # a 2 MiB level flush per fault
        wbinvd=1,  # teardown at 5.17
        stale_pins_peak=512,  # unit 0's 512 pinned frames after the remap
        pinned_pages_peak=1024,  # 1024 > 600: the limit has no effect
        metadata_bytes=16 * 1024,
    )
    check("demand", 1024, "2m", OPS_C, expected, limit=600 * 4096,
          state={"pinned": 0, "bitmap": set(), "nested": set(),
                 "free": list(range(1, 513)), "next_pfn": 1537})


def test_c_demand_ignores_the_limit_2m_live() -> None:
    expected = counters(
        npf_exits=3, frames_zeroed=1536, host_faults=3, pins=1536,
        unpins=512,  # the replacements only
        clflush_bytes=3 * MIB2, stale_pins_peak=512,
        pinned_pages_peak=1024, pinned_pages_end=1024,
        # refs = 1024 VMM + 1024 pins, minus 1024 VMM-mapped frames.
        leaked_refs=1024,
        metadata_bytes=16 * 1024,
    )
    check("demand", 1024, "2m", OPS_C, expected, limit=600 * 4096 + 4095, teardown=False,
          state={"bitmap": set(range(1024)), "nested": {0, 1}, "pinned": 1024})


def test_c_demand_memlock_zero() -> None:
    # Limit 0 bytes: still no error under demand.
    expected = counters(
        npf_exits=2, frames_zeroed=2, host_faults=2,  # gfn 2 -> pfn 1, gfn 3 -> pfn 2
        pins=2, unpins=2,
        clflush_bytes=2 * 4096,
        wbinvd=1,
        pinned_pages_peak=2,
        metadata_bytes=16 * 4,
    )
    check("demand", 4, "4k", [("access", 2, 1), ("access", 3, 1)], expected, limit=0,
          state={"host_map": {2: 1, 3: 2}, "refs": {1: 1, 2: 1}, "pins": {}})


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
        host_faults=6,  # 4k: one per frame
        pins=4,
        unpins=4,
        wbinvd=1,  # 5.17: the 3 remaps none; teardown 1 (see (h) for later kernels)
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


# ---- (e) metadata per strategy -----------------------------------------------------


@pytest.mark.parametrize(
    ("guest_pages", "strategy", "metadata"),
    [
        (65, "demand", 16 * 65),  # pfns 8 B/page + bitmap allocated 8 B/page
        (64, "demand", 16 * 64),
        (1, "demand", 16),
        (65, "demand-v2", 16 * 65),
        (1, "demand-v2", 16),
        (65, "upfront", 8 * 65),  # page array only
    ],
)
def test_e_metadata_bytes(guest_pages, strategy, metadata) -> None:
    ops = [("access", guest_pages - 1, 1)]
    if strategy == "demand":
        # one fault: one frame, one pin (unpinned at teardown), one 4 KiB level flush.
        expected = counters(npf_exits=1, frames_zeroed=1, host_faults=1, pins=1, unpins=1,
                            clflush_bytes=4096, wbinvd=1, pinned_pages_peak=1,
                            metadata_bytes=metadata)
    elif strategy == "demand-v2":
        # one fault: one frame; transient + long-lived pin (2), transient + teardown
        # unpin (2); coherent: no flush; teardown 5.17: destroy + memslot WBINVD (2).
        expected = counters(npf_exits=1, frames_zeroed=1, host_faults=1, pins=2, unpins=2,
                            wbinvd=2, pinned_pages_peak=1, metadata_bytes=metadata)
    else:
        # startup populates and pins every page; coherent: no clflush.
        expected = counters(npf_exits=1, frames_zeroed=guest_pages, host_faults=guest_pages,
                            pins=guest_pages, unpins=guest_pages, wbinvd=1,
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
    expected = counters(npf_exits=3, frames_zeroed=3, host_faults=3, pins=3, unpins=1,
                        clflush_bytes=3 * 4096, stale_pins_peak=1,
                        pinned_pages_peak=2, pinned_pages_end=2, leaked_refs=2,
                        metadata_bytes=16 * 4)
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
    # host_faults: unit 0, unit 0 again, unit 1 = 3; pins 512 * 3; unpins: 512
    # replaced; clflush a 2 MiB level per fault (3); no page_flushes (v1).
    _, snap = check("demand", 1024, "2m", ops, counters(
        npf_exits=3, frames_zeroed=1536, host_faults=3, pins=1536, unpins=512,
        clflush_bytes=3 * MIB2, stale_pins_peak=512, pinned_pages_peak=1024,
        pinned_pages_end=1024, leaked_refs=1024, metadata_bytes=16 * 1024,
    ), teardown=False, state={"free": [], "next_pfn": 1025})
    assert all(snap["host_map"][512 + i] == 512 - i for i in range(512))
    assert all(snap["host_map"][i] == 513 + i for i in range(512))


# ---- (g) demand (RFC v1) vs demand-v2 (RFC v2) on the same trace --------------------

# 8 pages at 4k: two first faults, a remap of gfn 0, the replacing re-fault of gfn 0,
# and a first fault of gfn 2 that reuses the freed frame.
OPS_G4 = [("access", 0, 1), ("access", 1, 1), ("remap", 0, 1), ("access", 0, 1),
          ("access", 2, 1)]
# Frames, the same for both: gfn 0 -> pfn 1, gfn 1 -> pfn 2; the remap leaves pfn 1
# alive (pinned, stale); gfn 0 -> pfn 3 (stack empty); the replacement frees pfn 1;
# gfn 2 -> pfn 1 from the stack. 4 faults, 4 frames, 4 host faults (4k).


@pytest.mark.parametrize("coherent", ["yes", "no"])
def test_g_demand_4k(coherent) -> None:
    expected = counters(
        npf_exits=4, frames_zeroed=4, host_faults=4,
        pins=4,  # one get_page per fault: 3 first pins + the replacement
        unpins=4,  # the replaced pfn 1 + teardown's 3 set bits (gfn 0, 1, 2)
        # the level flush after every fault, also on a coherent CPU: 4 * 4096.
        clflush_bytes=4 * 4096,
        # page_flushes 0 either way: v1 has no flush of a replaced page.
        wbinvd=1,  # teardown at 5.17
        stale_pins_peak=1,  # pfn 1 between the remap and the re-fault
        pinned_pages_peak=3,  # gfn 0, 1, 2 at the end
        metadata_bytes=16 * 8,
    )
    check("demand", 8, "4k", OPS_G4, expected, sme_coherent=coherent, state={
        "host_map": {0: 3, 1: 2, 2: 1}, "free": [], "next_pfn": 4})


@pytest.mark.parametrize(("coherent", "clflush", "page_flushes"), [
    ("yes", 0, 0),
    # not coherent: a 4 KiB level flush per long-lived pin (3 first + 1 replacement),
    # and one VM_PAGE_FLUSH (unit_pages = 1) of the replaced pfn 1.
    ("no", 4 * 4096, 1),
])
def test_g_demand_v2_4k(coherent, clflush, page_flushes) -> None:
    expected = counters(
        npf_exits=4, frames_zeroed=4, host_faults=4,
        # 4 transient pins + 4 long-lived (3 first + 1 replacement): "2 per new pin".
        pins=8,
        # 4 transient + the replaced pfn 1 + teardown's 3 bits.
        unpins=8,
        clflush_bytes=clflush,
        page_flushes=page_flushes,
        wbinvd=2,  # teardown at 5.17: sev_vm_destroy + sev_free_memslot
        stale_pins_peak=1,
        pinned_pages_peak=3,  # 4k: a pin holds 1 page
        metadata_bytes=16 * 8,
    )
    check("demand-v2", 8, "4k", OPS_G4, expected, sme_coherent=coherent, state={
        "host_map": {0: 3, 1: 2, 2: 1}, "free": [], "next_pfn": 4})


def test_g_demand_v2_4k_live() -> None:
    # pins - unpins = 8 - 5 = 3 long-lived pins = 3 set bits = 3 pinned pages (4k).
    expected = counters(
        npf_exits=4, frames_zeroed=4, host_faults=4,
        pins=8, unpins=5,  # 4 transient + 1 replaced
        stale_pins_peak=1, pinned_pages_peak=3, pinned_pages_end=3,
        metadata_bytes=16 * 8,
        # refs: pfns 1, 2, 3 each VMM + pin = 6, minus 3 mapped frames.
        leaked_refs=3,
    )
    check("demand-v2", 8, "4k", OPS_G4, expected, teardown=False, state={
        "bitmap": {0, 1, 2}, "pfns": {0: 3, 1: 2, 2: 1}, "pins": {1: 1, 2: 1, 3: 1},
        "pinned": 3, "stale": 0})


# 1024 pages at 2m (2 units): unit 0, an access inside the mapped unit 0 (free),
# unit 1, a remap of gfn 0 (widened to unit 0), and a re-fault of unit 0 at gfn 3.
OPS_G2 = [("access", 0, 1), ("access", 5, 1), ("access", 512, 1), ("remap", 0, 1),
          ("access", 3, 1)]


@pytest.mark.parametrize("coherent", ["yes", "no"])
def test_g_demand_2m(coherent) -> None:
    expected = counters(
        npf_exits=3,  # unit 0, unit 1, unit 0 again (gfn 5 was mapped)
        # unit 0 -> pfns 1..512, unit 1 -> 513..1024; all 512 frames of unit 0 stay
        # alive after the remap (each pinned), so the re-fault takes 1025..1536.
        frames_zeroed=1536,
        host_faults=3,  # one 2 MiB host fault per unit populated
        pins=1536,  # get_page per 4 KiB subpage: 512 * 3
        unpins=1536,  # 512 replaced + teardown's 1024 bits
        clflush_bytes=3 * MIB2,  # the 2 MiB level per fault, coherent or not
        # page_flushes 0: no flush of the replaced pages.
        wbinvd=1,
        stale_pins_peak=512,  # every subpage of unit 0 is its own pinned frame
        pinned_pages_peak=1024,
        metadata_bytes=16 * 1024,
    )
    check("demand", 1024, "2m", OPS_G2, expected, sme_coherent=coherent, state={
        "free": list(range(1, 513)), "next_pfn": 1537})


@pytest.mark.parametrize(("coherent", "clflush", "page_flushes"), [
    ("yes", 0, 0),
    # not coherent: a 2 MiB level flush per long-lived pin (unit 0, unit 1, unit 0's
    # replacement: 3), and 512 VM_PAGE_FLUSHes (unit_pages) for the replaced pin.
    ("no", 3 * MIB2, 512),
])
def test_g_demand_v2_2m(coherent, clflush, page_flushes) -> None:
    expected = counters(
        npf_exits=3,
        # unit 0 -> pfns 1..512, unit 1 -> 513..1024. The remap of unit 0 keeps pfn 1
        # (pinned: 1 stale pin) and frees pfns 2..512 ascending (stack top 512). The
        # re-fault populates gfn 0 -> 512, gfn 1 -> 511, ..., gfn 510 -> 2, then
        # gfn 511 -> new pfn 1025: 512 more frames; the replacement frees pfn 1.
        frames_zeroed=1536,
        host_faults=3,
        # 3 transient + 3 long-lived (unit 0, unit 1, unit 0's replacement).
        pins=6,
        # 3 transient + 1 replaced + teardown's 2 bits (gfn 0 and gfn 512).
        unpins=6,
        clflush_bytes=clflush,
        page_flushes=page_flushes,
        wbinvd=2,  # teardown at 5.17: sev_vm_destroy + sev_free_memslot
        stale_pins_peak=1,  # only the unit's first frame carries the pin
        pinned_pages_peak=1024,  # 2 pins, each holding its 512-page unit
        metadata_bytes=16 * 1024,
    )
    check("demand-v2", 1024, "2m", OPS_G2, expected, sme_coherent=coherent, state={
        "free": [1], "next_pfn": 1026,
        "host_map": {**{g: 512 - g for g in range(511)}, 511: 1025,
                     **{512 + i: 513 + i for i in range(512)}}})


def test_g_demand_v2_2m_live() -> None:
    # Here pins - unpins counts pins (operations), not pages: 6 - 4 = 2 set bits, while
    # 2 * 512 = 1024 pages are pinned.
    expected = counters(
        npf_exits=3, frames_zeroed=1536, host_faults=3,
        pins=6, unpins=4,  # 3 transient + 1 replaced
        stale_pins_peak=1, pinned_pages_peak=1024, pinned_pages_end=1024,
        metadata_bytes=16 * 1024,
        # refs: 1024 VMM-mapped frames + 2 pins (on pfn 512 and pfn 513), minus 1024.
        leaked_refs=2,
    )
    check("demand-v2", 1024, "2m", OPS_G2, expected, teardown=False, state={
        "bitmap": {0, 512}, "pfns": {0: 512, 512: 513}, "pins": {512: 1, 513: 1},
        "pinned": 1024, "stale": 0, "nested": {0, 1}})


@pytest.mark.parametrize("coherent", ["yes", "no"])
def test_g_upfront_clflush_by_coherence(coherent) -> None:
    # OPS_A under upfront: the same counts as (a), except sev_clflush_pages, which
    # flushes 4096 bytes per page at startup only on a CPU that is not coherent.
    expected = counters(
        npf_exits=4, frames_zeroed=9, host_faults=9, pins=8, unpins=8,
        clflush_bytes=0 if coherent == "yes" else 8 * 4096,
        wbinvd=1, stale_pins_peak=2, unpinned_mapped_hazards=1, pinned_pages_peak=8,
        metadata_bytes=64,
    )
    check("upfront", 8, "4k", OPS_A, expected, sme_coherent=coherent)


def test_g_upfront_clflush_not_coherent_2m() -> None:
    # 2 units at startup: 1024 pages * 4096 flushed; one fault of unit 0, no hazard.
    expected = counters(
        npf_exits=1, frames_zeroed=1024, host_faults=2, pins=1024, unpins=1024,
        clflush_bytes=1024 * 4096, wbinvd=1, pinned_pages_peak=1024, metadata_bytes=8 * 1024)
    check("upfront", 1024, "2m", [("access", 7, 1)], expected, sme_coherent="no")


# ---- (h) WBINVD by kernel version ---------------------------------------------------

# 4 pages at 4k; two remaps, the second of a range with nothing mapped under demand.
OPS_H = [("access", 0, 1), ("remap", 0, 1), ("remap", 2, 2), ("access", 0, 1)]
# Remap WBINVDs: 0 at 5.17; 1 per remap operation from 5.18 (both count: the range
# overlaps the memslot): 2.
# Teardown WBINVDs: notifier release (from 5.18) + sev_vm_destroy (before 6.17),
# + sev_free_memslot for demand-v2 (always):
#   5.17: 0 + 1 (+1) ; 5.18 and 6.16: 1 + 1 (+1) ; 6.17 and 6.18: 1 + 0 (+1).
KERNELS = ("5.17", "5.18", "6.16", "6.17", "6.18")
REMAP_WBINVD = {"5.17": 0, "5.18": 2, "6.16": 2, "6.17": 2, "6.18": 2}
TEARDOWN_WBINVD = {
    "upfront": {"5.17": 1, "5.18": 2, "6.16": 2, "6.17": 1, "6.18": 1},
    "demand": {"5.17": 1, "5.18": 2, "6.16": 2, "6.17": 1, "6.18": 1},
    "demand-v2": {"5.17": 2, "5.18": 3, "6.16": 3, "6.17": 2, "6.18": 2},
}
# Everything but wbinvd, the same on every kernel:
OTHER_H = {
    # startup pfns 1..4 pinned; the 1st remap leaves pfn 1 stale, the 2nd pfns 3, 4
    # (3 stale); the re-fault of gfn 0 takes pfn 5, unpinned: 1 hazard.
    "upfront": counters(npf_exits=2, frames_zeroed=5, host_faults=5, pins=4, unpins=4,
                        stale_pins_peak=3, unpinned_mapped_hazards=1, pinned_pages_peak=4,
                        metadata_bytes=4 * 8),
    # gfn 0 -> pfn 1 pinned; remap: 1 stale; the 2nd remap finds nothing mapped;
    # re-fault: pfn 2, pfn 1 replaced (unpin 1); teardown unpins gfn 0.
    "demand": counters(npf_exits=2, frames_zeroed=2, host_faults=2, pins=2, unpins=2,
                       clflush_bytes=2 * 4096, stale_pins_peak=1, pinned_pages_peak=1,
                       metadata_bytes=4 * 16),
    # as demand, plus a transient pin + unpin per fault: pins 2 + 2, unpins 2 + 2.
    "demand-v2": counters(npf_exits=2, frames_zeroed=2, host_faults=2, pins=4, unpins=4,
                          stale_pins_peak=1, pinned_pages_peak=1, metadata_bytes=4 * 16),
}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("strategy", ["upfront", "demand", "demand-v2"])
def test_h_wbinvd_by_kernel(strategy, kernel) -> None:
    expected = dict(OTHER_H[strategy])
    expected["wbinvd"] = REMAP_WBINVD[kernel] + TEARDOWN_WBINVD[strategy][kernel]
    check(strategy, 4, "4k", OPS_H, expected, kernel=kernel)


@pytest.mark.parametrize(("kernel", "wbinvd"), [("5.17", 0), ("5.18", 2), ("6.17", 2)])
@pytest.mark.parametrize("strategy", ["upfront", "demand", "demand-v2"])
def test_h_wbinvd_by_kernel_live(strategy, kernel, wbinvd) -> None:
    # Stopped before teardown: the remaps' WBINVDs only (0 at 5.17, 2 from 5.18; 6.17
    # makes them WBNOINVD, still counted as wbinvd).
    got = run_ref(strategy, 4, "4k", OPS_H, teardown=False, kernel=kernel)
    assert got.counters["wbinvd"] == wbinvd
    run = run_kernel(strategy, 4, "4k", OPS_H, teardown=False, kernel=kernel)
    assert run.counters["wbinvd"] == wbinvd


def test_h_upfront_second_remap_same_range_5_18() -> None:
    # (d)'s trace at 5.18: 3 remaps (one with nothing left to drop) + teardown
    # (release + sev_vm_destroy) = 5; every other counter as in (d).
    ops = [("access", 0, 1), ("remap", 0, 1), ("remap", 0, 1), ("access", 0, 1),
           ("remap", 0, 1), ("access", 0, 1)]
    expected = counters(npf_exits=3, frames_zeroed=6, host_faults=6, pins=4, unpins=4,
                        wbinvd=5, stale_pins_peak=1, unpinned_mapped_hazards=2,
                        pinned_pages_peak=4, metadata_bytes=32)
    check("upfront", 4, "4k", ops, expected, kernel="5.18")


def test_h_demand_v2_all_host_parameters() -> None:
    # OPS_G2 (2m) at 6.17 on a CPU that is not coherent: the counts of
    # test_g_demand_v2_2m[no], with wbinvd = 1 remap (6.17: one per remap) + teardown
    # at 6.17 (release 1, no sev_vm_destroy, memslot 1) = 3. The shadow MMU changes
    # nothing at 2m (no prefetch above level 4k).
    expected = counters(
        npf_exits=3, frames_zeroed=1536, host_faults=3, pins=6, unpins=6,
        clflush_bytes=3 * MIB2, page_flushes=512, wbinvd=3, stale_pins_peak=1,
        pinned_pages_peak=1024, metadata_bytes=16 * 1024)
    check("demand-v2", 1024, "2m", OPS_G2, expected, kernel="6.17", sme_coherent="no",
          mmu="shadow")


# ---- (i) the shadow MMU's prefetch ------------------------------------------------

# upfront, 16 pages at 4k: startup maps gfn g -> pfn g + 1 and pins every page, but
# installs no nested mapping, so the prefetch has present, pinned neighbours.
OPS_I = [
    ("remap", 5, 1),  # gfn 5 loses its frame (pfn 6 stays pinned: 1 stale pin)
    # fault on 2; window 0..7: run [0, 1] (ended by the faulting page) maps 0 and 1;
    # run [3..7] (to the window's end) maps 3 and 4 and stops at 5 (no VMM frame): 4.
    ("access", 2, 1),
    # fault on 6; window 0..7: 0..4 mapped; run [5] (ended by the faulting page 6)
    # maps nothing, which ends the prefetch: gfn 7 is not tried. 0.
    ("access", 6, 1),
    # so 7 faults; window: run [5] (ended by the mapped 6) maps nothing: ends. 0.
    ("access", 7, 1),
    # fault on 13; window 8..15: run [8..12] maps 5 pages; run [14, 15] maps 2: 7.
    ("access", 13, 1),
]


def test_i_upfront_shadow_prefetch() -> None:
    expected = counters(
        npf_exits=4,  # gfn 2, 6, 7, 13
        prefetched_pages=4 + 0 + 0 + 7,
        frames_zeroed=16, host_faults=16,  # startup only: no fault populates a frame
        pins=16, unpins=16,
        wbinvd=1,  # teardown at 5.17
        stale_pins_peak=1,  # pfn 6
        # no hazard: every prefetched page's frame is pinned by the page array (a
        # remapped page has no VMM frame, so the prefetch never maps one).
        pinned_pages_peak=16, metadata_bytes=16 * 8,
    )
    check("upfront", 16, "4k", OPS_I, expected, mmu="shadow", state={
        "nested": set(), "free": [6]})  # teardown: pfn 6's last reference dropped


def test_i_upfront_shadow_prefetch_live() -> None:
    expected = counters(
        npf_exits=4, prefetched_pages=11, frames_zeroed=16, host_faults=16, pins=16,
        stale_pins_peak=1, pinned_pages_peak=16, pinned_pages_end=16,
        metadata_bytes=128,
        # refs: 15 mapped frames * 2 + pfn 6 (pin only) = 31, minus 15 mapped.
        leaked_refs=16,
    )
    check("upfront", 16, "4k", OPS_I, expected, mmu="shadow", teardown=False, state={
        # every page but the remapped 5: faulted 2, 6, 7, 13, prefetched the rest.
        "nested": set(range(16)) - {5}})


def test_i_upfront_tdp_no_prefetch() -> None:
    # The same trace under the TDP MMU: one leaf per fault, nothing prefetched; the
    # access to 7 still faults (it was not prefetched under shadow either).
    expected = counters(
        npf_exits=4, frames_zeroed=16, host_faults=16, pins=16, stale_pins_peak=1,
        pinned_pages_peak=16, pinned_pages_end=16, metadata_bytes=128, leaked_refs=16)
    check("upfront", 16, "4k", OPS_I, expected, mmu="tdp", teardown=False, state={
        "nested": {2, 6, 7, 13}})


@pytest.mark.parametrize(("gfn", "prefetched", "nested"), [
    # 12-page guest; window 8..15 of which 12..15 are past the guest's end.
    # fault on 9: run [8] maps 8; run [10..15] reaches past the memslot's end, so
    # gfn_to_page_many_atomic gives 0 pages and 10, 11 stay unmapped: 1.
    (9, 1, {8, 9}),
    # fault on 11: run [8, 9, 10] maps 3; run [12..15] maps nothing (past the end).
    (11, 3, {8, 9, 10, 11}),
    # fault on 1: window 0..7 all present: run [0] maps 1, run [2..7] maps 6: 7.
    (1, 7, set(range(8))),
])
def test_i_upfront_shadow_prefetch_guest_end(gfn, prefetched, nested) -> None:
    expected = counters(
        npf_exits=1, prefetched_pages=prefetched, frames_zeroed=12, host_faults=12,
        pins=12, pinned_pages_peak=12, pinned_pages_end=12, metadata_bytes=12 * 8,
        leaked_refs=12)  # 12 pins still held (live)
    check("upfront", 12, "4k", [("access", gfn, 1)], expected, mmu="shadow",
          teardown=False, state={"nested": nested})


def test_i_upfront_shadow_prefetch_after_remap_hazard() -> None:
    # 8 pages; gfn 0 remapped, then faulted: new pfn 9 unpinned -> 1 hazard (the
    # fault's). The prefetch maps 1..7 (run [1..7], all present, region-pinned):
    # 7 prefetched pages, none a hazard.
    expected = counters(
        npf_exits=1, prefetched_pages=7, frames_zeroed=9, host_faults=9, pins=8, unpins=8,
        wbinvd=1, stale_pins_peak=1, unpinned_mapped_hazards=1, pinned_pages_peak=8,
        metadata_bytes=64)
    check("upfront", 8, "4k", [("remap", 0, 1), ("access", 0, 1)], expected, mmu="shadow")


OPS_I_DEMAND = [("access", 0, 1), ("access", 2, 1), ("access", 1, 1)]
# Under demand and demand-v2 a page has a VMM frame only once a fault populated it,
# and that fault mapped it; a remap drops the frame and the nested mapping together.
# So every unmapped neighbour lacks a VMM frame and every run maps nothing:
#   fault 0: run [1..7]: 1 has no frame -> ends; fault 2: run [1] -> ends;
#   fault 1: run [3..7]: 3 has no frame -> ends. prefetched_pages 0, and therefore no
# hazard from a prefetched page (the rule exists but cannot fire in this model).


@pytest.mark.parametrize("mmu", ["tdp", "shadow"])
def test_i_demand_shadow_prefetch_maps_nothing(mmu) -> None:
    expected = counters(
        npf_exits=3, frames_zeroed=3, host_faults=3, pins=3,
        clflush_bytes=3 * 4096, pinned_pages_peak=3, pinned_pages_end=3,
        metadata_bytes=16 * 16, leaked_refs=3)
    check("demand", 16, "4k", OPS_I_DEMAND, expected, mmu=mmu, teardown=False,
          state={"nested": {0, 1, 2}})


@pytest.mark.parametrize("mmu", ["tdp", "shadow"])
def test_i_demand_v2_shadow_prefetch_maps_nothing(mmu) -> None:
    expected = counters(
        npf_exits=3, frames_zeroed=3, host_faults=3,
        pins=6, unpins=3,  # transient pin + unpin and one long-lived pin per fault
        pinned_pages_peak=3, pinned_pages_end=3, metadata_bytes=16 * 16, leaked_refs=3)
    check("demand-v2", 16, "4k", OPS_I_DEMAND, expected, mmu=mmu, teardown=False,
          state={"nested": {0, 1, 2}})


def test_i_demand_shadow_after_remap() -> None:
    # 8 pages: fault 0, 1, 2 (frames 1, 2, 3); remap 1 (pfn 2 stale); fault 0 is
    # mapped; fault 1: pfn 4, replacing pfn 2 (freed). Its window: run [3..7] (0, 1, 2
    # mapped): 3 has no frame -> nothing. No prefetch, no hazard.
    ops = [("access", 0, 1), ("access", 1, 1), ("access", 2, 1), ("remap", 1, 1),
           ("access", 0, 1), ("access", 1, 1)]
    expected = counters(
        npf_exits=4, frames_zeroed=4, host_faults=4, pins=4, unpins=1 + 3,
        clflush_bytes=4 * 4096, wbinvd=1, stale_pins_peak=1, pinned_pages_peak=3,
        metadata_bytes=16 * 8)
    check("demand", 8, "4k", ops, expected, mmu="shadow", state={"free": [2]})


def test_i_upfront_shadow_no_prefetch_at_2m() -> None:
    # direct_pte_prefetch returns for levels above 4k: a 2m fault maps its unit only.
    expected = counters(
        npf_exits=1, frames_zeroed=1024, host_faults=2, pins=1024, pinned_pages_peak=1024,
        pinned_pages_end=1024, metadata_bytes=8 * 1024, leaked_refs=1024)
    check("upfront", 1024, "2m", [("access", 0, 1)], expected, mmu="shadow",
          teardown=False, state={"nested": {0}})


# ---- (j) host faults: one per unit populated ----------------------------------------


def test_j_host_faults_demand_4k() -> None:
    # 4 pages: fault 0 (pfn 1), access 0 mapped, fault 1 (pfn 2); remap 0..1 (both
    # pinned: 2 stale); fault 1 populates pfn 3 (stack empty), replacing pfn 2 (freed).
    # At 4k every populated unit is one frame: host_faults == frames_zeroed == 3.
    ops = [("access", 0, 1), ("access", 0, 1), ("access", 1, 1), ("remap", 0, 2),
           ("access", 1, 1)]
    expected = counters(
        npf_exits=3, frames_zeroed=3, host_faults=3, pins=3,
        unpins=1 + 2,  # the replaced pfn 2 + teardown's bits 0 (stale pfn 1) and 1
        clflush_bytes=3 * 4096, wbinvd=1, stale_pins_peak=2, pinned_pages_peak=2,
        metadata_bytes=16 * 4)
    check("demand", 4, "4k", ops, expected, state={"free": [2, 1], "host_map": {1: 3}})


def test_j_host_faults_upfront_2m() -> None:
    # Startup populates 2 units: 1024 frames in 2 host faults (one 2 MiB page each).
    # The remap of gfn 100 drops unit 0; its re-fault populates 512 frames: 1 more.
    ops = [("access", 0, 1), ("remap", 100, 1), ("access", 0, 1)]
    expected = counters(
        npf_exits=2, frames_zeroed=1536, host_faults=3, pins=1024, unpins=1024, wbinvd=1,
        stale_pins_peak=512, unpinned_mapped_hazards=512, pinned_pages_peak=1024,
        metadata_bytes=8 * 1024)
    check("upfront", 1024, "2m", ops, expected)


def test_j_host_faults_demand_v2_2m() -> None:
    # Fault of unit 0 (512 frames, 1 host fault); gfn 511 is in the mapped unit 0;
    # fault of unit 1 (512 frames, 1 host fault). pins: 2 transient + 2 long-lived;
    # unpins: 2 transient + 2 bits at teardown.
    ops = [("access", 0, 1), ("access", 511, 1), ("access", 512, 1)]
    expected = counters(
        npf_exits=2, frames_zeroed=1024, host_faults=2, pins=4, unpins=4, wbinvd=2,
        pinned_pages_peak=1024, metadata_bytes=16 * 1024)
    check("demand-v2", 1024, "2m", ops, expected)

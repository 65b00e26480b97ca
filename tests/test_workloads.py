"""The suite's workloads: access patterns, vCPU layouts, remaps, traces with a vcpu column."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinning.model import workloads as W
from pinning.model.kernels import engine as K
from pinning.model.names import FAMILY_PATTERN, LAYOUTS, PATTERNS, InputError
from pinning.model.traces import Trace, read_trace, workload_from_trace
from pinning.model.workloads import (
    Phase,
    Remap,
    access_units,
    make_workload,
    random_units,
    workload_bytes,
)

DISTINCT = ("sequential", "random", "strided")  # patterns that touch each unit at most once
#: Patterns that are streams over any number of units (the boot pattern is a guest's boot)
ACCESS_PATTERNS = tuple(p for p in PATTERNS if p not in FAMILY_PATTERN.values())


def numpy_shuffled(n: int, seed: int) -> np.ndarray:
    units = np.arange(n, dtype=np.uint32)
    np.random.default_rng(seed).shuffle(units)
    return units


@pytest.fixture
def fast_paths(monkeypatch):
    """Take the jitted shuffle and guided zipf search already for small guests."""
    monkeypatch.setattr(W, "_FAST_SHUFFLE_MIN", 64)


# --- patterns ----------------------------------------------------------------------


def test_constants():
    assert ACCESS_PATTERNS == ("sequential", "random", "hotset", "zipf", "strided")
    assert PATTERNS == (*ACCESS_PATTERNS, "boot")
    assert LAYOUTS == ("slices", "shared")


@pytest.mark.parametrize(("gib", "level"), [(1, "4k"), (16, "4k"), (16, "2m"), (4, "1g")])
def test_boot_touches_a_working_set_and_the_memory_map(gib, level):
    guest_pages = gib << 18
    upages = W.unit_pages(level)
    units = W.boot_units(guest_pages, upages)
    # 256 MiB at the bottom (65 536 pages), and one 64-byte struct page per page at the
    # top: guest_pages / 64 pages
    low = -(-65_536 // upages)
    top = (guest_pages - guest_pages // 64) // upages
    n_units = guest_pages // upages
    want = (np.arange(n_units) if top <= low
            else np.concatenate([np.arange(low), np.arange(top, n_units)]))
    np.testing.assert_array_equal(units, want)
    assert np.all(np.diff(units.astype(np.int64)) > 0)  # ascending, each once


def test_boot_of_a_guest_smaller_than_its_working_set_touches_all_of_it():
    np.testing.assert_array_equal(W.boot_units(1000, 1), np.arange(1000))


def test_boot_workload_splits_the_boot_among_vcpus():
    guest_pages = 4 << 18
    w = make_workload("boot", guest_pages, "4k", vcpus=3)
    phase = w.steps[0]
    np.testing.assert_array_equal(phase.units, W.boot_units(guest_pages, 1))
    assert phase.bounds.tolist() == np.linspace(0, len(phase.units), 4).round().tolist()
    assert workload_bytes("boot", guest_pages, "4k", vcpus=3) >= phase.units.nbytes


def test_boot_is_not_a_stream():
    with pytest.raises(InputError, match="boot_units"):
        access_units("boot", 100)


@pytest.mark.parametrize(("n", "frac", "seed"), [(1, 1.0, 0), (1000, 0.37, 5), (4099, 1.0, 2)])
def test_random_is_random_units_is_numpy_shuffle(n, frac, seed):
    got = access_units("random", n, touch_fraction=frac, seed=seed)
    assert got.dtype == np.uint32
    np.testing.assert_array_equal(got, random_units(n, frac, seed))
    np.testing.assert_array_equal(got, numpy_shuffled(n, seed)[: int(n * frac)])


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 256, 257, 65_537])
@pytest.mark.parametrize("chunk", [1, 7, 1 << 18])
def test_fast_shuffle_replicates_numpy(n, chunk):
    for seed in (0, 1, 12345):
        x = np.arange(n, dtype=np.uint32)
        W._fast_shuffle(x, seed, chunk=chunk)
        np.testing.assert_array_equal(x, numpy_shuffled(n, seed))


def test_shuffle_paths_agree_at_the_threshold(fast_paths):
    n = 1 << 20  # above the real threshold too: the jitted path under the JIT
    np.testing.assert_array_equal(W.shuffled_units(n, 9), numpy_shuffled(n, 9))
    np.testing.assert_array_equal(W.shuffled_units(5000, 3), numpy_shuffled(5000, 3))


def test_sequential_is_the_first_units():
    np.testing.assert_array_equal(access_units("sequential", 10, touch_fraction=0.55),
                                  np.arange(5))


def test_strided_documented_order():
    got = access_units("strided", 10, stride=4)
    np.testing.assert_array_equal(got, [0, 4, 8, 1, 5, 9, 2, 6, 3, 7])
    np.testing.assert_array_equal(access_units("strided", 10, stride=4, touch_fraction=0.5),
                                  [0, 4, 8, 1, 5])
    np.testing.assert_array_equal(access_units("strided", 5, stride=99), np.arange(5))
    np.testing.assert_array_equal(access_units("strided", 5, stride=1), np.arange(5))


def test_strided_one_page_per_2m_first():
    # a 4k guest of 4 x 2 MiB: the first four accesses hit one page of each 2 MiB
    got = access_units("strided", 2048, stride=512)
    np.testing.assert_array_equal(got[:5], [0, 512, 1024, 1536, 1])
    np.testing.assert_array_equal(np.sort(got), np.arange(2048))


def test_int64_units_from_2_to_the_32():
    assert access_units("sequential", (1 << 32) - 1, touch_fraction=1e-9).dtype == np.uint32
    got = access_units("strided", 1 << 32, touch_fraction=1e-9, stride=512)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [0, 512, 1024, 1536])


def test_hotset_hot_share():
    n, hot_fraction, hot_share = 200_000, 0.1, 0.9
    got = access_units("hotset", n, seed=4, hot_fraction=hot_fraction, hot_share=hot_share)
    assert got.shape == (n,) and got.dtype == np.uint32
    # the hot set is the first 10% of the units `random` would touch (same seed)
    hot = np.zeros(n, dtype=bool)
    hot[numpy_shuffled(n, 4)[: int(hot_fraction * n)]] = True
    in_hot = hot[got].mean()
    expect = hot_share + (1 - hot_share) * hot_fraction  # uniform picks land in it too
    assert abs(in_hot - expect) < 0.005, in_hot
    # the 10% most accessed units are (almost exactly) the hot set
    top = np.argsort(np.bincount(got, minlength=n))[::-1][: int(hot_fraction * n)]
    assert hot[top].mean() > 0.99


def test_hotset_extremes():
    n = 50_000
    cold = access_units("hotset", n, hot_share=0.0, seed=1)
    assert len(np.unique(cold)) > 0.6 * n  # uniform: ~1 - 1/e of the units
    one = access_units("hotset", n, hot_fraction=0.0, hot_share=1.0, seed=1)
    assert len(np.unique(one)) == 1 and one[0] == numpy_shuffled(n, 1)[0]


@pytest.mark.parametrize("s", [1.2, 2.0])
def test_zipf_top_ranks_follow_power_law(s):
    n = 200_000
    got = access_units("zipf", n, zipf_s=s, seed=11)
    counts = np.bincount(got, minlength=n)
    order = numpy_shuffled(n, 11)  # rank r is the r-th unit `random` would touch
    c1, c2, c3 = counts[order[:3]]
    assert abs(c1 / c2 / 2**s - 1) < 0.06, (c1, c2)
    assert abs(c1 / c3 / 3**s - 1) < 0.08, (c1, c3)
    weights = np.arange(1, n + 1, dtype=float) ** -s
    assert abs(c1 / n - 1 / weights.sum()) < 0.01
    assert counts.argmax() == order[0]


@pytest.mark.parametrize("s", [0.3, 1.2, 4.0])
def test_guided_rank_search_equals_searchsorted(s):
    n = 5000
    cdf = np.cumsum(np.arange(1, n + 1, dtype=np.float64) ** -s)
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.random(20_000) * cdf[-1], cdf[:50], np.nextafter(cdf[:50], 0),
                        cdf[-3:], [0.0, cdf[-1], np.nextafter(cdf[-1], 0)]])
    want = W._ranks(cdf, u, None)
    np.testing.assert_array_equal(W._ranks(cdf, u, W._rank_guide(cdf)), want)
    assert want.max() <= n - 1


def test_zipf_and_hotset_same_on_both_paths(monkeypatch):
    slow = [access_units(p, 3000, seed=2, touch_fraction=0.8) for p in ("zipf", "hotset")]
    monkeypatch.setattr(W, "_FAST_SHUFFLE_MIN", 64)
    fast = [access_units(p, 3000, seed=2, touch_fraction=0.8) for p in ("zipf", "hotset")]
    for a, b in zip(slow, fast, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("pattern", ACCESS_PATTERNS)
def test_deterministic_per_seed(pattern):
    a = access_units(pattern, 4000, seed=7, stride=3)
    b = access_units(pattern, 4000, seed=7, stride=3)
    np.testing.assert_array_equal(a, b)
    c = access_units(pattern, 4000, seed=8, stride=3)
    if pattern in ("sequential", "strided"):
        np.testing.assert_array_equal(a, c)  # no randomness
    else:
        assert not np.array_equal(a, c)
    w1 = make_workload(pattern, 4000, "4k", vcpus=3, seed=7, layout="shared")
    w2 = make_workload(pattern, 4000, "4k", vcpus=3, seed=7, layout="shared")
    np.testing.assert_array_equal(w1.steps[0].units, w2.steps[0].units)


@given(
    pattern=st.sampled_from(ACCESS_PATTERNS),
    n=st.integers(0, 3000),
    frac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32),
    stride=st.integers(1, 5000),
    hot_fraction=st.floats(0.0, 1.0),
    zipf_s=st.floats(0.01, 8.0),
)
def test_streams_property(pattern, n, frac, seed, stride, hot_fraction, zipf_s):
    got = access_units(pattern, n, touch_fraction=frac, seed=seed, stride=stride,
                       hot_fraction=hot_fraction, zipf_s=zipf_s)
    assert got.dtype == np.uint32
    assert got.shape == (int(n * frac),)
    assert (got < n).all()
    if pattern in DISTINCT:
        assert len(np.unique(got)) == len(got)
    if pattern == "strided":
        want = sorted(range(n), key=lambda u: (u % stride, u))[: len(got)]
        np.testing.assert_array_equal(got, np.array(want, dtype=np.int64))


# --- workloads ---------------------------------------------------------------------


def vcpu_units(phase: Phase, v: int) -> np.ndarray:
    return phase.units[phase.bounds[v]: phase.bounds[v + 1]]


@pytest.mark.parametrize("pattern", ACCESS_PATTERNS)
def test_slices_own_contiguous_slices(pattern):
    n, vcpus = 1000, 7  # slices of 143 x 6 then 142
    w = make_workload(pattern, n, "4k", vcpus=vcpus, seed=3, touch_fraction=0.9, stride=10)
    assert w.nvcpus == vcpus and len(w.steps) == 1
    phase = w.steps[0]
    assert phase.nvcpus == vcpus and phase.bounds[0] == 0
    assert phase.bounds[-1] == len(phase.units)
    start = 0
    for v in range(vcpus):
        size = 143 if v < 6 else 142
        own = vcpu_units(phase, v)
        assert ((own >= start) & (own < start + size)).all()
        np.testing.assert_array_equal(
            own, access_units(pattern, size, seed=3 + v, touch_fraction=0.9, stride=10) + start)
        start += size
    assert start == n


@pytest.mark.parametrize("pattern", DISTINCT)
def test_slices_are_disjoint_and_cover_the_guest(pattern):
    w = make_workload(pattern, 64 * 512, "2m", vcpus=5, seed=1)
    units = w.steps[0].units
    np.testing.assert_array_equal(np.sort(units), np.arange(64))


def test_more_vcpus_than_units():
    w = make_workload("random", 3 * 512, "2m", vcpus=5)
    assert w.steps[0].bounds.tolist() == [0, 1, 2, 3, 3, 3]


@pytest.mark.parametrize("pattern", ACCESS_PATTERNS)
def test_shared_deals_one_stream_round_robin(pattern):
    stream = access_units(pattern, 1001, seed=5, stride=7)
    w = make_workload(pattern, 1001, "4k", vcpus=4, layout="shared", seed=5, stride=7)
    phase = w.steps[0]
    assert phase.bounds.tolist() == [0, 251, 501, 751, 1001]
    for v in range(4):
        np.testing.assert_array_equal(vcpu_units(phase, v), stream[v::4])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_vcpu_is_the_stream(layout):
    w = make_workload("random", 1 << 15, "4k", layout=layout, seed=2, touch_fraction=0.5)
    np.testing.assert_array_equal(w.steps[0].units, random_units(1 << 15, 0.5, 2))
    assert w.steps[0].bounds.tolist() == [0, 1 << 14]
    assert w.description == "random, 1 vCPU, touch 50%"


def test_remap_centred_and_unit_aligned_at_2m():
    guest = 64 * 512  # 64 units of 2 MiB
    w = make_workload("zipf", guest, "2m", vcpus=4, touch_fraction=0.5, remap_fraction=0.1)
    first, remap, second = w.steps
    assert isinstance(first, Phase) and isinstance(remap, Remap) and isinstance(second, Phase)
    # floor(0.1 * 64) = 6 units, 29 before and 29 after
    assert (remap.gfn, remap.npages) == (29 * 512, 6 * 512)
    np.testing.assert_array_equal(second.units, first.units)
    np.testing.assert_array_equal(second.bounds, first.bounds)
    assert w.description == "zipf s=1.2, 4 vCPUs (slices), touch 50%, remap 10%"


@pytest.mark.parametrize(("fraction", "gfn", "npages"),
                         [(1e-6, 31 * 512, 512), (0.25, 24 * 512, 16 * 512), (1.0, 0, 64 * 512)])
def test_remap_sizes(fraction, gfn, npages):
    w = make_workload("sequential", 64 * 512, "2m", remap_fraction=fraction)
    assert (w.steps[1].gfn, w.steps[1].npages) == (gfn, npages)
    lead, tail = gfn // 512, 64 - (gfn + npages) // 512
    assert lead in (tail, tail - 1)


def test_no_remap_is_one_phase():
    w = make_workload("hotset", 4096, "4k", remap_fraction=0.0)
    assert len(w.steps) == 1 and isinstance(w.steps[0], Phase)
    assert "remap" not in w.description and "hotset" in w.description


@given(
    pattern=st.sampled_from(ACCESS_PATTERNS),
    layout=st.sampled_from(LAYOUTS),
    n_units=st.integers(1, 600),
    vcpus=st.integers(1, 64),
    frac=st.floats(0.0, 1.0),
    level=st.sampled_from(["4k", "2m"]),
)
def test_workload_property(pattern, layout, n_units, vcpus, frac, level):
    upages = {"4k": 1, "2m": 512}[level]
    w = make_workload(pattern, n_units * upages, level, vcpus=vcpus, layout=layout,
                      touch_fraction=frac)
    phase = w.steps[0]
    assert w.nvcpus == phase.nvcpus == vcpus
    assert phase.bounds.dtype == np.int64 and phase.units.dtype == np.uint32
    assert (np.diff(phase.bounds) >= 0).all() and phase.bounds[-1] == len(phase.units)
    assert (phase.units < n_units).all()
    if pattern in DISTINCT:
        assert len(np.unique(phase.units)) == len(phase.units)


# --- memory bound ------------------------------------------------------------------


@pytest.mark.parametrize("pattern", ACCESS_PATTERNS)
@pytest.mark.parametrize(("layout", "vcpus", "frac"),
                         [("slices", 1, 1.0), ("slices", 4, 0.5), ("shared", 3, 0.7)])
def test_workload_bytes_bounds_the_peak(pattern, layout, vcpus, frac, fast_paths):
    kw = dict(vcpus=vcpus, layout=layout, touch_fraction=frac, remap_fraction=0.2, seed=1)
    bound = workload_bytes(pattern, 1 << 17, "4k", **kw)
    tracemalloc.start()
    try:
        w = make_workload(pattern, 1 << 17, "4k", **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert w.steps[0].units.nbytes <= peak <= bound


def test_workload_bytes_of_a_1tib_guest_is_cheap():
    n = 1 << 28  # 1 TiB at 4k: nothing is allocated
    assert 4 * n <= workload_bytes("sequential", n, "4k") < 4 * n + (1 << 20)
    assert workload_bytes("zipf", n, "4k") >= (8 + 4 + 4) * n
    assert workload_bytes("random", n, "4k", vcpus=64, layout="shared") >= 8 * n
    with pytest.raises(InputError, match="layout"):
        workload_bytes("zipf", n, "4k", layout="stripes")


# --- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"pattern": "bursty"}, "pattern 'bursty' is unknown (expected one of sequential, "
                                "random, hotset, zipf, strided, boot)"),
        ({"layout": "stripes"}, "layout 'stripes' is unknown (expected one of slices, shared)"),
        ({"vcpus": 0}, "vcpus 0 must be an integer between 1 and 64"),
        ({"vcpus": 65}, "vcpus 65 must be"),
        ({"vcpus": 2.5}, "vcpus 2.5 must be"),
        ({"touch_fraction": 1.5}, "touch_fraction 1.5 must lie between 0 and 1"),
        ({"touch_fraction": -0.1}, "touch_fraction -0.1"),
        ({"touch_fraction": float("nan")}, "touch_fraction nan"),
        ({"remap_fraction": 2.0}, "remap_fraction 2.0 must lie between 0 and 1"),
        ({"hot_fraction": -1.0}, "hot_fraction -1.0 must lie between 0 and 1"),
        ({"hot_share": 1.01}, "hot_share 1.01 must lie between 0 and 1"),
        ({"stride": 0}, "stride 0 must be an integer >= 1"),
        ({"zipf_s": 0.0}, "zipf_s 0.0 must be a finite number > 0"),
        ({"zipf_s": -1.0}, "zipf_s -1.0"),
        ({"seed": -1}, "seed -1 must be an integer >= 0"),
        ({"guest_pages": 1000}, "guest_pages 1000 is not a positive whole number of 2m units"),
        ({"guest_pages": 0}, "guest_pages 0"),
        ({"level": "5m"}, "unknown level '5m'"),
    ],
)
def test_bad_workload_input(kwargs, needle):
    args = {"pattern": "random", "guest_pages": 4096, "level": "2m", **kwargs}
    for fn in (make_workload, workload_bytes):
        with pytest.raises(InputError) as exc:
            fn(**args)
        assert needle in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"pattern": "bursty"}, "pattern 'bursty'"), ({"stride": -3}, "stride -3"),
     ({"zipf_s": float("inf")}, "zipf_s inf"), ({"n_units": -1}, "n_units -1"),
     ({"hot_share": float("nan")}, "hot_share nan")],
)
def test_bad_stream_input(kwargs, needle):
    with pytest.raises(InputError, match=needle.replace("(", r"\(")):
        access_units(**{"pattern": "zipf", "n_units": 100, **kwargs})


# --- traces with a vcpu column -----------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.csv"
    path.write_text(text)
    return path


def test_trace_without_vcpu_column_is_vcpu_0(tmp_path):
    t = read_trace(write(tmp_path, "op,gfn,npages\naccess,3,\nremap,0,2\n"))
    assert t.vcpu.dtype == np.int16 and t.vcpu.tolist() == [0, 0]
    assert Trace.from_rows([("access", 1, 1)]).vcpu.tolist() == [0]
    assert Trace(t.ops, t.gfns, t.npages).vcpu.tolist() == [0, 0]


def test_trace_with_vcpu_column(tmp_path):
    t = read_trace(write(tmp_path, "op,gfn,npages,vcpu\naccess,3,,2\naccess,4,1,\n"
                                   "remap,0,2,\naccess,5,,63\n"))
    assert t.vcpu.dtype == np.int16 and t.vcpu.tolist() == [2, 0, 0, 63]
    assert t.ops.tolist() == [K.OP_ACCESS, K.OP_ACCESS, K.OP_REMAP, K.OP_ACCESS]
    rows = Trace.from_rows([("access", 3, 1, 2), ("access", 4, 1), ("remap", 0, 2, 0),
                            ("access", 5, 1, 63)])
    for name in ("ops", "gfns", "npages", "vcpu"):
        np.testing.assert_array_equal(getattr(rows, name), getattr(t, name))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("op,gfn,npages,vcpu\naccess,3,,x\n", "t.csv:2: vcpu 'x' must be an integer between 0 "
                                              "and 63"),
        ("op,gfn,npages,vcpu\naccess,3,,1\naccess,3,,64\n", "t.csv:3: vcpu '64'"),
        ("op,gfn,npages,vcpu\naccess,3,,-1\n", "t.csv:2: vcpu '-1'"),
        ("op,gfn,npages,vcpu\nremap,3,1,1.5\n", "t.csv:2: vcpu '1.5'"),
        ("op,gfn,npages,vcpu\naccess,3,\n", "t.csv:2: expected 4 fields, got 3"),
        ("op,gfn\naccess,3\n", "t.csv:1: header must be op,gfn,npages (then optional vcpu"),
    ],
)
def test_bad_vcpu_names_the_line(tmp_path, text, needle):
    with pytest.raises(InputError) as exc:
        read_trace(write(tmp_path, text))
    assert needle in str(exc.value)


def test_from_rows_refuses_bad_vcpu():
    with pytest.raises(InputError, match="vcpu 64 must be between 0 and 63"):
        Trace.from_rows([("access", 0, 1, 64)])


def test_workload_from_trace_phases_and_vcpu_order(tmp_path):
    text = ("op,gfn,npages,vcpu\n"
            "access,1030,,1\naccess,0,,0\naccess,600,,1\naccess,5,,0\naccess,2000,,3\n"
            "remap,512,100,7\nremap,0,1,\n"
            "access,513,,2\naccess,1,,2\n")
    w = workload_from_trace(read_trace(write(tmp_path, text)), 4 * 512, "2m")
    assert w.nvcpus == 4  # the remap's vcpu 7 does not count
    first, r1, r2, second = w.steps
    assert first.units.tolist() == [0, 0, 2, 1, 3]  # vCPU 0: gfn 0, 5; vCPU 1: 1030, 600; 3
    assert first.bounds.tolist() == [0, 2, 4, 4, 5]
    assert (r1, r2) == (Remap(512, 100), Remap(0, 1))  # consecutive remaps: no empty phase
    assert second.units.tolist() == [1, 0] and second.bounds.tolist() == [0, 0, 0, 2, 2]
    assert "2 remaps" in w.description and "4 vCPUs" in w.description


def test_workload_from_trace_without_vcpus_and_checks_gfns():
    t = Trace.from_rows([("remap", 0, 4), ("access", 3, 1), ("access", 1, 1)])
    w = workload_from_trace(t, 8, "4k")
    assert w.nvcpus == 1 and w.steps[0] == Remap(0, 4)
    assert w.steps[1].units.tolist() == [3, 1] and w.steps[1].bounds.tolist() == [0, 2]
    with pytest.raises(InputError, match="outside the guest"):
        workload_from_trace(t, 2, "4k")
    with pytest.raises(InputError, match="guest_pages 100 is not"):
        workload_from_trace(t, 100, "2m")

"""pinning.backends.kvm with guest RAM from a guest_memfd, and the conversion (punch +
re-touch) on every kind of guest RAM (skipped where KVM cannot run a gmem guest).

As in test_kvm.py, no assertion depends on absolute times: they check what the guest
wrote (through the guest_memfd's mapping), KVM's own counters, the calls made, phase
accounting, the one-line refusals, and that every fd and mapping is released.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import re
import sys

import numpy as np
import pytest

from pinning.backends import kvm, kvm_uapi, libc
from pinning.model import strategies
from pinning.model.config import BenchConfig
from pinning.model.names import RUN_PHASES, InputError

_REASON = kvm.kvm_unavailable()
if _REASON is not None:
    pytest.skip(f"KVM cannot run pinbench's guest here: {_REASON}", allow_module_level=True)
_GMEM_REASON = kvm.gmem_unavailable()
if _GMEM_REASON is not None:
    pytest.skip(f"KVM cannot run pinbench's guest on guest_memfd here: {_GMEM_REASON}",
                allow_module_level=True)

from tests.test_kvm import _check_written, _snapshot  # noqa: E402  (after the skip)

MiB = 1 << 20
SIZE = 32 * MiB
PAGES = SIZE // 4096


@pytest.fixture(scope="module")
def gmem() -> str:
    """A registered guest_memfd strategy: "gmem" where the model has it, else a throwaway
    one (the backend asks only Strategy.guest_memfd)."""
    if "gmem" in strategies.names() and strategies.get("gmem").guest_memfd:
        yield "gmem"
        return
    name = "test-gmem-backend"
    strategies.register(dataclasses.replace(strategies.get("demand"), name=name,
                                            guest_memfd=True))
    yield name
    strategies.unregister(name)


def _first_dwords(ram: np.ndarray) -> np.ndarray:
    return ram.reshape(-1, 1024)[:, 0]


# --- the guest on guest_memfd memory ----------------------------------------------------


@pytest.mark.parametrize(("vcpus", "pattern"), [(1, "sequential"), (2, "random")])
def test_gmem_guest_writes_its_memory_through_the_guest_memfd(gmem, vcpus, pattern):
    inspect, seen = _check_written(PAGES)
    r = kvm.run_vm(SIZE, strategy=gmem, vcpus=vcpus, pattern=pattern, seed=3, _inspect=inspect)
    assert r.error is None and r.gmem and r.prefault == "none"
    assert r.pages_touched == PAGES and np.unique(seen["gfns"]).size == PAGES
    # Nothing was in place before the guest ran: KVM faults every page in.
    assert r.stats["pf_taken"] >= PAGES
    assert r.populate_ns == r.lock_ns == r.prefault_ns == 0
    assert r.create_ns > 0 and r.first_insn_ns > 0 and r.touch_ns > 0 and r.teardown_ns > 0
    assert r.startup_ns == r.create_ns + r.first_insn_ns
    assert r.pages_punched == r.pages_retouched == r.punch_ns == r.retouch_ns == 0
    assert r.convert_ns == 0 and r.convert_stats == {}
    d = r.as_dict()
    assert d["gmem"] is True and d["ns_per_page_punch"] is None
    assert d["stats"] == r.stats and d["startup_ns"] == r.startup_ns


def test_fallocate_preallocates_all_guest_ram_before_the_guest_runs(gmem, monkeypatch):
    assert kvm.gmem_unavailable("fallocate") is None  # its probe's calls are not this run's
    calls = []
    real = libc.fallocate

    def spy(fd, mode, offset, length, what):
        calls.append((mode, offset, length))
        real(fd, mode, offset, length, what)

    monkeypatch.setattr(libc, "fallocate", spy)
    r = kvm.run_vm(SIZE, strategy=gmem, prefault="fallocate", vcpus=2,
                   _inspect=_check_written(PAGES)[0])
    # One call: KEEP_SIZE (mode 0 is EOPNOTSUPP on a guest_memfd) over the whole file.
    assert calls == [(libc.FALLOC_FL_KEEP_SIZE, 0, SIZE)]
    assert r.error is None and r.prefault == "fallocate" and r.prefault_ns > 0
    assert r.pages_touched == PAGES
    assert r.startup_ns == r.create_ns + r.prefault_ns + r.first_insn_ns
    assert r.setup_ns_per_page == r.prefault_ns / PAGES


def test_prefault_map_is_refused_with_the_ioctl_and_errno_or_runs(gmem):
    reason = kvm.gmem_unavailable("map")
    if reason is None:  # a kernel with KVM_PRE_FAULT_MEMORY (TDP MMU)
        r = kvm.run_vm(SIZE, strategy=gmem, prefault="map", _inspect=_check_written(PAGES)[0])
        assert r.prefault_ns > 0 and r.pages_touched == PAGES
        return
    # This host: KVM_CAP_PRE_FAULT_MEMORY is 0, and the ioctl itself is refused.
    assert re.fullmatch(r"KVM_PRE_FAULT_MEMORY: E[A-Z]+ \([^)]+\)"
                        r"(: KVM_CAP_PRE_FAULT_MEMORY is 0 on this kernel)?", reason), reason
    with pytest.raises(InputError) as info:
        kvm.run_vm(SIZE, strategy=gmem, prefault="map")
    assert str(info.value) == reason and "\n" not in reason
    caps = kvm.kvm_capabilities()
    assert caps["KVM_CAP_GUEST_MEMFD"] > 0 and caps["KVM_CAP_USER_MEMORY2"] > 0
    assert caps["KVM_CAP_GUEST_MEMFD_FLAGS"] & kvm.GMEM_FLAGS == kvm.GMEM_FLAGS


# --- the conversion: punch, then re-touch ----------------------------------------------


@pytest.mark.parametrize(("fraction", "pages"), [
    (0.0, (0, 0)),
    (1.0, (0, PAGES)),
    (0.25, (6 * 512, PAGES // 4)),  # 12 MiB .. 20 MiB of 32 MiB
    (0.1, (7 * 512, round(0.1 * PAGES))),  # the centred start 14.4 MiB, rounded down to 14
    (1e-9, (7 * 512, 1)),  # at least one page; its centred start rounded down to 14 MiB
])
def test_punch_range_is_centred_and_2mib_aligned(fraction, pages):
    first, count = kvm.punch_range(PAGES, fraction)
    assert (first, count) == pages
    assert first % 512 == 0 and first + count <= PAGES


def test_punched_pages_read_zero_and_hold_the_guests_value_after_retouch(gmem):
    strategy = gmem
    first, count = kvm.punch_range(PAGES, 0.25)
    expected = ~np.arange(PAGES, dtype=np.uint32)
    seen = {}

    def after_punch(ram, punch_first, punch_count):
        words = _first_dwords(ram)
        seen["range"] = (punch_first, punch_count)
        assert not words[first:first + count].any()  # discarded: zero-filled on read
        outside = np.r_[0:first, first + count:PAGES]
        np.testing.assert_array_equal(words[outside], expected[outside])  # the rest kept

    def at_end(ram, gfns):
        np.testing.assert_array_equal(_first_dwords(ram), expected)  # re-touched: ~gfn again
        seen["end"] = True

    r = kvm.run_vm(SIZE, strategy=strategy, punch_fraction=0.25, vcpus=2,
                   _inspect_punch=after_punch, _inspect=at_end)
    assert seen == {"range": (first, count), "end": True}
    assert r.pages_punched == r.pages_retouched == count and r.punch_fraction == 0.25
    assert r.punch_ns > 0 and r.retouch_ns > 0 and r.convert_ns == r.punch_ns + r.retouch_ns
    assert r.ns_per_page_punch == r.punch_ns / count
    assert r.ns_per_page_retouch == r.retouch_ns / count


def test_retouch_refaults_every_discarded_page(gmem):
    r = kvm.run_vm(SIZE, strategy=gmem, punch_fraction=0.25)
    count = PAGES // 4
    # KVM's own count over the conversion: the discard zapped KVM's mappings and freed
    # the pages, so each one is faulted in afresh (vCPU counters only: no vm.* gauges).
    assert r.convert_stats["pf_taken"] >= count
    assert not any(k.startswith("vm.") for k in r.convert_stats)
    assert r.stats["pf_taken"] >= PAGES + count  # the stats are the whole run's


@pytest.mark.parametrize("strategy", ["upfront", "demand"])
def test_anonymous_memory_is_not_discarded_but_retouched(gmem, strategy):
    """An SEV/SEV-ES guest's conversion is its page-table bit: the memory stays (QEMU
    disables discard for SEV guests), as the model counts it."""
    count = kvm.punch_range(PAGES, 0.25)[1]

    def after_punch(ram, punch_first, punch_count):
        words = _first_dwords(ram)
        np.testing.assert_array_equal(words, ~np.arange(PAGES, dtype=np.uint32))

    r = kvm.run_vm(SIZE, strategy=strategy, punch_fraction=0.25, _inspect_punch=after_punch)
    assert r.error is None and r.pages_punched == 0 and r.pages_retouched == count
    assert r.retouch_ns > 0 and r.convert_ns == r.punch_ns + r.retouch_ns
    # Still populated and mapped: the re-touch takes (almost) no KVM faults.
    assert r.convert_stats["pf_taken"] < count // 4
    assert r.as_dict()["ns_per_page_punch"] is None


def test_fallocate_then_convert_with_several_vcpus(gmem):
    r = kvm.run_vm(SIZE, strategy=gmem, prefault="fallocate", punch_fraction=0.1, vcpus=3,
                   pattern="random", _inspect=_check_written(PAGES)[0])
    count = kvm.punch_range(PAGES, 0.1)[1]
    assert r.pages_punched == r.pages_retouched == count
    for ns in (r.create_ns, r.prefault_ns, r.first_insn_ns, r.touch_ns, r.punch_ns,
               r.retouch_ns, r.teardown_ns):
        assert ns > 0


# --- input at the boundary ---------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"prefault": "fallocate"}, "prefault 'fallocate' applies to guest_memfd strategies "
                                "only, not to 'demand'"),
    ({"prefault": "eager"}, "unknown prefault 'eager'"),
    ({"punch_fraction": -0.1}, r"punch_fraction -0.1 must be in \[0, 1\]"),
    ({"punch_fraction": 1.5}, r"punch_fraction 1.5 must be in \[0, 1\]"),
    ({"punch_fraction": True}, r"punch_fraction True must be in \[0, 1\]"),
    ({"punch_fraction": "0.1"}, r"punch_fraction '0.1' must be in \[0, 1\]"),
])
def test_bad_conversion_input_is_one_clear_line(kwargs, match):
    with pytest.raises(InputError, match=match) as info:
        kvm.run_vm(SIZE, **kwargs)
    assert "\n" not in str(info.value)


def test_gmem_refuses_huge_host_pages(gmem):
    with pytest.raises(InputError, match="guest_memfd, whose folios are 4 KiB: backing 'thp'"):
        kvm.run_vm(SIZE, strategy=gmem, backing="thp")


# --- nothing leaks ----------------------------------------------------------------------


def _fail_ioctl(monkeypatch, request):
    real = kvm_uapi.kvm_ioctl

    def ioctl(fd, req, arg=0):
        if req == request:
            raise libc.CallError(errno.EINVAL, kvm_uapi.IOCTL_NAMES[req])
        return real(fd, req, arg)

    monkeypatch.setattr(kvm_uapi, "kvm_ioctl", ioctl)


def _fail_fallocate(monkeypatch, mode_bit):
    real = libc.fallocate

    def fallocate(fd, mode, offset, length, what):
        if mode & mode_bit:
            raise libc.CallError(errno.ENOSPC, what)
        real(fd, mode, offset, length, what)

    monkeypatch.setattr(libc, "fallocate", fallocate)


def _fail_map_gmem(monkeypatch):
    real = libc.map_shared

    def map_shared(fd, size, what):
        if "guest_memfd" in what:
            ctypes.set_errno(errno.ENOMEM)
            raise libc.errno_error(what)
        return real(fd, size, what)

    monkeypatch.setattr(libc, "map_shared", map_shared)


def _fail_before_retouch(monkeypatch):
    def complete_exits(self):
        raise OSError(errno.EIO, "injected failure before the re-touch")

    monkeypatch.setattr(kvm._Vm, "complete_exits", complete_exits)


@pytest.mark.parametrize(("strategy", "inject", "match"), [
    ("gmem", None, None),
    ("demand", None, None),
    ("gmem", lambda mp: _fail_ioctl(mp, kvm_uapi.KVM_CREATE_GUEST_MEMFD),
     "KVM_CREATE_GUEST_MEMFD: Invalid argument"),
    ("gmem", _fail_map_gmem, "mmap of the guest_memfd: Cannot allocate memory"),
    ("gmem", lambda mp: _fail_ioctl(mp, kvm_uapi.KVM_SET_USER_MEMORY_REGION2),
     "KVM_SET_USER_MEMORY_REGION2: Invalid argument"),
    ("gmem", lambda mp: _fail_fallocate(mp, libc.FALLOC_FL_KEEP_SIZE),
     r"fallocate\(FALLOC_FL_KEEP_SIZE\) of the guest_memfd: No space left"),
    ("gmem", lambda mp: _fail_fallocate(mp, libc.FALLOC_FL_PUNCH_HOLE),
     r"fallocate\(FALLOC_FL_PUNCH_HOLE\) of the guest_memfd: No space left"),
    ("gmem", _fail_before_retouch, "injected failure before the re-touch"),
    ("demand", _fail_before_retouch, "injected failure before the re-touch"),
])
def test_every_fd_and_mapping_is_released_on_every_gmem_error_path(gmem, monkeypatch,
                                                                   strategy, inject, match):
    kwargs = {"strategy": gmem if strategy == "gmem" else strategy, "vcpus": 2,
              "punch_fraction": 0.1}
    if strategy == "gmem":
        kwargs["prefault"] = "fallocate"
    kvm.run_vm(SIZE, **kwargs)  # warm-up: imports, the gmem probe, thread stacks, arenas
    before = _snapshot()
    assert before[2] == []  # no kvm fd or mapping left by the warm-up either
    if inject is None:
        kvm.run_vm(SIZE, **kwargs)
    else:
        inject(monkeypatch)
        with pytest.raises(OSError, match=match):
            kvm.run_vm(SIZE, **kwargs)
    assert _snapshot() == before


# --- the harness: the kvm backing ---------------------------------------------------------


def _config(strategy: str, **kw) -> BenchConfig:
    base = {"workload": "fault_storm", "strategy": strategy, "guest_size": SIZE,
            "backing": "kvm"}
    return BenchConfig(**{**base, **kw})


def test_backing_skips_a_refused_gmem_configuration_with_the_reason(gmem):
    from pinning.harness.backings import TABLE, preflight

    backing = TABLE["kvm"]
    assert backing.unavailable() is None
    assert backing.unavailable(_config(gmem)) is None
    assert backing.unavailable(_config("demand")) is None
    reason = kvm.gmem_unavailable("map")
    if reason is None:
        pytest.skip("this KVM pre-faults memory: nothing refused")
    config = _config(gmem, prefault="map")
    assert backing.unavailable(config) == f"needs guest_memfd on /dev/kvm: {reason}"
    with pytest.raises(InputError) as info:
        preflight(config)
    assert str(info.value) == f"needs guest_memfd on /dev/kvm: {reason}"


@pytest.mark.parametrize(("key", "value"), [("image_size", 8 * MiB), ("acceptance", "eager")])
def test_backing_refuses_what_its_default_vm_would_ignore(gmem, key, value):
    from pinning.harness.backings import validate

    with pytest.raises(InputError, match=f"backing 'kvm' runs a default VM .*: {key} "
                                         "applies to the sim and real backings only"):
        validate(_config(gmem, **{key: value}))
    validate(_config(gmem))  # the defaults run


def test_suite_run_skips_the_refused_gmem_benchmark(gmem, tmp_path):
    from pinning.harness.runner import run_suite
    from pinning.harness.suite import load_suite

    reason = kvm.gmem_unavailable("map")
    if reason is None:
        pytest.skip("this KVM pre-faults memory: nothing refused")
    path = tmp_path / "g.toml"
    path.write_text(f"[suite]\nprocesses=1\nvalues=1\n[[benchmark]]\nworkload='fault_storm'\n"
                    f"strategy='{gmem}'\nguest_size='4MiB'\nbacking='kvm'\nprefault='map'\n")
    report = run_suite(load_suite(str(path)), tmp_path / "r.json", stream=sys.stderr)
    assert [why for _, why in report.skipped] == [f"needs guest_memfd on /dev/kvm: {reason}"]
    assert not report.done and not report.failed


def _no_model(monkeypatch):
    """The backing's run without the model's prediction (tested in the model's tests)."""
    from pinning.harness.backings import Kvm
    from pinning.model.lifecycle import LifecycleResult

    monkeypatch.setattr(Kvm, "predict", lambda self, config, profile: LifecycleResult(config))


@pytest.mark.parametrize("workload", ["fault_storm", "convert"])
def test_backing_maps_the_vms_phases_onto_the_lifecycle(gmem, monkeypatch, workload):
    from pinning.harness.backings import TABLE

    if workload not in RUN_PHASES:
        pytest.skip(f"no {workload!r} family in the model yet")
    _no_model(monkeypatch)
    seen = {}
    real = kvm.run_vm

    def run_vm(*args, **kwargs):
        seen.update(kwargs)
        seen["run"] = real(*args, **kwargs)
        return seen["run"]

    monkeypatch.setattr(kvm, "run_vm", run_vm)
    config = _config(gmem, workload=workload, prefault="fallocate", convert_fraction=0.25,
                     host="warm")
    res = TABLE["kvm"].run(config, None)
    vm = seen["run"]
    converts = "convert" in RUN_PHASES[workload]
    assert seen["strategy"] == gmem and seen["prefault"] == "fallocate"
    assert seen["punch_fraction"] == (0.25 if converts else 0.0)
    expected = {"startup": vm.startup_ns, "access": vm.touch_ns, "teardown": vm.teardown_ns}
    if converts:
        expected["convert"] = vm.convert_ns
        assert vm.pages_punched == PAGES // 4
    assert res.elapsed_ns == expected
    assert res.backing["prefault_ns"] > 0 and res.backing["gmem"] is True
    assert res.ops_done == vm.pages_touched + vm.pages_retouched

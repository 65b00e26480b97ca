"""pinning.backends.kvm: a real KVM guest through /dev/kvm (skipped where KVM cannot run it).

No assertion here depends on absolute times (the machine is shared and noisy): they
check page counts, what the guest wrote, KVM's own fault counters, ratios with a
wide margin, input validation, and that every fd and mapping is released.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
from pathlib import Path

import numpy as np
import pytest

from pinning.backends import kvm, kvm_guest
from pinning.backends.hostmem import available_memory
from pinning.model.names import InputError

_REASON = kvm.kvm_unavailable()
if _REASON is not None:
    pytest.skip(f"KVM cannot run pinbench's guest here: {_REASON}", allow_module_level=True)

MiB = 1 << 20
PAGES_64M = 64 * MiB // 4096


def _check_written(n_expected: int):
    """An _inspect hook: every touched page holds ~gfn in its first dword, no other page
    was written, and the touched gfns are distinct."""
    seen = {}

    def inspect(ram: np.ndarray, gfns: np.ndarray) -> None:
        first = ram.reshape(-1, 1024)[:, 0]  # first dword of every 4 KiB page
        assert gfns.size == n_expected
        assert np.unique(gfns).size == gfns.size
        np.testing.assert_array_equal(first[gfns], ~gfns.astype(np.uint32))
        assert np.count_nonzero(first) == n_expected
        seen["gfns"] = gfns.copy()

    return inspect, seen


@pytest.mark.parametrize("vcpus", [1, 2])
def test_demand_touches_every_page_once(vcpus):
    inspect, seen = _check_written(PAGES_64M)
    r = kvm.run_vm(64 * MiB, vcpus=vcpus, _inspect=inspect)
    assert r.error is None
    assert r.pages_touched == PAGES_64M
    np.testing.assert_array_equal(seen["gfns"], np.arange(PAGES_64M))
    assert r.populate_ns == 0 and r.lock_ns == 0
    assert r.create_ns > 0 and r.first_insn_ns > 0 and r.touch_ns > 0 and r.teardown_ns > 0
    # 4 KiB backing, demand: KVM takes at least one page fault per touched page.
    assert r.stats["pf_taken"] >= PAGES_64M
    assert r.stats["exits"] >= r.stats["pf_taken"]
    assert r.ns_per_page_touch == r.touch_ns / r.pages_touched
    assert r.startup_ns == r.create_ns + r.first_insn_ns
    assert r.setup_ns_per_page == 0


def test_upfront_populates_and_locks_before_the_guest_runs():
    pages = 128 * MiB // 4096
    up = kvm.run_vm(128 * MiB, strategy="upfront", _inspect=_check_written(pages)[0])
    up_again = kvm.run_vm(128 * MiB, strategy="upfront")  # noise only ever adds time: min
    down = kvm.run_vm(128 * MiB, strategy="demand")
    assert up.error is None
    assert up.populate_ns > 0 and up.lock_ns > 0
    assert up.setup_ns_per_page == (up.populate_ns + up.lock_ns) / pages
    assert up.startup_ns == up.create_ns + up.populate_ns + up.lock_ns + up.first_insn_ns
    assert up.pages_touched == down.pages_touched == pages
    # Populated first, the guest only faults in KVM's mappings: never more faults than
    # demand, and each page costs far less than populating it in the fault (≈10x here).
    assert up.stats["pf_taken"] <= down.stats["pf_taken"]
    assert down.ns_per_page_touch > 2 * min(up.ns_per_page_touch, up_again.ns_per_page_touch)


def test_touch_fraction_and_fault_count_scale_together():
    half = kvm.run_vm(64 * MiB, touch_fraction=0.5, _inspect=_check_written(PAGES_64M // 2)[0])
    full = kvm.run_vm(64 * MiB, touch_fraction=1.0)
    assert half.pages_touched == PAGES_64M // 2
    assert full.pages_touched == PAGES_64M
    # KVM's own count, not ours: about half the faults for half the pages.
    assert 0.4 < half.stats["pf_taken"] / full.stats["pf_taken"] < 0.6


def test_touch_fraction_rounds_and_touches_at_least_one_page():
    r = kvm.run_vm(64 * MiB, touch_fraction=1e-9, vcpus=2, _inspect=_check_written(1)[0])
    assert r.pages_touched == 1  # vCPU 1 has an empty slice and just signals done
    r = kvm.run_vm(64 * MiB, touch_fraction=1 / 3)
    assert r.pages_touched == round(PAGES_64M / 3)


def test_random_pattern_touches_a_seeded_random_subset():
    n = PAGES_64M // 4
    inspect, seen = _check_written(n)
    r = kvm.run_vm(64 * MiB, pattern="random", touch_fraction=0.25, vcpus=2, seed=7,
                   _inspect=inspect)
    assert r.pages_touched == n
    first = seen["gfns"]
    assert not np.array_equal(np.sort(first), np.arange(n))  # not just the first pages
    assert not np.all(np.diff(first.astype(np.int64)) > 0)  # not in order
    inspect, seen = _check_written(n)
    kvm.run_vm(64 * MiB, pattern="random", touch_fraction=0.25, seed=7, _inspect=inspect)
    np.testing.assert_array_equal(seen["gfns"], first)  # same seed, same pages and order

    full = kvm.run_vm(64 * MiB, pattern="random", _inspect=_check_written(PAGES_64M)[0])
    assert full.pages_touched == PAGES_64M


@pytest.mark.skipif("[never]" in Path("/sys/kernel/mm/transparent_hugepage/enabled")
                    .read_text(), reason="transparent huge pages are disabled")
def test_thp_backing_faults_per_huge_page():
    thp = kvm.run_vm(64 * MiB, backing="thp", _inspect=_check_written(PAGES_64M)[0])
    small = kvm.run_vm(64 * MiB, backing="4k")
    assert thp.pages_touched == small.pages_touched == PAGES_64M
    # With the host's huge pages, KVM maps 2 MiB per fault (if the host had none free,
    # this would be one fault per page as with 4k).
    assert thp.stats["pf_taken"] < small.stats["pf_taken"] / 50
    assert thp.stats["vm.pages_2m"] >= 64 * MiB // (2 * MiB)


def test_stats_are_kvms_own_counters():
    r = kvm.run_vm(64 * MiB, vcpus=2)
    assert {"pf_taken", "pf_fixed", "exits"} <= r.stats.keys()
    assert all(isinstance(v, int) and v >= 0 for v in r.stats.values())
    assert any(k.startswith("vm.") for k in r.stats)
    d = r.as_dict()
    assert d["stats"] == r.stats and d["ns_per_page_touch"] == r.ns_per_page_touch
    assert d["startup_ns"] == r.startup_ns and d["error"] is None


def test_exit_round_trip_is_positive_and_finite():
    ns = kvm.exit_round_trip_ns(2000)
    assert ns > 0 and math.isfinite(ns)
    with pytest.raises(InputError, match="iterations"):
        kvm.exit_round_trip_ns(0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strategy": "lazy"}, "unknown strategy 'lazy'"),
        ({"backing": "1g"}, "unknown backing '1g'"),
        ({"pattern": "zigzag"}, "unknown pattern 'zigzag'"),
        ({"host": "hot"}, "unknown host 'hot'"),
        ({"vcpus": 0}, "vcpus 0 must be between 1 and 64"),
        ({"vcpus": 65}, "vcpus 65 must be between 1 and 64"),
        ({"touch_fraction": 0.0}, r"touch_fraction 0.0 must be in \(0, 1\]"),
        ({"touch_fraction": 1.5}, r"touch_fraction 1.5 must be in \(0, 1\]"),
    ],
)
def test_bad_input_is_one_clear_line(kwargs, match):
    with pytest.raises(InputError, match=match) as info:
        kvm.run_vm(64 * MiB, **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("size", [0, -2 * MiB, 3 * MiB, 4096])
def test_guest_size_must_be_a_positive_multiple_of_2mib(size):
    with pytest.raises(InputError, match="positive multiple of 2MiB"):
        kvm.run_vm(size)


def test_guest_larger_than_available_memory_is_refused():
    available = available_memory()
    size = (available // (2 * MiB) + 1) * 2 * MiB
    with pytest.raises(InputError, match=r"does not fit: it needs .*, may use 85 % of") as info:
        kvm.run_vm(size)
    assert kvm.format_size(size) in str(info.value)


def test_unavailable_kvm_is_an_input_error(monkeypatch):
    monkeypatch.setattr(kvm, "kvm_unavailable", lambda: "/dev/kvm does not exist")
    with pytest.raises(InputError, match="/dev/kvm does not exist"):
        kvm.run_vm(64 * MiB)


# --- nothing leaks ---------------------------------------------------------------------


def _snapshot() -> tuple[list[str], int, list[str]]:
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:  # the fd listdir itself used
            pass
    maps = Path("/proc/self/maps").read_text().splitlines()
    return sorted(fds), len(maps), [m for m in maps if "kvm" in m]


def _fail_in_touch(monkeypatch):
    """Guest code that signals its start, then executes hlt: in ring 3 that is a #GP,
    with no IDT a triple fault, so the vCPU exits with KVM_EXIT_SHUTDOWN mid-run."""
    code = bytes([0xE6, kvm_guest.PORT_START, 0xF4])
    monkeypatch.setattr(kvm_guest, "CODE", code)
    monkeypatch.setattr(kvm_guest, "ENTRY", dict.fromkeys(kvm_guest.ENTRY, 0))


def _fail_at_first_instruction(monkeypatch):
    monkeypatch.setattr(kvm_guest, "CODE", b"\xf4")  # hlt
    monkeypatch.setattr(kvm_guest, "ENTRY", dict.fromkeys(kvm_guest.ENTRY, 0))


def _fail_creating_second_vcpu(monkeypatch):
    real = kvm._Vm._set_sregs

    def set_sregs(vcpu, layout):
        if vcpu.index == 1:
            raise OSError(errno.EINVAL, "injected KVM_SET_SREGS failure")
        real(vcpu, layout)

    monkeypatch.setattr(kvm._Vm, "_set_sregs", staticmethod(set_sregs))


def _fail_after_run(monkeypatch):
    def read_stats(self):
        raise OSError(errno.EIO, "injected stats failure")

    monkeypatch.setattr(kvm._Vm, "read_stats", read_stats)


@pytest.mark.parametrize(
    ("inject", "error", "match"),
    [
        (None, None, None),
        (_fail_in_touch, RuntimeError, r"vCPU \d: unexpected KVM_EXIT_SHUTDOWN"),
        (_fail_at_first_instruction, RuntimeError, r"vCPU \d: unexpected KVM_EXIT_SHUTDOWN"),
        (_fail_creating_second_vcpu, OSError, "injected KVM_SET_SREGS failure"),
        (_fail_after_run, OSError, "injected stats failure"),
    ],
)
def test_every_fd_and_mapping_is_released(monkeypatch, inject, error, match):
    kwargs = {"vcpus": 2, "strategy": "upfront", "pattern": "random"}
    kvm.run_vm(64 * MiB, **kwargs)  # warm-up: imports, thread stacks, malloc arenas
    before = _snapshot()
    assert before[2] == []
    if inject is None:
        kvm.run_vm(64 * MiB, **kwargs)
    else:
        inject(monkeypatch)
        with pytest.raises(error, match=match):
            kvm.run_vm(64 * MiB, **kwargs)
    assert _snapshot() == before


def test_failed_mlock_is_a_result_not_an_exception(monkeypatch):
    def mlock(addr, size):
        ctypes.set_errno(errno.ENOMEM)
        return -1

    monkeypatch.setattr(kvm, "_mlock", mlock)
    kvm.run_vm(64 * MiB, strategy="upfront")  # warm-up
    before = _snapshot()
    r = kvm.run_vm(64 * MiB, strategy="upfront", vcpus=2)
    assert _snapshot() == before
    assert r.error is not None and "ENOMEM" in r.error and "mlock" in r.error
    # As upstream: when pinning fails the VM never runs.
    assert r.pages_touched == 0 and r.touch_ns == 0 and r.first_insn_ns == 0
    assert r.populate_ns > 0 and r.teardown_ns > 0
    assert math.isnan(r.ns_per_page_touch)

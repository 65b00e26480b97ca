"""pinbench calibrate: every key measured or carried with a reason, the derivations on
synthetic numbers, the [host] detection on fake files, sane ratios, atomic writes.

No absolute timing thresholds: only relations between costs measured in the
same run, which hold on any machine (a fault that allocates and zeroes a page
costs more than pinning a present one, and so on). One real quick calibration is
shared by the module; every other calibration runs with a tiny plan.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
import types
from pathlib import Path

import numba
import numpy as np
import pytest

import pinning.backends
from pinning.backends import cpu, libc
from pinning.harness import calibrate as cal
from pinning.harness.calibrate import (
    NOT_MEASURABLE,
    Measurement,
    calibrate,
    calibrated_toml,
    format_measurements,
    write_calibrated,
)
from pinning.model.costs import COST_KEYS, HOST_KEYS, SPREAD_KEYS, load_profile
from pinning.model.names import InputError

JIT = not numba.config.DISABLE_JIT
X86 = platform.machine() in ("x86_64", "AMD64")
MIB = 1 << 20
VALUE_KEYS = list(COST_KEYS) + list(SPREAD_KEYS)
TINY = cal._Plan(host_bytes=4 * MIB, reps=1, guest_bytes=16 * MIB, kvm_reps=1)


@pytest.fixture(scope="module")
def quick():
    """A real quick calibration (without KVM), shared by the tests that only read it."""
    return calibrate(quick=True, use_kvm=False)


@pytest.fixture
def tiny(monkeypatch):
    """Make calibrate(quick=True) run on 4 MiB buffers, once each (for tests of its paths)."""
    monkeypatch.setattr(cal, "_QUICK", TINY)


def by_key(measurements):
    return {m.key: m for m in measurements}


def default_value(key):
    d = load_profile()
    return d.costs[key] if key in d.costs else d.spread[key]


# ---------------------------------------------------------------- a real quick calibration


def test_every_key_once_in_order(quick):
    profile, ms = quick
    assert [m.key for m in ms] == VALUE_KEYS + [f"host.{k}" for k in HOST_KEYS]
    assert list(profile.costs) == list(COST_KEYS)
    assert list(profile.spread) == list(SPREAD_KEYS)
    for m in ms:
        assert m.how and "\n" not in m.how
        if m.is_host:
            assert profile.host.get(m.key.removeprefix("host.")) == (
                m.value if m.measured else None)
        else:
            assert (profile.costs | profile.spread)[m.key] == m.value


def test_quick_profile_loads_back_with_every_key(quick, tmp_path):
    profile, ms = quick
    path = tmp_path / "cal.toml"
    write_calibrated(profile, ms, path)
    back = load_profile(path)
    assert set(back.costs) == set(COST_KEYS) and set(back.spread) == set(SPREAD_KEYS)
    for field in ("name", "description", "machine", "costs", "spread", "host"):
        assert getattr(back, field) == getattr(profile, field), field
    assert back.host  # at least the kernel is always detected on Linux
    assert back.host["kernel"] == re.match(r"\d+\.\d+", platform.release()).group()


def test_measured_values_are_positive_medians_within_their_spread(quick):
    _, ms = quick
    got = by_key(ms)
    assert got["guest_touch_ns"].measured
    for key in ("host_fault_ns", "zero_byte_ns"):
        # THP may be off or refused on a CI runner: then both say so
        m = got[key]
        assert m.measured or "THP" in m.how or "transparent huge pages" in m.how, m
    for m in ms:
        if not m.measured or m.is_host:
            continue
        lo, hi = m.spread
        assert "median of 3" in m.how, m
        if "clamped at 0" in m.how:
            assert m.value == 0 and lo < 0, m
            continue
        assert math.isfinite(m.value) and m.value > 0, m
        # the value is the median rounded to 4 significant digits or 0.01
        slack = max(0.01, 1e-3 * abs(m.value))
        assert lo - slack <= m.value <= hi + slack, m


def test_unmeasurable_keys_carry_the_default_with_a_reason(quick):
    _, ms = quick
    got = by_key(ms)
    assert "lock_cv" in NOT_MEASURABLE
    for key, reason in NOT_MEASURABLE.items():
        m = got[key]
        assert not m.measured and m.spread is None
        assert m.value == default_value(key)
        assert "cannot be measured from user space" in m.how and reason in m.how
    for key in ("npf_exit_ns", "spte_prefetch_ns"):
        m = got[key]
        assert not m.measured and m.value == default_value(key)
        assert "use_kvm=False" in m.how


def test_what_needs_the_jit(quick):
    got = by_key(quick[1])
    if not JIT:
        for key in ("clflush_page_ns", "fault_cv"):
            assert not got[key].measured and "NUMBA_DISABLE_JIT" in got[key].how
            assert got[key].value == default_value(key)
        return
    cv = got["fault_cv"]
    assert cv.measured and 0 < cv.value < 10 and "0.1%" in cv.how and "interrupts" in cv.how
    if X86:
        assert got["clflush_page_ns"].measured and "CLFLUSH" in got["clflush_page_ns"].how


def test_pin_measured_when_privileged(quick):
    got = by_key(quick[1])
    if os.geteuid() == 0:
        assert got["pin_ns"].measured and got["unpin_ns"].measured
    else:  # RLIMIT_MEMLOCK may refuse: then both carry the default, saying why
        assert got["pin_ns"].measured == got["unpin_ns"].measured


def test_relations_between_costs_of_one_run(quick):
    got = by_key(quick[1])

    def cost(key):
        return got[key].value if got[key].measured else None

    touch = cost("guest_touch_ns")
    if cost("zero_byte_ns") is not None:
        page = cost("host_fault_ns") + 4096 * cost("zero_byte_ns")
        # Zeroing 4 KiB is more than one store to a present page; so is a whole fault.
        assert 4096 * cost("zero_byte_ns") > touch
        if cost("pin_ns") is not None:
            # populating a fresh page does strictly more than pinning a present one
            assert page > cost("pin_ns")
    if cost("clflush_page_ns") is not None:
        # writing 64 dirty lines back costs more than one store to a present page
        assert cost("clflush_page_ns") > touch


def test_profile_metadata(quick):
    profile, ms = quick
    assert profile.name == "calibrated"
    assert socket.gethostname() in profile.machine
    assert platform.release() in profile.machine
    assert "UTC" in profile.description and "load average" in profile.description
    n = sum(m.measured for m in ms if not m.is_host)
    assert f"{n} of {len(VALUE_KEYS)} keys measured" in profile.description


def test_written_file_says_how_each_key_was_obtained(quick, tmp_path):
    profile, ms = quick
    path = tmp_path / "cal.toml"
    write_calibrated(profile, ms, path)
    assert os.listdir(tmp_path) == ["cal.toml"]
    # one comment line right above each key says how it was obtained
    lines = path.read_text(encoding="utf-8").splitlines()
    for m in ms:
        name = m.key.removeprefix("host.")
        at = [i for i, line in enumerate(lines) if line.startswith(f"{name} =")]
        if m.is_host and not m.measured:
            assert at == [] and any(m.how in line for line in lines), m
            continue
        (at,) = at
        assert lines[at - 1] == f"# {m.status}: {m.how}"


def test_comment_stays_one_line_and_round_trips(quick, tmp_path):
    profile, ms = quick
    odd = [Measurement(m.key, m.value, m.measured, m.how + "\nsecond line\r\x00\x7f")
           for m in ms]
    text = calibrated_toml(profile, odd)
    assert "\nsecond line" not in text
    path = tmp_path / "odd.toml"
    write_calibrated(profile, odd, path)
    assert load_profile(path).costs == profile.costs


@pytest.mark.parametrize("key", ["wbinvd_ns", "fault_cv"])
def test_missing_measurement_is_refused(quick, tmp_path, key):
    profile, ms = quick
    with pytest.raises(ValueError, match=key):
        write_calibrated(profile, [m for m in ms if m.key != key], tmp_path / "x.toml")
    assert os.listdir(tmp_path) == []


def test_write_into_a_missing_directory_is_a_clear_error(quick, tmp_path):
    profile, ms = quick
    target = tmp_path / "file" / "cal.toml"
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(InputError, match=r"cannot write cost profile .*cal\.toml"):
        write_calibrated(profile, ms, target)
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_write_into_an_unwritable_directory(quick, tmp_path, monkeypatch):
    profile, ms = quick
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            # root writes into a mode-0500 directory anyway: make creating the file fail as
            # it would for anyone else.
            def refuse(**kw):
                raise PermissionError(errno.EACCES, "Permission denied")

            monkeypatch.setattr(cal.tempfile, "mkstemp", refuse)
        with pytest.raises(InputError, match=r"cannot write cost profile .*Permission denied"):
            write_calibrated(profile, ms, locked / "cal.toml")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


def test_failed_rename_leaves_no_temp_file_and_the_old_file(quick, tmp_path, monkeypatch):
    profile, ms = quick
    path = tmp_path / "cal.toml"
    path.write_text("old")

    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cal.os, "replace", refuse)
    with pytest.raises(InputError, match=r"cannot write cost profile .*Permission denied"):
        write_calibrated(profile, ms, path)
    assert os.listdir(tmp_path) == ["cal.toml"]
    assert path.read_text() == "old"


def test_target_is_a_directory(quick, tmp_path):
    profile, ms = quick
    (tmp_path / "cal.toml").mkdir()
    with pytest.raises(InputError, match="cannot write cost profile"):
        write_calibrated(profile, ms, tmp_path / "cal.toml")
    assert os.listdir(tmp_path) == ["cal.toml"]


def test_format_measurements(quick):
    profile, ms = quick
    text = format_measurements(ms, machine=profile.machine)
    assert f"measured on {profile.machine}" in text
    for m in ms:
        (line,) = [row for row in text.splitlines() if row.startswith(m.key + " ")]
        assert m.status in line and m.how in line
    assert "measured on " in format_measurements(ms)  # defaults to this machine


def test_old_profile_format_is_refused_naming_the_key_and_the_file(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text(
        "npf_exit_ns = 560.0\nzero_frame_ns = 546.0\nzero_metadata_ns = 339.0\n"
        "pin_ns = 62.2\nunpin_ns = 15.1\nclflush_page_ns = 250.0\npage_flush_ns = 250.0\n"
        "wbinvd_ns = 1000000.0\nlock_hold_ns = 100.0\nguest_touch_ns = 15.0\n\n"
        '[profile]\nname = "old"\ndescription = "before issue #11"\n')
    with pytest.raises(InputError) as exc:
        load_profile(old)
    msg = str(exc.value)
    assert "\n" not in msg and str(old) in msg and "'zero_frame_ns'" in msg


# ---------------------------------------------------------------- host_fault_ns, zero_byte_ns

# (f, z) per repetition: t4 = f + 4096 z and t2 = f + 2 MiB z, exact in binary
SOLVES = [(200.0, 0.125), (300.0, 0.0625), (100.0, 0.25)]


def fake_populate(monkeypatch, solves, note="THP [madvise], granted for 100%"):
    t4 = [f + 4096 * z for f, z in solves]
    t2 = [f + (2 << 20) * z for f, z in solves]
    monkeypatch.setattr(cal, "_populate_4k", lambda plan: list(t4))
    monkeypatch.setattr(cal, "_populate_2m", lambda plan, t4_ns: (list(t2), note))


def test_fault_and_zero_solved_from_4k_and_thp_faults(monkeypatch):
    fake_populate(monkeypatch, SOLVES)
    fault, zero = cal._fault_and_zero(TINY)
    assert (fault.key, zero.key) == ("host_fault_ns", "zero_byte_ns")
    assert fault.measured and zero.measured
    assert fault.value == 200.0 and fault.spread == (100.0, 300.0)
    assert zero.value == 0.125 and zero.spread == (0.0625, 0.25)
    assert "t4 = f + 4096 z and t2 = f + 2 MiB z" in fault.how
    assert "granted for 100%" in zero.how and "median of 3" in zero.how


def test_negative_fault_part_is_clamped_at_zero(monkeypatch):
    fake_populate(monkeypatch, [(-50.0, 0.125)])
    fault, zero = cal._fault_and_zero(TINY)
    assert fault.measured and fault.value == 0.0 and "clamped at 0 from -50" in fault.how
    assert zero.value == 0.125


def test_without_thp_both_are_carried_saying_so(monkeypatch, tmp_path, tiny):
    (tmp_path / "enabled").write_text("always madvise [never]\n")
    monkeypatch.setattr(cal, "THP_ENABLED", str(tmp_path / "enabled"))
    _, ms = calibrate(quick=True, use_kvm=False)
    got = by_key(ms)
    for key in ("host_fault_ns", "zero_byte_ns"):
        assert not got[key].measured and got[key].value == default_value(key)
        assert "transparent huge pages are disabled" in got[key].how
        assert "4 KiB populate measured" in got[key].how
    assert got["host.thp"].value == "never"


def test_thp_ranges_given_as_4k_pages_are_taken_off(monkeypatch):
    # 4 MiB: two 2 MiB ranges; AnonHugePages grows by one huge page, populate takes 1 ms
    sizes = iter([(0, "fake"), (2 << 20, "fake")])
    monkeypatch.setattr(cal, "_anon_huge_bytes", lambda: next(sizes))
    monkeypatch.setattr(cal, "_thp_mode", lambda: "madvise")
    monkeypatch.setattr(cal, "_timed_ns", lambda fn: 1_000_000)
    values, note = cal._populate_2m(TINY, t4_ns=1000.0)
    assert values == [1_000_000 - 512 * 1000.0]
    assert "granted for 50%" in note and "taken off at t4" in note


def test_thp_refused_is_not_measured(monkeypatch):
    monkeypatch.setattr(cal, "_anon_huge_bytes", lambda: (0, "fake"))
    monkeypatch.setattr(cal, "_thp_mode", lambda: "madvise")
    with pytest.raises(cal._NotMeasured, match="THP not granted: 0 of 2"):
        cal._populate_2m(TINY, t4_ns=1000.0)


def test_mlock_refused_carries_pin_and_unpin(monkeypatch, tiny):
    def refused(addr, length):
        ctypes.set_errno(errno.ENOMEM)
        return -1

    monkeypatch.setattr(libc, "mlock", refused)
    _, ms = calibrate(quick=True, use_kvm=False)
    got = by_key(ms)
    for key in ("pin_ns", "unpin_ns"):
        assert not got[key].measured and got[key].value == default_value(key)
        assert os.strerror(errno.ENOMEM) in got[key].how
    assert got["guest_touch_ns"].measured


# ---------------------------------------------------------------- fault_cv


def test_per_fault_ns_at_the_loops_rate():
    ns = cal._per_fault_ns(np.array([10, 20, 30]), loop_cycles=2000, loop_ns=1000)
    assert ns.tolist() == [5.0, 10.0, 15.0]
    with pytest.raises(cal._NotMeasured):
        cal._per_fault_ns(np.array([1]), loop_cycles=0, loop_ns=1000)


def test_fault_cv_drops_the_top_tenth_of_a_percent():
    # 999 faults of 100 and 999 of 300 ns: mean 200, std 100; 2 interrupted ones dropped
    ns = np.array([100.0] * 999 + [300.0] * 999 + [1e9, 5e8])
    np.random.default_rng(0).shuffle(ns)
    cv, mean, dropped = cal._cv_without_interrupts(ns)
    assert dropped == 2 and mean == pytest.approx(200.0) and cv == pytest.approx(0.5)


def test_fault_cv_is_the_median_over_repetitions(monkeypatch):
    reps = [np.array([100.0] * 999 + [300.0] * 999 + [1e9, 1e9]),  # cv 0.5
            np.array([150.0] * 999 + [250.0] * 999 + [1e9, 1e9]),  # cv 0.25
            np.full(2000, 200.0)]  # cv 0
    monkeypatch.setattr(cal, "_fault_latencies", lambda plan: reps)
    m = cal._fault_cv(TINY)
    assert m.key == "fault_cv" and m.measured
    assert m.value == pytest.approx(0.25) and m.spread == pytest.approx((0.0, 0.5))
    assert "2000 single first-touch faults" in m.how and "0.1% (2) dropped" in m.how


@pytest.mark.skipif(not JIT, reason="the cycle counter needs the JIT")
def test_fault_cycles_times_each_first_touch():
    from pinning.model.state import anon_array

    cycles = np.zeros(16, dtype=np.int64)
    a = anon_array(16 * cpu.WORDS_PER_PAGE, np.int64)
    total = cpu.fault_cycles(a, cycles)
    assert (cycles > 0).all() and total >= cycles.sum()
    assert (a[::cpu.WORDS_PER_PAGE] == 1).all()


# ---------------------------------------------------------------- npf_exit_ns, spte_prefetch_ns

HOST_FAULT = Measurement("host_fault_ns", 1000.0, True, "test")
ZERO_BYTE = Measurement("zero_byte_ns", 0.25, True, "test")  # 1024 ns per 4 KiB
PAGE_NS = 1000.0 + 4096 * 0.25


def fake_kvm(monkeypatch, *, unavailable=None, demand_ns=5000.0, upfront_ns=None,
             upfront_pages_per_fault=8, error="", stats=True):
    """Install a stand-in for pinning.backends.kvm with the documented API; ``*_ns`` are
    per KVM fault. By default the upfront fault prefetches 7 neighbours at 100 ns."""
    if upfront_ns is None:
        upfront_ns = demand_ns - PAGE_NS + 7 * 100.0
    runs = []

    def run_vm(guest_size, *, strategy, backing, vcpus, touch_fraction, pattern, seed, host):
        runs.append((strategy, backing, vcpus, pattern, host))
        pages = guest_size // 4096
        # KVM's fault count: every page under demand, one in 8 on populated memory (shadow)
        faults = pages if strategy == "demand" else pages // upfront_pages_per_fault
        per = demand_ns if strategy == "demand" else upfront_ns
        return types.SimpleNamespace(touch_ns=per * faults, pages_touched=pages, error=error,
                                     stats={"pf_taken": faults} if stats else {})

    mod = types.ModuleType("pinning.backends.kvm")
    mod.kvm_unavailable = lambda: unavailable
    mod.run_vm = run_vm
    mod.exit_round_trip_ns = lambda iterations=20000: 1234.0
    monkeypatch.setitem(sys.modules, "pinning.backends.kvm", mod)
    monkeypatch.setattr(pinning.backends, "kvm", mod, raising=False)
    return runs


def test_npf_exit_and_spte_prefetch_derivation(monkeypatch):
    runs = fake_kvm(monkeypatch)
    npf, spte = cal._kvm_faults(cal._QUICK, HOST_FAULT, ZERO_BYTE, load_profile(), "shadow")
    assert npf.key == "npf_exit_ns" and spte.key == "spte_prefetch_ns"
    assert npf.measured and npf.value == 5000 - PAGE_NS  # per demand fault minus the page
    assert spte.measured and spte.value == 100.0  # (upfront - npf) / 7
    assert "cross-check" in npf.how and "1234" in npf.how
    assert "k = 7 prefetched" in npf.how and "measured 1000" in npf.how
    assert "this host's KVM MMU: shadow" in spte.how
    assert {r[0] for r in runs} == {"demand", "upfront"}
    assert all(r[1:] == ("4k", 1, "sequential", "warm") for r in runs)
    assert len(runs) == 2 * cal._QUICK.kvm_reps


def test_tdp_host_carries_spte_prefetch(monkeypatch):
    # a TDP MMU maps one page per fault on populated memory too: k = 0
    fake_kvm(monkeypatch, upfront_ns=3000.0, upfront_pages_per_fault=1)
    npf, spte = cal._kvm_faults(TINY, HOST_FAULT, ZERO_BYTE, load_profile(), "tdp")
    assert npf.measured and npf.value == 5000 - PAGE_NS
    assert not spte.measured and spte.value == default_value("spte_prefetch_ns")
    assert "k = 0 < 1" in spte.how and "TDP MMU" in spte.how


def test_prefetch_below_the_noise_is_carried(monkeypatch):
    fake_kvm(monkeypatch, upfront_ns=5000 - PAGE_NS - 70)
    npf, spte = cal._kvm_faults(TINY, HOST_FAULT, ZERO_BYTE, load_profile())
    assert npf.measured
    assert not spte.measured and "below the noise" in spte.how and "-10" in spte.how


def test_kvm_keys_carried_when_kvm_is_unavailable(monkeypatch, tiny):
    fake_kvm(monkeypatch, unavailable="no /dev/kvm")
    _, ms = calibrate(quick=True, use_kvm=True)
    for key in ("npf_exit_ns", "spte_prefetch_ns"):
        m = by_key(ms)[key]
        assert not m.measured and "no /dev/kvm" in m.how
        assert m.value == default_value(key)


@pytest.mark.parametrize("kw, why", [({"error": "KVM_RUN: EFAULT"}, "EFAULT"),
                                     ({"demand_ns": 1000.0}, "not a positive npf_exit_ns"),
                                     ({"stats": False}, "no pf_taken")])
def test_kvm_keys_not_measured_when_kvm_fails_or_is_implausible(monkeypatch, kw, why):
    fake_kvm(monkeypatch, **kw)
    with pytest.raises(cal._NotMeasured, match=why):
        cal._kvm_faults(TINY, HOST_FAULT, ZERO_BYTE, load_profile())


def test_kvm_faults_of_a_real_guest(quick):
    from pinning.backends import kvm

    why = kvm.kvm_unavailable()
    if why is not None:
        pytest.skip(f"no KVM guest: {why}")
    got = by_key(quick[1])
    npf, spte = cal._kvm_faults(cal._Plan(host_bytes=4 * MIB, reps=1, guest_bytes=16 * MIB,
                                          kvm_reps=2),
                                got["host_fault_ns"], got["zero_byte_ns"], load_profile())
    assert npf.measured, npf.how
    assert math.isfinite(npf.value) and npf.value > 0
    assert "cross-check" in npf.how and "prefetched neighbours per fault" in npf.how
    # shadow paging prefetches (measured, or carried as below the noise); TDP does not
    assert spte.measured or "below the noise" in spte.how or "TDP MMU" in spte.how


# ---------------------------------------------------------------- [host]


def fake_modules(monkeypatch, tmp_path, **params):
    """A fake /sys/module: ``kvm_tdp_mmu="Y"`` writes kvm/parameters/tdp_mmu; a value of
    None makes just the module's directory."""
    root = tmp_path / "module"
    root.mkdir()
    for name, value in params.items():
        module, _, param = name.partition("__")
        (root / module).mkdir(exist_ok=True)
        if value is not None:
            (root / module / "parameters").mkdir(exist_ok=True)
            (root / module / "parameters" / param).write_text(f"{value}\n")
    monkeypatch.setattr(cal, "SYS_MODULE", str(root))


@pytest.mark.parametrize("params, mmu", [
    ({"kvm__tdp_mmu": "Y", "kvm_amd__npt": "Y"}, "tdp"),
    ({"kvm__tdp_mmu": "Y", "kvm_intel__ept": "1"}, "tdp"),
    ({"kvm__tdp_mmu": "N", "kvm_amd__npt": "Y"}, "shadow"),
    ({"kvm__tdp_mmu": "Y", "kvm_amd__npt": "N"}, "shadow"),
    ({"kvm__tdp_mmu": "Y", "kvm_amd__npt": "Y", "kvm_pvm": None}, "shadow"),
    ({"kvm__tdp_mmu": "N", "kvm_pvm": None}, "shadow"),
    ({"kvm__tdp_mmu": "Y"}, None),  # KVM without a vendor module: not certain
    ({}, None),  # no KVM at all
])
def test_mmu_detection(monkeypatch, tmp_path, params, mmu):
    fake_modules(monkeypatch, tmp_path, **params)
    m = cal._detect_mmu()
    assert m.key == "host.mmu" and m.value == mmu and m.measured == (mmu is not None)
    assert str(tmp_path / "module") in m.how
    if not params:
        assert "KVM is not loaded" in m.how


def test_thp_and_kernel_detection(monkeypatch, tmp_path):
    enabled = tmp_path / "enabled"
    enabled.write_text("[always] madvise never\n")
    monkeypatch.setattr(cal, "THP_ENABLED", str(enabled))
    assert cal._detect_thp().value == "always"
    enabled.unlink()
    m = cal._detect_thp()
    assert not m.measured and m.value is None and "missing" in m.how
    monkeypatch.setattr(cal.platform, "release", lambda: "6.18.44-fc-v1045")
    m = cal._detect_kernel()
    assert m.value == "6.18" and "6.18.44-fc-v1045" in m.how
    monkeypatch.setattr(cal.platform, "release", lambda: "unknown")
    assert not cal._detect_kernel().measured


def fake_cpuinfo(monkeypatch, tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Fake CPU\nflags\t\t: {flags}\n")
    monkeypatch.setattr(cal, "CPUINFO", str(path))


def fake_cpuid(monkeypatch, leaves):
    monkeypatch.setattr(cpu, "CAN_CPUID", True)
    monkeypatch.setattr(cpu, "cpuid_regs", lambda leaf, subleaf=0: leaves[leaf])


@pytest.mark.parametrize("max_ext, eax, flags, value, words", [
    # EPYC 7713P's leaf: eax=0x0101fd3f, bit 10 set; cpuinfo agrees
    (0x80000022, 0x0101FD3F, "fpu sme_coherent sev", True, "bit 10 set"),
    (0x80000022, 0x00000000, "fpu", False, "flags agree"),
    (0x80000008, None, "fpu", False, "largest extended leaf is 0x80000008"),
    (0x80000022, 0x00000400, "fpu", True, "flags disagree"),
])
def test_sme_coherent_from_cpuid(monkeypatch, tmp_path, max_ext, eax, flags, value, words):
    fake_cpuinfo(monkeypatch, tmp_path, flags)
    fake_cpuid(monkeypatch, {0x80000000: (max_ext, 0, 0, 0), 0x8000001F: (eax, 0, 0, 0)})
    m = cal._detect_sme_coherent()
    assert m.measured and m.value is value and words in m.how


def test_sme_coherent_from_cpuinfo_without_cpuid(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "CAN_CPUID", False)
    fake_cpuinfo(monkeypatch, tmp_path, "fpu sme_coherent")
    m = cal._detect_sme_coherent()
    assert m.measured and m.value is True
    assert f"the sme_coherent flag of {tmp_path / 'cpuinfo'} only" in m.how
    monkeypatch.setattr(cal, "CPUINFO", str(tmp_path / "missing"))
    assert not cal._detect_sme_coherent().measured


def test_undetected_host_keys_are_not_written(quick, tmp_path, monkeypatch):
    fake_modules(monkeypatch, tmp_path)  # no KVM
    profile, ms = quick
    mmu = cal._detect_mmu()
    ms = [mmu if m.key == "host.mmu" else m for m in ms]
    host = {k: v for k, v in profile.host.items() if k != "mmu"}
    profile = type(profile)(profile.name, profile.description, profile.machine,
                            profile.source, profile.costs, profile.spread, host)
    path = tmp_path / "cal.toml"
    write_calibrated(profile, ms, path)
    assert "mmu" not in load_profile(path).host
    assert f"# host.mmu not detected, not written: {mmu.how}" in path.read_text()


@pytest.mark.skipif(not (JIT and X86), reason="CPUID needs the JIT on x86-64")
def test_real_cpuid_vendor_matches_cpuinfo():
    eax, ebx, ecx, edx = cpu.cpuid_regs(0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (ebx, edx, ecx)).decode("ascii")
    assert eax >= 1
    with open("/proc/cpuinfo") as f:
        listed = [line.split(":", 1)[1].strip() for line in f if line.startswith("vendor_id")]
    if listed:
        assert vendor == listed[0]


# ---------------------------------------------------------------- without the JIT

_NO_JIT = """
import json
from pinning.harness import calibrate as cal
cal._QUICK = cal._Plan(host_bytes=4 << 20, reps=1, guest_bytes=16 << 20, kvm_reps=1)
profile, ms = cal.calibrate(quick=True, use_kvm=False)
print(json.dumps({m.key: [m.measured, m.how] for m in ms}))
"""


def test_without_the_jit_what_needs_it_is_carried():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    root = Path(cal.__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _NO_JIT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("clflush_page_ns", "fault_cv"):
        measured, how = got[key]
        assert not measured and "NUMBA_DISABLE_JIT" in how
    measured, how = got["host.sme_coherent"]
    assert "CPUID not executed" in how or not measured
    assert got["guest_touch_ns"][0] and "JIT off" in got["guest_touch_ns"][1]

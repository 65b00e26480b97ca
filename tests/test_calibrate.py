"""pinbench calibrate: every key measured or carried with a reason, sane ratios, atomic writes.

No absolute timing thresholds: only relations between costs measured in the
same run, which hold on any machine (a fault that allocates and zeroes a page
costs more than pinning a present one, and so on).
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import platform
import socket
import sys
import types

import numba
import pytest

import pinning.backends
from pinning.backends import libc
from pinning.harness import calibrate as cal
from pinning.harness.calibrate import (
    NOT_MEASURABLE,
    Measurement,
    calibrate,
    format_measurements,
    profile_toml,
    write_calibrated,
)
from pinning.model.costs import COST_KEYS, load_profile
from pinning.model.names import InputError

JIT = not numba.config.DISABLE_JIT
X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.fixture(scope="module")
def quick():
    return calibrate(quick=True, use_kvm=False)


def by_key(measurements):
    return {m.key: m for m in measurements}


def test_every_key_once_in_order(quick):
    profile, ms = quick
    assert [m.key for m in ms] == list(COST_KEYS)
    assert list(profile.costs) == list(COST_KEYS)
    for m in ms:
        assert profile.costs[m.key] == m.value_ns
        assert m.how and "\n" not in m.how


def test_measured_values_are_positive_medians_within_their_spread(quick):
    _, ms = quick
    measured = [m for m in ms if m.measured]
    assert {"zero_frame_ns", "guest_touch_ns", "zero_metadata_ns"} <= {m.key for m in measured}
    for m in measured:
        assert math.isfinite(m.value_ns) and m.value_ns > 0, m
        lo, hi = m.spread
        # the value is the median rounded to 0.01 ns
        assert lo - 0.01 <= m.value_ns <= hi + 0.01, m
        assert "median of 3" in m.how, m


def test_unmeasurable_keys_carry_the_default_with_a_reason(quick):
    _, ms = quick
    default = load_profile()
    got = by_key(ms)
    for key, reason in NOT_MEASURABLE.items():
        m = got[key]
        assert not m.measured and m.spread is None
        assert m.value_ns == default.costs[key]
        assert "cannot be measured from user space" in m.how and reason in m.how
    npf = got["npf_exit_ns"]
    assert not npf.measured and npf.value_ns == default.costs["npf_exit_ns"]
    assert "use_kvm=False" in npf.how


def test_clflush_measured_only_with_the_jit(quick):
    m = by_key(quick[1])["clflush_page_ns"]
    if not JIT:
        assert not m.measured and "NUMBA_DISABLE_JIT" in m.how
        assert m.value_ns == load_profile().costs["clflush_page_ns"]
    elif X86:
        assert m.measured and "CLFLUSH" in m.how


def test_pin_measured_when_privileged(quick):
    got = by_key(quick[1])
    if os.geteuid() == 0:
        assert got["pin_ns"].measured and got["unpin_ns"].measured
    else:  # RLIMIT_MEMLOCK may refuse: then both carry the default, saying why
        assert got["pin_ns"].measured == got["unpin_ns"].measured


def test_relations_between_costs_of_one_run(quick):
    got = by_key(quick[1])

    def cost(key):
        return got[key].value_ns if got[key].measured else None

    zero, touch, meta = cost("zero_frame_ns"), cost("guest_touch_ns"), cost("zero_metadata_ns")
    # Faulting in a page allocates and zeroes 4 KiB: more than zeroing 4 KiB of
    # present memory, which is more than one store to a present page.
    assert zero > meta > touch
    if cost("pin_ns") is not None:
        # populating a fresh page does strictly more than pinning a present one
        assert zero > cost("pin_ns")
    if cost("clflush_page_ns") is not None:
        # writing 64 dirty lines back costs more than one store to a present page
        assert cost("clflush_page_ns") > touch


def test_profile_metadata(quick):
    profile, ms = quick
    assert profile.name == "calibrated"
    assert socket.gethostname() in profile.machine
    assert platform.release() in profile.machine
    assert "UTC" in profile.description
    assert f"{sum(m.measured for m in ms)} of {len(COST_KEYS)}" in profile.description


def test_written_file_round_trips(quick, tmp_path):
    profile, ms = quick
    path = tmp_path / "cal.toml"
    write_calibrated(profile, ms, path)
    back = load_profile(path)
    assert back.costs == profile.costs
    assert back.machine == profile.machine and back.machine
    assert (back.name, back.description) == (profile.name, profile.description)
    assert os.listdir(tmp_path) == ["cal.toml"]
    # one comment line right above each key says how it was obtained
    lines = path.read_text(encoding="utf-8").splitlines()
    for m in ms:
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"{m.key} =")]
        status = "measured" if m.measured else "carried"
        assert lines[at - 1] == f"# {status}: {m.how}"


def test_comment_stays_one_line_and_round_trips(quick, tmp_path):
    profile, ms = quick
    odd = [Measurement(m.key, m.value_ns, m.measured, m.how + "\nsecond line\r\x00\x7f")
           for m in ms]
    text = profile_toml(profile, odd)
    assert "\nsecond line" not in text
    path = tmp_path / "odd.toml"
    write_calibrated(profile, odd, path)
    assert load_profile(path).costs == profile.costs


def test_missing_measurement_is_refused(quick, tmp_path):
    profile, ms = quick
    with pytest.raises(ValueError, match="wbinvd_ns"):
        write_calibrated(profile, [m for m in ms if m.key != "wbinvd_ns"], tmp_path / "x.toml")
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
        assert ("measured" if m.measured else "carried") in line
        assert m.how in line
    assert "measured on " in format_measurements(ms)  # defaults to this machine


def test_mlock_refused_carries_pin_and_unpin(monkeypatch):
    def refused(addr, length):
        ctypes.set_errno(errno.ENOMEM)
        return -1

    monkeypatch.setattr(libc, "mlock", refused)
    _, ms = calibrate(quick=True, use_kvm=False)
    got = by_key(ms)
    default = load_profile()
    for key in ("pin_ns", "unpin_ns"):
        assert not got[key].measured and got[key].value_ns == default.costs[key]
        assert os.strerror(errno.ENOMEM) in got[key].how
    assert got["zero_frame_ns"].measured


# ---------------------------------------------------------------- npf_exit_ns


def fake_kvm(monkeypatch, *, unavailable=None, demand_ns=5000, upfront_ns=700, error=""):
    """Install a stand-in for pinning.backends.kvm with the documented API."""
    runs = []

    def run_vm(guest_size, *, strategy, backing, vcpus, touch_fraction, pattern, seed, host):
        runs.append((strategy, backing, vcpus, host))
        pages = guest_size // 4096
        per = demand_ns if strategy == "demand" else upfront_ns
        # KVM's fault count: every page under demand, one in 8 on populated memory
        faults = pages if strategy == "demand" else pages // 8
        return types.SimpleNamespace(touch_ns=per * pages, pages_touched=pages, error=error,
                                     stats={"pf_taken": faults})

    mod = types.ModuleType("pinning.backends.kvm")
    mod.kvm_unavailable = lambda: unavailable
    mod.run_vm = run_vm
    mod.exit_round_trip_ns = lambda iterations=20000: 1234.0
    monkeypatch.setitem(sys.modules, "pinning.backends.kvm", mod)
    monkeypatch.setattr(pinning.backends, "kvm", mod, raising=False)
    return runs


def test_npf_exit_derivation(monkeypatch):
    runs = fake_kvm(monkeypatch)
    zero = Measurement("zero_frame_ns", 1100.0, True, "test")
    m = cal._npf_exit(cal._QUICK, zero)
    assert m.measured and m.value_ns == 5000 - 1100  # per demand fault, minus the frame
    assert "cross-check" in m.how and "1234" in m.how
    assert "0.125 faults/page at 5600 ns" in m.how  # upfront: 8 pages per fault
    assert {r[0] for r in runs} == {"demand", "upfront"}
    assert all(r[1:] == ("4k", 1, "warm") for r in runs)
    assert len(runs) == 2 * cal._QUICK.kvm_reps


def test_npf_exit_carried_when_kvm_is_unavailable(monkeypatch):
    fake_kvm(monkeypatch, unavailable="no /dev/kvm")
    _, ms = calibrate(quick=True, use_kvm=True)
    npf = by_key(ms)["npf_exit_ns"]
    assert not npf.measured and "no /dev/kvm" in npf.how
    assert npf.value_ns == load_profile().costs["npf_exit_ns"]


@pytest.mark.parametrize("kw, why", [({"error": "KVM_RUN: EFAULT"}, "EFAULT"),
                                     ({"demand_ns": 1000}, "not a positive cost")])
def test_npf_exit_carried_when_kvm_fails_or_is_implausible(monkeypatch, kw, why):
    fake_kvm(monkeypatch, **kw)
    zero = Measurement("zero_frame_ns", 1100.0, True, "test")
    with pytest.raises(cal._NotMeasured, match=why):
        cal._npf_exit(cal._QUICK, zero)


def _real_kvm_reason() -> str | None:
    try:
        from pinning.backends import kvm
    except ImportError:
        return "pinning.backends.kvm does not exist"
    return kvm.kvm_unavailable()


def test_calibration_with_a_real_kvm_guest():
    why = _real_kvm_reason()
    if why is not None:
        pytest.skip(f"no KVM guest: {why}")
    profile, ms = calibrate(quick=True, use_kvm=True)
    npf = by_key(ms)["npf_exit_ns"]
    assert npf.measured, npf.how
    assert math.isfinite(npf.value_ns) and npf.value_ns > 0
    assert "cross-check" in npf.how
    assert profile.costs["npf_exit_ns"] == npf.value_ns

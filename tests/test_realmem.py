"""Real host memory beside the model (backing "real"): mappings, populate, lock, touches."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from pinning.backends.realmem import GuestMemory
from pinning.harness.backings import TABLE, validate
from pinning.harness.bench import run_metadata
from pinning.model.config import BenchConfig
from pinning.model.costs import load_profile
from pinning.model.names import InputError

MiB = 1 << 20


def status_kib(key: str) -> int:
    """A line of /proc/self/status, in KiB (VmRSS, VmLck, ...)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def n_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def test_guest_ram_is_aligned_populated_and_released() -> None:
    maps = n_maps()
    rss = status_kib("VmRSS")
    mem = GuestMemory(64 * MiB, "4k")
    assert mem.addr % (2 * MiB) == 0 and mem.words.size == 64 * MiB // 8
    assert status_kib("VmRSS") - rss < 8 * 1024  # nothing faulted in yet
    mem.populate()
    assert status_kib("VmRSS") - rss >= 60 * 1024
    assert not mem.words.any()  # populated frames are zeroed
    mem.release()
    mem.release()  # twice is fine
    assert status_kib("VmRSS") - rss < 8 * 1024
    assert n_maps() == maps


@pytest.mark.skipif(os.geteuid() != 0, reason="mlock of 64 MiB needs root here "
                    "(RLIMIT_MEMLOCK is 8 MiB for other users)")
def test_lock_and_munlock_on_release() -> None:
    before = status_kib("VmLck")
    with GuestMemory(64 * MiB, "4k") as mem:
        mem.populate()
        assert mem.lock() is None
        assert status_kib("VmLck") - before == 64 * 1024
    assert status_kib("VmLck") == before


def test_touch_writes_one_word_per_page_of_each_unit_on_every_vcpu_slice() -> None:
    with GuestMemory(16 * MiB, "2m") as mem:
        units = np.array([3, 0, 7, 1], dtype=np.uint32)  # 2 MiB units = 512 pages
        bounds = np.array([0, 1, 4], dtype=np.int64)  # two vCPUs
        assert mem.touch(units, bounds, 512) == 4 * 512
        pages = mem.words[::512]
        touched = np.flatnonzero(pages)
        expected = np.concatenate([np.arange(u * 512, (u + 1) * 512) for u in sorted(units)])
        assert np.array_equal(touched, expected)
        assert (pages[touched] == 1).all()
        assert not mem.words.reshape(-1, 512)[:, 1:].any()  # one word per page only
        del pages  # a live view of guest RAM would keep it from being unmapped


def test_bad_guest_memory_is_refused() -> None:
    with pytest.raises(InputError, match="1 GiB pages need hugetlbfs"):
        GuestMemory(1 << 30, "1g")
    with pytest.raises(InputError, match="multiple of 2 MiB"):
        GuestMemory(3 * MiB, "4k")


def mapped(addr: int) -> bool:
    """Whether ``addr`` lies in a mapping of this process."""
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return True
    return False


@pytest.mark.parametrize("strategy", ["upfront", "demand"])
def test_real_backing_keeps_the_models_events_and_releases_guest_ram(
        strategy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pinning.backends.realmem as realmem

    made: list[GuestMemory] = []

    class Recorded(GuestMemory):
        def __init__(self, *args: object) -> None:
            super().__init__(*args)
            made.append(self)

    monkeypatch.setattr(realmem, "GuestMemory", Recorded)
    profile = load_profile()
    sim = BenchConfig("lifecycle", strategy, 32 * MiB, "4k", vcpus=2, pattern="random")
    real = replace(sim, backing="real")
    lck = status_kib("VmLck")
    r_sim, r_real = TABLE["sim"].run(sim, profile), TABLE["real"].run(real, profile)
    assert r_real.error is None
    assert r_real.events == r_sim.events  # the bookkeeping is the same
    assert set(r_real.elapsed_ns) == {"startup", "access", "teardown"}
    assert all(ns > 0 for ns in r_real.elapsed_ns.values())
    # guest RAM unmapped and unlocked again
    assert len(made) == 1 and not mapped(made[0].addr) and status_kib("VmLck") == lck
    md = run_metadata(real, TABLE["real"], r_real)
    assert md["host.state"] == "warm" and "real host memory" in md["measured.what"]


@pytest.mark.skipif(bool(os.environ.get("NUMBA_DISABLE_JIT")),
                    reason="compares compiled bookkeeping with real faults; without the JIT "
                           "the interpreted bookkeeping dominates both")
def test_real_backing_costs_more_than_the_sim_for_demand_first_touches() -> None:
    # 64 MiB of real first-touch faults (16384 host faults, ~1-4 us each) against the sim's
    # bookkeeping of the same accesses: measured in one run, compared as a ratio.
    profile = load_profile()
    sim = BenchConfig("fault_storm", "demand", 64 * MiB, "4k", pattern="sequential")
    real = replace(sim, backing="real")
    TABLE["sim"].run(sim, profile)  # kernels loaded
    t_sim = min(TABLE["sim"].run(sim, profile).elapsed_ns["access"] for _ in range(3))
    t_real = min(TABLE["real"].run(real, profile).elapsed_ns["access"] for _ in range(3))
    assert t_real > 2 * t_sim


@pytest.mark.parametrize(("changes", "message"), [
    ({"backing": "real", "workload": "remap"}, "remap family runs on the sim backing only"),
    ({"backing": "real", "level": "1g", "guest_size": 1 << 30}, "needs level 4k or 2m"),
    ({"host": "cold"}, "host 'cold' needs a real backing"),
    ({"backing": "kvm", "pattern": "zipf"}, "patterns sequential and random"),
    ({"backing": "real", "host": "lukewarm"}, "host 'lukewarm' is not one of warm, cold"),
    ({"backing": "real", "memlock_limit": MiB}, "memlock_limit runs on the sim only"),
])
def test_backing_combinations_refused(changes: dict, message: str) -> None:
    config = replace(BenchConfig("lifecycle", "demand", 64 * MiB, "4k"), **changes)
    with pytest.raises(InputError, match=message):
        validate(config)


def test_names_say_backing_and_host_state() -> None:
    base = BenchConfig("lifecycle", "demand", 64 * MiB, "4k", vcpus=2)
    assert "/real/" in replace(base, backing="real").name
    assert "/kvm-cold/" in replace(base, backing="kvm", host="cold").name
    assert "/real" not in base.name and "kvm" not in base.name


def test_cli_simulate_on_real_memory(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from pinning.cli import main

    assert main(["simulate", "--strategy", "upfront", "--guest-size", "32MiB", "--pattern",
                 "sequential", "--backing", "real", "--vcpus", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backing"] == "real" and out["host"] == "warm" and out["error"] is None
    assert out["pins"] == out["frames_zeroed"] == 32 * MiB // 4096
    assert set(out["elapsed_ns"]) == {"startup", "access", "teardown"}
    assert main(["simulate", "--strategy", "demand", "--guest-size", "32MiB", "--pattern",
                 "random", "--backing", "real"]) == 0
    assert "on real host memory, warm host (measured)" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--backing", "real", "--memlock-limit", "1MiB"], "runs on the sim only"),
    (["--backend", "kvm", "--backing", "real"], "cannot also be --backing real"),
    (["--backing", "real", "--level", "1g", "--guest-size", "1GiB"], "needs level 4k or 2m"),
])
def test_cli_simulate_real_refusals(argv: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from pinning.cli import main

    base = ["simulate", "--strategy", "demand", "--guest-size", "32MiB", "--pattern",
            "sequential"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1

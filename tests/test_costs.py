"""Cost profiles: the packaged default, pricing counters, and one-line errors for bad files."""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pytest

from pinning.model.costs import (
    CARRIED_IF_MISSING,
    COST_KEYS,
    EVENT_COST,
    SPREAD_KEYS,
    CostProfile,
    load_profile,
    modelled_ns,
    write_profile,
)
from pinning.model.names import InputError

GOOD = """\
npf_exit_ns = 1000
host_fault_ns = 300.0
pin_ns = 62.0
zero_byte_ns = 0.125
unpin_ns = 15.0
clflush_page_ns = 200.0
page_flush_ns = 250.0
wbinvd_ns = 1e6
lock_hold_ns = 100.0
guest_touch_ns = 15.0
spte_prefetch_ns = 40.0

[spread]
fault_cv = 0.5
lock_cv = 0.25

[profile]
name = "test"
description = "a test profile"
"""


def test_default_profile_has_every_key():
    p = load_profile()
    assert p.name == "default"
    assert p.source == "builtin:default"
    assert p.machine is None
    assert set(p.costs) == set(COST_KEYS)
    assert all(isinstance(v, float) and v >= 0 for v in p.costs.values())
    assert p.costs["pin_ns"] == 62.2 and p.costs["unpin_ns"] == 15.1
    assert set(p.spread) == set(SPREAD_KEYS)
    # the host the defaults describe: an SEV host (coherent EPYC, TDP MMU)
    assert p.host == {"sme_coherent": True, "mmu": "tdp"}
    arr = p.as_array()
    assert arr.dtype == np.float64
    assert arr.tolist() == [p.costs[k] for k in COST_KEYS]


def test_every_default_names_its_source():
    text = resources.files("pinning.model.profiles").joinpath("default.toml").read_text()
    lines = text.splitlines()
    for key in COST_KEYS + SPREAD_KEYS:
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"{key} =")]
        comment = []
        i = at - 1
        while i >= 0 and lines[i].startswith("#"):
            comment.append(lines[i])
            i -= 1
        block = " ".join(comment)
        # an assumption says so; a figure names where it was published: a commit, a
        # lore thread, a dated mail, or this machine's HOST.md
        assert re.search(r"ASSUMPTION|HOST\.md|\b[0-9a-f]{12}\b|lore |\d{4}-\d{2}-\d{2}",
                         block), f"{key} has no source"


def test_event_cost_covers_the_timed_counters():
    assert EVENT_COST == {
        "npf_exits": ("npf_exit_ns", 1.0),
        "prefetched_pages": ("spte_prefetch_ns", 1.0),
        "host_faults": ("host_fault_ns", 1.0),
        "frames_zeroed": ("zero_byte_ns", 4096.0),  # a frame is zeroed byte by byte
        "metadata_bytes": ("zero_byte_ns", 1.0),  # KVM's arrays alike
        "pins": ("pin_ns", 1.0),
        "unpins": ("unpin_ns", 1.0),
        "clflush_bytes": ("clflush_page_ns", 1 / 4096),
        "page_flushes": ("page_flush_ns", 1.0),
        "wbinvd": ("wbinvd_ns", 1.0),
        # guest_memfd's: an RMPUPDATE, a page-state-change request's exit, a page of the
        # launch image (SNP_LAUNCH_UPDATE: copy + PSP command), a memory attribute stored
        "rmpupdates": ("rmpupdate_ns", 1.0),
        "psc_exits": ("psc_exit_ns", 1.0),
        "launch_update_pages": ("psp_command_ns", 1.0),
        "attr_pages": ("attr_store_ns", 1.0),
    }
    # every cost but the guest's own touch and the lock (the vCPU model's) prices a counter
    assert {k for k, _ in EVENT_COST.values()} == set(COST_KEYS) - {"guest_touch_ns",
                                                                   "lock_hold_ns"}


def test_modelled_ns_by_hand(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(GOOD)
    p = load_profile(path)
    counters = {
        "npf_exits": 3,
        "prefetched_pages": 7,
        "host_faults": 2,
        "frames_zeroed": 4,
        "pins": 5,
        "unpins": 2,
        "clflush_bytes": 3 * 4096,
        "page_flushes": 1,
        "wbinvd": 2,
        "metadata_bytes": 8 * 4096,  # zeroed at allocation: 8 pages' worth
        "pinned_pages_peak": 77,  # a peak, not an event: costs no time
    }
    want = (3 * 1000 + 7 * 40 + 2 * 300 + 4 * 4096 * 0.125 + 5 * 62 + 2 * 15 + 3 * 200
            + 1 * 250 + 2 * 1e6 + 8 * 4096 * 0.125)
    assert modelled_ns(counters, p) == pytest.approx(want, rel=1e-12)
    assert modelled_ns({}, p) == 0.0


def _set(text: str, key: str, value: str) -> str:
    return re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)


BAD = {
    "unknown key": (GOOD.replace("pin_ns = 62.0", "pin_ns = 62.0\npinn_ns = 3"), "pinn_ns"),
    "missing key": (_set(GOOD, "unpin_ns", "1").replace("unpin_ns = 1\n", ""), "unpin_ns"),
    "string value": (_set(GOOD, "pin_ns", '"fast"'), "pin_ns"),
    "bool value": (_set(GOOD, "wbinvd_ns", "true"), "wbinvd_ns"),
    "negative value": (_set(GOOD, "zero_byte_ns", "-1.0"), "zero_byte_ns"),
    "negative spread": (_set(GOOD, "lock_cv", "-0.5"), "spread.lock_cv"),
    "missing spread": (GOOD.replace("fault_cv = 0.5\n", ""), "spread.fault_cv"),
    "old key": (GOOD.replace("host_fault_ns = 300.0", "zero_frame_ns = 300.0"),
                "host_fault_ns + zero_byte_ns"),
    "host value of the wrong type": (GOOD + '[host]\nmmu = 3\n', "host.mmu"),
    "nan value": (_set(GOOD, "lock_hold_ns", "nan"), "lock_hold_ns"),
    "no profile table": (GOOD.split("[profile]")[0], "profile"),
    "profile without name": (GOOD.replace('name = "test"\n', ""), "profile.name"),
    "unknown profile key": (GOOD + 'owner = "me"\n', "profile.owner"),
    "profile name not a string": (GOOD.replace('name = "test"', "name = 3"), "profile.name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_profile_is_one_line_naming_file_and_key(tmp_path, case):
    text, key = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert key in msg
    if case.startswith("unknown") or case == "missing key":
        assert "pin_ns" in msg or "description" in msg  # the allowed keys are listed


def test_bad_value_message_has_its_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(_set(GOOD, "pin_ns", "-3"))
    with pytest.raises(InputError, match=rf"{re.escape(str(path))}:3: pin_ns .* >= 0, got -3"):
        load_profile(path)


def test_unparsable_toml_names_its_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(GOOD.replace("unpin_ns = 15.0", "unpin_ns = = 15"))  # line 5
    with pytest.raises(InputError) as exc:
        load_profile(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and "line 5" in msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(InputError, match=rf"cannot read cost profile {re.escape(str(path))}"):
        load_profile(path)


def test_write_profile_round_trips(tmp_path):
    p = CostProfile(
        name="epyc-7763 \"calibrated\"",
        description="measured\twith kvm backend; ünïcode",
        machine="host-1 [AMD EPYC]",
        source="somewhere",
        costs={k: float(i) * 1.1 + 1e-3 for i, k in enumerate(COST_KEYS)},
    )
    path = tmp_path / "out.toml"
    write_profile(p, path)
    q = load_profile(path)
    assert (q.name, q.description, q.machine, q.costs) == (
        p.name, p.description, p.machine, p.costs)
    assert q.source == str(path)

    default = load_profile()
    write_profile(default, path)
    again = load_profile(path)
    assert again.costs == default.costs and again.machine is None


def test_write_profile_refuses_incomplete_costs(tmp_path):
    p = CostProfile("x", "y", None, "test", {"pin_ns": 1.0})
    with pytest.raises(InputError, match="npf_exit_ns"):
        write_profile(p, tmp_path / "x.toml")


def test_a_profile_from_before_guest_memfd_carries_the_defaults_new_keys(tmp_path):
    """A calibrated profile written before the guest_memfd costs existed still loads:
    it takes the default's values for them, and the sensitivity sees them as the
    default's assumptions."""
    path = tmp_path / "old.toml"
    path.write_text(GOOD)  # has none of the guest_memfd keys
    assert not any(key in GOOD for key in CARRIED_IF_MISSING)
    p = load_profile(path)
    default = load_profile()
    for key in CARRIED_IF_MISSING:
        assert p.costs[key] == default.costs[key]
        assert p.provenance[key].kind == "carried"
        assert p.kind(key) == "assumption"

"""The answer in one command: side by side, break-even by search, sensitivity (modelled)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pinning.analysis import answer as A
from pinning.cli import main
from pinning.model import strategies
from pinning.model.config import BenchConfig
from pinning.model.costs import load_profile
from pinning.model.lifecycle import run_lifecycle
from pinning.model.names import InputError

MIB = 1 << 20
ROOT_PROFILE = "results/calibrated-reference.toml"


def config(**kw) -> BenchConfig:
    base = dict(workload="lifecycle", strategy="demand", guest_size=128 * MIB, level="4k",
                vcpus=2, pattern="random", touch_fraction=0.25)
    return BenchConfig(**{**base, **kw})


def fresh_total(cfg: BenchConfig, profile, strategy: str, fraction: float) -> float:
    """A lifecycle run on its own, outside the answer's cache and re-pricing."""
    res = run_lifecycle(replace(cfg, strategy=strategy, touch_fraction=fraction), profile)
    return res.total_model_ns


def test_strategies_parse_lists_and_all() -> None:
    assert A.parse_strategies("all") == strategies.names()
    assert A.parse_strategies("upfront, demand") == ("upfront", "demand")
    with pytest.raises(InputError, match="unknown strategy 'nope'"):
        A.parse_strategies("upfront,nope")
    with pytest.raises(InputError, match="twice"):
        A.parse_strategies("demand,demand")


def test_side_by_side_names_the_cheapest_and_ratios_of_fresh_runs() -> None:
    cfg, profile = config(), load_profile()
    sbs = A.side_by_side(A.Lifecycles(cfg, profile), ("upfront", "demand"))
    totals = {s: fresh_total(cfg, profile, s, 0.25) for s in ("upfront", "demand")}
    best = min(totals, key=totals.__getitem__)
    assert sbs.cheapest == best
    other = "upfront" if best == "demand" else "demand"
    assert sbs.ratio(other) == pytest.approx(totals[other] / totals[best], rel=1e-12)
    assert sbs.ratio(best) == 1.0


def test_break_even_is_where_the_fresh_totals_cross() -> None:
    # RFC v1 flushes each page it pins in the fault; upfront, under SME_COHERENT, never.
    # A dear flush makes demand's faults dear: upfront, which pays for all memory at
    # startup, becomes cheaper from some touch fraction on.
    profile = load_profile().with_costs(clflush_page_ns=3000.0)
    cfg = config()
    be = A.break_even(A.Lifecycles(cfg, profile), "upfront", "demand")
    assert be.fraction is not None and 0.0 < be.fraction < 1.0
    assert (be.cheaper_below, be.cheaper_above) == ("demand", "upfront")
    step = 2 * A.FRACTION_TOL
    below, above = max(0.0, be.fraction - step), min(1.0, be.fraction + step)
    assert fresh_total(cfg, profile, "demand", below) < fresh_total(cfg, profile, "upfront", below)
    assert fresh_total(cfg, profile, "demand", above) > fresh_total(cfg, profile, "upfront", above)


def test_no_break_even_when_one_strategy_is_cheaper_at_both_ends() -> None:
    cfg, profile = config(), load_profile()
    be = A.break_even(A.Lifecycles(cfg, profile), "upfront", "demand")
    for f in (0.0, 1.0):
        assert fresh_total(cfg, profile, "demand", f) < fresh_total(cfg, profile, "upfront", f)
    assert be.fraction is None
    assert (be.cheaper_below, be.cheaper_above) == ("demand", "demand")
    assert "none in 0..1" in be.text()


def test_break_even_needs_a_touch_fraction() -> None:
    with pytest.raises(InputError, match="boot pattern"):
        A.break_even(A.Lifecycles(config(pattern="boot", touch_fraction=1.0),
                                  load_profile()), "upfront", "demand")


@pytest.mark.parametrize(("strategy", "changes", "moves"), [
    ("demand", {"wbinvd_ns": 3e6}, True),  # teardown only
    ("upfront", {"pin_ns": 500.0, "zero_byte_ns": 0.5}, True),  # upfront pins at startup
    ("upfront", {"lock_hold_ns": 900.0, "lock_cv": 1.5}, False),  # no lock under TDP MMU
])
def test_repricing_equals_a_fresh_run_and_runs_nothing(strategy, changes, moves) -> None:
    cfg, profile = config(), load_profile()
    lc = A.Lifecycles(cfg, profile)
    lc.outcome(strategy)
    runs = lc.runs
    got = lc.total_ns(strategy, None, changes)
    assert lc.runs == runs  # re-priced, not run
    want = fresh_total(cfg, profile.with_costs(**changes), strategy, 0.25)
    assert got == pytest.approx(want, rel=1e-12)
    assert (got != lc.total_ns(strategy)) == moves


@pytest.mark.parametrize(("strategy", "changes"), [
    ("demand", {"npf_exit_ns": 2000.0}),
    ("demand-v2", {"lock_hold_ns": 900.0}),  # RFC v2 pins under slots_arch_lock
    ("demand", {"fault_cv": 0.1}),
])
def test_a_change_inside_the_vcpu_model_reruns(strategy, changes) -> None:
    cfg, profile = config(), load_profile()
    lc = A.Lifecycles(cfg, profile)
    lc.outcome(strategy)
    runs = lc.runs
    got = lc.total_ns(strategy, None, changes)
    assert lc.runs == runs + 1
    assert got == fresh_total(cfg, profile.with_costs(**changes), strategy, 0.25)


def test_varied_costs_are_the_profiles_assumptions_and_named_measured_ranges() -> None:
    default = A.varied_costs(load_profile())
    keys = {v.key for v in default}
    # default.toml marks these "ASSUMPTION:"; pin_ns and host_fault_ns name a source
    assert {"npf_exit_ns", "clflush_page_ns", "wbinvd_ns", "lock_hold_ns"} <= keys
    assert not {"pin_ns", "unpin_ns", "host_fault_ns", "zero_byte_ns"} & keys
    npf = next(v for v in default if v.key == "npf_exit_ns")
    assert (npf.low, npf.high) == (280.0, 1120.0)  # 560 ns x0.5 .. x2

    calibrated = load_profile(ROOT_PROFILE)
    varied = A.varied_costs(calibrated, named=["npf_exit_ns"], factors=(0.8, 1.25))
    by_key = {v.key: v for v in varied}
    # carried from the default, where it is an assumption: still varied
    assert {"wbinvd_ns", "lock_hold_ns", "lock_cv"} <= set(by_key)
    # measured there, and named: over the min-max its comment states (median of 5)
    assert (by_key["npf_exit_ns"].low, by_key["npf_exit_ns"].high) == (9611.0, 10759.0)
    assert by_key["wbinvd_ns"].low == pytest.approx(0.8e6)
    assert "pin_ns" not in by_key  # measured, not named


@pytest.mark.parametrize("bad", [(1.0, 2.0), (0.5, 0.9), (0.0, 2.0)])
def test_a_range_must_straddle_one(bad) -> None:
    with pytest.raises(InputError, match="sensitivity range"):
        A.varied_costs(load_profile(), factors=bad)


def test_sensitivity_flags_a_flip_the_fresh_runs_confirm() -> None:
    # Near the crossing of a dear flush, halving or doubling it decides the winner.
    profile = load_profile().with_costs(clflush_page_ns=3000.0)
    base_lc = A.Lifecycles(config(), profile)
    be = A.break_even(base_lc, "upfront", "demand")
    cfg = config(touch_fraction=round(be.fraction, 3))
    lc = A.Lifecycles(cfg, profile)
    flush = A.Varied("clflush_page_ns", "assumption", 3000.0, 1500.0, 6000.0, "x0.5..x2")
    frame, base = A.sensitivity(lc, ("upfront", "demand"), [flush])
    row = frame.iloc[0]
    for end, value in (("low", 1500.0), ("high", 6000.0)):
        changed = profile.with_costs(clflush_page_ns=value)
        totals = {s: fresh_total(cfg, changed, s, cfg.touch_fraction)
                  for s in ("upfront", "demand")}
        assert row[f"cheaper_{end}"] == min(totals, key=totals.__getitem__)
    assert row["cheaper_low"] == "demand" and row["cheaper_high"] == "upfront"
    assert bool(row["flips"])
    assert base["cheapest"] in ("upfront", "demand")


def test_sensitivity_needs_two_strategies() -> None:
    with pytest.raises(InputError, match="two or more"):
        A.sensitivity(A.Lifecycles(config(), load_profile()), ("demand",), [])


# ---------------------------------------------------------------------------- the CLI

SMALL = ["--guest-size", "64MiB", "--pattern", "random", "--touch-fraction", "0.25",
         "--vcpus", "2"]


def test_simulate_several_strategies_json_is_one_object(capsys) -> None:
    assert main(["simulate", "--strategy", "upfront,demand", *SMALL, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["strategies"] == ["upfront", "demand"]
    totals = {s: out["runs"][s]["modelled_ns"]["total"] for s in out["strategies"]}
    assert out["answer"]["cheapest"] == min(totals, key=totals.__getitem__)
    assert out["answer"]["modelled_total_ns"] == pytest.approx(totals)
    assert [(b["a"], b["b"]) for b in out["break_even"]] == [("upfront", "demand")]
    assert out["runs"]["demand"]["npf_exits"] > 0
    assert "sensitivity" not in out


def test_simulate_all_prints_the_answer_in_the_three_kinds_of_time(capsys) -> None:
    assert main(["simulate", "--strategy", "all", *SMALL, "--sensitivity"]) == 0
    text = capsys.readouterr().out
    for what in ("modelled time", "answer (modelled)", "break-even touch fraction",
                 "sensitivity (modelled)", "event counts (modelled)", "simulator speed"):
        assert what in text
    assert "measured" not in text  # the sim measures nothing of pinning
    for name in strategies.names():
        assert name in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--strategy", "demand", "--sensitivity"], "two or more"),
    (["--strategy", "upfront,demand", "--sensitivity", "--vary", "bogus_ns"],
     "unknown cost key 'bogus_ns'"),
    (["--strategy", "upfront,demand", "--sensitivity", "--factors", "2,3"],
     "sensitivity range"),
    (["--strategy", "upfront,demand", "--sensitivity", "--factors", "x"], "--factors"),
    (["--strategy", "upfront,demand", "--vary", "npf_exit_ns"], "add --sensitivity"),
    (["--strategy", "upfront,nope"], "unknown strategy 'nope'"),
])
def test_simulate_bad_answer_options_are_one_line_exit_2(capsys, argv, message) -> None:
    assert main(["simulate", *argv, *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("n_workers", [1, 2])
def test_sensitivity_is_the_same_serial_or_in_workers(monkeypatch, n_workers) -> None:
    profile = load_profile().with_costs(clflush_page_ns=3000.0)
    costs = A.varied_costs(profile)[:3]
    monkeypatch.setattr(A, "workers", lambda lc, tasks: 1)
    serial, _ = A.sensitivity(A.Lifecycles(config(), profile), ("upfront", "demand"), costs)
    monkeypatch.setattr(A, "workers", lambda lc, tasks: n_workers)
    lc = A.Lifecycles(config(), profile)
    forked, _ = A.sensitivity(lc, ("upfront", "demand"), costs)
    pd.testing.assert_frame_equal(serial, forked)
    assert lc.runs > 0


def test_break_evens_match_one_search_per_pair(monkeypatch) -> None:
    monkeypatch.setattr(A, "workers", lambda lc, tasks: 2)
    profile = load_profile().with_costs(clflush_page_ns=3000.0)
    names = ("upfront", "demand", "demand-v2")
    got = A.break_evens(A.Lifecycles(config(), profile), names)
    alone = [A.break_even(A.Lifecycles(config(), profile), a, b) for a, b in A.pairs(names)]
    assert got == alone


def test_a_strategy_that_cannot_run_is_named_not_compared(capsys) -> None:
    # 512 MiB may be locked: upfront and RFC v2 register (and lock) all 1 GiB at startup
    argv = ["simulate", "--strategy", "upfront,demand,demand-v2", "--guest-size", "1GiB",
            "--pattern", "random", "--touch-fraction", "0.5", "--memlock-limit", "512MiB"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    failed = {s for s, run in out["runs"].items() if run["error"]}
    assert failed == {"upfront", "demand-v2"}
    assert out["answer"]["cheapest"] == "demand"
    assert {s for s, r in out["answer"]["ratio_to_cheapest"].items() if r is None} == failed
    assert out["break_even"] is None and "fewer than two" in out["break_even_note"]
    assert main([*argv, "--sensitivity"]) == 0
    text = capsys.readouterr().out
    assert "upfront could not run" in text and "teardown" in text
    assert "sensitivity: not computed" in text


def test_a_limit_that_does_not_apply_to_gmem_is_left_out_of_its_run_and_said(capsys) -> None:
    """Side by side, gmem runs without the memory-lock limit (nothing of it is charged)
    and the output says so; alone, the same option is one line and exit status 2."""
    argv = ["simulate", "--strategy", "all", "--guest-size", "1GiB", "--pattern", "random",
            "--touch-fraction", "0.5", "--memlock-limit", "512MiB"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {s for s, run in out["runs"].items() if run["error"]} == {"upfront", "demand-v2"}
    assert out["runs"]["gmem"]["error"] is None and out["runs"]["gmem"]["pins"] == 0
    assert out["notes"] == ["gmem: memlock_limit not applied (pins nothing and is not "
                            "charged to RLIMIT_MEMLOCK)"]
    assert [(b["a"], b["b"]) for b in out["break_even"]] == [("demand", "gmem")]
    assert main([*argv]) == 0
    assert "note: gmem: memlock_limit not applied" in capsys.readouterr().out
    assert main(["simulate", "--strategy", "gmem", "--guest-size", "1GiB",
                 "--pattern", "random", "--memlock-limit", "512MiB"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "memlock_limit does not apply" in err


def test_sensitivity_searches_each_end_on_the_base_crossings_side_only() -> None:
    # The base crossing lies below the configuration's fraction: no end evaluates a
    # fraction above it (the slow lifecycles), and an end whose crossing moves past
    # it has none in the window and a flipped cheapest strategy.
    profile = load_profile().with_costs(clflush_page_ns=3000.0)
    cfg = config(touch_fraction=0.5)
    lc = A.Lifecycles(cfg, profile)
    seen: list[float] = []
    evaluate = lc._evaluate

    def spy(strategy, fraction, changes):
        if changes:
            seen.append(fraction)
        return evaluate(strategy, fraction, changes)

    lc._evaluate = spy
    flush = A.Varied("clflush_page_ns", "assumption", 3000.0, 150.0, 6000.0, "x0.05..x2")
    frame, base = A.sensitivity(lc, ("upfront", "demand"), [flush])
    assert base["break_even"] < 0.5 and base["searched"] == [0.0, 0.5]
    assert seen and max(seen) <= 0.5
    row = frame.iloc[0]
    # a cheap flush makes demand cheaper at 0.5 as well: no crossing below it
    assert row["cheaper_low"] == "demand" and np.isnan(row["break_even_low"])
    assert fresh_total(cfg, profile.with_costs(clflush_page_ns=150.0), "demand", 0.5) < \
        fresh_total(cfg, profile.with_costs(clflush_page_ns=150.0), "upfront", 0.5)
    assert 0.0 < row["break_even_high"] < base["break_even"]

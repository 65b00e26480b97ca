"""Model against ground truth: published boot times and the kvm backing (analysis.ground)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pinning.analysis.ground import (
    PUBLISHED_MODELS,
    boot_config,
    executed_profile,
    kvm_fit,
    kvm_ranking,
    kvm_vs_model,
    modelled_boot_s,
    published_vs_model,
)
from pinning.analysis.stats import PUBLISHED_BOOT
from pinning.model.config import BenchConfig
from pinning.model.costs import CostProfile, load_profile
from pinning.model.lifecycle import run_lifecycle

GiB = 1 << 30


@pytest.mark.parametrize("strategy", ["upfront", "demand-v2"])
def test_boot_startup_is_linear_in_guest_size(strategy: str) -> None:
    # the published slopes are set against the model's startup: per-page events, so exact
    one = run_lifecycle(boot_config(strategy, 1), load_profile())
    three = run_lifecycle(boot_config(strategy, 3), load_profile())
    assert three.events["startup"] == {k: 3 * v for k, v in one.events["startup"].items()}


def _doubled(profile: CostProfile) -> CostProfile:
    return replace(profile.with_costs(**{k: 2 * v for k, v in profile.costs.items()}),
                   name="doubled")


def test_published_vs_model_points_and_slopes() -> None:
    default = load_profile()
    points, slopes = published_vs_model([default, _doubled(default)])
    variants = sum(len(v) for v in PUBLISHED_MODELS.values())
    assert len(points) == 2 * variants * len(PUBLISHED_BOOT) and len(slopes) == 2 * variants
    # RFC v2's cover letter measured its own code: both demand variants sit on its column
    assert set(points[points.published_as == "demand"].strategy) == {"demand", "demand-v2"}
    for name, sub in points.groupby("profile"):
        # B0 is the one constant taken from the table: the 4 GB demand-v2 boot matches
        # it exactly, and is not counted as an error of the model's
        b0 = sub[(sub.strategy == "demand-v2") & (sub.guest_gb == 4)].iloc[0]
        assert math.isclose(b0.modelled_boot_s, b0.published_boot_s)
        assert np.isnan(b0.rel_error)
        assert (sub.b0_s == b0.b0_s).all(), name
        others = sub.drop(index=b0.name)
        assert others.rel_error.notna().all()
        assert np.allclose(others.modelled_boot_s,
                           others.b0_s + others.startup_s + others.boot_touch_s)
        assert np.allclose(others.rel_error, (others.modelled_boot_s - others.published_boot_s)
                           / others.published_boot_s)
    row = points[(points.strategy == "upfront") & (points.profile == "default")
                 & (points.guest_gb == 64)].iloc[0]
    assert row.published_boot_s == 12.17
    # one vCPU: the modelled boot is a sum of priced events, twice the costs twice it
    # (the spread of each fault's cost is drawn from the same seed)
    dbl = points[(points.strategy == "upfront") & (points.profile == "doubled")
                 & (points.guest_gb == 64)].iloc[0]
    assert math.isclose(dbl.startup_s + dbl.boot_touch_s,
                        2 * (row.startup_s + row.boot_touch_s), rel_tol=1e-9)
    # the slope is the least-squares fit of the modelled boots against size
    s = slopes.set_index(["strategy", "profile"])
    up = points[(points.strategy == "upfront") & (points.profile == "default")]
    fit = np.polyfit(up.guest_gb.to_numpy(float), up.modelled_boot_s.to_numpy(), 1)[0]
    assert math.isclose(s.loc[("upfront", "default"), "modelled_ms_per_gb"], fit * 1e3)
    assert 95 < s.loc[("upfront", "default"), "published_ms_per_gb"] < 100
    assert 5 < s.loc[("demand-v2", "default"), "published_ms_per_gb"] < 6


def test_published_boots_follow_the_variant_and_host() -> None:
    # the published posting ran a 5.17-era kernel on a coherent CPU; on a non-coherent
    # one every replaced page is flushed as well, so upfront's boot costs more
    default = load_profile()
    coherent = modelled_boot_s("upfront", 16, default)
    flushed = modelled_boot_s("upfront", 16, default, sme_coherent="no")
    assert flushed["startup_s"] > coherent["startup_s"]
    # RFC v1 takes a pin per 4 KiB page of a huge mapping, v2 one per unit: at 4 KiB
    # alike, so v1's boot is never cheaper
    v1 = modelled_boot_s("demand", 16, default)
    v2 = modelled_boot_s("demand-v2", 16, default)
    assert v1["touch_s"] >= v2["touch_s"]


def test_kvm_vs_model_pairs_measured_with_modelled() -> None:
    base = {"backing": "kvm", "strategy": "demand", "guest_size": GiB, "level": "4k",
            "vcpus": 1, "host": "warm", "cost_profile": "calibrated",
            "kvm_stats_pf_taken": 262145, "kvm_stats_exits": 262200,
            "kvm_pages_touched": 262144}
    df = pd.DataFrame([
        {**base, "family": "startup", "median_s": 0.002, "model_startup_ns": 1e6,
         "model_access_ns": np.nan},
        {**base, "family": "fault_storm", "median_s": 1.2, "model_startup_ns": 1e6,
         "model_access_ns": 1.5e9},
        {**base, "backing": "sim", "family": "fault_storm", "median_s": 0.01,
         "model_startup_ns": 1e6, "model_access_ns": 1.5e9},
    ])
    t = kvm_vs_model(df)
    assert list(t["phase"]) == ["touch all", "startup"]  # sim rows left out
    touch = t.iloc[0]
    assert math.isclose(touch.ns_per_page, 1.2e9 / 262144)
    assert math.isclose(touch.model_ns_per_page, 1.5e9 / 262144)
    assert math.isclose(touch.rel_error, (1.5 - 1.2) / 1.2)
    start = t.iloc[1]
    assert math.isclose(start.ns_per_page, 0.002e9 / 262144)
    assert touch.kvm_pf_taken == 262145


def test_kvm_vs_model_reruns_the_model_under_each_profile() -> None:
    default = load_profile()
    row = {"backing": "kvm", "strategy": "demand", "guest_size": 64 << 20, "level": "4k",
           "vcpus": 1, "host": "warm", "pattern": "sequential", "touch_fraction": 1.0,
           "cost_profile": "calibrated", "kvm_pages_touched": 16384, "mmu": "tdp"}
    df = pd.DataFrame([{**row, "family": "fault_storm", "median_s": 0.08}])
    t = kvm_vs_model(df, [default, _doubled(default)]).set_index("profile")
    assert list(t.index) == ["default", "doubled"]
    config = BenchConfig("fault_storm", "demand", 64 << 20)
    sev = run_lifecycle(config, default)
    assert math.isclose(t.loc["default", "modelled_sev_s"], sev.model_ns["access"] / 1e9)
    # what the plain guest executes: RFC v1's pins and CLFLUSHes are not among it
    plain = run_lifecycle(config, default.with_costs(pin_ns=0, unpin_ns=0, clflush_page_ns=0,
                                                     page_flush_ns=0, wbinvd_ns=0))
    assert math.isclose(t.loc["default", "modelled_s"], plain.model_ns["access"] / 1e9)
    assert t.loc["default", "modelled_s"] < t.loc["default", "modelled_sev_s"]
    # one vCPU: the modelled time is a sum of priced events, so twice the costs, twice it
    assert math.isclose(t.loc["doubled", "modelled_s"], 2 * t.loc["default", "modelled_s"],
                        rel_tol=1e-9)
    assert (t["measured_s"] == 0.08).all() and (t["compared_s"] == 0.08).all()


def test_executed_profile_prices_what_a_plain_guest_does() -> None:
    default = load_profile()
    up = executed_profile(default, "upfront", "2m")
    # mlock pins a 2 MiB THP at once: the model's 512 pins of it cost one pin
    assert up.costs["pin_ns"] == default.costs["pin_ns"] / 512
    assert up.costs["unpin_ns"] == default.costs["unpin_ns"] / 512
    assert executed_profile(default, "upfront", "4k").costs["pin_ns"] == default.costs["pin_ns"]
    for strategy in ("demand", "demand-v2"):  # a plain guest's faults pin nothing
        assert executed_profile(default, strategy, "4k").costs["pin_ns"] == 0.0
    for key in ("clflush_page_ns", "page_flush_ns", "wbinvd_ns"):
        assert up.costs[key] == 0.0
    assert up.costs["npf_exit_ns"] == default.costs["npf_exit_ns"] and up.name == "default"


def test_startup_compares_the_part_after_vm_creation() -> None:
    default = load_profile()
    row = {"backing": "kvm", "family": "startup", "guest_size": 64 << 20, "level": "4k",
           "vcpus": 1, "host": "warm", "pattern": "sequential", "touch_fraction": 1.0,
           "mmu": "shadow", "kvm_create_ns": 2e6, "kvm_first_insn_ns": 1e6}
    df = pd.DataFrame([{**row, "strategy": "upfront", "median_s": 0.043},
                       {**row, "strategy": "demand", "median_s": 0.0031}])
    t = kvm_vs_model(df, [default]).set_index("strategy")
    assert (t["vm_fixed_s"] == 0.003).all()
    assert math.isclose(t.loc["upfront", "compared_s"], 0.040)
    assert math.isclose(t.loc["upfront", "rel_error"],
                        (t.loc["upfront", "modelled_s"] - 0.040) / 0.040)
    # demand's startup pins nothing on a plain guest: nothing to compare
    assert t.loc["demand", "modelled_s"] == 0.0 and np.isnan(t.loc["demand", "rel_error"])
    fit = kvm_fit(kvm_vs_model(df, [default]), pd.DataFrame(), "default")
    assert fit["compared"] == 1 and fit["ranked"] == 0


def test_kvm_vs_model_models_the_mmu_the_guest_ran_on() -> None:
    default = load_profile()
    shadow_host = replace(default, name="shadow-host", host={**default.host, "mmu": "shadow"})
    row = {"backing": "kvm", "family": "fault_storm", "strategy": "upfront",
           "guest_size": 64 << 20, "level": "4k", "vcpus": 1, "host": "warm",
           "pattern": "sequential", "touch_fraction": 1.0, "median_s": 0.05}
    # a row from before the parameter: the MMU of the profile's host
    t = kvm_vs_model(pd.DataFrame([row]), [default, shadow_host]).set_index("profile")
    assert t.loc["default", "mmu"] == "tdp" and t.loc["shadow-host", "mmu"] == "shadow"
    shadow = run_lifecycle(BenchConfig("fault_storm", "upfront", 64 << 20, mmu="shadow"),
                           shadow_host)
    assert math.isclose(t.loc["shadow-host", "modelled_s"], shadow.model_ns["access"] / 1e9)
    # shadow paging maps a run of neighbours per fault: fewer faults, a different time
    assert t.loc["shadow-host", "modelled_s"] != t.loc["default", "modelled_s"]
    # the row's own parameter wins over the profile's host
    t = kvm_vs_model(pd.DataFrame([{**row, "mmu": "tdp"}]), [shadow_host])
    assert t.iloc[0]["mmu"] == "tdp"


def test_kvm_ranking_says_which_strategy_each_ranks_cheaper() -> None:
    def rows(strategy: str, measured: tuple[float, float], modelled: tuple[float, float]
             ) -> list[dict]:
        return [{"phase": phase, "strategy": strategy, "guest_size": GiB, "level": "4k",
                 "vcpus": 1, "host": "warm", "profile": "p", "ns_per_page": m,
                 "model_ns_per_page": mod}
                for phase, m, mod in zip(("startup", "touch all"), measured, modelled,
                                         strict=True)]
    table = pd.DataFrame(rows("upfront", (300, 100), (500, 50))
                         + rows("demand", (1, 500), (1, 600)))
    r = kvm_ranking(table).iloc[0]
    assert r.upfront_measured_ns_per_page == 400 and r.demand_modelled_ns_per_page == 601
    assert r.measured_cheaper == "upfront" and r.modelled_cheaper == "upfront" and r.agree
    flipped = kvm_ranking(pd.DataFrame(rows("upfront", (300, 300), (500, 50))
                                       + rows("demand", (1, 500), (1, 600)))).iloc[0]
    assert flipped.measured_cheaper == "demand" and not flipped.agree
    # a strategy with only one phase measured is not ranked
    assert kvm_ranking(table[table.phase == "startup"]).empty
    # guest_memfd's prefault is a variant of its own, ranked beside the others
    gmem = pd.DataFrame(rows("gmem", (0, 450), (0, 450)) + rows("gmem", (90, 200), (80, 250)))
    gmem["prefault"] = ["none", "none", "fallocate", "fallocate"]
    both = pd.concat([table.assign(prefault="none"), gmem], ignore_index=True)
    r = kvm_ranking(both).iloc[0]
    assert r["gmem (fallocate)_measured_ns_per_page"] == 290
    assert r.gmem_modelled_ns_per_page == 450
    assert r.measured_cheaper == "gmem (fallocate)" and r.modelled_cheaper == "gmem (fallocate)"


def test_report_sets_kvm_and_published_against_the_model(tmp_path) -> None:
    from pathlib import Path

    from pinning.analysis.report import write_report

    root = Path(__file__).resolve().parent.parent
    sample = root / "tests" / "data" / "ground-sample.json"  # 1 GiB kvm/real, from the ground run
    profile = root / "results" / "calibrated-reference.toml"
    written = write_report([sample], tmp_path / "r", profiles=[profile])
    assert "kvm_vs_model.png" in written
    md = (tmp_path / "r" / "report.md").read_text()
    published = md.split("## Model against published boot times", 1)[1].split("\n## ", 1)[0]
    assert "| upfront | default |" in published and "| upfront | calibrated |" in published
    kvm = md.split("## Real KVM guest against the model", 1)[1].split("\n## ", 1)[0]
    assert "![Real KVM guest vs model (calibrated profile)](kvm_vs_model.png)" in kvm
    assert "Under the calibrated profile, warm host:" in kvm
    # measured rows of both phases and strategies, each under both profiles, cold labelled
    for words in ("| touch all | calibrated | demand | none | 1 GiB | 4k | 1 | warm |",
                  "| startup | default | upfront | none | 1 GiB | 2m | 1 | warm |",
                  "| touch all | calibrated | upfront | none | 1 GiB | 4k | 1 | cold |"):
        assert words in kvm, words
    assert "Not shown" not in kvm


def test_report_without_kvm_results_says_how_to_get_them(tmp_path) -> None:
    from pathlib import Path

    from pinning.analysis.report import write_report

    sample = Path(__file__).resolve().parent / "data" / "quick-sample.json"
    write_report([sample], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "pinbench run --suite ground" in md
    assert not (tmp_path / "r" / "kvm_vs_model.png").exists()


def test_the_guests_stores_to_every_page_of_a_huge_unit_are_added() -> None:
    # the kvm guest writes every 4 KiB page; the model's pattern one page per 2 MiB unit
    default = load_profile()
    row = {"backing": "kvm", "family": "fault_storm", "strategy": "upfront",
           "guest_size": 64 << 20, "level": "2m", "vcpus": 2, "host": "warm",
           "pattern": "sequential", "touch_fraction": 1.0, "mmu": "tdp",
           "kvm_pages_touched": 16384, "median_s": 0.01}
    t = kvm_vs_model(pd.DataFrame([row]), [default]).iloc[0]
    config = BenchConfig("fault_storm", "upfront", 64 << 20, "2m", vcpus=2)
    model = run_lifecycle(config, executed_profile(default, "upfront", "2m"))
    stores = (16384 - 32) * default.costs["guest_touch_ns"] / 2  # two vCPUs' slices
    assert math.isclose(t.modelled_s, (model.model_ns["access"] + stores) / 1e9)

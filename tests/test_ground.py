"""Model against ground truth: published boot times and the kvm backing (analysis.ground)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pinning.analysis.ground import kvm_vs_model, published_vs_model, startup_events
from pinning.analysis.stats import PUBLISHED_BOOT, PUBLISHED_FIXED_S
from pinning.model.config import BenchConfig
from pinning.model.costs import load_profile
from pinning.model.lifecycle import run_lifecycle

GiB = 1 << 30


@pytest.mark.parametrize("strategy", ["upfront", "demand"])
def test_startup_events_are_linear_in_guest_size(strategy: str) -> None:
    # published_vs_model scales the 1 GiB events to the published sizes: that is exact
    one = startup_events(strategy)
    three = run_lifecycle(BenchConfig("startup", strategy, 3 * GiB), load_profile())
    assert three.events["startup"] == {k: 3 * v for k, v in one.items()}


def test_published_vs_model_points_and_slopes() -> None:
    default = load_profile()
    doubled = replace(default, name="doubled",
                      costs={k: 2 * v for k, v in default.costs.items()})
    points, slopes = published_vs_model([default, doubled])
    assert len(points) == 2 * 2 * len(PUBLISHED_BOOT) and len(slopes) == 4
    up = points[(points.strategy == "upfront") & (points.profile == "default")]
    # a point: published startup = total boot - the fixed boot; error relative to it
    row = up[up.guest_gb == 64].iloc[0]
    assert math.isclose(row.published_startup_s, 12.17 - PUBLISHED_FIXED_S)
    assert math.isclose(row.rel_error, (row.modelled_startup_s - row.published_startup_s)
                        / row.published_startup_s)
    # the 4 GB demand boot *is* the fixed part: no relative error there
    dem4 = points[(points.strategy == "demand") & (points.guest_gb == 4)]
    assert dem4.rel_error.isna().all()
    # the model is linear through 0, so its slope is its per-GB cost; twice the costs,
    # twice the slope; the published slope is the same for every profile (~98 ms/GB)
    s = slopes.set_index(["strategy", "profile"])
    assert math.isclose(s.loc[("upfront", "doubled"), "modelled_ms_per_gb"],
                        2 * s.loc[("upfront", "default"), "modelled_ms_per_gb"])
    assert 95 < s.loc[("upfront", "default"), "published_ms_per_gb"] < 100
    per_gb_ms = row.modelled_startup_s / 64 * 1e3
    assert math.isclose(s.loc[("upfront", "default"), "modelled_ms_per_gb"], per_gb_ms)


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
    doubled = replace(default, name="doubled",
                      costs={k: 2 * v for k, v in default.costs.items()})
    row = {"backing": "kvm", "strategy": "demand", "guest_size": 64 << 20, "level": "4k",
           "vcpus": 1, "host": "warm", "pattern": "sequential", "touch_fraction": 1.0,
           "cost_profile": "calibrated", "kvm_pages_touched": 16384}
    df = pd.DataFrame([{**row, "family": "fault_storm", "median_s": 0.08}])
    t = kvm_vs_model(df, [default, doubled]).set_index("profile")
    assert list(t.index) == ["default", "doubled"]
    expected = run_lifecycle(BenchConfig("fault_storm", "demand", 64 << 20), default)
    assert math.isclose(t.loc["default", "modelled_s"], expected.model_ns["access"] / 1e9)
    # one vCPU: the modelled time is a sum of priced events, so twice the costs, twice it
    assert math.isclose(t.loc["doubled", "modelled_s"], 2 * t.loc["default", "modelled_s"])
    assert (t["measured_s"] == 0.08).all()


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
    assert "![Real KVM guest vs model](kvm_vs_model.png)" in kvm
    # measured rows of both phases and strategies, each under both profiles, cold labelled
    for words in ("| touch all | calibrated | demand | 1 GiB | 4k | 1 | warm |",
                  "| startup | default | upfront | 1 GiB | 2m | 1 | warm |",
                  "| touch all | calibrated | upfront | 1 GiB | 4k | 1 | cold |"):
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

"""pinning.analysis.stats: scaling exponents with CIs, break-even, latency table, published data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from pinning.analysis.results import load_results
from pinning.analysis.stats import (
    PUBLISHED_BOOT,
    break_even,
    latency_table,
    mannwhitney_min_p,
    pair_key,
    published_k,
    scaling_fit,
    shift_to_significance,
    sign_test_units,
    units_needed,
)
from pinning.model.names import InputError

SAMPLE = Path(__file__).parent / "data" / "quick-sample.json"
SIZES = (1, 2, 4, 8, 16, 32, 64)


def startup_values(k: dict[str, float], *, sigma: float = 0.05, n: int = 7,
                   seed: int = 1) -> pd.DataFrame:
    """Per-value frame: time = a * size^k[strategy] with lognormal noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for strategy, kk in k.items():
        for gib in SIZES:
            truth = 0.01 * gib ** kk
            for v in truth * rng.lognormal(0.0, sigma, n):
                rows.append({"family": "startup", "strategy": strategy, "level": "4k",
                             "vcpus": 1, "guest_gib": float(gib), "value_s": v,
                             "median_s": truth, "model_measured_ns": truth * 1e9})
    return pd.DataFrame(rows)


def test_bootstrap_recovers_known_exponents() -> None:
    df = startup_values({"upfront": 1.0, "demand": 0.0})
    fit = scaling_fit(df, metric="measured").set_index("strategy")
    for strategy, k in (("upfront", 1.0), ("demand", 0.0)):
        row = fit.loc[strategy]
        assert row["k_lo"] <= k <= row["k_hi"], row
        assert abs(row["k"] - k) < 0.03
        assert row["k_hi"] - row["k_lo"] < 0.1
        assert row["n_sizes"] == len(SIZES)
        assert row["ci"].startswith("bootstrap")
    assert fit.loc["upfront", "a"] == pytest.approx(0.01, rel=0.1)


def test_bootstrap_is_deterministic_and_wider_with_more_noise() -> None:
    df = startup_values({"upfront": 1.0})
    a = scaling_fit(df, n_boot=500, seed=3)
    b = scaling_fit(df, n_boot=500, seed=3)
    pd.testing.assert_frame_equal(a, b)
    noisy = scaling_fit(startup_values({"upfront": 1.0}, sigma=0.3), n_boot=500)
    assert (noisy["k_hi"] - noisy["k_lo"]).iloc[0] > (a["k_hi"] - a["k_lo"]).iloc[0]


def test_bootstrap_ci_covers_true_k_most_of_the_time() -> None:
    hits = 0
    for seed in range(20):
        fit = scaling_fit(startup_values({"upfront": 0.5}, sigma=0.2, seed=seed), n_boot=400)
        hits += int(fit["k_lo"].iloc[0] <= 0.5 <= fit["k_hi"].iloc[0])
    assert hits >= 17  # nominal 95 % (97 of 100 seeds when checked)


def test_modelled_fit_exact_and_t_interval() -> None:
    df = startup_values({"upfront": 1.0, "demand": 0.0}, sigma=0.0, n=1)
    fit = scaling_fit(df, metric="modelled").set_index("strategy")
    assert fit.loc["upfront", "k"] == pytest.approx(1.0)
    assert fit.loc["upfront", "k_lo"] == pytest.approx(1.0)
    assert fit.loc["demand", "k"] == pytest.approx(0.0, abs=1e-12)
    assert fit.loc["upfront", "ci"] == "t-interval on residuals"
    noisy = startup_values({"upfront": 1.0}, sigma=0.1, n=1, seed=5)
    row = scaling_fit(noisy, metric="modelled").iloc[0]
    assert row["k_lo"] < 1.0 < row["k_hi"]


def test_zero_modelled_time_is_constant_not_a_crash() -> None:
    df = startup_values({"demand": 0.0}, sigma=0.0, n=1).assign(model_measured_ns=0.0)
    row = scaling_fit(df, metric="modelled").iloc[0]
    assert row["k"] == 0.0
    assert "0 at every size" in row["note"]


def test_needs_two_sizes() -> None:
    df = startup_values({"upfront": 1.0})
    one = df[df["guest_gib"] == 4]
    with pytest.raises(InputError, match="at least 2 guest sizes"):
        scaling_fit(one)
    with pytest.raises(InputError, match="no startup benchmarks"):
        scaling_fit(df.assign(family="lifecycle"))
    with pytest.raises(InputError, match="metric"):
        scaling_fit(df, metric="guessed")


def test_levels_are_separate_series_and_filterable() -> None:
    df = pd.concat([startup_values({"upfront": 1.0}),
                    startup_values({"upfront": 0.5}).assign(level="2m")])
    fit = scaling_fit(df, n_boot=200).set_index("level")
    assert fit.loc["4k", "k"] == pytest.approx(1.0, abs=0.05)
    assert fit.loc["2m", "k"] == pytest.approx(0.5, abs=0.05)
    only = scaling_fit(df, level="2m", n_boot=200)
    assert list(only["level"]) == ["2m"]


def test_per_benchmark_frame_fits_medians_without_ci() -> None:
    df = startup_values({"upfront": 1.0}, n=1).drop(columns="value_s")
    row = scaling_fit(df).iloc[0]
    assert row["k"] == pytest.approx(1.0, abs=0.1)
    assert math.isnan(row["k_lo"])


def lifecycle(costs: dict[str, tuple[float, float]], touches=(0.25, 0.5, 0.75, 1.0)
              ) -> pd.DataFrame:
    """cost = c0 + c1 * touch (seconds) per strategy, as modelled ns and measured s."""
    rows = []
    for strategy, (c0, c1) in costs.items():
        for t in touches:
            cost = c0 + c1 * t
            rows.append({"family": "lifecycle", "strategy": strategy, "guest_size": 8 << 30,
                         "guest_gib": 8.0, "level": "4k", "vcpus": 1, "pattern": "random",
                         "layout": "slices", "touch_fraction": t, "median_s": cost,
                         "model_total_ns": cost * 1e9})
    return pd.DataFrame(rows)


def test_break_even_finds_known_crossing() -> None:
    df = lifecycle({"upfront": (2.0, 1.0), "demand": (0.0, 4.0)})  # equal at t = 2/3
    for metric in ("modelled", "measured"):
        be = break_even(df, metric=metric)
        assert len(be) == 4
        assert be["crossing"].iloc[0] == pytest.approx(2 / 3)
        assert (be["first"] == "upfront").all() and (be["second"] == "demand").all()
        assert be["first_s"].tolist() == pytest.approx([2.25, 2.5, 2.75, 3.0])
        assert "crosses at 0.667" in be["note"].iloc[0]


def test_break_even_without_crossing_says_so() -> None:
    be = break_even(lifecycle({"upfront": (5.0, 1.0), "demand": (0.0, 4.0)}))
    assert math.isnan(be["crossing"].iloc[0])
    assert "no crossing in 0.25-1: demand is cheaper" in be["note"].iloc[0]


def test_break_even_needs_both_strategies_and_two_touches() -> None:
    with pytest.raises(InputError, match="two strategies"):
        break_even(lifecycle({"upfront": (1.0, 1.0)}))
    with pytest.raises(InputError, match="two strategies"):
        break_even(lifecycle({"upfront": (1.0, 1.0), "demand": (0.0, 2.0)}, touches=(0.5,)))
    with pytest.raises(InputError, match="no lifecycle benchmarks"):
        break_even(lifecycle({"upfront": (1.0, 1.0)}).assign(family="startup"))


@pytest.fixture(scope="module")
def sample() -> pd.DataFrame:
    return load_results(SAMPLE)


def test_sample_fits_and_break_even(sample: pd.DataFrame) -> None:
    modelled = scaling_fit(sample, metric="modelled").set_index(["strategy", "level"])
    assert modelled.loc[("upfront", "4k"), "k"] == pytest.approx(1.0, abs=1e-6)
    assert modelled.loc[("demand", "4k"), "k"] == 0.0  # modelled demand startup is 0
    values = load_results(SAMPLE, values=True)
    measured = scaling_fit(values, n_boot=300).set_index(["strategy", "level"])
    assert measured.loc[("upfront", "4k"), "k"] > 0.8
    assert measured.loc[("demand", "4k"), "k"] < 0.5
    be = break_even(sample)
    assert sorted(be["touch_fraction"]) == [0.05, 0.25, 0.5, 1.0]
    assert 0.5 < be["crossing"].iloc[0] < 1.0


def test_latency_table(sample: pd.DataFrame) -> None:
    t = latency_table(sample)
    assert len(t) == 8
    assert (t["p99_ns"] >= t["p50_ns"]).all()
    assert t["lock_wait_share"].between(0, 1).all()
    demand = t[t["strategy"] == "demand"]
    assert (demand["p50_extra_ns"] > 0).all()
    assert t.loc[t["strategy"] == "upfront", "p50_extra_ns"].isna().all()
    assert set(t["source"]) == {"modelled"}


def test_published_table_and_k() -> None:
    assert PUBLISHED_BOOT["guest_gb"].tolist() == [4, 16, 64, 128, 192]
    assert PUBLISHED_BOOT["upfront_s"].iloc[-1] == 24.56
    k = published_k().set_index("strategy")
    assert k.loc["upfront", "k_lo"] < 1.0 < k.loc["upfront", "k_hi"] + 0.05
    assert k.loc["demand", "k"] < k.loc["upfront", "k"]
    total = published_k(subtract_fixed=False).set_index("strategy")
    assert total.loc["demand", "k"] < 0.1  # a fixed boot dominates


def test_pair_key() -> None:
    name = "fault_storm/demand/8GiB/4k/4vcpu/random"
    assert pair_key(name) == "fault_storm/*/8GiB/4k/4vcpu/random"
    assert pair_key("other") == "other"


# ---- what a comparison can detect -------------------------------------------------------------
@pytest.mark.parametrize(("n1", "n2"), [(1, 1), (1, 5), (3, 3), (4, 4), (5, 5), (20, 3),
                                        (60, 6), (8, 8)])
def test_smallest_mann_whitney_p_is_complete_separation(n1: int, n2: int) -> None:
    # with a side of at most 8, scipy's test is exact: 2 / C(n1 + n2, n1), at most 1
    assert math.isclose(mannwhitney_min_p(n1, n2), min(1.0, 2 / math.comb(n1 + n2, n1)))
    assert math.isclose(mannwhitney_min_p(n2, n1), mannwhitney_min_p(n1, n2))
    assert mannwhitney_min_p(0, n2) == 1.0


def test_smallest_p_beyond_8_a_side_is_scipys_approximation() -> None:
    # above 8 a side scipy uses the normal approximation, whose floor is higher than the
    # exact test's: 9 against 9 cannot go below 8 against 8
    exact_9 = 2 / math.comb(18, 9)
    assert mannwhitney_min_p(9, 9) > mannwhitney_min_p(8, 8) > exact_9
    rng = np.random.default_rng(0)
    for n in (9, 12, 30):  # no sample of n against n beats it
        for _ in range(20):
            x, y = rng.normal(size=n), rng.normal(size=n) + 10 * rng.random()
            assert sps.mannwhitneyu(y, x).pvalue >= mannwhitney_min_p(n, n) * (1 - 1e-12)


@pytest.mark.parametrize("m", [1, 2, 7, 12, 16, 36, 63, 100])
def test_processes_needed_for_holm_over_m(m: int) -> None:
    expected = 1
    while 2 / math.comb(2 * expected, expected) >= 0.05 / m:
        expected += 1
    assert expected <= 8  # the exact test's region, where the formula is scipy's test
    assert units_needed(0.05 / m) == expected


def test_processes_needed_skips_the_approximations_gap() -> None:
    # 8 a side reach 0.0003 (exact 0.000155) but 9 do not (approximation 0.00041): "needs
    # >= n" must hold for every larger n, so the answer is the first n past the gap
    n = units_needed(0.0003)
    assert n == 10
    assert all(mannwhitney_min_p(k, k) < 0.0003 for k in range(n, 40))
    assert mannwhitney_min_p(9, 9) >= 0.0003
    with pytest.raises(InputError):
        units_needed(0.0)


def test_sign_test_units() -> None:
    assert sign_test_units(0.05) == 6  # 2/2**6 = 0.031 < 0.05 <= 2/2**5
    assert sign_test_units(0.01) == 8  # 2/2**8 = 0.0078 < 0.01 <= 2/2**7
    with pytest.raises(InputError):
        sign_test_units(1.5)


@pytest.mark.parametrize("seed", range(6))
def test_shift_to_significance_is_the_boundary(seed: int) -> None:
    # just past the shift, head + shift is significantly above base; just before, it is not
    rng = np.random.default_rng(seed)
    n1, n2 = rng.integers(4, 30, size=2)
    base, head = rng.normal(0, 0.1, n1), rng.normal(0, 0.1, n2)
    level = 0.05 / rng.integers(1, 20)
    s = shift_to_significance(base, head, level)
    assert math.isfinite(s) and s >= 0

    def flagged(shift: float) -> bool:
        res = sps.mannwhitneyu(head + shift, base, alternative="two-sided")
        return bool(res.statistic > n1 * n2 / 2 and res.pvalue < level)

    assert flagged(s + 1e-9)
    if s > 1e-9:
        assert not flagged(s - 1e-9)
    assert s < shift_to_significance(base, head, level / 10)  # stricter: further


def test_shift_to_significance_without_enough_units() -> None:
    # 3 against 3 can never give p < 0.05 (0.1 at best), however far apart
    assert math.isinf(shift_to_significance(np.zeros(3), np.arange(3.0), 0.05))
    assert math.isinf(shift_to_significance(np.array([]), np.zeros(5), 0.05))
    # no spread at all: any shift separates them
    assert shift_to_significance(np.zeros(5), np.zeros(5), 0.05) == 0.0

"""Statistics across seeds: intervals that cover, paired tests, Holm, ranking stability, steps-to-target."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from stabench.records import stats


def test_t_interval_is_mean_plus_minus_t_times_standard_error():
    x = [1.0, 2.0, 4.0]
    mean, lo, hi = stats.t_interval(x)
    half = sps.t.ppf(0.975, 2) * np.std(x, ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(7 / 3)
    assert lo == pytest.approx(7 / 3 - half)
    assert hi == pytest.approx(7 / 3 + half)
    assert (lo, hi) == pytest.approx(sps.t.interval(0.95, 2, loc=mean, scale=sps.sem(x)))


def test_t_interval_of_one_value_or_a_diverged_seed():
    assert stats.t_interval([3.0])[0] == 3.0
    assert math.isnan(stats.t_interval([3.0])[1])
    assert stats.t_interval([1.0, math.inf]) == (math.inf, math.inf, math.inf)
    assert stats.t_interval([1.0, -math.inf]) == (-math.inf, -math.inf, -math.inf)  # a maximised metric's
    assert all(map(math.isnan, stats.t_interval([])))


def test_summary_has_the_median_beside_the_mean():
    s = stats.summarize([1.0, 2.0, 9.0])
    assert (s.n, s.mean, s.median, s.finite_mean) == (3, 4.0, 2.0, 4.0)
    assert s.std == pytest.approx(np.std([1.0, 2.0, 9.0], ddof=1))
    diverged = stats.summarize([1.0, 2.0, math.inf])
    assert (diverged.mean, diverged.median, diverged.std, diverged.finite_mean) == (math.inf, 2.0, None, 1.5)
    none = stats.summarize([])
    assert none.n == 0 and math.isnan(none.mean) and math.isnan(none.median) and none.finite_mean is None


def test_t_interval_covers_95_percent_at_n3_where_the_bootstrap_does_not():
    rng = np.random.default_rng(0)
    samples = rng.normal(10.0, 2.0, size=(2000, 3))
    t_cover = np.mean([lo <= 10.0 <= hi for _, lo, hi in map(stats.t_interval, samples)])
    boot = [np.percentile(rng.choice(s, size=(500, 3)).mean(1), [2.5, 97.5]) for s in samples[:500]]
    boot_cover = np.mean([lo <= 10.0 <= hi for lo, hi in boot])
    assert 0.93 < t_cover < 0.97
    assert boot_cover < 0.85  # why the leaderboard no longer uses a percentile bootstrap at small n


def test_paired_delta_matches_scipys_paired_t_test():
    a, b = [5.0, 6.1, 7.3, 5.5], [5.5, 6.0, 8.0, 6.1]
    d = stats.paired_delta(a, b)
    assert d.p == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert d.n == 4
    assert (d.lo < 0 < d.hi) == (d.p >= 0.05)


def test_paired_delta_without_a_test():
    assert math.isnan(stats.paired_delta([1.0], [2.0]).p)
    assert math.isnan(stats.paired_delta([1.0, math.inf], [2.0, 3.0]).p)
    assert stats.paired_delta([2.0, 3.0], [1.0, 2.0]).p == 0.0  # a constant difference
    assert stats.paired_delta([1.0, 2.0], [1.0, 2.0]).p == 1.0


def test_sign_flip_test_enumerates_every_sign_assignment():
    # four nonzero differences, all negative: 2 of the 16 assignments reach |mean| 0.4 (all -, all +)
    d = [-1.0] * 4 + [0.0] * 6
    assert stats.sign_flip_test(d) == pytest.approx(0.125)
    assert stats.paired_delta(d, [0.0] * 10).p == pytest.approx(0.0368, abs=1e-4)  # the t-test says < 0.05
    # [1, 2, 3]: |sum| >= 6 only for all + and all -, so 2/8; [1, 1, -1]: |sum| >= 1 for all 8
    assert stats.sign_flip_test([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    assert stats.sign_flip_test([1.0, 1.0, -1.0]) == 1.0
    # in exact arithmetic 14 of 16 assignments reach |sum| 0.6; in floats two of the ties land 1e-16 below it
    assert stats.sign_flip_test([0.1, 0.9, 0.6, -1.0]) == pytest.approx(14 / 16)
    assert stats.sign_flip_test([0.0, 0.0]) == 1.0
    assert stats.sign_flip_test([1.0] * 20) == 2 / 2**20  # the largest exact case
    assert math.isnan(stats.sign_flip_test([]))
    assert math.isnan(stats.sign_flip_test([1.0, math.inf]))


def test_sign_flip_test_above_twenty_differences_is_seeded_monte_carlo():
    d = [1.0] * 25  # exact p = 2 / 2^25; Monte Carlo's floor is 1 / (1 + draws)
    assert stats.sign_flip_test(d, draws=1000) == pytest.approx(1 / 1001)
    rng = np.random.default_rng(1)
    noisy = list(rng.normal(0.3, 1.0, 30))
    p = stats.sign_flip_test(noisy, draws=20_000)
    assert p == stats.sign_flip_test(noisy, draws=20_000)  # deterministic
    assert p == pytest.approx(sps.ttest_1samp(noisy, 0.0).pvalue, abs=0.05)  # close to the t-test at n = 30


def test_geometric_mean_ratio_is_exp_of_the_mean_log_ratio_interval():
    ratio, lo, hi = stats.geometric_mean_ratio([0.0, math.log(4.0)])  # ratios 1 and 4
    half = sps.t.ppf(0.975, 1) * np.std([0.0, math.log(4.0)], ddof=1) / math.sqrt(2)
    assert ratio == pytest.approx(2.0)  # sqrt(1 * 4)
    assert (lo, hi) == pytest.approx((2.0 * math.exp(-half), 2.0 * math.exp(half)))
    assert stats.geometric_mean_ratio([math.log(0.5)] * 3) == pytest.approx((0.5, 0.5, 0.5))
    assert stats.geometric_mean_ratio([math.log(3.0)], level=0.9)[0] == pytest.approx(3.0)
    assert all(map(math.isnan, stats.geometric_mean_ratio([0.0, -math.inf])))


def test_tied_ranks_where_intervals_overlap():
    assert stats.tied_ranks([(1.0, 2.0), (1.5, 3.0), (4.0, 5.0)]) == [1, 1, 3]
    assert stats.tied_ranks([(1.0, 2.0), (1.9, 3.0), (2.9, 4.0)]) == [1, 1, 2]  # no chaining
    assert stats.tied_ranks([(1.0, 2.0), (6.0, 6.0), (math.inf, math.inf)]) == [1, 2, 3]  # a point, a diverged
    assert stats.tied_ranks([(1.0, 2.0), (math.nan, math.nan)]) == [1, 1]  # nan: no order
    assert stats.tied_ranks([(4.0, 5.0), (1.0, 2.0)], "maximize") == [1, 2]


def test_holm_on_a_textbook_example():
    p = [0.01, 0.04, 0.03, 0.005]  # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06 -> stop
    assert stats.holm(p) == [True, False, False, True]
    assert stats.holm_adjusted(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_ignores_missing_tests():
    assert stats.holm([math.nan, 0.04]) == [False, True]  # one real test: no correction


def test_small_n_flag():
    assert stats.small_n(4)
    assert not stats.small_n(5)


def test_kendall_tau_from_disjoint_seed_halves():
    same = {
        "a": {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0},
        "b": {0: 2.0, 1: 2.0, 2: 2.0, 3: 2.0},
        "c": dict.fromkeys(range(4), 3.0),
    }
    flipped = {
        "a": {0: 1.0, 1: 3.0, 2: 1.0, 3: 3.0},
        "b": dict.fromkeys(range(4), 2.0),
        "c": {0: 3.0, 1: 1.0, 2: 3.0, 3: 1.0},
    }
    assert stats.kendall_tau_halves(same, min_configs=3) == pytest.approx(1.0)
    assert stats.kendall_tau_halves(flipped, min_configs=3) == pytest.approx(-1.0)
    assert stats.kendall_tau_halves({"a": {0: 1.0, 1: 2.0}, "b": {0: 2.0, 1: 1.0}}) is None
    assert stats.kendall_tau_halves(same) is None  # 3 configs: below TAU_MIN_CONFIGS
    five = {h: dict.fromkeys(range(4), float(v)) for v, h in enumerate("abcde")}
    five["e"][1] = math.inf  # a diverged seed ranks its config last in that half, in either direction:
    assert stats.kendall_tau_halves(five) == pytest.approx(1.0)  # e is last in both halves when minimised
    assert stats.kendall_tau_halves(five, direction="maximize") == pytest.approx(0.2)  # first, then last


def test_steps_to_target_interpolates_between_eval_points():
    assert stats.steps_to_target([100, 200, 300], [5.0, 3.0, 1.0], 2.0) == pytest.approx(250.0)
    assert stats.steps_to_target([100, 200, 300], [5.0, 3.0, 2.5], 2.0) == math.inf
    assert stats.steps_to_target([100, 200], [1.0, 0.5], 2.0) == 100.0


def test_steps_to_target_of_a_maximised_metric():
    assert stats.steps_to_target([100, 200, 300], [0.1, 0.3, 0.5], 0.4, "maximize") == pytest.approx(250.0)
    assert stats.steps_to_target([100, 200, 300], [0.1, 0.3, 0.35], 0.4, "maximize") == math.inf
    assert stats.steps_to_target([100, 200, 300], [0.1, 0.3, 0.35], 0.4) == 100.0  # minimised, 0.1 <= 0.4 at once


def test_every_baseline_seed_reaches_its_target():
    curves = [[9.0, 5.0, 3.0], [8.0, 4.0, 3.5], [9.5, 6.0, 2.8]]
    target = stats.target_from_baseline([c[-1] for c in curves])
    assert target == 3.5
    assert all(math.isfinite(stats.steps_to_target([1, 2, 3], c, target)) for c in curves)
    assert math.isnan(stats.target_from_baseline([3.0, math.inf]))
    rising = [[0.1, 0.5, 0.7], [0.2, 0.4, 0.6]]
    target = stats.target_from_baseline([c[-1] for c in rising], "maximize")
    assert target == 0.6  # the worst when higher is better: the smallest
    assert all(math.isfinite(stats.steps_to_target([1, 2, 3], c, target, "maximize")) for c in rising)
    assert math.isnan(stats.target_from_baseline([0.6, -math.inf], "maximize"))


def test_speedup_and_median_treat_a_miss_as_infinity():
    assert stats.speedup(300.0, 200.0) == pytest.approx(1.5)
    assert stats.speedup(300.0, math.inf) == 0.0
    assert stats.speedup(math.inf, 200.0) == math.inf
    assert math.isnan(stats.speedup(math.inf, math.inf))
    assert stats.median_with_inf([100.0, math.inf]) == math.inf
    assert stats.median_with_inf([100.0, 200.0, math.inf]) == 200.0
    assert stats.median_with_inf([1.0, math.nan, 3.0]) == 2.0

"""Statistics across seeds for leaderboards and the validation suite: Student-t intervals, per-config summaries,
paired deltas and the sign-flip test, Holm's correction, ranking stability and tied ranks, geometric-mean ratios,
and steps-to-target with AlgoPerf's conventions (a run that misses the target takes infinity).

Numbers in, numbers out. `direction` is "minimize" or "maximize" (a metric's registered direction). A diverged
seed counts as the worst value (+inf when minimised, -inf when maximised): a mean with an infinite value is that
infinity with a degenerate interval; a paired delta with an infinite side has no test (nan p): the leaderboard
counts diverged seeds separately and ranks such configs last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

SMALL_N = 5  # below this many seeds a row is flagged: intervals are wide and rankings fragile
LEVEL = 0.95
TAU_MIN_CONFIGS = 5  # Kendall tau over fewer configs takes a handful of values: it cannot say much
TAU_MIN_SEEDS = 4  # two halves of at least 2 seeds each
SIGN_FLIP_EXACT_MAX = 20  # up to 2^20 sign assignments are enumerated; above, Monte Carlo
SIGN_FLIP_DRAWS = 100_000


def sign(direction: str) -> float:
    """+1 for "minimize", -1 for "maximize": multiplying by it makes lower better in both directions."""
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', not {direction!r}")
    return 1.0 if direction == "minimize" else -1.0


def small_n(n: int) -> bool:
    """Fewer seeds than SMALL_N."""
    return n < SMALL_N


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student-t interval of the mean; (mean, nan, nan) for one value, nan for none; the
    infinity three times when a value is infinite (+inf, or -inf for a maximised metric's diverged seed)."""
    x = np.asarray(values, dtype=np.float64)
    if not len(x):
        return math.nan, math.nan, math.nan
    if not np.all(np.isfinite(x)):
        mean = float(x.mean())
        return mean, mean, mean
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Summary:
    """One metric over a config's seeds: how many values, their mean, sample std (None with one value or an
    infinite one), the t-interval of the mean, the median (robust to one diverged seed), and the mean of the
    finite values (it orders configs whose mean is infinite)."""

    n: int
    mean: float
    std: float | None
    lo: float
    hi: float
    median: float
    finite_mean: float | None


def summarize(values: list[float], level: float = LEVEL) -> Summary:
    """The Summary of `values` (one per seed; an infinite value is a diverged seed, nan for none)."""
    x = np.asarray(values, dtype=np.float64)
    finite = x[np.isfinite(x)]
    mean, lo, hi = t_interval(list(x), level)
    return Summary(
        n=len(x),
        mean=mean,
        std=float(np.std(finite, ddof=1)) if len(finite) == len(x) > 1 else None,
        lo=lo,
        hi=hi,
        median=float(np.median(x)) if len(x) else math.nan,
        finite_mean=float(np.mean(finite)) if len(finite) else None,
    )


@dataclass(frozen=True)
class PairedDelta:
    """a - b over paired seeds: the mean, its t-interval, the two-sided paired t-test p-value, and n."""

    mean: float
    lo: float
    hi: float
    p: float
    n: int


def paired_delta(a: list[float], b: list[float], level: float = LEVEL) -> PairedDelta:
    """The paired difference a - b (same seeds, same order). No test (nan p) with fewer than 2 pairs or an
    infinite value; differences without spread give the point as interval and p = 0 (or 1 when all are 0)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n == 0 or not np.all(np.isfinite(d)):
        mean = float(np.mean(d)) if n and not np.any(np.isnan(d)) else math.nan
        return PairedDelta(mean, math.nan, math.nan, math.nan, n)
    mean, lo, hi = t_interval(list(d), level)
    if n < 2:
        return PairedDelta(mean, lo, hi, math.nan, n)
    if float(d.std(ddof=1)) == 0.0:
        return PairedDelta(mean, mean, mean, 1.0 if mean == 0 else 0.0, n)
    return PairedDelta(mean, lo, hi, float(sps.ttest_1samp(d, 0.0).pvalue), n)


def sign_flip_test(differences: list[float], draws: int = SIGN_FLIP_DRAWS, seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip) test that the mean difference is 0, without the t-test's normality.

    p = the share of sign assignments whose |mean| is at least the observed |mean| (up to a relative 1e-9, so
    rounding never drops the observed assignment itself). Zero differences are left out: flipping them changes
    no mean, so the share is the same. Exact, over all 2^n assignments, for n <= SIGN_FLIP_EXACT_MAX nonzero
    differences; above, Monte Carlo over `draws` assignments from a fixed `seed` (deterministic), with
    p = (1 + hits) / (1 + draws). nan for no differences or a non-finite one; 1.0 when all are 0.
    Example: four -1 and six 0 give p = 2/16 = 0.125 (the paired t-test says 0.037)."""
    d = np.asarray(differences, dtype=np.float64)
    if not len(d) or not np.all(np.isfinite(d)):
        return math.nan
    d = d[d != 0]
    if not len(d):
        return 1.0
    threshold = abs(d.sum()) - 1e-9 * np.abs(d).sum()  # sums compare like means: n is the same throughout
    if len(d) <= SIGN_FLIP_EXACT_MAX:
        sums = np.zeros(1)
        for x in d:  # every assignment's sum, doubling per difference
            sums = np.concatenate([sums + x, sums - x])
        return float(np.mean(np.abs(sums) >= threshold))
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, draws, 10_000):  # in chunks: 10,000 x n signs at a time
        signs = rng.choice([-1.0, 1.0], size=(min(10_000, draws - start), len(d)))
        hits += int(np.sum(np.abs(signs @ d) >= threshold))
    return (1 + hits) / (1 + draws)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p for paired binary outcomes: b and c are the discordant pairs (only the control's
    run failed; only the treatment's did). nan without discordant pairs."""
    return float(sps.binomtest(b, b + c, 0.5).pvalue) if b + c else math.nan


def holm_adjusted(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values; nan p-values stay nan and do not count towards the number of tests."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m, out, running = len(finite), [math.nan] * len(pvalues), 0.0
    for k, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


def holm(pvalues: list[float], alpha: float = 0.05) -> list[bool]:
    """Which tests stay significant at family-wise level `alpha` under Holm's step-down correction."""
    return [not math.isnan(p) and p <= alpha for p in holm_adjusted(pvalues)]


def geometric_mean_ratio(log_ratios: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(ratio, lo, hi): the geometric mean of per-seed ratios and its interval, exp of the Student-t interval of
    the mean log ratio (ratios multiply, so their logs are what averages); lo = hi = nan for one ratio, all nan
    for none or a non-finite log ratio (a ratio of 0 or infinity)."""
    x = np.asarray(log_ratios, dtype=np.float64)
    if not len(x) or not np.all(np.isfinite(x)):
        return math.nan, math.nan, math.nan
    mean, lo, hi = t_interval(list(x), level)
    return math.exp(mean), math.exp(lo), math.exp(hi)


def kendall_tau_halves(
    values: dict[str, dict[int, float]],
    min_seeds: int = TAU_MIN_SEEDS,
    min_configs: int = TAU_MIN_CONFIGS,
    direction: str = "minimize",
) -> float | None:
    """Kendall tau between the config rankings from two disjoint halves of the seeds (alternate seeds), each
    config ranked by its mean in that half (a diverged seed ranks worst); None below `min_seeds` seeds or
    `min_configs` configs with values in both halves."""
    seeds = sorted({s for per_seed in values.values() for s in per_seed})
    if len(seeds) < min_seeds:
        return None
    better = sign(direction)
    halves = (set(seeds[0::2]), set(seeds[1::2]))
    means: list[list[float]] = [[], []]
    for per_seed in values.values():
        parts = [[v for s, v in per_seed.items() if s in h] for h in halves]
        if all(parts):
            for side, part in zip(means, parts):
                side.append(better * float(np.mean(part)) if np.all(np.isfinite(part)) else math.inf)
    if len(means[0]) < max(2, min_configs):
        return None
    ranks = [sps.rankdata(side) for side in means]  # inf sorts last; ties share a rank
    tau = sps.kendalltau(*ranks).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


def tied_ranks(intervals: list[tuple[float, float]], direction: str = "minimize") -> list[int]:
    """Ranks that claim no more than the intervals show: a row's rank is 1 + the number of rows whose interval
    lies entirely on the better side of its own (below it when minimised). Rows whose intervals overlap share
    what they can, without chaining (1, 1, 2 for [1, 2], [1.9, 3], [2.9, 4]: only the first is clearly better
    than the third). Pass a one-seed row's point as (value, value) and a diverged one's infinity likewise; a nan
    bound is clearly better or worse than nothing."""
    s = sign(direction)
    oriented = [tuple(sorted((s * lo, s * hi))) for lo, hi in intervals]

    def clearly_better(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return a[1] < b[0]  # False for nan

    return [1 + sum(clearly_better(other, mine) for other in oriented) for mine in oriented]


# ---------------------------------------------------------------------------------------------
# Steps-to-target (AlgoPerf): the step at which a curve first reaches a target, inf if never
# ---------------------------------------------------------------------------------------------


def target_from_baseline(final_values: list[float], direction: str = "minimize") -> float:
    """A target every baseline seed reaches: the worst of the baseline seeds' final values (the largest when
    minimised, the smallest when maximised); nan when a baseline seed diverged (no target every seed reaches)."""
    x = np.asarray(final_values, dtype=np.float64)
    if not len(x) or not np.all(np.isfinite(x)):
        return math.nan
    return float(x.max() if direction == "minimize" else x.min())


def steps_to_target(steps: list[int], values: list[float], target: float, direction: str = "minimize") -> float:
    """First step where the curve reaches `target` (at or below it when minimised, at or above when maximised),
    interpolated linearly between the two evaluation points around the crossing; the first point counts at its
    own step; inf if never reached."""
    better = sign(direction)
    prev = None
    for step, value in zip(steps, values):
        if value is not None and math.isfinite(value) and better * value <= better * target:
            if prev is None or not math.isfinite(prev[1]):
                return float(step)
            (s0, v0), (s1, v1) = prev, (step, value)
            return float(s0 + (s1 - s0) * (v0 - target) / (v0 - v1))
        prev = (step, value if value is not None else math.inf)
    return math.inf


def speedup(baseline_steps: float, trial_steps: float) -> float:
    """baseline / trial steps-to-target for one seed: 0 if only the trial misses, inf if only the baseline
    misses, nan (undefined) if both miss."""
    if math.isinf(trial_steps):
        return math.nan if math.isinf(baseline_steps) else 0.0
    return math.inf if math.isinf(baseline_steps) else baseline_steps / trial_steps


def median_with_inf(values: list[float]) -> float:
    """The median where inf is larger than every finite value (so [s, inf] gives inf, the mean of the two middle
    values); nan values are left out; nan for none."""
    x = np.sort(np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64))
    if not len(x):
        return math.nan
    mid = len(x) // 2
    return float(x[mid]) if len(x) % 2 else float((x[mid - 1] + x[mid]) / 2)

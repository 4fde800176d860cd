"""Statistics across seeds for leaderboards: Student-t intervals, paired deltas, Holm's correction, ranking
stability, and steps-to-target with AlgoPerf's conventions (a run that misses the target takes infinity).

Numbers in, numbers out. Conventions for a diverged seed (+inf): a mean with an infinite value is +inf and
has no interval; a paired delta with an infinite side has no test (nan p): the leaderboard counts diverged
seeds separately and ranks such configs last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

SMALL_N = 5  # below this many seeds a row is flagged: intervals are wide and rankings fragile
LEVEL = 0.95


def small_n(n: int) -> bool:
    """Fewer seeds than SMALL_N."""
    return n < SMALL_N


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student-t interval of the mean; (mean, nan, nan) for one value; (inf, inf, inf) when
    any value is infinite."""
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return math.inf, math.inf, math.inf
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


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


def kendall_tau_halves(values: dict[str, dict[int, float]], min_seeds: int = 4) -> float | None:
    """Kendall tau between the config rankings from two disjoint halves of the seeds (alternate seeds), each
    config ranked by its mean in that half (inf ranks worst); None below `min_seeds` shared seeds or 2 configs."""
    seeds = sorted({s for per_seed in values.values() for s in per_seed})
    if len(seeds) < min_seeds:
        return None
    halves = (set(seeds[0::2]), set(seeds[1::2]))
    means = [[], []]
    for per_seed in values.values():
        parts = [[v for s, v in per_seed.items() if s in h] for h in halves]
        if all(parts):
            for side, part in zip(means, parts):
                side.append(float(np.mean(part)) if np.all(np.isfinite(part)) else math.inf)
    if len(means[0]) < 2:
        return None
    ranks = [sps.rankdata(side) for side in means]  # inf sorts last; ties share a rank
    tau = sps.kendalltau(*ranks).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


# ---------------------------------------------------------------------------------------------
# Steps-to-target (AlgoPerf): the step at which a curve first reaches a target, inf if never
# ---------------------------------------------------------------------------------------------


def target_from_baseline(final_values: list[float]) -> float:
    """A target every baseline seed reaches: the worst (largest) of the baseline seeds' final values; nan when a
    baseline seed diverged (no target every seed reaches)."""
    x = np.asarray(final_values, dtype=np.float64)
    return float(x.max()) if len(x) and np.all(np.isfinite(x)) else math.nan


def steps_to_target(steps: list[int], values: list[float], target: float) -> float:
    """First step where the curve (lower is better) reaches `target`, interpolated linearly between the two
    evaluation points around the crossing; the first point counts at its own step; inf if never reached."""
    prev = None
    for step, value in zip(steps, values):
        if value is not None and math.isfinite(value) and value <= target:
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

"""Reading the design off the stored records: each record's readouts, each check's exact test and verdict, the
negative controls' false-positive rate, and the per-seed values behind them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import stats as sps

from ..config import config_hash
from ..engine.telemetry import COLLAPSE_FRACTION, ZERO_PREDICTOR_LOSS
from ..records.record import Status, metrics_of
from ..records.stats import PairedDelta, geometric_mean_ratio, mcnemar_exact, paired_delta, sign_flip_test
from ..records.store import Store
from .checks import NEGATIVE_CONTROLS, SHAM_SPLITS, Check, arm, arm_config, regime_sweep, seeds

ALPHA = 0.05


class Verdict(StrEnum):
    """What a check's exact test says: at ALPHA after Holm over the direction checks; a positive control alone."""

    AGREES = "agrees"  # p <= ALPHA in the expected direction
    DISAGREES = "disagrees"  # p <= ALPHA against it
    INCONCLUSIVE = "inconclusive"
    UNTESTED = "untested"  # no pair to test


def readout(rec: dict, name: str) -> float | None:
    """A record as one number. `failed`: 1 when the run diverged or collapsed, else 0. Otherwise a metric (or
    `decoder_norm`, the last probe's decoder feature norm; `<metric>@<weight set>`, the last evaluation's value of
    one weight set), as its natural log for `ln <...>`; None for a run that did not finish ok or lacks it."""
    if name == "failed":
        return float(rec["status"] == Status.DIVERGED or bool(metrics_of(rec).get("collapsed")))
    if rec["status"] != Status.OK:
        return None
    key = name.removeprefix("ln ")
    if "@" in key:
        metric, weights = key.split("@")
        value = ((rec.get("evals") or [{}])[-1].get(metric) or {}).get(weights)
    elif key == "decoder_norm":
        value = (rec.get("probes") or {}).get("decoder_norm", [None])[-1]
    else:
        value = metrics_of(rec).get(key)
    if value is None or not math.isfinite(value) or (name.startswith("ln ") and value <= 0):
        return None
    return math.log(value) if name.startswith("ln ") else float(value)


def arm_records(store: Store, regime: str, name: str, seed_list: list[int], fast: bool) -> dict[int, dict]:
    """The finished records of one arm at these seeds, by seed."""
    out = {}
    for seed in seed_list:
        rec = store.find(config_hash(arm_config(arm(regime, name), seed, fast)), seed, sweep=regime_sweep(regime))
        if rec is not None:
            out[seed] = rec
    return out


@dataclass(frozen=True)
class Result:
    """A check's outcome: the pairs, the exact test, the t-interval beside it, and (ln readouts) the ratio."""

    check: Check
    pairs: list[tuple[int, float, float]]  # (seed, control value, treatment value)
    excluded: int  # seeds without both values (a diverged or missing run)
    p: float  # the exact test's two-sided p
    delta: PairedDelta  # treatment - control, with its Student-t interval (descriptive beside the exact p)
    discordant: tuple[int, int] | None  # McNemar: (only the control failed, only the treatment failed)
    ratio: tuple[float, float, float] | None  # ln readouts: the geometric-mean ratio treatment / control


def evaluate_check(check: Check, store: Store, n_pairs: int | None, fast: bool) -> Result:
    """Pair the two arms by seed and run the check's exact test."""
    seed_list = seeds(check.regime, n_pairs)
    control = arm_records(store, check.regime, check.control_arm, seed_list, fast)
    treatment = arm_records(store, check.regime, check.treatment, seed_list, fast)
    pairs = []
    for seed in seed_list:
        c = readout(control[seed], check.control_value) if seed in control else None
        t = readout(treatment[seed], check.readout) if seed in treatment else None
        if c is not None and t is not None:
            pairs.append((seed, c, t))
    diffs = [t - c for _, c, t in pairs]
    delta = paired_delta([t for *_, t in pairs], [c for _, c, _ in pairs])
    discordant, ratio = None, None
    if check.test == "mcnemar":
        discordant = (sum(c > t for _, c, t in pairs), sum(t > c for _, c, t in pairs))
        p = mcnemar_exact(*discordant)
    else:
        p = sign_flip_test(diffs) if diffs else math.nan
    if check.readout.startswith("ln "):
        ratio = geometric_mean_ratio(diffs)
    return Result(check, pairs, len(seed_list) - len(pairs), p, delta, discordant, ratio)


def verdict(result: Result, p_adjusted: float) -> Verdict:
    """Agrees / disagrees when the check's p (Holm-adjusted in the family) is at most ALPHA, by the effect's sign."""
    if not result.pairs or math.isnan(p_adjusted):
        return Verdict.UNTESTED if not result.pairs else Verdict.INCONCLUSIVE
    if p_adjusted > ALPHA:
        return Verdict.INCONCLUSIVE
    if result.discordant is not None:
        lower = result.discordant[0] > result.discordant[1]
    else:
        lower = result.delta.mean < 0
    return Verdict.AGREES if lower else Verdict.DISAGREES


@dataclass(frozen=True)
class ShamRate:
    """The suite's own test on two sham arms drawn at random from one arm's runs: how often it says 'different'."""

    regime: str
    arm: str
    readout: str
    n_pairs: int
    splits: int
    rejections: int
    ci: tuple[float, float]  # Clopper-Pearson interval of the rate (the splits share runs: indicative)

    @property
    def rate(self) -> float:
        return self.rejections / self.splits if self.splits else math.nan


def sham_rate(regime: str, name: str, name_readout: str, store: Store, n_pairs: int | None, fast: bool) -> ShamRate:
    """Split the arm's 2n runs at random into two sham arms of n, pair them by position, run the sign-flip test;
    SHAM_SPLITS times with a fixed generator. A sound test rejects in at most ALPHA of the splits."""
    seed_list = seeds(regime, n_pairs, negative=True)
    records = arm_records(store, regime, name, seed_list, fast)
    values = np.array([v for s in seed_list if s in records and (v := readout(records[s], name_readout)) is not None])
    half = len(values) // 2
    if half < 1:
        return ShamRate(regime, name, name_readout, 0, 0, 0, (math.nan, math.nan))
    rng, rejections = np.random.default_rng(0), 0
    for _ in range(SHAM_SPLITS):
        shuffled = rng.permutation(values)
        rejections += sign_flip_test(list(shuffled[:half] - shuffled[half : 2 * half])) <= ALPHA
    ci = sps.binomtest(rejections, SHAM_SPLITS).proportion_ci(0.95, method="exact")
    return ShamRate(regime, name, name_readout, half, SHAM_SPLITS, rejections, (ci.low, ci.high))


def sham_rates(store: Store, n_pairs: int | None, fast: bool) -> list[ShamRate]:
    """Every negative control's false-positive rate."""
    return [sham_rate(regime, name, r, store, n_pairs, fast) for regime, name, r in NEGATIVE_CONTROLS]


def failure_counts(store: Store, n_pairs: int | None, fast: bool) -> dict[str, dict]:
    """Arms of the unstable-Adam regimes (collapse, clip): runs that failed (diverged or collapsed) at the end, at
    step 100 by the same rule, and at other bounds than half the zero-predictor loss (the counts should not hinge
    on the 0.5)."""
    from .checks import ARMS

    out = {}
    for a in (a for a in ARMS if a.regime in ("collapse", "clip")):
        records = arm_records(store, a.regime, a.name, seeds(a.regime, n_pairs), fast)
        runs = list(records.values())
        out[f"{a.regime}: {a.name}"] = {
            "n": len(runs),
            "failed": sum(readout(r, "failed") == 1.0 for r in runs),
            "diverged": sum(r["status"] == Status.DIVERGED for r in runs),
            "failed_at_100": sum(_failed_at(r, 100, COLLAPSE_FRACTION) for r in runs),
            "by_bound": {str(b): sum(_failed_at(r, None, b) for r in runs) for b in (0.3, 0.5, 0.7)},
        }
    return out


def _failed_at(rec: dict, step: int | None, fraction: float) -> bool:
    """Diverged, or the probe loss at `step` (the end for None) at least `fraction` of the zero-predictor loss."""
    if rec["status"] == Status.DIVERGED:
        return True
    probes = rec.get("probes") or {}
    points = [v for s, v in zip(probes.get("step", []), probes.get("probe_loss", [])) if step is None or s <= step]
    return bool(points) and points[-1] >= fraction * ZERO_PREDICTOR_LOSS


def per_seed(store: Store, readouts: dict[str, tuple[str, ...]], n_pairs: int | None, fast: bool) -> dict:
    """Every arm's readouts per seed, by regime: the raw values behind the table (a two-valued outcome shows here,
    not in a mean)."""
    from .checks import arm_seeds

    out: dict[str, dict] = {}
    for a, seed_list in arm_seeds(n_pairs):
        records = arm_records(store, a.regime, a.name, seed_list, fast)
        out.setdefault(a.regime, {})[a.name] = {
            str(s): {r: readout(rec, r) for r in readouts[a.regime]} for s, rec in sorted(records.items())
        }
    return out

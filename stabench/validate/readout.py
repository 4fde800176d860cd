"""Reading a check off the stored records: per-seed values, the paired comparison and its verdict, the collapse
counts and the decoder-norm ratios."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import config_hash
from ..record import FINISHED, tags_of
from ..stats import PairedDelta, mcnemar_exact, paired_delta
from ..store import Store
from .checks import CHECKS, COLLAPSE_BOUNDS, COLLAPSE_LOSS, CS, LS, Check, check_config, seeds_of


@dataclass(frozen=True)
class Result:
    """A check's outcome: the paired delta (treatment - control) and the verdict."""

    check: Check
    control_mean: float
    treatment_mean: float
    delta: PairedDelta
    diverged: tuple[int, int]  # (control, treatment) runs that diverged
    verdict: str


def find_record(check: Check, arm: str, seed: int, store: Store, fast: bool) -> dict | None:
    """The stored record of one arm of a check at one seed, if it has been trained."""
    return store.find(config_hash(check_config(check, arm, seed, fast)), seed, sweep=check.sweep)


def collapsed(rec: dict, bound: float) -> bool:
    """Whether a finished stress run diverged or ended with a probe loss of at least `bound`."""
    loss = rec["metrics"].get("final_probe_loss")
    return rec["status"] == "diverged" or loss is None or not math.isfinite(loss) or loss >= bound


def metric_values(check: Check, arm: str, n_seeds: int, store: Store, fast: bool) -> list[float]:
    """The arm's metric per seed (inf for a diverged run's instability, nan where a record lacks the metric),
    as its natural log for a `log` check."""
    values = []
    for seed in seeds_of(check, arm, n_seeds):
        rec = find_record(check, arm, seed, store, fast)
        if rec is None or rec["status"] not in FINISHED:
            values.append(math.nan)
        elif check.metric == "collapsed":
            values.append(float(collapsed(rec, COLLAPSE_LOSS)))
        elif rec["status"] == "diverged" and check.metric == "instability":
            values.append(math.inf)
        else:
            v = rec["metrics"].get(check.metric)
            values.append(math.nan if v is None else float(v))
    return [math.log(v) if check.log and v > 0 else v for v in values]


def verdict(check: Check, d: PairedDelta) -> str:
    """lower: 'agrees' when the interval lies below 0, 'disagrees' above, else 'inconclusive'.
    none: 'passes' when the interval covers 0, else 'fails'."""
    if math.isnan(d.lo):
        return "inconclusive" if check.expect == "lower" else "untested"
    if check.expect == "none":
        return "passes" if d.lo <= 0.0 <= d.hi else "fails"
    return "agrees" if d.hi < 0 else "disagrees" if d.lo > 0 else "inconclusive"


def evaluate_check(check: Check, n_seeds: int, store: Store, fast: bool) -> Result:
    """The paired comparison of one check over the pairs where both arms are finite."""
    control = metric_values(check, "control", n_seeds, store, fast)
    treatment = metric_values(check, "treatment", n_seeds, store, fast)
    pairs = [(t, c) for t, c in zip(treatment, control) if math.isfinite(t) and math.isfinite(c)]
    d = paired_delta([t for t, _ in pairs], [c for _, c in pairs])
    diverged = (sum(math.isinf(c) for c in control), sum(math.isinf(t) for t in treatment))
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    return Result(check, mean([c for _, c in pairs]), mean([t for t, _ in pairs]), d, diverged, verdict(check, d))


def decoder_norm_ratios(n_seeds: int, store: Store, fast: bool) -> dict[str, float]:
    """Geometric mean over seeds of final decoder norm / that of `none`, for CS and LS in the stress regime."""
    out = {}
    for name, treatment in (("CS", CS), ("LS", LS)):
        check = next(c for c in CHECKS if c.kind == "ScaleLong direction" and c.treatment == treatment)
        ratios = []
        for seed in seeds_of(check, "control", n_seeds):
            recs = [find_record(check, arm, seed, store, fast) for arm in ("treatment", "control")]
            if all(r is not None and r["status"] == "ok" for r in recs):
                t, c = (r["probes"]["decoder_norm"][-1] for r in recs)
                ratios.append(math.log(t / c))
        out[name] = math.exp(sum(ratios) / len(ratios)) if ratios else math.nan
    return out


def per_seed_values(by_regime: dict[str, list[dict]]) -> dict[str, dict[str, list]]:
    """Each arm's readouts per seed, by regime: instability and final probe loss (stress), FID (quality). The
    raw values behind the table: a bimodal outcome (some seeds collapse, others do not) shows here, not in a mean."""
    out: dict[str, dict[str, list]] = {}
    for regime, metric in (("stress", "instability"), ("quality", "fid_digits")):
        arms: dict[str, list] = {}
        for rec in sorted(by_regime[regime], key=lambda r: r["seed"]):
            if rec["status"] in FINISHED:
                m = rec["metrics"]
                value = [m.get(metric), m.get("final_probe_loss")] if regime == "stress" else m.get(metric)
                arms.setdefault(tags_of(rec).get("baseline_point", "?"), []).append([rec["seed"], value])
        out[regime] = arms
    return out


def collapse_summary(records: list[dict], n_seeds: int) -> dict:
    """How many stress runs of each arm collapsed, at COLLAPSE_LOSS and the bounds beside it, over the seeds the
    stress comparisons use; and the exact McNemar p of clip-1 against none (paired by seed) at COLLAPSE_LOSS."""
    check = next(c for c in CHECKS if c.metric == "collapsed")
    seeds = set(seeds_of(check, "control", n_seeds))
    by_arm: dict[str, dict[int, dict]] = {}
    for rec in records:
        if rec["status"] in FINISHED and rec["seed"] in seeds:
            by_arm.setdefault(tags_of(rec).get("baseline_point", "?"), {})[rec["seed"]] = rec
    arms = {
        arm: {"n": len(runs), "collapsed": [sum(collapsed(r, b) for r in runs.values()) for b in COLLAPSE_BOUNDS]}
        for arm, runs in sorted(by_arm.items())
    }
    control, treatment = by_arm.get(check.arm_name("control"), {}), by_arm.get(check.arm_name("treatment"), {})
    paired = [(collapsed(control[s], COLLAPSE_LOSS), collapsed(treatment[s], COLLAPSE_LOSS))
              for s in sorted(seeds & control.keys() & treatment.keys())]  # fmt: skip
    b, c = sum(x and not y for x, y in paired), sum(y and not x for x, y in paired)
    return {"bounds": list(COLLAPSE_BOUNDS), "arms": arms, "discordant": [b, c], "mcnemar_p": mcnemar_exact(b, c)}


def result_row(r: Result) -> dict:
    """A result as one JSON-able row of the control table."""
    c, d = r.check, r.delta
    return {
        "kind": c.kind,
        "claim": c.claim,
        "regime": c.regime,
        "metric": f"ln {c.metric}" if c.log else c.metric,
        "control": c.arm_name("control"),
        "treatment": " ".join(c.treatment) or ("the same config, other seeds" if c.other_seeds else ""),
        "n": d.n,
        "control_mean": r.control_mean,
        "treatment_mean": r.treatment_mean,
        "delta": d.mean,
        "ci_lo": d.lo,
        "ci_hi": d.hi,
        "p": d.p,
        "diverged_control": r.diverged[0],
        "diverged_treatment": r.diverged[1],
        "verdict": r.verdict,
        "source": c.source,
    }

"""Known-effect validation (`stabench validate`): before anyone reads a ranking, show that the suite detects an
effect known to be there (positive control), reports none where there is none (negative control), and say where
it stands on published directions, each with its n, its paired t-interval and its regime (docs/validation.md).

Each check compares a treatment with a control over the same seeds (paired), except the negative control, which
runs one config twice under two names: on seeds 0..n-1 and on seeds n..2n-1, paired by position.
Trials are ordinary records in a store (tag sweep=validation): an interrupted validation resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import TrialConfig, config_hash, load_config
from .engine import run_trial
from .leaderboard import write_leaderboard
from .record import FINISHED, Tags, atomic_write_text, tags_of
from .stats import LEVEL, PairedDelta, holm_adjusted, paired_delta
from .store import Store

SWEEP = "validation"

# Stress: ScaleLong's own backbone (a U-ViT, whose skip_linear sees the raw concat), 16 blocks = 8 long skips at
# 16x16, a high learning rate without clipping or warm-up. Width and batch are narrowed so that the whole suite
# fits a 2-core CPU. lr 1e-2 is the first of 2e-3, 5e-3, 1e-2 at which the positive control separated on seed 0
# (docs/validation.md: how the regime was calibrated; only the positive control was looked at).
STRESS = (
    "workload.backbone=uvit",
    "workload.preset=deep",
    "workload.resolution=16",
    "workload.width=64",
    "optim.batch_size=32",
    "optim.lr=1e-2",
    "optim.clip_norm=null",
    "optim.warmup_steps=0",
    "optim.steps=400",
    "model.dropout=0.0",
    "ema.betas=[0.99]",
    "eval.samples=0",
    "eval.grid=0",
    "eval.every=400",
    "eval.probe_every=10",
    "stability.burn_in=50",
)
# Quality: the default workload (8x8 digits, small UNet), scored by FID against the held-out split.
QUALITY = (
    "optim.steps=600",
    "optim.lr=1e-3",
    "ema.betas=[0.99]",
    "eval.every=600",
    "eval.samples=300",
    "eval.sampler_steps=25",
    "eval.grid=0",
)
# --fast: tiny sizes for the test suite (the table's structure, not its verdicts).
FAST = (
    "workload.preset=tiny",
    "workload.width=null",
    "optim.batch_size=16",
    "optim.steps=20",
    "eval.every=20",
    "eval.probe_every=5",
    "eval.probe_size=8",
    "stability.burn_in=5",
)
FAST_SAMPLES = ("eval.samples=40", "eval.sampler_steps=4")
REGIMES = {"stress": STRESS, "quality": QUALITY}


def regime_sweep(regime: str) -> str:
    """The sweep tag of a regime's records: one per regime, so each regime has its own leaderboard."""
    return f"{SWEEP}-{regime}"


CONTROL_NAMES = {"stress": "none", "quality": "linear-uniform"}  # each regime's control config, as labelled
# Each regime's leaderboard ranks by a quality readout that does not depend on the weighting kind: FID where the
# regime samples, else the unweighted probe loss at the end of training.
LEADERBOARD_METRICS = {"stress": "final_probe_loss", "quality": "fid_digits"}


@dataclass(frozen=True)
class Check:
    """One comparison: treatment vs control on `metric` in a regime, and what is expected of it."""

    kind: str  # positive control | negative control | ScaleLong direction | published direction
    claim: str
    regime: str
    metric: str
    treatment: tuple[str, ...]
    name: str = ""  # the treatment's label in the store (the control's is CONTROL_NAMES[regime])
    expect: str = "lower"  # lower: treatment < control; none: no difference
    source: str = ""
    other_seeds: bool = False  # the negative control: the treatment runs on seeds n..2n-1
    log: bool = False  # compare ln(metric): growth factors are multiplicative
    seed_factor: int = 1  # runs on seed_factor x --n-seeds seeds: the stress regime's outcome is nearly two-valued

    def n(self, n_seeds: int) -> int:
        """The number of seeds (pairs) this check compares at `--n-seeds n_seeds`."""
        return n_seeds * self.seed_factor

    @property
    def sweep(self) -> str:
        """The sweep tag of this check's records."""
        return regime_sweep(self.regime)

    def arm_name(self, arm: str) -> str:
        """The label of an arm's config (`<name>@<sweep>` on leaderboards)."""
        return self.name if arm == "treatment" and self.treatment else CONTROL_NAMES[self.regime]


# A stress run "collapsed" when its final probe loss is at least half that of predicting zero noise (1.0 for
# unit-variance eps): at lr 1e-2 runs either train (0.06-0.16) or fall back to ~1 (docs/validation.md). A diverged
# run counts as collapsed. COLLAPSE_BOUNDS are reported beside it to show the count does not hinge on the 0.5.
COLLAPSE_LOSS = 0.5
COLLAPSE_BOUNDS = (0.3, 0.5, 0.7)

CS = ("lsc.mode=constant", "lsc.kappa=0.5")
LS = ("lsc.mode=linear",)
MIN_SNR5 = ("timestep_weighting.kind=min_snr", "timestep_weighting.gamma=5")
CHECKS = (
    Check("positive control", "global clip 1.0 lowers instability", "stress", "instability", ("optim.clip_norm=1.0",),
          "clip-1", source="clipping bounds the update (Pascanu et al. 2013)", seed_factor=2),
    Check("positive control", "global clip 1.0 lowers the share of collapsed runs", "stress", "collapsed",
          ("optim.clip_norm=1.0",), "clip-1", source="clipping bounds the update (Pascanu et al. 2013)",
          seed_factor=2),
    Check("negative control", "one config under two names: no difference", "stress", "instability", (),
          expect="none", other_seeds=True),
    Check("negative control", "one config under two names: no difference", "quality", "fid_digits", (),
          expect="none", other_seeds=True),
    Check("ScaleLong direction", "CS (kappa 0.5) lowers decoder feature-norm growth", "stress",
          "decoder_norm_growth", CS, "cs-0.5", source="Huang et al. 2023, ScaleLong", log=True, seed_factor=2),
    Check("ScaleLong direction", "LS lowers decoder feature-norm growth", "stress", "decoder_norm_growth", LS,
          "ls", source="Huang et al. 2023, ScaleLong", log=True, seed_factor=2),
    Check("published direction", "cosine schedule lowers FID vs linear", "quality", "fid_digits",
          ("diffusion.schedule=cosine",), "cosine", source="Nichol & Dhariwal 2021"),
    Check("published direction", "Min-SNR-5 weighting lowers FID vs uniform", "quality", "fid_digits", MIN_SNR5,
          "min-snr-5", source="Hang et al. 2023"),
    Check("published direction", "CS (kappa 0.5) lowers instability vs none", "stress", "instability", CS,
          "cs-0.5", source="Huang et al. 2023, ScaleLong", seed_factor=2),
    Check("published direction", "LS lowers instability vs none", "stress", "instability", LS,
          "ls", source="Huang et al. 2023, ScaleLong", seed_factor=2),
)  # fmt: skip

# ScaleLong's Figure (U-ViT, decoder feature norm at 30k iterations, x1e4) as ratios to no scaling ("Org").
SCALELONG_RATIOS = {
    "depth 12": {"1/sqrt2": 1.4 / 2.0, "LS": 1.1 / 2.0, "CS": 1.0 / 2.0},
    "depth 16": {"1/sqrt2": 3.6 / 5.5, "LS": 2.2 / 5.5, "CS": 2.2 / 5.5},
}


def check_config(check: Check, arm: str, seed: int, fast: bool) -> TrialConfig:
    """The config of one arm ('treatment' or 'control') of a check at one seed."""
    regime = REGIMES[check.regime] + ((FAST + (FAST_SAMPLES if check.regime == "quality" else ())) if fast else ())
    arm_overrides = check.treatment if arm == "treatment" else ()
    return load_config(None, [*regime, *arm_overrides, f"seed={seed}"])


def seeds_of(check: Check, arm: str, n_seeds: int) -> list[int]:
    """The seeds an arm runs on (the negative control's second name runs on other seeds)."""
    n = check.n(n_seeds)
    first = n if check.other_seeds and arm == "treatment" else 0
    return list(range(first, first + n))


@dataclass(frozen=True)
class Job:
    """One trial the checks need: its config and where its record is filed (sweep and label)."""

    config: TrialConfig
    sweep: str
    name: str


def jobs(checks: tuple[Check, ...], n_seeds: int, fast: bool) -> list[Job]:
    """Every distinct (config, seed) the checks need, in a stable order."""
    seen, out = set(), []
    for check in checks:
        for arm in ("control", "treatment"):
            for seed in seeds_of(check, arm, n_seeds):
                cfg = check_config(check, arm, seed, fast)
                if (config_hash(cfg), seed) not in seen:
                    seen.add((config_hash(cfg), seed))
                    out.append(Job(cfg, check.sweep, check.arm_name(arm)))
    return out


def run_jobs(todo: list[Job], store: Store, say: Callable[[str], None] = print) -> float:
    """Train what the store does not hold yet; returns the seconds spent training."""
    spent = 0.0
    for i, job in enumerate(todo, 1):
        cfg = job.config
        if store.find(config_hash(cfg), cfg.seed, sweep=job.sweep) is not None:
            continue
        started = time.perf_counter()
        tags = Tags(sweep=job.sweep, named_point=job.name, job_type="validate").to_dict()
        rec = run_trial(cfg, store.root, writer=store.write_unique, tags=tags)
        took = time.perf_counter() - started
        spent += took
        say(f"[{i}/{len(todo)}] {job.name}@{job.sweep} seed {cfg.seed}: {rec['status']} ({took:.0f} s)")
    return spent


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


def collapsed(rec: dict, bound: float) -> bool:
    """Whether a finished stress run diverged or ended with a probe loss of at least `bound`."""
    loss = rec["metrics"].get("final_probe_loss")
    return rec["status"] == "diverged" or loss is None or not math.isfinite(loss) or loss >= bound


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


def validate(store_dir: str | Path, out_dir: str | Path, n_seeds: int = 5, fast: bool = False, say=print) -> dict:
    """Run (or resume) every check's trials, then write the control table to `out_dir` (README.md, validation.json)."""
    store = Store(store_dir)
    todo = jobs(CHECKS, n_seeds, fast)
    say(f"validation: {len(todo)} trials ({n_seeds} seeds per arm, 2x in the stress regime), store {store.root}")
    started = time.perf_counter()
    train_s = run_jobs(todo, store, say)
    results = [evaluate_check(c, n_seeds, store, fast) for c in CHECKS]
    p_holm = holm_adjusted([r.delta.p for r in results])
    ratios = decoder_norm_ratios(n_seeds, store, fast)
    by_regime = {regime: list(store.records(sweep=regime_sweep(regime))) for regime in REGIMES}
    for regime, records in by_regime.items():
        write_regime_leaderboard(regime, records, Path(out_dir) / regime)
    summary = {
        "n_seeds": n_seeds,
        "fast": fast,
        "level": LEVEL,
        "regimes": {k: list(v + (FAST if fast else ())) for k, v in REGIMES.items()},
        "checks": [{**result_row(r), "p_holm": p} for r, p in zip(results, p_holm)],
        "per_seed": per_seed_values(by_regime),
        "decoder_norm_ratio_to_none": ratios,
        "scalelong_ratio_to_none": SCALELONG_RATIOS,
        "trials": len(todo),
        "train_s_records": round(sum(r.get("wall_time_s") or 0 for rs in by_regime.values() for r in rs), 1),
        "train_s_this_run": round(train_s, 1),
        "wall_s_this_run": round(time.perf_counter() - started, 1),
    }
    out = Path(out_dir)
    atomic_write_text(out / "validation.json", json.dumps(_json_safe(summary), indent=1) + "\n")
    atomic_write_text(out / "README.md", render_markdown(summary))
    say(render_table(summary["checks"]))
    return summary


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


def write_regime_leaderboard(regime: str, records: list[dict], out_dir: Path) -> None:
    """The leaderboard of one regime's records (every seed run, the negative control's included), against the
    regime's control; `stabench leaderboard` regenerates it byte for byte (results/README.md)."""
    baseline = f"{CONTROL_NAMES[regime]}@{regime_sweep(regime)}"
    write_leaderboard(records, out_dir, LEADERBOARD_METRICS[regime], baseline=baseline)


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


def _json_safe(x):
    """nan and inf as null: strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


def _num(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def render_table(rows: list[dict]) -> str:
    """The control table as Markdown."""
    head = (
        "| kind | claim | regime | metric | n | control | treatment | delta [95% CI] | p | p (Holm) | diverged c/t | "
        "verdict |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['claim']} | {r['regime']} | {r['metric']} | {r['n']} | {_num(r['control_mean'])} | "
            f"{_num(r['treatment_mean'])} | {_num(r['delta'])} [{_num(r['ci_lo'])}, {_num(r['ci_hi'])}] | "
            f"{_num(r['p'])} | {_num(r.get('p_holm'))} | {r['diverged_control']}/{r['diverged_treatment']} | "
            f"**{r['verdict']}** |"
        )
    return "\n".join(lines)


def render_per_seed(per_seed: dict[str, dict[str, list]]) -> str:
    """One line per regime and arm: `seed: value` in seed order."""

    def show(v) -> str:
        return " / ".join(_num(x) for x in v) if isinstance(v, list) else _num(v)

    return "\n".join(
        f"- {regime}, **{arm}**: " + ", ".join(f"{seed}: {show(v)}" for seed, v in values)
        for regime, arms in per_seed.items()
        for arm, values in sorted(arms.items())
    )


def render_markdown(summary: dict) -> str:
    """results/validation/README.md: the control table, ScaleLong's ratios beside ours, the regimes and the cost."""
    ours, theirs = summary["decoder_norm_ratio_to_none"], summary["scalelong_ratio_to_none"]
    ratio_rows = [
        f"| {name} | {_num(ours.get(name, math.nan))} | {_num(theirs['depth 12'][name])} | "
        f"{_num(theirs['depth 16'][name])} |"
        for name in ("CS", "LS")
    ]
    regimes = "\n".join(f"- **{k}**: `{' '.join(v)}`" for k, v in summary["regimes"].items())
    return f"""# Known-effect validation

Regenerate with `stabench validate{" --fast" if summary["fast"] else ""} --n-seeds {summary["n_seeds"]}` (records in
the store under sweeps `validation-stress` and `validation-quality`; an interrupted run resumes; each regime's
leaderboard is in `stress/` and `quality/`). Each row is a paired comparison over
n seeds (treatment − control, same seeds; the negative control runs one config on seeds 0..n−1 and on
n..2n−1), with a Student-t {summary["level"]:.0%} interval. Verdicts: for an expected decrease, *agrees* when the
interval lies below 0, *disagrees* when above, *inconclusive* otherwise; for the negative control, *passes*
when the interval covers 0. Diverged runs (instability = inf) are counted, not paired. Each verdict is at the 5%
level on its own; with {len(summary["checks"])} checks about one in twenty null comparisons reads as an effect, so
p (Holm) gives the family-wise adjusted p-value: only a row whose Holm p is below 0.05 survives the whole table.

{render_table(summary["checks"])}

## Decoder feature norm, ratio to no scaling

Ours: final decoder output norm on the probe batch, geometric mean over seeds of the per-seed ratio to `none`, in
the stress regime. ScaleLong (Huang et al. 2023): U-ViT decoder feature norm at 30k iterations.

| scaling | ours (stress regime) | ScaleLong depth 12 | ScaleLong depth 16 |
|---|---|---|---|
{chr(10).join(ratio_rows)}

## Per seed

The values behind the means (seed: value); in the stress regime each entry is instability / final probe loss.

{render_per_seed(summary["per_seed"])}

## Regimes

{regimes}

{summary["trials"]} trials, {summary["train_s_records"] / 60:.0f} minutes of training in all (the records' wall times,
including evaluation).
"""

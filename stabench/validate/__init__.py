"""Known-effect validation (`stabench validate`): before anyone reads a ranking, show that the suite detects effects
known to be there (positive controls), how often its own test calls a difference where there is none (negative
controls), and where it stands on ScaleLong's and other published directions: each check with its n, an exact
test, the Student-t interval beside it, and its regime (docs/validation.md holds the pre-registered design).

Every check pairs a treatment arm with a control arm by seed. Trials are ordinary records in a store (tag
sweep=validation-<regime>), so an interrupted validation resumes where it stopped. checks.py says what is
compared, readout.py reads it off the records, report.py writes it down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..config import config_hash
from ..files import atomic_write_text
from ..leaderboard import write_leaderboard
from ..records.record import Tags
from ..records.stats import LEVEL, holm_adjusted
from ..records.store import Store
from ..sweep.core import preemptible_jobs, run_job
from .checks import (
    CHECKS,
    CONTROL_NAMES,
    DESCRIPTIVE,
    FAST,
    LEADERBOARD_METRICS,
    N_PAIRS,
    REGIMES,
    SCALELONG_RATIOS,
    Check,
    Job,
    jobs,
    regime_sweep,
)
from .readout import Verdict, evaluate_check, failure_counts, per_seed, sham_rates, verdict
from .report import json_safe, render_markdown, render_table, result_row, sham_row

__all__ = ["CHECKS", "CONTROL_NAMES", "LEADERBOARD_METRICS", "Check", "Verdict", "regime_sweep", "validate"]


def run_jobs(todo: list[Job], store: Store, workers: int, say: Callable[[str], None] = print) -> float:
    """Train what the store does not hold yet, one trial per worker (Ray on this machine for more than one);
    returns the seconds spent."""
    missing = [j for j in todo if store.find(config_hash(j.config), j.config.seed, sweep=j.sweep) is None]
    say(f"validation: {len(todo)} trials in the design, {len(missing)} to train, {workers} worker(s)")
    started = time.perf_counter()
    if workers > 1 and missing:
        from ..sweep.ray import run_ray_jobs
        from ..sweep.ray_cluster import RayCluster

        tagged = [(j.name, j.config, _tags(j)) for j in missing]
        run_ray_jobs(tagged, store, RayCluster(num_cpus=workers, cpus_per_trial=1), name="validation")
        return time.perf_counter() - started
    with preemptible_jobs(say):
        for i, job in enumerate(missing, 1):
            t0 = time.perf_counter()
            rec = run_job(job.config, store, writer=store.write_unique, tags=_tags(job))
            say(f"[{i}/{len(missing)}] {job.name}@{job.sweep} seed {job.config.seed}: {rec['status']} "
                f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return time.perf_counter() - started


def family_adjusted(results: list) -> list[float]:
    """Each check's p for its verdict: Holm-adjusted over the direction checks; a positive control's own p (it
    checks the instrument, not a claim)."""
    family = [r for r in results if r.check.in_family]
    adjusted = dict(zip(map(id, family), holm_adjusted([r.p for r in family])))
    return [adjusted.get(id(r), r.p) for r in results]


def _tags(job: Job) -> dict:
    return Tags(sweep=job.sweep, named_point=job.name, job_type="validate").to_dict()


def validate(
    store_dir: str | Path,
    out_dir: str | Path,
    n_pairs: int | None = None,
    fast: bool = False,
    workers: int = 1,
    say=print,
) -> dict:
    """Run (or resume) the design's trials, then write the control table to `out_dir` (README.md, validation.json)
    and one leaderboard per regime. `n_pairs` overrides the design's pairs per check (N_PAIRS)."""
    store = Store(store_dir)
    todo = jobs(n_pairs, fast)
    started = time.perf_counter()
    train_s = run_jobs(todo, store, workers, say)
    results = [evaluate_check(c, store, n_pairs, fast) for c in CHECKS]
    p_holm = family_adjusted(results)
    readouts = {regime: tuple(dict.fromkeys([*(c.readout for c in CHECKS if c.regime == regime),
                                             *(c.control_value for c in CHECKS if c.regime == regime),
                                             *(DESCRIPTIVE if regime != "quality" else ())]))
                for regime in REGIMES}  # fmt: skip
    by_regime = {regime: list(store.records(sweep=regime_sweep(regime))) for regime in REGIMES}
    for regime, records in by_regime.items():
        if records:
            write_regime_leaderboard(regime, records, Path(out_dir) / regime)
    summary = {
        "design": "docs/validation.md",
        "n_pairs": {regime: n_pairs or n for regime, n in N_PAIRS.items()},
        "fast": fast,
        "level": LEVEL,
        "regimes": {k: list(v + (FAST if fast else ())) for k, v in REGIMES.items()},
        "checks": [{**result_row(r), "p_holm": p, "verdict": verdict(r, p)} for r, p in zip(results, p_holm)],
        "negative_controls": [sham_row(s) for s in sham_rates(store, n_pairs, fast)],
        "failures": failure_counts(store, n_pairs, fast),
        "per_seed": per_seed(store, readouts, n_pairs, fast),
        "scalelong_ratio_to_none": SCALELONG_RATIOS,
        "trials": len(todo),
        "train_s_records": round(sum(r.get("wall_time_s") or 0 for rs in by_regime.values() for r in rs), 1),
        "train_s_this_run": round(train_s, 1),
        "wall_s_this_run": round(time.perf_counter() - started, 1),
    }
    out = Path(out_dir)
    atomic_write_text(out / "validation.json", json.dumps(json_safe(summary), indent=1) + "\n")
    atomic_write_text(out / "README.md", render_markdown(summary))
    say(render_table(summary["checks"]))
    return summary


def write_regime_leaderboard(regime: str, records: list[dict], out_dir: Path) -> None:
    """The leaderboard of one regime's records (every seed run), against the regime's control; `stabench
    leaderboard` regenerates it byte for byte (results/README.md)."""
    baseline = f"{CONTROL_NAMES[regime]}@{regime_sweep(regime)}"
    write_leaderboard(records, out_dir, LEADERBOARD_METRICS[regime], baseline=baseline)

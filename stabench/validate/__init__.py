"""Known-effect validation (`stabench validate`): before anyone reads a ranking, show that the suite detects an
effect known to be there (positive control), reports none where there is none (negative control), and say where
it stands on published directions, each with its n, its paired t-interval and its regime (docs/validation.md).

Each check compares a treatment with a control over the same seeds (paired), except the negative control, which
runs one config twice under two names: on seeds 0..n-1 and on seeds n..2n-1, paired by position.
Trials are ordinary records in a store (tag sweep=validation-<regime>): an interrupted validation resumes where it
stopped. checks.py says what is compared, readout.py reads it off the records, report.py writes it down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from ..config import config_hash
from ..engine import run_trial
from ..leaderboard import write_leaderboard
from ..record import Tags, atomic_write_text
from ..stats import LEVEL, holm_adjusted
from ..store import Store
from .checks import (
    CHECKS,
    CONTROL_NAMES,
    FAST,
    LEADERBOARD_METRICS,
    REGIMES,
    SCALELONG_RATIOS,
    Check,
    Job,
    jobs,
    regime_sweep,
)
from .readout import collapse_summary, decoder_norm_ratios, evaluate_check, per_seed_values, result_row, verdict
from .report import json_safe, render_markdown, render_table

__all__ = ["CHECKS", "CONTROL_NAMES", "LEADERBOARD_METRICS", "Check", "regime_sweep", "validate", "verdict"]


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
        "collapse": collapse_summary(by_regime["stress"], n_seeds),
        "decoder_norm_ratio_to_none": ratios,
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
    """The leaderboard of one regime's records (every seed run, the negative control's included), against the
    regime's control; `stabench leaderboard` regenerates it byte for byte (results/README.md)."""
    baseline = f"{CONTROL_NAMES[regime]}@{regime_sweep(regime)}"
    write_leaderboard(records, out_dir, LEADERBOARD_METRICS[regime], baseline=baseline)

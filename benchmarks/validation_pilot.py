"""The pilot of the known-effect validation: calibrate each regime on seeds the confirmatory run never uses.

    python benchmarks/validation_pilot.py [--seeds 4] [--scalelong-seeds 1] [--regime collapse] [--workers 2]

Trains, on pilot seeds 1000.. (the confirmatory run uses 100..), the arms of the design in
stabench/validate/checks.py for the collapse and ScaleLong regimes (the quality regime is calibrated on the
exploratory run's records). Records go to results/validation/pilot/store (resumable); a summary per arm and seed
(status, probe loss at step 100 and at the end, decoder-norm growth and final norm, probe-gradient statistics) is
printed and written to results/validation/pilot/pilot.json. One trial per core (torch threads = 1 per process).

The committed pilot (docs/validation.md) ran the ScaleLong arms at seed 1000 with the design's first draft,
1,000 steps; their probe curves chose the design's 300 steps. Rerunning this script now trains the design's
current length.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

OUT = Path("results/validation/pilot")
FIRST_PILOT_SEED = 1000


def arms() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, regime, overrides) of every arm of the validation design."""
    from stabench.validate.checks import ARMS, REGIMES

    return [(a.name, a.regime, REGIMES[a.regime] + a.overrides) for a in ARMS]


def run_one(job: tuple[str, str, tuple[str, ...], int]) -> str:
    """Train one (arm, seed) into the pilot store unless it is there; a line saying what happened."""
    import torch

    torch.set_num_threads(1)
    from stabench.config import config_hash, load_config
    from stabench.engine import run_trial
    from stabench.records.record import Tags
    from stabench.records.store import Store

    name, regime, overrides, seed = job
    store = Store(OUT / "store")
    cfg = load_config(None, [*overrides, f"seed={seed}"])
    sweep = f"pilot-{regime}"
    if store.find(config_hash(cfg), seed, sweep=sweep) is not None:
        return f"{name} seed {seed}: in the store"
    started = time.perf_counter()
    tags = Tags(sweep=sweep, named_point=name, job_type="pilot").to_dict()
    rec = run_trial(cfg, store.root, writer=store.write_unique, tags=tags)
    return f"{name} seed {seed}: {rec['status']} ({time.perf_counter() - started:.0f} s)"


def probe_at(rec: dict, step: int) -> float | None:
    """The unweighted probe loss at the last probe point at or before `step`."""
    pairs = [(s, v) for s, v in zip(rec["probes"]["step"], rec["probes"]["probe_loss"]) if s <= step]
    return pairs[-1][1] if pairs else None


def summarize(records: list[dict]) -> dict:
    """Per arm and seed: status, probe loss at steps 100 and the end, decoder-norm growth and final decoder norm."""
    out: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r["seed"]):
        m = rec["metrics"]
        arm = f"{rec['tags']['sweep'].removeprefix('pilot-')}: {rec['tags']['baseline_point']}"
        out.setdefault(arm, {})[str(rec["seed"])] = {
            "steps": rec["steps_completed"],
            "status": rec["status"],
            "probe_loss_100": probe_at(rec, 100),
            "final_probe_loss": m.get("final_probe_loss"),
            "collapsed": m.get("collapsed"),
            "decoder_norm_growth": m.get("decoder_norm_growth"),
            "decoder_norm_final": rec["probes"]["decoder_norm"][-1] if rec["probes"]["decoder_norm"] else None,
            "probe_grad_cv": m.get("probe_grad_cv"),
            "probe_grad_osc": m.get("probe_grad_osc"),
            "wall_time_s": rec.get("wall_time_s"),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="pilot seeds of the collapse regime's arms")
    parser.add_argument("--scalelong-seeds", type=int, default=1, help="pilot seeds of the ScaleLong arms")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--regime", action="append", help="only these regimes (repeatable; default: all but quality)")
    args = parser.parse_args()
    from stabench.records.store import Store

    todo = []
    for name, regime, overrides in arms():
        if regime == "quality" or (args.regime and regime not in args.regime):
            continue  # quality: calibrated on the earlier run's records (docs/validation.md)
        n = args.scalelong_seeds if regime == "scalelong" else args.seeds
        todo += [(name, regime, overrides, FIRST_PILOT_SEED + i) for i in range(n)]
    todo.sort(key=lambda j: (j[1] != "scalelong", j[3]))  # the long ScaleLong runs first: they size its n
    print(f"pilot: {len(todo)} trials, {args.workers} workers, store {OUT / 'store'}", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        for i, line in enumerate(pool.map(run_one, todo), 1):
            print(f"[{i}/{len(todo)}] {line}", flush=True)
    records = [r for r in Store(OUT / "store").records() if r["status"] in ("ok", "diverged")]
    summary = {"wall_s": round(time.perf_counter() - started), "arms": summarize(records)}
    (OUT / "pilot.json").write_text(json.dumps(summary, indent=1, allow_nan=False, default=_nan_safe) + "\n")
    print(json.dumps(summary, indent=1, default=_nan_safe))


def _nan_safe(x):
    return None if isinstance(x, float) and not math.isfinite(x) else x


if __name__ == "__main__":
    main()

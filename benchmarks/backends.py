"""Per-trial start-up overhead of the two search backends, measured in one run.

Runs the same small sweep (tiny digits trials) with the Optuna backend and with Ray Tune on a local Ray,
and prints, per backend, the seconds from trial start (Optuna: the trial is asked for; Ray: the driver
starts the trial) to the trial's first training step, and the sweep's wall time.

    python benchmarks/backends.py [--trials 4] [--steps 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml

from stabench.records.store import Store
from stabench.sweep import SweepSettings
from stabench.sweep.optuna import run_optuna_sweep
from stabench.sweep.space import load_space


def write_space(directory: Path, trials: int, steps: int) -> Path:
    body = {
        "name": "bench",
        "base": {},
        "fixed": {
            "workload.preset": "tiny",
            "optim.steps": steps,
            "optim.batch_size": 32,
            "eval.every": steps,
            "eval.samples": 0,
        },
        "space": {
            "lsc.mode": {"type": "categorical", "choices": ["none", "constant", "inv_sqrt2"]},
            "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        },
        "objectives": [{"metric": "best_probe_loss"}],
        "budget": {"trials": trials},
        "pruner": {"name": "none"},
    }
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    from stabench.sweep.ray import run_ray_sweep
    from stabench.sweep.ray_cluster import RayCluster

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        space = load_space(write_space(tmp, args.trials, args.steps))

        t0 = time.time()
        store = Store(tmp / "optuna")
        run_optuna_sweep(
            space, store, SweepSettings.of(space, study_storage=str(tmp / "j.journal")), log=lambda s: None
        )
        optuna_wall = time.time() - t0
        optuna_gaps = [r["first_step_unix"] - r["tags"]["scheduled_unix"] for r in store.records()]

        t0 = time.time()
        store = Store(tmp / "ray")
        cluster = RayCluster(ray_dir=str(tmp / "ray_state"))
        summary = run_ray_sweep(space, store, SweepSettings.of(space), cluster, log=lambda s: None)
        ray_wall = time.time() - t0
        started = summary["trial_started_unix"]
        ray_gaps = [
            r["first_step_unix"] - started[r["tags"]["trial_number"]]
            for r in store.records()
            if r["tags"]["trial_number"] in started and r.get("resumed_from_step") is None
        ]

    o, r = statistics.median(optuna_gaps), statistics.median(ray_gaps)
    print(f"{args.trials} trials x {args.steps} steps (tiny UNet, digits)")
    print(
        f"optuna: trial start -> first step median {o:.3f}s (all: {', '.join(f'{g:.2f}' for g in optuna_gaps)}); "
        f"sweep wall {optuna_wall:.1f}s"
    )
    print(
        f"ray:    trial start -> first step median {r:.3f}s (all: {', '.join(f'{g:.2f}' for g in ray_gaps)}); "
        f"sweep wall {ray_wall:.1f}s (includes starting a local Ray)"
    )
    print(f"per-trial start-up overhead ray - optuna: {r - o:.2f}s  (ratio {r / o:.1f}x)")


if __name__ == "__main__":
    main()

"""Named reference configs (`baselines/*.yaml`) run over several seeds through the trial engine."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .config import TrialConfig, config_hash, load_config
from .engine import run_trial
from .errors import UserError
from .store import Store
from .tracking import TrackingSettings

# ./baselines when run from a checkout or a project of one's own, else the repository's (editable install)
BASELINES_DIR = Path(os.environ.get("STABENCH_BASELINES", "baselines"))
if not BASELINES_DIR.is_dir() and (Path(__file__).parents[1] / "baselines").is_dir():
    BASELINES_DIR = Path(__file__).parents[1] / "baselines"
SWEEP = "baselines"


def baseline_names(directory: Path = BASELINES_DIR) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_baseline(name: str, overrides: list[str] = (), directory: Path = BASELINES_DIR) -> TrialConfig:
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        raise UserError(
            f"--only: no baseline named '{name}' in {directory}/; allowed: " + ", ".join(baseline_names(directory))
        )
    return load_config(path, list(overrides))


def baseline_jobs(
    names: list[str], seeds: list[int], overrides: list[str] = (), directory: Path = BASELINES_DIR
) -> list[tuple[str, TrialConfig]]:
    """(name, config) for every baseline and seed; all validated before anything runs."""
    return [(name, load_baseline(name, [*overrides, f"seed={seed}"], directory)) for name in names for seed in seeds]


def run_baselines_local(
    jobs: list[tuple[str, TrialConfig]],
    store: Store,
    log: Callable[[str], None] = print,
    progress: bool = False,
    tracking: TrackingSettings | None = None,
) -> list[dict]:
    """Run the jobs one after another in this process; jobs already in the store are not run again."""
    records = []
    for i, (name, cfg) in enumerate(jobs, 1):
        rec = store.find(config_hash(cfg), cfg.seed, sweep=SWEEP, baseline=name)
        if rec is None:
            rec = run_trial(
                cfg,
                store.root,
                progress=progress,
                tracking=tracking,
                tags={"sweep": SWEEP, "baseline": name, "backend": "local"},
            )
            log(f"[{i}/{len(jobs)}] {name} seed {cfg.seed}: {rec['status']} ({rec['wall_time_s']:.0f}s)")
        else:
            log(f"[{i}/{len(jobs)}] {name} seed {cfg.seed}: already in the store ({rec['run_id']})")
        records.append(rec)
    return records

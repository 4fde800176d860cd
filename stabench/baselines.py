"""Reference configs (`baselines/*.yaml`) run over several seeds through the trial engine.

Their records are tagged sweep=baselines and baseline=NAME. A (name, seed) already in the store is not run
again, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .config import TrialConfig, config_hash, load_config
from .engine import run_trial
from .errors import UserError
from .record import Tags
from .store import Store
from .tracking import TrackingSettings

# ./baselines when run from a checkout or a project of one's own, else the repository's (editable install)
BASELINES_DIR = Path(os.environ.get("STABENCH_BASELINES", "baselines"))
if not BASELINES_DIR.is_dir() and (Path(__file__).parents[1] / "baselines").is_dir():
    BASELINES_DIR = Path(__file__).parents[1] / "baselines"
SWEEP = "baselines"
Job = tuple[str, TrialConfig]  # (reference name, config with its seed)


def reference_paths(directory: Path = BASELINES_DIR) -> list[Path]:
    """The reference config files, sorted by name."""
    return sorted(Path(directory).glob("*.yaml"))


def baseline_names(directory: Path = BASELINES_DIR) -> list[str]:
    """The names of the reference configs."""
    return [p.stem for p in reference_paths(directory)]


def load_baseline(name: str, overrides: list[str] = (), directory: Path = BASELINES_DIR) -> TrialConfig:
    """A reference config by name, with `overrides` applied."""
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no baseline named '{name}' in {directory}/", key="only", allowed=baseline_names(directory))
    return load_config(path, list(overrides))


def baseline_jobs(
    names: list[str], seeds: list[int], overrides: list[str] = (), directory: Path = BASELINES_DIR
) -> list[Job]:
    """(name, config) for every baseline and seed; all validated before anything runs."""
    return [(name, load_baseline(name, [*overrides, f"seed={seed}"], directory)) for name in names for seed in seeds]


def pending(jobs: list[Job], store: Store) -> list[Job]:
    """The jobs the store does not have a finished record of."""
    return [(n, c) for n, c in jobs if store.find(config_hash(c), c.seed, sweep=SWEEP, baseline=n) is None]


def run_baselines(
    jobs: list[Job],
    store: Store,
    backend: str = "local",
    tracking: TrackingSettings | None = None,
    log: Callable[[str], None] = print,
    **ray_options,
) -> None:
    """Run the jobs the store lacks: one after another in this process (`local`), or as Ray Tune trials."""
    if backend == "ray":
        from .sweep.ray import run_ray_jobs
        from .sweep.ray_cluster import RayCluster

        todo = [(n, c, Tags(sweep=SWEEP, reference=n, backend="ray").to_dict()) for n, c in pending(jobs, store)]
        run_ray_jobs(todo, store, RayCluster(**ray_options), tracking=tracking)
    else:
        run_baselines_local(jobs, store, log=log, tracking=tracking)


def run_baselines_local(
    jobs: list[Job],
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
            tags = Tags(sweep=SWEEP, reference=name, backend="local").to_dict()
            rec = run_trial(cfg, store.root, progress=progress, tracking=tracking, tags=tags)
            log(f"[{i}/{len(jobs)}] {name} seed {cfg.seed}: {rec['status']} ({rec['wall_time_s']:.0f}s)")
        else:
            log(f"[{i}/{len(jobs)}] {name} seed {cfg.seed}: already in the store ({rec['run_id']})")
        records.append(rec)
    return records

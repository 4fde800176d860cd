"""Reference configs (`baselines/*.yaml`) run over several seeds through the trial engine.

Their records are tagged sweep=baselines and baseline=NAME. A (name, seed) already in the store is not run
again, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..config import TrialConfig, choices, config_hash, load_config
from ..errors import UserError
from ..records.record import Tags
from ..records.store import Store
from ..records.tracking import TrackingSettings
from .core import preemptible_jobs, run_job

SWEEP = "baselines"
Job = tuple[str, TrialConfig]  # (reference name, config with its seed)


def baselines_dir() -> Path:
    """Where the reference configs are: $STABENCH_BASELINES, else ./baselines when run from a checkout or a project
    of one's own, else the repository's (editable install). Looked up when called, never at import."""
    given = Path(os.environ.get("STABENCH_BASELINES", "baselines"))
    repository = Path(__file__).parents[2] / "baselines"  # stabench/sweep/ -> the repository root
    return given if given.is_dir() or not repository.is_dir() else repository


def backbone_overrides(backbone: str) -> list[str]:
    """A reference config moved to `backbone`, with that backbone's standard norm (a null norm resolves to it)."""
    return [f"workload.backbone={backbone}", "model.norm=null"]


def references(directory: Path | None = None) -> dict[str, tuple[Path, list[str]]]:
    """The table of named references, name -> (file, overrides): the backbone is an axis, so each file names a
    config on its own backbone and, as `<name>-<backbone>`, on every other one (`ddpm-uvit`: DDPM on the U-ViT of
    Bao et al. 2023, the backbone of ScaleLong's released code, with LayerNorm)."""
    table: dict[str, tuple[Path, list[str]]] = {}
    for path in sorted(Path(directory or baselines_dir()).glob("*.yaml")):
        table[path.stem] = (path, [])
        own = load_config(path).workload.backbone
        for backbone in (b for b in choices("workload.backbone") if b != own):
            table[f"{path.stem}-{backbone}"] = (path, backbone_overrides(backbone))
    return dict(sorted(table.items()))


def baseline_names(directory: Path | None = None) -> list[str]:
    """The names of the reference configs, every backbone's."""
    return list(references(directory))


def load_baseline(name: str, overrides: Sequence[str] = (), directory: Path | None = None) -> TrialConfig:
    """A reference config by name, with `overrides` applied."""
    table = references(directory)
    if name not in table:
        where = directory or baselines_dir()
        raise UserError(f"no baseline named '{name}' in {where}/", key="only", allowed=list(table))
    path, axis = table[name]
    return load_config(path, [*axis, *overrides])


def reference_configs(directory: Path | None = None) -> dict[str, TrialConfig]:
    """Every named reference config (for `sweep --with-baselines`)."""
    return {name: load_baseline(name, directory=directory) for name in references(directory)}


def baseline_jobs(
    names: list[str], seeds: list[int], overrides: Sequence[str] = (), directory: Path | None = None
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
        from .ray import run_ray_jobs
        from .ray_cluster import RayCluster

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
    with preemptible_jobs(log):
        for i, (name, cfg) in enumerate(jobs, 1):
            rec = store.find(config_hash(cfg), cfg.seed, sweep=SWEEP, baseline=name)
            if rec is None:
                tags = Tags(sweep=SWEEP, reference=name, backend="local").to_dict()
                rec = run_job(cfg, store, progress=progress, tracking=tracking, tags=tags)
                log(f"[{i}/{len(jobs)}] {name} seed {cfg.seed}: {rec['status']} ({rec['wall_time_s']:.0f}s)")
            else:
                log(f"[{i}/{len(jobs)}] {name} seed {cfg.seed}: already in the store ({rec['run_id']})")
            records.append(rec)
    return records

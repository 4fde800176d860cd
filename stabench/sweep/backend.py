"""The seam between the CLI and the sweep backends: one call, `run_sweep(name, ...)`, and a registry.

A backend decides which configs run and where; it trains them through `ConfigRun` (core.py), so every
backend writes the same records. Adding a backend means one function with this signature and one entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import UserError
from ..space import SearchSpace
from ..store import Store
from ..tracking import TrackingSettings

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SweepSettings:
    """What every backend is told: the study, its size, resumption, failures, named points and tracking."""

    study: str
    n_trials: int
    resume: bool = False
    max_failures: int = 3
    named_points: dict[str, dict] = field(default_factory=dict)  # name -> params, run first
    study_storage: str | None = None  # Optuna journal file or RDB URL (default: a journal file per study)
    tracking: TrackingSettings | None = None

    @classmethod
    def of(cls, space: SearchSpace, **fields: Any) -> SweepSettings:
        """The settings of a sweep over `space`: named after it, with its trial budget, unless `fields` say."""
        return cls(**{"study": space.name, "n_trials": space.budget.trials, **fields})

    def __post_init__(self) -> None:
        # The study name becomes file names (journal, lock, Ray experiment): no separators, no leading dot.
        if not STUDY_NAME.fullmatch(self.study):
            raise UserError(f"'{self.study}' cannot be a study name (it names files); use letters, digits, '.', "
                            "'_' and '-', starting with a letter or digit", key="study")  # fmt: skip


class Backend(Protocol):
    """Runs (or continues) a sweep and returns its summary (`best` or `pareto_front`, and counts)."""

    def __call__(self, space: SearchSpace, store: Store, settings: SweepSettings, **options: Any) -> dict: ...


def _optuna(space: SearchSpace, store: Store, settings: SweepSettings, *, workers: int = 1, gpus=None, **_) -> dict:
    from .optuna import run_optuna_sweep

    return run_optuna_sweep(space, store, settings, workers=workers, gpus=gpus)


def _ray(space: SearchSpace, store: Store, settings: SweepSettings, *, max_concurrent=None, **cluster: Any) -> dict:
    from .ray import run_ray_sweep
    from .ray_cluster import RayCluster

    return run_ray_sweep(space, store, settings, RayCluster(**cluster), max_concurrent=max_concurrent)


BACKENDS: dict[str, Backend] = {"optuna": _optuna, "ray": _ray}  # imported on use: Ray is slow to import


def run_sweep(backend: str, space: SearchSpace, store: Store, settings: SweepSettings, **options: Any) -> dict:
    """Run the sweep on the named backend with its own `options` (e.g. workers; address, gpus_per_trial)."""
    if backend not in BACKENDS:
        raise UserError(f"backend: '{backend}' is not a sweep backend; allowed: {', '.join(BACKENDS)}")
    run: Callable[..., dict] = BACKENDS[backend]
    return run(space, store, settings, **options)

"""Sweeps: decide which configs run and where, train them through the engine, and report the results.

`space` reads a search space; `core` holds the one per-config seed loop, `SweepSettings` and a worker's
`Placement`; `optuna` and `ray` are thin backends over it, named in `backend`'s registry (by module path, so no
backend imports the registry); `study` opens the Optuna study both use and keeps its trials' books; `ray_cluster`
joins or starts Ray (`RayCluster`: where Ray trials run and how large each is); `workers` supervises local
processes; `confirm` reruns a sweep's best configs with more seeds; `baselines` runs the named reference configs.
"""

from .backend import BACKENDS, run_sweep
from .confirm import confirm, top_configs
from .core import ConfigRun, Placement, SweepSettings, TrialFailed, TrialPruned, named_points, objective_values
from .ray_cluster import RayCluster

__all__ = [
    "BACKENDS",
    "ConfigRun",
    "Placement",
    "RayCluster",
    "SweepSettings",
    "TrialFailed",
    "TrialPruned",
    "confirm",
    "named_points",
    "objective_values",
    "run_sweep",
    "top_configs",
]

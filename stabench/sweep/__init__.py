"""Sweeps: decide which configs run and where, train them through the engine, and report the results.

`core` holds the one per-config seed loop; `optuna` and `ray` are thin backends over it, registered in
`backend`; `study` opens the Optuna study both use and keeps its trials' books; `ray_cluster` joins or starts Ray;
`workers` supervises local processes; `confirm` reruns a sweep's best configs with more seeds.
"""

from .backend import BACKENDS, SweepSettings, run_sweep
from .confirm import confirm, top_configs
from .core import ConfigRun, TrialFailed, TrialPruned, named_points, objective_values

__all__ = [
    "BACKENDS",
    "ConfigRun",
    "SweepSettings",
    "TrialFailed",
    "TrialPruned",
    "confirm",
    "named_points",
    "objective_values",
    "run_sweep",
    "top_configs",
]

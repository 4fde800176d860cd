"""stabench: measure which training-stabilization settings make diffusion models train well.

The names a script needs, imported on first use (so `import stabench` stays fast and loads no torch):

    cfg = stabench.load_config("baselines/ddpm.yaml", ["steps=200"])
    record = stabench.run_trial(cfg, "runs")              # or drive stabench.Trial(cfg).run() yourself
    space = stabench.load_space("search_spaces/lsc.yaml")
    stabench.run_sweep("optuna", space, stabench.Store("runs"), stabench.SweepSettings("lsc", 20))
    stabench.write_leaderboard(list(stabench.Store("runs").records()), "runs/leaderboard", "fid_digits", "ddpm")
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "TrialConfig": "config",
    "load_config": "config",
    "config_hash": "config",
    "Trial": "engine",
    "run_trial": "engine",
    "rescore": "engine",
    "Status": "records.record",
    "METRICS": "records.metrics",
    "SearchSpace": "sweep.space",
    "load_space": "sweep.space",
    "Store": "records.store",
    "SweepSettings": "sweep",
    "run_sweep": "sweep",
    "confirm": "sweep",
    "build_leaderboard": "leaderboard",
    "write_leaderboard": "leaderboard",
    "UserError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stabench' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)

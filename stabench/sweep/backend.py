"""The seam between the CLI and the sweep backends: one call, `run_sweep(name, ...)`, and a registry.

A backend decides which configs run and where; it trains them through `ConfigRun` (core.py), so every
backend writes the same records. Adding a backend means one function with the `Backend` signature in its own
module and one entry here, `name -> "module:function"`: the registry names its backends instead of importing
them, so a backend imports what it shares with the others from `core` and never this module (no import circle),
and the CLI lists the names without importing Ray, which is slow to import.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Protocol

from ..errors import UserError
from ..records.store import Store
from .core import SweepSettings
from .space import SearchSpace


class Backend(Protocol):
    """Runs (or continues) a sweep and returns its summary (`best` or `pareto_front`, and counts)."""

    def __call__(self, space: SearchSpace, store: Store, settings: SweepSettings, **options: Any) -> dict: ...


BACKENDS: dict[str, str] = {  # name -> "module:function", imported on use
    "optuna": "stabench.sweep.optuna:optuna_backend",
    "ray": "stabench.sweep.ray:ray_backend",
}


def get_backend(name: str) -> Backend:
    """The backend registered as `name`, imported now."""
    if name not in BACKENDS:
        raise UserError(f"backend: '{name}' is not a sweep backend; allowed: {', '.join(BACKENDS)}")
    module, function = BACKENDS[name].split(":")
    return getattr(import_module(module), function)


def run_sweep(backend: str, space: SearchSpace, store: Store, settings: SweepSettings, **options: Any) -> dict:
    """Run the sweep on the named backend with its own `options` (e.g. workers; address, gpus_per_trial)."""
    return get_backend(backend)(space, store, settings, **options)

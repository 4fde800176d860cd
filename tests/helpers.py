"""What several test modules share: the one definition of a tiny trial, a sweep space file built from it, and the
local Ray the in-process Ray tests run on."""

import os
from pathlib import Path

import yaml

from stabench.config import load_config

# A seconds-long real trial on 8x8 digits with a tiny UNet: no FID scoring and no sample grid.
TINY = {
    "workload.preset": "tiny",
    "optim.batch_size": 32,
    "eval.probe_every": 5,
    "eval.probe_size": 16,
    "eval.every": 10,
    "eval.samples": 0,
    "eval.grid": 0,
    "stability.burn_in": 5,
}
TINY_STEPS = 20


def tiny_config(*overrides: str, steps: int = TINY_STEPS):
    """The tiny trial's config, with `KEY=VALUE` overrides."""
    return load_config(None, [f"{k}={v}" for k, v in TINY.items()] + [f"steps={steps}", *overrides])


DEFAULT_SPACE = {
    "lsc.mode": {"type": "categorical", "choices": ["none", "constant"]},
    "lsc.kappa": {"type": "float", "low": 0.5, "high": 0.95, "when": {"lsc.mode": ["constant"]}},
    "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}


def space_file(tmp_path: Path, space=None, objectives=None, seeds=(0,), trials=4, pruner="none", fixed=None, **extra):
    """A sweep space of tiny trials written to `tmp_path/space.yaml` (sweep name `t`)."""
    body = {
        "name": "t",
        "base": {},
        "fixed": {**TINY, "optim.steps": TINY_STEPS, **(fixed or {})},
        "space": space or DEFAULT_SPACE,
        "objectives": objectives or [{"metric": "best_probe_loss"}],
        "seeds": list(seeds),
        "budget": {"trials": trials},
        "pruner": {"name": pruner},
        **extra,
    }
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return p


REPO = str(Path(__file__).resolve().parents[1])  # Ray workers import tests.sweep.faults from here
_shared_ray = {"up": False}


def shared_ray(kill_marker: Path) -> None:
    """Start the local Ray (2 CPUs) that the in-process Ray tests share, unless it is up: one start serves them all.
    Its workers run tests.sweep.faults.ray_worker_hooks (a simulated OOM, a kill mid-seed marked by `kill_marker`),
    which act only on trials with their own learning rates."""
    import ray

    if _shared_ray["up"] and ray.is_initialized():
        return
    ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": "tests.sweep.faults.ray_worker_hooks",
            "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "PYTHONPATH": REPO, "STABENCH_KILL_MARKER": str(kill_marker)},
        },
    )
    _shared_ray["up"] = True


def stop_ray() -> None:
    """Shut Ray down (the shared one too): for a test that starts Ray with a runtime_env or resources of its own."""
    import ray

    ray.shutdown()
    _shared_ray["up"] = False


class RunsCode:
    """Unpickled, it runs a shell command: what an attacker plants in a checkpoint."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)

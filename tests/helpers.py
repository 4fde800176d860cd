"""What several test modules share: the one definition of a tiny trial, and a sweep space file built from it."""

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

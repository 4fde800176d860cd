import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from stabench.config import (
    ConfigError,
    TrialConfig,
    choices,
    config_hash,
    config_to_dict,
    leaf_keys,
    load_config,
    resolve_key,
)
from stabench.sweep.baselines import baseline_names, load_baseline


def write(tmp_path, text, name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_valid_and_explicit():
    cfg = TrialConfig()
    assert cfg.model.norm == "group"  # resolved from the backbone
    assert TrialConfig.model_validate({"workload": {"backbone": "uvit"}}).model.norm == "layer"


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "optim:\n  lr: 1.0e-3\nlsc:\n  mode: constant\n")
    cfg = load_config(p, ["steps=7", "lsc.kappa=0.7", "ema.betas=[0.99, 0.999]", "clip_norm=null"])
    assert cfg.optim.lr == 1e-3
    assert cfg.optim.steps == 7
    assert cfg.lsc.kappa == 0.7
    assert cfg.ema.betas == (0.99, 0.999)
    assert cfg.optim.clip_norm is None


@pytest.mark.parametrize(
    "key,full",
    [
        ("steps", "optim.steps"),
        ("lr", "optim.lr"),
        ("kappa", "lsc.kappa"),
        ("ema.betas", "ema.betas"),
        ("dropout", "model.dropout"),
        ("schedule", "diffusion.schedule"),
    ],
)
def test_unique_leaf_shortcuts(key, full):
    assert resolve_key(key) == full


def test_ambiguous_shortcut_lists_candidates():
    with pytest.raises(ConfigError, match="ambiguous.*optim.betas.*ema.betas"):
        resolve_key("betas")


def test_unknown_override_suggests():
    with pytest.raises(ConfigError, match="unknown config key.*lsc.kappa"):
        load_config(None, ["lsc.kapa=0.5"])


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "lsc:\n  kapa: 0.5\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert "lsc.kapa" in msg
    assert "kappa" in msg
    assert "mode" in msg


@pytest.mark.parametrize(
    "text,key,allowed",
    [
        ("optim:\n  lr: -1\n", "optim.lr", "gt 0.0"),
        ("model:\n  dropout: 0.9\n", "model.dropout", "le 0.5"),
        ("lsc:\n  mode: sideways\n", "lsc.mode", "'learnable_per_skip'"),
        ("ema:\n  betas: [1.5]\n", "ema.betas", "(0, 1)"),
        ("timestep_weighting:\n  kind: sqrt\n", "timestep_weighting.kind", "'min_snr'"),
        ("optim:\n  steps: many\n", "optim.steps", "int"),
    ],
)
def test_out_of_range_values_name_file_key_and_allowed(tmp_path, text, key, allowed):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg
    assert key in msg
    assert allowed in msg


def test_yaml_syntax_error_names_file(tmp_path):
    p = write(tmp_path, "lsc: [\n")
    with pytest.raises(ConfigError, match="YAML syntax error"):
        load_config(p)


def test_combination_checks():
    with pytest.raises(ConfigError, match="workload.root"):
        load_config(None, ["dataset=folder"])
    with pytest.raises(ConfigError, match="uvit"):
        load_config(None, ["backbone=uvit", "norm=group"])


def test_hash_ignores_seed_and_device_but_not_knobs():
    base = load_config(None)
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(base))
    assert config_hash(base) == config_hash(load_config(None, ["seed=5", "device=cpu"]))
    assert config_hash(base) != config_hash(load_config(None, ["lsc.kappa=0.7"]))
    # stable across processes (no dict-order or hash-seed dependence)
    other = subprocess.run(
        [sys.executable, "-c", "from stabench.config import *; print(config_hash(TrialConfig()))"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == config_hash(base)


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["lsc.mode=linear", "ema.betas=[0.99,0.999]", "clip_norm=null"])
    p = write(tmp_path, yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(p) == cfg


# Values no rule derives: keys whose default is null or a tuple, and the device string.
OTHER_VALUES = {
    "device": "cpu",
    "workload.root": "data",
    "workload.width": 8,
    "workload.depth": 6,
    "workload.heads": 2,
    "workload.patch": 4,
    "workload.mlp_ratio": 3.0,
    "model.time_mlp": False,
    "optim.betas": [0.8, 0.99],
    "ema.betas": [0.99],
    "eval.inception_weights": "weights.pth",
}
COMPANIONS = {
    "workload.dataset": ["workload.root=data"],  # cifar10 needs a data directory
    "ema.warmup": ["ema.betas=[0.99]"],  # 0.9999 without warm-up would warn about its half-life
}


def default_of(key):
    value = config_to_dict(TrialConfig())
    for part in key.split("."):
        value = value[part]
    return value


def other_value(key):
    """A valid value of `key` that is not its default: another allowed value, the negation, or twice the number."""
    default = default_of(key)
    if key in OTHER_VALUES:
        return OTHER_VALUES[key]
    if choices(key):
        return next(c for c in choices(key) if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float):
        return default * 2 if default else type(default)(1 if isinstance(default, int) else 0.1)
    raise AssertionError(f"{key}: no rule for a non-default value of {default!r}; add one to OTHER_VALUES")


@pytest.mark.parametrize("key", leaf_keys())
def test_every_leaf_key_is_settable(key):
    value = other_value(key)
    assert value != default_of(key)
    cfg = load_config(None, [*COMPANIONS.get(key, []), f"{key}={json.dumps(value)}"])
    set_to = config_to_dict(cfg)
    for part in key.split("."):
        set_to = set_to[part]
    assert set_to == value


def test_an_ema_longer_than_half_the_run_warns():
    with pytest.warns(UserWarning, match="ema.betas: 0.9999 has a half-life of 6931 steps"):
        load_config(None, ["steps=600", "ema.warmup=false", "ema.betas=[0.9999]"])


@pytest.mark.parametrize("name", baseline_names())
def test_the_shipped_baselines_size_their_ema_to_the_run(name, recwarn):
    for steps in (600, 2000):  # the committed CPU regime and the files' own length
        load_baseline(name, [f"steps={steps}"])
    assert not [w for w in recwarn if "half-life" in str(w.message)]


def test_ema_half_life_with_warm_up_follows_the_run():
    from stabench.config import ema_half_life

    assert ema_half_life(0.9999, False, 600) == pytest.approx(6931, rel=1e-3)
    assert ema_half_life(0.9999, True, 600) < 60

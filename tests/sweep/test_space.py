from pathlib import Path

import optuna
import pytest
import yaml

from stabench.errors import ConfigError
from stabench.sweep.space import load_space, suggest, trial_config

BASE = {"workload": {"preset": "tiny"}, "optim": {"steps": 20}}


def write_space(tmp_path, body: dict, name="space.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"base": BASE, "objectives": [{"metric": "best_probe_loss"}], **body}))
    return p


def test_every_distribution_type_maps_to_optuna(tmp_path):
    p = write_space(
        tmp_path,
        {
            "space": {
                "lsc.mode": {"type": "categorical", "choices": ["none", "constant"]},
                "kappa": {"type": "float", "low": 0.5, "high": 0.95, "when": {"lsc.mode": ["constant"]}},
                "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                "dropout": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.1},
                "warmup_steps": {"type": "int", "low": 0, "high": 10, "step": 5},
                "optim.batch_size": {"type": "int", "low": 8, "high": 64, "log": True},
            }
        },
    )
    space = load_space(p)
    keys = list(space.space)  # shortcuts resolved to full keys, parents before conditional keys
    assert set(keys) == {"lsc.mode", "lsc.kappa", "optim.lr", "model.dropout", "optim.warmup_steps", "optim.batch_size"}
    assert keys.index("lsc.mode") < keys.index("lsc.kappa")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_modes = set()
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, space)
        seen_modes.add(params["lsc.mode"])
        assert ("lsc.kappa" in params) == (params["lsc.mode"] == "constant")  # conditional
        d = trial.distributions
        assert isinstance(d["lsc.mode"], optuna.distributions.CategoricalDistribution)
        assert d["optim.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
        assert d["model.dropout"] == optuna.distributions.FloatDistribution(0.0, 0.3, step=0.1)
        assert d["optim.warmup_steps"] == optuna.distributions.IntDistribution(0, 10, step=5)
        assert d["optim.batch_size"] == optuna.distributions.IntDistribution(8, 64, log=True)
        cfg = trial_config(space, params, seed=3)
        assert cfg.seed == 3
        assert cfg.optim.lr == params["optim.lr"]
        assert cfg.optim.steps == 20
        study.tell(trial, 1.0)
    assert seen_modes == {"none", "constant"}


def test_base_path_is_relative_to_the_space_file(tmp_path):
    (tmp_path / "b.yaml").write_text("optim:\n  steps: 33\n")
    p = tmp_path / "s.yaml"
    p.write_text(
        "base: b.yaml\nspace:\n  lr: {type: float, low: 0.001, high: 0.01}\nobjectives: [{metric: instability}]\n"
    )
    assert trial_config(load_space(p), {"optim.lr": 0.002}, 0).optim.steps == 33


MALFORMED = [
    ({"space": {"lsc.kapa": {"type": "float", "low": 0.5, "high": 0.9}}}, "space.lsc.kapa"),
    ({"space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "space.lr"),
    ({"space": {"lr": {"type": "float", "low": 0.0, "high": 0.01, "log": True}}}, "space.lr"),
    ({"space": {"lsc.mode": {"type": "categorical", "choices": []}}}, "space.lsc.mode"),
    ({"space": {"dropout": {"type": "float", "low": 0.0, "high": 0.9}}}, "space.dropout"),
    ({"space": {"lsc.mode": {"type": "categorical", "choices": ["none", "sideways"]}}}, "space.lsc.mode"),
    (
        {"space": {"kappa": {"type": "float", "low": 0.5, "high": 0.9, "when": {"lsc.mode": ["constant"]}}}},
        "space.kappa.when",
    ),
    ({"space": {"lr": {"type": "beta", "low": 0.1, "high": 0.2}}}, "space.lr"),
    ({"fixed": {"lr": 0.001}, "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}, "space.optim.lr"),
    ({"space": {"seed": {"type": "int", "low": 0, "high": 3}}}, "space.seed"),
    (
        {"space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "objectives": [{"metric": "fidd"}]},
        "objectives.metric",
    ),
    (
        {
            "space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}},
            "objectives": [{"metric": "fid_digits", "direction": "maximize"}],
        },
        "objectives.direction",
    ),  # fmt: skip
    ({"space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "bounds": 3}}}, "space.lr"),
    ({"space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "sampler": {"name": "annealing"}}, "sampler.name"),
]


@pytest.mark.parametrize("body,key", MALFORMED, ids=[k + str(i) for i, (_, k) in enumerate(MALFORMED)])
def test_malformed_spaces_are_rejected_naming_the_key(tmp_path, body, key):
    p = write_space(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_space(p)
    assert str(p) in str(e.value), str(e.value)
    assert key in str(e.value), str(e.value)


SHIPPED = sorted((Path(__file__).parents[2] / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_spaces_validate(path):
    assert len(SHIPPED) >= 7  # the committed ones, found from any working directory
    assert load_space(path).space, path


def test_list_valued_choices_round_trip_through_optuna(tmp_path):
    p = write_space(tmp_path, {"space": {"ema.betas": {"type": "categorical", "choices": [[0.99], [0.99, 0.999]]}}})
    space = load_space(p)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(8):
        params = suggest(study.ask(), space)
        seen.add(trial_config(space, params, 0).ema.betas)
    assert seen == {(0.99,), (0.99, 0.999)}

"""Bad input fails fast: exit code 2, one message naming the file/flag and the key, no traceback, no training."""

import pytest
import yaml
from click.testing import CliRunner

from stabench.cli import main
from tests.helpers import TINY as HELPER_TINY

TINY = {**HELPER_TINY, "optim.steps": 5}


def space(tmp_path, **overrides):
    body = {
        "base": {},
        "fixed": dict(TINY),
        "objectives": [{"metric": "best_probe_loss"}],
        "space": {"lsc.mode": {"type": "categorical", "choices": ["none", "constant"]}},
    }
    body.update(overrides)
    p = tmp_path / "space.yaml"
    p.write_text(yaml.safe_dump(body, sort_keys=False))
    return str(p)


def config(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return str(p)


def images_folder(tmp_path, content=b"not an image"):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        (d / f"{i}.png").write_bytes(content)
    return str(d)


def a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    return str(f)


# (id, argv builder, substrings the message must contain)
CASES = [
    ("yaml-syntax", lambda t: ["train", config(t, "optim: [\n")], ["cfg.yaml", "YAML syntax error"]),
    ("wrong-type", lambda t: ["train", config(t, "optim:\n  lr: fast\n")], ["cfg.yaml", "optim.lr"]),
    ("unknown-key", lambda t: ["train", config(t, "optim:\n  stepz: 3\n")], ["cfg.yaml", "optim.stepz", "steps"]),
    ("out-of-range", lambda t: ["train", config(t, "model:\n  dropout: 0.9\n")], ["model.dropout", "le 0.5"]),
    ("bad-choice", lambda t: ["train", config(t, "lsc:\n  mode: sideways\n")], ["lsc.mode", "learnable_per_skip"]),
    ("top-level-list", lambda t: ["train", config(t, "- 1\n- 2\n")], ["cfg.yaml", "mapping"]),
    (
        "uvit-group-norm",
        lambda t: ["train", config(t, "workload:\n  backbone: uvit\nmodel:\n  norm: group\n")],
        ["model.norm", "layer"],
    ),
    ("missing-config", lambda t: ["train", str(t / "nope.yaml")], ["nope.yaml", "not found"]),
    ("set-unknown", lambda t: ["train", "baselines/ddpm.yaml", "--set", "lsc.kapa=1"], ["--set: lsc.kapa", "kappa"]),
    (
        "set-ambiguous",
        lambda t: ["train", "baselines/ddpm.yaml", "--set", "betas=[0.9]"],
        ["--set: betas", "optim.betas", "ema.betas"],
    ),
    ("set-no-equals", lambda t: ["train", "baselines/ddpm.yaml", "--set", "steps"], ["--set: steps", "KEY=VALUE"]),
    (
        "missing-folder",
        lambda t: ["train", "baselines/ddpm.yaml", "--set", "dataset=folder", "--set", f"root={t / 'missing'}"],
        ["workload.root", "does not exist"],
    ),
    (
        "unreadable-images",
        lambda t: [
            "train",
            "baselines/ddpm.yaml",
            "--set",
            "dataset=folder",
            "--set",
            f"root={images_folder(t)}",
            "--set",
            "samples=0",
        ],
        ["workload.root", "cannot read image", "0.png"],
    ),
    (
        "missing-cifar",
        lambda t: [
            "train",
            "baselines/ddpm.yaml",
            "--set",
            "dataset=cifar10",
            "--set",
            "resolution=32",
            "--set",
            f"root={t}",
        ],
        ["workload.root", "cifar-10-python.tar.gz"],
    ),
    (
        "missing-inception-weights",
        lambda t: ["train", "baselines/ddpm.yaml", "--set", "eval.extractor=inception"],
        ["eval.inception_weights", "weights-inception-2015-12-05-6726825d.pth", "--inception-weights"],
    ),
    (
        "inception-weights-not-found",
        lambda t: [
            "train",
            "baselines/ddpm.yaml",
            "--set",
            "eval.extractor=inception",
            "--inception-weights",
            str(t / "nope.pth"),
        ],
        ["nope.pth"],
    ),
    ("out-is-a-file", lambda t: ["train", "baselines/ddpm.yaml", "--out", a_file(t)], ["--out", "is a file"]),
    (
        "resume-without-checkpoint",
        lambda t: ["train", "baselines/ddpm.yaml", "--resume", str(t)],
        ["--resume", "no checkpoint"],
    ),
    (
        "space-empty-range",
        lambda t: ["sweep", space(t, space={"lr": {"type": "float", "low": 0.1, "high": 0.01}})],
        ["space.yaml", "space.lr", "empty range"],
    ),
    (
        "space-low-equals-high",
        lambda t: ["sweep", space(t, space={"lr": {"type": "float", "low": 0.1, "high": 0.1}})],
        ["space.lr", "empty range"],
    ),
    (
        "space-log-nonpositive",
        lambda t: ["sweep", space(t, space={"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}})],
        ["space.lr", "low > 0"],
    ),
    (
        "space-no-choices",
        lambda t: ["sweep", space(t, space={"lsc.mode": {"type": "categorical", "choices": []}})],
        ["space.lsc.mode", "at least one choice"],
    ),
    (
        "space-orphan-conditional",
        lambda t: [
            "sweep",
            space(t, space={"kappa": {"type": "float", "low": 0.5, "high": 0.9, "when": {"lsc.mode": ["constant"]}}}),
        ],
        ["space.kappa.when", "parent"],
    ),
    (
        "space-unknown-key",
        lambda t: ["sweep", space(t, space={"lsc.kapa": {"type": "float", "low": 0.5, "high": 0.9}})],
        ["space.lsc.kapa", "unknown"],
    ),
    (
        "space-fixed-and-searched",
        lambda t: [
            "sweep",
            space(t, fixed={**TINY, "optim.lr": 0.001}, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2}}),
        ],
        ["space.lr", "fixed"],
    ),
    (
        "space-unknown-metric",
        lambda t: ["sweep", space(t, objectives=[{"metric": "fidd"}])],
        ["objectives.metric", "fid_digits"],
    ),
    ("space-unknown-sampler", lambda t: ["sweep", space(t, sampler={"name": "annealing"})], ["sampler.name", "tpe"]),
    (
        "space-unknown-type",
        lambda t: ["sweep", space(t, space={"lr": {"type": "beta", "low": 0, "high": 1}})],
        ["space.lr", "float, int, categorical"],
    ),
    ("space-missing-base", lambda t: ["sweep", space(t, base="nope.yaml")], ["space.yaml", "base", "nope.yaml"]),
    (
        "space-bad-range-for-key",
        lambda t: ["sweep", space(t, space={"dropout": {"type": "float", "low": 0.0, "high": 0.9}})],
        ["space.dropout", "0.9"],
    ),
    ("sweep-store-is-file", lambda t: ["sweep", space(t), "--store", a_file(t)], ["--store", "not a directory"]),
    (
        "sweep-bad-storage-url",
        lambda t: ["sweep", space(t), "--store", str(t / "s"), "--storage", "nosuchdb://user@host/db"],
        ["--storage", "nosuchdb"],
    ),
    (
        "sweep-unreachable-postgres",
        lambda t: [
            "sweep",
            space(t),
            "--store",
            str(t / "s"),
            "--study-storage",
            "postgresql+psycopg2://u@127.0.0.1:1/db",
        ],
        ["--study-storage", "127.0.0.1:1"],
    ),
    (
        "sweep-workers-not-a-count",
        lambda t: ["sweep", space(t), "--workers", "0", "--store", str(t / "s")],
        ["--workers", "'0'", "auto"],
    ),
    (
        "sweep-unreachable-address",
        lambda t: ["sweep", space(t), "--backend", "ray", "--address", "127.0.0.1:1", "--store", str(t / "s")],
        ["--address", "127.0.0.1:1"],
    ),
    (
        "baseline-unknown",
        lambda t: ["baselines", "--only", "ddmp", "--store", str(t / "s")],
        ["--only", "ddmp", "ddpm"],
    ),
    ("baseline-bad-seeds", lambda t: ["baselines", "--seeds", "a,b", "--store", str(t / "s")], ["--seeds", "a,b"]),
    ("leaderboard-store-is-file", lambda t: ["leaderboard", "--store", a_file(t)], ["--store", "not a directory"]),
    ("leaderboard-empty-store", lambda t: ["leaderboard", "--store", str(t)], ["--store", "no records"]),
    ("confirm-unknown-sweep", lambda t: ["confirm", "nosweep", "--store", str(t)], ["SWEEP", "nosweep"]),
]


@pytest.mark.parametrize("build,needles", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_a_message_naming_the_key(tmp_path, monkeypatch, build, needles):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    args = build(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    assert not list(tmp_path.rglob("record.json")), "nothing may train on bad input"


def test_debug_flag_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "train", str(tmp_path / "nope.yaml")])
    assert result.exit_code != 0
    assert result.exception is not None
    assert not isinstance(result.exception, SystemExit)

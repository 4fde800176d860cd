import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stabench.cli import main

ROOT = Path(__file__).resolve().parents[2]


def stabench(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "stabench.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_readme_train_command_200_steps(tmp_path):
    """The README's train command as written: a real 200-step digits trial that learns."""
    rec, proc = train_ddpm(tmp_path, "steps=200")
    assert rec["steps_completed"] == 200
    probe = rec["probes"]["probe_loss"]
    assert probe[-1] < 0.5 * probe[0]
    assert sum(b < a for a, b in zip(probe, probe[1:])) >= 0.75 * (len(probe) - 1)  # mostly decreasing


def test_readme_train_command_writes_a_record_full_of_stability_metrics(tmp_path):
    """The README's train command, shortened (its 200-step run is the slow test above)."""
    rec, proc = train_ddpm(tmp_path, "steps=30", "eval.samples=100", "eval.probe_every=5")
    assert rec["steps_completed"] == 30
    for key in [
        "clip_frac",
        "grad_norm_cv",
        "grad_spike_rate",
        "probe_loss_osc",
        "decoder_norm_max",
        "decoder_norm_growth",
        "decoder_norm_osc",
        "skip_norm_growth",
        "probe_grad_cv",
        "probe_grad_osc",
        "probe_grad_spike_frac",
        "instability",
    ]:
        assert rec["metrics"][key] is not None, key
    assert len(rec["probes"]["skip_norms"][0]) == 9  # every long skip of the small UNet
    assert (Path(rec["run_dir"]) / "samples.png").exists()
    assert "instability" in proc.stdout
    assert "ok" in proc.stdout


def train_ddpm(tmp_path, *overrides: str):
    """`stabench train baselines/ddpm.yaml --set ...` as a process; its record and the finished process."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    proc = stabench("train", "baselines/ddpm.yaml", *sets, "--out", str(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr
    (record_path,) = tmp_path.glob("*/record.json")
    rec = json.loads(record_path.read_text())
    assert rec["status"] == "ok"
    return rec, proc


def test_bad_yaml_key_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1.0e-3\n  stepz: 10\n")
    proc = stabench("train", str(bad), "--out", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "optim.stepz" in proc.stderr
    assert str(bad) in proc.stderr
    assert "steps" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # failed before any training


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "betas=0.9"], "optim.betas, ema.betas"),
        (["--set", "lr=-3"], "optim.lr"),
        (["--set", "dataset=folder", "--set", "root=/does/not/exist"], "/does/not/exist"),
        (["--set", "lsc.mode=sideways"], "learnable_per_skip"),
        (["--device", "cuda:7"], "device"),
    ],
)
def test_user_errors_exit_2(args, needle):
    result = CliRunner().invoke(main, ["train", "baselines/ddpm.yaml", "--quiet", *args])
    if needle == "device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_missing_config_file_exits_2():
    result = CliRunner().invoke(main, ["train", "nope.yaml"])
    assert result.exit_code == 2
    assert "nope.yaml" in result.output


def test_dry_run_prints_resolved_config():
    from stabench.config import config_hash, load_config

    result = CliRunner().invoke(main, ["train", "baselines/ddpm.yaml", "--dry-run", "--set", "kappa=0.7"])
    assert result.exit_code == 0
    assert "kappa: 0.7" in result.output
    expected = config_hash(load_config(ROOT / "baselines/ddpm.yaml", ["kappa=0.7"]))
    assert len(expected) == 16
    assert f"# config_hash: {expected}" in result.output


@pytest.mark.parametrize("name", ["main", *main.commands])
def test_help_explains_every_option(name):
    cmd = main if name == "main" else main.commands[name]
    assert cmd.help
    for param in cmd.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help, f"{name} {param.opts} has no help text"
    result = CliRunner().invoke(main, ([] if name == "main" else [name]) + ["--help"])
    assert result.exit_code == 0


def test_keys_lists_every_leaf():
    from stabench.config import allowed_values, leaf_keys

    result = CliRunner().invoke(main, ["keys"])
    listed = [line.split()[0] for line in result.output.splitlines()]
    assert listed == leaf_keys()
    for key, line in zip(listed, result.output.splitlines()):
        assert line.rstrip().endswith(allowed_values(key)), line


def test_inception_weights_reach_the_config_not_the_environment(tmp_path, monkeypatch):
    import os

    import yaml

    monkeypatch.delenv("STABENCH_INCEPTION_WEIGHTS", raising=False)
    weights = tmp_path / "w: 1.pth"  # YAML-looking path: passed as a string whatever it contains
    result = CliRunner().invoke(
        main, ["train", "baselines/ddpm.yaml", "--dry-run", "--inception-weights", str(weights)]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["eval"]["inception_weights"] == str(weights)
    assert "STABENCH_INCEPTION_WEIGHTS" not in os.environ


def test_the_leaderboard_command_says_which_figures_it_left_out_and_why(tmp_path):
    store = ROOT / "results" / "validation" / "exploratory" / "store"
    out = CliRunner().invoke(main, ["leaderboard", "--store", str(store), "--sweep", "validation-stress",
                                    "--baseline", "none@validation-stress", "--metric", "final_probe_loss",
                                    "--out", str(tmp_path)])  # fmt: skip
    assert out.exit_code == 0, out.output[-2000:]
    assert "left out: final_probe_loss over training: omitted (the records hold 1 evaluation point" in out.output

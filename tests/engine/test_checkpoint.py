"""Atomic checkpoints; a resumed trial ends bit-identical to an uninterrupted one (RNG state included)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from stabench.engine import CHECKPOINT, Trial, run_trial
from stabench.errors import UserError
from tests.helpers import tiny_config

KNOBS = ["checkpoint_every=10", "dropout=0.2", "stochastic_depth=0.1", "ema.betas=[0.9,0.99]", "hflip=0.3"]


def final_state(run_dir):
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["loop"]


def assert_same(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for beta in a["ema"]["shadows"]:
        assert all(torch.equal(x, y) for x, y in zip(a["ema"]["shadows"][beta], b["ema"]["shadows"][beta]))
    assert a["log"]["loss"] == b["log"]["loss"]
    assert a["probes"] == b["probes"]
    assert a["evals"] == b["evals"]


def test_resumed_trial_equals_uninterrupted_bit_for_bit(tmp_path):
    cfg = tiny_config(*KNOBS, steps=40)
    full = run_trial(cfg, tmp_path / "full")
    # interrupted: advance to the evaluation at step 20 (the last checkpoint is from step 10), then "crash"
    trial = Trial(cfg, tmp_path / "cut")
    while next(trial.run())["step"] < 20:
        pass
    run_dir = trial.run_dir
    del trial
    assert (run_dir / CHECKPOINT).exists()
    assert not (run_dir / "record.json").exists()
    torch.manual_seed(12345)  # the resumed run must not depend on the process's RNG state
    resumed = run_trial(cfg, tmp_path / "cut", resume_dir=run_dir)
    assert resumed["run_id"] == run_dir.name
    assert resumed["resumed_from_step"] == 10
    assert resumed["curves"]["loss"] == full["curves"]["loss"]
    assert_same(final_state(run_dir), final_state(tmp_path / "full" / full["run_id"]))


def test_resume_refuses_another_config(tmp_path):
    rec = run_trial(tiny_config("checkpoint_every=10"), tmp_path)
    with pytest.raises(UserError, match="already finished"):  # records are never rewritten
        run_trial(tiny_config("checkpoint_every=10"), tmp_path, resume_dir=tmp_path / rec["run_id"])
    (tmp_path / rec["run_id"] / "record.json").unlink()  # as if it had been killed before the end
    with pytest.raises(UserError, match="belongs to config"):
        run_trial(tiny_config("checkpoint_every=10", "lr=0.01"), tmp_path, resume_dir=tmp_path / rec["run_id"])


@pytest.mark.slow  # kill -9 of the CLI; the default run has it in-process: test_resumed_trial_equals_uninterrupted_*
def test_killed_cli_trial_resumes_to_the_same_result(tmp_path):
    args = [
        sys.executable,
        "-m",
        "stabench.cli",
        "train",
        "baselines/ddpm.yaml",
        "--quiet",
        "--set",
        "preset=tiny",
        "--set",
        "steps=120",
        "--set",
        "batch_size=32",
        "--set",
        "samples=0",
        "--set",
        "eval.every=20",
        "--checkpoint-every",
        "20",
        "--wandb",
        "disabled",
    ]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen(
        args + ["--out", str(tmp_path / "cut")],
        cwd=root,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "cut").glob(f"*/{CHECKPOINT}")):
        time.sleep(0.1)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = (tmp_path / "cut").iterdir()
    assert not (run_dir / "record.json").exists()
    out = subprocess.run(
        args[:4] + ["--resume", str(run_dir), "--quiet", "--wandb", "disabled", "--out", str(tmp_path / "cut")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    full = subprocess.run(
        args + ["--out", str(tmp_path / "full")], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert full.returncode == 0, full.stderr
    (full_dir,) = (tmp_path / "full").iterdir()
    resumed, uninterrupted = (json.loads((d / "record.json").read_text()) for d in (run_dir, full_dir))
    assert resumed["resumed_from_step"]
    assert resumed["curves"]["loss"] == uninterrupted["curves"]["loss"]
    assert_same(final_state(run_dir), final_state(full_dir))

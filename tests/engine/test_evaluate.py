"""FID/KID wired into the trial's evaluation points."""

import torch

from stabench.engine import Trial, run_trial
from stabench.engine.diffusion import Diffusion
from stabench.engine.evaluate import EvalNet, generate
from stabench.models import build_model
from tests.helpers import tiny_config

SCORED = [
    "lr=2e-3",
    "samples=200",
    "sampler_steps=20",
    "eval.every=100",
    "ema.betas=[0.99,0.999]",
    "batch_size=64",
    "probe_every=25",
    "grid=16",
]


def test_trained_model_scores_better_than_its_step0_weights(tmp_path):
    cfg = tiny_config(*SCORED, steps=300)
    rec = run_trial(cfg, tmp_path)
    assert rec["status"] == "ok"
    m = rec["metrics"]
    assert m["fid_digits"] > 0
    assert m["kid_digits"] is not None
    assert m["fid_digits_floor"] > 0
    assert [e["step"] for e in rec["evals"]] == [100, 200, 300]
    for e in rec["evals"]:  # per eval point and per weight set
        assert set(e["fid_digits"]) == set(e["kid_digits"]) == {"raw", "ema_0.99", "ema_0.999"}
    last = rec["evals"][-1]
    assert set(last["fid_digits_train"]) == {"raw", "ema_0.99", "ema_0.999"}  # only the final eval has these
    assert "fid_digits_train" not in rec["evals"][0]
    assert m["best_weights_by"] == "train-fid"
    assert m["best_weights"] == min(last["fid_digits_train"], key=last["fid_digits_train"].get)
    assert m["fid_digits"] == last["fid_digits"][m["best_weights"]]  # the test FID of the weights chosen on train
    assert (tmp_path / rec["run_id"] / "samples.png").exists()

    trial = Trial(cfg)  # the same sampler, seed and scorer, applied to the untrained weights
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg, 1)
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting)
    samples = generate(EvalNet(untrained, cfg, trial.device), diffusion, 200, cfg=cfg, device=trial.device, channels=1)
    fid0 = trial.scorer.score(samples)["fid_digits"]
    assert m["fid_digits_floor"] == trial.scorer.floor(200)  # train images vs the test split, at the trial's n
    assert trial.scorer.floor(200) > trial.scorer.floor(None)  # 200 < 359 images: a higher floor
    assert m["fid_digits"] < 0.9 * fid0, (m["fid_digits"], fid0)


def test_score_command_rescores_a_finished_trial(tmp_path):
    from click.testing import CliRunner

    from stabench.cli import main

    rec = run_trial(tiny_config("samples=0", "grid=0", steps=30), tmp_path, save_checkpoint=True)
    result = CliRunner().invoke(main, ["score", str(tmp_path / rec["run_id"]), "--samples", "100"])
    assert result.exit_code == 0, result.output
    assert "fid_digits: raw=" in result.output
    assert "ema_0.9999=" in result.output
    assert (tmp_path / rec["run_id"] / "score-digits-n100.json").exists()
    # without a checkpoint: a user error naming what to do
    rec = run_trial(tiny_config("samples=0", "grid=0", steps=5), tmp_path)
    result = CliRunner().invoke(main, ["score", str(tmp_path / rec["run_id"]), "--samples", "100"])
    assert result.exit_code == 2
    assert "--checkpoint" in result.output

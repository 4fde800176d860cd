import json
import math

import pytest
import torch

from stabench.config import load_config
from stabench.engine import run_trial
from stabench.engine.diffusion import Diffusion
from stabench.engine.precision import Precision
from stabench.engine.state import param_groups
from stabench.engine.trial import optimization_step
from stabench.models import build_model
from stabench.records.metrics import METRICS
from stabench.workloads.data import load_images
from tests.helpers import tiny_config

# every metric the telemetry writes for every trial (the registry says which: stabench/records/metrics.py)
STABILITY_KEYS = [m.name for m in METRICS.values() if m.produced_by == "telemetry"]


def test_same_seed_bit_identical_other_seed_different():
    a, b = run_trial(tiny_config(seed_override := "seed=3")), run_trial(tiny_config(seed_override))
    c = run_trial(tiny_config("seed=4"))
    assert a["status"] == "ok"
    assert a["curves"]["loss"] == b["curves"]["loss"]
    assert a["curves"]["grad_norm"] == b["curves"]["grad_norm"]
    assert a["probes"] == b["probes"]
    assert a["curves"]["loss"] != c["curves"]["loss"]


def test_record_has_curves_metrics_and_versions(tmp_path):
    rec = run_trial(tiny_config(steps=30), tmp_path)
    on_disk = json.loads((tmp_path / rec["run_id"] / "record.json").read_text())
    assert on_disk["status"] == "ok"
    assert on_disk["config_hash"] == rec["config_hash"]
    assert on_disk["config"]["optim"]["steps"] == 30
    assert on_disk["seed"] == 0
    assert len(on_disk["curves"]["loss"]) == 30
    assert on_disk["probes"]["step"] == [0, 5, 10, 15, 20, 25, 30]
    assert all(k in on_disk["metrics"] for k in STABILITY_KEYS)
    assert {"python", "torch", "stabench", "git_sha"} <= on_disk["versions"].keys()
    assert on_disk["device"]["type"] == "cpu"
    assert on_disk["device"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # which kernels ran
    assert on_disk["device"]["cpu"]  # the CPU's model: the last digits of a result depend on both
    assert on_disk["steps_per_s"] > 0
    assert [e["step"] for e in on_disk["evals"]] == [10, 20, 30]
    assert set(on_disk["evals"][0]["probe_loss"]) == {"raw", "ema_0.9999"}
    assert (tmp_path / rec["run_id"] / "config.yaml").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_clipping_caps_global_norm_and_reports_pre_clip_value():
    cfg = tiny_config("clip_norm=0.01")
    torch.manual_seed(0)
    model = build_model(cfg, 1)
    d = Diffusion(cfg.diffusion, cfg.timestep_weighting)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = load_images(cfg.workload)[:16]
    g = torch.Generator().manual_seed(0)
    t, noise = torch.randint(0, 1000, (16,), generator=g), torch.randn(x0.shape, generator=g)
    params, fp32 = list(model.parameters()), Precision("fp32", torch.device("cpu"))
    _, pre = optimization_step(model, params, d, opt, (x0, t, noise), 0.01, fp32)
    post = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert pre.item() > 0.1
    assert post.item() == pytest.approx(0.01, rel=1e-4)
    _, unclipped = optimization_step(model, params, d, opt, (x0, t, noise), None, fp32)
    post = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert post.item() == pytest.approx(unclipped.item(), rel=1e-5)


def test_trial_records_clip_fraction():
    rec = run_trial(tiny_config("clip_norm=1e-4", steps=10))
    assert rec["metrics"]["clip_frac"] == 1.0
    assert all(g > 1e-4 for g in rec["curves"]["grad_norm"])
    rec = run_trial(tiny_config("clip_norm=null", steps=10))
    assert rec["metrics"]["clip_frac"] == 0.0


def test_huge_lr_without_clipping_diverges_into_a_record(tmp_path):
    rec = run_trial(tiny_config("lr=50", "clip_norm=null", steps=200), tmp_path)
    assert rec["status"] == "diverged"
    assert rec["diverged_at"] is not None
    assert rec["steps_completed"] < 200
    assert len(rec["curves"]["loss"]) == rec["steps_completed"]
    assert math.isinf(rec["metrics"]["instability"])
    on_disk = json.loads((tmp_path / rec["run_id"] / "record.json").read_text())
    assert on_disk["status"] == "diverged"
    assert on_disk["metrics"]["instability"] is None  # JSON has no inf


def test_exception_inside_training_becomes_failed_record(tmp_path, monkeypatch):
    import stabench.engine.trial as trial_mod

    def boom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(trial_mod, "optimization_step", boom)
    rec = run_trial(tiny_config(), tmp_path)
    assert rec["status"] == "failed"
    assert "simulated" in rec["error"]["message"]
    assert "RuntimeError" in rec["error"]["traceback"]
    assert json.loads((tmp_path / rec["run_id"] / "record.json").read_text())["status"] == "failed"


def test_weight_decay_skips_norms_biases_embeddings():
    model = build_model(load_config(None, ["backbone=uvit", "preset=tiny"]), 1)
    decay, no_decay = param_groups(model, 0.1, decay_all=False)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 and "pos_embed" not in names[id(p)] for p in decay["params"])
    assert any("pos_embed" in names[id(p)] for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0
    assert decay["weight_decay"] == 0.1
    all_decay, none_left = param_groups(model, 0.1, decay_all=True)
    assert not none_left["params"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["backbone=uvit"],
        ["lsc.mode=learnable"],
        ["timestep_weighting.kind=min_snr", "prediction=v"],
        ["schedule=cosine", "kind=p2"],
        ["ema.betas=[0.9,0.99,0.999,0.9999]", "ema.warmup=true"],
        ["warmup_steps=5", "weight_decay=0.01", "stochastic_depth=0.1"],
    ],
)
def test_knob_combinations_train(overrides):
    rec = run_trial(tiny_config(*overrides, steps=10))
    assert rec["status"] == "ok", rec.get("error")
    assert rec["metrics"]["final_probe_loss"] < rec["metrics"]["initial_probe_loss"]

"""Engine settings: each precision trains and is recorded and hashed; compile works on CPU and falls back cleanly;
a training step never synchronises with the host; the record carries the versions it ran with."""

import pytest
import torch

from stabench.config import config_hash
from stabench.engine import Trial, run_trial
from stabench.engine.precision import Compiled
from stabench.errors import UserError
from tests.helpers import tiny_config


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_each_cpu_precision_trains_and_is_recorded(precision):
    # 10 steps: fp16 convolutions are emulated on the CPU (about 0.5 s a step)
    rec = run_trial(tiny_config(f"engine.precision={precision}", "samples=20", "sampler_steps=4", steps=10))
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["precision"] == precision
    assert rec["engine"]["loss_scaling"] == (precision == "fp16")
    assert rec["engine"]["matmul_fp32_precision"] == "ieee"
    assert rec["engine"]["cudnn_conv_fp32_precision"] == "ieee"  # no silent TF32 convolutions
    assert rec["engine"]["attention"] == ("auto" if precision == "fp32" else "math")
    assert rec["metrics"]["final_probe_loss"] < rec["metrics"]["initial_probe_loss"]
    assert 0.0 <= rec["metrics"]["skipped_frac"] < 1.0


def attention_kernels(precision: str) -> set[str]:
    """The aten attention ops a tiny U-ViT's forward and backward call under `precision` on the CPU."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from stabench.engine.precision import Precision
    from stabench.models import build_model

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__)
            return func(*args, **(kwargs or {}))

    model = build_model(tiny_config("workload.backbone=uvit", "model.dropout=0"), in_channels=1)
    x, t = torch.randn(2, 1, 8, 8), torch.randint(0, 100, (2,))
    calls = Calls()
    with calls, Precision(precision, torch.device("cpu")).autocast():
        model(x, t).float().square().mean().backward()
    return {n for n in calls.names if "attention" in n or n.startswith("bmm") or n.startswith("_softmax")}


def test_low_precision_attention_on_cpu_takes_the_math_path():
    # torch's fused CPU flash-attention kernel runs a bf16 backward several times slower than the math path
    assert any("flash_attention" in n for n in attention_kernels("fp32"))
    bf16 = attention_kernels("bf16")
    assert not any("flash_attention" in n for n in bf16)
    assert any(n.startswith("_softmax") for n in bf16)


def test_fp16_counts_skipped_steps_instead_of_diverging():
    # A loss scale of 2**40 overflows fp16 gradients at once: the scaler skips steps and halves its scale.
    from stabench.engine import state as state_mod

    original = state_mod.Precision.__init__

    def huge_scale(self, name, device, compiled=False):
        original(self, name, device, compiled)
        self.scaler = torch.amp.GradScaler(device.type, init_scale=2.0**40)

    mp = pytest.MonkeyPatch()
    mp.setattr(state_mod.Precision, "__init__", huge_scale)
    try:
        rec = run_trial(tiny_config("engine.precision=fp16", steps=6))
    finally:
        mp.undo()
    assert rec["status"] == "ok"
    assert rec["metrics"]["skipped_frac"] > 0.0


def test_precision_is_hashed_only_when_changed():
    fp32 = config_hash(tiny_config())
    assert config_hash(tiny_config("engine.precision=bf16")) != fp32
    assert config_hash(tiny_config("engine.precision=fp32")) == fp32
    assert config_hash(tiny_config("engine.compile=true")) == fp32  # compiling does not change the arithmetic


def test_tf32_on_cpu_is_refused_before_training():
    with pytest.raises(UserError) as e:
        Trial(tiny_config("engine.precision=tf32", "device=cpu"))
    assert e.value.key == "engine.precision"
    assert "fp32" in e.value.allowed


@pytest.mark.slow  # inductor and gcc take most of a minute; the default run checks the eager fallback below
def test_compile_on_cpu_trains_and_is_recorded():
    rec = run_trial(tiny_config("engine.compile=true", steps=6))
    assert rec["status"] == "ok", rec["error"]
    assert rec["engine"]["compile"] is True
    assert rec["engine"]["compiled"] is True
    assert rec["engine"]["fallback"] is None


def test_a_compile_failure_falls_back_to_eager_with_one_warning():
    model = torch.nn.Linear(3, 2)
    compiled = Compiled(model, enabled=True)

    def broken(*args):
        raise RuntimeError("inductor: no C++ compiler\nmore detail")

    compiled.forward = broken  # what a failing lazy compilation raises at the first call
    x = torch.randn(4, 3)
    with pytest.warns(UserWarning, match="engine.compile"):
        out = compiled.guard(lambda: compiled(x))
    assert torch.equal(out, model(x))
    assert compiled.info()["compiled"] is False
    assert compiled.info()["fallback"] == "RuntimeError: inductor: no C++ compiler"
    assert torch.equal(compiled.guard(lambda: compiled(x)), model(x))  # later calls: eager, no new warning


SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def test_a_training_step_does_not_synchronise_with_the_host(monkeypatch):
    """Every read of a tensor's value on the host (a CUDA sync) inside `_step` is counted: there must be none.
    Probe points and evaluations read values in bulk, outside the step."""
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNCING}

    def counting(name):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return originals[name](self, *args, **kwargs)

        return wrapper

    step = Trial._step

    def counted_step(self, i):
        for name in SYNCING:
            monkeypatch.setattr(torch.Tensor, name, counting(name))
        try:
            step(self, i)
        finally:
            for name in SYNCING:
                monkeypatch.setattr(torch.Tensor, name, originals[name])

    monkeypatch.setattr(Trial, "_step", counted_step)
    rec = run_trial(tiny_config("clip_norm=1.0", "augment.hflip=0.5", steps=12))
    assert rec["status"] == "ok"
    assert rec["steps_completed"] == 12
    assert calls == []


def test_the_record_says_what_ran_where(tmp_path):
    rec = run_trial(tiny_config(steps=5))
    assert rec["versions"]["torch"] == torch.__version__
    assert rec["versions"]["cuda"] == torch.version.cuda
    assert "cudnn" in rec["versions"]
    assert rec["device"]["host"]
    assert rec["device"]["type"] == "cpu"

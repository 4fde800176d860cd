"""Evaluation of a trial's weights: the fixed probe batch, samples with a fixed seed, FID/KID, the best weight set."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn as nn

from ..config import TrialConfig
from ..workloads.data import load_images
from .diffusion import Diffusion
from .ema import MultiEMA
from .precision import Compiled, Precision
from .state import stream_seed
from .telemetry import feature_norms


class Probe:
    """A fixed batch (images, timesteps, noise) drawn once from the trial seed."""

    def __init__(self, images: torch.Tensor, size: int, T: int, seed: int, device: torch.device):
        g = torch.Generator().manual_seed(stream_seed(seed, "probe"))
        idx = torch.randperm(len(images), generator=g)[:size]
        self.x0 = images[idx].to(device)
        self.t = torch.randint(0, T, (len(idx),), generator=g).to(device)
        self.noise = torch.randn(self.x0.shape, generator=g).to(device)

    def measure(self, model: nn.Module, diffusion: Diffusion, features: bool = True) -> dict:
        """Unweighted eps-MSE (comparable across weightings), in eval mode; with `features`, also the
        decoder-side feature norms and the global norm of that loss's gradient (the weights' `.grad`, the
        optimizer and every random stream stay untouched)."""
        was_training = model.training
        model.eval()
        with torch.set_grad_enabled(features):
            mse, extra = diffusion.per_sample_mse(model, self.x0, self.t, self.noise, return_features=features)
            out = {"probe_loss": mse.mean().item()}
            if features:
                params = [p for p in model.parameters() if p.requires_grad]
                grads = torch.autograd.grad(mse.mean(), params, allow_unused=True)
                out["probe_grad_norm"] = torch.nn.utils.get_total_norm([g for g in grads if g is not None]).item()
                out.update(feature_norms(extra))
        model.train(was_training)
        return out


def make_scorer(cfg: TrialConfig, device: torch.device):
    """FID/KID against the workload's held-out split on the trial's device (a missing Inception file fails here);
    the training images give the floor at the trial's sample count and the FID that chooses among weight sets."""
    from ..scoring import ReferenceScorer  # torch-fidelity loads only when a trial scores

    return ReferenceScorer(
        cfg.extractor,
        load_images(cfg.workload, "test"),
        cfg.workload.dataset,
        cfg.workload.resolution,
        "test",
        cfg.eval.inception_weights,
        real=load_images(cfg.workload, "train"),
        device=device,
    )


def ema_name(beta: float) -> str:
    """The weight-set name of an EMA beta."""
    return f"ema_{beta!r}"  # repr round-trips exactly: distinct betas never share a name


class EvalNet:
    """One eval-mode copy of the model that each weight set (raw, each EMA beta) is loaded into in place, run under
    the trial's precision and compile setting: sampling at engine speed, and a compiled copy compiles once."""

    def __init__(self, model: nn.Module, cfg: TrialConfig, device: torch.device):
        self.net = copy.deepcopy(model).eval().requires_grad_(False)
        self.forward = Compiled(self.net, cfg.engine.compile)
        self.precision = Precision(cfg.engine.precision, device, cfg.engine.compile)

    def load(self, params: list[torch.Tensor]) -> EvalNet:
        """Carry `params` (in `parameters()` order); returns itself."""
        with torch.no_grad():
            torch._foreach_copy_(list(self.net.parameters()), [p.detach() for p in params])
        return self

    def weight_sets(self, model: nn.Module, ema: MultiEMA) -> Iterator[tuple[str, EvalNet]]:
        """(name, this net carrying that weight set) for the raw weights and each EMA beta."""
        for name in ("raw", *map(ema_name, ema.betas)):
            yield name, self.weight_set(model, ema, name)

    def weight_set(self, model: nn.Module, ema: MultiEMA, name: str) -> EvalNet:
        """This net carrying the weight set called `name` ('raw' or an `ema_name`)."""
        with torch.no_grad():
            for dst, src in zip(self.net.buffers(), model.buffers()):
                dst.copy_(src)
        if name == "raw":
            return self.load(list(model.parameters()))
        return self.load(ema.shadows[{ema_name(b): b for b in ema.betas}[name]])


def generate(
    net: EvalNet,
    diffusion: Diffusion,
    n: int,
    *,
    cfg: TrialConfig,
    device: torch.device,
    channels: int,
) -> torch.Tensor:
    """`n` samples with the configured sampler and a fixed seed (the same noise at every eval), `eval.chunk` at a
    time, under the trial's precision; float32 on the CPU."""
    g = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "samples"))
    shape = (channels, cfg.workload.resolution, cfg.workload.resolution)
    chunk, out = cfg.eval.chunk, []

    def sample(size: tuple[int, ...]) -> torch.Tensor:
        return diffusion.sample(net.forward, size, cfg.eval.sampler_steps, g, cfg.eval.sampler, device)

    with net.precision.autocast():
        for i in range(0, n, chunk):
            size = (min(chunk, n - i), *shape)
            out.append(net.forward.guard(lambda size=size: sample(size)).float().cpu())
    return torch.cat(out)


SHOWN_SAMPLES = 64  # samples per weight set and evaluation point handed on for display (a W&B grid)


def evaluate(
    model: nn.Module,
    ema: MultiEMA,
    eval_net: EvalNet,
    probe: Probe,
    diffusion: Diffusion,
    step: int,
    scorer=None,
    *,
    cfg: TrialConfig,
    device: torch.device,
    channels: int,
    final: bool = False,
    say: Callable[[str], object] = lambda phase: None,
    samples_out: dict | None = None,
) -> dict:
    """Probe loss, and FID/KID of `eval.samples` samples, for the raw weights and each EMA beta. At the `final`
    evaluation each weight set is also scored against the training images (`<fid>_train`), which chooses
    the best weight set without looking at the reported reference. Each phase is announced through `say` (a
    progress bar's description); the first SHOWN_SAMPLES of each weight set's samples go into `samples_out`."""
    entry: dict = {"step": step, "probe_loss": {}}
    for name, net in eval_net.weight_sets(model, ema):
        # the probe is an instrument: read in fp32 and eagerly at every precision
        entry["probe_loss"][name] = probe.measure(net.net, diffusion, features=False)["probe_loss"]
        if scorer is not None:
            say(f"sampling {cfg.eval.samples} images ({name})")
            samples = generate(net, diffusion, cfg.eval.samples, cfg=cfg, device=device, channels=channels)
            if samples_out is not None:  # a copy of the first few, not a view that would keep them all alive
                samples_out[name] = samples[:SHOWN_SAMPLES].clone()
            say(f"scoring {scorer.fid_key} ({name})")
            scores = scorer.score(samples)
            for key in (scorer.fid_key, scorer.kid_key):
                entry.setdefault(key, {})[name] = scores[key]
            if final:
                entry.setdefault(f"{scorer.fid_key}_train", {})[name] = scorer.selection_fid(samples)
            entry["n_samples"] = len(samples)
    return entry


def _finite(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None and math.isfinite(v)}


def best_weights(evals: list[dict], scorer=None) -> dict:
    """The best weight set at the last evaluation, its values, the best probe loss, and the FID's area under
    the curve over training (the chosen weight set's mean over eval points).

    Scored trials choose by FID against the training images (`best_weights_by: train-fid`) and report the
    test FID of that choice, so the choice never looks at the reported number; a trial stopped before its
    final evaluation has no such FID and chooses by test FID (`test-fid`, optimistic). Unscored trials choose
    by probe loss."""
    if not evals:
        return {}
    last = evals[-1]
    probe = _finite(last["probe_loss"])
    out: dict = {"best_probe_loss": min(probe.values())} if probe else {}
    if scorer is not None and _finite(last.get(scorer.fid_key, {})):
        by_train = _finite(last.get(f"{scorer.fid_key}_train", {}))
        choose_from = by_train or _finite(last[scorer.fid_key])
        name = min(choose_from, key=choose_from.get)
        curve = [e[scorer.fid_key][name] for e in evals]
        out.update(
            {
                "best_weights": name,
                "best_weights_by": "train-fid" if by_train else "test-fid",
                scorer.fid_key: last[scorer.fid_key][name],
                scorer.kid_key: last[scorer.kid_key][name],
                f"{scorer.fid_key}_auc": sum(curve) / len(curve),
                f"{scorer.fid_key}_floor": scorer.floor(last.get("n_samples")),
                "fid_samples": last.get("n_samples"),
            }
        )
        return out
    if probe:
        out["best_weights"] = min(probe, key=probe.get)
        out["best_weights_by"] = "probe-loss"
    return out


def save_grid(
    model: nn.Module,
    ema: MultiEMA,
    eval_net: EvalNet,
    diffusion: Diffusion,
    metrics: dict,
    run_dir: Path,
    *,
    cfg: TrialConfig,
    device: torch.device,
    channels: int,
) -> str:
    """A PNG grid of `eval.grid` samples from the best weight set, with the fixed sampler seed."""
    from torchvision.utils import save_image

    name = metrics.get("best_weights", "raw")
    net = eval_net.weight_set(model, ema, name)
    x = generate(net, diffusion, cfg.eval.grid, cfg=cfg, device=device, channels=channels)
    path = run_dir / "samples.png"
    save_image((x + 1) / 2, path, nrow=int(math.ceil(math.sqrt(len(x)))), padding=1)
    return str(path)

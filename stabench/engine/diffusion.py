"""Gaussian diffusion: noise schedules, timestep loss weightings, the training loss and DDIM/DDPM samplers.

Notation as in docs/knobs.md ("Conventions"): abar_t is the cumulative signal fraction, SNR(t) = abar_t / (1 - abar_t).
Weightings w(t) are defined on the eps-prediction MSE and normalised to mean 1 over t = 0..T-1, so the
learning rate keeps its meaning across kinds. With v-prediction the network predicts
v = sqrt(abar) eps - sqrt(1 - abar) x0; since eps_hat - eps = sqrt(abar) (v_hat - v), the objective
w(t) * ||eps_hat - eps||^2 equals w(t) * abar_t * ||v_hat - v||^2: the weighting kind alone decides
the objective, the prediction target only its parametrisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from ..config import CAPPED_KINDS, DiffusionConfig, WeightingConfig


def make_betas(cfg: DiffusionConfig) -> torch.Tensor:
    """Linear (DDPM, Ho et al. 2020) or cosine (Improved DDPM, Nichol & Dhariwal 2021, eq. 17) betas."""
    T = cfg.T
    if cfg.schedule == "linear":
        scale = 1000 / T  # keeps the DDPM endpoints meaningful for T != 1000 (as in improved-diffusion)
        return torch.linspace(scale * cfg.beta_start, min(scale * cfg.beta_end, 0.999), T, dtype=torch.float64)
    s = cfg.cosine_s
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def _cosine(snr: torch.Tensor, gamma: float, k: float) -> torch.Tensor:
    """Ours: sin(pi (t + 1/2) / T), peaks mid-trajectory, never exactly 0."""
    return torch.sin(math.pi * (torch.arange(len(snr), dtype=torch.float64) + 0.5) / len(snr))


# w(t) of each `timestep_weighting.kind` from SNR(t), gamma and k; the schema's kinds are checked against it
# (tests/engine/test_diffusion.py), so a new kind is its name in the schema and its formula here.
WEIGHTINGS: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "uniform": lambda snr, gamma, k: torch.ones_like(snr),  # DDPM's simple loss
    # w = SNR on the eps MSE, i.e. an x0 MSE weighted by SNR^2 (an x0 MSE itself is w = 1/SNR)
    "snr": lambda snr, gamma, k: snr.clone(),
    "min_snr": lambda snr, gamma, k: snr.clamp(max=gamma) / snr,  # Min-SNR-gamma (Hang et al. 2023)
    "max_snr": lambda snr, gamma, k: snr.clamp(min=gamma) / snr,  # truncated SNR
    "p2": lambda snr, gamma, k: 1.0 / (k + snr) ** gamma,  # P2 weighting (Choi et al. 2022): 1 / (k + SNR)^gamma
    "cosine": _cosine,
}


def raw_weights(kind: str, snr: torch.Tensor, gamma: float, k: float, cap: float | None = None) -> torch.Tensor:
    """Unnormalised w(t) for eps-prediction, one formula per `timestep_weighting.kind`; `snr` and `max_snr` are
    clamped to at most `cap` times their median weight, so that no 1% of the timesteps carries most of the loss."""
    if kind not in WEIGHTINGS:
        raise ValueError(f"unknown timestep weighting {kind!r}")
    w = WEIGHTINGS[kind](snr, gamma, k)
    if cap is not None and kind in CAPPED_KINDS:
        w = w.clamp(max=cap * w.median())
    return w


class Diffusion(nn.Module):
    """Schedule tensors (as buffers, so `.to(device)` moves them) and the weighted training loss."""

    def __init__(self, cfg: DiffusionConfig, weighting: WeightingConfig):
        super().__init__()
        self.T, self.prediction = cfg.T, cfg.prediction
        betas = make_betas(cfg)
        abar = torch.cumprod(1 - betas, dim=0)
        snr = abar / (1 - abar)
        w = raw_weights(weighting.kind, snr, weighting.gamma, weighting.k, weighting.cap)
        self.register_buffer("abar", abar.float())
        self.register_buffer("snr", snr.float())
        self.register_buffer("weights", (w / w.mean()).float())  # mean 1 over uniform t

    def _coefs(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.abar[t][:, None, None, None]
        return abar.sqrt(), (1 - abar).sqrt()

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise: the forward process at timesteps `t`."""
        a, s = self._coefs(t)
        return a * x0 + s * noise

    def to_eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network output converted to an eps prediction."""
        if self.prediction == "eps":
            return out
        a, s = self._coefs(t)
        return s * x_t + a * out  # eps = sqrt(1 - abar) x_t + sqrt(abar) v

    def per_sample_mse(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, **kw):
        """Unweighted eps-space MSE per sample (and the model's extra outputs when asked)."""
        x_t = self.q_sample(x0, t, noise)
        out = model(x_t, t, **kw)
        extra = None
        if isinstance(out, tuple):
            out, extra = out
        mse = (self.to_eps(out, x_t, t) - noise).pow(2).flatten(1).mean(1)
        return mse, extra

    def loss(self, model: nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Training objective: mean over the batch of w(t) * ||eps_hat - eps||^2."""
        mse, _ = self.per_sample_mse(model, x0, t, noise)
        return (self.weights[t] * mse).mean()

    @torch.no_grad()
    def sample(
        self,
        model: nn.Module,
        shape: tuple[int, ...],
        steps: int,
        generator: torch.Generator,
        method: str = "ddim",
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """DDIM (eta = 0, Song et al. 2021) or DDPM ancestral sampling on an evenly strided subsequence."""
        seq = torch.linspace(self.T - 1, 0, min(steps, self.T), device=device).round().long().unique_consecutive()
        x = torch.randn(shape, generator=generator, device=device)
        for i, t in enumerate(seq):
            t_prev = seq[i + 1] if i + 1 < len(seq) else None
            tt = t.repeat(shape[0])
            eps = self.to_eps(model(x, tt), x, tt)
            abar_t = self.abar[t]
            abar_prev = self.abar[t_prev] if t_prev is not None else torch.ones_like(abar_t)
            x0 = ((x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()).clamp(-1, 1)
            eps = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()  # consistent with the clipped x0
            if method == "ddim" or t_prev is None:
                x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
            else:  # DDPM posterior q(x_prev | x_t, x0) on the strided sequence
                beta = 1 - abar_t / abar_prev
                mean = (abar_prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - abar_prev) * x) / (1 - abar_t)
                var = beta * (1 - abar_prev) / (1 - abar_t)
                x = mean + var.sqrt() * torch.randn(shape, generator=generator, device=device)
        return x

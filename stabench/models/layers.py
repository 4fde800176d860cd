"""Small building blocks shared by both backbones: timestep embedding, norms, drop-path, LSC scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import LSCConfig, ModelConfig, TrialConfig

ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}


@dataclass(frozen=True)
class Knobs:
    """The stabilisation knobs a backbone is built with: the config sections `model` and `lsc` themselves, so the
    schema's defaults and allowed values are the only ones (docs/knobs.md)."""

    model: ModelConfig
    lsc: LSCConfig

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> Knobs:
        """The knobs of a validated trial config (its `model.norm` resolved to the backbone's standard)."""
        return cls(cfg.model, cfg.lsc)

    def __post_init__(self) -> None:
        if self.model.norm is None:  # only TrialConfig knows the backbone's standard norm
            raise ValueError("model.norm is unresolved: build Knobs from a TrialConfig (Knobs.from_config)")

    def block(self) -> dict:
        """The keyword arguments every residual block takes from the knobs."""
        m = self.model
        return dict(dropout=m.dropout, drop_path=m.stochastic_depth, act=m.activation, norm=m.norm)


def conv_norm(kind: str, channels: int) -> nn.Module:
    """Norm for (B, C, H, W) features. 'layer' normalises over C, H, W (GroupNorm with one group)."""
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def token_norm(kind: str, dim: int) -> nn.Module:
    """Norm for (B, L, D) tokens."""
    return nn.LayerNorm(dim) if kind == "layer" else nn.Identity()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (DDPM / ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """Sinusoidal timestep features followed by a two-layer MLP (as in DiT)."""

    def __init__(self, freq_dim: int, out_dim: int, act: str):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, out_dim), ACTIVATIONS[act](), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) integer timesteps -> (B, out_dim) embeddings."""
        return self.mlp(timestep_embedding(t, self.freq_dim))


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample, rescale the survivors."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


# ---------------------------------------------------------------------------------------------
# Long-skip-connection scaling (ScaleLong, Huang et al. 2023). Skip i = 1 is the outermost.
# ---------------------------------------------------------------------------------------------


def constant_skip_scales(mode: str, kappa: float, num_skips: int) -> list[float]:
    """Fixed factor per skip i = 1..N for the non-learnable LSC modes."""
    idx = range(num_skips)  # i - 1
    if mode == "none":
        return [1.0] * num_skips
    if mode == "inv_sqrt2":  # ScaleLong mode 1, Imagen's skip_connect_scale
        return [2**-0.5] * num_skips
    if mode == "constant":  # ScaleLong CS: kappa ** (i - 1)
        return [kappa**i for i in idx]
    if mode == "linear":  # ours: 1 at the outermost skip down to kappa at the innermost
        return [1.0 - (1.0 - kappa) * i / max(num_skips - 1, 1) for i in idx]
    raise ValueError(f"no constant scales for LSC mode {mode!r}")


MIN_GATE_HIDDEN = 4


class _SqueezeGate(nn.Module):
    """sigmoid(W2 relu(W1 pooled)) over `size` features; hidden size size/reduction, at least MIN_GATE_HIDDEN."""

    def __init__(self, size: int, reduction: int = 16):
        super().__init__()
        hidden = max(size // reduction, MIN_GATE_HIDDEN)
        self.fc1, self.fc2 = nn.Linear(size, hidden), nn.Linear(hidden, size)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, size) pooled features -> (B, size) gates in (0, 1)."""
        return torch.sigmoid(self.fc2(F.relu(self.fc1(pooled))))


class ChannelGate(_SqueezeGate):
    """Squeeze-excitation gate over channels, sigmoid(W2 relu(W1 mean_hw(h))): our UNet version of ScaleLong LS.
    Hidden size C/16, at least MIN_GATE_HIDDEN so a single dead ReLU cannot freeze the gate."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> the same shape, each channel scaled by its gate."""
        return h * self.gate(h.mean(dim=(2, 3)))[:, :, None, None]


class TokenGate(_SqueezeGate):
    """ScaleLong LS gate over tokens, sigmoid(W2 relu(W1 mean_channels(h))), hidden size L/16 (at least
    MIN_GATE_HIDDEN: small images have few tokens)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, L, D) tokens -> the same shape, each token scaled by its gate."""
        return h * self.gate(h.mean(dim=2))[:, :, None]


class SkipScaler(nn.Module):
    """Scales long skip i (1 = outermost) right before the decoder concatenates it.

    Learnable modes build gates with `make_gate(shape_key)`: `learnable` shares one gate among skips
    of the same shape (all of them in U-ViT, ScaleLong mode 3; one per width in the UNet),
    `learnable_per_skip` gives every skip its own (ScaleLong mode 4).
    """

    def __init__(self, mode: str, kappa: float, shape_keys: list, make_gate):
        super().__init__()
        self.mode = mode
        if mode in ("learnable", "learnable_per_skip"):
            per_skip = mode == "learnable_per_skip"
            names = [str(i) if per_skip else str(k) for i, k in enumerate(shape_keys)]
            self.gates = nn.ModuleDict({n: make_gate(k) for n, k in dict(zip(names, shape_keys)).items()})
            self.gate_of_skip = names
        else:
            self.register_buffer(
                "scales", torch.tensor(constant_skip_scales(mode, kappa, len(shape_keys))), persistent=False
            )

    def forward(self, h: torch.Tensor, i: int) -> torch.Tensor:
        """h: the feature of skip i (1-based, 1 = outermost)."""
        if self.mode == "none":
            return h  # no multiply at all, so `none` is exactly the unscaled network
        if self.mode in ("learnable", "learnable_per_skip"):
            return self.gates[self.gate_of_skip[i - 1]](h)
        return h * self.scales[i - 1]


class LongSkips:
    """The encoder's long skips as the decoder pops them, innermost first: each as the encoder left it and as it
    enters the decoder (scaled), for `forward(..., return_features=True)`."""

    def __init__(self, scaler: SkipScaler, skips: list[torch.Tensor]):
        self.scaler, self.skips = scaler, skips
        self.entering: list[torch.Tensor] = []
        self.encoder: list[torch.Tensor] = []

    def pop(self) -> tuple[int, torch.Tensor, torch.Tensor]:
        """The innermost skip left: its index i (1 = outermost), its feature and its scaled feature."""
        i = len(self.skips)
        skip = self.skips.pop()
        self.encoder.append(skip)
        s = self.scaler(skip, i)
        self.entering.append(s)
        return i, skip, s

    def features(self, out: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """The scaled and the encoder's skips, outermost first, and the decoder's output feature `out`."""
        return {"skips": self.entering[::-1], "encoder": self.encoder[::-1], "out": out}

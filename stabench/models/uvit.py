"""U-ViT (Bao et al. 2023): all inputs as tokens, long skips between shallow and deep transformer blocks.

The time is one extra token; out block j computes `skip_linear(cat[x, skip])` with the skip from
in block depth//2 - j + 1, scaled by `SkipScaler` first (ScaleLong's U-ViT setting).

Two variants (`model.uvit_variant`, docs/scalelong.md): `ours` embeds the time with a two-layer MLP and keeps
PyTorch's default initialisation; `paper` is the U-ViT that ScaleLong trains on CIFAR-10: the sinusoidal time
embedding is the time token itself (U-ViT's 4x MLP only with `model.time_mlp`), a 3x3 conv after unpatchify, and
U-ViT's initialisation (truncated normal std 0.02 for Linear weights and the position embedding, zero biases,
LayerNorm 1/0). ScaleLong builds its LS gates after that initialisation, so they keep PyTorch's default.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import WorkloadConfig
from .layers import (
    ACTIVATIONS,
    Knobs,
    LongSkips,
    SkipScaler,
    TimestepEmbedder,
    TokenGate,
    drop_path,
    timestep_embedding,
    token_norm,
)

INIT_STD = 0.02  # U-ViT's truncated-normal std for Linear weights and the position embedding


class Attention(nn.Module):
    """Multi-head self-attention with an output projection."""

    def __init__(self, dim: int, heads: int, dropout: float, qkv_bias: bool = True):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim, bias=qkv_bias), nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) tokens -> (B, L, D) tokens."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(h.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-norm transformer block; in the decoder half it first fuses a long skip."""

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        dropout: float,
        drop_path: float,
        act: str,
        norm: str,
        skip: bool = False,
        qkv_bias: bool = True,
    ):
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1, self.attn = token_norm(norm, dim), Attention(dim, heads, dropout, qkv_bias)
        self.norm2 = token_norm(norm, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), ACTIVATIONS[act](), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) tokens, and in the decoder half the (B, L, D) scaled skip -> (B, L, D) tokens."""
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


@dataclass(frozen=True)
class UViTArch:
    """A U-ViT's size: patch side, token width, blocks (half of them feed long skips), heads, MLP width ratio."""

    patch: int
    dim: int
    depth: int
    heads: int
    mlp_ratio: float

    def with_width(self, width: int | None) -> UViTArch:
        """This size with token width `width` (config `workload.width`; None keeps the preset's)."""
        return replace(self, dim=width) if width else self

    def with_sizes(self, w: WorkloadConfig) -> UViTArch:
        """This size with the workload's `depth`, `heads`, `patch` and `mlp_ratio` (None keeps the preset's)."""
        given = {k: getattr(w, k) for k in ("depth", "heads", "patch", "mlp_ratio") if getattr(w, k) is not None}
        return replace(self, **given)

    @property
    def resolution_step(self) -> int:
        """What the resolution must be a multiple of: the U-ViT cuts it into patches."""
        return self.patch


class TimeToken(nn.Module):
    """The paper variant's time token: the sinusoidal embedding of width `dim` itself, or with `mlp` U-ViT's
    `mlp_time_embed` (Linear dim -> 4 dim, SiLU, Linear 4 dim -> dim)."""

    def __init__(self, dim: int, mlp: bool):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim)) if mlp else None

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) timesteps -> (B, dim) time tokens."""
        emb = timestep_embedding(t, self.dim)
        return self.mlp(emb) if self.mlp is not None else emb


def uvit_init(module: nn.Module) -> None:
    """U-ViT's `_init_weights`: Linear weights truncated normal (std 0.02) with zero bias, LayerNorm weight 1 and
    bias 0; convolutions keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class UViT(nn.Module):
    """U-ViT for eps/v prediction; `return_features=True` also returns the scaled skips (outermost first)
    and the last block's output tokens."""

    def __init__(self, arch: UViTArch, in_channels: int, resolution: int, knobs: Knobs):
        super().__init__()
        patch, dim, depth, heads, mlp_ratio = arch.patch, arch.dim, arch.depth, arch.heads, arch.mlp_ratio
        assert resolution % patch == 0, "resolution must be divisible by the patch size"
        assert dim % heads == 0, "the heads must divide the dim"
        paper = knobs.model.uvit_variant == "paper"
        self.patch, self.in_channels, self.grid = patch, in_channels, resolution // patch
        num_tokens = self.grid**2 + 1  # patches + time token
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        if paper:
            self.time_embed: nn.Module = TimeToken(dim, bool(knobs.model.time_mlp))
        elif knobs.model.time_mlp:
            self.time_embed = TimestepEmbedder(dim, dim, knobs.model.activation)
        else:  # ours without the MLP: the sinusoid as the token
            self.time_embed = TimeToken(dim, mlp=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)

        block = dict(dim=dim, heads=heads, mlp_ratio=mlp_ratio, qkv_bias=knobs.model.qkv_bias, **knobs.block())
        self.in_blocks = nn.ModuleList(Block(**block) for _ in range(depth // 2))
        self.mid_block = Block(**block)
        self.out_blocks = nn.ModuleList(Block(**block, skip=True) for _ in range(depth // 2))
        self.norm = token_norm(knobs.model.norm, dim)
        self.head = nn.Linear(dim, patch * patch * in_channels)
        self.final_layer = nn.Conv2d(in_channels, in_channels, 3, padding=1) if paper else nn.Identity()
        if paper:
            self.apply(uvit_init)  # before the LS gates: ScaleLong builds them after U-ViT's init

        self.num_skips = depth // 2
        skip_sizes = [num_tokens] * self.num_skips
        self.skip_scaler = SkipScaler(knobs.lsc.mode, knobs.lsc.kappa, skip_sizes, lambda n: TokenGate(n))

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, grid*grid, patch*patch*C) patch tokens -> (B, C, grid*patch, grid*patch) images."""
        B, p, g, c = x.shape[0], self.patch, self.grid, self.in_channels
        return x.reshape(B, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(B, c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, return_features: bool = False):
        """(B, C, H, W) noisy images, (B,) timesteps -> (B, C, H, W) prediction (and features if return_features)."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.time_embed(t)[:, None], tokens], dim=1) + self.pos_embed
        skips = []
        for blk in self.in_blocks:
            h = blk(h)
            skips.append(h)
        h = self.mid_block(h)
        popped = LongSkips(self.skip_scaler, skips)
        for blk in self.out_blocks:
            _, _, s = popped.pop()  # innermost skip first; skip i = 1 comes from the first in block
            h = blk(h, s)
        out = self.final_layer(self.unpatchify(self.head(self.norm(h))[:, 1:]))
        if return_features:
            return out, popped.features(h)
        return out

"""ADM/DDPM-style UNet (Ho et al. 2020; Dhariwal & Nichol 2021) with scalable long skips.

Every encoder output (stem, residual blocks, downsamples) is a long skip; the decoder pops them in
reverse order and concatenates each, after `SkipScaler`, with its own feature.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import ACTIVATIONS, ChannelGate, Knobs, LongSkips, SkipScaler, TimestepEmbedder, conv_norm, drop_path


class ResBlock(nn.Module):
    """norm-act-conv, add timestep embedding, norm-act-dropout-conv, plus a (1x1) shortcut."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, drop_path: float, act: str, norm: str):
        super().__init__()
        self.norm1, self.conv1 = conv_norm(norm, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2, self.conv2 = conv_norm(norm, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.act, self.dropout, self.drop_path = ACTIVATIONS[act](), nn.Dropout(dropout), drop_path
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skip: SkipGain | None = None) -> torch.Tensor:
        """`skip`: scale the last channels of `x` (a long skip) on both paths, after `norm1` on the residual one."""
        h = self.norm1(x)
        if skip is not None:  # LSC placement post_norm: the norm can no longer undo the scale
            x, h = skip.apply(x), skip.apply(h)
        h = self.conv1(self.act(h))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(self.act(self.norm2(h))))
        return self.shortcut(x) + drop_path(h, self.drop_path, self.training)


class AttnBlock(nn.Module):
    """Single-head self-attention over pixels, residual (used at low resolution only)."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.norm, self.qkv, self.proj = (
            conv_norm(norm, channels),
            nn.Conv2d(channels, 3 * channels, 1),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) features -> the same shape; `emb` is unused (every block of a Stage takes it)."""
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Strided 3x3 convolution: halves the height and width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) features -> (B, C, H/2, W/2); `emb` is unused."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) features -> (B, C, 2H, 2W); `emb` is unused."""
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class SkipGain:
    """The LSC gain of long skip i applied to the last `channels` channels of a feature."""

    def __init__(self, scaler: SkipScaler, i: int, channels: int):
        self.scaler, self.i, self.channels = scaler, i, channels

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) features -> the same shape, the last `channels` channels scaled by skip i's gain."""
        c = x.shape[1] - self.channels
        return torch.cat([x[:, :c], self.scaler(x[:, c:], self.i)], dim=1)


class Stage(nn.Sequential):
    """A sequence of blocks that all take (x, emb); a decoder stage's first block may take the skip's gain."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skip: SkipGain | None = None) -> torch.Tensor:
        """(B, C_in, H, W) features and (B, emb_dim) embeddings -> the last block's (B, C_out, H', W')."""
        for k, block in enumerate(self):
            x = block(x, emb, skip) if k == 0 and skip is not None else block(x, emb)
        return x


@dataclass(frozen=True)
class UNetArch:
    """A UNet's size: base width, width multiplier per level, residual blocks per level, resolutions with
    self-attention."""

    channels: int
    mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...] = ()

    def with_width(self, width: int | None) -> UNetArch:
        """This size with base width `width` (config `workload.width`; None keeps the preset's)."""
        return replace(self, channels=width) if width else self

    @property
    def resolution_step(self) -> int:
        """What the resolution must be a multiple of: the UNet halves it at each level but the last."""
        return 2 ** (len(self.mult) - 1)


class UNet(nn.Module):
    """ADM-style UNet for eps/v prediction. `forward(..., return_features=True)` also returns the
    (scaled) skip features entering the decoder, outermost first, and the decoder's output feature."""

    def __init__(self, arch: UNetArch, in_channels: int, resolution: int, knobs: Knobs):
        super().__init__()
        channels, mult = arch.channels, arch.mult
        num_res_blocks, attn_resolutions = arch.num_res_blocks, arch.attn_resolutions
        norm, lsc = knobs.model.norm, knobs.lsc
        self.post_norm = lsc.placement == "post_norm" and lsc.mode != "none"
        emb_dim = 4 * channels
        self.time_embed = TimestepEmbedder(channels, emb_dim, knobs.model.activation)
        block = dict(emb_dim=emb_dim, **knobs.block())

        # Encoder: every module in self.down produces one long skip.
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down, skip_channels, ch, res = nn.ModuleList(), [channels], channels, resolution
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(ch, channels * m, **block)]
                ch = channels * m
                if res in attn_resolutions:
                    layers.append(AttnBlock(ch, norm))
                self.down.append(Stage(*layers))
                skip_channels.append(ch)
            if level != len(mult) - 1:
                self.down.append(Stage(Downsample(ch)))
                skip_channels.append(ch)
                res //= 2

        self.mid = Stage(ResBlock(ch, ch, **block), AttnBlock(ch, norm), ResBlock(ch, ch, **block))

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip.
        self.up, pending = nn.ModuleList(), list(skip_channels)
        for level, m in reversed(list(enumerate(mult))):
            for j in range(num_res_blocks + 1):
                layers = [ResBlock(ch + pending.pop(), channels * m, **block)]
                ch = channels * m
                if res in attn_resolutions:
                    layers.append(AttnBlock(ch, norm))
                if level != 0 and j == num_res_blocks:
                    layers.append(Upsample(ch))
                    res *= 2
                self.up.append(Stage(*layers))

        self.out_norm, self.out_act = conv_norm(norm, ch), ACTIVATIONS[knobs.model.activation]()
        self.out = nn.Conv2d(ch, in_channels, 3, padding=1)
        self.num_skips, self.skip_channels = len(skip_channels), skip_channels  # skip i = 1 is the stem output
        self.skip_scaler = SkipScaler(lsc.mode, lsc.kappa, skip_channels, lambda c: ChannelGate(c))

    def forward(self, x: torch.Tensor, t: torch.Tensor, return_features: bool = False):
        """(B, C, H, W) noisy images, (B,) timesteps -> (B, C, H, W) prediction (and features if return_features)."""
        emb = self.time_embed(t)
        h = self.stem(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        popped = LongSkips(self.skip_scaler, skips)
        for stage in self.up:
            i, skip, s = popped.pop()  # skips are popped innermost first; skip i = 1 is the stem output
            if self.post_norm:  # scaled on both paths inside the block, after the residual path's norm
                h = stage(torch.cat([h, skip], dim=1), emb, SkipGain(self.skip_scaler, i, skip.shape[1]))
            else:  # concat: the block's GroupNorm undoes a constant scale on the residual path
                h = stage(torch.cat([h, s], dim=1), emb)
        out = self.out(self.out_act(self.out_norm(h)))
        if return_features:
            return out, popped.features(h)
        return out

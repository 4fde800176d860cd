"""Backbone registry: (backbone, preset) -> architecture settings. Knob values come from the config."""

from __future__ import annotations

from dataclasses import replace

import torch.nn as nn

from ..config import TrialConfig, WorkloadConfig
from ..errors import ConfigError
from .layers import Knobs
from .unet import UNet, UNetArch
from .uvit import UViT, UViTArch

# Width/depth are workload settings, not knobs. `deep` is where long-skip scaling shows on CPU
# (4 levels x 2 blocks, the stem and 3 downsamples = 12 long skips at 16x16; docs/knobs.md "Backbones and presets").
UNET_PRESETS = {
    "tiny": UNetArch(channels=16, mult=(1, 2), num_res_blocks=1),
    "small": UNetArch(channels=24, mult=(1, 2, 2), num_res_blocks=2),
    "deep": UNetArch(channels=32, mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(4,)),
}
UVIT_PRESETS = {
    "tiny": UViTArch(patch=2, dim=32, depth=4, heads=2, mlp_ratio=2.0),
    "small": UViTArch(patch=2, dim=64, depth=8, heads=4, mlp_ratio=2.0),
    "deep": UViTArch(patch=2, dim=128, depth=16, heads=4, mlp_ratio=4.0),
}


def build_model(cfg: TrialConfig, in_channels: int) -> nn.Module:
    """The backbone of a trial, with its dropout, drop-path, activation, norm and LSC knobs applied."""
    w, m = cfg.workload, cfg.model
    knobs = Knobs(m.dropout, m.stochastic_depth, m.activation, m.norm, cfg.lsc.mode, cfg.lsc.kappa, cfg.lsc.placement)
    check_resolution(w)
    if w.backbone == "unet":
        arch = UNET_PRESETS[w.preset]
        return UNet(replace(arch, channels=w.width) if w.width else arch, in_channels, w.resolution, knobs)
    arch = UVIT_PRESETS[w.preset]
    return UViT(replace(arch, dim=w.width) if w.width else arch, in_channels, w.resolution, knobs)


def resolution_step(w: WorkloadConfig) -> int:
    """What the resolution must be a multiple of: the UNet halves it at each level but the last, the U-ViT
    cuts it into patches."""
    if w.backbone == "unet":
        return 2 ** (len(UNET_PRESETS[w.preset].mult) - 1)
    return UVIT_PRESETS[w.preset].patch


def check_resolution(w: WorkloadConfig) -> None:
    """A resolution the preset cannot take is a ConfigError before any training (the preflight calls this)."""
    step = resolution_step(w)
    if w.resolution % step:
        raise ConfigError(
            f"{w.resolution} is not a multiple of {step}, which {w.backbone} preset '{w.preset}' needs",
            key="workload.resolution",
            allowed=f"multiples of {step}",
        )


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())

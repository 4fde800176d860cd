"""The backbone registry: name -> (network, presets), each preset an architecture; knob values come from the config."""

from __future__ import annotations

from collections.abc import Callable, Mapping

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

# The backbone registry, in the DiT manner: config `workload.backbone` -> (network class, presets). The schema's
# backbone and preset names are checked against it (tests/models/test_backbones.py).
BACKBONES: dict[str, tuple[Callable[..., nn.Module], Mapping[str, UNetArch | UViTArch]]] = {
    "unet": (UNet, UNET_PRESETS),
    "uvit": (UViT, UVIT_PRESETS),
}


def architecture(w: WorkloadConfig) -> UNetArch | UViTArch:
    """The size of a workload's backbone: its preset, with `workload.width` applied (and, for the U-ViT, `depth`,
    `heads`, `patch` and `mlp_ratio`; the UNet has no such axes)."""
    _, presets = BACKBONES[w.backbone]
    arch = presets[w.preset].with_width(w.width)
    return arch.with_sizes(w) if isinstance(arch, UViTArch) else arch


def build_model(cfg: TrialConfig, in_channels: int) -> nn.Module:
    """The backbone of a trial, with its dropout, drop-path, activation, norm and LSC knobs applied."""
    w = cfg.workload
    check_resolution(w)
    network, _ = BACKBONES[w.backbone]
    return network(architecture(w), in_channels, w.resolution, Knobs.from_config(cfg))


def check_resolution(w: WorkloadConfig) -> None:
    """A resolution the preset cannot take, or heads that do not divide the U-ViT's dim, is a ConfigError before any
    training (the preflight calls this)."""
    arch = architecture(w)
    if isinstance(arch, UViTArch) and arch.dim % arch.heads:
        raise ConfigError(
            f"{arch.heads} heads do not divide the U-ViT's dim {arch.dim}",
            key="workload.heads",
            allowed=f"divisors of {arch.dim}",
        )
    step = arch.resolution_step
    if w.resolution % step:
        raise ConfigError(
            f"{w.resolution} is not a multiple of {step}, which {w.backbone} preset '{w.preset}' needs",
            key="workload.resolution",
            allowed=f"multiples of {step}",
        )


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())

"""The config tree: one pydantic model per section, every knob of docs/knobs.md a validated leaf."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkloadConfig(_Section):
    """What is learned and by which network: dataset, resolution, backbone (unet, uvit) and its preset."""

    dataset: Literal["digits", "cifar10", "folder"] = "digits"
    root: str | None = Field(None, description="data directory (cifar10, folder); unused for digits")
    resolution: int = Field(8, ge=4, le=512, description="training resolution in pixels")
    backbone: Literal["unet", "uvit"] = "unet"
    preset: Literal["tiny", "small", "deep"] = "small"
    # Depth and the number of long skips (ScaleLong's variables) come from the preset; the width can be narrowed
    # so that a deep preset fits a CPU budget (docs/knobs.md "Backbones and presets").
    width: int | None = Field(None, ge=4, le=4096, description="base width (unet channels, uvit dim); null: preset's")
    # The U-ViT's size beyond its width (docs/scalelong.md); the UNet has no such axes and ignores them, so that a
    # U-ViT reference config still loads as its `-unet` twin.
    depth: int | None = Field(
        None, ge=2, le=64, description="uvit: transformer blocks, half feed long skips; null: preset's"
    )
    heads: int | None = Field(None, ge=1, le=64, description="uvit: attention heads (divide the dim); null: preset's")
    patch: int | None = Field(None, ge=1, le=16, description="uvit: patch side in pixels; null: preset's")
    mlp_ratio: float | None = Field(None, gt=0.0, le=16.0, description="uvit: MLP width / dim; null: preset's")
    download: bool = Field(False, description="cifar10: fetch it with torchvision into root if missing (internet)")


class ModelConfig(_Section):
    """Regularisation and layer choices inside the backbone: dropout, stochastic depth, activation, norm."""

    dropout: float = Field(0.1, ge=0.0, le=0.5)
    stochastic_depth: float = Field(0.0, ge=0.0, le=0.5, description="drop-path rate on residual branches")
    activation: Literal["silu", "gelu", "relu"] = "silu"
    # None resolves to the backbone's standard norm (unet: group, uvit: layer).
    norm: Literal["group", "layer", "none"] | None = None
    # U-ViT only (docs/scalelong.md). `paper`: Bao et al.'s U-ViT as ScaleLong trains it: the sinusoidal time
    # embedding is the time token (an MLP only with time_mlp), a 3x3 conv after unpatchify, U-ViT's initialisation.
    uvit_variant: Literal["ours", "paper"] = "ours"
    qkv_bias: bool = Field(True, description="uvit: bias in the attention's qkv projection (U-ViT: false)")
    # None resolves to the variant's: ours has a time MLP, the paper's U-ViT (mlp_time_embed False) has none.
    time_mlp: bool | None = Field(None, description="uvit: an MLP on the time embedding; null: the variant's")


class LSCConfig(_Section):
    """Long-skip-connection scaling (ScaleLong): the mode, its kappa and where the scale is applied."""

    mode: Literal["none", "inv_sqrt2", "constant", "linear", "learnable", "learnable_per_skip"] = "none"
    kappa: float = Field(0.5, gt=0.0, le=1.0, description="ScaleLong CS factor (constant, linear modes)")
    # concat: scale the skip before the decoder block concatenates it (ScaleLong). In the UNet the block's first
    # GroupNorm undoes a constant scale on the residual path; post_norm scales after that norm (docs/lsc.md).
    placement: Literal["concat", "post_norm"] = "concat"


class DiffusionConfig(_Section):
    """The forward process: noise schedule, number of steps T and the prediction target."""

    schedule: Literal["linear", "cosine"] = "linear"
    T: int = Field(1000, ge=10, le=10000)
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0)
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)
    cosine_s: float = Field(0.008, ge=0.0, le=0.1)
    prediction: Literal["eps", "v"] = "eps"


# The weighting kinds whose raw weights span orders of magnitude over t: `cap` acts on these only.
CAPPED_KINDS = ("snr", "max_snr")


class WeightingConfig(_Section):
    """Timestep loss weighting (uniform, SNR-based, P2, cosine) and its parameters."""

    kind: Literal["uniform", "snr", "min_snr", "max_snr", "p2", "cosine"] = "uniform"
    # None resolves per kind (docs/knobs.md): 5 for min_snr/max_snr (Min-SNR-5), 1 for p2 (Choi et al.)
    gamma: float | None = Field(None, gt=0.0, description="min_snr/max_snr clamp; p2 exponent")
    k: float = Field(1.0, gt=0.0, description="p2 offset")
    # snr and max_snr span orders of magnitude over t: uncapped, snr puts ~80% of the weight on t <= 10 and max_snr
    # 84% on t >= 900 (linear schedule). Their weights are clamped at `cap` x the median weight (docs/knobs.md).
    cap: float | None = Field(20.0, gt=1.0, description="snr/max_snr: largest weight over the median weight")

    @model_validator(mode="before")
    @classmethod
    def _default_gamma_per_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("gamma") is None:
            data = {**data, "gamma": 1.0 if data.get("kind") == "p2" else 5.0}
        return data


class OptimConfig(_Section):
    """AdamW, warm-up, weight decay, global gradient clipping, batch size and steps."""

    lr: float = Field(2e-4, gt=0.0, le=100.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    decay_all: bool = Field(False, description="also decay norms, biases and embeddings")
    clip_norm: float | None = Field(1.0, gt=0.0, description="global L2 clip; null disables clipping")
    batch_size: int = Field(128, ge=1, le=65536)
    steps: int = Field(1000, ge=1)

    @field_validator("betas")
    @classmethod
    def _betas_in_unit_interval(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each Adam beta must be in [0, 1), got {list(v)}")
        return v


class EMAConfig(_Section):
    """Exponential moving averages of the weights: one per beta, each evaluated."""

    betas: tuple[float, ...] = (0.9999,)
    # on by default: a long-run beta (0.9999) over a CPU-length run would be mostly the initial weights
    warmup: bool = Field(True, description="beta_t = min(beta, (1 + t) / (10 + t))")

    @field_validator("betas")
    @classmethod
    def _betas_valid(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0.0 < b < 1.0 for b in v):
            raise ValueError(f"each EMA beta must be in (0, 1), got {list(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"EMA betas must be distinct, got {list(v)}")
        return v


class AugmentConfig(_Section):
    """Data augmentation of the training batches."""

    hflip: float = Field(0.0, ge=0.0, le=0.5, description="horizontal flip probability")


class EvalConfig(_Section):
    """When and how a trial is measured: probe cadence, sampling and FID/KID scoring."""

    every: int = Field(500, ge=1, description="evaluate EMA/raw weights every N steps (and at the end)")
    probe_every: int = Field(25, ge=1, description="stability probe every N steps")
    probe_size: int = Field(64, ge=1, description="images in the fixed probe batch")
    samples: int = Field(500, ge=0, description="samples per weight set and eval point for FID/KID (0: no scoring)")
    sampler: Literal["ddim", "ddpm"] = "ddim"
    sampler_steps: int = Field(50, ge=1)
    extractor: Literal["auto", "digits", "inception"] = Field(
        "auto", description="FID/KID features; auto: the digits CNN for digits, Inception otherwise"
    )
    inception_weights: str | None = Field(None, description="local torch-fidelity Inception weights file")
    grid: int = Field(64, ge=0, description="samples in the PNG grid saved at the end")
    chunk: int = Field(500, ge=1, description="samples generated per batch (DDPM noise depends on it)")


class EngineConfig(_Section):
    """How a trial computes (docs/knobs.md "Engine"): precision is hashed, compilation is only recorded."""

    precision: Literal["fp32", "tf32", "bf16", "fp16"] = Field(
        "fp32", description="fp32; tf32 (CUDA); bf16 autocast; fp16 autocast with loss scaling"
    )
    compile: bool = Field(False, description="torch.compile the model (falls back to eager if it fails)")


class StabilityConfig(_Section):
    """How telemetry is read: burn-in, divergence and spike thresholds."""

    burn_in: int = Field(100, ge=0, description="steps ignored by CV/spike/divergence statistics")
    divergence_factor: float = Field(10.0, gt=1.0, description="diverged if smoothed loss > factor x min")
    spike_factor: float = Field(5.0, gt=1.0, description="spike if grad norm > factor x running median")
    spike_window: int = Field(100, ge=2)


class TrialConfig(_Section):
    """One trial, fully specified: every section plus seed and device; `config_hash` says which trials compare."""

    seed: int = Field(0, ge=0)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    checkpoint_every: int = Field(0, ge=0, description="save a resumable checkpoint every N steps (0: never)")
    workload: WorkloadConfig = WorkloadConfig()
    model: ModelConfig = ModelConfig()
    lsc: LSCConfig = LSCConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    timestep_weighting: WeightingConfig = WeightingConfig()
    optim: OptimConfig = OptimConfig()
    ema: EMAConfig = EMAConfig()
    augment: AugmentConfig = AugmentConfig()
    eval: EvalConfig = EvalConfig()
    stability: StabilityConfig = StabilityConfig()
    engine: EngineConfig = EngineConfig()

    @model_validator(mode="before")
    @classmethod
    def _resolve_backbone_norm(cls, data: Any) -> Any:
        # Fill `model.norm: null` with the backbone's standard so the dumped config is explicit.
        if not isinstance(data, dict):
            return data
        workload, model = data.get("workload") or {}, data.get("model") or {}
        if isinstance(workload, dict) and isinstance(model, dict) and model.get("norm") is None:
            backbone = workload.get("backbone", "unet")
            model = {**model, "norm": "layer" if backbone == "uvit" else "group"}
            data = {**data, "model": model}
        if isinstance(model, dict) and model.get("time_mlp") is None:  # the variant's own time embedding
            data = {**data, "model": {**model, "time_mlp": model.get("uvit_variant", "ours") != "paper"}}
        return data

    def on_device(self, device: str | None) -> TrialConfig:
        """This config placed on `device` (a worker's GPU, or cpu on a GPU-less slot); None keeps it. The device
        is not hashed: the copy is the same config."""
        return self.model_copy(update={"device": device}) if device else self

    @property
    def extractor(self) -> str:
        """The FID/KID extractor this trial uses ('digits' or 'inception')."""
        if self.eval.extractor != "auto":
            return self.eval.extractor
        return "digits" if self.workload.dataset == "digits" else "inception"

    @model_validator(mode="after")
    def _check_combinations(self) -> TrialConfig:
        if self.workload.backbone == "uvit" and self.lsc.placement == "post_norm":
            raise ValueError(
                "lsc.placement: 'post_norm' is for the unet (the U-ViT's skip_linear sees the raw concat, so "
                "'concat' already acts); allowed for uvit: 'concat'"
            )
        if self.workload.backbone == "uvit" and self.model.norm == "group":
            raise ValueError("model.norm: 'group' is not defined for uvit; allowed: 'layer', 'none'")
        if self.workload.dataset in ("cifar10", "folder") and not self.workload.root:
            raise ValueError(f"workload.root: required for dataset '{self.workload.dataset}'")
        if self.workload.dataset == "digits" and self.workload.resolution not in (8, 16):
            raise ValueError(f"workload.resolution: digits supports 8 or 16, got {self.workload.resolution}")
        if self.eval.extractor == "digits" and self.workload.dataset != "digits":
            raise ValueError("eval.extractor: 'digits' scores only the digits workload; allowed here: auto, inception")
        if self.diffusion.schedule == "linear" and self.diffusion.beta_start >= self.diffusion.beta_end:
            raise ValueError("diffusion.beta_start must be below diffusion.beta_end")
        warn_long_ema(self.ema, self.optim.steps)
        return self


def ema_half_life(beta: float, warmup: bool, step: int) -> float:
    """Half-life in steps of an EMA at `step`: ln 0.5 / ln beta_t, with the warm-up's beta_t when it is on."""
    beta_t = min(beta, (1 + step) / (10 + step)) if warmup else beta
    return math.log(0.5) / math.log(beta_t)


def warn_long_ema(ema: EMAConfig, steps: int) -> None:
    """Warn when an EMA still averages over more than half the run at its end: it would be mostly the initial
    weights (EMA 0.9999 over 600 steps without warm-up keeps ~94% of them)."""
    for beta in ema.betas:
        half_life = ema_half_life(beta, ema.warmup, steps)
        if half_life > steps / 2:
            warnings.warn(
                f"ema.betas: {beta} has a half-life of {half_life:.0f} steps at the end of a {steps}-step run (more "
                "than half of it); turn on ema.warmup or use a shorter beta",
                UserWarning,
                stacklevel=2,
            )

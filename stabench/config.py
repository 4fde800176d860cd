"""One validated config per trial: YAML -> pydantic model tree -> JSON dump + stable hash.

Every knob of docs/knobs.md is one leaf here; `--set key=value` overrides accept the
full dotted path (`optim.lr`) or any unique leaf name (`lr`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

__all__ = ["ConfigError", "TrialConfig", "load_config", "config_hash"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class WorkloadConfig(_Section):
    dataset: Literal["digits", "cifar10", "folder"] = "digits"
    root: str | None = Field(None, description="data directory (cifar10, folder); unused for digits")
    resolution: int = Field(8, ge=4, le=512, description="training resolution in pixels")
    backbone: Literal["unet", "uvit"] = "unet"
    preset: Literal["tiny", "small", "deep"] = "small"
    # Depth and the number of long skips (ScaleLong's variables) come from the preset; the width can be narrowed
    # so that a deep preset fits a CPU budget (docs/knobs.md "Backbones and presets").
    width: int | None = Field(None, ge=4, le=4096, description="base width (unet channels, uvit dim); null: preset's")


class ModelConfig(_Section):
    dropout: float = Field(0.1, ge=0.0, le=0.5)
    stochastic_depth: float = Field(0.0, ge=0.0, le=0.5, description="drop-path rate on residual branches")
    activation: Literal["silu", "gelu", "relu"] = "silu"
    # None resolves to the backbone's standard norm (unet: group, uvit: layer).
    norm: Literal["group", "layer", "none"] | None = None


class LSCConfig(_Section):
    mode: Literal["none", "inv_sqrt2", "constant", "linear", "learnable", "learnable_per_skip"] = "none"
    kappa: float = Field(0.5, gt=0.0, le=1.0, description="ScaleLong CS factor (constant, linear modes)")
    # concat: scale the skip before the decoder block concatenates it (ScaleLong). In the UNet the block's first
    # GroupNorm undoes a constant scale on the residual path; post_norm scales after that norm (docs/lsc.md).
    placement: Literal["concat", "post_norm"] = "concat"


class DiffusionConfig(_Section):
    schedule: Literal["linear", "cosine"] = "linear"
    T: int = Field(1000, ge=10, le=10000)
    beta_start: float = Field(1e-4, gt=0.0, lt=1.0)
    beta_end: float = Field(0.02, gt=0.0, lt=1.0)
    cosine_s: float = Field(0.008, ge=0.0, le=0.1)
    prediction: Literal["eps", "v"] = "eps"


class WeightingConfig(_Section):
    kind: Literal["uniform", "snr", "min_snr", "max_snr", "p2", "cosine"] = "uniform"
    # None resolves per kind (KNOBS.md): 5 for min_snr/max_snr (Min-SNR-5), 1 for p2 (Choi et al.)
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
    hflip: float = Field(0.0, ge=0.0, le=0.5, description="horizontal flip probability")


class EvalConfig(_Section):
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
    burn_in: int = Field(100, ge=0, description="steps ignored by CV/spike/divergence statistics")
    divergence_factor: float = Field(10.0, gt=1.0, description="diverged if smoothed loss > factor x min")
    spike_factor: float = Field(5.0, gt=1.0, description="spike if grad norm > factor x running median")
    spike_window: int = Field(100, ge=2)


class TrialConfig(_Section):
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
            data = {**data, "model": {**model, "norm": "layer" if backbone == "uvit" else "group"}}
        return data

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


# Keys that do not change what a trial computes: excluded from config_hash.
NON_RESULT_KEYS = ("seed", "device", "checkpoint_every")
# Where a file lives, or whether the same arithmetic is compiled, does not change the result.
NON_RESULT_LEAVES = (("eval", "inception_weights"), ("engine", "compile"))
# Keys added after records exist: hashed only when they differ from the value that reproduces the behaviour from
# before they existed, so a stored record keeps its hash (and stays comparable) while a new setting is its own row.
HASHED_WHEN_CHANGED = {
    ("lsc", "placement"): "concat",
    ("eval", "chunk"): 500,
    ("workload", "width"): None,
    ("engine", "precision"): "fp32",
}
# Keys that change nothing for some settings: timestep_weighting.cap acts on snr and max_snr only.
INERT_UNLESS = {("timestep_weighting", "cap"): ("timestep_weighting", "kind", ("snr", "max_snr"))}


# ---------------------------------------------------------------------------------------------
# Leaf keys and --set overrides
# ---------------------------------------------------------------------------------------------


def leaf_keys(model: type[BaseModel] = TrialConfig, prefix: str = "") -> list[str]:
    """All dotted leaf paths of the config tree, e.g. ['seed', ..., 'optim.lr', ...]."""
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += leaf_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def section_fields(dotted_section: str) -> list[str]:
    """Field names of a config section ('' for the top level, 'optim', ...)."""
    model: Any = TrialConfig
    for s in filter(None, dotted_section.split(".")):
        model = model.model_fields[s].annotation
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def allowed_values(dotted: str) -> str:
    """Human description of what a leaf accepts (for error messages)."""
    model: type[BaseModel] = TrialConfig
    *sections, leaf = dotted.split(".")
    for s in sections:
        model = model.model_fields[s].annotation  # type: ignore[assignment]
    field = model.model_fields[leaf]
    ann = field.annotation
    args = [a for a in get_args(ann) if a is not type(None)] or [ann]
    literals = [v for a in args if get_origin(a) is Literal for v in get_args(a)]
    if get_origin(ann) is Literal:
        literals = list(get_args(ann))
    if literals:
        return "one of " + ", ".join(repr(v) for v in literals)
    if field.description and "|" in field.description:  # a pattern-checked string: its forms
        return field.description.replace(" | ", ", ")
    bounds = [
        f"{k} {getattr(m, k)}"
        for m in field.metadata
        for k in ("gt", "ge", "lt", "le")
        if getattr(m, k, None) is not None
    ]
    return f"{getattr(ann, '__name__', str(ann))}" + (f" ({', '.join(bounds)})" if bounds else "")


def resolve_key(key: str) -> str:
    """Map a full dotted key or a unique suffix (`steps`, `ema.betas`) to its full dotted path."""
    keys = leaf_keys()
    if key in keys:
        return key
    matches = [k for k in keys if k.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError("ambiguous key", key=key, allowed=matches)
    close = difflib.get_close_matches(key, keys + [k.rsplit(".", 1)[-1] for k in keys], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown config key{hint} (see `stabench keys`)", key=key)


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=1e-3' -> ('optim.lr', 0.001). Values are parsed as YAML (null, lists, numbers)."""
    if "=" not in text:
        raise ConfigError("expected KEY=VALUE", key=text)
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"value is not valid YAML ({e})", key=text) from None
    return resolve_key(key.strip()), value


def apply_values(data: dict, values: dict[str, Any]) -> dict:
    """A copy of `data` with each dotted key (full or unique leaf) set to a Python value."""
    data = json.loads(json.dumps(data))  # deep copy, plain types
    for key, value in values.items():
        full = resolve_key(key)
        node = data
        *sections, leaf = full.split(".")
        for s in sections:
            node = node.setdefault(s, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{s}' is not a section in the config")
        node[leaf] = value
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `KEY=VALUE` strings (the CLI's `--set`); a bad one is reported as the `overrides` input."""
    try:
        return apply_values(data, dict(parse_override(text) for text in overrides))
    except ConfigError as e:
        raise ConfigError(e.render(), key="overrides") from None


# ---------------------------------------------------------------------------------------------
# Loading, dumping, hashing
# ---------------------------------------------------------------------------------------------


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent, _, name = key.rpartition(".")
            allowed = section_fields(parent)
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"{source}: unknown key '{key}'{hint}; allowed here: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        where = f"key '{key}'" if key else "config"
        allowed = ""
        if key and key in leaf_keys():
            allowed = f"; allowed: {allowed_values(key)}"
        got_text = f" (got {got!r})" if key and not isinstance(got, dict) else ""
        lines.append(f"{source}: {where}: {msg}{got_text}{allowed}")
    return "\n".join(lines)


def build_config(data: dict, source: str = "<config>") -> TrialConfig:
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key given twice in one mapping (the YAML spec forbids it; PyYAML keeps the
    last one silently, which is how a sweep runs the wrong space)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (given twice in one mapping)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping; errors (missing, not UTF-8, syntax, duplicate key) name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with path.open(encoding="utf-8") as f:  # a stream, so YAML errors name the file
            data = yaml.load(f, Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        kind = "" if "duplicate key" in str(e) else "YAML syntax error: "
        raise ConfigError(f"{path}: {kind}{e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrialConfig:
    """YAML file (or defaults when None) + `--set` overrides -> validated TrialConfig."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        source += " + --set " + " ".join(overrides)
    return build_config(apply_overrides(data, list(overrides)), source)


def config_to_dict(cfg: TrialConfig) -> dict:
    return cfg.model_dump(mode="json")


def config_hash(cfg: TrialConfig) -> str:
    """sha256 over every key that affects the result (not the seed, not the device)."""
    data = {k: v for k, v in config_to_dict(cfg).items() if k not in NON_RESULT_KEYS}
    for section, leaf in NON_RESULT_LEAVES:
        data[section].pop(leaf, None)
    for (section, leaf), legacy in HASHED_WHEN_CHANGED.items():
        if data[section].get(leaf) == legacy:
            data[section].pop(leaf)
    for (section, leaf), (on_section, on_leaf, values) in INERT_UNLESS.items():
        if data[on_section].get(on_leaf) not in values:
            data[section].pop(leaf, None)
    data = {k: v for k, v in data.items() if v != {}}  # a new section left empty hashes as if absent
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1}} -> {'optim.lr': 1}: the dotted keys of a config dump."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def dump_yaml(cfg: TrialConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)

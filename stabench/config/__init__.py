"""One validated config per trial: YAML -> pydantic model tree -> JSON dump + stable hash.

schema.py holds the tree (every knob of docs/knobs.md is one leaf), keys.py the dotted keys and `--set`
overrides, load.py reading YAML into a validated config, identity.py the hash that says which records compare.
"""

from ..errors import ConfigError
from .identity import HASHED_WHEN_CHANGED, INERT_UNLESS, NON_RESULT_KEYS, NON_RESULT_LEAVES, config_hash, config_to_dict
from .keys import (
    allowed_values,
    apply_overrides,
    apply_values,
    choices,
    flatten,
    leaf_keys,
    parse_override,
    resolve_key,
    section_fields,
)
from .load import build_config, distribution_hint, dump_yaml, load_config, read_yaml
from .schema import (
    CAPPED_KINDS,
    AugmentConfig,
    DiffusionConfig,
    EMAConfig,
    EngineConfig,
    EvalConfig,
    LSCConfig,
    ModelConfig,
    OptimConfig,
    StabilityConfig,
    TrialConfig,
    WeightingConfig,
    WorkloadConfig,
    ema_half_life,
    warn_long_ema,
)

__all__ = [
    "CAPPED_KINDS", "HASHED_WHEN_CHANGED", "INERT_UNLESS", "NON_RESULT_KEYS", "NON_RESULT_LEAVES",
    "AugmentConfig", "ConfigError", "DiffusionConfig", "EMAConfig", "EngineConfig", "EvalConfig", "LSCConfig",
    "ModelConfig", "OptimConfig", "StabilityConfig", "TrialConfig", "WeightingConfig", "WorkloadConfig",
    "allowed_values", "apply_overrides", "apply_values", "build_config", "choices", "config_hash", "config_to_dict",
    "distribution_hint", "dump_yaml", "ema_half_life", "flatten", "leaf_keys", "load_config", "parse_override",
    "read_yaml", "resolve_key", "section_fields", "warn_long_ema",
]  # fmt: skip

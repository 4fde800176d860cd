"""A config's identity: the stable hash over every key that changes what a trial computes."""

from __future__ import annotations

import hashlib
import json

from .schema import CAPPED_KINDS, TrialConfig

# Keys that do not change what a trial computes: excluded from config_hash.
NON_RESULT_KEYS = ("seed", "device", "checkpoint_every")


# Where a file lives, or whether the same arithmetic is compiled, does not change the result.
NON_RESULT_LEAVES = (("eval", "inception_weights"), ("engine", "compile"), ("workload", "download"))


# Keys added after records exist: hashed only when they differ from the value that reproduces the behaviour from
# before they existed, so a stored record keeps its hash (and stays comparable) while a new setting is its own row.
HASHED_WHEN_CHANGED = {
    ("lsc", "placement"): "concat",
    ("eval", "chunk"): 500,
    ("workload", "width"): None,
    ("engine", "precision"): "fp32",
    **{("workload", leaf): None for leaf in ("depth", "heads", "patch", "mlp_ratio")},
    ("model", "uvit_variant"): "ours",
    ("model", "qkv_bias"): True,
    ("model", "time_mlp"): True,
}


# Keys that change nothing for some settings: timestep_weighting.cap acts on snr and max_snr only.
INERT_UNLESS = {("timestep_weighting", "cap"): ("timestep_weighting", "kind", CAPPED_KINDS)}


def config_to_dict(cfg: TrialConfig) -> dict:
    """The config as plain JSON types (the form stored in a record)."""
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

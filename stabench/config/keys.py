"""Dotted keys of the config tree: listing them, describing what a leaf accepts, and `--set key=value`
overrides (a full dotted path such as `optim.lr` or any unique leaf name such as `lr`)."""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel

from ..errors import ConfigError
from .schema import TrialConfig


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


def _field(dotted: str):
    """The pydantic field of a leaf key such as 'lsc.mode'."""
    model: type[BaseModel] = TrialConfig
    *sections, leaf = dotted.split(".")
    for s in sections:
        model = model.model_fields[s].annotation  # type: ignore[assignment]
    return model.model_fields[leaf]


def choices(dotted: str) -> tuple:
    """The values a leaf with a fixed set allows, in the schema's order (`choices("lsc.mode")`); () for any other
    leaf. Code, CLI and tests list allowed values through this, so the schema is their one source."""
    ann = _field(dotted).annotation
    if get_origin(ann) is Literal:
        return get_args(ann)
    args = [a for a in get_args(ann) if a is not type(None)]
    return tuple(v for a in args if get_origin(a) is Literal for v in get_args(a))


def allowed_values(dotted: str) -> str:
    """Human description of what a leaf accepts (for error messages)."""
    field = _field(dotted)
    ann = field.annotation
    literals = choices(dotted)
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


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply `KEY=VALUE` strings (the CLI's `--set`); a bad one is reported as the `overrides` input."""
    try:
        return apply_values(data, dict(parse_override(text) for text in overrides))
    except ConfigError as e:
        raise ConfigError(e.render(), key="overrides") from None


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 1}} -> {'optim.lr': 1}: the dotted keys of a config dump."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

"""Reading configs: YAML files (UTF-8, no duplicate keys) plus overrides, validated into a TrialConfig with
errors that name the file, the key and the allowed values."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from .identity import config_to_dict
from .keys import allowed_values, apply_overrides, leaf_keys, section_fields
from .schema import TrialConfig


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line per pydantic error: the source, the dotted key, what was given and what is allowed."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            parent, _, name = key.rpartition(".")
            fields = section_fields(parent)
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            lines.append(f"{source}: unknown key '{key}'{hint}; allowed here: {', '.join(fields)}")
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


# The distribution types of other tools (Ray Tune, hyperopt, Optuna's old suggest_* names) in a space file's
# spelling: a space that says `type: loguniform` gets told what to write instead.
DISTRIBUTION_SPELLINGS = {
    "loguniform": "{type: float, log: true}",
    "log_uniform": "{type: float, log: true}",
    "uniform": "{type: float}",
    "quniform": "{type: float, step: Q}",
    "discrete_uniform": "{type: float, step: Q}",
    "randint": "{type: int}",
    "int_uniform": "{type: int}",
    "lograndint": "{type: int, log: true}",
    "choice": "{type: categorical, choices: [...]}",
    "grid_search": "{type: categorical, choices: [...]} with sampler: {name: grid}",
}


def distribution_hint(kind: object) -> str:
    """How to write the distribution type `kind` of another tool in a space file ('' when it is not one)."""
    spelling = DISTRIBUTION_SPELLINGS.get(str(kind).strip().lower())
    return f"; for '{kind}' use {spelling}" if spelling else ""


def build_config(data: dict, source: str = "<config>") -> TrialConfig:
    """A validated TrialConfig from a mapping; a ConfigError names `source`, each bad key, its allowed values."""
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


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrialConfig:
    """YAML file (or defaults when None) + `--set` overrides -> validated TrialConfig."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        source += " + --set " + " ".join(overrides)
    return build_config(apply_overrides(data, list(overrides)), source)


def dump_yaml(cfg: TrialConfig) -> str:
    """The config as YAML in the schema's key order (`train --dry-run` prints it; each run saves it)."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)

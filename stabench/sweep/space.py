"""Search spaces: YAML -> validated `SearchSpace` -> Optuna distributions and trial configs.

A space file names a base config (a path relative to the space file, or an inline mapping), fixed
overrides, the distributions to search (dotted config keys, optionally conditional on a categorical
parent), the objectives, the seeds every sampled config runs with, the budget, the sampler and the pruner.
Everything is checked before any trial runs; errors name the file and the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config import TrialConfig, apply_values, build_config, distribution_hint, read_yaml, resolve_key
from ..errors import ConfigError
from ..records.metrics import METRICS, NUMERIC_METRICS

UNSEARCHABLE = ("seed", "device")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloatDist(_Strict):
    """A float range [low, high], optionally log-scaled or stepped, optionally conditional (`when`)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)
    when: dict[str, list[Any]] | None = None


class IntDist(_Strict):
    """An int range [low, high] with a step, optionally log-scaled, optionally conditional (`when`)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)
    when: dict[str, list[Any]] | None = None


class CategoricalDist(_Strict):
    """A choice among `choices` (any YAML values), optionally conditional (`when`)."""

    type: Literal["categorical"]
    choices: list[Any]
    when: dict[str, list[Any]] | None = None


Distribution = Annotated[FloatDist | IntDist | CategoricalDist, Field(discriminator="type")]


class Objective(_Strict):
    """A metric to minimize or maximize."""

    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"


class Budget(_Strict):
    """How many trials a sweep runs, within an optional time limit."""

    trials: int = Field(10, ge=1)
    timeout_s: float | None = Field(None, gt=0)


class SamplerSpec(_Strict):
    """The Optuna sampler that proposes configs, its seed and its options."""

    name: Literal["tpe", "random", "cmaes", "gp", "nsga2", "qmc", "grid"] = "tpe"
    seed: int | None = 0
    options: dict[str, Any] = {}


class PrunerSpec(_Strict):
    """The Optuna pruner that stops trials early, and its options."""

    name: Literal["median", "successive_halving", "hyperband", "wilcoxon", "none"] = "median"
    options: dict[str, Any] = {}


class SearchSpace(_Strict):
    """A validated space file: base, fixed overrides, distributions, objectives, seeds, budget, sampler, pruner."""

    name: str | None = None
    base: str | dict[str, Any] = Field(default_factory=dict)
    fixed: dict[str, Any] = {}
    space: dict[str, Distribution]
    objectives: list[Objective] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0], min_length=1)
    budget: Budget = Budget()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    source: str = "<inline>"  # the file it came from (set by load_space)

    @property
    def directions(self) -> list[str]:
        """Each objective's direction, in order."""
        return [o.direction for o in self.objectives]


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def _base_data(raw: dict, path: Path) -> dict:
    base = raw.get("base", {})
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: key 'base': config file '{base}' not found (looked at {base_path})")
        return read_yaml(base_path)
    return base


def _check_dist(src: str, key: str, d: Any) -> None:
    where = f"{src}: key 'space.{key}'"
    if isinstance(d, CategoricalDist):
        if not d.choices:
            raise ConfigError(f"{where}: categorical needs at least one choice in 'choices'")
        return
    if d.low > d.high or (d.low == d.high and isinstance(d, FloatDist)):
        raise ConfigError(f"{where}: empty range, low ({d.low}) must be below high ({d.high})")
    if d.log and d.low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low={d.low}")
    if d.log and (d.step not in (None, 1)):
        raise ConfigError(f"{where}: 'step' and 'log' cannot be combined")


def _check_values_fit_config(src: str, key: str, full: str, d: Any, base: dict) -> None:
    """Each end of a range and each choice must be a valid value for the config key."""
    values = d.choices if isinstance(d, CategoricalDist) else [d.low, d.high]
    for v in values:
        try:
            build_config(apply_values(base, {full: v}), src)
        except ConfigError as e:
            first = str(e).splitlines()[0].split(": ", 1)[-1]
            raise ConfigError(f"{src}: key 'space.{key}': value {v!r} is not allowed ({first})") from None


def _parents_first(space: dict[str, Any], src: str) -> dict[str, Any]:
    """Order keys so every conditional key comes after the keys it depends on."""
    ordered: dict[str, Any] = {}
    while len(ordered) < len(space):
        ready = [k for k, d in space.items() if k not in ordered and all(p in ordered for p in (d.when or {}))]
        if not ready:
            stuck = [k for k in space if k not in ordered]
            chain = " -> ".join(_cycle(space, stuck))
            raise ConfigError(f"{src}: key 'space': conditional keys depend on each other in a cycle: {chain}")
        ordered.update((k, space[k]) for k in ready)
    return ordered


def _cycle(space: dict[str, Any], stuck: list[str]) -> list[str]:
    """The keys of a `when:` cycle among the keys that could not be ordered, closed: a -> b -> a. Each of them
    has a parent that could not be ordered either, so following those parents must come back round."""
    path: list[str] = []
    key = stuck[0]
    while key not in path:
        path.append(key)
        key = next(p for p in space[key].when if p in stuck)
    return path[path.index(key) :] + [key]


def _parse_space(raw: dict, src: str) -> SearchSpace:
    """Pydantic-validate the raw mapping, turning the first error into a ConfigError naming the key."""
    try:
        return SearchSpace.model_validate({**raw, "source": src})
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(p) for p in e["loc"] if str(p) not in ("float", "int", "categorical"))
        raise ConfigError(
            f"{src}: key '{key}': {e['msg']}"
            + ("; allowed: float, int, categorical" if "tag" in e["type"] else "")
            + distribution_hint((e.get("ctx") or {}).get("tag"))
        ) from None


def _resolve_fixed(fixed: dict[str, Any], src: str) -> dict[str, Any]:
    """The 'fixed' overrides keyed by their full config keys."""
    resolved = {}
    for k, v in fixed.items():
        try:
            resolved[resolve_key(k)] = v
        except ConfigError as e:
            raise ConfigError(f"{src}: key 'fixed.{k}': {e.message}", allowed=e.allowed) from None
    return resolved


def _resolve_space_keys(
    sp: SearchSpace, src: str, resolved_fixed: dict[str, Any], base: dict
) -> tuple[dict[str, Any], dict[str, str]]:
    """Checked distributions keyed by full config key, and each full key's name as written."""
    space: dict[str, Any] = {}
    names: dict[str, str] = {}  # full key -> key as written
    for k, d in sp.space.items():
        try:
            full = resolve_key(k)
        except ConfigError as e:
            raise ConfigError(f"{src}: key 'space.{k}': {e.message}", allowed=e.allowed) from None
        if full in UNSEARCHABLE:
            raise ConfigError(f"{src}: key 'space.{k}': '{full}' cannot be searched (use 'seeds' for seeds)")
        if full in resolved_fixed:
            raise ConfigError(
                f"{src}: key 'space.{k}': '{full}' is fixed in 'fixed'; a key is either fixed or searched, not both"
            )
        _check_dist(src, k, d)
        _check_values_fit_config(src, k, full, d, base)
        space[full], names[full] = d, k
    return space, names


def _resolve_conditions(space: dict[str, Any], names: dict[str, str], src: str) -> None:
    """Rewrite every 'when' in place to full parent keys, checking each parent is a categorical with those choices."""
    for full, d in list(space.items()):
        if not d.when:
            continue
        when = {}
        for parent, values in d.when.items():
            try:
                pfull = resolve_key(parent)
            except ConfigError:
                pfull = parent
            pd = space.get(pfull)
            if not isinstance(pd, CategoricalDist):
                raise ConfigError(
                    f"{src}: key 'space.{names[full]}.when': parent '{parent}' must be a categorical key of 'space'"
                )
            bad = [v for v in values if v not in pd.choices]
            if bad:
                raise ConfigError(
                    f"{src}: key 'space.{names[full]}.when.{parent}': {bad} not among the parent's choices {pd.choices}"
                )
            when[pfull] = values
        space[full] = d.model_copy(update={"when": when})


def _check_objectives_and_sampler(sp: SearchSpace, space: dict[str, Any], src: str) -> None:
    """Known objective metrics, a sampler that handles their number, and steps on floats for a grid."""
    for o in sp.objectives:
        if o.metric not in NUMERIC_METRICS:
            raise ConfigError(
                f"{src}: key 'objectives.metric': unknown metric '{o.metric}'; allowed: " + ", ".join(NUMERIC_METRICS)
            )
        if o.direction != METRICS[o.metric].direction:  # the registry says which way is better, once
            raise ConfigError(
                f"{src}: key 'objectives.direction': '{o.metric}' is better when it is "
                f"{'lower' if METRICS[o.metric].direction == 'minimize' else 'higher'}; allowed: "
                f"{METRICS[o.metric].direction}"
            )
    if len(sp.objectives) > 1 and sp.sampler.name == "cmaes":
        raise ConfigError(
            f"{src}: key 'sampler.name': cmaes is single-objective; use nsga2, tpe, gp or random "
            f"for {len(sp.objectives)} objectives"
        )
    if sp.sampler.name == "grid":
        for k, d in space.items():
            if isinstance(d, FloatDist) and d.step is None:
                raise ConfigError(f"{src}: key 'space.{k}': the grid sampler needs 'step' on float ranges")


SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler",
            "nsga2": "NSGAIISampler", "qmc": "QMCSampler", "grid": "GridSampler"}  # fmt: skip
PRUNERS = {"median": "MedianPruner", "successive_halving": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
           "wilcoxon": "WilcoxonPruner", "none": "NopPruner"}  # fmt: skip


def sampler_class(name: str) -> type:
    """The Optuna sampler class of a space's `sampler.name`."""
    import optuna

    return getattr(optuna.samplers, SAMPLERS[name])


def pruner_class(name: str) -> type:
    """The Optuna pruner class of a space's `pruner.name`."""
    import optuna

    return getattr(optuna.pruners, PRUNERS[name])


def _check_options(cls: type, options: dict[str, Any], where: str, src: str, fixed: tuple[str, ...] = ()) -> None:
    """Options Optuna's class would reject (unknown names, values of the wrong type or range), named with the space
    file before any trial runs, instead of raised from inside Optuna at run time."""
    import inspect

    params = {k: p for k, p in inspect.signature(cls).parameters.items() if k not in ("self", *fixed)}
    for name, value in options.items():
        if name not in params:
            allowed = ", ".join(params)
            raise ConfigError(f"{src}: key '{where}.{name}': {cls.__name__} has no option '{name}'; allowed: {allowed}")
        default = params[name].default
        numeric = isinstance(default, int | float) and not isinstance(default, bool)
        if (isinstance(default, bool) and not isinstance(value, bool)) or (
            numeric and (isinstance(value, bool) or not isinstance(value, int | float))
        ):
            kind = type(default).__name__
            raise ConfigError(f"{src}: key '{where}.{name}': expected type {kind} (like {default!r}), got {value!r}")
    if cls.__name__ == "GridSampler":
        return  # built from the space's grid values at run time
    try:
        cls(**options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{src}: key '{where}': {cls.__name__} rejects {options}: {e}") from None


def _check_objectives_produced(sp: SearchSpace, base: dict, space: dict[str, Any], src: str) -> None:
    """An objective the trials cannot produce (a sample-quality metric with sampling switched off) would fail every
    trial; say so before the first one. A searched eval.samples is left to the trials."""
    samples = base.get("eval", {}).get("samples", TrialConfig().eval.samples)
    searched = "eval.samples" in space
    for o in sp.objectives:
        if METRICS[o.metric].produced_by == "scoring" and samples == 0 and not searched:
            raise ConfigError(
                f"{src}: key 'objectives.metric': '{o.metric}' needs samples, but eval.samples is 0; "
                "set eval.samples > 0 in 'fixed' or pick a telemetry metric such as best_probe_loss"
            )


def validate_space(raw: dict, path: Path) -> SearchSpace:
    """Check a raw space mapping read from `path`; errors name the file and the key."""
    src = str(path)
    sp = _parse_space(raw, src)
    base = _base_data(raw, path)
    resolved_fixed = _resolve_fixed(sp.fixed, src)
    base = apply_values(base, resolved_fixed)
    build_config(base, f"{src} (base + fixed)")
    space, names = _resolve_space_keys(sp, src, resolved_fixed, base)
    _resolve_conditions(space, names, src)
    space = _parents_first(space, src)
    _check_objectives_and_sampler(sp, space, src)
    _check_options(sampler_class(sp.sampler.name), sp.sampler.options, "sampler.options", src, ("seed",))
    _check_options(pruner_class(sp.pruner.name), sp.pruner.options, "pruner.options", src)
    _check_objectives_produced(sp, base, space, src)
    return sp.model_copy(update={"space": space, "fixed": resolved_fixed, "base": base, "name": sp.name or path.stem})


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate the space file at `path`."""
    path = Path(path)
    return validate_space(read_yaml(path), path)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def is_active(d: Any, params: dict) -> bool:
    """Whether a conditional key's `when` holds for the params sampled so far (always true without one)."""
    return not d.when or all(params.get(p) in values for p, values in d.when.items())


def scalar_choices(d: CategoricalDist) -> bool:
    """Optuna choices must be scalars; list choices (e.g. ema.betas) travel as JSON strings."""
    return all(c is None or isinstance(c, (bool, int, float, str)) for c in d.choices)


def decode_params(space: SearchSpace, params: dict[str, Any]) -> dict[str, Any]:
    """Params as Optuna stores them (list choices as JSON strings) -> the values `suggest` returns."""

    def decode(key: str, value: Any) -> Any:
        d = space.space.get(key)
        return json.loads(value) if isinstance(d, CategoricalDist) and not scalar_choices(d) else value

    return {k: decode(k, v) for k, v in params.items()}


def suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """Define-by-run sampling (Optuna trial or Ray's OptunaSearch): only active conditional keys."""
    params: dict[str, Any] = {}
    for key, d in space.space.items():
        if not is_active(d, params):
            continue
        if isinstance(d, CategoricalDist):
            if scalar_choices(d):
                params[key] = trial.suggest_categorical(key, d.choices)
            else:
                params[key] = json.loads(trial.suggest_categorical(key, [json.dumps(c) for c in d.choices]))
        elif isinstance(d, IntDist):
            params[key] = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
        else:
            params[key] = trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)
    return params


def grid_values(space: SearchSpace) -> dict[str, list]:
    """Every key's grid points, for Optuna's GridSampler."""
    out = {}
    for key, d in space.space.items():
        if isinstance(d, CategoricalDist):
            out[key] = list(d.choices) if scalar_choices(d) else [json.dumps(c) for c in d.choices]
        elif isinstance(d, IntDist):
            out[key] = list(range(d.low, d.high + 1, d.step))
        else:
            n = int(round((d.high - d.low) / d.step))
            out[key] = [d.low + i * d.step for i in range(n + 1)]
    return out


def trial_config(space: SearchSpace, params: dict[str, Any], seed: int) -> TrialConfig:
    """The base + fixed config with sampled params and the seed applied."""
    data = apply_values(space.base, {**params, "seed": seed})
    return build_config(data, f"{space.source} (trial params {params})")

"""What every command shares: the error boundary, deprecated spellings, and options used by several commands."""

from __future__ import annotations

import difflib
import importlib
import json
import tempfile
import warnings
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from ..errors import UserError
from ..paths import existing_ancestor

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)
DEPRECATED = "deprecated__"  # prefix of the hidden options that keep an old spelling working


class UserFacingError(click.ClickException):
    """Printed as 'Error: ...' without a traceback; exit code 2 like click's usage errors."""

    exit_code = 2


class Command(click.Command):
    """A command with the CLI's one error boundary: a `UserError` becomes 'Error: <flag>: <message>', exit 2
    (`stabench --debug` re-raises it with its traceback). Old option spellings are folded into the new ones."""

    def invoke(self, ctx: click.Context):
        """Run the command; a UserError becomes one 'Error: <flag>: ...' line and exit 2."""
        fold_deprecated(ctx)
        try:
            return super().invoke(ctx)
        except UserError as err:
            if ctx.find_root().params.get("debug"):
                raise
            raise UserFacingError(err.render(flag_for(ctx, err.key))) from None


class Group(click.Group):
    """The stabench group: its commands share the error boundary; warnings print as one 'Warning: ...' line."""

    command_class = Command

    def invoke(self, ctx: click.Context):
        """Print warnings as one 'Warning: ...' line, then run the command."""
        warnings.showwarning = show_warning
        return super().invoke(ctx)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the terminal user should see it: one line on stderr, no source location."""
    click.echo(f"Warning: {message}", err=True)


def flag_for(ctx: click.Context, key: str | None) -> str | None:
    """How the user spelled the input called `key`: the flag (or argument) of the parameter of that name."""
    used = ctx.meta.get("used_flag", {})
    if key in used:
        return used[key]
    for param in ctx.command.params:
        if param.name == key:
            return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name
    return None


def deprecated_alias(old: str, new: str, **option_kwargs):
    """Keep `old` working as a hidden, deprecated spelling of the option whose parameter is called `new`."""
    return click.option(
        old,
        f"{DEPRECATED}{new}",
        hidden=True,
        deprecated=f"use --{new.replace('_', '-')}",
        default=None,
        **option_kwargs,
    )


def fold_deprecated(ctx: click.Context) -> None:
    """Move the values of old spellings onto their new options, remembering which flag the user typed."""
    for name in [n for n in ctx.params if n.startswith(DEPRECATED)]:
        value, new = ctx.params.pop(name), name.removeprefix(DEPRECATED)
        if value is not None:
            ctx.params[new] = value
            old = next(p.opts[0] for p in ctx.command.params if p.name == name)
            ctx.meta.setdefault("used_flag", {})[new] = old


class RegistryChoice(click.Choice):
    """A choice among the names of a registry (`stabench.sweep.backend:BACKENDS`), so the CLI never copies them.
    Read on first use: the registries' modules import torch, which `stabench --help` should not wait for."""

    def __init__(self, registry: str):
        self.registry, self.case_sensitive = registry, True  # click.Choice's __init__ would read the names now

    @cached_property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        """The registry's names, in its order."""
        module, name = self.registry.split(":")
        return tuple(getattr(importlib.import_module(module), name))


def writable_dir(path: Path, key: str) -> Path:
    """`path` as a directory we can write into, created if missing; else a UserError naming the input `key` (a
    path under a regular file, an existing file, a read-only or missing filesystem)."""
    anchor = existing_ancestor(path)
    if not anchor.is_dir():
        where = "is a file" if anchor == path else f"lies under the regular file '{anchor}'"
        raise UserError(f"'{path}' {where}; give a directory", key=key)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"cannot write into '{path}': {e.strerror or e}", key=key) from None
    return path


def store_option(help: str = "Results store for the trial records (default: runs/, or $STABENCH_STORE)."):
    """The --store option (the record store)."""
    return click.option("--store", type=click.Path(path_type=Path), default=None, metavar="DIR", help=help)


def open_store(path: Path | None, writable: bool = False, existing: bool = False):
    """The record store at `path` (default: runs/, or $STABENCH_STORE); checked to exist for commands that read
    records, and writable for commands that add them."""
    from ..records.store import Store

    store = Store(path)
    if existing:
        store.must_exist()
    if writable:
        writable_dir(store.root if path is None else path, "store")
    return store


def store_tags(store) -> list[dict]:
    """The tags of every readable record of the store."""
    from ..records.record import tags_of

    return [tags_of(r) for r in store.records()]


def check_sweeps(names: Sequence[str], tags: list[dict], store_root: Path, key: str) -> None:
    """Each of `names` is a sweep with records in the store; else a UserError naming the closest one and listing
    the sweeps there are."""
    existing = sorted({t["sweep"] for t in tags if t.get("sweep")})
    for name in names:
        if name not in existing:
            close = difflib.get_close_matches(name, existing, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(
                f"no records of sweep '{name}' in {store_root}{hint}",
                key=key,
                allowed=existing or "none: the store holds no sweep yet",
            )


def sweep_baseline(name: str, sweeps: Sequence[str], tags: list[dict]) -> str:
    """The baseline a leaderboard compares with: `name` itself when the store holds that reference config (run by
    `stabench baselines`) or `name` already names a sweep's point; else the point of that name inside the one given
    sweep that has it, `name@sweep` (what `sweep --with-baselines` runs), so `--sweep S` alone finds `ddpm@S`."""
    if not name or "@" in name or any(t.get("baseline") == name for t in tags):
        return name
    inside = sorted({t["sweep"] for t in tags if t.get("baseline_point") == name and t.get("sweep") in sweeps})
    return f"{name}@{inside[0]}" if len(inside) == 1 else name


def inception_override(path: str | None) -> list[str]:
    """The `--set` that carries --inception-weights into each config as the unhashed key eval.inception_weights
    (absolute: Ray workers may run elsewhere), so records compare as before."""
    return [f"eval.inception_weights={json.dumps(str(Path(path).absolute()))}"] if path else []


def inception_option(fn):
    """The --inception-weights option (parameter `inception_weights`; see `inception_override`)."""
    return click.option(
        "--inception-weights",
        default=None,
        metavar="PATH",
        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth for the standard FID (the config key "
        "eval.inception_weights; default: $STABENCH_INCEPTION_WEIGHTS); nothing is downloaded.",
    )(fn)


def wandb_options(fn):
    """--wandb MODE, --wandb-project, --wandb-entity (offline by default without an API key)."""
    fn = click.option("--wandb-entity", default=None, metavar="ENTITY", help="W&B entity (default: $WANDB_ENTITY).")(fn)
    project_help = "W&B project ($WANDB_PROJECT, else stabench)."
    fn = click.option("--wandb-project", default=None, metavar="NAME", help=project_help)(fn)
    return click.option(
        "--wandb",
        "wandb_mode",
        type=click.Choice(["online", "offline", "disabled"]),
        default=None,
        help="W&B mode (default: $WANDB_MODE, else online when logged in, else offline; offline runs go to "
        "<store>/wandb/, upload with `wandb sync <store>/wandb/offline-run-*`).",
    )(fn)


def tracking(wandb_mode: str | None, wandb_project: str | None, wandb_entity: str | None, root: Path):
    """The W&B settings of a command; offline runs go under `root`."""
    from ..records.tracking import TrackingSettings

    # else $WANDB_*
    given: dict[str, Any] = {k: v for k, v in (("project", wandb_project), ("entity", wandb_entity)) if v}
    return TrackingSettings(mode=wandb_mode, dir=str(root), **given)


def ray_options(fn):
    """--address, --cpus-per-trial, --gpus-per-trial, --ship-code: where and how large Ray trials are."""
    fn = click.option(
        "--ship-code",
        is_flag=True,
        help="[ray] Send this stabench package to the workers (runtime_env py_modules): the nodes need its "
        "dependencies installed, not stabench itself.",
    )(fn)
    fn = click.option(
        "--gpus-per-trial",
        type=click.FloatRange(min=0),
        default=None,
        metavar="G",
        help="[ray] GPUs per trial; fractions share a GPU (0.25 = four trials per GPU); 0 trains on the CPU. "
        "Default: 1 on a cluster with GPUs, else 0.",
    )(fn)
    fn = click.option(
        "--cpus-per-trial",
        type=click.FloatRange(min=0, min_open=True),
        default=1,
        show_default=True,
        metavar="C",
        help="[ray] CPUs reserved per trial.",
    )(fn)
    return click.option(
        "--address",
        default=None,
        metavar="ADDR",
        help="[ray] Cluster to join: 'auto', host:port or ray://host:port (default: $RAY_ADDRESS, as set by "
        "`ray job submit`, else start a local Ray).",
    )(fn)


def _gpu_list(ctx, param, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        gpus = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        gpus = []
    if not gpus or any(g < 0 for g in gpus):
        raise click.BadParameter(f"'{value}' is not a list of GPU indices; give e.g. 0,1,2,3")
    return gpus


gpus_option = click.option(
    "--gpus",
    default=None,
    metavar="LIST",
    callback=_gpu_list,
    help="[optuna] GPU indices the workers take in turn, e.g. 0,1 (default: every visible GPU when --workers > 1).",
)


def workers_count(ctx: click.Context, param: click.Parameter, value: str) -> int | None:
    """`--workers K|auto`: a positive count, or None for `auto` (the sweep decides: one per GPU, else per core)."""
    if value == "auto":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise click.BadParameter(f"'{value}' is not a worker count; allowed: a whole number >= 1, or auto")
    return count

"""The `stabench` command line: parses options and calls the library, nothing more."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import UserError

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


class UserFacingError(click.ClickException):
    """Printed as 'Error: ...' without a traceback; exit code 2 like click's usage errors."""

    exit_code = 2


def _fail(err: UserError, debug: bool) -> None:
    if debug:
        raise err
    raise UserFacingError(str(err)) from None


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks for user errors too.")
@click.version_option(package_name="stabench")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """stabench: measure which training-stabilization settings make diffusion models train well.

    A trial trains a real diffusion model from a YAML config and a seed and records loss, gradient-norm
    and feature-norm statistics (see `stabench train --help`). Config keys are listed by `stabench keys`.
    """
    ctx.obj = {"debug": debug}


@main.command(context_settings=CONTEXT)
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key; repeatable. KEY is a dotted path (optim.lr) or a unique leaf "
                   "name (lr, steps). VALUE is parsed as YAML: 1e-3, null, [0.999,0.9999].")
@click.option("--seed", type=click.IntRange(min=0), default=None, metavar="N",
              help="Trial seed (overrides the config's `seed`).")
@click.option("--device", default=None, metavar="DEVICE",
              help="auto (default: CUDA when available), cpu, cuda or cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              show_default=True, metavar="DIR", help="Each trial writes DIR/<run_id>/record.json and more.")
@click.option("--checkpoint", is_flag=True, help="Also save the final weights, EMA and optimizer state.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--dry-run", is_flag=True, help="Validate and print the resolved config, then exit.")
@click.pass_context
def train(ctx: click.Context, config: Path, overrides: tuple[str, ...], seed: int | None, device: str | None,
          out: Path, checkpoint: bool, quiet: bool, dry_run: bool) -> None:
    """Train one trial from CONFIG (a YAML file) and write its record.

    \b
    Example:
      stabench train baselines/ddpm.yaml --set steps=200 --set lsc.mode=constant --set kappa=0.7
    """
    from .config import config_hash, dump_yaml, load_config

    extra = list(overrides) + ([f"seed={seed}"] if seed is not None else []) + \
        ([f"device={device}"] if device is not None else [])
    try:
        cfg = load_config(config, extra)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out: '{out}' exists and is not a directory")
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    if dry_run:
        click.echo(dump_yaml(cfg) + f"# config_hash: {config_hash(cfg)}")
        return

    from .train import run_trial

    try:
        record = run_trial(cfg, out, progress=not quiet, save_checkpoint=checkpoint)
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    print_summary(record)
    if record["status"] == "failed":
        sys.exit(1)


def print_summary(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = record.get("metrics") or {}
    table = Table(title=f"trial {record['run_id']}", show_header=False, box=None)
    table.add_row("status", record["status"] + (f" ({record.get('diverged_reason')})"
                                                if record["status"] == "diverged" else ""))
    if record["status"] == "failed":
        table.add_row("error", f"{record['error']['type']}: {record['error']['message']}")
    rows = [("steps", record.get("steps_completed")), ("steps/s", record.get("steps_per_s")),
            ("probe loss", f"{m.get('initial_probe_loss', float('nan')):.4f} -> "
                           f"{m.get('final_probe_loss', float('nan')):.4f}" if m else None),
            ("best weights", m.get("best_weights")), ("instability", m.get("instability")),
            ("grad norm cv", m.get("grad_norm_cv")), ("grad spikes / 1k", m.get("grad_spike_rate")),
            ("clip frac", m.get("clip_frac")), ("probe loss osc", m.get("probe_loss_osc")),
            ("feature norm max", m.get("feature_norm_max")),
            ("feature norm growth", m.get("feature_norm_growth")), ("record", record.get("run_dir"))]
    for name, value in rows:
        if value is not None:
            table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console(stderr=False).print(table)


@main.command(context_settings=CONTEXT)
def keys() -> None:
    """List every config key with its default and allowed values."""
    from .config import TrialConfig, allowed_values, leaf_keys

    defaults = TrialConfig().model_dump(mode="json")
    for key in leaf_keys():
        value = defaults
        for part in key.split("."):
            value = value[part]
        click.echo(f"{key:32s} default {value!r:24s} {allowed_values(key)}")


if __name__ == "__main__":
    main()

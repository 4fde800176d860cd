"""The `stabench` command line: parses options and calls the library, nothing more."""

from __future__ import annotations

import os
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


def inception_option(fn):
    return click.option(
        "--inception-weights",
        default=None,
        metavar="PATH",
        callback=_set_inception_env,
        expose_value=False,
        help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth for the "
        "standard FID (same as $STABENCH_INCEPTION_WEIGHTS); nothing is downloaded.",
    )(fn)


def _set_inception_env(ctx, param, value):
    if value:  # read by scoring.resolve_inception_weights, here and in Ray workers started from here
        os.environ["STABENCH_INCEPTION_WEIGHTS"] = str(Path(value).absolute())
    return value


def check_scoring_inputs(cfg) -> None:
    """Fail before training when the standard FID is requested and its weights file is missing."""
    if cfg.eval.samples > 0 and cfg.extractor == "inception":
        from .scoring import resolve_inception_weights

        resolve_inception_weights(cfg.eval.inception_weights)


def wandb_options(fn):
    """--wandb MODE, --wandb-project, --wandb-entity (offline by default without an API key)."""
    fn = click.option("--wandb-entity", default=None, metavar="ENTITY", help="W&B entity (team or user).")(fn)
    fn = click.option("--wandb-project", default="stabench", show_default=True, metavar="NAME", help="W&B project.")(fn)
    return click.option(
        "--wandb",
        "wandb_mode",
        type=click.Choice(["online", "offline", "disabled"]),
        default=None,
        help="W&B mode (default: $WANDB_MODE, else online when logged in, else offline; offline "
        "runs go to <store>/wandb/, upload with `wandb sync <store>/wandb/offline-run-*`).",
    )(fn)


def tracking_settings(mode: str | None, project: str, entity: str | None, store_root: Path):
    from .tracking import TrackingSettings

    return TrackingSettings(mode=mode, project=project, entity=entity, dir=str(store_root))


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
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config key; repeatable. KEY is a dotted path (optim.lr) or a unique leaf "
    "name (lr, steps). VALUE is parsed as YAML: 1e-3, null, [0.999,0.9999].",
)
@click.option(
    "--seed", type=click.IntRange(min=0), default=None, metavar="N", help="Trial seed (overrides the config's `seed`)."
)
@click.option(
    "--device", default=None, metavar="DEVICE", help="auto (default: CUDA when available), cpu, cuda or cuda:N."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    metavar="DIR",
    help="Each trial writes DIR/<run_id>/record.json and more.",
)
@click.option("--checkpoint", is_flag=True, help="Also save the final weights, EMA and optimizer state.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="Save a resumable checkpoint (atomically) every K steps.",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Continue an interrupted trial from RUN_DIR/checkpoint.pt (CONFIG defaults to "
    "RUN_DIR/config.yaml); the result equals an uninterrupted run.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--dry-run", is_flag=True, help="Validate and print the resolved config, then exit.")
@inception_option
@wandb_options
@click.pass_context
def train(
    ctx: click.Context,
    config: Path | None,
    overrides: tuple[str, ...],
    seed: int | None,
    device: str | None,
    out: Path,
    checkpoint: bool,
    checkpoint_every: int | None,
    resume_dir: Path | None,
    quiet: bool,
    dry_run: bool,
    wandb_mode: str | None,
    wandb_project: str,
    wandb_entity: str | None,
) -> None:
    """Train one trial from CONFIG (a YAML file) and write its record.

    \b
    Example:
      stabench train baselines/ddpm.yaml --set steps=200 --set lsc.mode=constant --set kappa=0.7
    """
    from .config import config_hash, dump_yaml, load_config

    extra = (
        list(overrides)
        + ([f"seed={seed}"] if seed is not None else [])
        + ([f"device={device}"] if device is not None else [])
        + ([f"checkpoint_every={checkpoint_every}"] if checkpoint_every else [])
    )
    try:
        if config is None and resume_dir is None:
            raise UserError("CONFIG: give a config file (or --resume RUN_DIR)")
        cfg = load_config(config or resume_dir / "config.yaml", extra)
        if not dry_run:
            from .data import check_available

            check_available(cfg.workload)
            check_scoring_inputs(cfg)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out: '{out}' exists and is not a directory")
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    if dry_run:
        click.echo(dump_yaml(cfg) + f"# config_hash: {config_hash(cfg)}")
        return

    from .engine import run_trial
    from .record import Status

    try:
        record = run_trial(
            cfg,
            out,
            progress=not quiet,
            save_checkpoint=checkpoint,
            resume_dir=resume_dir,
            tracking=tracking_settings(wandb_mode, wandb_project, wandb_entity, out),
        )
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    print_summary(record)
    if record["status"] == Status.FAILED:
        sys.exit(1)


def print_summary(record: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .record import Status

    m = record.get("metrics") or {}
    table = Table(title=f"trial {record['run_id']}", show_header=False, box=None)
    table.add_row(
        "status",
        record["status"] + (f" ({record.get('diverged_reason')})" if record["status"] == Status.DIVERGED else ""),
    )
    if record["status"] == Status.FAILED:
        table.add_row("error", f"{record['error']['type']}: {record['error']['message']}")
    rows = [
        ("steps", record.get("steps_completed")),
        ("steps/s", record.get("steps_per_s")),
        (
            "probe loss",
            f"{m.get('initial_probe_loss', float('nan')):.4f} -> {m.get('final_probe_loss', float('nan')):.4f}"
            if m
            else None,
        ),
        ("best weights", m.get("best_weights")),
        *[(k, m[k]) for k in ("fid_digits", "kid_digits", "fid", "kid", "fid_digits_floor", "fid_floor") if k in m],
        ("instability", m.get("instability")),
        ("grad norm cv", m.get("grad_norm_cv")),
        ("grad spikes / 1k", m.get("grad_spike_rate")),
        ("clip frac", m.get("clip_frac")),
        ("probe loss osc", m.get("probe_loss_osc")),
        ("feature norm max", m.get("feature_norm_max")),
        ("feature norm growth", m.get("feature_norm_growth")),
        ("record", record.get("run_dir")),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console(stderr=False).print(table)


@main.command(context_settings=CONTEXT)
@click.argument("space_file", metavar="SPACE.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--backend",
    type=click.Choice(["optuna", "ray"]),
    default="optuna",
    show_default=True,
    help="optuna: in-process or --workers local processes; ray: Ray Tune, local or a cluster.",
)
@click.option(
    "--study", default=None, metavar="NAME", help="Study/sweep name (default: the space's name or file stem)."
)
@click.option(
    "--n-trials",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Finished trials wanted in the study (default: the space's budget.trials).",
)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Results store for the trial records (default: runs/, or $STABENCH_STORE).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted sweep: retry trials left running by a killed process "
    "(optuna) or restore the Ray Tune experiment (ray).",
)
@click.option(
    "--with-baselines", is_flag=True, help="Enqueue the baselines/*.yaml points of this space as the first trials."
)
@click.option(
    "--max-failures",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    metavar="N",
    help="Failed trials tolerated before the sweep stops, and dead workers replaced (optuna); "
    "restarts per trial (ray).",
)
@click.option(
    "--storage",
    default=None,
    metavar="URL_OR_FILE",
    help="Optuna study storage: a journal file path or an RDB URL, e.g. "
    "postgresql+psycopg2://user:pw@host/db. Default: results/optuna/<study>.journal (optuna); "
    "in memory, saved with the Ray experiment (ray).",
)
# Optuna backend
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    metavar="K",
    help="[optuna] Local worker processes sharing the study.",
)
# Ray backend
@click.option(
    "--address",
    default=None,
    metavar="ADDR",
    help="[ray] Cluster to join: 'auto' or ray://host:port (default: start a local Ray).",
)
@click.option(
    "--cpus-per-trial",
    type=click.FloatRange(min=0, min_open=True),
    default=1,
    show_default=True,
    metavar="C",
    help="[ray] CPUs reserved per trial.",
)
@click.option(
    "--gpus-per-trial",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar="G",
    help="[ray] GPUs per trial; fractions share a GPU (0.25 = four trials per GPU).",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(min=1),
    default=None,
    metavar="K",
    help="[ray] Trials running at once (default: as many as resources allow).",
)
@click.option(
    "--storage-path",
    default=None,
    metavar="DIR_OR_URI",
    help="[ray] Where Ray Tune keeps experiment state (default results/ray).",
)
@inception_option
@wandb_options
@click.pass_context
def sweep(
    ctx: click.Context,
    space_file: Path,
    backend: str,
    study: str | None,
    n_trials: int | None,
    store_dir: Path | None,
    resume: bool,
    with_baselines: bool,
    max_failures: int,
    storage: str | None,
    workers: int,
    address: str | None,
    cpus_per_trial: float,
    gpus_per_trial: float,
    max_concurrent: int | None,
    storage_path: str | None,
    wandb_mode: str | None,
    wandb_project: str,
    wandb_entity: str | None,
) -> None:
    """Search the knobs of SPACE.yaml and record every trial in the store.

    Re-running the same command continues the same study. The Optuna storage opens in
    optuna-dashboard: `optuna-dashboard results/optuna/<study>.journal`.

    \b
    Examples:
      stabench sweep search_spaces/quickstart.yaml
      stabench sweep search_spaces/lsc.yaml --workers 2
      stabench sweep search_spaces/cifar10-full.yaml --backend ray --address auto --gpus-per-trial 0.25
    """
    from .space import load_space
    from .store import DEFAULT_STORE, Store

    try:
        space = load_space(space_file)
        store = Store(store_dir or DEFAULT_STORE)
        baselines = baseline_points(space) if with_baselines else []
        from .space import trial_config

        if not address:  # on a cluster the data lives on the workers, not necessarily here
            from .data import check_available

            check_available(trial_config(space, {}, space.seeds[0]).workload)
        check_scoring_inputs(trial_config(space, {}, space.seeds[0]))
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    name = study or space.name
    tracking = tracking_settings(wandb_mode, wandb_project, wandb_entity, store.root)
    click.echo(
        f"sweep '{name}' ({backend}): {len(space.space)} knobs, seeds {space.seeds}, "
        f"objectives {[o.metric + ' ' + o.direction for o in space.objectives]}, store {store.root}"
    )
    try:
        if backend == "optuna":
            from .search import run_optuna_sweep

            summary = run_optuna_sweep(
                space,
                store,
                study_name=name,
                storage_url=storage,
                n_trials=n_trials,
                workers=workers,
                resume=resume,
                max_failures=max_failures,
                baselines=baselines,
                tracking=tracking,
            )
        else:
            from .ray_backend import run_ray_sweep

            summary = run_ray_sweep(
                space,
                store,
                study_name=name,
                n_trials=n_trials,
                address=address,
                cpus_per_trial=cpus_per_trial,
                gpus_per_trial=gpus_per_trial,
                max_concurrent=max_concurrent,
                storage_path=storage_path,
                resume=resume,
                max_failures=max_failures,
                baselines=baselines,
                storage_url=storage,
                tracking=tracking,
            )
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    print_sweep_summary(summary, space)


def baseline_points(space) -> dict[str, dict]:
    """The baselines/*.yaml configs as points of this space (same workload; baselines that land on the
    same point as an earlier one are skipped)."""
    from .baselines import BASELINES_DIR
    from .config import build_config, config_to_dict, load_config
    from .search import baseline_params

    points: dict[str, dict] = {}
    workload = config_to_dict(build_config(space.base))["workload"]
    for path in sorted(BASELINES_DIR.glob("*.yaml"), key=lambda p: (p.stem != "ddpm", p.stem)):
        cfg = config_to_dict(load_config(path))
        if cfg["workload"] == workload:
            params = baseline_params(space, cfg)
            if params and params not in points.values():
                points[path.stem] = params
    return points


def print_sweep_summary(summary: dict, space) -> None:
    click.echo("")
    if "best" in summary:
        best = summary["best"]
        click.echo(
            f"best {space.objectives[0].metric} = {best['value']:.4g}"
            + (f" (trial {best['trial']})" if "trial" in best else "")
        )
        for k, v in best["params"].items():
            click.echo(f"  {k}: {v}")
    for point in summary.get("pareto_front", []):
        values = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(space.objectives, point["values"]))
        click.echo(f"Pareto trial {point['trial']}: {values}  {point['params']}")
    if "counts" in summary:
        c = summary["counts"]
        click.echo(f"trials: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed")


@main.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--samples",
    type=click.IntRange(min=2),
    default=None,
    metavar="N",
    help="Samples per weight set (default: the trial's eval.samples).",
)
@click.option(
    "--extractor",
    type=click.Choice(["digits", "inception"]),
    default=None,
    help="Feature extractor (default: the trial's eval.extractor).",
)
@click.option(
    "--inception-weights",
    default=None,
    metavar="PATH",
    help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth (or $STABENCH_INCEPTION_WEIGHTS).",
)
@click.pass_context
def score(
    ctx: click.Context, run_dir: Path, samples: int | None, extractor: str | None, inception_weights: str | None
) -> None:
    """Re-score a finished trial (raw and EMA weights) from its checkpoint; writes score-*.json beside it."""
    from .engine import rescore

    try:
        result = rescore(run_dir, samples, inception_weights, extractor)
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    for key, per_weights in result.items():
        if isinstance(per_weights, dict):
            click.echo(f"{key}: " + ", ".join(f"{w}={v:.4g}" for w, v in per_weights.items()))
    click.echo(
        f"floor: {result[[k for k in result if k.endswith('_floor')][0]]:.4g}  "
        f"({result['n_samples']} samples, step {result['step']})"
    )


@main.command(context_settings=CONTEXT)
@click.argument("sweep_name", metavar="SWEEP")
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    metavar="K",
    help="How many of the sweep's best configs to confirm.",
)
@click.option(
    "--seeds",
    "n_seeds",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    metavar="N",
    help="Seeds 0..N-1 for each of them (seeds already recorded are not re-run).",
)
@click.option(
    "--metric",
    default="fid_digits",
    show_default=True,
    metavar="METRIC",
    help="Ranks the sweep's configs (lower is better; diverged = worst).",
)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Results store (default: runs/, or $STABENCH_STORE).",
)
@wandb_options
@click.pass_context
def confirm(
    ctx: click.Context,
    sweep_name: str,
    top: int,
    n_seeds: int,
    metric: str,
    store_dir: Path | None,
    wandb_mode: str | None,
    wandb_project: str,
    wandb_entity: str | None,
) -> None:
    """Re-run the TOP best configs of SWEEP with more seeds, so the leaderboard can give CIs."""
    from .search import confirm as run_confirm
    from .store import DEFAULT_STORE, Store

    try:
        store = Store(store_dir or DEFAULT_STORE)
        if not any(True for _ in store.records(sweep=sweep_name)):
            raise UserError(f"SWEEP: no records of sweep '{sweep_name}' in {store.root}")
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    try:
        records = run_confirm(
            store,
            sweep_name,
            metric,
            top,
            n_seeds,
            tracking=tracking_settings(wandb_mode, wandb_project, wandb_entity, store.root),
        )
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    click.echo(
        f"{len(records)} records for the top {top} configs of '{sweep_name}' "
        f"(run `stabench leaderboard --sweep {sweep_name}`)"
    )


@main.command(context_settings=CONTEXT)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="NAME",
    help="Run only these baselines (repeatable); default: every baselines/*.yaml.",
)
@click.option("--seeds", default="0,1,2", show_default=True, metavar="LIST", help="Comma-separated seeds.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a key in every baseline (e.g. steps=600 for a CPU-sized run).",
)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Results store (default: runs/, or $STABENCH_STORE).",
)
@click.option(
    "--backend",
    type=click.Choice(["optuna", "ray"]),
    default="optuna",
    show_default=True,
    help="optuna: one after another in this process; ray: as Ray Tune trials.",
)
@click.option("--address", default=None, metavar="ADDR", help="[ray] Cluster to join ('auto', ray://host:port).")
@click.option(
    "--cpus-per-trial",
    type=click.FloatRange(min=0, min_open=True),
    default=1,
    show_default=True,
    metavar="C",
    help="[ray] CPUs per trial.",
)
@click.option(
    "--gpus-per-trial",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar="G",
    help="[ray] GPUs per trial.",
)
@inception_option
@wandb_options
@click.pass_context
def baselines(
    ctx: click.Context,
    only: tuple[str, ...],
    seeds: str,
    overrides: tuple[str, ...],
    store_dir: Path | None,
    backend: str,
    address: str | None,
    cpus_per_trial: float,
    gpus_per_trial: float,
    wandb_mode: str | None,
    wandb_project: str,
    wandb_entity: str | None,
) -> None:
    """Run the named reference configs of baselines/ over several seeds.

    Records are tagged sweep=baselines and baseline=NAME; a (baseline, seed) already in the store is
    not run again, so an interrupted run continues where it stopped.
    """
    from .baselines import SWEEP, baseline_jobs, baseline_names, run_baselines_local
    from .store import DEFAULT_STORE, Store

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(UserError(f"--seeds: expected comma-separated integers like 0,1,2, got '{seeds}'"), ctx.obj["debug"])
    try:
        names = list(only) or baseline_names()
        jobs = baseline_jobs(names, seed_list, list(overrides))
        store = Store(store_dir or DEFAULT_STORE)
        if not address:
            from .data import check_available

            for workload in {c.workload for _, c in jobs}:
                check_available(workload)
        for _, c in jobs:
            check_scoring_inputs(c)
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    click.echo(f"{len(names)} baselines x {len(seed_list)} seeds = {len(jobs)} trials -> {store.root}")
    tracking = tracking_settings(wandb_mode, wandb_project, wandb_entity, store.root)
    if backend == "optuna":
        try:
            run_baselines_local(jobs, store, tracking=tracking)
        except UserError as err:
            _fail(err, ctx.obj["debug"])
    else:
        from .config import config_hash
        from .ray_backend import run_ray_jobs

        todo = [
            (n, c, {"sweep": SWEEP, "baseline": n, "backend": "ray"})
            for n, c in jobs
            if store.find(config_hash(c), c.seed, sweep=SWEEP, baseline=n) is None
        ]
        try:
            run_ray_jobs(
                todo,
                store,
                address=address,
                cpus_per_trial=cpus_per_trial,
                gpus_per_trial=gpus_per_trial,
                tracking=tracking,
            )
        except UserError as err:
            _fail(err, ctx.obj["debug"])


@main.command(context_settings=CONTEXT)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help="Results store to read (default: runs/, or $STABENCH_STORE).",
)
@click.option(
    "--sweep",
    "sweeps",
    multiple=True,
    metavar="NAME",
    help="Only records of these sweeps (repeatable); the baseline's records are always included.",
)
@click.option(
    "--baseline",
    default="ddpm",
    show_default=True,
    metavar="NAME",
    help="Baseline for deltas, steps-to-target and speedup ('' for none).",
)
@click.option(
    "--metric",
    default="fid_digits",
    show_default=True,
    metavar="METRIC",
    help="Quality metric (lower is better): fid_digits, kid_digits, fid, kid, best_probe_loss, ...",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/leaderboard"),
    show_default=True,
    metavar="DIR",
    help="Writes leaderboard.md, .csv, .html and PNG plots here (results/ holds the committed one).",
)
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option(
    "--wandb",
    "wandb_mode",
    type=click.Choice(["online", "offline"]),
    default=None,
    help="Also log the table and the files to W&B (job_type leaderboard, in the sweep's group).",
)
@click.option("--wandb-project", default="stabench", show_default=True, metavar="NAME", help="W&B project.")
@click.option("--wandb-entity", default=None, metavar="ENTITY", help="W&B entity (team or user).")
@click.pass_context
def leaderboard(
    ctx: click.Context,
    store_dir: Path | None,
    sweeps: tuple[str, ...],
    baseline: str,
    metric: str,
    out: Path,
    no_plots: bool,
    wandb_mode: str | None,
    wandb_project: str,
    wandb_entity: str | None,
) -> None:
    """Regenerate the leaderboard from the results store (same store in -> byte-identical files out)."""
    from .leaderboard import write_leaderboard
    from .store import DEFAULT_STORE, Store

    try:
        store = Store(store_dir or DEFAULT_STORE)
        records = [
            r
            for r in store.records()
            if not sweeps
            or (r.get("tags") or {}).get("sweep") in sweeps
            or (baseline and (r.get("tags") or {}).get("baseline") == baseline)
        ]
        if not records:
            raise UserError(f"--store: no records in {store.root}" + (f" for sweeps {list(sweeps)}" if sweeps else ""))
        have = {k for r in records for k in (r.get("metrics") or {})}
        if metric not in have:
            raise UserError(f"--metric: no record has '{metric}'; available: {', '.join(sorted(have))}")
    except UserError as err:
        _fail(err, ctx.obj["debug"])
    lb = write_leaderboard(records, out, metric, baseline or None, plots=not no_plots, studies=optuna_studies(sweeps))
    click.echo(f"leaderboard of {len(lb.rows)} configs ({len(records)} records) -> {out}/leaderboard.md")
    for r in lb.rows[:5]:
        click.echo(f"  {r['rank']}. {r['config']}: {metric} {r['q_mean']:.4g} (n={r['n']}, diverged {r['diverged']})")
    if wandb_mode:
        from .tracking import log_leaderboard

        log_leaderboard(
            tracking_settings(wandb_mode, wandb_project, wandb_entity, store.root), out, group=",".join(sweeps) or "all"
        )


def optuna_studies(sweeps: tuple[str, ...]) -> list:
    """The Optuna studies of these sweeps that live in the default journal files (for knob importance)."""
    from .search import DEFAULT_STORAGE_DIR

    studies = []
    for name in sweeps:
        path = DEFAULT_STORAGE_DIR / f"{name}.journal"
        if path.is_file():
            import optuna
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            studies.append(optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path)))))
    return studies


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

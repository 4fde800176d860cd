"""The `stabench` command line: parses options and calls the library, nothing more.

Every command runs inside one error boundary (`options.Command`): bad input raises `UserError` in the
library, and the CLI prints it naming the flag, with exit code 2, before any training starts.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import UserError
from . import output
from .options import (
    CONTEXT,
    Group,
    RegistryChoice,
    check_sweeps,
    deprecated_alias,
    gpus_option,
    inception_option,
    inception_override,
    open_store,
    ray_options,
    store_option,
    store_tags,
    sweep_baseline,
    tracking,
    wandb_options,
    workers_count,
    writable_dir,
)


@click.group(cls=Group, context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show full tracebacks for user errors too.")
@click.version_option(package_name="stabench")
def main(debug: bool) -> None:
    """stabench: measure which training-stabilization settings make diffusion models train well.

    A trial trains a real diffusion model from a YAML config and a seed and records loss, gradient-norm
    and feature-norm statistics (see `stabench train --help`). Config keys are listed by `stabench keys`.
    """


@main.command(context_settings=CONTEXT)
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key; repeatable. KEY is a dotted path (optim.lr) or a unique leaf "
              "name (lr, steps). VALUE is parsed as YAML: 1e-3, null, [0.999,0.9999].")  # fmt: skip
@click.option("--seed", type=click.IntRange(min=0), default=None, metavar="N", help="Trial seed (overrides `seed`).")
@click.option("--device", default=None, metavar="DEVICE", help="auto (default: CUDA when available), cpu, cuda:N.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"), show_default=True,
              metavar="DIR", help="Each trial writes DIR/<run_id>/record.json and more.")  # fmt: skip
@click.option("--checkpoint", is_flag=True, help="Also save the final weights, EMA and optimizer state.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None, metavar="K",
              help="Save a resumable checkpoint (atomically) every K steps.")  # fmt: skip
@click.option("--resume", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              metavar="RUN_DIR", help="Continue an interrupted trial from RUN_DIR/checkpoint.pt (CONFIG defaults "
              "to RUN_DIR/config.yaml); the result equals an uninterrupted run.")  # fmt: skip
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--dry-run", is_flag=True, help="Validate and print the resolved config, then exit.")
@inception_option
@wandb_options
def train(config, overrides, seed, device, out, checkpoint, checkpoint_every, resume, quiet, dry_run, inception_weights,
          **wandb):  # fmt: skip
    """Train one trial from CONFIG (a YAML file) and write its record.

    \b
    Example:
      stabench train baselines/ddpm.yaml --set steps=200 --set lsc.mode=constant --set kappa=0.7
    """
    from ..config import config_hash, dump_yaml, load_config
    from ..engine.preflight import check_inputs

    if config is None and resume is None:
        raise UserError("give a config file (or --resume RUN_DIR)", key="config")
    extra = [f"{k}={v}" for k, v in (("seed", seed), ("device", device), ("checkpoint_every", checkpoint_every)) if v]
    cfg = load_config(config or resume / "config.yaml", [*inception_override(inception_weights), *overrides, *extra])
    if not dry_run:
        check_inputs([cfg])
    if dry_run:
        click.echo(dump_yaml(cfg) + f"# config_hash: {config_hash(cfg)}")
        return
    from ..engine import run_trial
    from ..records.record import Status

    writable_dir(out, "out")
    record = run_trial(cfg, out, progress=not quiet, save_checkpoint=checkpoint, resume_dir=resume,
                       tracking=tracking(**wandb, root=out))  # fmt: skip
    output.trial_summary(record)
    if record["status"] == Status.FAILED:
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@click.argument("space_file", metavar="SPACE.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--backend", type=RegistryChoice("stabench.sweep.backend:BACKENDS"), default="optuna",
              show_default=True,
              help="optuna: in-process or --workers local processes; ray: Ray Tune, local or a cluster.")  # fmt: skip
@click.option("--study", default=None, metavar="NAME", help="Study/sweep name (default: the space's name).")
@click.option("--n-trials", type=click.IntRange(min=1), default=None, metavar="N",
              help="Finished trials wanted in the study (default: the space's budget.trials).")  # fmt: skip
@store_option()
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep: retry trials left running by a killed "
              "process (optuna) or restore the Ray Tune experiment (ray).")  # fmt: skip
@click.option("--take-over", multiple=True, metavar="HOST|ALL",
              help="[optuna] HOST is down: fail its RUNNING trials of this study and retry them here, continuing "
              "their seeds from their last checkpoints (repeatable; ALL: every host, and untagged trials). "
              "Without it another machine's trials are never failed on a journal.")  # fmt: skip
@click.option("--with-baselines", is_flag=True, help="Enqueue the baselines/*.yaml points of this space first.")
@click.option("--max-failures", type=click.IntRange(min=0), default=3, show_default=True, metavar="N",
              help="Failed trials tolerated before the sweep stops, and dead workers replaced (optuna); "
              "restarts per trial (ray).")  # fmt: skip
@click.option("--study-storage", default=None, metavar="URL_OR_FILE",
              help="Optuna study storage: a journal file or an RDB URL, e.g. "
              "postgresql+psycopg2://user:pw@host/db. Default: <store>/optuna/<study>.journal (both "
              "backends).")  # fmt: skip
@deprecated_alias("--storage", "study_storage")
@click.option("--workers", default="auto", show_default=True, metavar="K|auto", callback=workers_count,
              help="[optuna] Local worker processes sharing the study; auto: one per GPU, else one per CPU core "
              "(each trial then uses one core: measured faster than one trial on every core), at most the "
              "trials wanted; 1 runs the trials in this process.")  # fmt: skip
@gpus_option
@ray_options
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, metavar="K",
              help="[ray] Trials running at once (default: as many as resources allow).")  # fmt: skip
@click.option("--ray-dir", default=None, metavar="DIR_OR_URI",
              help="[ray] Where Ray Tune keeps experiment state (default <store>/ray).")  # fmt: skip
@deprecated_alias("--storage-path", "ray_dir")
@inception_option
@wandb_options
def sweep(space_file, backend, study, n_trials, store, resume, take_over, with_baselines, max_failures, study_storage,
          workers, gpus, address, cpus_per_trial, gpus_per_trial, ship_code, max_concurrent, ray_dir, inception_weights,
          **wandb):  # fmt: skip
    """Search the knobs of SPACE.yaml and record every trial in the store.

    Re-running the same command continues the same study. The Optuna storage opens in
    optuna-dashboard: `optuna-dashboard runs/optuna/<study>.journal` (the journal lives in the store).

    \b
    Examples:
      stabench sweep search_spaces/quickstart.yaml
      stabench sweep search_spaces/lsc.yaml --workers 2
      stabench sweep search_spaces/cifar10-full.yaml --backend ray --address auto --gpus-per-trial 0.25
    """
    from ..engine.preflight import check_inputs
    from ..sweep import SweepSettings, named_points, run_sweep
    from ..sweep.baselines import reference_configs
    from ..sweep.space import load_space, trial_config

    if not space_file.is_file():
        raise UserError(f"{space_file}: search space file not found")
    space, store = load_space(space_file), open_store(store, writable=True)
    if inception_weights:  # still the environment here: in the space's base it would change the study's fingerprint
        os.environ["STABENCH_INCEPTION_WEIGHTS"] = str(Path(inception_weights).absolute())
    points = named_points(space, reference_configs()) if with_baselines else {}
    from ..sweep.ray_cluster import cluster_address  # --address, else $RAY_ADDRESS (set by `ray job submit`)

    on_cluster = cluster_address(address) if backend == "ray" else address
    check_inputs([trial_config(space, {}, space.seeds[0])], data=not on_cluster)  # on a cluster the data is remote
    settings = SweepSettings(study or space.name, n_trials or space.budget.trials, resume, max_failures, points,
                             study_storage, tracking(**wandb, root=store.root), frozenset(take_over))  # fmt: skip
    objectives = [o.metric + " " + o.direction for o in space.objectives]
    click.echo(f"sweep '{settings.study}' ({backend}): {len(space.space)} knobs, seeds {space.seeds}, "
               f"objectives {objectives}, store {store.root}")  # fmt: skip
    options = dict(workers=workers, gpus=gpus) if backend == "optuna" else dict(
        address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, ship_code=ship_code,
        max_concurrent=max_concurrent, ray_dir=ray_dir)  # fmt: skip
    output.sweep_summary(run_sweep(backend, space, store, settings, **options), space)


@main.command(context_settings=CONTEXT)
@click.argument("run_dir", metavar="RUN_DIR_OR_CHECKPOINT", type=click.Path(exists=True, path_type=Path))
@click.option("--samples", type=click.IntRange(min=2), default=None, metavar="N",
              help="Samples per weight set (default: the trial's eval.samples).")  # fmt: skip
@click.option("--extractor", type=RegistryChoice("stabench.scoring.extractors:EXTRACTORS"), default=None,
              help="Feature extractor (default: the trial's eval.extractor).")  # fmt: skip
@click.option("--inception-weights", default=None, metavar="PATH",
              help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
              "(or $STABENCH_INCEPTION_WEIGHTS).")  # fmt: skip
def score(run_dir, samples, extractor, inception_weights):
    """Re-score a finished trial (raw and EMA weights) from its checkpoint; writes score-*.json beside it."""
    from ..engine import rescore

    output.rescore_summary(rescore(run_dir, samples, inception_weights, extractor))


@main.command(context_settings=CONTEXT)
@click.argument("sweep_name", metavar="SWEEP")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, metavar="K",
              help="How many of the sweep's best configs to confirm.")  # fmt: skip
@click.option("--n-seeds", type=click.IntRange(min=1), default=3, show_default=True, metavar="N",
              help="Seeds 0..N-1 for each of them (seeds already recorded are not re-run).")  # fmt: skip
@deprecated_alias("--seeds", "n_seeds", type=click.IntRange(min=1))
@click.option("--metric", default="fid_digits", show_default=True, metavar="METRIC",
              help="Ranks the sweep's configs in the metric's direction (diverged = worst).")  # fmt: skip
@store_option()
@wandb_options
def confirm(sweep_name, top, n_seeds, metric, store, **wandb):
    """Re-run the TOP best configs of SWEEP with more seeds, so the leaderboard can give CIs."""
    from ..records.metrics import known_metric
    from ..sweep import confirm as run_confirm

    known_metric(metric)
    store = open_store(store, writable=True, existing=True)
    check_sweeps([sweep_name], store_tags(store), store.root, "sweep_name")
    records = run_confirm(store, sweep_name, metric, top, n_seeds, tracking=tracking(**wandb, root=store.root))
    click.echo(f"{len(records)} records for the top {top} configs of '{sweep_name}' "
               f"(run `stabench leaderboard --sweep {sweep_name}`)")  # fmt: skip


@main.command(context_settings=CONTEXT)
@click.option("--n-pairs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Pairs per check instead of the pre-registered design's (docs/validation.md: collapse 12, clip 10, "
              "ScaleLong 10, quality 10); a run with another n is exploratory, not the confirmatory one.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="Trials at once, one per core (default: every core this process may use; more than one runs "
              "them as Ray Tune trials on this machine).")  # fmt: skip
@click.option("--store", type=click.Path(path_type=Path), default=Path("results/validation/confirmatory/store"),
              show_default=True, metavar="DIR", help="Record store of the validation trials (reused).")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results/validation/confirmatory"), show_default=True, metavar="DIR",
              help="Where README.md, validation.json and one leaderboard per regime are written.")  # fmt: skip
@click.option("--fast", is_flag=True, help="Tiny sizes (seconds per trial): checks the pipeline, not the verdicts.")
def validate(n_pairs, workers, store, out, fast):
    """Known-effect validation: positive controls, negative controls, ScaleLong's and published directions.

    Runs the pre-registered design of docs/validation.md: every check pairs two arms by seed and reports an
    exact test (McNemar for a binary outcome, the sign-flip permutation test otherwise) with the Student-t 95%
    interval beside it, and a verdict from the Holm-adjusted p over the checks; the negative controls report the
    test's false-positive rate on sham arms. Trials are stored records, so an interrupted validation resumes.
    """
    from ..sweep.workers import usable_cores
    from ..validate import validate as run_validation

    writable_dir(store, "store"), writable_dir(out, "out")
    run_validation(store, out, n_pairs=n_pairs, fast=fast, workers=workers or usable_cores(), say=click.echo)
    click.echo(f"written: {out / 'README.md'}, {out / 'validation.json'}")


def _local_backend(ctx, param, value):
    if value == "optuna":  # the old name: baselines never ran Optuna
        click.echo("DeprecationWarning: --backend optuna is now called --backend local.", err=True)
        return "local"
    return value


@main.command(context_settings=CONTEXT)
@click.option("--only", multiple=True, metavar="NAME", help="Run only these baselines (repeatable; default: all).")
@click.option("--seeds", default="0,1,2,3,4", show_default=True, metavar="LIST",
              help="Comma-separated seeds (5 by default: the leaderboard flags fewer).")  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key in every baseline (e.g. steps=600 for a CPU-sized run).")  # fmt: skip
@store_option()
@click.option("--backend", type=click.Choice(["local", "ray", "optuna"]), default="local", show_default=True,
              callback=_local_backend, help="local: one after another in this process; ray: as Ray Tune trials "
              "('optuna' is the deprecated name of local).")  # fmt: skip
@ray_options
@inception_option
@wandb_options
def baselines(only, seeds, overrides, store, backend, address, cpus_per_trial, gpus_per_trial, ship_code,
              inception_weights, **wandb):  # fmt: skip
    """Run the named reference configs of baselines/ over several seeds.

    Records are tagged sweep=baselines and baseline=NAME; a (baseline, seed) already in the store is
    not run again, so an interrupted run continues where it stopped.
    """
    from ..engine.preflight import check_inputs
    from ..sweep.baselines import baseline_jobs, baseline_names, run_baselines

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"expected comma-separated integers like 0,1,2, got '{seeds}'", key="seeds") from None
    names = list(only) or baseline_names()
    if not seed_list:
        raise UserError(f"no seeds in '{seeds}'; give comma-separated integers like 0,1,2", key="seeds")
    jobs = baseline_jobs(names, seed_list, [*inception_override(inception_weights), *overrides])
    store = open_store(store, writable=True)
    check_inputs([c for _, c in jobs], data=not address)
    click.echo(f"{len(names)} baselines x {len(seed_list)} seeds = {len(jobs)} trials -> {store.root}")
    ray = (
        dict(address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, ship_code=ship_code)
        if backend == "ray"
        else {}
    )
    run_baselines(jobs, store, backend, tracking(**wandb, root=store.root), **ray)


@main.command(context_settings=CONTEXT)
@store_option("Results store to read (default: runs/, or $STABENCH_STORE).")
@click.option("--sweep", "sweeps", multiple=True, metavar="NAME",
              help="Only records of these sweeps (repeatable); the baseline's records are always "
              "included.")  # fmt: skip
@click.option("--baseline", default="ddpm", show_default=True, metavar="NAME",
              help="Baseline for deltas, steps-to-target and speedup ('' for none). A name the store has no "
              "`stabench baselines` records of means its point in the one --sweep that ran it (ddpm@SWEEP, from "
              "`sweep --with-baselines`).")  # fmt: skip
@click.option("--metric", default="fid_digits", show_default=True, metavar="METRIC",
              help="Ranks the configs, in the metric's own direction: any numeric metric of "
              "docs/metrics.md (fid_digits, kid_digits, fid, kid, best_probe_loss, instability, ...).")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Writes leaderboard.md, .csv, .parquet, .tex, .html and PNG plots here (default: "
              "<store>/leaderboard; results/ holds the committed ones).")  # fmt: skip
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
@click.option("--wandb", "wandb_mode", type=click.Choice(["online", "offline"]), default=None,
              help="Also log the table and the files to W&B (job_type leaderboard, in the sweep's "
              "group).")  # fmt: skip
@click.option("--wandb-project", default=None, metavar="NAME", help="W&B project ($WANDB_PROJECT, else stabench).")
@click.option("--wandb-entity", default=None, metavar="ENTITY", help="W&B entity (default: $WANDB_ENTITY).")
def leaderboard(store, sweeps, baseline, metric, out, no_plots, **wandb):
    """Regenerate the leaderboard from the results store (same store in -> byte-identical files out)."""
    from ..leaderboard import select_records, write_leaderboard
    from ..records.metrics import known_metric
    from ..sweep.study import load_journal_study

    known_metric(metric)
    store = open_store(store, existing=True)
    tags = store_tags(store)
    check_sweeps(sweeps, tags, store.root, "sweeps")
    baseline = sweep_baseline(baseline, sweeps, tags)
    records = select_records(store, sweeps, baseline or None, metric)
    out = writable_dir(out or store.root / "leaderboard", "out")
    studies = [s for s in (load_journal_study(name, store.root) for name in sweeps) if s is not None]
    lb = write_leaderboard(records, out, metric, baseline or None, plots=not no_plots, studies=studies)
    output.leaderboard_top(lb, metric, len(records), out)
    if wandb["wandb_mode"]:
        from ..records.tracking import log_leaderboard

        record_dirs = [store.root / r["run_id"] for r in records]
        arguments = dict(store=str(store.root), sweeps=list(sweeps), baseline=baseline, out=str(out),
                         plots=not no_plots, records=len(records), configs=len(lb.rows))  # fmt: skip
        group = ",".join(sweeps) or "all"
        log_leaderboard(tracking(**wandb, root=store.root), out, group, record_dirs, metric=metric, arguments=arguments)


@main.command(context_settings=CONTEXT)
def keys() -> None:
    """List every config key with its default and allowed values."""
    from ..config import TrialConfig, allowed_values, leaf_keys

    defaults = TrialConfig().model_dump(mode="json")
    for key in leaf_keys():
        value = defaults
        for part in key.split("."):
            value = value[part]
        click.echo(f"{key:32s} default {value!r:24s} {allowed_values(key)}")


@main.command(context_settings=CONTEXT)
@click.argument("store", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--shared", is_flag=True, help="Check the permissions a shared store needs (group write on folders, "
              "journals and locks) even if the store does not look shared.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(store, shared, as_json):
    """Check a store without changing it: records readers skip, run folders without a record, checkpoints that
    fail validation, damaged owner files and journals, unreadable files and modes that lock teammates out.
    Exit code 0 when it finds no problem, 1 when it does."""
    import json

    from ..sweep.doctor import examine, render

    report = examine(store, shared=True if shared else None)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for line in render(report):
            click.echo(line)
    sys.exit(1 if report.problems else 0)


from .reproduce import reproduce  # noqa: E402 (a command of its own module, registered here)

main.add_command(reproduce)

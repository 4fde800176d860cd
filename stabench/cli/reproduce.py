"""`stabench reproduce scalelong`: the paper's table run through the baselines machinery, and the report beside it.

The ten reference configs `baselines/scalelong-cifar10-d{12,16}[-mode].yaml` (ScaleLong's scaling modes 0-4 at
depths 12 and 16) run over seeds 0..N-1 as `stabench baselines` runs them (locally, or as Ray Tune trials with
--address), so a rerun skips what the store already holds; then `stabench.leaderboard.paper` writes the report.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserError
from ..files import atomic_write_text
from .options import CONTEXT, inception_option, inception_override, open_store, ray_options, store_option, writable_dir

PAPER_DEPTHS = (12, 16)
# ScaleLong's modes 0-4 as the suffixes of their reference configs (mode 0, the original skips: no suffix).
MODE_SUFFIXES = ("", "-inv-sqrt2", "-cs", "-ls", "-ls-per-skip")
# --smoke: the same presets, narrowed to a CPU-sized run on 16x16 digits (depth and heads stay ScaleLong's depth,
# the width shrinks), scored with the digits FID; a few steps, so every paper number is "not reached".
SMOKE_STEPS = 4
SMOKE = (
    "workload.dataset=digits",
    "workload.resolution=16",
    "workload.width=32",
    "workload.heads=2",
    "augment.hflip=0",  # a flipped digit is another digit
    "optim.batch_size=8",
    "optim.warmup_steps=2",
    "eval.every=2",
    "eval.probe_every=2",
    "eval.probe_size=8",
    "eval.samples=8",
    "eval.sampler_steps=2",
    "eval.chunk=8",
    "eval.grid=0",
    "eval.extractor=auto",
    "engine.precision=fp32",
    "engine.compile=false",
    "checkpoint_every=0",
    "device=cpu",
)


def reference_names(depths: list[int]) -> list[str]:
    """The reference configs of the paper's table at these depths."""
    return [f"scalelong-cifar10-d{d}{suffix}" for d in depths for suffix in MODE_SUFFIXES]


def parse_depths(ctx, param, value: str) -> list[int]:
    try:
        depths = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        depths = []
    if not depths or not set(depths) <= set(PAPER_DEPTHS):
        raise click.BadParameter(f"'{value}': comma-separated depths among {', '.join(map(str, PAPER_DEPTHS))}")
    return depths


def budget_overrides(steps: int | None, smoke: bool) -> list[str]:
    """The run's length: --budget-steps, else the smoke's few steps, else the recipe's 500k."""
    steps = steps or (SMOKE_STEPS if smoke else None)
    return [f"optim.steps={steps}"] if steps else []


@click.command(context_settings=CONTEXT)
@click.argument("paper", type=click.Choice(["scalelong"]))
@click.option("--depth", "depths", default="12,16", show_default=True, metavar="LIST", callback=parse_depths,
              help="U-ViT depths of the table (the paper: 12 and 16).")  # fmt: skip
@click.option("--budget-steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Training steps per trial (default: the recipe's 500,000; the smoke's 4). Paper numbers past "
              "the budget are reported as not reached.")  # fmt: skip
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=3, show_default=True, metavar="N",
              help="Seeds 0..N-1 of every config.")  # fmt: skip
@click.option("--smoke", is_flag=True, help="The same presets at tiny width on 16x16 digits, a few steps on the CPU: "
              "checks the pipeline and the report, not the paper.")  # fmt: skip
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key in every config (e.g. workload.root=/data/cifar10).")  # fmt: skip
@click.option("--fid-target", type=click.FloatRange(min=0, min_open=True), default=None, metavar="FID",
              help="FID target of the steps-to-target column (default: U-ViT-S/2's reported 3.11).")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Where scalelong.md is written (default: <store>/reproduce).")  # fmt: skip
@store_option()
@ray_options
@inception_option
def reproduce(paper, depths, budget_steps, n_seeds, smoke, overrides, fid_target, out, store, address, cpus_per_trial,
              gpus_per_trial, ship_code, inception_weights):  # fmt: skip
    """Run a paper's table with this suite and write a report that sets our numbers beside the paper's.

    \b
    scalelong: ScaleLong's five long-skip scaling modes at U-ViT depths 12 and 16 on CIFAR-10
    (baselines/scalelong-cifar10-d*.yaml), N seeds each; docs/scalelong.md.

    \b
    Examples:
      stabench reproduce scalelong --smoke                      # CPU, under a minute
      stabench reproduce scalelong --address auto --seeds 3 --set workload.root=/data/cifar10 \\
          --inception-weights /data/weights-inception-2015-12-05-6726825d.pth
    """
    from ..engine.preflight import check_inputs
    from ..leaderboard.paper import PAPER_FID_TARGET, scalelong_report
    from ..sweep.baselines import SWEEP, baseline_jobs, run_baselines

    names = reference_names(depths)
    if smoke:  # a model this small runs fastest on one thread; more only contend with whatever else runs
        import torch

        torch.set_num_threads(1)
    settings = [*(SMOKE if smoke else ()), *budget_overrides(budget_steps, smoke)]
    jobs = baseline_jobs(names, list(range(n_seeds)), [*settings, *inception_override(inception_weights), *overrides])
    store = open_store(store, writable=True)
    out = writable_dir(out or Path(store.root) / "reproduce", "out")
    check_inputs([c for _, c in jobs], data=not address)
    click.echo(f"{paper}: {len(names)} configs x {n_seeds} seeds = {len(jobs)} trials -> {store.root}")
    ray = dict(address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial, ship_code=ship_code)
    run_baselines(jobs, store, "ray" if address else "local", log=click.echo, **(ray if address else {}))
    records = [store_record(store, SWEEP, name, cfg) for name, cfg in jobs]
    missing = [f"{name} seed {cfg.seed}" for (name, cfg), r in zip(jobs, records) if r is None]
    if missing:
        raise UserError(f"no finished record for {', '.join(missing)} in {store.root}", key="store")
    metric = "fid_digits" if jobs[0][1].extractor == "digits" else "fid"
    note = "**Smoke run** (tiny width, 16x16 digits, digits FID): checks the pipeline, not the paper." if smoke else ""
    text = scalelong_report([r for r in records if r], depths, metric, fid_target or PAPER_FID_TARGET,
                            title_note=note)  # fmt: skip
    path = out / "scalelong.md"
    atomic_write_text(path, text)
    click.echo(f"written: {path}")


def store_record(store, sweep: str, name: str, cfg) -> dict | None:
    """The finished record of one reference config and seed."""
    from ..config import config_hash

    return store.find(config_hash(cfg), cfg.seed, sweep=sweep, baseline=name)

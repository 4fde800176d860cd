"""Weights & Biases tracking: every trial a W&B run, never able to break or stall a sweep.

Mode: `--wandb online|offline|disabled`, else $WANDB_MODE, else online when an API key is available
($WANDB_API_KEY or a wandb.ai entry in ~/.netrc) and offline otherwise. Offline runs land in
`<dir>/wandb/offline-run-*` (dir: the results store) and are uploaded later with `wandb sync`.
Any W&B error (no network, bad key, service down, init timeout) becomes one warning; the trial goes on
with tracking disabled, and the results store stays the source of truth. W&B is imported only when used.
"""

from __future__ import annotations

import hashlib
import json
import netrc
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import METRICS
from .record import Status, best, label, metrics_of, tags_of

MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class TrackingSettings:
    """How trials are logged to W&B: mode, project, entity and where offline runs go."""

    mode: str | None = None  # None: decide from $WANDB_MODE and the presence of an API key
    project: str = field(default_factory=lambda: os.environ.get("WANDB_PROJECT") or "stabench")
    entity: str | None = field(default_factory=lambda: os.environ.get("WANDB_ENTITY"))
    dir: str | None = None  # offline runs go to <dir>/wandb/
    init_timeout_s: float = 30.0
    finish_timeout_s: float = 120.0  # a stalled upload must not hold the next trial

    def resolved_mode(self) -> str:
        """The mode to use: the setting, else $WANDB_MODE, else online with an API key and offline without."""
        mode = self.mode or os.environ.get("WANDB_MODE")
        if mode in ("dryrun",):
            mode = "offline"
        if mode in MODES:
            return mode
        return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    """Is a W&B API key available ($WANDB_API_KEY or ~/.netrc)?"""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class Tracker:
    """No-op tracker; `WandbTracker` overrides these. Every call is safe to make."""

    def log_steps(self, first_step: int, loss: list, grad_norm: list, clipped: list, lr: list) -> None:
        """Per-step training values from `first_step` on."""

    def log_probe(self, step: int, probe: dict) -> None:
        """One probe-batch reading (weighting-free loss, gradient and feature norms)."""

    def log_eval(self, entry: dict, samples: dict | None = None) -> None:
        """One evaluation entry (per weight set), with the samples each weight set drew (weight set -> images in
        [-1, 1]) when the trial scored them."""

    def finish(self, record: dict) -> None:
        """The finished record: summary and end of the run."""


def baseline_name(tags: dict) -> str | None:
    """The baseline a record runs: a reference config (`stabench baselines`, stored as `baseline`) or its point in a
    sweep's space (`sweep --with-baselines`, stored as `baseline_point`); None for any other trial."""
    return tags.get("baseline") or tags.get("baseline_point")


def run_tags(config: dict, tags: dict) -> list[str]:
    """The knob values that matter for filtering in the UI; a baseline's runs also get `baseline` and its name."""
    out = [
        f"lsc={config['lsc']['mode']}",
        f"weighting={config['timestep_weighting']['kind']}",
        f"schedule={config['diffusion']['schedule']}",
        f"backbone={config['workload']['backbone']}",
    ]
    if baseline_name(tags):
        out += ["baseline", f"baseline={baseline_name(tags)}"]
    return out


def job_type(tags: dict) -> str:
    """A trial run's W&B job type: the tagged one (`confirm`), else `baseline` for a baseline's run, else `trial`."""
    return tags.get("job_type") or ("baseline" if baseline_name(tags) else "trial")


def wandb_attrs(record: dict) -> dict[str, str]:
    """Where a trial's W&B run is, for another tool to link to (an Optuna trial's user attrs): `wandb_id`,
    `wandb_project` and, for a run that is online, `wandb_url` (an offline run has a URL only after `wandb sync`).
    Empty when the trial logged no W&B run."""
    run = record.get("wandb") or {}
    attrs = {"wandb_id": run.get("id"), "wandb_project": run.get("project"), "wandb_url": run.get("url")}
    return {k: v for k, v in attrs.items() if v}


def wandb_run_id(record: dict) -> str:
    """The W&B run id of a trial: one per (sweep, config, seed), so a resumed, retried or restarted trial continues
    its run; a trial outside any sweep keeps its own (its run directory's) id. Only [0-9a-f]: W&B forbids /\\#?%:."""
    sweep = tags_of(record).get("sweep")
    key = f"{sweep}/{record['config_hash']}/{record['seed']}" if sweep else record["run_id"]
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class WandbTracker(Tracker):
    """One W&B run per trial (its id and URL go into the record). If going online fails, the run falls back to
    offline with one warning; any other failing W&B call warns once and turns the tracker into a no-op."""

    def __init__(self, settings: TrackingSettings, record: dict):
        self.run = None
        self.grids: list[tuple[int, str, Any, dict]] = []  # (step, weight set, grid, its scores) for the table
        mode = settings.resolved_mode()
        try:
            self.run = self._init(settings, record, mode)
        except Exception as e:
            if mode != "online":
                self._disable(e)
            else:  # no network, bad key, service down: keep the curves locally, upload later with `wandb sync`
                warnings.warn(f"W&B online init failed ({type(e).__name__}: {e}); logging offline instead under "
                              f"{settings.dir or '.'}/wandb", RuntimeWarning, stacklevel=2)  # fmt: skip
                try:
                    self.run = self._init(settings, record, "offline")
                except Exception as e2:  # never let tracking break a trial
                    self._disable(e2)
        if self.run is not None:
            offline = self.run.offline  # an offline run has no URL until `wandb sync`
            record["wandb"] = {"id": self.run.id, "url": None if offline else self.run.url,
                               "project": settings.project, "mode": "offline" if offline else "online"}  # fmt: skip

    @staticmethod
    def _init(settings: TrackingSettings, record: dict, mode: str):
        import wandb

        tags = tags_of(record)
        directory = Path(settings.dir or ".")
        directory.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            id=wandb_run_id(record),
            resume="allow",
            group=tags.get("sweep") or "train",
            job_type=job_type(tags),
            name=f"{label(record)} s{record['seed']}",  # the leaderboard's name of the config
            tags=run_tags(record["config"], tags),
            config={
                **record["config"],
                "config_hash": record["config_hash"],
                "seed": record["seed"],
                "run_id": record["run_id"],
            },  # fmt: skip
            dir=str(directory),
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(
                init_timeout=settings.init_timeout_s,
                finish_timeout=settings.finish_timeout_s,
                console="off",
                silent=True,
            ),  # fmt: skip
        )
        for prefix in ("train", "probe", "eval", "samples"):  # every curve shares the training step as x-axis
            run.define_metric(f"{prefix}/*", step_metric="step")
        return run

    def _disable(self, error: Exception) -> None:
        warnings.warn(f"W&B disabled for this trial: {type(error).__name__}: {error}", RuntimeWarning, stacklevel=3)
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:
                pass

    def _log(self, data: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log(data)
        except Exception as e:
            self._disable(e)

    def log_steps(self, first_step, loss, grad_norm, clipped, lr):
        """Log each step as train/* at its step."""
        for i, (l, g, c, r) in enumerate(zip(loss, grad_norm, clipped, lr)):
            self._log(
                {"step": first_step + i, "train/loss": l, "train/grad_norm": g, "train/clipped": int(c), "train/lr": r}
            )

    def log_probe(self, step, probe):
        """Log a probe reading as probe/*, one series per long skip."""
        data = {
            "step": step,
            "probe/loss": probe["probe_loss"],
            "probe/grad_norm": probe["probe_grad_norm"],
            "probe/decoder_norm": probe["decoder_norm"],
            "probe/skip_norm": probe["skip_norm"],
            "probe/encoder_norm": probe["encoder_norm"],
        }
        data.update({f"probe/skip_norm_{i + 1}": v for i, v in enumerate(probe["skip_norms"])})
        self._log(data)

    def log_eval(self, entry, samples=None):
        """Log an evaluation entry as eval/<metric>/<weight set>, and a grid of each weight set's samples as
        samples/<weight set> (kept for the samples table `finish` logs)."""
        data = {"step": entry["step"]}
        for metric, per_weights in entry.items():
            if isinstance(per_weights, dict):
                data.update({f"eval/{metric}/{w}": v for w, v in per_weights.items()})
        try:
            grids = {name: sample_grid(x) for name, x in (samples or {}).items() if len(x)}
        except Exception as e:  # a grid that cannot be drawn must not stop the curves
            self._disable(e)
            return
        for name, grid in grids.items():
            self.grids.append((entry["step"], name, grid, {k: v[name] for k, v in entry.items() if _has(v, name)}))
            data[f"samples/{name}"] = grid_image(grid, f"step {entry['step']}, {name}")
        self._log(data)

    def finish(self, record):
        """Write the summary (metrics, best/<metric>, status) and the sample grid, then finish the run."""
        if self.run is None:
            return
        try:
            m = metrics_of(record)
            # every registered metric under its own name (docs/metrics.md); nothing else is a summary metric
            self.run.summary.update({k: v for k, v in m.items() if k in METRICS and isinstance(v, int | float | str)})
            self.run.summary.update(best_of_evals(record))
            self.run.summary["status"] = str(record["status"])  # the value ("ok"), not the enum member
            if record.get("run_dir"):  # the stored record and its config, as this run's output
                self.run.log_artifact(record_artifact(Path(record["run_dir"])))
            final: dict = {"step": record.get("steps_completed") or 0}
            if record.get("samples_png"):  # the best weight set's grid, as saved beside the record
                final["samples/final"] = final_grid(Path(record["samples_png"]))
            if self.grids:
                final["samples/table"] = samples_table(self.grids)
            if len(final) > 1:
                self.run.log(final)
            self.run.finish(exit_code=0 if record["status"] != Status.FAILED else 1)
        except Exception as e:
            self._disable(e)
        self.run = None


GRID_SIDE = 8  # samples per grid row and column: 64 samples at most per evaluation point
READABLE_PX = 256  # small samples (8x8 digits) are enlarged, pixel for pixel, to at least this size


def _has(values: Any, name: str) -> bool:
    return isinstance(values, dict) and isinstance(values.get(name), int | float)


def sample_grid(samples) -> Any:
    """The first GRID_SIDE**2 samples (a tensor in [-1, 1], N x C x H x W) as one uint8 H x W x 3 array, each pixel
    enlarged to a square of whole pixels (nearest) so the grid is at least READABLE_PX wide."""
    import numpy as np
    from torchvision.utils import make_grid

    x = ((samples[: GRID_SIDE**2].float().clamp(-1, 1) + 1) / 2).nan_to_num(0.0)
    grid = make_grid(x, nrow=GRID_SIDE, padding=1, pad_value=1.0)  # 3 channels, also for grayscale samples
    scale = max(1, -(-READABLE_PX // min(grid.shape[-2:])))
    grid = grid.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    return np.ascontiguousarray((grid.permute(1, 2, 0) * 255).round().byte().numpy())


def grid_image(grid, caption: str):
    """A sample grid as a wandb.Image."""
    import wandb

    return wandb.Image(grid, caption=caption)


def final_grid(path: Path):
    """The trial's saved samples.png, enlarged like `sample_grid` (nearest) to a readable size."""
    from PIL import Image

    with Image.open(path) as png:
        img = png.convert("RGB")
    scale = max(1, -(-READABLE_PX // min(img.size)))
    return grid_image(img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST), "final")


def samples_table(grids: list[tuple[int, str, Any, dict]]):
    """One row per evaluation point and weight set: the step, the weight set, its scores and its sample grid."""
    import wandb

    scores = sorted({k for *_, values in grids for k in values})
    table = wandb.Table(columns=["step", "weights", *scores, "samples"])
    for step, name, grid, values in grids:
        table.add_data(step, name, *(values.get(k) for k in scores), grid_image(grid, f"step {step}, {name}"))
    return table


def best_of_evals(record: dict) -> dict[str, float]:
    """`best/<key>`: the best value any weight set reached at any evaluation (FID/KID, probe loss), best in the
    direction of the registered metric the evaluation key belongs to."""
    best_seen: dict[str, float] = {}
    for entry in record.get("evals") or []:
        for key, per_weights in entry.items():
            if not isinstance(per_weights, dict):
                continue
            values = [v for v in per_weights.values() if isinstance(v, int | float)]
            if f"best/{key}" in best_seen:
                values.append(best_seen[f"best/{key}"])
            if values:
                best_seen[f"best/{key}"] = best(values, EVAL_DIRECTIONS.get(key.removesuffix("_train"), "minimize"))
    return best_seen


# An evaluation entry's key -> the direction of the registered metric stored under it.
EVAL_DIRECTIONS = {m.eval_key: m.direction for m in METRICS.values() if m.eval_key}


def make_tracker(settings: TrackingSettings | None, record: dict) -> Tracker:
    """A W&B tracker for the record, or a no-op one when tracking is off."""
    if settings is None or settings.resolved_mode() == "disabled":
        return Tracker()
    return WandbTracker(settings, record)


def artifact_name(text: str) -> str:
    """An artifact name W&B accepts: letters, digits, '-', '_' and '.' (anything else becomes '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


def record_artifact(run_dir: Path):
    """A stored trial's `record.json` and `config.yaml` as a W&B artifact (type `record`). Built from the stored
    files alone, so the trial's run (which logs it) and a leaderboard run (which uses it) make the same artifact:
    same name and digest, one version, with the lineage trial run -> record -> leaderboard."""
    import wandb

    record = json.loads((run_dir / "record.json").read_text())
    artifact = wandb.Artifact(
        artifact_name(f"record-{record['run_id']}"),
        type="record",
        metadata={"config_hash": record["config_hash"], "seed": record["seed"], "sweep": tags_of(record).get("sweep")},
    )
    for name in ("record.json", "config.yaml"):
        if (run_dir / name).is_file():
            artifact.add_file(str(run_dir / name))
    return artifact


def log_leaderboard(
    settings: TrackingSettings,
    out_dir: Path,
    group: str,
    record_dirs: Sequence[Path] = (),
    *,
    metric: str | None = None,
    arguments: dict[str, Any] | None = None,
) -> None:
    """The leaderboard as a wandb.Table and the results files as an artifact, in a `leaderboard` run that uses
    the record artifact of every ranked record's run directory (lineage: trial runs -> records -> leaderboard).
    The run is named `leaderboard-<group>-<metric>` and configured with the leaderboard's `arguments`."""
    if settings.resolved_mode() == "disabled":
        return
    try:
        import polars as pl
        import wandb

        run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            group=group,
            job_type="leaderboard",
            name="-".join(["leaderboard", group, *([metric] if metric else [])]),
            config={**(arguments or {}), **({"metric": metric} if metric else {})},
            dir=str(settings.dir or "."),
            mode=settings.resolved_mode(),
            reinit="create_new",
            settings=wandb.Settings(init_timeout=settings.init_timeout_s, console="off", silent=True),
        )
        df = pl.read_parquet(out_dir / "leaderboard.parquet")  # typed columns: W&B can sort and plot them
        run.log({"leaderboard": wandb.Table(columns=df.columns, data=[list(r) for r in df.iter_rows()])})
        inputs = [record_artifact(Path(d)) for d in record_dirs]
        for record in inputs if not run.offline else ():  # wandb refuses use_artifact offline; metadata keeps it
            run.use_artifact(record)
        # a selection of several sweeps ("a,b") is renamed: artifact names take no ','
        artifact = wandb.Artifact(
            artifact_name("leaderboard-" + group),
            type="leaderboard",
            metadata={"records": [{"artifact": a.name, "digest": a.digest} for a in inputs]},
        )
        for path in sorted(out_dir.iterdir()):
            if path.suffix in (".md", ".csv", ".parquet", ".tex", ".html", ".png"):
                artifact.add_file(str(path))
        run.log_artifact(artifact)
        run.finish()
    except Exception as e:
        warnings.warn(f"W&B leaderboard upload skipped: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)

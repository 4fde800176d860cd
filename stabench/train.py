"""One trial: train a diffusion model from a config and a seed while measuring how stably it trains.

`run_trial` never raises for a training problem: divergence is a result (status `diverged`), any other
exception is recorded as status `failed` with its traceback tail. Only user errors (bad config, missing
data) raise, and they do so before the first step.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .config import TrialConfig, config_hash, dump_yaml
from .data import BatchStream, load_images
from .diffusion import Diffusion
from .ema import MultiEMA
from .errors import UserError
from .models import build_model, count_params
from .record import Status, atomic_torch_save, atomic_write_text, downsample, new_record, write_record
from .telemetry import DivergenceDetector, StepLog, feature_norms, summarize
from .tracking import TrackingSettings, make_tracker


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: '{name}' requested but CUDA is not available; allowed here: auto, cpu")
    return device


def stream_seed(seed: int, name: str) -> int:
    """Independent, reproducible seeds for the separate random streams of one trial."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings (1-D tensors, positional embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim <= 1 or "pos_embed" in name
        (no_decay if exempt and not decay_all else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimization_step(
    model: nn.Module,
    diffusion: Diffusion,
    optimizer: torch.optim.Optimizer,
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    clip_norm: float | None,
):
    """Forward, backward, global-norm clipping between backward and step, step.
    Returns (loss, pre-clip global grad norm) as tensors; the clipped grads stay in `.grad`."""
    loss = diffusion.loss(model, x0, t, noise)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    if clip_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)  # returns the pre-clip norm
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    optimizer.step()
    return loss, grad_norm


class Probe:
    """A fixed batch (images, timesteps, noise) drawn once from the trial seed."""

    def __init__(self, images: torch.Tensor, size: int, T: int, seed: int, device: torch.device):
        g = torch.Generator().manual_seed(stream_seed(seed, "probe"))
        idx = torch.randperm(len(images), generator=g)[:size]
        self.x0 = images[idx].to(device)
        self.t = torch.randint(0, T, (len(idx),), generator=g).to(device)
        self.noise = torch.randn(self.x0.shape, generator=g).to(device)

    @torch.no_grad()
    def measure(self, model: nn.Module, diffusion: Diffusion, features: bool = True) -> dict:
        """Unweighted eps-MSE (comparable across weightings) and feature norms, in eval mode."""
        was_training = model.training
        model.eval()
        mse, extra = diffusion.per_sample_mse(model, self.x0, self.t, self.noise, return_features=features)
        model.train(was_training)
        out = {"probe_loss": mse.mean().item()}
        if features:
            out.update(feature_norms(extra))
        return out


Reporter = Callable[[dict], bool]
CHECKPOINT = "checkpoint.pt"


class Trial:
    """One trial, steppable: `evals()` trains and yields each evaluation entry; `stop()` between two
    entries ends it as `pruned`. The record is complete (and written, with an `out_dir`) once the
    generator is exhausted. Search backends drive this; everyone else calls `run_trial`."""

    def __init__(
        self,
        cfg: TrialConfig,
        out_dir: str | Path | None = None,
        *,
        progress: bool = False,
        save_checkpoint: bool = False,
        tags: dict | None = None,
        tracking: TrackingSettings | None = None,
        resume_dir: str | Path | None = None,
        writer: Callable[[dict, Path], Any] = write_record,
    ):
        self.cfg, self.progress, self.save_checkpoint, self.tracking = cfg, progress, save_checkpoint, tracking
        self.writer = writer  # search backends pass Store.write_unique: a (config, seed) counted once
        self.device = resolve_device(cfg.device)
        self.images = load_images(cfg.workload, "train")  # user errors (missing data) surface here
        self.record = new_record(cfg, self.device)
        self.record["tags"] = dict(tags or {})
        self.run_dir = Path(out_dir) / self.record["run_id"] if out_dir is not None else None
        self.scorer = None
        if cfg.eval.samples > 0:  # FID/KID against the held-out split; a missing Inception file fails here
            from .scoring import ReferenceScorer

            self.scorer = ReferenceScorer(
                cfg.extractor,
                load_images(cfg.workload, "test"),
                cfg.workload.dataset,
                cfg.workload.resolution,
                "test",
                cfg.eval.inception_weights,
            )
        self.resume_state = None
        if resume_dir is not None:  # continue an interrupted trial: same run id, same directory
            self.resume_state = load_checkpoint(Path(resume_dir), cfg)
            self.record.update(self.resume_state["record_head"])
            self.run_dir = Path(resume_dir)
        self.stop_requested = False
        self.loop: LoopState | None = None  # set once training starts: a failed record keeps its step
        self._generator: Iterator[dict] | None = None

    @property
    def finished(self) -> bool:
        return self.record["status"] != Status.RUNNING

    def evals(self) -> Iterator[dict]:
        """Train; yield every evaluation entry; finish the record (failed if training raised)."""
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))
        started = time.perf_counter()
        self.tracker = make_tracker(self.tracking, self.record)
        try:
            result = yield from _train(self)
            self.record.update(result)
        except Exception as e:  # a failed trial is a result too; keep the reason
            self.record.update(
                status=Status.FAILED,
                steps_completed=self.loop.step if self.loop else 0,
                error={"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()[-4000:]},
            )
        self.record["wall_time_s"] = time.perf_counter() - started
        if self.run_dir is not None:
            self.record["run_dir"] = str(self.run_dir)
            self.writer(self.record, self.run_dir)  # the store first: W&B is a view of it
        self.tracker.finish(self.record)

    def next_eval(self) -> dict | None:
        """Advance to the next evaluation entry; None once the trial has finished."""
        if self._generator is None:
            self._generator = self.evals()
        return next(self._generator, None)

    def stop(self) -> dict:
        """End the trial now (status `pruned` if it had not finished) and return its record."""
        self.stop_requested = True
        while not self.finished:
            self.next_eval()
        return self.record


def load_checkpoint(run_dir: Path, cfg: TrialConfig) -> dict:
    path = run_dir / CHECKPOINT
    if (run_dir / "record.json").exists():
        raise UserError(f"--resume: '{run_dir}' already finished (it has a record.json); records are never rewritten")
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at '{path}' (trials write one every `checkpoint_every` steps)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["record_head"]["config_hash"] != config_hash(cfg) or state["record_head"]["seed"] != cfg.seed:
        raise UserError(
            f"--resume: '{path}' belongs to config {state['record_head']['config_hash']} seed "
            f"{state['record_head']['seed']}, not to this config ({config_hash(cfg)} seed {cfg.seed})"
        )
    return state


def run_trial(
    cfg: TrialConfig,
    out_dir: str | Path | None = None,
    *,
    progress: bool = False,
    save_checkpoint: bool = False,
    reporter: Reporter | None = None,
    tags: dict | None = None,
    tracking: TrackingSettings | None = None,
    resume_dir: str | Path | None = None,
    writer: Callable[[dict, Path], Any] = write_record,
) -> dict:
    """Train one trial and return its record; with `out_dir`, also write `<out_dir>/<run_id>/`.

    `reporter(eval_entry)` is called at every evaluation point (search backends report intermediate
    values there); returning True stops the trial with status `pruned`. `tags` (sweep name, backend,
    trial number, ...) are stored in the record as they are.
    """
    trial = Trial(
        cfg,
        out_dir,
        progress=progress,
        save_checkpoint=save_checkpoint,
        tags=tags,
        tracking=tracking,
        resume_dir=resume_dir,
        writer=writer,
    )
    while (entry := trial.next_eval()) is not None:
        if reporter is not None and reporter(entry):
            return trial.stop()
    return trial.record


class LoopState:
    """Everything the training loop carries from one step to the next (what a checkpoint holds)."""

    def __init__(self, trial: Trial):
        cfg, device, o = trial.cfg, trial.device, trial.cfg.optim
        torch.manual_seed(cfg.seed)  # model init, dropout, drop-path: everything random derives from the seed
        self.model = build_model(cfg, in_channels=trial.images.shape[1]).to(device)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay, o.decay_all), lr=o.lr, betas=o.betas, eps=o.eps
        )
        self.ema = MultiEMA(self.model, cfg.ema.betas, cfg.ema.warmup)
        self.batches = BatchStream(
            trial.images.to(device), o.batch_size, stream_seed(cfg.seed, "data"), cfg.augment.hflip
        )
        self.noise_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "noise"))
        self.log = StepLog()
        self.detector = DivergenceDetector(cfg.stability.divergence_factor, burn_in(cfg))
        self.probes: dict[str, list] = {
            "step": [],
            "probe_loss": [],
            "feature_norm": [],
            "out_norm": [],
            "skip_norms": [],
        }
        self.evals: list[dict] = []
        self.step = 0

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "batches": self.batches.state_dict(),
            "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "log": {k: getattr(self.log, k) for k in ("loss", "grad_norm", "clipped", "lr")},
            "detector": self.detector.state_dict(),
            "probes": self.probes,
            "evals": self.evals,
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.batches.load_state_dict(state["batches"])
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for k, v in state["log"].items():
            setattr(self.log, k, list(v))
        self.detector.load_state_dict(state["detector"])
        self.probes, self.evals, self.step = state["probes"], state["evals"], state["step"]


def burn_in(cfg: TrialConfig) -> int:
    """Steps the stability statistics ignore: the burn-in, and at least the lr warm-up (METRICS.md)."""
    return min(max(cfg.stability.burn_in, cfg.optim.warmup_steps), cfg.optim.steps // 2)


def _train(trial: Trial) -> Generator[dict, None, dict]:
    """The training loop; yields each evaluation entry, returns the record's result fields."""
    cfg, images, device, run_dir = trial.cfg, trial.images, trial.device, trial.run_dir
    o, st = cfg.optim, cfg.stability

    # Set-up (or restore an interrupted run from its checkpoint).
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(device)
    state = trial.loop = LoopState(trial)
    model, ema, log, probes, evals = state.model, state.ema, state.log, state.probes, state.evals
    probe = Probe(images, cfg.eval.probe_size, diffusion.T, cfg.seed, device)
    diverged, pruned_at = None, None

    def record_probe(at_step: int) -> None:
        m = probe.measure(model, diffusion)
        probes["step"].append(at_step)
        for k in ("probe_loss", "feature_norm", "out_norm", "skip_norms"):
            probes[k].append(m[k])
        trial.tracker.log_probe(at_step, m)

    if trial.resume_state is not None:
        state.load_state_dict(trial.resume_state["loop"])
        probes, evals = state.probes, state.evals
    else:
        record_probe(0)
    bar = tqdm(
        total=o.steps,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not trial.progress,
        dynamic_ncols=True,
        mininterval=0.2 if sys.stderr.isatty() else 10.0,
    )  # few lines in CI logs
    t_loop, start_step, eval_time = time.perf_counter(), state.step, 0.0
    model.train()
    for step in range(state.step + 1, o.steps + 1):
        # One optimisation step: warm-up lr, weighted loss, clip between backward and step, EMA.
        lr = o.lr * min(1.0, step / o.warmup_steps) if o.warmup_steps else o.lr
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        x0 = next(state.batches)
        t = torch.randint(0, diffusion.T, (len(x0),), generator=state.noise_gen, device=device)
        noise = torch.randn(x0.shape, generator=state.noise_gen, device=device)
        if step == start_step + 1:
            trial.record["first_step_unix"] = time.time()  # backends' start-up overhead ends here
        loss, grad_norm = optimization_step(model, diffusion, state.optimizer, x0, t, noise, o.clip_norm)
        ema.update()
        log.append(loss, grad_norm, lr)
        state.step = step
        bar.update(1)

        # Telemetry: read the step values in bulk, check divergence, probe the fixed batch.
        if step % cfg.eval.probe_every == 0 or step == o.steps:
            first = log.flush(o.clip_norm)
            trial.tracker.log_steps(
                first + 1, log.loss[first:], log.grad_norm[first:], log.clipped[first:], log.lr[first:]
            )
            diverged = state.detector.check_new(log.loss, log.grad_norm)
            if diverged:
                break
            record_probe(step)
            bar.set_postfix(
                loss=f"{log.loss[-1]:.4f}",
                probe=f"{probes['probe_loss'][-1]:.4f}",
                gnorm=f"{log.grad_norm[-1]:.3g}",
                refresh=False,
            )

        # Evaluation: every weight set (raw and each EMA beta) on the probe batch.
        if step % cfg.eval.every == 0 or step == o.steps:
            t_eval = time.perf_counter()
            evals.append(evaluate(trial, model, ema, probe, diffusion, step))
            eval_time += time.perf_counter() - t_eval
            trial.tracker.log_eval(evals[-1])
            yield evals[-1]
            if trial.stop_requested and step < o.steps:
                pruned_at = step
                break

        # Checkpoint: atomic, so a kill at any moment leaves the previous one intact.
        if run_dir is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < o.steps:
            log.flush(o.clip_norm)
            save_checkpoint(run_dir, trial.record, state)
    bar.close()
    loop_time = time.perf_counter() - t_loop
    steps_done = state.step
    first = log.flush(o.clip_norm)
    trial.tracker.log_steps(first + 1, log.loss[first:], log.grad_norm[first:], log.clipped[first:], log.lr[first:])

    stability = summarize(log, probes, burn_in(cfg), st.spike_factor, st.spike_window, diverged is not None)
    result = {
        "status": Status.DIVERGED if diverged else Status.PRUNED if pruned_at else Status.OK,
        "diverged_at": diverged[0] if diverged else None,
        "pruned_at": pruned_at,
        "diverged_reason": diverged[1] if diverged else None,
        "steps_completed": steps_done,
        "resumed_from_step": start_step or None,
        "steps_per_s": (steps_done - start_step) / (loop_time - eval_time) if loop_time > eval_time else None,
        "eval_time_s": eval_time,
        "params": count_params(model),
        "metrics": {
            "final_loss": log.loss[-1] if log.loss else None,
            "initial_probe_loss": probes["probe_loss"][0],
            "final_probe_loss": probes["probe_loss"][-1],
            **stability,
            **best_weights(evals, trial.scorer),
        },
        "evals": evals,
        "curves": downsample(
            {
                "step": list(range(1, len(log.loss) + 1)),
                "loss": log.loss,
                "grad_norm": log.grad_norm,
                "clipped": log.clipped,
                "lr": log.lr,
            }
        ),
        "probes": probes,
    }
    if run_dir is not None and result["status"] == Status.OK and cfg.eval.grid > 0:
        result["samples_png"] = save_grid(trial, model, ema, diffusion, result["metrics"], run_dir)
    if run_dir is not None and (trial.save_checkpoint or cfg.checkpoint_every):
        save_checkpoint(run_dir, trial.record, state)
        result["checkpoint"] = str(run_dir / CHECKPOINT)
    return result


def save_checkpoint(run_dir: Path, record: dict, state: LoopState) -> None:
    head = {k: record[k] for k in ("run_id", "config_hash", "seed", "created_at")}
    atomic_torch_save({"record_head": head, "loop": state.state_dict()}, run_dir / CHECKPOINT)


def weight_sets(model: nn.Module, ema: MultiEMA):
    """(name, model) for the raw weights and each EMA beta."""
    yield "raw", model
    for beta in ema.betas:
        yield ema_name(beta), ema.copy_to(model, beta)


def ema_name(beta: float) -> str:
    return f"ema_{beta!r}"  # repr round-trips exactly: distinct betas never share a name


def generate(trial: Trial, net: nn.Module, diffusion: Diffusion, n: int, chunk: int = 500) -> torch.Tensor:
    """`n` samples from `net` with the configured sampler and a fixed seed (the same noise at every eval)."""
    cfg = trial.cfg
    g = torch.Generator(device=trial.device).manual_seed(stream_seed(cfg.seed, "samples"))
    shape = (trial.images.shape[1], cfg.workload.resolution, cfg.workload.resolution)
    was_training = net.training
    net.eval()
    out = [
        diffusion.sample(
            net, (min(chunk, n - i), *shape), cfg.eval.sampler_steps, g, cfg.eval.sampler, trial.device
        ).cpu()
        for i in range(0, n, chunk)
    ]
    net.train(was_training)
    return torch.cat(out)


def evaluate(trial: Trial, model: nn.Module, ema: MultiEMA, probe: Probe, diffusion: Diffusion, step: int) -> dict:
    """Probe loss, and FID/KID of `eval.samples` samples, for the raw weights and each EMA beta."""
    entry: dict = {"step": step, "probe_loss": {}}
    for name, net in weight_sets(model, ema):
        entry["probe_loss"][name] = probe.measure(net, diffusion, features=False)["probe_loss"]
        if trial.scorer is not None:
            samples = generate(trial, net, diffusion, trial.cfg.eval.samples)
            scores = trial.scorer.score(samples)
            for key in (trial.scorer.fid_key, trial.scorer.kid_key):
                entry.setdefault(key, {})[name] = scores[key]
            entry["n_samples"] = len(samples)
    return entry


def best_weights(evals: list[dict], scorer=None) -> dict:
    """The best weight set at the last evaluation (by FID when scored, else by probe loss), its values,
    the best probe loss, and the FID's area under the curve over training (mean over eval points)."""
    if not evals:
        return {}
    last = evals[-1]
    probe = {k: v for k, v in last["probe_loss"].items() if math.isfinite(v)}
    out: dict = {"best_probe_loss": min(probe.values())} if probe else {}
    if scorer is not None and scorer.fid_key in last:
        fid = {k: v for k, v in last[scorer.fid_key].items() if math.isfinite(v)}
        if fid:
            name = min(fid, key=fid.get)
            best_per_eval = [min(e[scorer.fid_key].values()) for e in evals]
            out.update(
                {
                    "best_weights": name,
                    scorer.fid_key: fid[name],
                    scorer.kid_key: last[scorer.kid_key][name],
                    f"{scorer.fid_key}_auc": sum(best_per_eval) / len(best_per_eval),
                    f"{scorer.fid_key}_floor": scorer.floor(),
                    "fid_samples": evals[-1].get("n_samples"),
                }
            )
            return out
    if probe:
        out["best_weights"] = min(probe, key=probe.get)
    return out


def save_grid(trial: Trial, model: nn.Module, ema: MultiEMA, diffusion: Diffusion, metrics: dict, run_dir: Path) -> str:
    """A PNG grid of `eval.grid` samples from the best weight set, with the fixed sampler seed."""
    from torchvision.utils import save_image

    name = metrics.get("best_weights", "raw")
    net = model if name == "raw" else ema.copy_to(model, {ema_name(b): b for b in ema.betas}[name])
    x = generate(trial, net, diffusion, trial.cfg.eval.grid)
    path = run_dir / "samples.png"
    save_image((x + 1) / 2, path, nrow=int(math.ceil(math.sqrt(len(x)))), padding=1)
    return str(path)


def rescore(
    run_dir: str | Path, samples: int | None = None, inception_weights: str | None = None, extractor: str | None = None
) -> dict:
    """FID/KID of a finished trial's weights (raw and each EMA beta) from its checkpoint, with `samples`
    samples; written to RUN_DIR/score-<extractor>-n<N>.json (the record itself is never rewritten)."""
    import json

    from .config import load_config

    run_dir = Path(run_dir)
    if run_dir.is_file():  # a checkpoint path was given
        run_dir = run_dir.parent
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"RUN_DIR: '{run_dir}' has no config.yaml; give a trial's directory from the store")
    overrides = [f"eval.samples={samples}"] if samples else []
    overrides += [f"eval.inception_weights={inception_weights}"] if inception_weights else []
    overrides += [f"eval.extractor={extractor}"] if extractor else []
    cfg = load_config(run_dir / "config.yaml", overrides)
    if cfg.eval.samples == 0:
        raise UserError("--samples: give a sample count (the trial's config has eval.samples = 0)")
    state_dict = (
        torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)["loop"]
        if (run_dir / CHECKPOINT).is_file()
        else None
    )
    if state_dict is None:
        raise UserError(f"RUN_DIR: no {CHECKPOINT} in '{run_dir}'; train with --checkpoint (or --checkpoint-every)")
    trial = Trial(cfg)
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(trial.device)
    state = LoopState(trial)
    state.model.load_state_dict(state_dict["model"])
    state.ema.load_state_dict(state_dict["ema"])
    result: dict = {
        "run_dir": str(run_dir),
        "step": state_dict["step"],
        "n_samples": cfg.eval.samples,
        "extractor": cfg.extractor,
    }
    for name, net in weight_sets(state.model, state.ema):
        scores = trial.scorer.score(generate(trial, net, diffusion, cfg.eval.samples))
        for key in (trial.scorer.fid_key, trial.scorer.kid_key):
            result.setdefault(key, {})[name] = scores[key]
    result[f"{trial.scorer.fid_key}_floor"] = trial.scorer.floor()
    atomic_write_text(run_dir / f"score-{cfg.extractor}-n{cfg.eval.samples}.json", json.dumps(result, indent=1) + "\n")
    return result

"""One trial: train a diffusion model from a config and a seed while measuring how stably it trains.

A trial never raises for a training problem: divergence is a result (status `diverged`), any other
exception is recorded as status `failed` with its traceback tail. Only user errors (bad config, missing
data) raise, and they do so before the first step (when the `Trial` is built); and a write the store's
filesystem refuses (full, read-only: `StorageFault`), which is recorded as `failed` and then raised.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..config import TrialConfig, dump_yaml
from ..errors import StorageFault
from ..files import atomic_write_text
from ..models import count_params
from ..records.record import Status, downsample, new_record, write_record
from ..records.tracking import TrackingSettings, make_tracker
from ..workloads.data import load_images
from .diffusion import Diffusion
from .evaluate import EvalNet, Probe, best_weights, evaluate, make_scorer, save_grid
from .precision import Precision, check_precision
from .state import CHECKPOINT, TrainState, burn_in, load_checkpoint, resolve_device, save_checkpoint
from .telemetry import PROBE_SERIES, summarize


def optimization_step(
    forward: nn.Module,
    params: list[torch.Tensor],
    diffusion: Diffusion,
    optimizer: torch.optim.Optimizer,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    clip_norm: float | None,
    precision: Precision,
):
    """Forward under the trial's precision, backward (loss-scaled for fp16), global-norm clipping between backward
    and step, step. Returns (loss, pre-clip global grad norm) as tensors, without a host synchronisation; the
    clipped grads stay in `.grad`. Under fp16 a step whose gradients overflowed is skipped (norm non-finite)."""
    x0, t, noise = batch
    with precision.autocast():
        loss = diffusion.loss(forward, x0, t, noise)
    optimizer.zero_grad(set_to_none=True)
    scaler = precision.scaler
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip and measure the true gradient
    if clip_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm, foreach=True)  # the pre-clip norm
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    return loss, grad_norm


def train_step(state: TrainState, diffusion: Diffusion, clip_norm: float | None):
    """Draw the next batch, timesteps and noise from the train state's streams and take one optimization step
    (the first one guarded against a failing compilation). Returns (loss, pre-clip grad norm) as tensors."""
    x0 = next(state.batches)
    t = torch.randint(0, diffusion.T, (len(x0),), generator=state.noise_gen, device=state.device)
    noise = torch.randn(x0.shape, generator=state.noise_gen, device=state.device)
    return state.forward.guard(
        lambda: optimization_step(
            state.forward, state.params, diffusion, state.optimizer, (x0, t, noise), clip_norm, state.precision
        )
    )


PREEMPTION = threading.Event()  # set by a SIGTERM handler (`request_preemption`); every running trial obeys it


def request_preemption() -> None:
    """Ask every running trial of this process to checkpoint after its current step (with that step's probe and
    evaluation; a trial at its last step finishes instead) and raise `Preempted`. Safe to call from a signal
    handler (it only sets a flag)."""
    PREEMPTION.set()


class Preempted(BaseException):
    """A trial stopped by `request_preemption`: its state is checkpointed in `run_dir` at `step` and it has no
    record yet, so a retry continues it from there. A BaseException, like KeyboardInterrupt: no `except
    Exception` on the way records it as failed."""

    def __init__(self, run_dir: Path | None, step: int):
        super().__init__(f"preempted at step {step}" + (f"; checkpoint in {run_dir}" if run_dir else ""))
        self.run_dir, self.step = run_dir, step


class Trial:
    """One trial, steppable: `run()` trains and yields each evaluation entry; `stop()` between two entries
    ends it as `pruned`. The record is complete (and written, with an `out_dir`) once `run()` is exhausted."""

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
        self.cfg, self.progress, self.tracking = cfg, progress, tracking
        self.final_checkpoint = save_checkpoint  # besides the periodic ones (`checkpoint_every`)
        self.writer = writer  # search backends pass Store.write_unique: a (config, seed) counted once
        self.device = resolve_device(cfg.device)
        check_precision(cfg.engine.precision, self.device)
        self.images = load_images(cfg.workload, "train")  # user errors (missing data) surface here
        self.channels = self.images.shape[1]
        self.record = new_record(cfg, self.device)
        self.record["tags"] = dict(tags or {})
        self.run_dir = Path(out_dir) / self.record["run_id"] if out_dir is not None else None
        self.scorer = make_scorer(cfg, self.device) if cfg.eval.samples > 0 else None
        self.resume_state = None
        if resume_dir is not None:  # continue an interrupted trial: same run id, same directory
            self.resume_state = load_checkpoint(Path(resume_dir), cfg)
            self.record.update(self.resume_state["record_head"])
            self.run_dir = Path(resume_dir)
        self.state: TrainState | None = None  # set once training starts: a failed record keeps its step
        # a checkpoint written only to resume after preemption: removed once the record is written
        self._resume_point_only = resume_dir is not None and not (save_checkpoint or cfg.checkpoint_every)
        self._stop_requested = False
        self._evals: Iterator[dict] | None = None

    @property
    def finished(self) -> bool:
        """True once the record has its final status."""
        return self.record["status"] != Status.RUNNING

    # -----------------------------------------------------------------------------------------
    # Driving: one generator per trial, so callers may pull entries one at a time
    # -----------------------------------------------------------------------------------------

    def run(self) -> Iterator[dict]:
        """The trial's evaluation entries as they are measured (the same iterator on every call)."""
        if self._evals is None:
            self._evals = self._lifecycle()
        return self._evals

    def stop(self) -> dict:
        """End the trial now (status `pruned` if it had not finished) and return its record."""
        self._stop_requested = True
        for _ in self.run():  # the loop checks the flag at its next evaluation point
            pass
        return self.record

    def checkpoint(self) -> Path | None:
        """Save the running trial's state now, between two evaluation entries, so that a restarted worker resumes
        here (a backend's preemption checkpoint); returns the run directory, or None when there is nothing to save
        (no run directory, training not started, or already finished)."""
        if self.run_dir is None or self.state is None or self.finished:
            return None
        self._checkpoint()
        self._resume_point_only = not (self.final_checkpoint or self.cfg.checkpoint_every)
        return self.run_dir

    def _lifecycle(self) -> Iterator[dict]:
        """Train; yield every evaluation entry; finish the record (failed if training raised)."""
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.cfg))
        started = time.perf_counter()
        self.tracker = make_tracker(self.tracking, self.record)
        fault = None  # a write the filesystem refused: recorded, then raised (the next write would meet it too)
        try:
            result = yield from self._train()
            self.record.update(result)
        except Exception as e:  # a failed trial is a result too; keep the reason
            fault = e if isinstance(e, StorageFault) else None
            self.record.update(
                status=Status.FAILED,
                steps_completed=self.state.step if self.state else 0,
                error={"type": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()[-4000:]},
            )
        self.record["wall_time_s"] = time.perf_counter() - started
        if self.run_dir is not None:
            self.record["run_dir"] = str(self.run_dir)
            self.writer(self.record, self.run_dir)  # the store first: W&B is a view of it
            if self._resume_point_only:  # nobody asked to keep the weights: the record is the result
                (self.run_dir / CHECKPOINT).unlink(missing_ok=True)
        self.tracker.finish(self.record)
        if fault is not None:
            raise fault

    def _train(self) -> Generator[dict, None, dict]:
        """The training loop; yields each evaluation entry, returns the record's result fields."""
        self._set_up()
        o, ev = self.cfg.optim, self.cfg.eval
        for step in range(self.state.step + 1, o.steps + 1):
            self._step(step)
            last = step == o.steps
            if step % ev.probe_every == 0 or last:
                if self._check_divergence():
                    break
                self._record_probe(step)
                self._show_progress()
            if step % ev.every == 0 or last:
                yield self._evaluate(step)
                if self._stop_requested and not last:
                    self.pruned_at = step
                    break
            if self._checkpoint_due(step):
                self._checkpoint()
            if PREEMPTION.is_set() and not last:  # after the step's probe and evaluation: the resume misses neither
                self._preempt(step)
        return self._finish()

    # -----------------------------------------------------------------------------------------
    # Set-up (or restore an interrupted run from its checkpoint)
    # -----------------------------------------------------------------------------------------

    def _set_up(self) -> None:
        """Diffusion, train state and probe batch; the step-0 probe, or the checkpoint's state."""
        cfg, device = self.cfg, self.device
        self.diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(device)
        self.state = TrainState(cfg, self.images, device)
        self.probe = Probe(self.images, cfg.eval.probe_size, self.diffusion.T, cfg.seed, device)
        self.eval_net = EvalNet(self.state.model, cfg, device)
        self.diverged, self.pruned_at = None, None
        self.state.precision.set_flags()
        self.record["engine"] = self.state.precision.flags()
        if self.resume_state is not None:
            self.state.load_state_dict(self.resume_state["loop"])
        else:
            self._record_probe(0)
        self.bar = tqdm(
            total=cfg.optim.steps,
            initial=self.state.step,
            desc="train",
            unit="step",
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=0.2 if sys.stderr.isatty() else 10.0,  # few lines in CI logs
        )
        self.loop_started, self.start_step, self.eval_time = time.perf_counter(), self.state.step, 0.0
        self.state.model.train()

    # -----------------------------------------------------------------------------------------
    # Step
    # -----------------------------------------------------------------------------------------

    def _step(self, step: int) -> None:
        """One optimisation step: warm-up lr, weighted loss, clip between backward and step, EMA."""
        o, s = self.cfg.optim, self.state
        lr = o.lr * min(1.0, step / o.warmup_steps) if o.warmup_steps else o.lr
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        if step == self.start_step + 1:
            self.record["first_step_unix"] = time.time()  # backends' start-up overhead ends here
        loss, grad_norm = train_step(s, self.diffusion, o.clip_norm)
        s.ema.update()
        s.log.append(loss, grad_norm, lr)
        s.step = step
        self.bar.update(1)

    # -----------------------------------------------------------------------------------------
    # Telemetry: step values read in bulk, divergence checks, the fixed probe batch
    # -----------------------------------------------------------------------------------------

    def _flush_steps(self) -> None:
        """Read the pending step values off the device (one sync) and log them to the tracker."""
        log = self.state.log
        first = log.flush(self.cfg.optim.clip_norm)
        self.tracker.log_steps(first + 1, log.loss[first:], log.grad_norm[first:], log.clipped[first:], log.lr[first:])

    def _check_divergence(self) -> bool:
        """Flush the step values and check the new ones; True once the trial has diverged."""
        self._flush_steps()
        log = self.state.log
        self.diverged = self.state.detector.check_new(log.loss, log.grad_norm)
        return self.diverged is not None

    def _show_progress(self) -> None:
        """Latest loss, probe loss and grad norm on the progress bar."""
        log = self.state.log
        self.bar.set_postfix(
            loss=f"{log.loss[-1]:.4f}",
            probe=f"{self.state.probes['probe_loss'][-1]:.4f}",
            gnorm=f"{log.grad_norm[-1]:.3g}",
            refresh=False,
        )

    def _record_probe(self, step: int) -> None:
        """Probe loss and feature norms of the current weights on the fixed batch."""
        m = self.probe.measure(self.state.model, self.diffusion)
        probes = self.state.probes
        probes["step"].append(step)
        for k in PROBE_SERIES:
            probes[k].append(m[k])
        self.tracker.log_probe(step, m)

    # -----------------------------------------------------------------------------------------
    # Evaluation: every weight set (raw and each EMA beta) on the probe batch, FID/KID when scored
    # -----------------------------------------------------------------------------------------

    def _evaluate(self, step: int) -> dict:
        """The evaluation entry at `step`, kept in the train state and logged to the tracker."""
        s, started, samples = self.state, time.perf_counter(), {}
        entry = evaluate(
            s.model,
            s.ema,
            self.eval_net,
            self.probe,
            self.diffusion,
            step,
            self.scorer,
            cfg=self.cfg,
            device=self.device,
            channels=self.channels,
            final=step == self.cfg.optim.steps,
            say=self._phase,
            samples_out=samples,
        )
        s.evals.append(entry)
        self._resume_bar(time.perf_counter() - started)
        self.tracker.log_eval(entry, samples)
        return entry

    def _phase(self, text: str) -> None:
        """Name what the trial does now on the progress bar (sampling, scoring), in place of `train`."""
        self.bar.set_description_str(text + "...")

    def _resume_bar(self, paused_s: float) -> None:
        """Back to training after an evaluation that took `paused_s`: the bar's clock skips it, so the step rate it
        shows is the training rate, not one diluted by evaluation."""
        self.eval_time += paused_s
        if not self.bar.disable:  # a disabled bar keeps no clock
            self.bar.start_t += paused_s
            self.bar.last_print_t += paused_s
        self.bar.set_description_str("train", refresh=False)

    # -----------------------------------------------------------------------------------------
    # Checkpoint
    # -----------------------------------------------------------------------------------------

    def _checkpoint_due(self, step: int) -> bool:
        """A periodic checkpoint at `step` (the final one is written by `_finish`)."""
        every = self.cfg.checkpoint_every
        return self.run_dir is not None and bool(every) and step % every == 0 and step < self.cfg.optim.steps

    def _preempt(self, step: int) -> None:
        """Checkpoint after `step` (when there is a run directory to resume from) and raise `Preempted`."""
        if self.run_dir is not None:
            self._checkpoint()
            self._resume_point_only = not (self.final_checkpoint or self.cfg.checkpoint_every)
        self.bar.close()
        raise Preempted(self.run_dir, step)

    def _checkpoint(self) -> None:
        """Save the train state with every step value read off the device."""
        self.state.log.flush(self.cfg.optim.clip_norm)
        save_checkpoint(self.run_dir, self.record, self.state)

    # -----------------------------------------------------------------------------------------
    # Finish: the record's result fields, the sample grid, the final checkpoint
    # -----------------------------------------------------------------------------------------

    def _finish(self) -> dict:
        """Close the loop and return the record's result fields."""
        self.bar.close()
        loop_time = time.perf_counter() - self.loop_started
        self._flush_steps()
        result = self._result(loop_time)
        s, run_dir = self.state, self.run_dir
        if run_dir is not None and result["status"] == Status.OK and self.cfg.eval.grid > 0:
            result["samples_png"] = save_grid(
                s.model,
                s.ema,
                self.eval_net,
                self.diffusion,
                result["metrics"],
                run_dir,
                cfg=self.cfg,
                device=self.device,
                channels=self.channels,
            )
        if run_dir is not None and (self.final_checkpoint or self.cfg.checkpoint_every):
            save_checkpoint(run_dir, self.record, s)
            result["checkpoint"] = str(run_dir / CHECKPOINT)
        return result

    def _result(self, loop_time: float) -> dict:
        """Status, speed, metrics, evaluations, curves and probes of the finished loop."""
        cfg, s, diverged, start = self.cfg, self.state, self.diverged, self.start_step
        st, log, probes = cfg.stability, s.log, s.probes
        stability = summarize(log, probes, burn_in(cfg), st.spike_factor, st.spike_window, diverged is not None)
        return {
            "status": Status.DIVERGED if diverged else Status.PRUNED if self.pruned_at else Status.OK,
            "diverged_at": diverged[0] if diverged else None,
            "pruned_at": self.pruned_at,
            "diverged_reason": diverged[1] if diverged else None,
            "steps_completed": s.step,
            "resumed_from_step": start or None,
            "steps_per_s": (s.step - start) / (loop_time - self.eval_time) if loop_time > self.eval_time else None,
            "eval_time_s": self.eval_time,
            "engine": {**self.record["engine"], **s.forward.info()},
            "params": count_params(s.model),
            "metrics": {
                "final_loss": log.loss[-1] if log.loss else None,
                "initial_probe_loss": probes["probe_loss"][0],
                "final_probe_loss": probes["probe_loss"][-1],
                **stability,
                **best_weights(s.evals, self.scorer),
            },
            "evals": s.evals,
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


def run_trial(cfg: TrialConfig, out_dir: str | Path | None = None, **kwargs: Any) -> dict:
    """Train one trial to its end and return its record; with `out_dir`, also write `<out_dir>/<run_id>/`.

    Keyword arguments are those of `Trial` (`tags`, stored in the record as they are: sweep name,
    backend, trial number, ...). Search backends that prune drive `Trial.run()` / `Trial.stop()` instead.
    """
    trial = Trial(cfg, out_dir, **kwargs)
    for _ in trial.run():
        pass
    return trial.record

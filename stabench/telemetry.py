"""Training-stability telemetry; docs/metrics.md ("Stability") defines each statistic.

Per step: loss, pre-clip global grad norm, clip flag, lr (kept as tensors and read in bulk at probe
points, so a GPU is not synchronised every step). Per probe: a fixed batch's loss and the L2 norms of the
long-skip features entering the decoder. At the end: one summary dict of scalars.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class StepLog:
    """Per-step curves; `flush()` turns the pending tensors into Python floats."""

    def __init__(self):
        self.loss: list[float] = []
        self.grad_norm: list[float] = []
        self.clipped: list[bool] = []
        self.lr: list[float] = []
        self._pending: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self._clip_norm: float | None = None

    def append(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        self._pending.append((loss.detach(), grad_norm.detach(), lr))

    def flush(self, clip_norm: float | None) -> int:
        """Materialise pending steps; returns the index of the first new step."""
        first = len(self.loss)
        if self._pending:
            values = torch.stack([torch.stack([l.float(), g.float()]) for l, g, _ in self._pending]).tolist()
            for (loss, gnorm), (_, _, lr) in zip(values, self._pending):
                self.loss.append(loss)
                self.grad_norm.append(gnorm)
                self.clipped.append(clip_norm is not None and gnorm > clip_norm)
                self.lr.append(lr)
            self._pending.clear()
        return first


class DivergenceDetector:
    """Non-finite loss/grad, or smoothed loss above `factor` x its running minimum after warm-up."""

    def __init__(self, factor: float, warmup_steps: int, smoothing: float = 0.05):
        self.factor, self.warmup, self.smoothing = factor, warmup_steps, smoothing
        self.smoothed: float | None = None
        self.running_min = math.inf
        self.checked = 0  # steps fed so far

    def check_new(self, loss: list[float], grad_norm: list[float]) -> tuple[int, str] | None:
        """Feed every step not checked yet; (step, reason) of the first divergence, if any."""
        while self.checked < len(loss):
            self.checked += 1
            reason = self.check(self.checked, loss[self.checked - 1], grad_norm[self.checked - 1])
            if reason:
                return self.checked, reason
        return None

    def state_dict(self) -> dict:
        return {"smoothed": self.smoothed, "running_min": self.running_min, "checked": self.checked}

    def load_state_dict(self, state: dict) -> None:
        self.smoothed, self.running_min, self.checked = state["smoothed"], state["running_min"], state["checked"]

    def check(self, step: int, loss: float, grad_norm: float) -> str | None:
        """Feed one step (1-based); returns the reason when this step diverged."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step}"
        s = self.smoothed = (
            loss if self.smoothed is None else (1 - self.smoothing) * self.smoothed + self.smoothing * loss
        )
        self.running_min = min(self.running_min, s)
        if step > self.warmup and s > self.factor * self.running_min:
            return f"smoothed loss {s:.4g} > {self.factor:g} x running minimum {self.running_min:.4g} at step {step}"
        return None


@torch.no_grad()
def feature_norms(features: dict) -> dict:
    """ScaleLong's "norm of feature": mean per-sample L2 norm of each long-skip feature (the encoder's
    output, before LSC scaling, so that scaling does not lower the metric by construction), of all of
    them together, and of the decoder's output feature."""

    def per_sample(x: torch.Tensor) -> torch.Tensor:
        return x.float().flatten(1).norm(dim=1)

    skips = [per_sample(s) for s in features["encoder"]]
    return {
        "skip_norms": [s.mean().item() for s in skips],
        "feature_norm": torch.stack(skips).pow(2).sum(0).sqrt().mean().item(),
        "out_norm": per_sample(features["out"]).mean().item(),
    }


def _finite(x: float) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def grad_spike_rate(grad_norm: np.ndarray, start: int, factor: float, window: int) -> float | None:
    """Steps whose norm exceeds `factor` x the running median of the previous `window` steps, per 1,000."""
    checked = spikes = 0
    for s in range(max(start, 1), len(grad_norm)):
        ref = np.median(grad_norm[max(0, s - window) : s])
        checked += 1
        spikes += bool(grad_norm[s] > factor * ref)
    return 1000.0 * spikes / checked if checked else None


def probe_loss_oscillation(probe_loss: list[float]) -> float | None:
    """mean |d log L| - |mean d log L| over consecutive probes: ~0 when monotone, high for zig-zags."""
    logs = np.log(np.asarray(probe_loss, dtype=np.float64))
    if len(logs) < 3 or not np.all(np.isfinite(logs)):
        return None
    d = np.diff(logs)
    return float(np.mean(np.abs(d)) - abs(np.mean(d)))


def instability_score(parts: dict, diverged: bool) -> float:
    """One scalar for ranking (lower is steadier; 0 = perfectly steady; inf = diverged):
    grad_norm_cv + probe_loss_osc + grad_spike_rate / 100 + max(0, log feature_norm_growth).
    Every term is dimensionless; missing terms count 0."""
    if diverged:
        return math.inf
    growth = parts.get("feature_norm_growth")
    return (
        (parts.get("grad_norm_cv") or 0.0)
        + (parts.get("probe_loss_osc") or 0.0)
        + (parts.get("grad_spike_rate") or 0.0) / 100.0
        + (max(0.0, math.log(growth)) if growth else 0.0)
    )


def summarize(log: StepLog, probes: dict, warmup: int, spike_factor: float, spike_window: int, diverged: bool) -> dict:
    """Scalar stability metrics of a finished (or stopped) trial."""
    gn = np.asarray(log.grad_norm, dtype=np.float64)
    finite_gn = gn[warmup:][np.isfinite(gn[warmup:])]
    fn = probes["feature_norm"]
    parts = {
        "clip_frac": float(np.mean(log.clipped)) if log.clipped else None,
        "grad_norm_mean": _finite(float(np.mean(finite_gn))) if len(finite_gn) else None,
        "grad_norm_max": _finite(float(np.max(finite_gn))) if len(finite_gn) else None,
        "grad_norm_cv": _finite(float(np.std(finite_gn) / np.mean(finite_gn))) if len(finite_gn) > 1 else None,
        "grad_spike_rate": grad_spike_rate(gn, warmup, spike_factor, spike_window) if np.all(np.isfinite(gn)) else None,
        "probe_loss_osc": probe_loss_oscillation(probes["probe_loss"]),
        "feature_norm_max": _finite(max(fn)) if fn else None,
        "feature_norm_growth": _finite(fn[-1] / fn[0]) if len(fn) > 1 and fn[0] > 0 else None,
    }
    parts["instability"] = instability_score(parts, diverged)
    return parts

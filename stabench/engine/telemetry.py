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
        """Keep one step's values as tensors (no host synchronisation)."""
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

    def __init__(self, factor: float, warmup_steps: int, smoothing: float = 0.05, skips_nonfinite_grads: bool = False):
        self.factor, self.warmup, self.smoothing = factor, warmup_steps, smoothing
        self.skips_nonfinite_grads = skips_nonfinite_grads  # fp16 loss scaling skips such steps itself
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
        """The detector's state, for checkpoints."""
        return {"smoothed": self.smoothed, "running_min": self.running_min, "checked": self.checked}

    def load_state_dict(self, state: dict) -> None:
        """Restore the detector's state from a checkpoint."""
        self.smoothed, self.running_min, self.checked = state["smoothed"], state["running_min"], state["checked"]

    def check(self, step: int, loss: float, grad_norm: float) -> str | None:
        """Feed one step (1-based); returns the reason when this step diverged."""
        if not math.isfinite(grad_norm) and self.skips_nonfinite_grads and math.isfinite(loss):
            return None  # a skipped step (the loss scaler lowers its scale); counted in `skipped_frac`
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} at step {step}"
        s = self.smoothed = (
            loss if self.smoothed is None else (1 - self.smoothing) * self.smoothed + self.smoothing * loss
        )
        self.running_min = min(self.running_min, s)
        if step > self.warmup and s > self.factor * self.running_min:
            return f"smoothed loss {s:.4g} > {self.factor:g} x running minimum {self.running_min:.4g} at step {step}"
        return None


# Probe series recorded at every probe point (record["probes"]), decoder side first: ScaleLong's theory bounds the
# features the decoder receives, so rankings use those; the encoder side is kept as a diagnostic.
PROBE_SERIES = (
    "probe_loss",  # unweighted eps-MSE of the fixed probe batch: comparable across weighting kinds
    "probe_grad_norm",  # global gradient norm of that unweighted loss (no weighting, no clipping, fixed batch)
    "decoder_norm",  # the decoder's last hidden feature (before the output head)
    "skip_norm",  # all long skips as they enter the decoder (after LSC scaling), together
    "skip_norms",  # each long skip as it enters the decoder, outermost first
    "encoder_norm",  # diagnostic: the encoder's skip outputs before scaling, together
)
# Records written before the decoder-side readout (schema 1) named two series differently.
LEGACY_SERIES = {"decoder_norm": "out_norm", "encoder_norm": "feature_norm"}


def probe_series(probes: dict, name: str) -> list | None:
    """A probe series of a record, also from records of the old readout (where it exists there)."""
    if name in probes:
        return probes[name]
    return probes.get(LEGACY_SERIES.get(name, ""))


@torch.no_grad()
def feature_norms(features: dict) -> dict:
    """ScaleLong's "norm of feature" on the probe batch: mean per-sample L2 norm of each long skip entering the
    decoder (after scaling), of all of them together, and of the decoder's last hidden feature; plus the
    encoder-side norm before scaling as a diagnostic."""

    def per_sample(x: torch.Tensor) -> torch.Tensor:
        return x.float().flatten(1).norm(dim=1)

    def together(xs: list[torch.Tensor]) -> float:
        return torch.stack([per_sample(x) for x in xs]).pow(2).sum(0).sqrt().mean().item()

    return {
        "decoder_norm": per_sample(features["out"]).mean().item(),
        "skip_norm": together(features["skips"]),
        "skip_norms": [per_sample(s).mean().item() for s in features["skips"]],
        "encoder_norm": together(features["encoder"]),
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


def oscillation(series: list[float]) -> float | None:
    """mean |d log x| - |mean d log x| over consecutive probes: ~0 for a monotone series, high for zig-zags.
    Scale-free, so a series that grows smoothly (or a weighting that scales it) does not count as unstable."""
    logs = np.log(np.asarray(series, dtype=np.float64))
    if len(logs) < 3 or not np.all(np.isfinite(logs)):
        return None
    d = np.diff(logs)
    return float(np.mean(np.abs(d)) - abs(np.mean(d)))


probe_loss_oscillation = oscillation


def series_summary(name: str, series: list[float] | None) -> dict:
    """Maximum, final/initial growth and oscillation of a probe series."""
    if not series:
        return {}
    return {
        f"{name}_max": _finite(max(series)),
        f"{name}_growth": _finite(series[-1] / series[0]) if len(series) > 1 and series[0] > 0 else None,
        f"{name}_osc": oscillation(series),
    }


def spike_fraction(series: list[float], start: int, factor: float, window: int = 10) -> float | None:
    """Fraction of probe points from `start` on whose value exceeds `factor` x the median of the previous
    `window` probe points."""
    x = np.asarray(series, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return None
    checked = [bool(x[i] > factor * np.median(x[max(0, i - window) : i])) for i in range(max(start, 1), len(x))]
    return float(np.mean(checked)) if checked else None


def cv(x: np.ndarray) -> float | None:
    """Coefficient of variation (std / mean) of finite values, None for fewer than two."""
    x = x[np.isfinite(x)]
    return _finite(float(np.std(x) / np.mean(x))) if len(x) > 1 and np.mean(x) > 0 else None


# The parts of `instability`: each is dimensionless, none depends on the timestep weighting kind (all are read
# on the fixed probe batch with the unweighted loss, or on decoder-side features), and each is 0 when steady.
INSTABILITY_PARTS = (
    "probe_grad_osc",
    "probe_grad_spike_frac",
    "probe_loss_osc",
    "decoder_norm_osc",
    "decoder_norm_log_growth",
)


def instability_score(parts: dict, diverged: bool) -> float:
    """One scalar for ranking (lower is steadier; 0 = perfectly steady; inf = diverged): the sum of
    INSTABILITY_PARTS, where `decoder_norm_log_growth` = max(0, log decoder_norm_growth). Missing parts count 0."""
    if diverged:
        return math.inf
    return sum(parts.get(k) or 0.0 for k in INSTABILITY_PARTS)


# The unweighted eps-MSE of predicting zero noise is E[eps^2] = 1. A run whose final probe loss is at least half of
# that has not learned to denoise: it collapsed back to the trivial predictor, or never left it. A result, reported
# beside `diverged` (the divergence rule cannot see it: the loss stays finite and below 10x its minimum).
ZERO_PREDICTOR_LOSS = 1.0
COLLAPSE_FRACTION = 0.5


def collapsed(final_probe_loss: float | None, diverged: bool) -> float | None:
    """1.0 when a finished run's final probe loss is at the zero-predictor level, else 0.0; None when it diverged
    (its own status) or has no finite probe loss."""
    if diverged or final_probe_loss is None or not math.isfinite(final_probe_loss):
        return None
    return float(final_probe_loss >= COLLAPSE_FRACTION * ZERO_PREDICTOR_LOSS)


def summarize(log: StepLog, probes: dict, warmup: int, spike_factor: float, spike_window: int, diverged: bool) -> dict:
    """Scalar stability metrics of a finished (or stopped) trial."""
    gn = np.asarray(log.grad_norm, dtype=np.float64)
    finite_gn = gn[warmup:][np.isfinite(gn[warmup:])]
    probe_steps = probes["step"]
    first_probe = next((i for i, s in enumerate(probe_steps) if s >= warmup), len(probe_steps))
    pg = probes.get("probe_grad_norm") or []
    parts = {
        # Training-loss statistics: they depend on the weighting kind (diagnostics, not in `instability`).
        "clip_frac": float(np.mean(log.clipped)) if log.clipped else None,
        # fp16 loss scaling skips the steps whose gradients overflowed: an instability of the precision itself.
        "skipped_frac": float(np.mean(~np.isfinite(gn))) if len(gn) else None,
        "grad_norm_mean": _finite(float(np.mean(finite_gn))) if len(finite_gn) else None,
        "grad_norm_max": _finite(float(np.max(finite_gn))) if len(finite_gn) else None,
        "grad_norm_cv": cv(gn[warmup:]),
        "grad_spike_rate": grad_spike_rate(gn, warmup, spike_factor, spike_window) if np.all(np.isfinite(gn)) else None,
        # Weighting-free statistics on the fixed probe batch.
        "probe_loss_osc": oscillation(probes["probe_loss"]),
        "probe_grad_cv": cv(np.asarray(pg[first_probe:], dtype=np.float64)) if pg else None,
        "probe_grad_osc": oscillation(pg[first_probe:]) if pg else None,
        "probe_grad_spike_frac": spike_fraction(pg, first_probe, spike_factor) if pg else None,
        **series_summary("decoder_norm", probe_series(probes, "decoder_norm")),
        **series_summary("skip_norm", probe_series(probes, "skip_norm")),
        **{
            k: v
            for k, v in series_summary("encoder_norm", probe_series(probes, "encoder_norm")).items()
            if not k.endswith("_osc")
        },
    }
    growth = parts.get("decoder_norm_growth")
    parts["decoder_norm_log_growth"] = max(0.0, math.log(growth)) if growth else None
    parts["instability"] = instability_score(parts, diverged)
    parts["collapsed"] = collapsed(probes["probe_loss"][-1] if probes["probe_loss"] else None, diverged)
    return parts

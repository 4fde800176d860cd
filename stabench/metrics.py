"""The one registry of metrics a record can hold: its name, which way is better, and where it is produced.

Search spaces (objectives), the CLI (`--metric` choices), the record (values at evaluation points) and the
leaderboard all read this table, so adding a metric means one row here and the code that produces it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Metric:
    """A scalar of `record["metrics"]`."""

    name: str
    direction: str  # "minimize" or "maximize"
    produced_by: str  # "scoring" (needs eval.samples > 0) or "telemetry" (every trial)
    eval_key: str | None = None  # the key of evaluation entries holding it per weight set (None: only at the end)
    quality: bool = False  # a sample-quality metric a leaderboard can rank by
    doc: str = ""


_ROWS = [
    Metric("fid_digits", "minimize", "scoring", "fid_digits", True, "FID with the digits CNN extractor"),
    Metric("kid_digits", "minimize", "scoring", "kid_digits", True, "KID with the digits CNN extractor"),
    Metric("fid", "minimize", "scoring", "fid", True, "FID with torch-fidelity's inception-v3-compat"),
    Metric("kid", "minimize", "scoring", "kid", True, "KID with torch-fidelity's inception-v3-compat"),
    Metric("best_probe_loss", "minimize", "telemetry", "probe_loss", True, "best weight set's unweighted probe MSE"),
    Metric("final_probe_loss", "minimize", "telemetry", "probe_loss", True, "raw weights' final unweighted probe MSE"),
    Metric("instability", "minimize", "telemetry", doc="sum of the weighting-free parts (docs/metrics.md)"),
    # weighting-free parts of `instability`, read on the fixed probe batch and on decoder-side features
    Metric("probe_grad_osc", "minimize", "telemetry", doc="oscillation of the probe batch's unweighted gradient norm"),
    Metric("probe_grad_spike_frac", "minimize", "telemetry", doc="probe points whose gradient norm spikes"),
    Metric("probe_loss_osc", "minimize", "telemetry", doc="oscillation of the log probe loss"),
    Metric("decoder_norm_osc", "minimize", "telemetry", doc="oscillation of the decoder's hidden-feature norm"),
    Metric("decoder_norm_log_growth", "minimize", "telemetry", doc="max(0, log final/initial decoder feature norm)"),
    # other weighting-free readouts
    Metric("probe_grad_cv", "minimize", "telemetry", doc="CV of the probe batch's unweighted gradient norm"),
    Metric("decoder_norm_max", "minimize", "telemetry", doc="largest decoder hidden-feature norm"),
    Metric("decoder_norm_growth", "minimize", "telemetry", doc="final / initial decoder hidden-feature norm"),
    Metric("skip_norm_max", "minimize", "telemetry", doc="largest norm of the long skips entering the decoder"),
    Metric("skip_norm_growth", "minimize", "telemetry", doc="final / initial norm of the skips entering the decoder"),
    Metric("skip_norm_osc", "minimize", "telemetry", doc="oscillation of the skips entering the decoder"),
    # diagnostics of the training loss: they depend on the weighting kind, so do not compare across kinds
    Metric("grad_norm_cv", "minimize", "telemetry", doc="CV of the weighted training gradient norm after burn-in"),
    Metric("grad_spike_rate", "minimize", "telemetry", doc="training gradient-norm spikes per 1,000 steps"),
    Metric("clip_frac", "minimize", "telemetry", doc="fraction of steps whose gradient was clipped"),
    # encoder side, before scaling: a diagnostic (records of the old readout called these feature_norm_*)
    Metric("encoder_norm_max", "minimize", "telemetry", doc="largest encoder-side skip norm, before scaling"),
    Metric("encoder_norm_growth", "minimize", "telemetry", doc="final / initial encoder-side skip norm"),
    Metric("feature_norm_max", "minimize", "telemetry", doc="old readout (schema 1): encoder-side, before scaling"),
    Metric("feature_norm_growth", "minimize", "telemetry", doc="old readout (schema 1): encoder-side growth"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _ROWS}
QUALITY_METRICS = tuple(m.name for m in _ROWS if m.quality)


def get_metric(name: str) -> Metric | None:
    """The registered metric called `name`, if any."""
    return METRICS.get(name)


def known_metric(name: str, key: str = "metric") -> Metric:
    """The registered metric called `name`; an unknown (or non-numeric) name is a UserError listing them."""
    if name not in METRICS:
        raise UserError(f"unknown metric '{name}'", key=key, allowed=", ".join(METRICS))
    return METRICS[name]

"""The one registry of metrics a record can hold: its name, which way is better, and where it is produced.

Search spaces (objectives), the CLI (`--metric` choices), the record (values at evaluation points) and the
leaderboard all read this table, so adding a metric means one row here and the code that produces it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    Metric("instability", "minimize", "telemetry", doc="the combined stability score (docs/metrics.md)"),
    Metric("grad_norm_cv", "minimize", "telemetry", doc="CV of the training gradient norm after burn-in"),
    Metric("grad_spike_rate", "minimize", "telemetry", doc="gradient-norm spikes per 1,000 steps"),
    Metric("probe_loss_osc", "minimize", "telemetry", doc="oscillation of the log probe loss"),
    Metric("feature_norm_max", "minimize", "telemetry", doc="largest long-skip feature norm on the probe batch"),
    Metric("feature_norm_growth", "minimize", "telemetry", doc="final / initial long-skip feature norm"),
    Metric("clip_frac", "minimize", "telemetry", doc="fraction of steps whose gradient was clipped"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _ROWS}
QUALITY_METRICS = tuple(m.name for m in _ROWS if m.quality)


def get_metric(name: str) -> Metric | None:
    """The registered metric called `name`, if any."""
    return METRICS.get(name)

"""The one registry of metrics a record can hold: its name, which way is better, its unit, what produces it.

Search spaces (objectives), the CLI (`--metric` choices, the trial summary), the record (values at evaluation
points, which metrics are text), W&B (`summary/<name>`), the leaderboard (ranking direction) and the metric table
in docs/metrics.md all read this table. Adding a metric means one row here and the code that produces it; a test
runs every kind of trial and fails when a trial writes a metric that has no row, or a row no trial writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import UserError

Direction = Literal["minimize", "maximize"]
# Who writes a metric into `record["metrics"]`: the stability summary of every trial (telemetry), the training
# loop of every trial (trial), the weight-set choice of every trial (selection), or sample scoring, which runs
# only with eval.samples > 0 (scoring: with the digits extractor, the `*_digits` rows; else inception's).
Producer = Literal["telemetry", "trial", "selection", "scoring"]


@dataclass(frozen=True)
class Metric:
    """A value of `record["metrics"]`."""

    name: str
    direction: Direction
    produced_by: Producer
    unit: str  # "" for a dimensionless number
    doc: str
    eval_key: str | None = None  # the key of evaluation entries holding it per weight set (None: only at the end)
    quality: bool = False  # a sample-quality metric a leaderboard can rank by
    text: bool = False  # a name, not a number (never ranked)
    extractor: str | None = None  # scoring rows: the feature extractor whose features it is computed on
    summary: bool = True  # a row of `stabench train`'s summary table


def _scoring(name: str, direction: Direction, unit: str, doc: str, extractor: str, **kw) -> list[Metric]:
    return [Metric(name, direction, "scoring", unit, doc, extractor=extractor, **kw)]


_ROWS: list[Metric] = [
    # Sample quality, scored against the held-out split with the chosen weight set (docs/metrics.md, "Scoring").
    *_scoring("fid_digits", "minimize", "", "FID with the digits CNN extractor", "digits", eval_key="fid_digits",
              quality=True),
    *_scoring("kid_digits", "minimize", "", "KID with the digits CNN extractor", "digits", eval_key="kid_digits",
              quality=True),
    *_scoring("fid_digits_auc", "minimize", "", "mean FID (digits) of the chosen weight set over evaluations",
              "digits"),
    *_scoring("fid_digits_floor", "minimize", "", "FID (digits) of training images scored like samples", "digits"),
    *_scoring("fid", "minimize", "", "FID with torch-fidelity's inception-v3-compat", "inception", eval_key="fid",
              quality=True),
    *_scoring("kid", "minimize", "", "KID with torch-fidelity's inception-v3-compat", "inception", eval_key="kid",
              quality=True),
    *_scoring("fid_auc", "minimize", "", "mean FID (inception) of the chosen weight set over evaluations",
              "inception"),
    *_scoring("fid_floor", "minimize", "", "FID (inception) of training images scored like samples", "inception"),
    Metric("fid_samples", "maximize", "scoring", "images", "samples per FID/KID", summary=False),
    # Which weight set (raw or an EMA) the final values come from, and what chose it.
    Metric("best_weights", "minimize", "selection", "", "the chosen weight set: raw or ema_<beta>", text=True),
    Metric("best_weights_by", "minimize", "selection", "", "what chose it: train-fid, test-fid or probe-loss",
           text=True, summary=False),
    Metric("best_probe_loss", "minimize", "selection", "", "best weight set's unweighted probe MSE at the end",
           eval_key="probe_loss", quality=True),
    # The fixed probe batch's unweighted eps-MSE: comparable across weighting kinds (1 = predicting zero noise).
    Metric("initial_probe_loss", "minimize", "trial", "", "raw weights' unweighted probe MSE at the first probe",
           summary=False),
    Metric("final_probe_loss", "minimize", "trial", "", "raw weights' final unweighted probe MSE",
           eval_key="probe_loss", quality=True, summary=False),  # the summary shows "probe loss initial -> final"
    Metric("final_loss", "minimize", "trial", "", "last training loss (weighted: not comparable across kinds)",
           summary=False),
    Metric("collapsed", "minimize", "telemetry", "", "1 when the final probe MSE is at the zero-predictor level "
           "(>= 0.5), else 0; none for a diverged run"),
    Metric("instability", "minimize", "telemetry", "", "sum of the weighting-free parts (docs/metrics.md)"),
    # The weighting-free parts of `instability`, read on the fixed probe batch and on decoder-side features.
    Metric("probe_grad_osc", "minimize", "telemetry", "", "oscillation of the probe batch's unweighted gradient norm"),
    Metric("probe_grad_spike_frac", "minimize", "telemetry", "", "share of probe points whose gradient norm spikes"),
    Metric("probe_loss_osc", "minimize", "telemetry", "", "oscillation of the log probe loss"),
    Metric("decoder_norm_osc", "minimize", "telemetry", "", "oscillation of the decoder's hidden-feature norm"),
    Metric("decoder_norm_log_growth", "minimize", "telemetry", "", "max(0, ln final/initial decoder feature norm)"),
    # Other weighting-free readouts.
    Metric("probe_grad_cv", "minimize", "telemetry", "", "CV of the probe batch's unweighted gradient norm"),
    Metric("decoder_norm_max", "minimize", "telemetry", "", "largest decoder hidden-feature norm (per sample)"),
    Metric("decoder_norm_growth", "minimize", "telemetry", "", "final / initial decoder hidden-feature norm"),
    Metric("skip_norm_max", "minimize", "telemetry", "", "largest norm of the long skips entering the decoder"),
    Metric("skip_norm_growth", "minimize", "telemetry", "", "final / initial norm of the skips entering the decoder"),
    Metric("skip_norm_osc", "minimize", "telemetry", "", "oscillation of the skips entering the decoder"),
    Metric("encoder_norm_max", "minimize", "telemetry", "", "largest encoder-side skip norm, before scaling"),
    Metric("encoder_norm_growth", "minimize", "telemetry", "", "final / initial encoder-side skip norm"),
    # Diagnostics of the training loss: they depend on the weighting kind, so do not compare them across kinds.
    Metric("grad_norm_cv", "minimize", "telemetry", "", "CV of the weighted training gradient norm after burn-in"),
    Metric("grad_spike_rate", "minimize", "telemetry", "1/1k steps", "training gradient-norm spikes per 1,000 steps"),
    Metric("grad_norm_mean", "minimize", "telemetry", "", "mean pre-clip training gradient norm after burn-in",
           summary=False),
    Metric("grad_norm_max", "minimize", "telemetry", "", "largest pre-clip training gradient norm after burn-in",
           summary=False),
    Metric("clip_frac", "minimize", "telemetry", "", "share of steps whose gradient was clipped"),
    Metric("skipped_frac", "minimize", "telemetry", "", "share of steps skipped by fp16 loss scaling (overflow)"),
]  # fmt: skip
METRICS: dict[str, Metric] = {m.name: m for m in _ROWS}
QUALITY_METRICS = tuple(m.name for m in _ROWS if m.quality)
TEXT_METRICS = tuple(m.name for m in _ROWS if m.text)
NUMERIC_METRICS = tuple(m.name for m in _ROWS if not m.text)


def get_metric(name: str) -> Metric | None:
    """The registered metric called `name`, if any."""
    return METRICS.get(name)


def known_metric(name: str, key: str = "metric") -> Metric:
    """The registered numeric metric called `name`; an unknown or text name is a UserError listing them."""
    if name not in NUMERIC_METRICS:
        raise UserError(f"unknown metric '{name}'", key=key, allowed=", ".join(NUMERIC_METRICS))
    return METRICS[name]


def markdown_table() -> str:
    """The registry as the Markdown table in docs/metrics.md (a test keeps the two equal)."""
    lines = ["| metric | better | unit | produced by | what it is |", "|---|---|---|---|---|"]
    for m in _ROWS:
        better = "–" if m.text else "lower" if m.direction == "minimize" else "higher"
        producer = f"scoring ({m.extractor})" if m.extractor else m.produced_by
        lines.append(f"| `{m.name}` | {better} | {m.unit or '–'} | {producer} | {m.doc} |")
    return "\n".join(lines) + "\n"

"""Leaderboard figures (matplotlib, deterministic), each as PNG (150 dpi) and SVG: probe curves and ScaleLong's
feature norms with 95% Student-t bands over seeds, the ranked metric over training, quality vs instability with
its intervals and the Pareto front, and knob importance (PED-ANOVA) of the sweeps' studies when they have enough
trials. A figure that cannot say anything is left out with the reason (`Figures.omitted`)."""

from __future__ import annotations

import math
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

from ..engine.telemetry import probe_series
from ..records import stats
from ..records.record import FINISHED
from .build import Leaderboard, curve, short_labels

MAX_CONFIGS = 8  # top-ranked configs drawn in the curve plots (legibility)
DPI = 150
# no version or date in the files, so regenerated figures are byte-identical
META = {".png": {"Software": None}, ".svg": {"Date": None, "Creator": None}}
BAND = "band: 95% Student-t interval of the mean over seeds (on log axes: of the mean log, around the geometric mean)"
MIN_IMPORTANCE_TRIALS = 20  # PED-ANOVA compares the top 10% with all trials: 2 trials in the top at 20
IMPORTANCE = "PED-ANOVA (optuna.importance.PedAnovaImportanceEvaluator, top 10% of trials vs all)"


@dataclass
class Figures:
    """The PNGs written (each with an SVG beside it) and, for each figure left out, why."""

    pngs: list[str] = field(default_factory=list)
    omitted: list[str] = field(default_factory=list)


def _setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 8, "svg.hashsalt": "stabench", "svg.fonttype": "none"}
    )  # SVG text stays text: searchable, editable in a paper's figure
    return plt


def t_band(ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per column of `ys` (seeds x steps, nan = no value): the mean and its 95% Student-t interval over the seeds
    with a value there (nan where fewer than two)."""
    with warnings.catch_warnings():  # all-NaN columns (smoothing tail, diverged seeds) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        n = np.sum(np.isfinite(ys), axis=0)
        mean = np.nanmean(ys, axis=0)
        sd = np.nanstd(ys, axis=0, ddof=1)
        half = np.where(n >= 2, sps.t.ppf((1 + stats.LEVEL) / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n), np.nan)
    return mean, mean - half, mean + half


def _band(ax, curves: list[tuple[list, list]], label: str, log: bool = False) -> None:
    """Mean over seeds with its t-interval band, on the steps all seeds share."""
    if not curves:
        return
    n = min(len(s) for s, _ in curves)
    steps = np.asarray(curves[0][0][:n])
    ys = np.asarray([[np.nan if v is None else v for v in y[:n]] for _, y in curves], dtype=float)
    if log:  # spread on a log axis is multiplicative: the interval of the mean log, drawn back on the axis
        with np.errstate(divide="ignore", invalid="ignore"):
            mean, lo, hi = np.exp(t_band(np.where(np.isfinite(ys) & (ys > 0), np.log(ys), np.nan)))
    else:
        mean, lo, hi = t_band(np.where(np.isfinite(ys), ys, np.nan))
    line = ax.plot(steps, mean, label=label, lw=1, marker="." if n < 10 else None)[0]
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")


def write_plots(records: list[dict], lb: Leaderboard, out: Path) -> Figures:
    """The leaderboard's figures: probe curves, decoder feature norms, the metric over training, quality vs
    instability."""
    plt = _setup()
    figures = Figures()
    by_hash: dict[str, list[dict]] = {}
    for r in records:
        if r["status"] in FINISHED:
            by_hash.setdefault(r["config_hash"], []).append(r)
    top = lb.rows[:MAX_CONFIGS]
    short, sweep = short_labels([r.config for r in lb.rows])
    names = dict(zip((r.config for r in lb.rows), short))  # the sweep goes into the title, not every label
    where = f"configs of sweep {sweep}; " if sweep else ""
    finished = {row.config_hash: by_hash.get(row.config_hash, []) for row in top}

    # Curves that compare configs use the fixed probe batch and the unweighted loss: a weighted training loss
    # (and its gradient) is not comparable across timestep weighting kinds.
    panels = [
        ("curves.png", ("probe_loss", "unweighted probe loss (fixed batch)", True),
         ("probe_grad_norm", "gradient norm of the unweighted probe loss", True)),
        ("feature_norms.png", ("decoder_norm", "decoder hidden-feature norm (ScaleLong's norm of feature)", False),
         ("skip_norm", "norm of the long skips entering the decoder (after scaling)", False)),
    ]  # fmt: skip
    for name, *series in panels:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for ax, (key, title, log) in zip(axes, series):
            for row in top:
                bands = [(r["probes"]["step"], probe_series(r["probes"], key)) for r in finished[row.config_hash]]
                _band(ax, [(x, y) for x, y in bands if y], names[row.config], log=log)
            ax.set(title=title, xlabel="step")
            if not ax.lines:
                ax.text(0.5, 0.5, "not in these records (older readout)", ha="center", transform=ax.transAxes)
        if axes[0].lines:
            axes[0].legend(fontsize=6)
        fig.suptitle(f"{where}mean over seeds; {BAND}", fontsize=7)
        figures.pngs.append(_save(fig, out / name, plt))

    steps = len(lb.eval_steps)
    if steps >= 2:
        figures.pngs.append(_metric_over_training(lb, finished, names, where, out, plt))
    else:
        figures.omitted.append(
            f"{lb.metric} over training: omitted (the records hold {steps} evaluation point{'s' * (steps != 1)}; "
            "a curve needs >= 2: set `eval.every` below `steps`)."
        )
    figures.pngs.append(_pareto(lb, names, where, out, plt))
    return figures


def _metric_over_training(lb: Leaderboard, finished: dict[str, list[dict]], names: dict, where: str, out: Path, plt):
    """The ranked metric at each evaluation point, per config (the weight set each trial chose)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in lb.rows[:MAX_CONFIGS]:
        curves = [list(zip(*points)) for r in finished[row.config_hash] if (points := curve(r, lb.metric))]
        _band(ax, [(list(s), list(v)) for s, v in curves], names[row.config])
    ax.set(xlabel="step", ylabel=f"{lb.metric} (weight set each trial chose)", title=f"{lb.metric} over training")
    if ax.lines:
        ax.legend(fontsize=6)
    fig.text(0.01, 0.01, f"{where}mean over seeds; {BAND}; non-finite values left out", fontsize=6)
    return _save(fig, out / "metric_over_training.png", plt)


def _pareto(lb: Leaderboard, names: dict, where: str, out: Path, plt) -> str:
    """Quality vs instability: each config's means with their 95% t-intervals, the front marked and joined."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    shown = [r for r in lb.rows if math.isfinite(r.quality.mean) and math.isfinite(r.instability.mean)]
    for row in shown:
        q, u = row.quality, row.instability
        xerr = [[q.mean - q.lo], [q.hi - q.mean]] if math.isfinite(q.hi - q.lo) else None
        yerr = [[u.mean - u.lo], [u.hi - u.mean]] if math.isfinite(u.hi - u.lo) else None
        color = "C3" if row.pareto else "C0"
        ax.errorbar([q.mean], [u.mean], xerr=xerr, yerr=yerr, fmt="*" if row.pareto else "o", color=color,
                    ms=8 if row.pareto else 4, elinewidth=0.7, capsize=2)  # fmt: skip
    front = sorted((r.quality.mean, r.instability.mean) for r in shown if r.pareto)
    if front:
        ax.plot(*zip(*front), color="C3", lw=0.8, ls="--")
    ax.margins(0.12)
    us = [r.instability.mean for r in shown]
    if us and min(us) > 0 and max(us) / min(us) > 100:
        ax.set_yscale("log")
    _label_inside(ax, [(r.quality.mean, r.instability.mean, names[r.config]) for r in shown])
    left_out = len(lb.rows) - len(shown)
    ax.set(
        xlabel=f"{lb.metric} (mean over seeds, {'lower' if lb.direction == 'minimize' else 'higher'} is better)",
        ylabel="instability (mean over seeds)",
        title="quality vs instability (★ Pareto front)",
    )
    note = f"{where}bars: 95% Student-t intervals over seeds"
    fig.text(0.01, 0.01, note + (f"; {left_out} config(s) with a diverged seed not drawn" if left_out else ""),
             fontsize=6)  # fmt: skip
    return _save(fig, out / "pareto.png", plt)


def _label_inside(ax, points: list[tuple[float, float, str]]) -> None:
    """Each point's label, on the side of the point that faces the middle of the axes, so none leaves them."""
    x0, x1 = ax.get_xlim()
    for x, y, text in points:
        right_half = (x - x0) > (x1 - x0) / 2
        ax.annotate(text, (x, y), fontsize=6, xytext=(-4 if right_half else 4, 4), textcoords="offset points",
                    ha="right" if right_half else "left", annotation_clip=True)  # fmt: skip


def _save(fig, path: Path, plt) -> str:
    """The figure as PNG at DPI and as SVG beside it; returns the PNG's path."""
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    for suffix in (".png", ".svg"):
        fig.savefig(path.with_suffix(suffix), metadata=META[suffix])
    plt.close(fig)
    return str(path)


def write_importance(study, out: Path) -> tuple[str | None, str | None]:
    """Knob importance of an Optuna study by PED-ANOVA, as a bar chart: (its PNG, None), or (None, why it is left
    out) below MIN_IMPORTANCE_TRIALS completed trials or when no knob took two values. Knobs that never changed
    are left out of the evaluation (an importance for them would be meaningless) and named in the figure."""
    import optuna

    name = study.study_name
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None, (
            f"knob importance of study `{name}`: omitted ({len(complete)} completed trials; {IMPORTANCE} needs "
            f">= {MIN_IMPORTANCE_TRIALS})."
        )
    knobs = sorted({k for t in complete for k in t.params})
    varied = [k for k in knobs if len({repr(t.params.get(k)) for t in complete}) > 1]
    if not varied:
        return None, f"knob importance of study `{name}`: omitted (no knob took two values in its trials)."
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MINIMIZE else -1.0
    target = None if len(study.directions) == 1 else (lambda t: sign * t.values[0])  # PED-ANOVA: lower is better
    with warnings.catch_warnings():  # its warnings about small regimes and custom targets go into our note
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varied, target=target
        )
    plt = _setup()
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.35 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C0")
    objective = "the objective" if target is None else "the first objective"
    ax.set(xlabel=f"importance for reaching the top 10% of {objective} (normalised to sum to 1)",
           title=f"knob importance, study '{name}', {len(complete)} completed trials")  # fmt: skip
    fixed = sorted(set(knobs) - set(varied))
    note = IMPORTANCE + (f"; never varied, left out: {', '.join(fixed)}" if fixed else "")
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(note, 130)), fontsize=6)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return _save(fig, out / f"importance-{safe}.png", plt), None

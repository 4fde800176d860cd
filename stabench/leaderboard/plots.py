"""Leaderboard figures (matplotlib, PNG, deterministic): training curves with seed bands, ScaleLong's
feature-norm figure, and quality vs instability with the Pareto front."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from ..engine.telemetry import probe_series
from ..records.record import FINISHED

MAX_CONFIGS = 8  # top-ranked configs drawn in the curve plots (legibility)
PNG_META = {"Software": None}  # no version string in the file, so regenerated PNGs are byte-identical


def _setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "font.size": 8, "svg.hashsalt": "stabench"})
    return plt


def _band(ax, curves: list[tuple[list, list]], label: str, log: bool = False) -> None:
    """Mean over seeds with a min-max band, on the steps all seeds share."""
    if not curves:
        return
    n = min(len(s) for s, _ in curves)
    steps = np.asarray(curves[0][0][:n])
    ys = np.asarray([np.asarray(y[:n], dtype=float) for _, y in curves])
    ys = np.where(np.isfinite(ys), ys, np.nan)
    with warnings.catch_warnings():  # all-NaN columns (smoothing tail, diverged seeds) are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, lo, hi = np.nanmean(ys, axis=0), np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    line = ax.plot(steps, mean, label=label, lw=1)[0]
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")


def write_plots(records: list[dict], lb, out: Path) -> list[str]:
    """The leaderboard's PNG figures (curves, decoder feature norms, quality vs instability); returns their names."""
    plt = _setup()
    by_hash: dict[str, list[dict]] = {}
    for r in records:
        by_hash.setdefault(r["config_hash"], []).append(r)
    top = lb.rows[:MAX_CONFIGS]
    paths = []

    # Curves that compare configs use the fixed probe batch and the unweighted loss: a weighted training loss
    # (and its gradient) is not comparable across timestep weighting kinds.
    finished = {row.config_hash: [r for r in by_hash[row.config_hash] if r["status"] in FINISHED] for row in top}
    panels = [
        ("curves.png", ("probe_loss", "unweighted probe loss (fixed batch; band = seeds min-max)", True),
         ("probe_grad_norm", "gradient norm of the unweighted probe loss", True)),
        ("feature_norms.png", ("decoder_norm", "decoder hidden-feature norm (ScaleLong's norm of feature)", False),
         ("skip_norm", "norm of the long skips entering the decoder (after scaling)", False)),
    ]  # fmt: skip
    for name, *series in panels:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for ax, (key, title, log) in zip(axes, series):
            for row in top:
                bands = [(r["probes"]["step"], probe_series(r["probes"], key)) for r in finished[row.config_hash]]
                _band(ax, [(x, y) for x, y in bands if y], row.config, log=log)
            ax.set(title=title, xlabel="step")
            if not ax.lines:
                ax.text(0.5, 0.5, "not in these records (older readout)", ha="center", transform=ax.transAxes)
        if axes[0].lines:
            axes[0].legend(fontsize=6)
        paths.append(_save(fig, out / name, plt))

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for row in lb.rows:
        q, u = row.quality.mean, row.instability.mean
        if math.isfinite(q) and math.isfinite(u):
            ax.scatter(
                [q],
                [u],
                marker="*" if row.pareto else "o",
                s=60 if row.pareto else 20,
                color="C3" if row.pareto else "C0",
            )
            ax.annotate(row.config, (q, u), fontsize=6, xytext=(3, 3), textcoords="offset points")
    front = sorted((r.quality.mean, r.instability.mean) for r in lb.rows if r.pareto)
    if front:
        ax.plot(*zip(*front), color="C3", lw=0.8, ls="--")
    ax.set(
        xlabel=f"{lb.metric} (mean over seeds)",
        ylabel="instability (mean over seeds)",
        title="quality vs instability (★ Pareto front)",
    )
    paths.append(_save(fig, out / "pareto.png", plt))
    return paths


def _save(fig, path: Path, plt) -> str:
    fig.tight_layout()
    fig.savefig(path, metadata=PNG_META)
    plt.close(fig)
    return str(path)


def write_importance(study, out: Path) -> str | None:
    """Knob importance of an Optuna study (fANOVA via `optuna.importance`), as a bar chart."""
    import optuna

    try:
        importances = optuna.importance.get_param_importances(
            study, target=None if len(study.directions) == 1 else lambda t: t.values[0]
        )
    except (RuntimeError, ValueError):  # too few complete trials, or nothing varied
        return None
    if not importances:
        return None
    plt = _setup()
    fig, ax = plt.subplots(figsize=(5.5, 0.4 + 0.35 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set(xlabel="importance (fANOVA, sums to 1)", title=f"knob importance: study '{study.study_name}'")
    return _save(fig, out / "importance.png", plt)

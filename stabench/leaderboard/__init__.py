"""Leaderboards: records grouped by config_hash across seeds, with the uncertainty that comes with them.

Per config (a typed `Row`): n seeds (flagged below 5), diverged and collapsed seeds, the mean, median and 95%
Student-t interval of the quality metric and of `instability` (and the mean of each of its parts, over the seeds
that recorded it), the paired delta vs the baseline on shared seeds with its t-interval and a Holm-corrected
significance mark, steps-to-target and speedup vs the baseline (with >= 3 evaluation points: a target every
baseline seed reaches, on the weight set each trial chose, interpolated between evaluation points; a miss counts
as infinity, AlgoPerf), the knobs that differ from the baseline, rank (tied where quality intervals overlap), and
the Pareto front of quality vs instability. Everything follows the metric's registered direction. Diverged
seeds are never dropped: their quality is the worst value, and any config with a diverged seed ranks below every
config without one.

Everything here is deterministic (sorted rows, no timestamps), so the same store regenerates byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from ..files import atomic_write_bytes, atomic_write_text
from .build import Leaderboard, Row, build_leaderboard, pareto_front, select_records
from .plots import Figures, write_importance, write_plots
from .render import csv_text, numeric_table, parquet_bytes, table, to_html, to_latex, to_markdown
from .tidy import long_table, summary_table

__all__ = ["Leaderboard", "Row", "build_leaderboard", "long_table", "numeric_table", "pareto_front",
           "select_records", "summary_table", "write_leaderboard"]  # fmt: skip


def write_leaderboard(
    records: list[dict],
    out_dir: str | Path,
    metric: str,
    baseline: str | None = None,
    plots: bool = True,
    studies: list | None = None,
) -> Leaderboard:
    """Write into `out_dir`: leaderboard.md/.html (formatted), leaderboard.csv/.parquet (one row per config, plain
    numbers; `seeds` a list in Parquet and "0;1;2" in CSV), leaderboard_long.csv/.parquet (one row per config x
    seed x metric) and leaderboard_summary.csv/.parquet (one row per config x metric), leaderboard.tex
    (booktabs + siunitx) and the figures (PNG and SVG; those left out, and why, in `Leaderboard.omitted`)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lb = build_leaderboard(records, metric, baseline)
    figures = Figures()
    if plots and lb.rows:
        figures = write_plots(records, lb, out)
        for study in studies or []:
            png, why = write_importance(study, out)
            figures.pngs += [png] if png else []
            figures.omitted += [why] if why else []
    lb.omitted = figures.omitted
    df = table(lb)
    atomic_write_text(out / "leaderboard.md", to_markdown(df, lb, figures.pngs, figures.omitted))
    tables = {"leaderboard": numeric_table(lb), "leaderboard_long": long_table(lb),
              "leaderboard_summary": summary_table(lb)}  # fmt: skip
    for name, numbers in tables.items():
        atomic_write_text(out / f"{name}.csv", csv_text(numbers))
        atomic_write_bytes(out / f"{name}.parquet", parquet_bytes(numbers))
    atomic_write_text(out / "leaderboard.tex", to_latex(lb))
    atomic_write_text(out / "leaderboard.html", to_html(df, lb, figures.pngs, figures.omitted))
    return lb

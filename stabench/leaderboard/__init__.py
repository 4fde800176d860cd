"""Leaderboards: records grouped by config_hash across seeds, with the uncertainty that comes with them.

Per config: n seeds (flagged below 5), diverged seeds, the mean and 95% Student-t interval of the quality metric
and of `instability` (and the mean of each of its parts), the paired delta vs the baseline on shared seeds with
its t-interval and a Holm-corrected significance mark, steps-to-target and speedup vs the baseline (a target
every baseline seed reaches, interpolated between evaluation points; a miss counts as infinity, AlgoPerf), the
knobs that differ from the baseline, rank, and the Pareto front of quality vs instability. Diverged seeds are
never dropped: their quality is +inf, and any config with a diverged seed ranks below every config without one.

Everything here is deterministic (sorted rows, no timestamps), so the same store regenerates byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

from ..record import atomic_write_bytes, atomic_write_text
from .build import Leaderboard, build_leaderboard, pareto_front, select_records
from .render import numeric_table, parquet_bytes, table, to_html, to_latex, to_markdown

__all__ = ["Leaderboard", "build_leaderboard", "pareto_front", "select_records", "write_leaderboard"]


def write_leaderboard(
    records: list[dict],
    out_dir: str | Path,
    metric: str,
    baseline: str | None = None,
    plots: bool = True,
    studies: list | None = None,
) -> Leaderboard:
    """Write leaderboard.md/.html (formatted), leaderboard.csv/.parquet (numbers), leaderboard.tex (booktabs) and PNG
    plots into `out_dir`."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lb = build_leaderboard(records, metric, baseline)
    df = table(lb)
    pngs = []
    if plots and lb.rows:
        from ..plots import write_plots

        pngs = write_plots(records, lb, out)
        from ..plots import write_importance

        pngs += [p for p in (write_importance(s, out) for s in studies or []) if p]
    atomic_write_text(out / "leaderboard.md", to_markdown(df, lb, pngs))
    numbers = numeric_table(lb)
    atomic_write_text(out / "leaderboard.csv", numbers.write_csv(float_precision=None))
    atomic_write_bytes(out / "leaderboard.parquet", parquet_bytes(numbers))
    atomic_write_text(out / "leaderboard.tex", to_latex(lb))
    atomic_write_text(out / "leaderboard.html", to_html(df, lb, pngs))
    return lb

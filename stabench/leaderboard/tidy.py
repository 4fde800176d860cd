"""Long ("tidy") tables of a leaderboard, for notebooks: one value per line, with the columns that say what it is
(`ranked_by`, `metric`, `direction`, `baseline`, `config`, `sweep`, `seed`), so the tables of any two leaderboards
stack with `pl.concat` and split again with `filter`/`group_by`.

- `long_table`: one line per config, seed and metric (the ranked metric and `instability`): the per-seed values.
- `summary_table`: one line per config and metric: n, mean, std, 95% t-interval, median and the paired delta vs
  the baseline, computed by stabench/records/stats.py like the leaderboard's own rows.
"""

from __future__ import annotations

import polars as pl

from ..records import stats
from ..records.record import direction_of
from .build import Leaderboard


def long_table(lb: Leaderboard) -> pl.DataFrame:
    """The per-seed values behind the leaderboard, one line per config x seed x metric (inf: a diverged seed,
    counted as the worst value; null: not recorded), ranked metric first, then in rank order."""
    order = {r.config_hash: k for k, r in enumerate(lb.rows)}
    by_rank = pl.col("config_hash").replace_strict(order, return_dtype=pl.Int64)
    ranked = lb.per_seed.sort(pl.col("metric") != lb.metric, "metric", by_rank, "seed", maintain_order=True)
    return ranked.select(
        pl.lit(lb.metric, pl.Utf8).alias("ranked_by"),
        "metric",
        pl.col("metric").replace_strict(_directions(lb), return_dtype=pl.Utf8).alias("direction"),
        pl.lit(lb.baseline, pl.Utf8).alias("baseline"),
        "config",
        "config_hash",
        "sweep",
        "seed",
        "value",
        "status",
        "run_id",
    )


def _directions(lb: Leaderboard) -> dict[str, str]:
    return {m: direction_of(m) for m in lb.per_seed["metric"].unique()}


SUMMARY_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "ranked_by": pl.Utf8, "metric": pl.Utf8, "direction": pl.Utf8, "baseline": pl.Utf8, "config": pl.Utf8,
    "config_hash": pl.Utf8, "sweep": pl.Utf8, "rank": pl.Int64, "n": pl.Int64, "seeds": pl.List(pl.Int64),
    **dict.fromkeys(["mean", "std", "ci_lo", "ci_hi", "median", "delta", "delta_ci_lo", "delta_ci_hi", "delta_p"],
                    pl.Float64),
    "delta_n": pl.Int64, "delta_significant": pl.Boolean,
}  # fmt: skip


def summary_table(lb: Leaderboard) -> pl.DataFrame:
    """One line per config x metric, in rank order: the summary over its seeds and the paired delta vs the
    baseline's same metric on shared seeds (null for the baseline's own line and without a baseline).
    `delta_significant` (Holm over every config) is the leaderboard's and exists for the ranked metric only."""
    rows = {r.config_hash: r for r in lb.rows}
    values = lb.per_seed.drop_nulls("value")
    # the config the leaderboard compares with, by hash: a baseline's label may name several configs in a store
    base = values.filter(pl.col("config_hash") == lb.baseline_hash) if lb.baseline_hash else values.clear()
    lines = []
    for (metric, config_hash), part in values.group_by("metric", "config_hash", maintain_order=True):
        row = rows[config_hash]
        summary = stats.summarize(part["value"].to_list())
        paired = part.join(base.filter(pl.col("metric") == metric), on="seed", suffix="_base")
        compared = lb.baseline_hash is not None and config_hash != lb.baseline_hash and paired.height > 0
        delta = stats.paired_delta(paired["value"].to_list(), paired["value_base"].to_list()) if compared else None
        lines.append({
            "ranked_by": lb.metric, "metric": metric, "direction": direction_of(str(metric)), "baseline": lb.baseline,
            "config": row.config, "config_hash": config_hash, "sweep": part["sweep"][0], "rank": row.rank,
            "n": summary.n, "seeds": part["seed"].to_list(), "mean": summary.mean, "std": summary.std,
            "ci_lo": summary.lo, "ci_hi": summary.hi, "median": summary.median,
            **dict(zip(("delta", "delta_ci_lo", "delta_ci_hi", "delta_p", "delta_n"),
                       (delta.mean, delta.lo, delta.hi, delta.p, delta.n) if delta else [None] * 5)),
            "delta_significant": row.significant if metric == lb.metric else None,
        })  # fmt: skip
    table = pl.DataFrame(lines, schema=SUMMARY_SCHEMA).with_columns(pl.col(pl.Float64).fill_nan(None))
    return table.sort(pl.col("metric") != lb.metric, "metric", "rank", "config", maintain_order=True)

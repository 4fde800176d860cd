"""Building a leaderboard: records grouped by config, per-config statistics, the reference and the ranking.

Every comparison follows the quality metric's registered direction (stabench/records/metrics.py): the ranking, the
Pareto front, the baseline's target and steps-to-target. Instability is always minimised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import polars as pl

from ..config import flatten
from ..engine.telemetry import INSTABILITY_PARTS
from ..errors import UserError
from ..records import stats
from ..records.metrics import get_metric
from ..records.record import FINISHED, Status, direction_of, eval_value, label, metrics_of, record_value, tags_of
from ..records.store import Store

ALPHA = 0.05  # family-wise level of the significance marks (Holm over every config's delta vs the baseline)
MIN_EVAL_POINTS = 3  # a crossing placed between fewer evaluation points says more about the grid than the run
FIXED_WEIGHTS = {"final_probe_loss": "raw"}  # metrics read on one weight set, whatever the trial chose


def pareto_front(points: list[tuple[float, float]], direction: str = "minimize") -> list[bool]:
    """For (quality, instability) pairs, quality better in `direction` and instability minimised: True where no
    other point is at least as good in both and better in one (a non-finite point is never on the front)."""
    s = stats.sign(direction)
    frame = pl.DataFrame({"q": [s * q for q, _ in points], "u": [u for _, u in points]}, schema=_POINTS)
    return on_front(frame.with_row_index("i")).to_list()


_POINTS = {"q": pl.Float64, "u": pl.Float64}


def on_front(points: pl.DataFrame) -> pl.Series:
    """Pareto flags of rows `i`, `q` (quality oriented so that lower is better) and `u` (instability), in row order:
    a row is on the front when it is finite and no other row is at least as good in both and better in one (nan
    compares with nothing)."""
    pts = points.select("i", pl.col("q", "u").fill_nan(None))
    other = pts.select(pl.col("i").alias("j"), pl.col("q").alias("q2"), pl.col("u").alias("u2"))
    dominates = (pl.col("q2") <= pl.col("q")) & (pl.col("u2") <= pl.col("u"))
    dominates &= (pl.col("q2") < pl.col("q")) | (pl.col("u2") < pl.col("u"))
    dominated = (
        pts.join(other, how="cross")
        .filter(pl.col("i") != pl.col("j"))
        .group_by("i")
        .agg(dominates.any().alias("dominated"))
    )
    flags = pts.join(dominated, on="i", how="left").sort("i")
    finite = pl.col("q").is_finite().fill_null(False) & pl.col("u").is_finite().fill_null(False)
    return flags.select((finite & ~pl.col("dominated").fill_null(False)).alias("pareto"))["pareto"]


def curve(rec: dict, metric: str) -> list[tuple[int, float | None]]:
    """A record's (step, value) evaluation curve of `metric` on one weight set throughout: the one the trial
    chose (`best_weights`, on training FID for scored trials, so the curve never picks the best reported value
    point by point), or the one the metric is read on (FIXED_WEIGHTS). Records that chose none (older ones)
    take the best weight set at each point."""
    registered = get_metric(metric)
    key = registered.eval_key if registered else metric
    weights = FIXED_WEIGHTS.get(metric) or metrics_of(rec).get("best_weights")
    points = []
    for entry in rec.get("evals") or []:
        per_weights = entry.get(key) if key else None
        if isinstance(per_weights, dict) and per_weights:
            value = per_weights[weights] if weights in per_weights else eval_value(entry, metric)
            points.append((entry["step"], value))
    return points


def record_steps_to_target(rec: dict, metric: str, target: float) -> float:
    """The step at which a record's curve of `metric` first reaches `target` (interpolated; inf if never)."""
    points = curve(rec, metric)
    return stats.steps_to_target([s for s, _ in points], [v for _, v in points], target, direction_of(metric))


def eval_points(records: list[dict], metric: str) -> int:
    """How many distinct evaluation steps measured `metric` in these records."""
    return len({step for r in records for step, _ in curve(r, metric)})


@dataclass
class ConfigGroup:
    """The finished records of one config, one per seed."""

    config_hash: str
    label: str
    config: dict
    records: list[dict] = field(default_factory=list)

    def by_seed(self, fn) -> dict[int, float]:
        """`fn(record)` for each seed, in seed order."""
        return {r["seed"]: fn(r) for r in sorted(self.records, key=lambda r: r["seed"])}


def group_records(records: list[dict]) -> list[ConfigGroup]:
    """Finished records (ok/diverged) by config_hash; one record per seed (the first by run_id)."""
    groups: dict[str, ConfigGroup] = {}
    for rec in sorted(records, key=lambda r: r["run_id"]):
        if rec["status"] not in FINISHED:
            continue
        g = groups.setdefault(rec["config_hash"], ConfigGroup(rec["config_hash"], label(rec), rec["config"]))
        if all(r["seed"] != rec["seed"] for r in g.records):
            g.records.append(rec)
    return list(groups.values())


def short_labels(configs: list[str]) -> tuple[list[str], str | None]:
    """The config labels without their sweep when they name one sweep only (`cosine@s` -> `cosine`, `s#3` -> `#3`),
    and that sweep (None: labels kept as they are)."""
    named = {c.split("@", 1)[1] if "@" in c else c.split("#", 1)[0] for c in configs if "@" in c or "#" in c}
    if len(named) != 1:
        return configs, None
    (sweep,) = named
    return [c.removesuffix(f"@{sweep}").removeprefix(f"{sweep}#").replace(f"{sweep}#", "#") for c in configs], sweep


def knob_diff(config: dict, baseline: dict | None) -> str:
    """The config keys whose values differ from the baseline's, as key=value."""
    if baseline is None:
        return ""
    a, b = flatten(config), flatten(baseline)
    skip = ("seed", "device")
    diffs = [f"{k}={a[k]}" for k in sorted(a) if k not in skip and a.get(k) != b.get(k)]
    return ", ".join(diffs)


@dataclass(frozen=True)
class Row:
    """One config's line: its seeds' statistics, and its comparison with the baseline on shared seeds."""

    config: str  # the label (reference name, `<point>@<sweep>`, `<sweep>#<trial>` or hash prefix)
    config_hash: str
    seeds: tuple[int, ...]
    diverged: int
    collapsed: tuple[int, int] | None  # (collapsed runs, runs that carry the flag); None when none carries it
    quality: stats.Summary  # the leaderboard's metric; a diverged seed counts as its worst value
    instability: stats.Summary  # over the seeds that recorded it (a diverged seed counts as +inf)
    parts: dict[str, float | None]  # each instability part's mean over the seeds that recorded it (None: none)
    knobs: str  # the config keys that differ from the baseline's
    delta: stats.PairedDelta | None = None  # config - baseline; None for the baseline itself or without one
    significant: bool | None = None  # the delta survives Holm at ALPHA (None without a delta)
    steps_to_target: float | None = None  # None where steps-to-target is not computed
    speedup: float | None = None
    rank: int = 0  # shared with the row above when their quality intervals overlap
    pareto: bool = False

    @property
    def n(self) -> int:
        """How many seeds."""
        return len(self.seeds)

    @property
    def small_n(self) -> bool:
        """Fewer than stats.SMALL_N seeds."""
        return stats.small_n(self.n)


@dataclass
class Leaderboard:
    """The rows (one per config, ranked) and what the header says about them."""

    metric: str
    direction: str  # the metric's: "minimize" or "maximize"
    baseline: str | None
    rows: list[Row]
    target: float | None
    kendall_tau: float | None
    tau_note: str | None  # why there is no Kendall tau
    steps_note: str | None  # why there is no steps-to-target
    n_records: int
    floor: float | None
    samples: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    old_readout: int = 0  # records written before the decoder-side readout (schema 1)
    old_floor: bool = False  # the floor comes from the old readout (two halves of the reference)
    per_seed: pl.DataFrame = field(default_factory=pl.DataFrame)  # `seed_values`: what each row summarises
    omitted: list[str] = field(default_factory=list)  # figures left out, and why (filled by write_leaderboard)
    baseline_hash: str | None = None  # the config the rows are compared with (one label may name several configs)


@dataclass(frozen=True)
class Reference:
    """The baseline config's per-seed values that every row is compared with."""

    group: ConfigGroup | None
    quality: dict[int, float]
    target: float | None
    steps: dict[int, float]


def reference(groups: list[ConfigGroup], baseline: str | None, metric: str, with_steps: bool = True) -> Reference:
    """The baseline's per-seed quality and, `with_steps`, the target every baseline seed reaches (its worst seed's
    final value) and its steps to that target."""
    base = next((g for g in groups if g.label == baseline), None) if baseline else None
    if base is None:
        return Reference(None, {}, None, {})
    quality = base.by_seed(lambda r: record_value(r, metric))
    target = stats.target_from_baseline(list(quality.values()), direction_of(metric)) if with_steps else math.nan
    if math.isnan(target):
        return Reference(base, quality, None, {})
    return Reference(base, quality, target, base.by_seed(lambda r: record_steps_to_target(r, metric, target)))


def instability_of(rec: dict) -> float | None:
    """A record's instability: +inf for a diverged run, None when not recorded (missing is neither 0 nor inf)."""
    if rec["status"] == Status.DIVERGED:
        return math.inf
    value = metrics_of(rec).get("instability")
    return float(value) if value is not None and math.isfinite(value) else None


def _mean_of(g: ConfigGroup, metric: str) -> float | None:
    """The mean of a metric over the seeds that recorded a finite value (None when none did)."""
    values = [v for r in g.records if (v := metrics_of(r).get(metric)) is not None and math.isfinite(v)]
    return float(np.mean(values)) if values else None


def collapse_count(g: ConfigGroup) -> tuple[int, int] | None:
    """(collapsed, of): the runs flagged `collapsed` among those that carry the flag; None when none does."""
    flags = [v for r in g.records if (v := metrics_of(r).get("collapsed")) is not None]
    return (sum(bool(v) for v in flags), len(flags)) if flags else None


def config_row(g: ConfigGroup, metric: str, ref: Reference) -> Row:
    """One config's statistics over its seeds, and against the baseline on shared seeds."""
    q = g.by_seed(lambda r: record_value(r, metric))
    shared = sorted(set(q) & set(ref.quality))
    compared = ref.group is not None and ref.group is not g  # the baseline's own row has no delta
    row = Row(
        config=g.label,
        config_hash=g.config_hash,
        seeds=tuple(q),
        diverged=sum(r["status"] == Status.DIVERGED for r in g.records),
        collapsed=collapse_count(g),
        quality=stats.summarize(list(q.values())),
        instability=stats.summarize([v for v in g.by_seed(instability_of).values() if v is not None]),
        parts={k: _mean_of(g, k) for k in INSTABILITY_PARTS},
        knobs=knob_diff(g.config, ref.group.config if ref.group else None),
        delta=stats.paired_delta([q[s] for s in shared], [ref.quality[s] for s in shared]) if compared else None,
    )
    if ref.target is None:
        return row
    steps = g.by_seed(lambda r: record_steps_to_target(r, metric, ref.target))
    ratios = [stats.speedup(ref.steps[s], steps[s]) for s in sorted(set(steps) & set(ref.steps))]
    return replace(
        row, steps_to_target=stats.median_with_inf(list(steps.values())), speedup=stats.median_with_inf(ratios)
    )


def mark_significance(rows: list[Row]) -> list[Row]:
    """Each delta's Holm mark at ALPHA, over every config's test against the baseline."""
    tested = [r for r in rows if r.delta is not None]
    marks = dict(zip((r.config_hash for r in tested), stats.holm([r.delta.p for r in tested], ALPHA)))
    return [replace(r, significant=marks[r.config_hash]) if r.config_hash in marks else r for r in rows]


def _interval_or_point(q: stats.Summary) -> tuple[float, float]:
    """A quality summary's interval, or its mean as a point where there is no interval (one seed)."""
    return (q.lo, q.hi) if not (math.isnan(q.lo) or math.isnan(q.hi)) else (q.mean, q.mean)


_RANKING = {"i": pl.UInt32, "diverged": pl.Boolean, "q": pl.Float64, "q_finite": pl.Float64, "u": pl.Float64,
            "config": pl.Utf8, "lo": pl.Float64, "hi": pl.Float64}  # fmt: skip


def ranking_frame(rows: list[Row], direction: str) -> pl.DataFrame:
    """One line per row, quality oriented so that lower is better (times stats.sign): `q` its mean, `q_finite` the
    mean of its finite seeds, `lo`-`hi` its interval (one seed: its point), `u` the instability mean; nan as null."""
    s = stats.sign(direction)
    oriented = [sorted((s * lo, s * hi)) for lo, hi in map(_interval_or_point, (r.quality for r in rows))]
    frame = pl.DataFrame(
        {
            "i": range(len(rows)),
            "diverged": [r.diverged > 0 for r in rows],
            "q": [s * r.quality.mean for r in rows],
            "q_finite": [None if r.quality.finite_mean is None else s * r.quality.finite_mean for r in rows],
            "u": [r.instability.mean for r in rows],
            "config": [r.config for r in rows],
            "lo": [lo for lo, _ in oriented],
            "hi": [hi for _, hi in oriented],
        },
        schema=_RANKING,
    )
    return frame.with_columns(pl.col(pl.Float64).fill_nan(None))


def rank_rows(rows: list[Row], direction: str) -> list[Row]:
    """Configs without divergences first, then by mean quality in `direction`, then by the mean of the finite
    seeds, instability and label (a missing one last); rank = 1 + the configs whose quality interval lies entirely
    on the better side of this one's (one seed: its point; the rule of stats.tied_ranks); the Pareto front."""
    frame = ranking_frame(rows, direction)
    others = frame.select(pl.col("hi").alias("other_hi"))
    ranks = (
        frame.join(others, how="cross")
        .group_by("i")
        .agg((1 + (pl.col("other_hi") < pl.col("lo")).sum()).alias("rank"))  # a null bound is better than nothing
    )
    ranked = (
        frame.with_columns(pareto=on_front(frame))
        .join(ranks, on="i")
        .sort("diverged", "q", "q_finite", "u", "config", nulls_last=True, maintain_order=True)
    )
    return [replace(rows[i], rank=k, pareto=p) for i, k, p in ranked.select("i", "rank", "pareto").iter_rows()]


def ranking_stability(groups: list[ConfigGroup], metric: str) -> tuple[float | None, str | None]:
    """Kendall tau between the rankings of two disjoint seed halves, or None and why."""
    values = {g.config_hash: g.by_seed(lambda r: record_value(r, metric)) for g in groups}
    tau = stats.kendall_tau_halves(values, direction=direction_of(metric))
    n_seeds = len({s for per_seed in values.values() for s in per_seed})
    if tau is not None:
        return tau, None
    if n_seeds < stats.TAU_MIN_SEEDS:
        return None, f"needs >= {stats.TAU_MIN_SEEDS} seeds; these records have {n_seeds}"
    if len(groups) < stats.TAU_MIN_CONFIGS:
        return None, f"needs >= {stats.TAU_MIN_CONFIGS} configs; this leaderboard has {len(groups)}"
    return None, f"needs >= {stats.TAU_MIN_CONFIGS} configs with seeds in both halves and ranks that differ"


def steps_note(records: list[dict], metric: str) -> str | None:
    """Why steps-to-target is left out (None when it is computed)."""
    points = eval_points(records, metric)
    if points >= MIN_EVAL_POINTS:
        return None
    return f"steps-to-target needs >= {MIN_EVAL_POINTS} evaluation points; these records have {points}"


SEED_SCHEMA = {"config": pl.Utf8, "config_hash": pl.Utf8, "sweep": pl.Utf8, "seed": pl.Int64, "run_id": pl.Utf8,
               "status": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64}  # fmt: skip


def seed_values(groups: list[ConfigGroup], metric: str) -> pl.DataFrame:
    """Long: one line per config, seed and metric (the leaderboard's metric, then `instability`), with the value
    the statistics use (a diverged seed: the worst value; an instability not recorded: null)."""
    measures = [(metric, lambda r: record_value(r, metric))]
    if metric != "instability":
        measures.append(("instability", instability_of))
    lines = [
        {"config": g.label, "config_hash": g.config_hash, "sweep": tags_of(r).get("sweep"), "seed": r["seed"],
         "run_id": r["run_id"], "status": str(r["status"]), "metric": name, "value": value_of(r)}
        for name, value_of in measures
        for g in groups
        for r in sorted(g.records, key=lambda r: r["seed"])
    ]  # fmt: skip
    return pl.DataFrame(lines, schema=SEED_SCHEMA)


def build_leaderboard(records: list[dict], metric: str, baseline: str | None = None) -> Leaderboard:
    """Group records by config, compute every row's statistics, mark significance (Holm), rank, find the front."""
    direction = direction_of(metric)
    groups = group_records(records)
    finished = [r for g in groups for r in g.records]
    no_steps = steps_note(finished, metric)
    ref = reference(groups, baseline, metric, with_steps=no_steps is None)
    rows = rank_rows(mark_significance([config_row(g, metric, ref) for g in groups]), direction)
    tau, tau_note = ranking_stability(groups, metric)
    # the floor at the trial's own sample count (schema 2) is preferred to the old readout's two halves
    floors = [
        (r.get("schema", 1) < 2, metrics_of(r)[f"{metric}_floor"])
        for r in finished
        if metrics_of(r).get(f"{metric}_floor")
    ]
    return Leaderboard(
        metric=metric,
        direction=direction,
        baseline=baseline,
        rows=rows,
        target=ref.target,
        kendall_tau=tau,
        tau_note=tau_note,
        steps_note=no_steps,
        n_records=len(records),
        floor=min(floors)[1] if floors else None,
        samples=sorted({metrics_of(r)["fid_samples"] for r in finished if metrics_of(r).get("fid_samples")}),
        eval_steps=sorted({e["step"] for r in finished for e in r.get("evals") or []}),
        old_readout=sum(r.get("schema", 1) < 2 for r in finished),
        old_floor=bool(floors) and min(floors)[0],
        per_seed=seed_values(groups, metric),
        baseline_hash=ref.group.config_hash if ref.group else None,
    )


def select_records(store: Store, sweeps: tuple[str, ...], baseline: str | None, metric: str) -> list[dict]:
    """The store's records of these sweeps (all when none are named) plus the baseline's; at least one must have
    `metric`."""
    chosen = [
        r
        for r in store.records()
        if not sweeps or tags_of(r).get("sweep") in sweeps or (baseline and tags_of(r).get("baseline") == baseline)
    ]
    if not chosen:
        raise UserError(f"no records in {store.root}" + (f" for sweeps {list(sweeps)}" if sweeps else ""), key="store")
    have = {k for r in chosen for k in metrics_of(r)}
    if metric not in have:
        raise UserError(f"no record has '{metric}'", key="metric", allowed=sorted(have))
    return chosen

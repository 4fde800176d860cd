"""Building a leaderboard: records grouped by config, per-config statistics, the reference and the ranking."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import stats
from ..config import flatten
from ..errors import UserError
from ..record import FINISHED, Status, eval_value, label, metrics_of, record_value, tags_of
from ..store import Store
from ..telemetry import INSTABILITY_PARTS

ALPHA = 0.05  # family-wise level of the significance marks (Holm over every config's delta vs the baseline)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (quality, instability) pairs, both minimised: True where no other point is at least as good in
    both and better in one."""
    flags = []
    for i, (q, u) in enumerate(points):
        dominated = any((q2 <= q and u2 <= u) and (q2 < q or u2 < u) for j, (q2, u2) in enumerate(points) if j != i)
        flags.append(math.isfinite(q) and math.isfinite(u) and not dominated)
    return flags


def record_steps_to_target(rec: dict, metric: str, target: float) -> float:
    """The step at which a record's eval curve of `metric` first reaches `target` (interpolated; inf if never)."""
    curve = [(e["step"], v) for e in rec.get("evals") or [] if (v := eval_value(e, metric)) is not None]
    return stats.steps_to_target([s for s, _ in curve], [v for _, v in curve], target)


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


def knob_diff(config: dict, baseline: dict | None) -> str:
    """The config keys whose values differ from the baseline's, as key=value."""
    if baseline is None:
        return ""
    a, b = flatten(config), flatten(baseline)
    skip = ("seed", "device")
    diffs = [f"{k}={a[k]}" for k in sorted(a) if k not in skip and a.get(k) != b.get(k)]
    return ", ".join(diffs)


@dataclass
class Leaderboard:
    """The rows (one per config, ranked) and what the header says about them."""

    metric: str
    baseline: str | None
    rows: list[dict]
    target: float | None
    kendall_tau: float | None
    n_records: int
    floor: float | None
    samples: list[int] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    old_readout: int = 0  # records written before the decoder-side readout (schema 1)
    old_floor: bool = False  # the floor comes from the old readout (two halves of the reference)


@dataclass(frozen=True)
class Reference:
    """The baseline config's per-seed values that every row is compared with."""

    group: ConfigGroup | None
    quality: dict[int, float]
    target: float | None
    steps: dict[int, float]


def reference(groups: list[ConfigGroup], baseline: str | None, metric: str) -> Reference:
    """The baseline's per-seed quality, the target every baseline seed reaches, and its steps to that target."""
    base = next((g for g in groups if g.label == baseline), None) if baseline else None
    if base is None:
        return Reference(None, {}, None, {})
    quality = base.by_seed(lambda r: record_value(r, metric))
    target = stats.target_from_baseline(list(quality.values()))
    target = None if math.isnan(target) else target
    steps = base.by_seed(lambda r: record_steps_to_target(r, metric, target)) if target is not None else {}
    return Reference(base, quality, target, steps)


def config_row(g: ConfigGroup, metric: str, ref: Reference) -> dict:
    """One config's statistics over its seeds, and against the baseline on shared seeds."""
    q = g.by_seed(lambda r: record_value(r, metric))
    u = g.by_seed(lambda r: record_value(r, "instability"))
    finite_q = [v for v in q.values() if math.isfinite(v)]
    q_mean, q_lo, q_hi = stats.t_interval(list(q.values()))
    u_mean, u_lo, u_hi = stats.t_interval(list(u.values()))
    row = {
        "config": g.label,
        "config_hash": g.config_hash,
        "n": len(q),
        "small_n": stats.small_n(len(q)),
        "diverged": sum(r["status"] == Status.DIVERGED for r in g.records),
        "seeds": ",".join(str(s) for s in q),
        "q_mean": q_mean,
        "q_std": float(np.std(finite_q, ddof=1)) if len(finite_q) == len(q) > 1 else None,
        "q_ci": (q_lo, q_hi),
        "q_finite_mean": float(np.mean(finite_q)) if finite_q else None,
        "u_mean": u_mean,
        "u_ci": (u_lo, u_hi),
        "parts": {k: _mean_of(g, k) for k in INSTABILITY_PARTS},
        "knobs": knob_diff(g.config, ref.group.config if ref.group else None),
    }
    shared = sorted(set(q) & set(ref.quality))
    compared = ref.group is not None and ref.group is not g  # the baseline's own row has no delta
    row["delta"] = stats.paired_delta([q[s] for s in shared], [ref.quality[s] for s in shared]) if compared else None
    if ref.target is not None:
        steps = g.by_seed(lambda r: record_steps_to_target(r, metric, ref.target))
        row["steps_to_target"] = stats.median_with_inf(list(steps.values()))
        ratios = [stats.speedup(ref.steps[s], steps[s]) for s in sorted(set(steps) & set(ref.steps))]
        row["speedup"] = stats.median_with_inf(ratios)
    return row


def _mean_of(g: ConfigGroup, metric: str) -> float | None:
    """The mean of a metric over the seeds that recorded it (None when none did)."""
    values = [metrics_of(r)[metric] for r in g.records if metrics_of(r).get(metric) is not None]
    return float(np.mean(values)) if values else None


def build_leaderboard(records: list[dict], metric: str, baseline: str | None = None) -> Leaderboard:
    """Group records by config, compute every row's statistics, mark significance (Holm), rank, find the front."""
    groups = group_records(records)
    ref = reference(groups, baseline, metric)
    rows = [config_row(g, metric, ref) for g in groups]
    deltas = [r["delta"] for r in rows if r["delta"] is not None and r["config"] != baseline]
    for d, significant in zip(deltas, stats.holm([d.p for d in deltas], ALPHA)):
        next(r for r in rows if r["delta"] is d)["significant"] = significant
    # Rank: configs without divergences first, then by mean quality, then by instability, then by label.
    rows.sort(key=lambda r: (r["diverged"] > 0, r["q_mean"], r["q_finite_mean"] or math.inf, r["u_mean"], r["config"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    for r, on_front in zip(rows, pareto_front([(r["q_mean"], r["u_mean"]) for r in rows])):
        r["pareto"] = on_front
    finished = [r for g in groups for r in g.records]
    # the floor at the trial's own sample count (schema 2) is preferred to the old readout's two halves
    floors = [
        (r.get("schema", 1) < 2, metrics_of(r)[f"{metric}_floor"])
        for r in finished
        if metrics_of(r).get(f"{metric}_floor")
    ]
    return Leaderboard(
        metric,
        baseline,
        rows,
        ref.target,
        stats.kendall_tau_halves({g.config_hash: g.by_seed(lambda r: record_value(r, metric)) for g in groups}),
        len(records),
        min(floors)[1] if floors else None,
        sorted({metrics_of(r)["fid_samples"] for r in finished if metrics_of(r).get("fid_samples")}),
        sorted({e["step"] for r in finished for e in r.get("evals") or []}),
        sum(r.get("schema", 1) < 2 for r in finished),
        bool(floors) and min(floors)[0],
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

"""Leaderboards: records grouped by config_hash across seeds, with the uncertainty that comes with them.

Per config: n seeds, diverged seeds, mean/std and a 95% bootstrap CI of the quality metric and of
`instability`, the paired delta vs the baseline on shared seeds, steps-to-target and speedup vs the
baseline (AlgoPerf: a run that never reaches the target counts as infinity), the knobs that differ from
the baseline, rank, and the Pareto front of quality vs instability. Diverged seeds are never dropped:
their quality is +inf, and any config with a diverged seed ranks below every config without one.

Everything here is deterministic (fixed bootstrap seed, sorted rows, no timestamps), so the same store
regenerates byte-identical files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from .config import flatten
from .errors import UserError
from .record import FINISHED, Status, eval_value, label, metrics_of, record_value, tags_of
from .store import Store

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def bootstrap_ci(values: list[float], stat=np.mean, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap CI of `stat` over `values` (None with fewer than 2 values or any non-finite)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or not np.all(np.isfinite(x)):
        return None
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    idx = rng.integers(0, len(x), size=(BOOTSTRAP_RESAMPLES, len(x)))
    stats = stat(x[idx], axis=1)
    lo, hi = np.percentile(stats, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def mean_std(values: list[float]) -> tuple[float, float | None]:
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return math.inf, None
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else None


def steps_to_target(evals: list[tuple[int, float]], target: float) -> float:
    """First evaluation step whose value is <= target; infinity if never (AlgoPerf's convention)."""
    for step, value in evals:
        if value is not None and value <= target:
            return float(step)
    return math.inf


def lower_median(values: list[float]) -> float:
    """The median, taking the lower middle value for even counts (so [s, inf] gives s, not inf)."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), 0.5, method="lower"))


def speedup(baseline_steps: list[float], steps: list[float]) -> float | None:
    """Median baseline steps-to-target / median steps-to-target of this config: 0 if the config never
    reaches the target, inf if only the baseline never does, None (undefined) if neither does."""
    b, s = lower_median(baseline_steps), lower_median(steps)
    if math.isinf(s):
        return None if math.isinf(b) else 0.0
    return math.inf if math.isinf(b) else b / s


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (quality, instability) pairs, both minimised: True where no other point is at least as good in
    both and better in one."""
    flags = []
    for i, (q, u) in enumerate(points):
        dominated = any((q2 <= q and u2 <= u) and (q2 < q or u2 < u) for j, (q2, u2) in enumerate(points) if j != i)
        flags.append(math.isfinite(q) and math.isfinite(u) and not dominated)
    return flags


def paired_delta(q: float, base: float) -> float | None:
    """q - base on one seed; a diverged seed (inf) on one side gives -inf/+inf, on both sides None."""
    if math.isinf(q) and math.isinf(base):
        return None
    return q - base


def kendall_tau(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import kendalltau

    if len(a) < 2:
        return None
    tau = kendalltau(a, b).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


# ---------------------------------------------------------------------------------------------
# From records to rows
# ---------------------------------------------------------------------------------------------


def record_eval_curve(rec: dict, metric: str) -> list[tuple[int, float]]:
    return [(e["step"], v) for e in rec.get("evals") or [] if (v := eval_value(e, metric)) is not None]


@dataclass
class ConfigGroup:
    config_hash: str
    label: str
    config: dict
    records: list[dict] = field(default_factory=list)

    def by_seed(self, fn) -> dict[int, float]:
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
    if baseline is None:
        return ""
    a, b = flatten(config), flatten(baseline)
    skip = ("seed", "device")
    diffs = [f"{k}={a[k]}" for k in sorted(a) if k not in skip and a.get(k) != b.get(k)]
    return ", ".join(diffs)


@dataclass
class Leaderboard:
    metric: str
    baseline: str | None
    rows: list[dict]
    target: float | None
    kendall_tau: float | None
    n_records: int
    floor: float | None
    samples: list[int] = field(default_factory=list)


def build_leaderboard(records: list[dict], metric: str, baseline: str | None = None) -> Leaderboard:
    groups = group_records(records)
    base = next((g for g in groups if g.label == baseline), None) if baseline else None
    base_q = base.by_seed(lambda r: record_value(r, metric)) if base else {}
    finite_base = [v for v in base_q.values() if math.isfinite(v)]
    target = lower_median(finite_base) if finite_base else None
    base_steps = (
        base.by_seed(lambda r: steps_to_target(record_eval_curve(r, metric), target))
        if base and target is not None
        else {}
    )

    rows = []
    for g in groups:
        q = g.by_seed(lambda r: record_value(r, metric))
        u = g.by_seed(lambda r: record_value(r, "instability"))
        finite_q = [v for v in q.values() if math.isfinite(v)]
        n_div = sum(r["status"] == Status.DIVERGED for r in g.records)
        q_mean, q_std = mean_std(list(q.values()))
        u_mean, u_std = mean_std(list(u.values()))
        row = {
            "config": g.label,
            "config_hash": g.config_hash,
            "n": len(q),
            "diverged": n_div,
            "seeds": ",".join(str(s) for s in q),
            "q_mean": q_mean,
            "q_std": q_std,
            "q_ci": bootstrap_ci(list(q.values())),
            "q_finite_mean": float(np.mean(finite_q)) if finite_q else None,
            "u_mean": u_mean,
            "u_std": u_std,
            "u_ci": bootstrap_ci(list(u.values())),
        }
        shared = sorted(set(q) & set(base_q)) if base else []
        deltas = [paired_delta(q[s], base_q[s]) for s in shared]
        finite_deltas = [d for d in deltas if d is not None and math.isfinite(d)]
        row["delta"] = (
            float(np.mean(deltas))
            if deltas and len(finite_deltas) == len(deltas)
            else (float(np.mean([d for d in deltas if d is not None])) if any(d is not None for d in deltas) else None)
        )
        row["delta_ci"] = bootstrap_ci(deltas) if len(finite_deltas) == len(deltas) else None
        row["delta_n"] = len(shared)
        if target is not None:
            steps = g.by_seed(lambda r: steps_to_target(record_eval_curve(r, metric), target))
            row["steps_to_target"] = lower_median(list(steps.values()))
            row["speedup"] = speedup(list(base_steps.values()), list(steps.values()))
            ratios = [speedup([base_steps[s]], [steps[s]]) for s in sorted(set(steps) & set(base_steps))]
            row["speedup_ci"] = bootstrap_ci(ratios, stat=np.median) if ratios and None not in ratios else None
        row["knobs"] = knob_diff(g.config, base.config if base else None)
        rows.append(row)

    # Rank: configs without divergences first, then by mean quality, then by instability, then by label.
    rows.sort(key=lambda r: (r["diverged"] > 0, r["q_mean"], r["q_finite_mean"] or math.inf, r["u_mean"], r["config"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    for r, on_front in zip(rows, pareto_front([(r["q_mean"], r["u_mean"]) for r in rows])):
        r["pareto"] = on_front
    floors = [r["metrics"].get(f"{metric}_floor") for r in records if metrics_of(r).get(f"{metric}_floor")]
    samples = sorted({r["metrics"]["fid_samples"] for r in records if metrics_of(r).get("fid_samples")})
    return Leaderboard(
        metric,
        baseline,
        rows,
        target,
        seed_half_tau(groups, metric),
        len(records),
        floors[0] if floors else None,
        samples,
    )


def seed_half_tau(groups: list[ConfigGroup], metric: str) -> float | None:
    """Kendall tau between the config rankings from two disjoint halves of the seeds (>= 4 seeds)."""
    seeds = sorted({r["seed"] for g in groups for r in g.records})
    if len(seeds) < 4:
        return None
    half_a, half_b = set(seeds[0::2]), set(seeds[1::2])
    a, b = [], []
    for g in groups:
        qa = [record_value(r, metric) for r in g.records if r["seed"] in half_a]
        qb = [record_value(r, metric) for r in g.records if r["seed"] in half_b]
        if qa and qb:
            a.append(float(np.mean(qa)))
            b.append(float(np.mean(qb)))
    return kendall_tau(a, b) if len(a) >= 2 else None


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "n/a"


def table(lb: Leaderboard) -> pl.DataFrame:
    """The leaderboard as a flat table of strings (what the .md/.csv/.html files show)."""
    m = lb.metric
    names = [
        "rank",
        "config",
        "n",
        "diverged",
        f"{m} mean ± std",
        f"{m} 95% CI",
        "Δ vs baseline",
        "Δ 95% CI",
        "instability",
        "instability 95% CI",
        "steps to target",
        "speedup",
        "speedup 95% CI",
        "Pareto",
        "knobs vs baseline",
        "config_hash",
    ]
    cols: dict[str, list] = {k: [] for k in names}
    for r in lb.rows:
        vals = [
            r["rank"],
            r["config"],
            r["n"],
            r["diverged"],
            fmt(r["q_mean"]) + (f" ± {fmt(r['q_std'], 2)}" if r["q_std"] is not None else ""),
            fmt_ci(r["q_ci"]),
            fmt(r["delta"]) if r["delta_n"] else "–",
            fmt_ci(r["delta_ci"]) if r["delta_n"] else "–",
            fmt(r["u_mean"]),
            fmt_ci(r["u_ci"]),
            fmt(r.get("steps_to_target")),
            fmt(r.get("speedup"), 3),
            fmt_ci(r.get("speedup_ci")),
            "★" if r["pareto"] else "",
            r["knobs"] or "–",
            r["config_hash"],
        ]
        for k, v in zip(cols, vals):
            cols[k].append(str(v))
    return pl.DataFrame(cols)


def header_lines(lb: Leaderboard) -> list[str]:
    n_seeds = sorted({r["n"] for r in lb.rows})
    lines = [
        f"Metric: `{lb.metric}` (lower is better), from {lb.n_records} records in {len(lb.rows)} configs; "
        f"seeds per config: {', '.join(map(str, n_seeds)) or '–'}"
        + (f"; {', '.join(map(str, lb.samples))} samples per FID/KID" if lb.samples else "")
        + "."
    ]
    if lb.baseline and lb.target is None and not any(r["config"] == lb.baseline for r in lb.rows):
        lines.append(
            f"Baseline `{lb.baseline}` has no records here: no deltas or speedups (run it into this store "
            "with `stabench baselines`, or pass --baseline with a label from the table)."
        )
    elif lb.baseline:
        lines.append(
            f"Baseline: `{lb.baseline}`; Δ is paired on shared seeds; target for steps-to-target = the "
            f"baseline's median final {lb.metric} ({fmt(lb.target)}); ∞ = never reached (AlgoPerf)."
        )
    if lb.floor is not None:
        lines.append(f"Floor (two halves of the real data): {lb.metric} = {fmt(lb.floor)}.")
    if any(r["n"] < 2 for r in lb.rows):
        lines.append("Configs with one seed have no confidence interval (n/a).")
    lines.append(
        f"Ranking stability (Kendall tau, two disjoint seed halves): {fmt(lb.kendall_tau, 3)}"
        + ("" if lb.kendall_tau is not None else " (needs >= 4 seeds)")
        + "."
    )
    lines.append(
        "Diverged seeds count as ∞ and rank their config below every config without divergence. "
        "★ = Pareto front of quality vs instability. CIs: 95% percentile bootstrap over seeds "
        f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})."
    )
    return lines


def to_markdown(df: pl.DataFrame, lb: Leaderboard, plots: list[str]) -> str:
    cols = [c for c in df.columns if c != "config_hash"]
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [
        "# Leaderboard",
        "",
        *header_lines(lb),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in df.select(cols).iter_rows():
        lines.append("| " + " | ".join(esc(v) for v in row) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def to_html(df: pl.DataFrame, lb: Leaderboard, plots: list[str]) -> str:
    import html

    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in df.iter_rows())
    imgs = "".join(f'<p><img src="{Path(p).name}" alt="{Path(p).stem}"></p>' for p in plots)
    notes = "".join(f"<p>{html.escape(line)}</p>" for line in header_lines(lb))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>stabench leaderboard</title><style>"
        "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}"
        f"</style></head><body><h1>Leaderboard</h1>{notes}<table><tr>{head}</tr>{body}</table>{imgs}</body></html>\n"
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


def write_leaderboard(
    records: list[dict],
    out_dir: str | Path,
    metric: str,
    baseline: str | None = None,
    plots: bool = True,
    studies: list | None = None,
) -> Leaderboard:
    """Write leaderboard.md/.csv/.html (and PNG plots) into `out_dir`."""
    from .record import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lb = build_leaderboard(records, metric, baseline)
    df = table(lb)
    pngs = []
    if plots and lb.rows:
        from .plots import write_plots

        pngs = write_plots(records, lb, out)
        from .plots import write_importance

        pngs += [p for p in (write_importance(s, out) for s in studies or []) if p]
    atomic_write_text(out / "leaderboard.md", to_markdown(df, lb, pngs))
    atomic_write_text(out / "leaderboard.csv", df.write_csv())
    atomic_write_text(out / "leaderboard.html", to_html(df, lb, pngs))
    return lb

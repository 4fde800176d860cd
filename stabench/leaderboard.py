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

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from . import stats
from .config import flatten
from .errors import UserError
from .record import FINISHED, Status, eval_value, label, metrics_of, record_value, tags_of
from .store import Store
from .telemetry import INSTABILITY_PARTS

ALPHA = 0.05  # family-wise level of the significance marks (Holm over every config's delta vs the baseline)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (quality, instability) pairs, both minimised: True where no other point is at least as good in
    both and better in one."""
    flags = []
    for i, (q, u) in enumerate(points):
        dominated = any((q2 <= q and u2 <= u) and (q2 < q or u2 < u) for j, (q2, u2) in enumerate(points) if j != i)
        flags.append(math.isfinite(q) and math.isfinite(u) and not dominated)
    return flags


# ---------------------------------------------------------------------------------------------
# From records to rows
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, ∞ for infinity, – for none."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    """[lo, hi], or n/a when there is no interval."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci and not any(map(math.isnan, ci)) else "n/a"


def _delta_cells(r: dict) -> list[str]:
    d = r.get("delta")
    if d is None or d.n == 0:
        return ["–", "–", "–"]
    mark = " *" if r.get("significant") else ""
    return [fmt(d.mean) + mark, fmt_ci((d.lo, d.hi)), fmt(d.p, 2)]


def table(lb: Leaderboard) -> pl.DataFrame:
    """The leaderboard as a flat table of strings (what the .md/.csv/.html files show)."""
    m = lb.metric
    names = ["rank", "config", "n", "diverged", f"{m} mean ± std", f"{m} 95% t-CI", "Δ vs baseline",
             "Δ 95% t-CI", "Δ p (paired t)", "instability", "instability 95% t-CI",
             *(f"{k}" for k in INSTABILITY_PARTS), "steps to target", "speedup", "Pareto", "knobs vs baseline",
             "config_hash"]  # fmt: skip
    cols: dict[str, list] = {k: [] for k in names}
    for r in lb.rows:
        vals = [
            r["rank"],
            r["config"],
            f"{r['n']}{' (small n)' if r['small_n'] else ''}",
            r["diverged"],
            fmt(r["q_mean"]) + (f" ± {fmt(r['q_std'], 2)}" if r["q_std"] is not None else ""),
            fmt_ci(r["q_ci"]),
            *_delta_cells(r),
            fmt(r["u_mean"]),
            fmt_ci(r["u_ci"]),
            *(fmt(r["parts"][k], 3) for k in INSTABILITY_PARTS),
            fmt(r.get("steps_to_target")),
            fmt(r.get("speedup"), 3),
            "★" if r["pareto"] else "",
            r["knobs"] or "–",
            r["config_hash"],
        ]
        for k, v in zip(cols, vals):
            cols[k].append(str(v))
    return pl.DataFrame(cols)


def numeric_table(lb: Leaderboard) -> pl.DataFrame:
    """The leaderboard as plain numbers, one row per config (leaderboard.csv/.parquet): inf for a target never
    reached or a diverged mean, null where a value does not exist (the baseline's own delta, a 1-seed interval)."""
    m = lb.metric

    def num(x) -> float | None:
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)

    rows = []
    for r in lb.rows:
        d = r.get("delta") if r.get("delta") is not None and r["delta"].n else None
        rows.append({
            "rank": r["rank"], "config": r["config"], "config_hash": r["config_hash"], "n": r["n"],
            "small_n": r["small_n"], "diverged": r["diverged"], "seeds": r["seeds"],
            f"{m}_mean": num(r["q_mean"]), f"{m}_std": num(r["q_std"]),
            f"{m}_ci_lo": num(r["q_ci"][0]), f"{m}_ci_hi": num(r["q_ci"][1]),
            "delta": num(d.mean) if d else None, "delta_ci_lo": num(d.lo) if d else None,
            "delta_ci_hi": num(d.hi) if d else None, "delta_p": num(d.p) if d else None,
            "delta_significant": r.get("significant"),
            "instability_mean": num(r["u_mean"]), "instability_ci_lo": num(r["u_ci"][0]),
            "instability_ci_hi": num(r["u_ci"][1]), **{k: num(r["parts"][k]) for k in INSTABILITY_PARTS},
            "steps_to_target": num(r.get("steps_to_target")), "speedup": num(r.get("speedup")),
            "pareto": r["pareto"], "knobs": r["knobs"] or "",
        })  # fmt: skip
    schema = {k: (pl.Float64 if k not in _NON_FLOAT else _NON_FLOAT[k]) for k in rows[0]} if rows else None
    return pl.DataFrame(rows, schema=schema)


_NON_FLOAT = {"rank": pl.Int64, "config": pl.Utf8, "config_hash": pl.Utf8, "n": pl.Int64, "small_n": pl.Boolean,
              "diverged": pl.Int64, "seeds": pl.Utf8, "delta_significant": pl.Boolean, "pareto": pl.Boolean,
              "knobs": pl.Utf8}  # fmt: skip


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "∞": r"$\infty$", "–": "--", "±": r"$\pm$"}  # fmt: skip


def tex(text: str) -> str:
    """`text` safe inside a LaTeX table cell."""
    return "".join(_TEX.get(c, c) for c in text)


def to_latex(lb: Leaderboard) -> str:
    """A booktabs table for a paper: config, n, the metric's mean and 95% t-CI, the paired delta vs the baseline
    and its CI ($^*$ = significant after Holm), and instability."""
    head = ["config", "$n$", tex(lb.metric), r"95\% CI", r"$\Delta$ vs baseline", r"$\Delta$ 95\% CI", "instability"]
    lines = ["% generated by stabench leaderboard; needs \\usepackage{booktabs}", r"\begin{tabular}{lrlllll}",
             r"\toprule", " & ".join(head) + r" \\", r"\midrule"]  # fmt: skip
    for r in lb.rows:
        d = r.get("delta")
        shown = d is not None and d.n > 0
        mark = "$^*$" if r.get("significant") else ""
        cells = [tex(r["config"]), str(r["n"]), tex(fmt(r["q_mean"])), tex(fmt_ci(r["q_ci"])),
                 tex(fmt(d.mean)) + mark if shown else "--", tex(fmt_ci((d.lo, d.hi))) if shown else "--",
                 tex(fmt(r["u_mean"]))]  # fmt: skip
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def header_lines(lb: Leaderboard) -> list[str]:
    """The notes above the table: what was measured, against what, and how to read it."""
    n_seeds = sorted({r["n"] for r in lb.rows})
    lines = [
        f"Metric: `{lb.metric}` (lower is better), from {lb.n_records} records in {len(lb.rows)} configs; "
        f"seeds per config: {', '.join(map(str, n_seeds)) or '–'}"
        + (f"; {', '.join(map(str, lb.samples))} samples per FID/KID" if lb.samples else "")
        + (f"; evaluated at steps {', '.join(map(str, lb.eval_steps))}" if lb.eval_steps else "")
        + "."
    ]
    if lb.baseline and not any(r["config"] == lb.baseline for r in lb.rows):
        lines.append(
            f"Baseline `{lb.baseline}` has no records here: no deltas or speedups (run it into this store "
            "with `stabench baselines`, or pass --baseline with a label from the table)."
        )
    elif lb.baseline:
        target = fmt(lb.target) if lb.target is not None else "none (a baseline seed diverged)"
        lines.append(
            f"Baseline: `{lb.baseline}`. Δ is paired on shared seeds, with a Student-t interval and the paired "
            f"t-test's p; * = significant at {ALPHA:g} after Holm's correction over every config. Target for "
            f"steps-to-target = the baseline's worst seed's final {lb.metric}, so every baseline seed reaches it "
            f"({target}); steps are interpolated between evaluation points, ∞ = never reached (AlgoPerf); "
            "speedup = median over shared seeds of baseline / config steps (∞ counted as the largest value)."
        )
    if lb.floor is not None:
        how = "two halves of the reference, old readout" if lb.old_floor else "training images scored like samples"
        lines.append(f"Floor ({how}): {lb.metric} = {fmt(lb.floor)}.")
    if any(r["small_n"] for r in lb.rows):
        lines.append(f"(small n) = fewer than {stats.SMALL_N} seeds: wide intervals, fragile ranks.")
    lines.append(
        f"Ranking stability (Kendall tau, two disjoint seed halves): {fmt(lb.kendall_tau, 3)}"
        + ("" if lb.kendall_tau is not None else " (needs >= 4 seeds)")
        + "."
    )
    lines.append(
        "Diverged seeds count as ∞ and rank their config below every config without divergence. "
        "★ = Pareto front of quality vs instability. Intervals: 95% Student-t over seeds. instability = "
        + " + ".join(INSTABILITY_PARTS)
        + " (weighting-free, docs/metrics.md); its parts are means over seeds."
    )
    if lb.old_readout:
        lines.append(
            f"{lb.old_readout} records come from the old readout (schema 1): their instability is the old, "
            "weighting-dependent formula and they lack its new parts (–); compare such rows only with each other."
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


def _parquet_bytes(df: pl.DataFrame) -> bytes:
    """The table as Parquet bytes (no statistics: the same table gives the same bytes)."""
    import io

    buf = io.BytesIO()
    df.write_parquet(buf, statistics=False)
    return buf.getvalue()


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
    from .record import atomic_write_bytes, atomic_write_text

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
    numbers = numeric_table(lb)
    atomic_write_text(out / "leaderboard.csv", numbers.write_csv(float_precision=None))
    atomic_write_bytes(out / "leaderboard.parquet", _parquet_bytes(numbers))
    atomic_write_text(out / "leaderboard.tex", to_latex(lb))
    atomic_write_text(out / "leaderboard.html", to_html(df, lb, pngs))
    return lb

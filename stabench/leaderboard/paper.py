"""ScaleLong's table beside ours: the report `stabench reproduce scalelong` writes (docs/scalelong.md).

From the records of the ten reference configs (`baselines/scalelong-cifar10-d{12,16}*.yaml`, several seeds each):
the feature-norm ratio of each scaling mode to the original long skips at the paper's iteration, the FID over
training, the steps to the paper's FID target, and the speedup over the original skips. Every number of ours
comes with its n and 95% Student-t interval across seeds; where the budget ends before the paper's point, the
cell says so instead of extrapolating. Deterministic: the same records give the same Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..records import stats
from ..records.record import direction_of
from .build import curve, record_steps_to_target

# ScaleLong's scaling modes (sail-sg/ScaleLong `scalelong: 0..4`) in the paper's order, as our `lsc.mode`.
MODES = {
    "none": "0 original",
    "inv_sqrt2": "1 1/sqrt2-CS",
    "constant": "2 CS (kappa)",
    "learnable": "3 LS (shared gate)",
    "learnable_per_skip": "4 LS (per skip)",
}
PAPER_ITERATION = 30_000  # the paper's feature-norm figure
# The paper's feature norms at 30k iterations (x1e4), read off its figure; LS per skip is not in it.
PAPER_NORMS = {
    12: {"none": 2.0, "inv_sqrt2": 1.4, "learnable": 1.1, "constant": 1.0},
    16: {"none": 5.5, "inv_sqrt2": 3.6, "learnable": 2.2, "constant": 2.2},
}
PAPER_SPEEDUP = 1.5  # "about 1.5x faster training to a given FID"
# U-ViT-S/2's reported CIFAR-10 FID-50k (Bao et al. 2023), the model this recipe trains: the default target.
PAPER_FID_TARGET = 3.11
NOT_REACHED = "not reached at this budget"
NORM_SERIES = "skip_norm"  # the long skips as they enter the decoder, all together (docs/metrics.md)


@dataclass(frozen=True)
class Arm:
    """The finished records of one depth and scaling mode, one per seed."""

    depth: int
    mode: str
    records: tuple[dict, ...]

    def by_seed(self) -> dict[int, dict]:
        return {r["seed"]: r for r in sorted(self.records, key=lambda r: r["seed"])}


def arms(records: Iterable[dict]) -> dict[tuple[int, str], Arm]:
    """Records grouped by (U-ViT depth, lsc.mode); the last record of a seed wins."""
    grouped: dict[tuple[int, str], dict[int, dict]] = {}
    for r in records:
        cfg = r["config"]
        key = (int(cfg["workload"].get("depth") or 0), cfg["lsc"]["mode"])
        grouped.setdefault(key, {})[r["seed"]] = r
    return {k: Arm(k[0], k[1], tuple(v.values())) for k, v in sorted(grouped.items())}


# ---------------------------------------------------------------------------------------------
# Numbers with their n and interval
# ---------------------------------------------------------------------------------------------


def fmt(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "nan"
    return "inf" if math.isinf(x) else f"{x:.{digits}g}"


def with_interval(mean: float, lo: float, hi: float, n: int) -> str:
    """'m [lo, hi] (n=k)'; one value has no interval."""
    if n == 0:
        return "n=0"
    band = f" [{fmt(lo)}, {fmt(hi)}]" if not (math.isnan(lo) or math.isnan(hi)) else ""
    return f"{fmt(mean)}{band} (n={n})"


def mean_cell(values: list[float]) -> str:
    return with_interval(*stats.t_interval(values), len(values))


# ---------------------------------------------------------------------------------------------
# Feature norms at the paper's iteration
# ---------------------------------------------------------------------------------------------


def norm_at(record: dict, step: int, series: str = NORM_SERIES) -> float | None:
    """The probe's feature norm at `step`, if the record probed there."""
    probes = record.get("probes") or {}
    steps = probes.get("step") or []
    if step not in steps or series not in probes:
        return None
    value = probes[series][steps.index(step)]
    return float(value) if value is not None else None


def last_common_probe(records: Iterable[dict]) -> int | None:
    """The last probe step every record has (where a short run's ratio is read)."""
    common = None
    for r in records:
        steps = set((r.get("probes") or {}).get("step") or [])
        common = steps if common is None else common & steps
    return max(common) if common else None


def norm_ratio(arm: Arm, original: Arm, step: int) -> str:
    """The geometric mean over shared seeds of norm(mode) / norm(original) at `step`, with its interval. A seed
    pair without a probe there, or with a norm of 0 or inf (a diverged run), is left out and counted."""
    mine, theirs = arm.by_seed(), original.by_seed()
    logs, unprobed, not_finite = [], 0, 0
    for seed in sorted(set(mine) & set(theirs)):
        a, b = norm_at(mine[seed], step), norm_at(theirs[seed], step)
        if a is None or b is None:
            unprobed += 1
        elif a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b):
            logs.append(math.log(a / b))
        else:
            not_finite += 1
    if not logs:
        return NOT_REACHED if not not_finite else f"no finite ratio ({not_finite} seed pair(s) with a norm of 0 or inf)"
    ratio, lo, hi = stats.geometric_mean_ratio(logs)
    left_out = [f"{unprobed} seed pair(s) not probed there"] * bool(unprobed) + [
        f"{not_finite} with a norm of 0 or inf"
    ] * bool(not_finite)
    return with_interval(ratio, lo, hi, len(logs)) + "".join(f"; {x}" for x in left_out)


def norm_table(table: dict[tuple[int, str], Arm], depths: list[int], iteration: int) -> list[str]:
    lines = [
        f"| depth | mode | paper norm (x1e4) | paper ratio | ours at {iteration:,} | ours at the last shared probe |",
        "|---|---|---|---|---|---|",
    ]
    for depth in depths:
        original = table.get((depth, "none"))
        paper = PAPER_NORMS.get(depth, {})
        for mode, name in MODES.items():
            arm = table.get((depth, mode))
            p = paper.get(mode)
            paper_cells = (fmt(p, 2), fmt(p / paper["none"], 2)) if p is not None else ("—", "—")
            if arm is None or original is None:
                ours, last_cell = "no records", "no records"
            else:
                ours = norm_ratio(arm, original, iteration)
                last = last_common_probe(arm.records + original.records)
                last_cell = f"{norm_ratio(arm, original, last)} at {last:,}" if last is not None else "no probes"
            lines.append(f"| {depth} | {name} | {paper_cells[0]} | {paper_cells[1]} | {ours} | {last_cell} |")
    return lines


# ---------------------------------------------------------------------------------------------
# FID over training, steps to the target, speedup
# ---------------------------------------------------------------------------------------------


def fid_curve(record: dict, metric: str) -> list[tuple[int, float]]:
    """(step, FID) on the weight set the trial chose; a missing value counts as the worst."""
    return [(s, math.inf if v is None else float(v)) for s, v in curve(record, metric)]


def shown_steps(steps: list[int], most: int = 6) -> list[int]:
    """At most `most` of the evaluation steps, spread evenly in log-step, always with the last."""
    if len(steps) <= most:
        return steps
    picks = np.unique(np.geomspace(1, len(steps), most).round().astype(int) - 1)
    return [steps[i] for i in picks]


def fid_table(table: dict[tuple[int, str], Arm], depths: list[int], metric: str) -> list[str]:
    steps = sorted({s for arm in table.values() for r in arm.records for s, _ in fid_curve(r, metric)})
    if not steps:
        return [f"No evaluation measured `{metric}` in these records (eval.samples 0?)."]
    shown = shown_steps(steps)
    lines = ["| depth | mode | " + " | ".join(f"step {s:,}" for s in shown) + " |", "|---|---|" + "---|" * len(shown)]
    for depth in depths:
        for mode, name in MODES.items():
            arm = table.get((depth, mode))
            cells = []
            for s in shown:
                at_step = [dict(fid_curve(r, metric)).get(s) for r in arm.records] if arm else []
                values = [v for v in at_step if v is not None]
                cells.append(mean_cell(values) if values else NOT_REACHED)
            lines.append(f"| {depth} | {name} | " + " | ".join(cells) + " |")
    return lines


def steps_cell(arm: Arm, metric: str, target: float) -> str:
    """Mean steps to `target` over the seeds that reached it, with how many did."""
    steps = [record_steps_to_target(r, metric, target) for r in arm.records]
    reached = [s for s in steps if math.isfinite(s)]
    if not reached:
        return f"{NOT_REACHED} (0/{len(steps)} seeds)"
    return f"{mean_cell(reached)}; {len(reached)}/{len(steps)} seeds reached it"


def speedup_cell(arm: Arm, original: Arm, metric: str, target: float) -> str:
    """Geometric mean over shared seeds of steps(original) / steps(mode) to `target`, with its interval. Seed pairs
    where only one side reached the target are counted apart, by which side: they have no finite ratio, and a
    mode that reaches a target the original never does is the strongest result, not a shortfall."""
    mine, theirs = arm.by_seed(), original.by_seed()
    logs, one_sided = [], {"only this mode": 0, "only the original": 0, "neither": 0}
    for seed in sorted(set(mine) & set(theirs)):
        base = record_steps_to_target(theirs[seed], metric, target)
        ratio = stats.speedup(base, record_steps_to_target(mine[seed], metric, target))
        if ratio == math.inf:
            one_sided["only this mode"] += 1
        elif ratio == 0.0:
            one_sided["only the original"] += 1
        elif math.isnan(ratio):
            one_sided["neither"] += 1
        else:
            logs.append(math.log(ratio))
    counts = "; ".join(f"{who} reached it in {k}" for who, k in one_sided.items() if k and who != "neither")
    if not logs:
        return f"no finite ratio: {counts} seed pair(s)" if counts else f"{NOT_REACHED} by either"
    ratio, lo, hi = stats.geometric_mean_ratio(logs)
    return with_interval(ratio, lo, hi, len(logs)) + (f"; {counts} seed pair(s)" if counts else "")


def baseline_target(original: Arm, metric: str) -> float:
    """A target every seed of the original skips reaches: the worst of their final FIDs (nan if one diverged)."""
    finals = [fid_curve(r, metric)[-1][1] for r in original.records if fid_curve(r, metric)]
    return stats.target_from_baseline(finals, direction_of(metric)) if finals else math.nan


def target_table(table: dict[tuple[int, str], Arm], depths: list[int], metric: str, target: float) -> list[str]:
    lines = [
        f"| depth | mode | steps to FID {fmt(target)} (paper's target) | speedup vs original at it "
        f"(paper ~{PAPER_SPEEDUP}x) | speedup vs original at the original's worst final FID |",
        "|---|---|---|---|---|",
    ]
    for depth in depths:
        original = table.get((depth, "none"))
        own = baseline_target(original, metric) if original else math.nan
        for mode, name in MODES.items():
            arm = table.get((depth, mode))
            if arm is None:
                lines.append(f"| {depth} | {name} | no records | no records | no records |")
                continue
            at_paper = speedup_cell(arm, original, metric, target) if original and mode != "none" else "—"
            if mode == "none" or original is None:
                at_own = "—"
            elif math.isnan(own):
                at_own = NOT_REACHED
            else:
                at_own = f"{speedup_cell(arm, original, metric, own)} (target {fmt(own)})"
            lines.append(f"| {depth} | {name} | {steps_cell(arm, metric, target)} | {at_paper} | {at_own} |")
    return lines


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def scalelong_report(
    records: list[dict],
    depths: list[int],
    metric: str = "fid",
    fid_target: float = PAPER_FID_TARGET,
    iteration: int = PAPER_ITERATION,
    title_note: str = "",
) -> str:
    """The Markdown report of ScaleLong's table beside ours, from the records of the reference configs."""
    table = arms(records)
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    budget = max((r.get("steps_completed") or 0 for r in records), default=0)
    lines = [
        "# ScaleLong (Huang et al., NeurIPS 2023) beside this run",
        "",
        *([title_note, ""] if title_note else []),
        f"{len(records)} records ({', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}), depths "
        f"{', '.join(map(str, depths))}, up to {budget:,} steps. Ours: mean [95% Student-t interval] (n seeds); ratios "
        "and speedups are geometric means over seeds paired with the original skips. The paper's numbers have no "
        "interval: it reports none. What differs between the paper's setup and ours: docs/scalelong.md.",
        "",
        f"## Feature norm of the long skips, ratio to the original skips, at {iteration:,} iterations",
        "",
        f"Ours: `{NORM_SERIES}` of the fixed probe batch (the long skips as they enter the decoder, together).",
        "",
        *norm_table(table, depths, iteration),
        "",
        f"## FID over training (`{metric}`, the weight set each trial chose)",
        "",
        *fid_table(table, depths, metric),
        "",
        f"## Steps to the paper's FID target and speedup (`{metric}`)",
        "",
        *target_table(table, depths, metric, fid_target),
        "",
    ]
    return "\n".join(lines)

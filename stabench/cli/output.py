"""What the commands print: a trial's summary table, a sweep's best configs, a re-score, a leaderboard's top."""

from __future__ import annotations

import click

from ..records.metrics import METRICS

# The summary table's metric rows: every registered metric marked for it, in the registry's order.
TRIAL_ROWS = tuple((name.replace("_", " "), name) for name, m in METRICS.items() if m.summary)


def trial_summary(record: dict) -> None:
    """A table of the trial's status, speed and metrics."""
    from rich.console import Console
    from rich.table import Table

    from ..records.record import Status, metrics_of

    m = metrics_of(record)
    table = Table(title=f"trial {record['run_id']}", show_header=False, box=None)
    reason = f" ({record.get('diverged_reason')})" if record["status"] == Status.DIVERGED else ""
    table.add_row("status", record["status"] + reason)
    if record["status"] == Status.FAILED:
        table.add_row("error", f"{record['error']['type']}: {record['error']['message']}")
    probe = f"{m.get('initial_probe_loss', float('nan')):.4f} -> {m.get('final_probe_loss', float('nan')):.4f}"
    rows = [
        ("steps", record.get("steps_completed")),
        ("steps/s", record.get("steps_per_s")),
        ("probe loss", probe if m else None),
        *((name, m.get(key)) for name, key in TRIAL_ROWS),
        ("record", record.get("run_dir")),
    ]
    for name, value in rows:
        if value is not None:
            table.add_row(name, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console(stderr=False).print(table)


def sweep_summary(summary: dict, space) -> None:
    """The best config (or the Pareto front) and the trial counts."""
    click.echo("")
    if "best" in summary:
        best = summary["best"]
        trial = f" (trial {best['trial']})" if "trial" in best else ""
        click.echo(f"best {space.objectives[0].metric} = {best['value']:.4g}{trial}")
        for k, v in best["params"].items():
            click.echo(f"  {k}: {v}")
    for point in summary.get("pareto_front", []):
        values = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(space.objectives, point["values"]))
        click.echo(f"Pareto trial {point['trial']}: {values}  {point['params']}")
    if "counts" in summary:
        c = summary["counts"]
        click.echo(f"trials: {c['complete']} complete, {c['pruned']} pruned, {c['fail']} failed")


def rescore_summary(result: dict) -> None:
    """FID/KID per weight set and the floor."""
    for key, per_weights in result.items():
        if isinstance(per_weights, dict):
            click.echo(f"{key}: " + ", ".join(f"{w}={v:.4g}" for w, v in per_weights.items()))
    floor = next(v for k, v in result.items() if k.endswith("_floor"))
    click.echo(f"floor: {floor:.4g}  ({result['n_samples']} samples, step {result['step']})")


def leaderboard_top(lb, metric: str, n_records: int, out) -> None:
    """Where the leaderboard went, and its first five rows."""
    click.echo(f"leaderboard of {len(lb.rows)} configs ({n_records} records) -> {out}/leaderboard.md")
    for r in lb.rows[:5]:
        click.echo(f"  {r.rank}. {r.config}: {metric} {r.quality.mean:.4g} (n={r.n}, diverged {r.diverged})")
    for why in lb.omitted:  # figures left out (too few trials, one evaluation point, ...): said, not silent
        click.echo(f"  left out: {why}")
    if lb.baseline and not any(r.config == lb.baseline for r in lb.rows):
        labels = ", ".join(r.config for r in lb.rows[:8])
        click.echo(f"Warning: baseline '{lb.baseline}' has no records here, so the table has no deltas, targets or "
                   f"speedups; pass --baseline with one of: {labels}", err=True)  # fmt: skip

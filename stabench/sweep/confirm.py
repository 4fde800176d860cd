"""Confirmation: the best configs of a sweep again, with more seeds (DeepOBS / AlgoPerf practice)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ..config import build_config
from ..engine import run_trial
from ..records.record import FINISHED, Tags, direction_of, metrics_of, record_value
from ..records.store import Store
from ..records.tracking import TrackingSettings


def top_configs(store: Store, sweep: str, metric: str, top: int) -> list[dict]:
    """One representative record per config of the sweep, best mean `metric` first (diverged = worst)."""
    groups: dict[str, list[dict]] = {}
    for rec in store.records(sweep=sweep):
        if rec["status"] in FINISHED:
            groups.setdefault(rec["config_hash"], []).append(rec)

    sign = 1 if direction_of(metric) == "minimize" else -1  # best first in the metric's own direction

    def mean_value(records: list[dict]) -> float:
        return sign * sum(record_value(r, metric) for r in records) / len(records)

    ranked = sorted(groups.values(), key=lambda rs: (mean_value(rs), rs[0]["config_hash"]))
    return [min(rs, key=lambda r: r["run_id"]) for rs in ranked[:top]]


def confirm(
    store: Store,
    sweep: str,
    metric: str,
    top: int,
    n_seeds: int,
    tracking: TrackingSettings | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run seeds 0..n_seeds-1 of the `top` best configs of `sweep` (seeds already recorded are skipped)."""
    records = []
    for rank, rep in enumerate(top_configs(store, sweep, metric, top), 1):
        tags = replace(Tags.from_record(rep), job_type="confirm")
        for seed in range(n_seeds):
            rec = store.find(rep["config_hash"], seed, sweep=sweep)
            if rec is None:
                cfg = build_config({**rep["config"], "seed": seed}, f"record {rep['run_id']}")
                rec = run_trial(
                    cfg,
                    store.root,
                    tags=replace(tags, seed_index=seed).to_dict(),
                    tracking=tracking,
                    writer=store.write_unique,
                )
                value = metrics_of(rec).get(metric)
                log(f"confirm #{rank} {rep['config_hash'][:8]} seed {seed}: {rec['status']} {metric}={value}")
            records.append(rec)
    return records

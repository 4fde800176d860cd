"""Checks that run before any training, so that missing inputs fail fast with a clear message (exit 2)."""

from __future__ import annotations

from collections.abc import Iterable

from ..config import TrialConfig


def check_inputs(configs: Iterable[TrialConfig], data: bool = True) -> None:
    """Every config's model can take its resolution, its dataset is readable here (skipped with `data=False`: on
    a cluster the data lives on the workers) and the Inception weights exist where the standard FID is asked for."""
    from ..models import check_resolution
    from ..scoring import resolve_inception_weights
    from ..workloads.data import check_available

    configs = list(configs)
    for workload in {c.workload for c in configs}:
        check_resolution(workload)
        if data:
            check_available(workload)
    for cfg in configs:
        if cfg.eval.samples > 0 and cfg.extractor == "inception":
            resolve_inception_weights(cfg.eval.inception_weights)

import math

import numpy as np
import pytest

from stabench.telemetry import DivergenceDetector, grad_spike_rate, instability_score, probe_loss_oscillation


def test_probe_loss_oscillation_zero_for_monotone_high_for_zigzag():
    assert probe_loss_oscillation([1.0, 0.5, 0.3, 0.2, 0.15]) == pytest.approx(0.0, abs=1e-12)
    zigzag = probe_loss_oscillation([1.0, 0.5, 0.9, 0.45, 0.85, 0.4])
    assert zigzag > 0.4
    assert probe_loss_oscillation([1.0, 0.5]) is None


def test_grad_spike_rate_counts_spikes_per_thousand():
    g = np.ones(1000)
    g[[200, 500, 800]] = 10.0
    assert grad_spike_rate(g, start=100, factor=5.0, window=100) == pytest.approx(3 / 900 * 1000)
    assert grad_spike_rate(np.ones(50), start=10, factor=5.0, window=100) == 0.0


def test_divergence_on_non_finite_and_on_loss_blowup():
    d = DivergenceDetector(factor=10, warmup_steps=5)
    assert d.check(1, 1.0, 1.0) is None
    assert "non-finite" in d.check(2, math.nan, 1.0)
    d = DivergenceDetector(factor=10, warmup_steps=5, smoothing=1.0)  # no smoothing: direct ratio
    for s in range(1, 10):
        assert d.check(s, 0.1, 1.0) is None
    assert "running minimum" in d.check(10, 1.5, 1.0)


def test_instability_is_inf_when_diverged_and_sums_parts():
    parts = {"grad_norm_cv": 0.2, "probe_loss_osc": 0.1, "grad_spike_rate": 10.0, "feature_norm_growth": math.e}
    assert instability_score(parts, diverged=False) == pytest.approx(0.2 + 0.1 + 0.1 + 1.0)
    assert instability_score(parts, diverged=True) == math.inf

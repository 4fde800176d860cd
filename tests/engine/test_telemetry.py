import math

import numpy as np
import pytest
import torch

from stabench.engine.telemetry import (
    INSTABILITY_PARTS,
    DivergenceDetector,
    StepLog,
    grad_spike_rate,
    instability_score,
    probe_loss_oscillation,
    probe_series,
    summarize,
)


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


def test_instability_is_inf_when_diverged_and_sums_the_weighting_free_parts():
    parts = {
        "probe_grad_osc": 0.2,
        "probe_grad_spike_frac": 0.05,
        "probe_loss_osc": 0.1,
        "decoder_norm_osc": 0.03,
        "decoder_norm_log_growth": 1.0,
    }
    assert instability_score(parts, diverged=False) == pytest.approx(0.2 + 0.05 + 0.1 + 0.03 + 1.0)
    assert instability_score(parts, diverged=True) == math.inf


def test_instability_ignores_statistics_of_the_weighted_training_loss():
    steady = {"probe_loss_osc": 0.1}
    noisy_weighting = {**steady, "grad_norm_cv": 3.2, "grad_spike_rate": 40.0, "clip_frac": 0.9}
    assert instability_score(noisy_weighting, diverged=False) == instability_score(steady, diverged=False)


def test_summary_reads_decoder_side_norms_and_probe_gradients():
    log = StepLog()
    for i in range(20):
        log.append(torch.tensor(1.0 / (i + 1)), torch.tensor(1.0), 1e-3)
    log.flush(None)
    probes = {
        "step": [0, 5, 10, 15, 20],
        "probe_loss": [1.0, 0.8, 0.6, 0.5, 0.4],
        "probe_grad_norm": [2.0, 1.0, 2.0, 1.0, 2.0],  # zig-zag
        "decoder_norm": [1.0, 2.0, 3.0, 4.0, 4.0],  # smooth growth x4
        "skip_norm": [1.0, 1.0, 1.0, 1.0, 1.0],
        "skip_norms": [[1.0]] * 5,
        "encoder_norm": [10.0, 9.0, 8.0, 7.0, 6.0],
    }
    m = summarize(log, probes, warmup=0, spike_factor=5.0, spike_window=100, diverged=False)
    assert m["decoder_norm_growth"] == pytest.approx(4.0)
    assert m["decoder_norm_log_growth"] == pytest.approx(math.log(4.0))
    assert m["probe_grad_osc"] == pytest.approx(math.log(2.0))
    assert m["probe_grad_spike_frac"] == 0.0
    assert m["encoder_norm_growth"] == pytest.approx(0.6)
    assert m["skip_norm_osc"] == pytest.approx(0.0)
    parts = sum(m[k] for k in INSTABILITY_PARTS)
    assert m["instability"] == pytest.approx(parts)


def test_summary_reads_records_of_the_old_readout():
    assert probe_series({"out_norm": [1.0, 2.0]}, "decoder_norm") == [1.0, 2.0]
    assert probe_series({"feature_norm": [3.0]}, "encoder_norm") == [3.0]

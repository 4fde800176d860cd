import pytest
import torch

from stabench.engine.ema import MultiEMA


def test_each_beta_matches_closed_form():
    p = torch.nn.Parameter(torch.zeros(3))
    model = torch.nn.Module()
    model.p = p
    betas = (0.5, 0.9, 0.99, 0.999)
    ema = MultiEMA(model, betas)
    thetas = [torch.full((3,), float(k + 1)) ** 1.5 for k in range(50)]
    for th in thetas:
        with torch.no_grad():
            p.copy_(th)
        ema.update()
    for b in betas:
        # theta'_n = b^n theta'_0 + (1 - b) sum_k b^(n-k) theta_k, with theta'_0 = 0
        n = len(thetas)
        expected = sum((1 - b) * b ** (n - 1 - k) * thetas[k] for k in range(n))
        torch.testing.assert_close(ema.shadows[b][0], expected, rtol=1e-5, atol=1e-6)


def test_warmup_beta_schedule():
    model = torch.nn.Linear(1, 1)
    ema = MultiEMA(model, (0.999,), warmup=True)
    assert ema.effective_beta(0.999) == pytest.approx(1 / 10)
    ema.num_updates = 90
    assert ema.effective_beta(0.999) == pytest.approx(91 / 100)
    ema.num_updates = 10**6
    assert ema.effective_beta(0.999) == 0.999


def test_copy_to_carries_ema_weights_and_leaves_model_alone():
    model = torch.nn.Linear(2, 2)
    ema = MultiEMA(model, (0.9, 0.99))
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update()
    copy = ema.copy_to(model, 0.9)
    torch.testing.assert_close(copy.weight, ema.shadows[0.9][0])
    assert not torch.equal(copy.weight, model.weight)
    assert not copy.training

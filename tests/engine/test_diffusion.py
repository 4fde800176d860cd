import math

import pytest
import torch

from stabench.config import CAPPED_KINDS, DiffusionConfig, WeightingConfig, choices
from stabench.engine.diffusion import WEIGHTINGS, Diffusion, make_betas

KINDS = choices("timestep_weighting.kind")
SCHEDULES = choices("diffusion.schedule")


def test_every_weighting_kind_of_the_schema_has_a_formula():
    assert set(WEIGHTINGS) == set(KINDS)
    assert set(CAPPED_KINDS) <= set(KINDS)


def diffusion(kind="uniform", schedule="linear", prediction="eps", **w):
    return Diffusion(DiffusionConfig(schedule=schedule, prediction=prediction), WeightingConfig(kind=kind, **w))


def expected_raw(kind, snr, T, gamma, k):
    """The formulas of docs/knobs.md ("Timestep weighting"), written out independently of the implementation."""
    out = []
    for t, s in enumerate(snr.tolist()):
        out.append(
            {
                "uniform": 1.0,
                "snr": s,
                "min_snr": min(s, gamma) / s,
                "max_snr": max(s, gamma) / s,
                "p2": 1.0 / (k + s) ** gamma,
                "cosine": math.sin(math.pi * (t + 0.5) / T),
            }[kind]
        )
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize(
    "kind,params", [(k, {}) for k in KINDS] + [("min_snr", {"gamma": 1.0}), ("p2", {"gamma": 0.5, "k": 2.0})]
)
def test_weighting_matches_formula_and_has_mean_one(kind, params, schedule):
    d = diffusion(kind, schedule, **params)
    wc = WeightingConfig(kind=kind, **params)
    expected = expected_raw(kind, d.snr.double(), d.T, wc.gamma, wc.k)
    if kind in CAPPED_KINDS:  # the documented cap: at most `cap` times the median weight
        expected = expected.clamp(max=wc.cap * expected.median())
    expected = expected / expected.mean()
    torch.testing.assert_close(d.weights.double(), expected, rtol=1e-4, atol=1e-9)
    assert d.weights.double().mean().item() == pytest.approx(1.0, rel=1e-5)


def test_min_snr_is_uniform_at_high_noise():
    d = diffusion("min_snr", gamma=5.0)
    low_snr = d.snr < 5.0
    # min(SNR, 5)/SNR = 1 wherever SNR < 5: the weight is constant there
    assert torch.allclose(d.weights[low_snr], d.weights[low_snr][0].expand(int(low_snr.sum())))
    assert (d.weights[~low_snr] < d.weights[low_snr][0]).all()


def test_linear_schedule_endpoints_and_cosine_abar():
    betas = make_betas(DiffusionConfig())
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    cfg = DiffusionConfig(schedule="cosine")
    abar = torch.cumprod(1 - make_betas(cfg), 0)
    f = lambda t: math.cos((t / cfg.T + cfg.cosine_s) / (1 + cfg.cosine_s) * math.pi / 2) ** 2  # noqa: E731
    assert abar[499].item() == pytest.approx(f(500) / f(0), rel=1e-6)


def test_v_prediction_converts_to_eps():
    d = diffusion(prediction="v")
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(8, 1, 8, 8, generator=g), torch.randn(8, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (8,), generator=g)
    a, s = d.abar[t].sqrt()[:, None, None, None], (1 - d.abar[t]).sqrt()[:, None, None, None]
    v = a * eps - s * x0
    torch.testing.assert_close(d.to_eps(v, d.q_sample(x0, t, eps), t), eps, rtol=1e-5, atol=1e-5)


class Oracle(torch.nn.Module):
    """The exact eps predictor when the data is one fixed image."""

    def __init__(self, d, x_star, prediction):
        super().__init__()
        self.d, self.x_star, self.prediction = d, x_star, prediction

    def forward(self, x, t):
        abar = self.d.abar[t][:, None, None, None]
        eps = (x - abar.sqrt() * self.x_star) / (1 - abar).sqrt()
        return eps if self.prediction == "eps" else abar.sqrt() * eps - (1 - abar).sqrt() * self.x_star


@pytest.mark.parametrize("method", ["ddim", "ddpm"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_samplers_recover_the_data_point_with_an_oracle(method, prediction):
    d = diffusion(prediction=prediction)
    x_star = torch.linspace(-0.9, 0.9, 64).reshape(1, 1, 8, 8)
    out = d.sample(Oracle(d, x_star, prediction), (3, 1, 8, 8), 20, torch.Generator().manual_seed(0), method)
    torch.testing.assert_close(out, x_star.expand(3, -1, -1, -1), rtol=0, atol=1e-3)


def test_sampling_is_deterministic_per_generator_seed():
    d = diffusion()
    net = torch.nn.Conv2d(1, 1, 1)
    f = lambda s: d.sample(lambda x, t: net(x), (2, 1, 8, 8), 5, torch.Generator().manual_seed(s))  # noqa
    assert torch.equal(f(0), f(0))
    assert not torch.equal(f(0), f(1))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("kind", KINDS)
def test_no_one_percent_of_timesteps_carries_most_of_the_loss(kind, schedule):
    from stabench.config import DiffusionConfig, WeightingConfig
    from stabench.engine.diffusion import Diffusion

    w = Diffusion(DiffusionConfig(schedule=schedule), WeightingConfig(kind=kind)).weights.double()
    top = w.sort(descending=True).values[: len(w) // 100]
    assert top.sum() / w.sum() < 0.5


@pytest.mark.parametrize("kind", CAPPED_KINDS)
def test_without_the_cap_one_percent_of_timesteps_would_carry_most_of_the_loss(kind):
    from stabench.config import DiffusionConfig, WeightingConfig
    from stabench.engine.diffusion import Diffusion

    w = Diffusion(DiffusionConfig(schedule="cosine"), WeightingConfig(kind=kind, cap=None)).weights.double()
    top = w.sort(descending=True).values[: len(w) // 100]
    assert top.sum() / w.sum() > 0.5

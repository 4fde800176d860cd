import pytest
import torch

from stabench.config import ModelConfig, TrialConfig, choices, load_config
from stabench.models import BACKBONES as REGISTRY
from stabench.models import build_model, check_resolution
from stabench.models.layers import Knobs, constant_skip_scales

BACKBONES = choices("workload.backbone")
MODES = choices("lsc.mode")


def make(backbone, *overrides, preset="tiny"):
    cfg = load_config(None, [f"backbone={backbone}", f"preset={preset}", *overrides])
    torch.manual_seed(0)
    return build_model(cfg, in_channels=1)


def test_the_registry_has_every_backbone_and_preset_the_schema_allows():
    assert set(REGISTRY) == set(BACKBONES)
    for backbone, (_, presets) in REGISTRY.items():
        assert set(presets) == set(choices("workload.preset")), backbone


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("preset", choices("workload.preset"))
def test_every_preset_takes_its_resolution_step(backbone, preset):
    cfg = load_config(None, [f"backbone={backbone}", f"preset={preset}", "resolution=16"])
    check_resolution(cfg.workload)  # digits at 16 px fits every preset


def test_knobs_are_the_config_sections_with_the_schemas_defaults():
    cfg = TrialConfig()
    knobs = Knobs.from_config(cfg)
    assert (knobs.model, knobs.lsc) == (cfg.model, cfg.lsc)
    dropouts = {m.p for m in build_model(cfg, in_channels=1).modules() if isinstance(m, torch.nn.Dropout)}
    assert dropouts == {ModelConfig().dropout}
    with pytest.raises(ValueError, match="model.norm"):
        Knobs(ModelConfig(), cfg.lsc)  # an unresolved norm would silently build no norm at all


def batch(n=4, res=8):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, res, res, generator=g), torch.randint(0, 1000, (n,), generator=g)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", MODES)
def test_every_mode_trains(backbone, mode):
    model = make(backbone, f"lsc.mode={mode}")
    x, t = batch()
    out, feats = model(x, t, return_features=True)
    assert out.shape == x.shape
    assert len(feats["skips"]) == model.num_skips
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("backbone", BACKBONES)
def test_constant_kappa_one_equals_none_bit_for_bit(backbone):
    x, t = batch()
    ref = make(backbone, "lsc.mode=none").eval()(x, t)
    same = make(backbone, "lsc.mode=constant", "lsc.kappa=1.0").eval()(x, t)
    assert torch.equal(ref, same)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode,kappa", [("constant", 0.5), ("constant", 0.8), ("linear", 0.5), ("inv_sqrt2", 0.5)])
def test_skip_i_entering_decoder_is_scaled(backbone, mode, kappa):
    x, t = batch()
    _, plain = make(backbone, "lsc.mode=none", preset="small").eval()(x, t, return_features=True)
    model = make(backbone, f"lsc.mode={mode}", f"lsc.kappa={kappa}", preset="small").eval()
    _, scaled = model(x, t, return_features=True)
    n = model.num_skips
    assert n >= 4
    for i in range(1, n + 1):  # i = 1 is the outermost skip
        if mode == "constant":
            factor = kappa ** (i - 1)
        elif mode == "linear":
            factor = 1 - (1 - kappa) * (i - 1) / (n - 1)
        else:
            factor = 2**-0.5
        torch.testing.assert_close(scaled["skips"][i - 1], factor * plain["skips"][i - 1], rtol=1e-6, atol=0)


def test_outermost_skip_is_full_resolution():
    model = make("unet", preset="small")
    _, feats = model(*batch(), return_features=True)
    assert feats["skips"][0].shape[-1] == 8
    assert feats["skips"][-1].shape[-1] == 2


def test_constant_scales_formula():
    assert constant_skip_scales("constant", 0.5, 4) == [1.0, 0.5, 0.25, 0.125]
    assert constant_skip_scales("linear", 0.4, 4) == pytest.approx([1.0, 0.8, 0.6, 0.4])


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("mode", ["learnable", "learnable_per_skip"])
def test_learnable_gates_receive_gradients(backbone, mode):
    model = make(backbone, f"lsc.mode={mode}", preset="small")
    x, t = batch()
    model(x, t).pow(2).mean().backward()
    gates = list(model.skip_scaler.gates.parameters())
    assert gates
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gates)
    n_gates = len(model.skip_scaler.gates)
    if mode == "learnable_per_skip":
        assert n_gates == model.num_skips
    else:  # shared: one gate for U-ViT (ScaleLong mode 3), one per skip width for the UNet
        assert n_gates == (1 if backbone == "uvit" else len({s.shape[1] for s in model(x, t, True)[1]["skips"]}))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_dropout_and_drop_path_only_in_training(backbone):
    model = make(backbone, "dropout=0.3", "stochastic_depth=0.3")
    x, t = batch()
    model.eval()
    assert torch.equal(model(x, t), model(x, t))
    model.train()
    assert not torch.equal(model(x, t), model(x, t))


@pytest.mark.parametrize(
    "backbone,norm", [("unet", "group"), ("unet", "layer"), ("unet", "none"), ("uvit", "layer"), ("uvit", "none")]
)
@pytest.mark.parametrize("act", ["silu", "gelu", "relu"])
def test_norm_and_activation_choices(backbone, norm, act):
    model = make(backbone, f"norm={norm}", f"activation={act}")
    names = {type(m).__name__ for m in model.modules()}
    assert {"silu": "SiLU", "gelu": "GELU", "relu": "ReLU"}[act] in names
    if norm == "none":
        assert not names & {"GroupNorm", "LayerNorm"}
    x, t = batch()
    assert torch.isfinite(model(x, t)).all()


def test_deep_preset_has_many_skips_at_16px():
    model = make("unet", "resolution=16", preset="deep")
    assert model.num_skips == 12
    out = model(*batch(res=16))
    assert out.shape == (4, 1, 16, 16)


def shortcut_reparametrised(model, kappa):
    """A `none` UNet whose decoder shortcuts scale the skip channels the way `constant` LSC would."""
    scales = constant_skip_scales("constant", kappa, model.num_skips)
    with torch.no_grad():
        for j, stage in enumerate(model.up):
            i = model.num_skips - j  # the decoder consumes skips innermost first
            block, skip_channels = stage[0], model.skip_channels[i - 1]
            block.shortcut.weight[:, -skip_channels:] *= scales[i - 1]
    return model


def test_concat_placement_on_the_unet_is_a_shortcut_reparametrisation():
    # The decoder block's GroupNorm sees [h | kappa^(i-1) skip] and no group straddles the boundary, so the scale
    # only reaches the 1x1 shortcut: moving it into the shortcut's skip-channel weights reproduces `constant`.
    x, t = batch()
    scaled = make("unet", "lsc.mode=constant", "lsc.kappa=0.8").eval()
    none = make("unet", "lsc.mode=none").eval()
    none.load_state_dict(scaled.state_dict())
    moved = shortcut_reparametrised(none, 0.8)
    assert torch.allclose(moved(x, t), scaled(x, t), atol=1e-4)
    assert not torch.allclose(make("unet", "lsc.mode=none").eval()(x, t), scaled(x, t), atol=1e-4)


def test_post_norm_placement_is_not_a_reparametrisation():
    x, t = batch()
    post = make("unet", "lsc.mode=constant", "lsc.kappa=0.8", "lsc.placement=post_norm").eval()
    none = make("unet", "lsc.mode=none").eval()
    none.load_state_dict(post.state_dict())
    moved = shortcut_reparametrised(none, 0.8)
    assert not torch.allclose(moved(x, t), post(x, t), atol=1e-2)


def test_the_two_placements_differ_in_function():
    x, t = batch()
    concat = make("unet", "lsc.mode=constant", "lsc.kappa=0.5").eval()
    post = make("unet", "lsc.mode=constant", "lsc.kappa=0.5", "lsc.placement=post_norm").eval()
    assert torch.equal(
        torch.cat([p.flatten() for p in concat.parameters()]), torch.cat([p.flatten() for p in post.parameters()])
    )
    assert not torch.allclose(concat(x, t), post(x, t), atol=1e-3)


def test_post_norm_is_rejected_for_the_uvit():
    from stabench.errors import ConfigError

    with pytest.raises(ConfigError, match="lsc.placement"):
        load_config(None, ["backbone=uvit", "lsc.placement=post_norm"])


def test_placement_at_its_old_behaviour_keeps_the_config_hash():
    from stabench.config import config_hash

    assert config_hash(load_config(None, [])) == config_hash(load_config(None, ["lsc.placement=concat"]))
    assert config_hash(load_config(None, [])) != config_hash(load_config(None, ["lsc.placement=post_norm"]))

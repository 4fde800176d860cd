"""The paper's U-ViT (`model.uvit_variant: paper`): ScaleLong's CIFAR-10 backbone, its size and its initialisation.

The reference parameter count is derived here from U-ViT's architecture (Bao et al. 2023, libs/uvit.py of
sail-sg/ScaleLong), not from our model: a patch-embedding conv, a position embedding over the patches and the time
token, depth // 2 in blocks, one mid block and depth // 2 out blocks (each a pre-norm transformer block: two
LayerNorms, qkv without bias, an output projection, a 4x MLP; the out blocks also a skip Linear 2D -> D), a final
LayerNorm, the Linear to patch pixels and the 3x3 conv. No time MLP (mlp_time_embed False): the sinusoid is the token.
"""

import math

import pytest
import torch
from click.testing import CliRunner

from stabench.cli import main
from stabench.config import config_hash, load_config
from stabench.errors import ConfigError
from stabench.models import build_model, check_resolution, count_params
from stabench.models.layers import timestep_embedding
from stabench.sweep.baselines import load_baseline


def uvit_reference_params(img=32, patch=2, dim=512, depth=12, mlp_ratio=4, channels=3, qkv_bias=False) -> int:
    """U-ViT's parameter count from its architecture (see the module docstring)."""
    tokens = (img // patch) ** 2 + 1
    hidden = int(dim * mlp_ratio)
    block = (
        2 * (2 * dim)  # norm1, norm2
        + 3 * dim * dim + (3 * dim if qkv_bias else 0)  # qkv
        + dim * dim + dim  # attention output projection
        + dim * hidden + hidden + hidden * dim + dim  # MLP fc1, fc2
    )  # fmt: skip
    skip_linear = 2 * dim * dim + dim
    patch_embed = channels * patch * patch * dim + dim
    head = dim * patch * patch * channels + patch * patch * channels
    final_conv = channels * channels * 9 + channels
    blocks = (depth // 2) * block + block + (depth // 2) * (block + skip_linear)
    return patch_embed + tokens * dim + blocks + 2 * dim + head + final_conv


def test_the_reference_formula_gives_u_vit_s2s_size():
    assert uvit_reference_params() == 44_255_328  # U-ViT-S/2 for CIFAR-10: "44M"


@pytest.mark.parametrize("depth", [12, pytest.param(16, marks=pytest.mark.slow)])
def test_the_preset_has_the_reference_architectures_parameter_count(depth):
    cfg = load_baseline(f"scalelong-cifar10-d{depth}")
    assert count_params(build_model(cfg, in_channels=3)) == uvit_reference_params(depth=depth)


def tiny(*overrides, mode="none"):
    cfg = load_config(
        None,
        ["backbone=uvit", "preset=tiny", "uvit_variant=paper", "qkv_bias=false", "resolution=8", "activation=gelu",
         "dropout=0", f"lsc.mode={mode}", *overrides],
    )  # fmt: skip
    torch.manual_seed(0)
    return cfg, build_model(cfg, in_channels=1)


def test_paper_variant_has_no_time_mlp_no_qkv_bias_and_the_final_conv():
    cfg, model = tiny()
    assert cfg.model.time_mlp is False  # the variant's own: U-ViT's mlp_time_embed False
    assert not list(model.time_embed.parameters())
    t = torch.tensor([0, 17, 999])
    assert torch.equal(model.time_embed(t), timestep_embedding(t, 32))
    assert all(blk.attn.qkv.bias is None for blk in [*model.in_blocks, model.mid_block, *model.out_blocks])
    assert isinstance(model.final_layer, torch.nn.Conv2d)
    assert model.final_layer.kernel_size == (3, 3)


def test_the_time_mlp_switch_builds_u_vits_4x_mlp():
    _, model = tiny("time_mlp=true", "width=16")
    widths = [m.out_features for m in model.time_embed.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [64, 16]


def test_paper_variant_has_u_vits_initialisation():
    _, model = tiny("width=64")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert weights.std().item() == pytest.approx(0.02, rel=0.05)
    assert all(m.bias is None or torch.count_nonzero(m.bias) == 0 for m in linears)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms
    assert all(torch.all(m.weight == 1) and torch.count_nonzero(m.bias) == 0 for m in norms)
    assert model.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)


def test_ours_keeps_pytorchs_default_initialisation():
    cfg = load_config(None, ["backbone=uvit", "preset=tiny", "width=64", "resolution=8"])
    model = build_model(cfg, in_channels=1)
    assert (cfg.model.uvit_variant, cfg.model.time_mlp, cfg.model.qkv_bias) == ("ours", True, True)
    assert isinstance(model.final_layer, torch.nn.Identity)
    biases = torch.cat([m.bias for m in model.modules() if isinstance(m, torch.nn.Linear)])
    assert torch.count_nonzero(biases) > 0


def test_ls_gates_keep_the_default_init_as_scalelong_builds_them_after_u_vits():
    _, model = tiny(mode="learnable")
    (gate,) = model.skip_scaler.gates.values()  # the one shared gate
    assert torch.count_nonzero(gate.fc1.bias) > 0
    bound = 1 / math.sqrt(gate.fc1.in_features)  # nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert gate.fc1.weight.abs().max().item() <= bound


@pytest.mark.parametrize("mode", ["none", "inv_sqrt2", "constant", "learnable", "learnable_per_skip"])
def test_every_scalelong_mode_trains_on_the_paper_variant(mode):
    _, model = tiny(mode=mode)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    out, feats = model(x, t, return_features=True)
    assert out.shape == x.shape
    assert len(feats["skips"]) == model.num_skips
    out.pow(2).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_cs_scales_follow_kappa_on_the_paper_variant():
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    _, plain = tiny("depth=8")[1].eval()(x, t, return_features=True)
    _, scaled = tiny("depth=8", "kappa=0.7", mode="constant")[1].eval()(x, t, return_features=True)
    for i, (s, p) in enumerate(zip(scaled["skips"], plain["skips"])):  # i = 0 is the outermost skip
        torch.testing.assert_close(s, 0.7**i * p, rtol=1e-6, atol=0)


def test_depth_heads_patch_and_mlp_ratio_are_keys():
    out = CliRunner().invoke(main, ["keys"])
    assert out.exit_code == 0
    for key in ("workload.depth", "workload.heads", "workload.patch", "workload.mlp_ratio", "model.uvit_variant",
                "model.qkv_bias", "model.time_mlp", "workload.download"):  # fmt: skip
        assert key in out.output
    _, model = tiny("depth=6", "heads=4", "patch=4", "mlp_ratio=3", "width=16")
    assert (model.num_skips, model.in_blocks[0].attn.heads, model.patch) == (3, 4, 4)
    assert model.in_blocks[0].mlp[0].out_features == 48


def test_heads_that_do_not_divide_the_dim_fail_before_training():
    cfg = load_config(None, ["backbone=uvit", "preset=tiny", "heads=3"])
    with pytest.raises(ConfigError) as err:
        check_resolution(cfg.workload)
    assert err.value.key == "workload.heads"


def test_the_new_keys_at_their_old_behaviour_keep_the_hash_and_change_it_otherwise():
    plain = load_config(None, ["backbone=uvit"])
    explicit = load_config(None, ["backbone=uvit", "uvit_variant=ours", "qkv_bias=true", "time_mlp=true",
                                  "download=true"])  # fmt: skip
    assert config_hash(plain) == config_hash(explicit)
    assert config_hash(load_config(None, ["backbone=uvit", "depth=6"])) != config_hash(plain)
    assert config_hash(load_config(None, ["backbone=uvit", "uvit_variant=paper"])) != config_hash(plain)


def test_the_recipe_is_scalelongs():
    cfg = load_baseline("scalelong-cifar10-d12")
    o = cfg.optim
    assert (o.lr, o.weight_decay, o.betas, o.warmup_steps, o.batch_size, o.steps) == (
        2e-4, 0.03, (0.99, 0.999), 2500, 128, 500_000)  # fmt: skip
    assert o.clip_norm is None
    assert (cfg.augment.hflip, cfg.eval.every, cfg.eval.samples, cfg.checkpoint_every) == (0.5, 5000, 10_000, 5000)
    assert (cfg.engine.precision, cfg.engine.compile) == ("bf16", True)
    modes = [
        load_baseline(f"scalelong-cifar10-d16{s}").lsc.mode for s in ("", "-inv-sqrt2", "-cs", "-ls", "-ls-per-skip")
    ]
    assert modes == ["none", "inv_sqrt2", "constant", "learnable", "learnable_per_skip"]

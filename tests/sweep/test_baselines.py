"""The reference configs as one table: each file on its own backbone and, as `<name>-<backbone>`, on the others."""

import pytest

from stabench.config import choices, config_hash, config_to_dict
from stabench.errors import UserError
from stabench.sweep.baselines import baseline_names, baselines_dir, load_baseline, references


def write_reference(directory, name, text="lsc: {mode: constant, kappa: 0.7}\n"):
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.yaml").write_text(text)


def test_every_file_is_a_reference_on_every_backbone(tmp_path):
    write_reference(tmp_path, "cs")
    assert baseline_names(tmp_path) == ["cs", *(f"cs-{b}" for b in choices("workload.backbone") if b != "unet")]


def test_a_twin_is_its_file_on_the_other_backbone_with_that_backbones_norm(tmp_path):
    write_reference(tmp_path, "cs")
    unet, uvit = load_baseline("cs", directory=tmp_path), load_baseline("cs-uvit", ["seed=2"], directory=tmp_path)
    assert (uvit.workload.backbone, uvit.model.norm, uvit.seed) == ("uvit", "layer", 2)
    assert config_to_dict(uvit)["lsc"] == config_to_dict(unet)["lsc"]
    assert config_hash(uvit) != config_hash(unet)


def test_the_shipped_table_keeps_the_uvit_names():
    names = baseline_names()
    assert len(names) == 2 * len(list(baselines_dir().glob("*.yaml")))
    assert "ddpm-uvit" in names and "scalelong-ls-uvit" in names
    assert load_baseline("ddpm-uvit").workload.backbone == "uvit"
    files = {p.stem for p in baselines_dir().glob("*.yaml")}
    assert all(overrides == [] for _, overrides in (references()[n] for n in names if n in files))


def test_an_unknown_name_lists_the_table(tmp_path):
    write_reference(tmp_path, "cs")
    with pytest.raises(UserError) as err:
        load_baseline("cs-vit", directory=tmp_path)
    assert err.value.key == "only"
    assert "cs-uvit" in err.value.allowed


def test_the_folder_is_looked_up_when_used_not_at_import(tmp_path, monkeypatch):
    write_reference(tmp_path / "mine", "only-here")
    monkeypatch.setenv("STABENCH_BASELINES", str(tmp_path / "mine"))
    assert baselines_dir() == tmp_path / "mine"
    assert baseline_names()[0] == "only-here"

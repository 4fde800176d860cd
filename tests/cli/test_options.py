"""The CLI's shared machinery: one error boundary that names the flag, and old option spellings kept working."""

import click
import yaml
from click.testing import CliRunner

from stabench.cli import main
from stabench.cli.options import Command, deprecated_alias, sweep_baseline
from stabench.errors import UserError


@click.command(cls=Command)
@click.option("--ray-dir", default=None)
@deprecated_alias("--storage-path", "ray_dir")
@click.option("--store", default=None)
def probe_command(ray_dir, store):
    if store == "bad":
        raise UserError("is bad", key="store", allowed=["good"])
    click.echo(f"ray_dir={ray_dir}")


def test_old_spelling_sets_the_new_option_and_warns():
    result = CliRunner().invoke(probe_command, ["--storage-path", "x"])
    assert result.exit_code == 0
    assert "ray_dir=x" in result.output
    assert "deprecated" in result.output


def test_new_spelling_needs_no_warning():
    result = CliRunner().invoke(probe_command, ["--ray-dir", "y"])
    assert "ray_dir=y" in result.output
    assert "deprecated" not in result.output


def test_a_user_error_names_the_flag_and_exits_2():
    result = CliRunner().invoke(probe_command, ["--store", "bad"])
    assert result.exit_code == 2
    assert "Error: --store: is bad; allowed: good" in result.output


def test_an_error_about_an_old_spelling_names_the_flag_the_user_typed(tmp_path):
    space = tmp_path / "space.yaml"
    body = {"base": {}, "fixed": {"workload.preset": "tiny", "optim.steps": 5, "eval.samples": 0},
            "objectives": [{"metric": "best_probe_loss"}],
            "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}  # fmt: skip
    space.write_text(yaml.safe_dump(body))
    args = ["sweep", str(space), "--store", str(tmp_path / "s"), "--storage", str(tmp_path), "--wandb", "disabled"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--storage: " in result.output
    assert "is a directory" in result.output


def option(command, name):
    return next(p for p in main.commands[command].params if p.name == name)


def test_the_clis_choices_are_the_registries_names():
    from stabench.config import choices
    from stabench.scoring import EXTRACTORS
    from stabench.sweep import BACKENDS

    assert option("sweep", "backend").type.choices == tuple(BACKENDS)
    assert option("score", "extractor").type.choices == EXTRACTORS
    assert choices("eval.extractor") == ("auto", *EXTRACTORS)  # the config's names are the scorer's, plus auto


def test_a_backend_added_to_the_registry_is_a_cli_choice(monkeypatch):
    from stabench.cli.options import RegistryChoice
    from stabench.sweep import backend

    monkeypatch.setitem(backend.BACKENDS, "another", backend.BACKENDS["optuna"])
    assert option("sweep", "backend").type.registry == "stabench.sweep.backend:BACKENDS"
    assert RegistryChoice("stabench.sweep.backend:BACKENDS").convert("another", None, None) == "another"


SWEEP_TAGS = [{"sweep": "q", "baseline_point": "ddpm"}, {"sweep": "q", "trial_number": 1}, {"sweep": "r"}]


def test_a_baseline_name_means_its_point_in_the_one_given_sweep_that_ran_it():
    assert sweep_baseline("ddpm", ["q"], SWEEP_TAGS) == "ddpm@q"


def test_a_baseline_with_reference_records_stays_the_reference():
    assert sweep_baseline("ddpm", ["q"], [*SWEEP_TAGS, {"sweep": "baselines", "baseline": "ddpm"}]) == "ddpm"


def test_a_baseline_stays_as_given_when_no_given_sweep_or_several_ran_it():
    assert sweep_baseline("ddpm", ["r"], SWEEP_TAGS) == "ddpm"
    assert sweep_baseline("ddpm", [], SWEEP_TAGS) == "ddpm"
    assert sweep_baseline("ddpm", ["q", "s"], [*SWEEP_TAGS, {"sweep": "s", "baseline_point": "ddpm"}]) == "ddpm"
    assert sweep_baseline("ddpm@r", ["q"], SWEEP_TAGS) == "ddpm@r"
    assert sweep_baseline("", ["q"], SWEEP_TAGS) == ""

"""W&B: offline runs readable with wandb's own records, failures never break a trial, disabled = nothing."""

import re
from pathlib import Path

import pytest

from stabench.engine import run_trial
from stabench.records.store import Store
from stabench.records.tracking import TrackingSettings
from stabench.sweep import SweepSettings
from stabench.sweep.optuna import run_optuna_sweep
from stabench.sweep.space import load_space
from tests.helpers import space_file, tiny_config
from tests.wandb_reader import read_offline_run


def offline_runs(root):
    return sorted((root / "wandb").glob("offline-run-*"))


def check_runs(runs, n):
    assert len(runs) == n
    for run_dir in runs:
        run = read_offline_run(run_dir)
        assert run["config"]["lsc"]["mode"] in ("none", "constant")  # nested, as W&B's docs ask
        assert "config_hash" in run["config"]
        keys = set().union(*run["history"])
        assert {"train/loss", "train/grad_norm", "probe/loss", "probe/grad_norm", "probe/decoder_norm", "step"} <= keys
        assert any(k.startswith("eval/probe_loss/") for k in keys)
        assert run["summary"]["status"] == "ok"
        assert "best/probe_loss" in run["summary"]
        (artifact,) = run["artifacts"]  # the stored record and config, as the run's output
        assert artifact["type"] == "record"
        assert artifact["files"] == ["config.yaml", "record.json"]
        assert artifact["metadata"]["config_hash"] == run["config"]["config_hash"]


def test_the_leaderboard_run_names_every_record_artifact_it_ranks(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from stabench.cli import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    store = Store(tmp_path / "store")
    space = load_space(space_file(tmp_path, trials=2))
    tracking = TrackingSettings(dir=str(store.root))
    run_optuna_sweep(
        space,
        store,
        SweepSettings.of(space, study_storage=str(tmp_path / "j.journal"), tracking=tracking),
        log=lambda s: None,
    )
    trial_runs = [read_offline_run(d) for d in offline_runs(store.root)]
    logged = {a["name"]: a["digest"] for run in trial_runs for a in run["artifacts"]}
    args = ["leaderboard", "--store", str(store.root), "--sweep", "t", "--metric", "best_probe_loss", "--no-plots",
            "--out", str(tmp_path / "lb"), "--wandb", "offline"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "upload skipped" not in result.output
    (board,) = [r for r in map(read_offline_run, offline_runs(store.root)) if r["job_type"] == "leaderboard"]
    assert board["name"] == "leaderboard-t-best_probe_loss"
    assert board["config"]["metric"] == "best_probe_loss"
    assert board["config"]["sweeps"] == ["t"]
    assert board["config"]["records"] == 2
    (artifact,) = [a for a in board["artifacts"] if a["type"] == "leaderboard"]
    assert {"leaderboard.csv", "leaderboard.parquet", "leaderboard.tex", "leaderboard.html"} <= set(artifact["files"])
    used = {r["artifact"]: r["digest"] for r in artifact["metadata"]["records"]}
    assert used == logged  # the same artifacts (name and content digest) the trial runs logged
    assert any(a["type"] == "run_table" for a in board["artifacts"])  # the typed wandb.Table


def test_two_trial_optuna_sweep_leaves_two_offline_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    store = Store(tmp_path / "store")
    two = load_space(space_file(tmp_path, trials=2))
    settings = SweepSettings.of(
        two, study_storage=str(tmp_path / "j.journal"), tracking=TrackingSettings(dir=str(store.root))
    )
    run_optuna_sweep(two, store, settings, log=lambda s: None)
    check_runs(offline_runs(store.root), 2)


def test_two_trial_ray_sweep_leaves_two_offline_runs(tmp_path, monkeypatch, local_ray):
    from stabench.sweep.ray import run_ray_sweep
    from stabench.sweep.ray_cluster import RayCluster

    monkeypatch.setenv("WANDB_MODE", "offline")
    store = Store(tmp_path / "store")
    space = load_space(space_file(tmp_path, trials=2))
    run_ray_sweep(
        space,
        store,
        SweepSettings.of(space, tracking=TrackingSettings(mode="offline", dir=str(store.root))),
        RayCluster(ray_dir=str(tmp_path / "ray")),
        log=lambda s: None,
    )
    check_runs(offline_runs(store.root), 2)


def test_failing_wandb_init_leaves_the_trial_ok(tmp_path, monkeypatch):
    import wandb

    def broken_init(*a, **k):
        raise wandb.errors.CommError("simulated: service down")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(RuntimeWarning, match="W&B disabled"):
        rec = run_trial(tiny_config(), tmp_path, tracking=TrackingSettings(mode="online", dir=str(tmp_path)))
    assert rec["status"] == "ok"
    assert (tmp_path / rec["run_id"] / "record.json").exists()


def test_online_init_failure_falls_back_to_offline_once(tmp_path, monkeypatch):
    import wandb

    real_init = wandb.init

    def offline_only(*a, **k):
        if k.get("mode") == "online":
            raise wandb.errors.CommError("simulated: no network")
        return real_init(*a, **k)

    monkeypatch.setattr(wandb, "init", offline_only)
    with pytest.warns(RuntimeWarning, match="logging offline instead") as caught:
        rec = run_trial(tiny_config(), tmp_path, tracking=TrackingSettings(mode="online", dir=str(tmp_path)))
    assert rec["status"] == "ok"
    assert rec["wandb"]["mode"] == "offline"
    assert len([w for w in caught if "W&B" in str(w.message)]) == 1
    (run_dir,) = offline_runs(tmp_path)
    assert run_dir.name.endswith(rec["wandb"]["id"])


def test_run_id_is_one_per_sweep_config_and_seed():
    from stabench.records.tracking import wandb_run_id

    rec = {"config_hash": "abc", "seed": 0, "run_id": "r1", "tags": {"sweep": "s"}}
    assert wandb_run_id(rec) == wandb_run_id({**rec, "run_id": "r2"})  # a restarted trial continues its run
    assert wandb_run_id(rec) != wandb_run_id({**rec, "seed": 1})
    assert wandb_run_id(rec) != wandb_run_id({**rec, "tags": {"sweep": "t"}})
    assert wandb_run_id({**rec, "tags": {}}) != wandb_run_id({**rec, "tags": {}, "run_id": "r2"})  # plain `train`


def test_failing_wandb_log_midway_leaves_the_trial_ok(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    import wandb.sdk.wandb_run as wr

    calls = {"n": 0}
    original = wr.Run.log

    def flaky_log(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 3:
            raise ConnectionError("simulated network loss")
        return original(self, *a, **k)

    monkeypatch.setattr(wr.Run, "log", flaky_log)
    with pytest.warns(RuntimeWarning, match="simulated network loss"):
        rec = run_trial(tiny_config(), tmp_path, tracking=TrackingSettings(dir=str(tmp_path)))
    assert rec["status"] == "ok"
    assert len(rec["curves"]["loss"]) == 20


def test_disabled_creates_nothing(tmp_path):
    rec = run_trial(tiny_config(), tmp_path, tracking=TrackingSettings(mode="disabled", dir=str(tmp_path)))
    assert rec["status"] == "ok"
    assert not (tmp_path / "wandb").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [rec["run_id"]]


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", "/nonexistent")
    assert TrackingSettings().resolved_mode() == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert TrackingSettings().resolved_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert TrackingSettings().resolved_mode() == "disabled"
    assert TrackingSettings(mode="offline").resolved_mode() == "offline"


def test_project_and_entity_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "mine")
    monkeypatch.setenv("WANDB_ENTITY", "team")
    assert TrackingSettings().project == "mine"
    assert TrackingSettings().entity == "team"
    assert TrackingSettings(project="given").project == "given"


# ---------------------------------------------------------------------------------------------
# A scored baseline point: sample grids per evaluation, the samples table, the baseline's job type and tags, and
# every key docs/wandb.md promises
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    """The offline W&B run of a tiny trial that scores 16 samples per weight set at steps 10 and 20, logged as the
    `ddpm` point of sweep `q` (as `sweep --with-baselines` runs it)."""
    root = tmp_path_factory.mktemp("scored")
    rec = run_trial(
        tiny_config("eval.samples=16", "eval.sampler_steps=5", "eval.grid=16"),
        root,
        tags={"sweep": "q", "baseline_point": "ddpm"},
        tracking=TrackingSettings(mode="offline", dir=str(root)),
    )
    (run_dir,) = offline_runs(root)
    return rec, read_offline_run(run_dir)


def logged(run, key):
    """The history rows that logged `key` (an image or table logs its fields as `key/width`, `key/_type`, ...)."""
    return [{k.removeprefix(key + "/"): v for k, v in row.items() if k.startswith(key + "/")} for row in run["history"]
            if any(k.startswith(key + "/") for k in row)]  # fmt: skip


def test_a_baseline_point_is_a_baseline_run(scored_run):
    rec, run = scored_run
    assert run["job_type"] == "baseline"
    assert "baseline" in run["tags"]
    assert "baseline=ddpm" in run["tags"]
    assert run["name"] == "ddpm@q s0"


def test_every_evaluation_logs_a_readable_grid_per_weight_set(scored_run):
    rec, run = scored_run
    for name in ("raw", "ema_0.9999"):
        grids = logged(run, f"samples/{name}")
        assert len(grids) == len(rec["evals"])  # one per evaluation point
        assert all(g["_type"] == "image-file" for g in grids)
        assert min(min(g["width"], g["height"]) for g in grids) >= 256


def test_the_samples_table_has_a_row_per_evaluation_and_weight_set(scored_run):
    rec, run = scored_run
    (table,) = logged(run, "samples/table")
    assert table["_type"] == "table-file"
    assert table["nrows"] == 2 * len(rec["evals"])
    (final,) = logged(run, "samples/final")
    assert min(final["width"], final["height"]) >= 256


def test_wandb_attrs_say_where_the_run_is(scored_run):
    from stabench.records.tracking import wandb_attrs

    rec, run = scored_run
    assert wandb_attrs(rec) == {"wandb_id": rec["wandb"]["id"], "wandb_project": "stabench"}  # offline: no URL yet
    assert wandb_attrs({}) == {}


DOCS = Path(__file__).resolve().parents[2] / "docs" / "wandb.md"


def promised_keys() -> list[str]:
    """The W&B keys docs/wandb.md names (`probe/skip_norm_<i>`: `<...>` stands for any one segment)."""
    keys = re.findall(r"`((?:train|probe|eval|samples|best)/[^`\s]+)`", DOCS.read_text())
    return sorted(set(keys))


INCEPTION_KEYS = {"eval/fid/*", "eval/fid/<weights>", "eval/kid/<weights>"}  # need Inception weights, not shipped


def test_docs_promise_only_keys_that_are_logged(scored_run):
    rec, run = scored_run
    seen = set().union(*run["history"]) | set(run["summary"])
    assert len(promised_keys()) >= 10
    for key in set(promised_keys()) - INCEPTION_KEYS:
        pattern = re.escape(key).replace(re.escape("*"), "[^/]+")
        pattern = re.sub(r"<[^>]+>", "[^/]+", pattern.replace("\\<", "<").replace("\\>", ">"))
        assert any(re.fullmatch(pattern + "(/.+)?", k) for k in seen), key

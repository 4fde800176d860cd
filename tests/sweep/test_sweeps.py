"""Real sweeps on tiny trials: Optuna (in-process and as a killed/resumed CLI process) and Ray Tune."""

import collections
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from stabench.cli import main
from stabench.records.store import Store
from stabench.sweep import SweepSettings, confirm
from stabench.sweep.optuna import run_optuna_sweep
from stabench.sweep.space import load_space
from tests.helpers import space_file
from tests.sweep.ray_nodes import RAY, free_port, ray_env, ray_temp_dir, start_head, stop


def by_trial(store, sweep="t"):
    return collections.Counter(r["tags"]["trial_number"] for r in store.records(sweep=sweep))


def test_optuna_sweep_writes_one_tagged_record_per_trial_and_seed(tmp_path):
    space = load_space(space_file(tmp_path, seeds=(0, 1)))
    store = Store(tmp_path / "store")
    summary = run_optuna_sweep(
        space, store, SweepSettings.of(space, study_storage=str(tmp_path / "j.journal")), log=lambda s: None
    )
    assert summary["counts"]["complete"] == 4
    assert summary["best"]["params"]
    records = list(store.records(sweep="t"))
    assert len(records) == 8
    assert by_trial(store) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert {r["tags"]["backend"] for r in records} == {"optuna"}
    assert {r["seed"] for r in records} == {0, 1}
    # the study value is the mean over seeds of each record's metric
    study = optuna.load_study(
        study_name="t",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.journal"))),
    )
    for t in study.trials:
        vals = [r["metrics"]["best_probe_loss"] for r in records if r["tags"]["trial_number"] == t.number]
        assert t.value == pytest.approx(sum(vals) / 2)
    # what optuna-dashboard shows: objective names, where the study comes from, the records behind each trial
    assert study.metric_names == ["best_probe_loss"]
    assert study.user_attrs["space_file"] == space.source
    assert study.user_attrs["seeds"] == [0, 1]
    assert study.user_attrs["backend"] == "optuna"
    assert len(study.user_attrs["fingerprint"]) == 12  # a short hash; the whole fingerprint is a system attr
    for t in study.trials:
        run_ids = {r["run_id"] for r in records if r["tags"]["trial_number"] == t.number}
        assert set(t.user_attrs["run_ids"]) == run_ids
    from stabench.leaderboard.plots import write_importance

    png, why = write_importance(study, tmp_path)  # too few trials for an importance: left out, saying why
    assert png is None
    assert "omitted" in why
    # re-running the same sweep continues the study: nothing new to do, nothing recorded twice
    run_optuna_sweep(
        space, store, SweepSettings.of(space, study_storage=str(tmp_path / "j.journal")), log=lambda s: None
    )
    assert len(list(store.records(sweep="t"))) == 8
    # confirm: the 2 best configs get a third seed; seeds 0 and 1 are reused, not re-run
    best = sorted(study.trials, key=lambda t: t.value)[:2]
    confirmed = confirm(store, "t", "best_probe_loss", top=2, n_seeds=3, log=lambda s: None)
    assert len(confirmed) == 6
    assert len(list(store.records(sweep="t"))) == 10
    assert {r["tags"]["trial_number"] for r in confirmed} == {t.number for t in best}


def test_without_a_storage_the_study_journal_lives_in_the_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    store = Store(tmp_path / "store")
    run_optuna_sweep(load_space(space_file(tmp_path, trials=1)), store, log=lambda s: None)
    assert (store.root / "optuna" / "t.journal").is_file()
    assert not (tmp_path / "results").exists()


def test_tpe_runs_with_constant_liar_and_models_conditional_keys_jointly(tmp_path):
    from stabench.sweep.study import make_sampler

    conditional = make_sampler(load_space(space_file(tmp_path)))  # lsc.kappa is `when: lsc.mode`
    assert conditional._constant_liar
    assert conditional._multivariate
    assert conditional._group
    flat = make_sampler(load_space(space_file(tmp_path, space={"lr": {"type": "float", "low": 1e-4, "high": 1e-2}})))
    assert not flat._multivariate
    no_liar = {"name": "tpe", "options": {"constant_liar": False}}
    chosen = make_sampler(load_space(space_file(tmp_path, sampler=no_liar)))
    assert not chosen._constant_liar  # the space's own option wins


def test_median_pruner_prunes_a_deliberately_bad_trial(tmp_path):
    space = load_space(
        space_file(
            tmp_path,
            space={"optim.lr": {"type": "categorical", "choices": [3e-3, 2e-3, 1e-9]}},
            trials=3,
            pruner="median",
            fixed={"optim.steps": 40},
        )
    )
    space = space.model_copy(
        update={"pruner": space.pruner.model_copy(update={"options": {"n_startup_trials": 2, "n_warmup_steps": 0}})}
    )
    store = Store(tmp_path / "store")
    points = {"a": {"optim.lr": 3e-3}, "b": {"optim.lr": 2e-3}, "frozen": {"optim.lr": 1e-9}}  # cannot learn
    summary = run_optuna_sweep(
        space,
        store,
        SweepSettings.of(space, study_storage=str(tmp_path / "j.journal"), named_points=points),
        log=lambda s: None,
    )
    assert summary["counts"]["pruned"] == 1
    assert summary["counts"]["complete"] == 2
    (pruned,) = [r for r in store.records(sweep="t") if r["status"] == "pruned"]
    assert pruned["config"]["optim"]["lr"] == 1e-9
    assert pruned["pruned_at"] == 10
    assert pruned["tags"]["baseline_point"] == "frozen"
    assert pruned["steps_completed"] == 10
    assert pruned["metrics"]["instability"] is not None


def test_two_objectives_report_a_pareto_front(tmp_path):
    space = load_space(
        space_file(
            tmp_path,
            objectives=[{"metric": "best_probe_loss"}, {"metric": "instability"}],
            sampler={"name": "nsga2", "seed": 0},
        )
    )
    summary = run_optuna_sweep(
        space,
        Store(tmp_path / "store"),
        SweepSettings.of(space, study_storage=str(tmp_path / "j.journal")),
        log=lambda s: None,
    )
    front = summary["pareto_front"]
    assert front
    assert all(len(p["values"]) == 2 for p in front)
    # nobody on the front is dominated by another member
    for a in front:
        assert not any(
            all(x <= y for x, y in zip(b["values"], a["values"])) and b["values"] != a["values"] for b in front
        )


def test_ray_tune_sweep_with_asha_writes_records_in_the_same_format(tmp_path, local_ray):
    from stabench.sweep.ray import run_ray_sweep
    from stabench.sweep.ray_cluster import RayCluster
    from stabench.sweep.study import make_storage

    space = load_space(space_file(tmp_path, trials=4, pruner="median"))
    store, journal = Store(tmp_path / "store"), str(tmp_path / "ray.journal")
    run_ray_sweep(
        space,
        store,
        SweepSettings.of(space, study_storage=journal),
        RayCluster(ray_dir=str(tmp_path / "ray")),
        log=lambda s: None,
    )
    records = list(store.records(sweep="t"))
    assert len(by_trial(store)) == 4  # 4 Ray trials, each recorded (ok or pruned by ASHA)
    assert {r["status"] for r in records} <= {"ok", "pruned"}
    assert {r["tags"]["backend"] for r in records} == {"ray"}
    # Tune reuses a trial's actor for the next trial: 4 trials on 2 CPU slots are trained by at most 2 processes
    owners = {json.loads((store.root / r["run_id"] / "owner.json").read_text())["pid"] for r in records}
    assert len(owners) <= 2
    # The study holds final values only: a trial ASHA stopped is PRUNED there, not COMPLETE with an early value.
    study = optuna.load_study(study_name="t", storage=make_storage(journal, "t", heartbeats=False)[0])
    states = collections.Counter(t.state.name for t in study.trials)
    assert states["PRUNED"] == sum(r["status"] == "pruned" for r in records)
    finals = {r["metrics"]["best_probe_loss"] for r in records if r["status"] == "ok"}
    assert {t.value for t in study.trials if t.state.name == "COMPLETE"} <= finals
    # --resume restores the experiment (the small version of the slow "Ray driver killed" scenario): Tune finds every
    # trial ended, so nothing is trained or recorded again
    lines = []
    again = run_ray_sweep(
        space,
        store,
        SweepSettings.of(space, study_storage=journal, resume=True),
        RayCluster(ray_dir=str(tmp_path / "ray")),
        log=lines.append,
    )
    assert any("restoring Ray Tune experiment" in line for line in lines)
    assert again["trials"] == 4
    assert len(list(store.records(sweep="t"))) == len(records)
    optuna_record = Store(tmp_path / "o").root
    one = load_space(space_file(tmp_path, trials=1))
    ref = run_optuna_sweep(
        one, Store(optuna_record), SweepSettings.of(one, study_storage=str(tmp_path / "j.journal")), log=lambda s: None
    )
    assert ref["counts"]["complete"] == 1
    (opt,) = Store(optuna_record).records()
    assert set(opt) == set(records[0])
    assert set(opt["tags"]) == set(records[0]["tags"])


@pytest.mark.slow  # two `ray start` nodes; the default run has the in-process Ray sweeps above
def test_ray_sweep_on_a_two_node_cluster_from_ray_address(tmp_path):
    """`ray start` on two nodes (one machine): the head has no CPUs, so every trial runs on the second node, in a
    working directory without the store; the driver joins through $RAY_ADDRESS (as `ray job submit` sets it) and
    every record arrives in the driver's store, saying which node trained it. The nodes are ended by their temp
    dir, never with `ray stop`, which would end every Ray on this machine."""
    port, temp_dir = free_port(), ray_temp_dir()
    env = {**ray_env(temp_dir), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    head = start_head(port, temp_dir)
    worker = subprocess.Popen([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", "--block"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        path = space_file(tmp_path, trials=2)
        out = subprocess.run(
            [sys.executable, "-m", "stabench.cli", "sweep", str(path), "--backend", "ray", "--store", "store",
             "--ray-dir", "ray", "--gpus-per-trial", "0"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        records = list(Store(tmp_path / "store").records(sweep="t"))
        assert len(by_trial(Store(tmp_path / "store"))) == 2
        (node,) = {r["device"]["ray_node_id"] for r in records}
        listing = "import json, ray; ray.init(log_to_driver=False); print(json.dumps({n['NodeID']: " \
                  "n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive']}))"  # fmt: skip
        cpus = subprocess.run([sys.executable, "-c", listing], capture_output=True, text=True, timeout=120, env=env)
        cpus_of = json.loads(cpus.stdout.strip().splitlines()[-1])
        assert sorted(cpus_of.values()) == [0.0, 2.0]  # the head and the worker node
        assert cpus_of[node] == 2.0  # the trials ran on the worker node
        board = CliRunner().invoke(
            main, ["leaderboard", "--store", str(tmp_path / "store"), "--sweep", "t", "--metric", "best_probe_loss",
                   "--no-plots"],
        )  # fmt: skip
        assert board.exit_code == 0, board.output[-3000:]
        assert (tmp_path / "store" / "leaderboard" / "leaderboard.md").is_file()
    finally:
        stop(worker)
        stop(head, temp_dir)


def test_unreachable_ray_address_is_a_user_error(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "stabench.cli",
            "sweep",
            str(space_file(tmp_path)),
            "--backend",
            "ray",
            "--address",
            "127.0.0.1:1",
            "--store",
            "store",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "--address" in out.stderr
    assert "Traceback" not in out.stderr


def test_named_points_are_whole_points_of_the_space():
    from stabench.sweep import named_points
    from stabench.sweep.baselines import reference_configs

    space = load_space(Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml")
    points = named_points(space, reference_configs())
    # scalelong-ls (mode learnable) is not a point of this space: it is left out, not enqueued half-filled
    assert list(points) == ["ddpm", "scalelong-cs", "scalelong-inv-sqrt2"]
    assert points["scalelong-cs"] == {"lsc.mode": "constant", "lsc.kappa": 0.5, "optim.clip_norm": 1.0}
    assert points["ddpm"] == {"lsc.mode": "none", "optim.clip_norm": 1.0}

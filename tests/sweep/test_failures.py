"""An exception inside a trial (a simulated CUDA OOM at step 5) is a `failed` record and a failed backend trial;
the sweep goes on; `--max-failures` bounds it; a diverged trial is a result, not a failure."""

import collections
import math

import optuna
import pytest

from stabench.records.store import Store
from stabench.sweep import SweepSettings
from stabench.sweep.optuna import run_optuna_sweep
from stabench.sweep.space import load_space
from tests.helpers import space_file
from tests.sweep.faults import OOM_LR, simulate_oom

LR_CHOICES = {"optim.lr": {"type": "categorical", "choices": [3e-3, 2e-3, OOM_LR, 50.0]}}
NO_CLIP = {"optim.clip_norm": None, "optim.steps": 60}  # lr 50 without clipping diverges


def assert_failed_record(rec):
    assert rec["status"] == "failed"
    assert rec["steps_completed"] == 4
    assert rec["error"]["type"] == "OutOfMemoryError"
    assert "simulated" in rec["error"]["message"]
    assert "optimization_step" in rec["error"]["traceback"]


@pytest.fixture
def oom(monkeypatch):
    import stabench.engine.trial as trial_mod

    monkeypatch.setattr(trial_mod, "optimization_step", trial_mod.optimization_step)  # restored after the test
    simulate_oom()


def test_optuna_sweep_goes_on_after_a_failed_trial_and_diverged_is_a_result(tmp_path, oom):
    space = load_space(
        space_file(tmp_path, space=LR_CHOICES, fixed=NO_CLIP, trials=3, sampler={"name": "random", "seed": 0})
    )
    store = Store(tmp_path / "store")
    points = {"oom": {"optim.lr": OOM_LR}, "diverges": {"optim.lr": 50.0}}  # run first
    summary = run_optuna_sweep(
        space,
        store,
        SweepSettings.of(space, study_storage=str(tmp_path / "j.journal"), named_points=points, max_failures=3),
        log=lambda s: None,
    )
    c = summary["counts"]
    assert c["complete"] == 3
    assert 1 <= c["fail"] <= 3
    study = optuna.load_study(
        study_name="t",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.journal"))),
    )
    by_status = collections.defaultdict(list)
    for r in store.records(sweep="t"):
        by_status[r["status"]].append(r)
    assert len(by_status["failed"]) == c["fail"]
    for rec in by_status["failed"]:
        assert_failed_record(rec)
        assert study.trials[rec["tags"]["trial_number"]].state.name == "FAIL"
        assert "OutOfMemoryError" in study.trials[rec["tags"]["trial_number"]].user_attrs["error"]
    (diverged,) = by_status["diverged"]  # a result: the trial is COMPLETE, with the worst value
    trial = study.trials[diverged["tags"]["trial_number"]]
    assert trial.state.name == "COMPLETE"
    assert math.isinf(trial.value)


def test_max_failures_stops_the_sweep(tmp_path, oom):
    space = load_space(space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [OOM_LR]}}, trials=5))
    lines = []
    summary = run_optuna_sweep(
        space,
        Store(tmp_path / "store"),
        SweepSettings.of(space, study_storage=str(tmp_path / "j.journal"), max_failures=1),
        log=lines.append,
    )
    assert summary["counts"]["fail"] == 2
    assert summary["counts"]["complete"] == 0
    assert any("more than 1 failed trials" in line for line in lines)
    assert len(list(Store(tmp_path / "store").records(sweep="t"))) == 2


def test_ray_trial_failure_is_an_errored_trial_retried_max_failures_times(tmp_path, local_ray):
    from stabench.sweep.ray import run_ray_sweep
    from stabench.sweep.ray_cluster import RayCluster

    space = load_space(space_file(tmp_path, space=LR_CHOICES, fixed=NO_CLIP, trials=3))
    points = {"ok": {"optim.lr": 3e-3}, "oom": {"optim.lr": OOM_LR}, "diverges": {"optim.lr": 50.0}}
    store = Store(tmp_path / "store")
    summary = run_ray_sweep(  # on the shared Ray, whose workers simulate the OOM (tests/sweep/faults.py)
        space,
        store,
        SweepSettings.of(space, max_failures=1, named_points=points),
        RayCluster(ray_dir=str(tmp_path / "ray")),
        log=lambda s: None,
    )
    assert summary["trials"] == 3
    assert summary["errors"] == 1
    by_status = collections.defaultdict(list)
    for r in store.records(sweep="t"):
        by_status[r["status"]].append(r)
    assert len(by_status["failed"]) == 2  # the first attempt and one retry (--max-failures 1)
    for rec in by_status["failed"]:
        assert_failed_record(rec)
    assert len(by_status["diverged"]) == 1
    assert len(by_status["ok"]) + len(by_status["pruned"]) == 1
    # the named points keep their names, as with Optuna: the leaderboard shows them as <name>@<sweep>
    assert {r["tags"]["baseline_point"] for r in store.records(sweep="t")} == set(points)

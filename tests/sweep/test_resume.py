"""A Ray trial whose worker dies mid-seed resumes at its last checkpoint step and finishes bit for bit like a run
that was never interrupted."""

import os

import pytest

from stabench.space import load_space
from stabench.store import Store
from tests.helpers import space_file
from tests.sweep.faults import KILL_AT_STEP

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
POINT = {"optim.lr": 2e-3}


@pytest.fixture
def ray_that_kills_once(tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "worker_process_setup_hook": "tests.sweep.faults.kill_once_mid_seed",
            "env_vars": {
                "RAY_CHDIR_TO_TRIAL_DIR": "0",
                "PYTHONPATH": REPO,
                "STABENCH_KILL_MARKER": str(tmp_path / "killed"),
            },
        },
    )
    yield tmp_path / "killed"
    ray.shutdown()


def sweep_once(tmp_path, sweep: str) -> dict:
    from stabench.sweep.ray import run_ray_sweep

    space = load_space(space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [2e-3]}},
                                  fixed={"eval.every": 5}, trials=1))  # fmt: skip
    store = Store(tmp_path / "store")
    run_ray_sweep(space, store, study_name=sweep, ray_dir=str(tmp_path / "ray"), max_failures=1,
                  named_points={"p": POINT}, log=lambda s: None)  # fmt: skip
    (record,) = store.records(sweep=sweep)
    return record


def test_a_worker_killed_mid_seed_resumes_from_its_checkpoint_step(tmp_path, ray_that_kills_once):
    resumed = sweep_once(tmp_path, "killed")
    assert ray_that_kills_once.exists()  # the worker did die, at step KILL_AT_STEP
    assert resumed["status"] == "ok"
    assert resumed["resumed_from_step"] == 10
    assert resumed["resumed_from_step"] < KILL_AT_STEP
    assert not (tmp_path / "store" / resumed["run_id"] / "checkpoint.pt").exists()  # only a resume point

    uninterrupted = sweep_once(tmp_path, "whole")  # the marker exists now: nothing is killed
    assert uninterrupted["resumed_from_step"] is None
    assert resumed["config_hash"] == uninterrupted["config_hash"]
    assert resumed["curves"]["loss"] == uninterrupted["curves"]["loss"]
    assert resumed["probes"] == uninterrupted["probes"]
    assert resumed["metrics"]["final_probe_loss"] == uninterrupted["metrics"]["final_probe_loss"]

"""A worker that dies mid-seed (a Ray actor, an Optuna worker process) leaves a checkpoint; the trial's restart or
retry continues that seed from its last checkpoint step and finishes like an uninterrupted run (to float rounding)."""

import os

import pytest

from stabench.records.store import Store
from stabench.sweep import SweepSettings
from stabench.sweep.space import load_space
from tests.helpers import space_file
from tests.sweep.faults import KILL_AT_STEP, KILL_LR

POINT = {"optim.lr": KILL_LR}  # the learning rate whose trial tests/sweep/faults.py kills once


def sweep_once(tmp_path, sweep: str) -> dict:
    from stabench.sweep.ray import run_ray_sweep
    from stabench.sweep.ray_cluster import RayCluster

    space = load_space(space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [KILL_LR]}},
                                  fixed={"eval.every": 5}, trials=1))  # fmt: skip
    store = Store(tmp_path / "store")
    settings = SweepSettings.of(space, study=sweep, max_failures=1, named_points={"p": POINT})
    run_ray_sweep(space, store, settings, RayCluster(ray_dir=str(tmp_path / "ray")), log=lambda s: None)
    (record,) = store.records(sweep=sweep)
    return record


@pytest.mark.slow  # a Ray actor killed mid-seed; the default run has the retry in-process (below)
def test_a_worker_killed_mid_seed_resumes_from_its_checkpoint_step(tmp_path, local_ray):
    resumed = sweep_once(tmp_path, "killed")  # on the shared Ray, whose workers kill this trial once
    assert local_ray.exists()  # the worker did die, at step KILL_AT_STEP
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


def train_until_killed(store_root: str, space_path: str, marker: str) -> None:
    """A worker process that dies at step KILL_AT_STEP of its seed, as an OOM-killed Optuna worker would."""
    import torch

    from stabench.records.record import Tags
    from stabench.sweep.core import ConfigRun, Placement
    from tests.sweep.faults import kill_once_mid_seed

    torch.set_num_threads(min(2, os.cpu_count() or 1))  # as in the test process, so the halves are comparable
    os.environ["STABENCH_KILL_MARKER"] = marker
    kill_once_mid_seed()
    run = ConfigRun(load_space(space_path), Tags(sweep="t"), Placement(store_root))
    list(run.events(POINT))


def kill_a_worker_mid_seed(tmp_path, timeout_s: float):
    """A worker process that trains the one seed of a space into tmp_path/store and dies at KILL_AT_STEP, leaving
    its checkpoint and no record: (the space's path, the worker's exit code)."""
    import multiprocessing as mp

    path = space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [KILL_LR]}},
                      fixed={"eval.every": 5, "checkpoint_every": 5}, trials=1)  # fmt: skip
    worker = mp.get_context("spawn").Process(
        target=train_until_killed, args=(str(tmp_path / "store"), str(path), str(tmp_path / "killed"))
    )
    worker.start()
    worker.join(timeout=timeout_s)
    return path, worker.exitcode


def test_a_retried_trial_continues_the_seed_a_dead_worker_checkpointed(tmp_path):

    from stabench.records.record import Tags
    from stabench.sweep.core import ConfigRun, Placement

    path, exitcode = kill_a_worker_mid_seed(tmp_path, timeout_s=300)
    assert exitcode == 1  # died mid-seed, leaving its checkpoint at step 10 and no record

    retry = ConfigRun(load_space(path), Tags(sweep="t"), Placement(str(tmp_path / "store")))  # the retried trial
    list(retry.events(POINT))
    (resumed,) = retry.records
    assert resumed["resumed_from_step"] == 10

    fresh = ConfigRun(load_space(path), Tags(sweep="t"), Placement(str(tmp_path / "fresh")))
    list(fresh.events(POINT))
    (whole,) = fresh.records
    assert whole["resumed_from_step"] is None
    # the killed worker was another process (its own intra-op threads: float sums in another order); a restart
    # from step 0 or another RNG state would differ by far more than 1e-6
    assert resumed["curves"]["loss"] == pytest.approx(whole["curves"]["loss"], rel=1e-6)
    assert resumed["metrics"]["final_probe_loss"] == pytest.approx(whole["metrics"]["final_probe_loss"], rel=1e-6)


def test_another_machine_continues_the_seed_a_dead_machine_claimed(tmp_path):
    """The seed's claim names the dead worker's run folder; a process that may take the claim over (the storage
    or --take-over said the holder is gone) continues that folder from its checkpoint, though the folder's
    owner.json names another machine (which alone would never be taken over)."""
    import json

    from stabench.config import config_hash
    from stabench.records.record import Tags
    from stabench.sweep.claims import SeedClaims, claim_key
    from stabench.sweep.core import ConfigRun, Placement
    from stabench.sweep.space import trial_config

    path, exitcode = kill_a_worker_mid_seed(tmp_path, timeout_s=600)
    assert exitcode == 1
    # what machine A would have left: its claim and owner file name machine A
    space = load_space(path)
    key = claim_key(config_hash(trial_config(space, POINT, 0)), 0)
    claims = SeedClaims(tmp_path / "store", "t")
    (run_dir,) = [d for d in (tmp_path / "store").iterdir() if (d / "checkpoint.pt").exists()]
    machine_a = {**json.loads((run_dir / "owner.json").read_text()), "host": "machine-a", "boot": "b"}
    (run_dir / "owner.json").write_text(json.dumps(machine_a))
    taken = claims.take(key, claims.top(key), {**machine_a, "trial": 0})
    claims.name_run(taken, run_dir)

    waiting = ConfigRun(space, Tags(sweep="t", trial_number=1), Placement(str(tmp_path / "store")))
    assert not waiting._holder_gone(claims.top(key))  # machine A might be alive: nobody takes its seed

    retry = ConfigRun(space, Tags(sweep="t", trial_number=1), Placement(str(tmp_path / "store")),
                      holder_gone=lambda holder: holder["host"] == "machine-a")  # fmt: skip
    list(retry.events(POINT))
    (resumed,) = retry.records
    assert resumed["resumed_from_step"] == 10
    assert resumed["run_dir"] == str(run_dir)
    assert claims.top(key).gen == taken.gen + 1
    assert claims.top(key).done

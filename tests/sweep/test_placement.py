"""Where trials run: one GPU per Ray trial on a cluster with GPUs (Ray's fake GPU resources here), the CPU for a
zero-GPU trial, Optuna workers taking GPUs in turn, and the placement written into each record."""

import os

import pytest
import torch
from click.testing import CliRunner

from stabench.cli import main
from stabench.config import config_hash
from stabench.errors import UserError
from stabench.records.record import Tags
from stabench.records.store import Store
from stabench.sweep.core import ConfigRun, Placement
from stabench.sweep.optuna import default_workers, worker_gpus
from stabench.sweep.space import load_space, trial_config
from tests.helpers import space_file, stop_ray, tiny_config


def test_auto_workers_are_one_per_gpu_else_one_per_core_at_most_the_trials(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert default_workers(10) == 4
    assert default_workers(3) == 3
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_workers(10) == 2
    assert default_workers(10, gpus=[0]) == 1


def test_auto_workers_on_resume_count_only_the_trials_left():
    import optuna

    from stabench.sweep.optuna import trials_left

    study = optuna.create_study()
    for _ in range(3):
        study.tell(study.ask(), 1.0)
    study.ask()  # one running
    assert trials_left(study, 5) == 1
    assert trials_left(study, 4) == 1  # never fewer than one
    assert trials_left(optuna.create_study(), 4) == 4


def test_one_worker_leaves_the_device_to_the_config():
    assert worker_gpus(None, 1) == ()


def test_several_workers_take_every_visible_gpu_in_turn(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_gpus(None, 3) == (0, 1)


def test_listed_gpus_are_kept_in_their_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert worker_gpus([3, 1], 2) == (3, 1)


def test_a_listed_gpu_that_is_not_visible_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="GPU 2 is not visible") as err:
        worker_gpus([0, 2], 2)
    assert err.value.key == "gpus"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer on a machine without a GPU")
def test_sweep_with_gpus_on_a_machine_without_one_exits_2_before_training(tmp_path):
    args = ["sweep", str(space_file(tmp_path)), "--gpus", "0", "--store", str(tmp_path / "s")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "gpus" in result.output
    assert "none (no GPU is visible)" in result.output
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_a_gpu_list_that_is_not_one_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["sweep", str(space_file(tmp_path)), "--gpus", "0,x"])
    assert result.exit_code == 2, result.output
    assert "not a list of GPU indices" in result.output


def test_a_placed_device_overrides_the_config_but_not_its_hash(tmp_path):
    space = load_space(space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [1e-3]}}))
    run = ConfigRun(space, Tags(sweep="t"), Placement(str(tmp_path / "store"), device="cpu"))
    list(run.events({"optim.lr": 1e-3}))
    (record,) = run.records
    assert record["config"]["device"] == "cpu"
    assert record["config_hash"] == config_hash(trial_config(space, {"optim.lr": 1e-3}, 0))  # device=auto there


@pytest.fixture(scope="module")
def ray_with_two_fake_gpus():
    ray = pytest.importorskip("ray")
    stop_ray()  # the shared test Ray, if up: this module's Ray has GPUs
    ray.init(
        num_cpus=2,
        num_gpus=2,  # Ray schedules fake GPUs on a CPU machine: placement is Ray's, training runs on the CPU
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0"}},
    )
    yield ray
    stop_ray()


def run_one_job(tmp_path, gpus_per_trial):
    from stabench.sweep.ray import run_ray_jobs
    from stabench.sweep.ray_cluster import RayCluster

    store = Store(tmp_path / "store")
    job = ("tiny", tiny_config(), Tags(sweep="placement").to_dict())
    run_ray_jobs([job], store, RayCluster(ray_dir=str(tmp_path / "ray"), gpus_per_trial=gpus_per_trial))
    (record,) = store.records()
    return record


def test_on_a_cluster_with_gpus_a_ray_trial_gets_one_gpu_by_default(tmp_path, ray_with_two_fake_gpus):
    record = run_one_job(tmp_path, None)
    assert len(record["device"]["ray_gpu_ids"]) == 1
    assert record["device"]["visible_devices"] == record["device"]["ray_gpu_ids"][0]
    assert record["device"]["ray_node_id"]


def test_a_zero_gpu_ray_trial_trains_on_the_cpu(tmp_path, ray_with_two_fake_gpus):
    record = run_one_job(tmp_path, 0)
    assert record["config"]["device"] == "cpu"
    assert record["device"]["ray_gpu_ids"] == []


def test_every_node_of_a_local_cluster_shares_the_store(tmp_path, ray_with_two_fake_gpus):
    from stabench.sweep.ray_cluster import check_shared

    check_shared({"store": tmp_path / "store"})
    assert list((tmp_path / "store").iterdir()) == []  # the probe files are gone


def test_a_node_that_does_not_see_the_drivers_folder_says_so(tmp_path):
    from stabench.sweep.ray_cluster import probe_shared_dir

    (tmp_path / "probe").write_text("driver")
    assert probe_shared_dir(str(tmp_path), "probe", "driver") is None
    assert "another token" in probe_shared_dir(str(tmp_path), "probe", "other")
    assert "does not hold" in probe_shared_dir(str(tmp_path / "elsewhere"), "probe", "driver")


def test_four_half_gpu_trials_pack_two_per_gpu_and_each_sees_one_device(tmp_path, ray_with_two_fake_gpus):
    from stabench.sweep.ray import run_ray_jobs
    from stabench.sweep.ray_cluster import RayCluster

    store = Store(tmp_path / "store")
    # long enough (80 steps) that the four trials run at the same time: two per fake GPU
    jobs = [(f"j{s}", tiny_config(f"seed={s}", steps=80), Tags(sweep="pack").to_dict()) for s in range(4)]
    run_ray_jobs(jobs, store, RayCluster(ray_dir=str(tmp_path / "ray"), cpus_per_trial=0.5, gpus_per_trial=0.5))
    records = list(store.records())
    assert len(records) == 4
    assert all(len(r["device"]["ray_gpu_ids"]) == 1 for r in records)  # each trial sees exactly one GPU
    assert all(r["device"]["visible_devices"] == r["device"]["ray_gpu_ids"][0] for r in records)
    assert sorted(r["device"]["ray_gpu_ids"][0] for r in records) == ["0", "0", "1", "1"]  # two share each GPU


def test_the_gpu_default_is_decided_per_trial_from_the_cluster_as_it_is(ray_with_two_fake_gpus):
    from stabench.sweep.ray_cluster import RayCluster

    resources = RayCluster(address="auto").trial_resources()  # joined by address, GPUs up: no error
    bundle = resources({}).required_resources  # what Tune asks for as it creates a trial
    assert bundle["GPU"] == 1
    assert bundle["CPU"] == 1
    assert RayCluster(gpus_per_trial=0.5).trial_resources() == {"cpu": 1, "gpu": 0.5}


def test_more_than_one_gpu_per_trial_is_refused_one_trial_uses_one_device():
    from stabench.sweep.ray_cluster import RayCluster

    with pytest.raises(UserError, match="no data parallelism") as err:
        RayCluster(gpus_per_trial=2)
    assert err.value.key == "gpus_per_trial"
    assert RayCluster(gpus_per_trial=1).gpus_per_trial == 1

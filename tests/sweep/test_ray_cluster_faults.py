"""The Ray backend as a cluster user meets it (issue 28): every trial proves that its records reach the driver's store
before it trains, the study is the truth (its space checked, `n_trials` its total, a re-run continuing the sampler,
another machine's trials never failed), ASHA never prunes a trial that trained every step, Ray checkpoints are
pruned, and the placement is refused or decided per trial. The in-process sweeps run on the shared local Ray."""

import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from stabench.cli import main
from stabench.errors import UserError
from stabench.records.store import Store
from stabench.sweep import SweepSettings
from stabench.sweep.space import load_space
from stabench.sweep.study import make_storage
from tests.helpers import space_file
from tests.sweep.faults import audit
from tests.sweep.ray_nodes import RAY, free_port, ray_env, ray_temp_dir, start_head, stop

LR = {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}


def ray_sweep(tmp_path, space, lines=None, log=None, **settings):
    from stabench.sweep.ray import run_ray_sweep
    from stabench.sweep.ray_cluster import RayCluster

    return run_ray_sweep(
        space,
        Store(tmp_path / "store"),
        SweepSettings.of(space, **settings),
        RayCluster(ray_dir=str(tmp_path / "ray")),
        log=log or (lines.append if lines is not None else (lambda s: None)),
    )


def study_of(tmp_path, name="t") -> optuna.Study:
    journal = str(tmp_path / "store" / "optuna" / f"{name}.journal")
    return optuna.load_study(study_name=name, storage=make_storage(journal, name, heartbeats=False)[0])


def finished_params(study):
    return [t.params for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


# ---------------------------------------------------------------------------------------------------------------
# 1. A trial whose store is not the driver's fails for good, before training; the sweep never says "done N/N"
# ---------------------------------------------------------------------------------------------------------------


def test_a_trial_that_cannot_find_the_drivers_token_fails_for_good_and_the_sweep_says_so(tmp_path, local_ray):
    """The store's token vanishes after the start-up check (as when a node's mount is gone by the time its trial
    lands there): every trial fails in its setup, naming its node and the store's path, nothing is trained."""
    space = load_space(space_file(tmp_path, space=LR, trials=2))
    store_dir = tmp_path / "store"
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if "per trial" in line:  # printed after the start-up check, before Tune asks for the first trial
            for token in store_dir.glob(".stabench-driver-*"):
                token.unlink()

    with pytest.raises(UserError) as err:
        ray_sweep(tmp_path, space, log=log, max_failures=3)
    message = str(err.value)
    assert "2 trial(s) could not record to the driver's store" in message
    assert str(store_dir.absolute()) in message
    assert "node " in message  # the node that could not record
    assert "does not hold the driver's probe file" in message
    assert not any("done 2/2" in line for line in lines)
    assert sum("FAILED" in line for line in lines) == 2
    study = study_of(tmp_path)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("cannot record to the driver's store" in t.user_attrs["error"] for t in study.trials)
    assert list(Store(store_dir).records()) == []  # nothing trained
    assert not any(store_dir.glob("*/owner.json"))
    assert audit("ray: store token gone after the start check", Store(store_dir), "t", space, 2, [], 0)["lost"] == 0


def test_prove_store_names_the_node_and_the_path(tmp_path):
    from stabench.sweep.ray_cluster import prove_store, store_proof

    with store_proof(tmp_path / "store") as proof:
        assert prove_store(proof) is None
        assert len(list((tmp_path / "store").glob(".stabench-driver-*"))) == 1
        elsewhere = proof.__class__(str(tmp_path / "other"), proof.name, proof.token)
        problem = prove_store(elsewhere)
        impostor = proof.__class__(proof.path, proof.name, "another driver's token")
        assert "another token" in prove_store(impostor)
    assert str(tmp_path / "other") in problem
    assert problem.startswith(f"node {__import__('socket').gethostname()}")
    assert list((tmp_path / "store").iterdir()) == []  # the token goes with the run


# ---------------------------------------------------------------------------------------------------------------
# 2 + 3. The study is the truth: n_trials is its total, a re-run continues the sampler, another machine's
# RUNNING trial is never failed, a changed space is refused
# ---------------------------------------------------------------------------------------------------------------


def test_a_rerun_grows_the_study_to_n_trials_with_new_configs_and_leaves_foreign_trials_alone(tmp_path, local_ray):
    space = load_space(space_file(tmp_path, space=LR, trials=2))
    first = ray_sweep(tmp_path, space)
    assert first["counts"]["complete"] == 2
    # another machine's trial, running in the same study while this driver runs again
    study = study_of(tmp_path)
    foreign = study.ask()
    foreign.set_user_attr("worker", {"host": "other-machine", "boot": "b", "pid": 4242, "run": "theirs"})

    lines: list[str] = []
    again = ray_sweep(tmp_path, space, lines, n_trials=5)  # 2 complete + 1 running elsewhere + 2 new
    states = collections.Counter(t.state.name for t in study_of(tmp_path).trials)
    assert states == {"COMPLETE": 4, "RUNNING": 1}
    assert study_of(tmp_path).trials[foreign.number].state.name == "RUNNING"  # not ours to fail
    params = finished_params(study_of(tmp_path))
    assert len({p["optim.lr"] for p in params}) == 4  # the re-run proposed new configs, not the first two again
    assert again["trials"] == 2
    assert any("done 5/5" in line for line in lines)  # the foreign RUNNING trial counts, as on Optuna
    row = audit("ray: run 2, re-run to 5 (1 foreign RUNNING)", Store(tmp_path / "store"), "t", space, 4, params, 4)
    assert row["lost"] == 0
    assert row["duplicated"] == 0
    assert row["records"] == 4

    nothing = ray_sweep(tmp_path, space, lines, n_trials=5)  # the budget is reached: no Tuner, no trial
    assert nothing["trials"] == 0
    assert any("nothing to run" in line for line in lines)


def test_a_changed_space_is_refused_on_ray_with_the_keys_that_differ(tmp_path):
    from stabench.sweep.ray import open_ray_study

    space = load_space(space_file(tmp_path, space=LR))
    journal = str(tmp_path / "store" / "optuna" / "t.journal")
    storage = make_storage(journal, "t", heartbeats=False)[0]
    open_ray_study(space, "t", storage, journal, tmp_path / "store")  # the study remembers this space
    wider = load_space(space_file(tmp_path, space={"optim.lr": {**LR["optim.lr"], "high": 0.1}}))
    with pytest.raises(UserError, match="was run with another space") as err:
        open_ray_study(wider, "t", storage, journal, tmp_path / "store")
    assert "space.optim.lr.high: 0.01 -> 0.1" in str(err.value)

    result = CliRunner().invoke(main, ["sweep", str(tmp_path / "space.yaml"), "--backend", "ray",
                                       "--store", str(tmp_path / "store"), "--wandb", "disabled"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "space.optim.lr.high" in result.output


# ---------------------------------------------------------------------------------------------------------------
# 5. ASHA's last rung on the final evaluation; Ray checkpoints pruned; no TensorBoard warning
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_trial_that_trained_every_step_is_complete_and_ray_keeps_two_checkpoints(tmp_path, local_ray, capfd):
    """4 evaluation points (20 steps, every 5) and ASHA's one rung at 4 evaluation points: the rung falls on the
    final evaluation, where a trial worse than the first to get there used to be stopped after training every step
    (an `ok` record, a PRUNED trial)."""
    from stabench.sweep.ray import CHECKPOINTS_KEPT

    pruner = {"min_resource": 4, "reduction_factor": 2}
    path = space_file(tmp_path, space=LR, trials=4, fixed={"eval.every": 5}, pruner="successive_halving")
    text = path.read_text().replace("name: successive_halving", f"name: successive_halving\n  options: {pruner}")
    path.write_text(text)
    space = load_space(path)
    assert space.pruner.options == pruner
    ray_sweep(tmp_path, space)
    store = Store(tmp_path / "store")
    by_trial = collections.defaultdict(list)
    for r in store.records(sweep="t"):
        by_trial[r["tags"]["trial_number"]].append(r)
    study = study_of(tmp_path)
    state_of = {t.user_attrs.get("ray_trial_id"): t.state.name for t in study.trials}
    for trial_id, records in by_trial.items():
        trained_all = all(r["status"] == "ok" and r["steps_completed"] == 20 for r in records)
        assert state_of[trial_id] == ("COMPLETE" if trained_all else "PRUNED"), (trial_id, records[0]["status"])
    complete = finished_params(study)
    row = audit("ray: ASHA rung on the final evaluation (4 trials)", store, "t", space, 4, complete, len(by_trial))
    assert row["lost"] == 0
    assert row["duplicated"] == 0
    checkpoints = collections.Counter(p.parent.name for p in (tmp_path / "ray" / "t").glob("*/checkpoint_*"))
    assert checkpoints  # Ray did checkpoint
    assert max(checkpoints.values()) <= CHECKPOINTS_KEPT
    out, err = capfd.readouterr()
    assert "invalid value" not in out + err  # TBXLogger's complaint about list-valued results


# ---------------------------------------------------------------------------------------------------------------
# 4. Placement: one device per trial; the GPU default decided per trial, or an explicit error
# ---------------------------------------------------------------------------------------------------------------


def test_more_than_one_gpu_per_trial_exits_2_before_ray_starts(tmp_path):
    args = ["sweep", str(space_file(tmp_path)), "--backend", "ray", "--gpus-per-trial", "2",
            "--store", str(tmp_path / "store"), "--wandb", "disabled"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--gpus-per-trial" in result.output
    assert "no data parallelism" in result.output
    assert not (tmp_path / "store" / "ray").exists()


def test_on_a_cluster_without_a_gpu_up_the_default_asks_for_gpus_per_trial(local_ray):
    from stabench.sweep.ray_cluster import RayCluster

    with pytest.raises(UserError, match="has no GPU up") as err:
        RayCluster(address="auto").trial_resources()  # joined by address (the shared local Ray has no GPU)
    assert err.value.key == "gpus_per_trial"
    assert RayCluster(address="auto", gpus_per_trial=0).trial_resources() == {"cpu": 1, "gpu": 0}
    assert callable(RayCluster().trial_resources())  # a local Ray: decided per trial as Tune creates it


def test_the_data_check_follows_ray_address(monkeypatch):
    from stabench.sweep.ray_cluster import cluster_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as `ray job submit` sets it for the driver
    assert cluster_address(None) == "10.0.0.1:6379"
    assert cluster_address("auto") == "auto"


# ---------------------------------------------------------------------------------------------------------------
# 1, for real: a node that joins mid-sweep in its own mount namespace, where the store's path is an empty disk
# ---------------------------------------------------------------------------------------------------------------


def can_unshare_mounts() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", "-m", "true"]).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_unshare_mounts(), reason="needs mount namespaces (root or unprivileged user namespaces)")
def test_a_node_without_the_store_joining_mid_sweep_loses_no_record_and_fails_the_sweep(tmp_path):
    """The head holds no CPUs; after the start-up check a second node joins whose mount namespace has an empty
    tmpfs at the store's path (a machine without the NFS mount). Its trials fail in setup, naming the node and the
    path; nothing is trained there, the study says FAIL, the sweep exits 2 and never prints 'done N/N'."""
    from tests.helpers import stop_ray

    stop_ray()  # the shared test Ray: this test's driver joins its own cluster
    port, head_dir, node_dir = free_port(), ray_temp_dir(), ray_temp_dir()
    head = start_head(port, head_dir)
    env = ray_env(head_dir)
    store = tmp_path / "store"
    try:
        path = space_file(tmp_path, space=LR, trials=2)
        log = open(tmp_path / "sweep.log", "w")  # noqa: SIM115
        sweep = subprocess.Popen(
            [sys.executable, "-m", "stabench.cli", "sweep", str(path), "--backend", "ray", "--store", str(store),
             "--ray-dir", str(tmp_path / "ray"), "--gpus-per-trial", "0", "--wandb", "disabled"],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**env, "RAY_ADDRESS": f"127.0.0.1:{port}"},
        )  # fmt: skip
        deadline = time.time() + 180
        while "per trial" not in (tmp_path / "sweep.log").read_text():  # the start-up check has passed
            assert sweep.poll() is None and time.time() < deadline, (tmp_path / "sweep.log").read_text()
            time.sleep(0.5)
        # the new node: its own mount namespace, an empty tmpfs where the driver's store is
        join = f"mount -t tmpfs none {store} && exec {RAY} start --address=127.0.0.1:{port} --num-cpus=2 --block"
        node = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", join], env=ray_env(node_dir),
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            code = sweep.wait(timeout=400)
        finally:
            stop(node, node_dir)
        out = (tmp_path / "sweep.log").read_text()
        assert code == 2, out[-3000:]
        assert "could not record to the driver's store" in out
        assert str(store) in out
        assert "does not hold the driver's probe file" in out
        assert "done 2/2" not in out
        study = study_of(tmp_path)
        assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
        space = load_space(path)
        row = audit("ray: node without the store joins mid-sweep", Store(store), "t", space, 2, [], 0)
        assert row["records"] == 0
        assert row["lost"] == 0
        assert list(Path(store).glob("*/owner.json")) == []  # nothing trained into the driver's store either
    finally:
        stop(head, head_dir)


def test_a_trial_the_study_already_holds_as_finished_is_not_told_again(tmp_path, capsys):
    """A killed driver told trial 0 after its last experiment checkpoint; the restored copy runs it again and
    completes: the searcher says so and leaves the study as it is (before, the run_ids attr raised
    UpdateFinishedTrialError inside Tune, which counted the trial as errored and retried it)."""
    from stabench.sweep.ray import make_searcher

    space = load_space(space_file(tmp_path, trials=1))
    storage, _ = make_storage(str(tmp_path / "j.journal"), "t", heartbeats=False)
    study = optuna.create_study(study_name="t", storage=storage, directions=space.directions)
    searcher = make_searcher(space, study, storage, None, None, "run@1", tmp_path / "store")
    assert searcher.suggest("tune-trial-1") is not None
    (trial,) = study.get_trials(deepcopy=False)
    study.tell(trial.number, 0.25)  # the earlier driver's tell
    metric = space.objectives[0].metric
    searcher.on_trial_complete("tune-trial-1", {metric: 0.5, "statuses": "ok", "run_ids": "r1"})
    (trial,) = study.get_trials(deepcopy=False)
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.value == 0.25  # not told again
    assert "was finished by an earlier driver; not told again" in capsys.readouterr().out

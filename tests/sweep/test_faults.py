"""kill -9 of a worker and of the driver, on each backend (Optuna on a journal file and on PostgreSQL, Ray Tune).

Every scenario ends with the requested number of finished trials, no finished trial missing from the store,
no (config, seed) recorded twice and no torn record. The default run has a fast instance of three scenarios
(Optuna's driver killed on a journal, one of two Optuna workers killed on PostgreSQL, the interrupted-trial checks);
the `slow` instances use two seeds per config and more trials. The rest run only in the slow set, each with a smaller
version in the default run:
- a Ray trial actor killed: tests/sweep/test_resume.py (Tune restarts the killed trial and it resumes mid-seed);
- the PostgreSQL driver killed with `--resume`: the journal instance below (the same retry, another storage);
- one of two workers killed on a journal: the PostgreSQL instance below (the same supervisor, another storage);
- the Ray driver killed and its experiment restored: tests/sweep/test_sweeps.py restores a finished Ray experiment
  in-process (`--resume` finds it, Tune restores it, nothing is trained or recorded twice).
"""

import collections
import os
import signal
import time

import optuna
import pytest

from stabench.records.store import Store
from stabench.sweep.space import load_space
from tests.helpers import space_file
from tests.sweep import faults
from tests.sweep.faults import audit, cmdline, kill_group, stabench, wait_for_records, wait_for_training
from tests.sweep.postgres import postgres_url  # noqa: F401  (fixture)

RUNNING = optuna.trial.TrialState.RUNNING
FAST = {"trials": 2, "seeds": (0,)}
SLOW = {"trials": 6, "seeds": (0, 1)}
SIZES = [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="slow", marks=pytest.mark.slow)]
STEPS = {"optim.steps": 150}  # a few seconds per trial: long enough to be killed mid-trial


def journal(tmp_path):
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.journal")))


def optuna_audit(scenario, tmp_path, space, storage, study_name, requested):
    study = optuna.load_study(study_name=study_name, storage=storage)
    states = collections.Counter(t.state.name for t in study.trials)
    complete = [t.params for t in study.trials if t.state.name == "COMPLETE"]
    row = audit(
        scenario,
        Store(tmp_path / "store"),
        study_name,
        space,
        requested,
        complete,
        states["COMPLETE"] + states["PRUNED"],
    )
    assert states["RUNNING"] == 0, states
    return row, states


def assert_nothing_lost(row, requested, interrupted=True):
    assert row["finished"] == requested, row
    assert row["lost"] == 0, row
    assert row["duplicated"] == 0, row
    assert row["torn"] == 0, row
    if interrupted:  # the killed seed's run directory, never given a record
        assert row["unrecorded_dirs"] >= 1, row


# ---------------------------------------------------------------------------------------------------------
# Optuna: the driver (the whole process group) is killed; `--resume` retries the interrupted trial
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_optuna_journal_driver_killed_then_resumed(tmp_path, size):
    path = space_file(tmp_path, fixed=STEPS, trials=size["trials"], seeds=size["seeds"])
    args = ["sweep", str(path), "--store", "store", "--study-storage", "j.journal", "--workers", "1", "--wandb",
            "disabled"]  # fmt: skip
    proc = stabench(*args, cwd=tmp_path)
    wait_for_records(tmp_path / "store", 1)
    wait_for_training(tmp_path / "store")
    kill_group(proc)
    resumed = stabench(*args, "--resume", cwd=tmp_path, log="resume.log")
    assert resumed.wait(timeout=400) == 0, (tmp_path / "resume.log").read_text()
    assert "interrupted trial(s) marked failed and queued again" in (tmp_path / "resume.log").read_text()
    row, states = optuna_audit(
        f"optuna journal, driver killed, --resume ({len(size['seeds'])} seed)",
        tmp_path,
        load_space(path),
        journal(tmp_path),
        "t",
        size["trials"],
    )
    assert_nothing_lost(row, size["trials"])
    assert states["FAIL"] == 1  # the interrupted trial: failed, and its params queued again
    assert row["records"] == size["trials"] * len(size["seeds"])


@pytest.mark.slow
@pytest.mark.parametrize("how", ["--resume", "heartbeat"])
def test_optuna_postgres_driver_killed_then_rerun(tmp_path, postgres_url, how):  # noqa: F811
    """`--resume` retries at once; a plain re-run waits for the dead trial's heartbeat to go stale."""
    path = space_file(tmp_path, fixed=STEPS, trials=3)
    study = f"pg-driver-{how.strip('-')}"
    env = {"STABENCH_HEARTBEAT_S": "1", "STABENCH_HEARTBEAT_GRACE_S": "8"}
    args = [
        "sweep",
        str(path),
        "--store",
        "store",
        "--study-storage",
        postgres_url,
        "--study",
        study,
        "--workers",
        "1",
        "--wandb",
        "disabled",
    ]
    proc = stabench(*args, cwd=tmp_path, env=env)
    wait_for_records(tmp_path / "store", 1)
    wait_for_training(tmp_path / "store")
    kill_group(proc)
    if how == "heartbeat":
        time.sleep(9)  # longer than the grace period: the running trial is stale now
    rerun = stabench(*args, *(["--resume"] if how == "--resume" else []), cwd=tmp_path, env=env, log="rerun.log")
    assert rerun.wait(timeout=400) == 0, (tmp_path / "rerun.log").read_text()
    row, states = optuna_audit(
        f"optuna postgres, driver killed, {how}", tmp_path, load_space(path), postgres_url, study, 3
    )
    assert_nothing_lost(row, 3)
    assert states["FAIL"] == 1
    assert row["records"] == 3
    retried = [
        t
        for t in optuna.load_study(study_name=study, storage=postgres_url).trials
        if t.system_attrs.get("failed_trial") is not None or "retry_of" in t.user_attrs
    ]
    assert len(retried) == 1


# ---------------------------------------------------------------------------------------------------------
# Optuna: one of two worker processes is killed; the driver retries its trial and starts a replacement
# ---------------------------------------------------------------------------------------------------------


def kill_one_worker(proc, tmp_path, storage, study_name) -> int:
    """kill -9 the worker process of a RUNNING trial (workers tag their trials with their pid). The worker is
    paused first, so its trial cannot finish between the check and the kill."""
    wait_for_records(tmp_path / "store", 1)
    wait_for_training(tmp_path / "store")
    deadline = time.time() + 60
    while time.time() < deadline:
        for t in optuna.load_study(study_name=study_name, storage=storage).get_trials(states=(RUNNING,)):
            pid = t.user_attrs.get("worker", {}).get("pid")
            if pid not in faults.children(proc.pid):
                continue
            os.kill(pid, signal.SIGSTOP)
            if optuna.load_study(study_name=study_name, storage=storage).trials[t.number].state == RUNNING:
                os.kill(pid, signal.SIGKILL)
                return pid
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError("no worker with a running trial found")


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
def test_optuna_journal_worker_killed(tmp_path, size):
    path = space_file(tmp_path, fixed=STEPS, trials=size["trials"] + 1, seeds=size["seeds"])
    args = [
        "sweep",
        str(path),
        "--store",
        "store",
        "--study-storage",
        "j.journal",
        "--workers",
        "2",
        "--wandb",
        "disabled",
    ]
    proc = stabench(*args, cwd=tmp_path, log="sweep.log")
    killed = kill_one_worker(proc, tmp_path, journal(tmp_path), "t")
    assert proc.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()
    log = (tmp_path / "sweep.log").read_text()
    assert f"worker pid {killed} died" in log, log
    n = size["trials"] + 1
    row, states = optuna_audit(
        f"optuna journal, 1 of 2 workers killed ({len(size['seeds'])} seed)",
        tmp_path,
        load_space(path),
        journal(tmp_path),
        "t",
        n,
    )
    assert_nothing_lost(row, n)
    assert states["FAIL"] == 1
    assert row["records"] == n * len(size["seeds"])


def test_optuna_postgres_worker_killed(tmp_path, postgres_url):  # noqa: F811
    path = space_file(tmp_path, fixed=STEPS, trials=FAST["trials"] + 1)
    args = [
        "sweep",
        str(path),
        "--store",
        "store",
        "--study-storage",
        postgres_url,
        "--study",
        "pg-worker",
        "--workers",
        "2",
        "--wandb",
        "disabled",
    ]
    proc = stabench(
        *args, cwd=tmp_path, env={"STABENCH_HEARTBEAT_S": "1", "STABENCH_HEARTBEAT_GRACE_S": "8"}, log="sweep.log"
    )
    killed = kill_one_worker(proc, tmp_path, postgres_url, "pg-worker")
    assert proc.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()
    assert f"worker pid {killed} died" in (tmp_path / "sweep.log").read_text()
    row, states = optuna_audit(
        "optuna postgres, 1 of 2 workers killed", tmp_path, load_space(path), postgres_url, "pg-worker", 3
    )
    assert_nothing_lost(row, 3)
    assert states["FAIL"] == 1
    assert row["records"] == 3


# ---------------------------------------------------------------------------------------------------------
# Ray Tune: a trial's actor process is killed (Tune restarts the trial); the driver is killed (Tuner.restore)
# ---------------------------------------------------------------------------------------------------------


def ray_audit(scenario, tmp_path, space, requested, sweep="t"):
    from ray.tune import ExperimentAnalysis

    trials = ExperimentAnalysis(str(tmp_path / "ray" / sweep)).trials
    ended = [t for t in trials if t.status == "TERMINATED"]
    with_value = [t.config for t in ended if "statuses" in (t.last_result or {})]  # the rest: stopped by ASHA
    row = audit(scenario, Store(tmp_path / "store"), sweep, space, requested, with_value, len(ended))
    stopped = [t.trial_id for t in ended if "statuses" not in (t.last_result or {})]
    pruned = {
        r["tags"]["trial_number"] for r in Store(tmp_path / "store").records(sweep=sweep) if r["status"] == "pruned"
    }
    assert set(stopped) <= pruned  # a trial stopped by ASHA has its `pruned` record
    return row, trials


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
def test_ray_trial_actor_killed(tmp_path, size):
    path = space_file(tmp_path, fixed=STEPS, trials=size["trials"] + 1, seeds=size["seeds"])
    args = ["sweep", str(path), "--backend", "ray", "--store", "store", "--ray-dir", "ray", "--wandb", "disabled"]
    proc = stabench(*args, cwd=tmp_path, log="sweep.log")
    wait_for_records(tmp_path / "store", 1)
    wait_for_training(tmp_path / "store")
    actors = []
    for _ in range(50):  # Ray titles a trial's actor process 'ray::ResourceTrainable[.train]'
        actors = [p for p in faults.descendants(proc.pid) if cmdline(p).startswith("ray::ResourceTrainable")]
        if actors:
            break
        time.sleep(0.1)
    assert actors, "no trial actor running"
    os.kill(min(actors, key=faults.start_time), signal.SIGKILL)  # the oldest actor: most likely training
    assert proc.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    n = size["trials"] + 1
    row, trials = ray_audit(f"ray, trial actor killed ({len(size['seeds'])} seed)", tmp_path, load_space(path), n)
    assert_nothing_lost(row, n, interrupted=False)  # the actor may still have been in setup
    assert sum(t.num_failures for t in trials) == 1  # Tune restarted the killed trial


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
def test_ray_driver_killed_then_restored(tmp_path, size, postgres_url):  # noqa: F811
    """The OptunaSearch study lives in PostgreSQL here (`--storage`), as on a cluster."""
    path = space_file(tmp_path, fixed=STEPS, trials=size["trials"] + 1, seeds=size["seeds"])
    study = f"ray-{len(size['seeds'])}"
    args = [
        "sweep",
        str(path),
        "--backend",
        "ray",
        "--store",
        "store",
        "--ray-dir",
        "ray",
        "--wandb",
        "disabled",
        "--study",
        study,
        "--study-storage",
        postgres_url,
    ]
    proc = stabench(*args, cwd=tmp_path)
    wait_for_records(tmp_path / "store", 1)
    wait_for_training(tmp_path / "store")
    kill_group(proc)
    before = len(Store(tmp_path / "store").record_paths())
    resumed = stabench(*args, "--resume", cwd=tmp_path, log="resume.log")
    assert resumed.wait(timeout=400) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    assert "restoring Ray Tune experiment" in (tmp_path / "resume.log").read_text()
    n = size["trials"] + 1
    row, _ = ray_audit(
        f"ray + postgres, driver killed, --resume ({len(size['seeds'])} seed)",
        tmp_path,
        load_space(path),
        n,
        sweep=study,
    )
    # Ray's worker processes have their own sessions: the killed seed's actor may live on for one more
    # evaluation interval and finish it; then the restored trial's copy is marked `duplicate`, never counted.
    assert_nothing_lost(row, n, interrupted=False)
    assert row["records"] > before
    states = collections.Counter(t.state.name for t in optuna.load_study(study_name=study, storage=postgres_url).trials)
    assert states["COMPLETE"] + states["PRUNED"] == n, states
    assert states["RUNNING"] == 0, states


# ---------------------------------------------------------------------------------------------------------
# Who is dead: the checks --resume and the driver rely on
# ---------------------------------------------------------------------------------------------------------


def test_worker_is_gone_tells_live_dead_zombie_and_reused_pids():
    import subprocess

    from stabench.sweep.workers import this_worker, worker_is_gone

    me = this_worker()
    assert not worker_is_gone(me, heartbeats=False)
    assert worker_is_gone({**me, "start": "1"}, heartbeats=False)  # same pid, another process: pid reused
    child = subprocess.Popen(["true"])
    while faults.cmdline(child.pid):  # a zombie: exited, not yet reaped; os.kill(pid, 0) would still succeed
        time.sleep(0.05)
    assert worker_is_gone({**me, "pid": child.pid}, heartbeats=False)
    child.wait()
    assert worker_is_gone({**me, "pid": child.pid}, heartbeats=False)
    # another machine, or not yet tagged: never judged from here, unless the user names its host (--take-over)
    elsewhere = {**me, "host": "another-host"}
    assert not worker_is_gone(elsewhere, heartbeats=False)
    assert not worker_is_gone(elsewhere, heartbeats=True)
    assert worker_is_gone(elsewhere, heartbeats=False, take_over=frozenset({"another-host"}))
    assert not worker_is_gone(elsewhere, heartbeats=False, take_over=frozenset({"third-host"}))
    assert worker_is_gone(elsewhere, heartbeats=False, take_over=frozenset({"ALL"}))
    assert not worker_is_gone({**me, "boot": "another-boot"}, heartbeats=False)  # same name, another machine
    assert not worker_is_gone(None, heartbeats=False)
    assert not worker_is_gone(None, heartbeats=True)
    assert worker_is_gone(None, heartbeats=False, take_over=frozenset({"ALL"}))


def test_retry_keeps_the_baseline_name_and_skips_finished_trials():
    from stabench.sweep.study import fail_running

    study = optuna.create_study()
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    dead.set_user_attr("baseline_point", "ddpm")
    dead.set_user_attr("worker", {"pid": -1})
    live = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    live.set_user_attr("worker", {"pid": 1})
    assert fail_running(study, lambda w: w["pid"] == -1) == 1
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "RUNNING", "WAITING"]
    retry = study.trials[2]
    assert retry.system_attrs["fixed_params"] == dead.params  # what the next ask() will get
    assert retry.user_attrs == {"baseline_point": "ddpm", "retry_of": 0}
    assert fail_running(study, lambda w: w["pid"] == -1) == 0  # already failed: not queued twice

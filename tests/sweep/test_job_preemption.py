"""Preemption of fixed jobs (`stabench baselines`, `stabench validate`): SIGTERM checkpoints the running job and
the command exits 75; running it again continues that job from its checkpoint, on this machine or another."""

import json
import os
import signal
import time

import pytest

from stabench.engine import Trial
from stabench.engine.trial import PREEMPTION, Preempted
from stabench.records.record import Tags
from stabench.records.store import Store
from stabench.sweep.core import PREEMPTED_MARK, Placement, abandoned_run, preemptible_jobs, run_job
from stabench.sweep.ray import _run_job
from stabench.sweep.ray_cluster import mark_preempted, store_proof
from stabench.sweep.workers import this_worker
from tests.helpers import TINY, tiny_config
from tests.sweep.test_machines import checkpoint_step, cli, tally, wait_for_checkpoint

STEPS = 20
TAGS = Tags(sweep="baselines").to_dict()


@pytest.fixture(autouse=True)
def no_preemption_left():
    PREEMPTION.clear()
    yield
    PREEMPTION.clear()


def preempt_after(monkeypatch, at: int) -> None:
    """A SIGTERM during step `at` (the flag is read once the step's probe and evaluation are done)."""
    train_one = Trial._step

    def step(self, n):
        train_one(self, n)
        if n == at:
            PREEMPTION.set()

    monkeypatch.setattr(Trial, "_step", step)


# TINY: a probe every 5 steps, an evaluation every 10, 20 steps
@pytest.mark.parametrize("at", [1, 10, STEPS], ids=["step-1", "probe-and-eval-step", "last-step"])
def test_a_preempted_job_continues_to_the_record_it_would_have_had(tmp_path, monkeypatch, at):
    cfg = tiny_config("seed=3", steps=STEPS)
    uninterrupted = run_job(cfg, Store(tmp_path / "fresh"))
    store = Store(tmp_path / "store")
    preempt_after(monkeypatch, at)
    if at < STEPS:
        with pytest.raises(Preempted) as stopped:
            run_job(cfg, store, tags=TAGS)
        run_dir = stopped.value.run_dir
        assert stopped.value.step == at
        assert (run_dir / PREEMPTED_MARK).is_file()  # let go of: whoever retries it, on any machine, continues it
        assert not (run_dir / "record.json").exists()
        PREEMPTION.clear()
    record = run_job(cfg, store, tags=TAGS)  # the last step is never interrupted: its probe and eval are the result
    assert record["resumed_from_step"] == (at if at < STEPS else None)
    assert record["probes"] == uninterrupted["probes"]  # none missing, none twice: bit for bit
    assert record["evals"] == uninterrupted["evals"]
    assert record["metrics"] == uninterrupted["metrics"]


def preempted_job(tmp_path, monkeypatch):
    """A baselines job preempted after its first step: (config, store, its marked run folder)."""
    cfg = tiny_config(steps=STEPS)
    store = Store(tmp_path / "store")
    preempt_after(monkeypatch, 1)
    with pytest.raises(Preempted) as stopped:
        run_job(cfg, store, tags=TAGS)
    return cfg, store, stopped.value.run_dir


def test_one_of_two_retries_takes_a_preempted_folder_and_only_of_its_own_sweep(tmp_path, monkeypatch):
    cfg, store, run_dir = preempted_job(tmp_path, monkeypatch)
    assert abandoned_run(store, cfg, sweep="another-sweep") is None  # a folder of the baselines stays theirs
    assert abandoned_run(store, cfg, sweep="baselines") == run_dir  # taken: its mark is removed
    assert abandoned_run(store, cfg, sweep="baselines") is None  # the second retry starts its own
    assert not (run_dir / PREEMPTED_MARK).exists()


def test_a_mark_that_does_not_name_the_folders_owner_is_not_taken(tmp_path, monkeypatch):
    cfg, store, run_dir = preempted_job(tmp_path, monkeypatch)
    mark = run_dir / PREEMPTED_MARK
    mark.write_text(json.dumps({"owner": {**this_worker(), "host": "elsewhere"}, "sweep": "baselines"}))
    assert abandoned_run(store, cfg, sweep="baselines") is None  # planted or left over: the owner is alive here
    mark.write_text("[" * 100_000)  # not JSON a reader can use
    assert abandoned_run(store, cfg, sweep="baselines") is None


def test_a_mark_that_cannot_be_taken_still_lets_a_dead_owners_folder_be_continued(tmp_path, monkeypatch):
    cfg, store, run_dir = preempted_job(tmp_path, monkeypatch)
    dead = {**this_worker(), "start": "0"}  # this pid, another start time: a process of this machine that is gone
    (run_dir / "owner.json").write_text(json.dumps(dead))
    assert abandoned_run(store, cfg, sweep="another-sweep") == run_dir  # as if there were no mark


def test_a_sigterm_between_two_jobs_starts_nothing(tmp_path):
    store = Store(tmp_path / "store")
    PREEMPTION.set()
    with pytest.raises(Preempted) as stopped:
        run_job(tiny_config(steps=STEPS), store)
    assert stopped.value.run_dir is None
    assert not list(store.root.glob("*"))


def test_the_local_job_loop_turns_a_preemption_into_exit_75_naming_the_checkpoint(tmp_path, monkeypatch):
    said: list[str] = []
    with pytest.raises(SystemExit) as ended, preemptible_jobs(said.append):
        preempt_after(monkeypatch, 1)  # as the SIGTERM handler does, during the first step
        run_job(tiny_config(steps=STEPS), Store(tmp_path / "store"))
    assert ended.value.code == 75
    assert "preempted (SIGTERM) at step 1; checkpoint in" in said[0]
    assert "run the same command again to continue" in said[0]


def test_a_ray_job_checkpoints_and_ends_without_a_result_once_its_driver_flags_a_preemption(tmp_path):
    """The job's half of a Ray preemption, in-process (Tune's actor is this process): the job watches its
    driver's flag, checkpoints after its current step and returns before reporting anything."""
    store = Store(tmp_path / "store")
    job = ("ddpm", tiny_config(steps=2000), Tags(sweep="baselines").to_dict())
    with store_proof(store.root) as proof:
        mark_preempted(proof)  # the driver got its SIGTERM
        started = time.perf_counter()
        assert _run_job({"job": 0}, [job], Placement(str(store.root)), proof) is None
    (run_dir,) = [p.parent for p in store.root.glob("*/checkpoint.pt")]
    assert time.perf_counter() - started < 120  # stopped long before its 2000 steps
    assert (run_dir / PREEMPTED_MARK).is_file()
    assert not (run_dir / "record.json").exists()
    assert 0 < checkpoint_step(run_dir) < 2000


def baselines_args(*extra: str) -> list[str]:
    tiny = [f"--set={k}={v}" for k, v in TINY.items()]
    return ["baselines", "--only", "ddpm", "--seeds", "0", "--store", "store", "--wandb", "disabled", *tiny, *extra]


def test_sigterm_to_stabench_baselines_and_the_rerun_continues_the_seed(tmp_path, monkeypatch):
    every, steps = 10, 60
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread: a busy machine slows two-thread OpenMP to a crawl
    args = baselines_args("--set", f"steps={steps}", "--set", f"checkpoint_every={every}")
    first = cli(*args, cwd=tmp_path, log="first.log")
    wait_for_checkpoint(tmp_path / "store", tmp_path / "first.log")  # mid-seed, past step `every`
    os.killpg(first.pid, signal.SIGTERM)  # as SLURM and Kubernetes do
    assert first.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]
    said = (tmp_path / "first.log").read_text()
    step = int(said.split("preempted (SIGTERM) at step ")[1].split(";")[0])
    assert every <= step < steps
    assert not list((tmp_path / "store").glob("*/record.json"))
    rerun = cli(*args, cwd=tmp_path, log="rerun.log")
    assert rerun.wait(timeout=600) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    t = tally(tmp_path / "store", sweep="baselines")
    (record,) = t["records"]
    assert record["status"] == "ok"
    assert record["resumed_from_step"] == step  # nothing trained twice
    assert t["duplicated"] == 0


@pytest.mark.slow  # a local Ray for each of two commands; the default run has the job's half in-process (above)
def test_sigterm_to_stabench_baselines_on_ray_and_the_rerun_continues_the_seed(tmp_path, monkeypatch):
    every, steps = 20, 400
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = baselines_args("--backend", "ray", "--cpus-per-trial", "1", "--set", f"steps={steps}",
                          "--set", f"checkpoint_every={every}")  # fmt: skip
    first = cli(*args, cwd=tmp_path, log="first.log")
    run_dir = wait_for_checkpoint(tmp_path / "store", tmp_path / "first.log")  # mid-seed, past step `every`
    os.kill(first.pid, signal.SIGTERM)  # the driver alone, as Kubernetes signals a pod's main process
    assert first.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]
    assert "preempted (SIGTERM)" in (tmp_path / "first.log").read_text()
    assert (run_dir / PREEMPTED_MARK).is_file()  # the job checkpointed at the flag and let go of its folder
    step = checkpoint_step(run_dir)
    assert every <= step < steps
    rerun = cli(*args, cwd=tmp_path, log="rerun.log")
    assert rerun.wait(timeout=900) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    t = tally(tmp_path / "store", sweep="baselines")
    (record,) = t["records"]
    assert record["status"] == "ok"
    assert record["run_id"] == run_dir.name
    assert record["resumed_from_step"] == step  # continued where the flag stopped it

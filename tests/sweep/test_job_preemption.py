"""Preemption of fixed jobs (`stabench baselines`, `stabench validate`): SIGTERM checkpoints the running job and
the command exits 75; running it again continues that job from its checkpoint, on this machine or another."""

import os
import signal
import time

import pytest

from stabench.engine.trial import PREEMPTION, Preempted
from stabench.records.record import Tags
from stabench.records.store import Store
from stabench.sweep.core import PREEMPTED_MARK, Placement, preemptible_jobs, run_job
from stabench.sweep.ray import _run_job
from stabench.sweep.ray_cluster import mark_preempted, store_proof
from tests.helpers import TINY, tiny_config
from tests.sweep.test_machines import checkpoint_step, cli, tally, wait_for_checkpoint

STEPS = 20


@pytest.fixture(autouse=True)
def no_preemption_left():
    PREEMPTION.clear()
    yield
    PREEMPTION.clear()


def test_a_preempted_job_continues_to_the_result_it_would_have_had(tmp_path):
    cfg = tiny_config("seed=3", steps=STEPS)
    store = Store(tmp_path / "store")
    PREEMPTION.set()  # a SIGTERM before the first step: the job stops after it
    with pytest.raises(Preempted) as stopped:
        run_job(cfg, store, tags=Tags(sweep="baselines").to_dict())
    run_dir = stopped.value.run_dir
    assert stopped.value.step == 1
    assert (run_dir / PREEMPTED_MARK).is_file()  # let go of: whoever retries it, on any machine, continues it
    assert not (run_dir / "record.json").exists()
    PREEMPTION.clear()
    record = run_job(cfg, store, tags=Tags(sweep="baselines").to_dict())
    uninterrupted = run_job(cfg, Store(tmp_path / "fresh"))
    assert record["run_id"] == run_dir.name
    assert record["resumed_from_step"] == 1
    assert not (run_dir / PREEMPTED_MARK).exists()  # held again, then finished
    assert record["metrics"]["final_probe_loss"] == uninterrupted["metrics"]["final_probe_loss"]
    assert record["probes"]["decoder_norm"] == uninterrupted["probes"]["decoder_norm"]


def test_the_local_job_loop_turns_a_preemption_into_exit_75_naming_the_checkpoint(tmp_path):
    said: list[str] = []
    with pytest.raises(SystemExit) as ended, preemptible_jobs(said.append):
        PREEMPTION.set()  # as the SIGTERM handler does
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

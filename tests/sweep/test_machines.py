"""Several machines on one sweep (issue 28), reproduced on one machine: a second machine is a process with another
hostname (`unshare --uts`) or an owner record naming another host; a dead machine is a process killed with -9; an
NFS-like lock is `fcntl.flock` made a no-op in the worker processes (it succeeds and excludes nobody, as on NFS
`nolock` or Lustre `localflock`).

Each end-to-end test adds a row (scenario | records expected | arrived | duplicated | steps retrained) to ROWS,
printed at the end of the module (`pytest -s`).
"""

import collections
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from stabench.engine.state import read_checkpoint
from stabench.engine.trial import PREEMPTION
from stabench.errors import UserError
from stabench.records.store import Store
from stabench.sweep.claims import SeedClaims
from stabench.sweep.ray import preemptible, watch_for_preemption
from stabench.sweep.ray_cluster import mark_preempted, preempting, store_proof
from stabench.sweep.space import load_space
from stabench.sweep.study import (
    FINGERPRINT_FULL,
    SEED_RUN_ATTR,
    check_same_space,
    fail_orphaned,
    give_back,
    over_budget,
    report_unless_finished,
    set_attr_unless_finished,
)
from stabench.sweep.workers import owner, this_worker
from tests.helpers import REPO, space_file
from tests.sweep.faults import kill_group

RUNNING, FAIL, WAITING = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL,
                          optuna.trial.TrialState.WAITING)  # fmt: skip
ROWS: list[dict] = []
X = optuna.distributions.FloatDistribution(0, 1)
OTHER_HOST = "machine-a"


@pytest.fixture(scope="module", autouse=True)
def scenario_table():
    yield
    if ROWS:
        cols = list(ROWS[0])
        print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in ROWS:
            print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def journal_study(path: Path, name: str = "t") -> optuna.Study:
    """A handle on a journal study: two handles on one file are two processes' views of it."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True)


def foreign_worker(run: str = "run-a") -> dict:
    """A worker record of another machine: another hostname and boot id, a pid that may well exist here."""
    return {**owner(run), "host": OTHER_HOST, "boot": "another-boot-id", "pid": os.getpid()}


# ---------------------------------------------------------------------------------------------------------
# 2. A trial another process finished is never told again
# ---------------------------------------------------------------------------------------------------------


def test_a_trial_finished_by_another_process_is_logged_not_raised(tmp_path):
    mine, theirs = journal_study(tmp_path / "j.journal"), journal_study(tmp_path / "j.journal")
    trial = mine.ask({"x": X})
    theirs._storage.set_trial_state_values(theirs.trials[0]._trial_id, state=FAIL)  # e.g. a heartbeat check
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        trial.set_user_attr("run_ids", [])  # what the worker did before, and crashed on
    lines: list[str] = []
    assert not set_attr_unless_finished(mine, trial, "run_ids", [], lines.append)
    assert not report_unless_finished(mine, trial, 0.5, 10, lines.append)
    assert len(lines) == 2
    assert "trial 0 was finished by another process" in lines[0]
    assert "run_ids" not in theirs.trials[0].user_attrs


def test_a_worker_whose_trial_was_failed_meanwhile_finishes_without_a_crash(tmp_path):
    """The worker's trial is failed by another process while it trains: the worker stops the seed at its next
    evaluation point, does not raise, and does not tell the trial again."""
    from stabench.sweep.core import Placement
    from stabench.sweep.optuna import run_one_optuna_trial
    from stabench.sweep.study import open_study

    path = space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [3e-3]}}, trials=1,
                      fixed={"optim.steps": 40})  # fmt: skip
    space = load_space(path)
    study = open_study(space, "t", str(tmp_path / "j.journal"))
    trial = study.ask()
    trial.suggest_categorical("optim.lr", [3e-3])  # as the worker does first
    journal_study(tmp_path / "j.journal").tell(trial.number, state=FAIL)  # another process, before the first eval
    lines: list[str] = []
    state, values = run_one_optuna_trial(study, trial, space, Placement(str(tmp_path / "store")), log=lines.append)
    assert state == FAIL  # the storage's verdict stands
    assert values is None
    assert any("finished by another process" in line for line in lines)
    (record,) = Store(tmp_path / "store").records(sweep="t")
    assert record["status"] == "pruned"  # stopped at its first evaluation point, not trained to the end
    assert record["steps_completed"] == 10


# ---------------------------------------------------------------------------------------------------------
# 1. Ownership across machines; 3. only this run's trials are failed
# ---------------------------------------------------------------------------------------------------------


def test_resume_on_a_second_machine_leaves_the_first_machines_trials_running(tmp_path):
    from stabench.sweep.optuna import retry_interrupted

    study = journal_study(tmp_path / "j.journal")
    alive = study.ask({"x": X})
    alive.set_user_attr("worker", foreign_worker())
    alive.set_user_attr(SEED_RUN_ATTR, {"seed_index": 0, "run_dir": str(tmp_path / "store" / "run-a")})
    untagged = study.ask({"x": X})  # a worker between ask and tag
    lines: list[str] = []
    retry_interrupted(study, Store(tmp_path / "store"), frozenset(), lines.append)
    assert [t.state for t in study.trials] == [RUNNING, RUNNING]
    assert lines == []

    retry_interrupted(study, Store(tmp_path / "store"), frozenset({OTHER_HOST}), lines.append)  # --take-over
    assert [t.state for t in study.trials] == [FAIL, RUNNING, WAITING]
    retry = study.trials[2]
    assert retry.user_attrs["retry_of"] == alive.number
    assert retry.user_attrs["resume"] == {"seed_index": 0, "run_dir": str(tmp_path / "store" / "run-a")}
    assert untagged.number == 1

    retry_interrupted(study, Store(tmp_path / "store"), frozenset({"ALL"}), lines.append)
    assert study.trials[1].state == FAIL


def test_fail_orphaned_fails_only_the_trials_of_this_run(tmp_path):
    study = journal_study(tmp_path / "j.journal")
    for worker in (owner("run-1"), foreign_worker("run-2"), None):
        t = study.ask({"x": X})
        if worker is not None:
            t.set_user_attr("worker", worker)
    assert fail_orphaned("t", study._storage, run="run-1") == 1
    assert [t.state for t in study.trials] == [FAIL, RUNNING, RUNNING]
    assert fail_orphaned("t", study._storage) == 0  # without a run: only this process's trials, none here


def test_the_fingerprint_names_the_store_and_stays_short(tmp_path):
    space = load_space(space_file(tmp_path))
    study = journal_study(tmp_path / "j.journal")
    check_same_space(study, space, "j.journal", tmp_path / "store-a")
    assert len(study.user_attrs["fingerprint"]) == 12
    assert "space_fingerprint" not in study.user_attrs  # the full text is a system attr: `optuna studies` stays short
    full = study._storage.get_study_system_attrs(study._study_id)[FINGERPRINT_FULL]
    assert full["store.id"] == (tmp_path / "store-a" / ".store-id").read_text()
    check_same_space(journal_study(tmp_path / "j.journal"), space, "j.journal", tmp_path / "store-a")  # same: fine
    with pytest.raises(UserError, match="run into another store"):
        check_same_space(journal_study(tmp_path / "j.journal"), space, "j.journal", tmp_path / "store-b")


def test_an_older_study_keeps_its_space_check_and_gains_the_store(tmp_path):
    from stabench.sweep.study import space_fingerprint

    space = load_space(space_file(tmp_path))
    study = journal_study(tmp_path / "j.journal")
    study.set_user_attr("space_fingerprint", space_fingerprint(space))  # as an older stabench wrote it
    check_same_space(study, space, "j.journal", tmp_path / "store")
    assert "store.id" in study._storage.get_study_system_attrs(study._study_id)[FINGERPRINT_FULL]
    changed = load_space(space_file(tmp_path, seeds=(0, 1)))
    with pytest.raises(UserError, match="with another space"):
        check_same_space(journal_study(tmp_path / "j.journal"), changed, "j.journal", tmp_path / "store")


def test_a_sweep_short_of_its_budget_names_the_foreign_trial_and_what_to_do(tmp_path):
    from stabench.sweep.optuna import short_of_budget

    study = journal_study(tmp_path / "j.journal")
    study.ask({"x": X}).set_user_attr("worker", foreign_worker())
    (line,) = short_of_budget(study, "this-run", 4)
    assert "trial 0 is RUNNING on host machine-a" in line
    assert "--resume --take-over machine-a" in line


# ---------------------------------------------------------------------------------------------------------
# 4. Claims without flock: the budget through the storage, seeds through O_EXCL claim files
# ---------------------------------------------------------------------------------------------------------


def test_two_machines_that_count_at_once_never_overrun_the_budget(tmp_path):
    a, b = journal_study(tmp_path / "j.journal"), journal_study(tmp_path / "j.journal")
    a.enqueue_trial({"x": 0.5}, user_attrs={"baseline_point": "ddpm"})
    # both counted 0 of 1 (no lock held them apart), then both asked
    ta, tb = a.ask({"x": X}), b.ask({"x": X})
    assert not over_budget(a, ta, 1)
    assert over_budget(b, tb, 1)
    assert not over_budget(a, ta, 2)  # with room for both, both run
    give_back(b, tb)
    assert b.trials[tb.number].state == FAIL
    assert b.trials[tb.number].user_attrs["surplus"] is True
    assert ta.params == {"x": 0.5}  # the queued point went to the first asker, and nothing was queued again
    assert [t.state for t in a.trials] == [RUNNING, FAIL]


def _take(directory: str, barrier, won) -> None:
    barrier.wait()
    claim = SeedClaims(Path(directory), "t").take("abc-s0", None, this_worker())
    won.put(claim is not None)


def test_a_seed_claim_has_one_winner_among_racing_processes(tmp_path):
    ctx = mp.get_context("fork")
    barrier, won = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_take, args=(str(tmp_path), barrier, won)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert sorted(won.get(timeout=5) for _ in procs) == [False, False, False, True]
    claims = SeedClaims(tmp_path, "t")
    top = claims.top("abc-s0")
    assert top.gen == 0
    claims.release(top)
    assert claims.top("abc-s0").done
    assert claims.take("abc-s0", claims.top("abc-s0"), this_worker()).gen == 1


def test_who_may_take_a_seed_over(tmp_path):
    from stabench.records.record import Tags
    from stabench.sweep.claims import Claim
    from stabench.sweep.core import ConfigRun, Placement

    space = load_space(space_file(tmp_path))
    finished_trials = {7}
    run = ConfigRun(space, Tags(sweep="t", trial_number=3), Placement(str(tmp_path / "store")),
                    holder_gone=lambda h: h.get("trial") in finished_trials)  # fmt: skip
    dead_here = subprocess.Popen(["true"])
    dead_here.wait()
    p = tmp_path / "x.0.claim"
    assert not run._holder_gone(Claim(p, 0, False, {**foreign_worker(), "trial": 5}))  # alive elsewhere: wait
    assert run._holder_gone(Claim(p, 0, False, {**foreign_worker(), "trial": 7}))  # its trial was failed
    assert run._holder_gone(Claim(p, 0, False, {**this_worker(), "pid": dead_here.pid, "trial": 5}))  # dead here
    assert not run._holder_gone(Claim(p, 0, False, {**this_worker(), "trial": 5}))  # alive here
    assert run._holder_gone(Claim(p, 0, False, {**foreign_worker(), "trial": 3}))  # this trial, restarted


NO_FLOCK = "import fcntl, runpy, sys; fcntl.flock = lambda *a, **k: None; sys.argv[0] = 'stabench'; " \
           "runpy.run_module('stabench.cli', run_name='__main__')"  # fmt: skip


def cli(*args: str, cwd: Path, log: str, host: str | None = None, no_flock: bool = False) -> subprocess.Popen:
    """The CLI in a session of its own; with `host`, on "another machine" (its own UTS namespace and hostname)."""
    cmd = [sys.executable, "-c", NO_FLOCK, *args] if no_flock else [sys.executable, "-m", "stabench.cli", *args]
    if host is not None:
        cmd = ["unshare", "--user", "--map-root-user", "--uts", "sh", "-c", f'hostname {host} && exec "$@"', "sh",
               *cmd]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO, "STABENCH_LOCK_TIMEOUT": "30"}
    return subprocess.Popen(cmd, cwd=cwd, stdout=open(cwd / log, "w"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True, env=env)  # fmt: skip


def can_fake_a_host() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--uts", "sh", "-c", "hostname probe-host && hostname"]
    return subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "probe-host"


needs_a_second_host = pytest.mark.skipif(not can_fake_a_host(), reason="unshare --user --uts is not allowed here")


def sweep_args(path: Path, *extra: str) -> list[str]:
    return ["sweep", str(path), "--store", "store", "--study-storage", "j.journal", "--workers", "1",
            "--wandb", "disabled", *extra]  # fmt: skip


def tally(store_root: Path, sweep: str = "t") -> dict:
    records = list(Store(store_root).records(sweep=sweep))
    ok = collections.Counter((r["config_hash"], r["seed"]) for r in records if r["status"] in ("ok", "diverged"))
    return {"records": records, "arrived": len(ok), "duplicated": sum(c - 1 for c in ok.values())}


@pytest.mark.slow  # two sweep processes; the default run has the claim race: test_a_seed_claim_has_one_winner_*
def test_two_workers_where_flock_excludes_nobody(tmp_path):
    """Two worker processes whose flock is a no-op share a journal and a store; both trials want the same config,
    so both want the same seed at once: it is trained once and the budget is not overrun."""
    path = space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [3e-3]}}, trials=2,
                      sampler={"name": "random", "seed": 0})  # fmt: skip
    procs = [cli(*sweep_args(path), cwd=tmp_path, log=f"w{i}.log", no_flock=True) for i in range(2)]
    for i, p in enumerate(procs):
        assert p.wait(timeout=900) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]
    study = journal_study(tmp_path / "j.journal")
    states = collections.Counter(t.state.name for t in study.trials if not t.user_attrs.get("surplus"))
    t = tally(tmp_path / "store")
    ROWS.append({"scenario": "4: two workers, flock a no-op, same config", "records expected": 1,
                 "arrived": t["arrived"], "duplicated": t["duplicated"], "steps retrained": 0})  # fmt: skip
    assert states["COMPLETE"] == 2, states
    assert t["arrived"] == 1
    assert t["duplicated"] == 0
    assert len(t["records"]) == 1  # trained once: the other trial waited for its record and reused it
    assert sum("reused" in tr.user_attrs for tr in study.trials) == 1


# ---------------------------------------------------------------------------------------------------------
# 6. SIGTERM: the running seed is checkpointed, the trial queued again, and the next run continues it
# ---------------------------------------------------------------------------------------------------------


def wait_for_checkpoint(store_root: Path, log: Path, timeout_s: float = 900) -> Path:
    """Until some seed has written its first periodic checkpoint; returns its run folder."""
    deadline = time.time() + timeout_s
    while not (found := list(store_root.glob("*/checkpoint.pt"))):
        assert time.time() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    return found[0].parent


def test_sigterm_checkpoints_the_seed_and_the_rerun_continues_it(tmp_path):
    every = 20
    path = space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [3e-3]}}, trials=1,
                      fixed={"optim.steps": 120, "checkpoint_every": every})  # fmt: skip
    first = cli(*sweep_args(path), cwd=tmp_path, log="first.log")
    wait_for_checkpoint(tmp_path / "store", tmp_path / "first.log")  # mid-seed, past step `every`
    os.killpg(first.pid, signal.SIGTERM)  # as SLURM and Kubernetes do, to every process of the job
    assert first.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]
    said = (tmp_path / "first.log").read_text()
    assert "preempted at step" in said
    step = int(said.split("preempted at step ")[1].split(":")[0])
    assert every <= step < 120
    assert not list((tmp_path / "store").glob("*/record.json"))  # no record for a preempted seed
    rerun = cli(*sweep_args(path), cwd=tmp_path, log="rerun.log")  # a plain re-run: the retry is queued
    assert rerun.wait(timeout=900) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    t = tally(tmp_path / "store")
    (record,) = t["records"]
    ROWS.append({"scenario": "6: SIGTERM mid-seed, plain re-run", "records expected": 1, "arrived": t["arrived"],
                 "duplicated": t["duplicated"], "steps retrained": step - record["resumed_from_step"]})  # fmt: skip
    assert record["status"] == "ok"
    assert record["resumed_from_step"] == step  # continued where SIGTERM stopped it: nothing trained again
    assert step - record["resumed_from_step"] < every
    states = [t.state for t in journal_study(tmp_path / "j.journal").trials]
    assert states == [FAIL, optuna.trial.TrialState.COMPLETE]
    assert journal_study(tmp_path / "j.journal").trials[1].user_attrs["retry_of"] == 0


def test_sigterm_in_a_ray_driver_flags_its_trials_and_stops_without_a_traceback(tmp_path):
    """The driver's half of a Ray preemption, in-process: SIGTERM leaves the flag every trial watches and
    interrupts (Tune's graceful stop, here a KeyboardInterrupt), which ends the block quietly; the flag goes with
    the token."""
    # Python's own SIGINT handler: an in-process Tune run earlier in this session leaves its handler installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupted_quietly(tmp_path)
    finally:
        signal.signal(signal.SIGINT, previous)


def interrupted_quietly(tmp_path: Path) -> None:
    with store_proof(tmp_path) as proof:
        with preemptible(proof, log=lambda line: None) as preempted:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted long before
            raise AssertionError("SIGTERM did not interrupt the driver")
        assert preempted
        assert preempting(proof)
    assert not preempting(proof)


def test_a_ray_trial_checkpoints_once_its_driver_flags_a_preemption(tmp_path):
    """The trial's half, in-process: the watcher asks the running seed to checkpoint and stop (`Preempted`)."""
    PREEMPTION.clear()
    with store_proof(tmp_path) as proof:
        watch_for_preemption(proof, every_s=0.05)
        assert not PREEMPTION.wait(0.3)
        mark_preempted(proof)
        assert PREEMPTION.wait(5)
    PREEMPTION.clear()


def checkpoint_step(run_dir: Path) -> int:
    return read_checkpoint(run_dir / "checkpoint.pt", "test")["loop"]["step"]


@pytest.mark.slow  # the default run has the pieces in-process: test_sigterm_in_a_ray_driver_*
@pytest.mark.parametrize("signalled", ["driver", "group"])
def test_sigterm_on_ray_checkpoints_the_seed_and_resume_continues_it(tmp_path, signalled):
    """The Ray driver SIGTERM'd alone (as Kubernetes signals a pod's main process) or with its process group, where
    the local Ray's own processes are (as SLURM signals a job): the running seed is not recorded as pruned, Tune
    saves the experiment, the driver exits 75; `--resume` continues the seed from its checkpoint (signalled alone,
    the seed checkpoints at its current step; with Ray's processes gone, at its last evaluation point)."""
    every = 20
    path = space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [3e-3]}}, trials=1,
                      fixed={"optim.steps": 400, "eval.every": every})  # fmt: skip
    args = ["sweep", str(path), "--backend", "ray", "--store", "store", "--ray-dir", "ray", "--wandb", "disabled",
            "--cpus-per-trial", "1"]  # fmt: skip
    first = cli(*args, cwd=tmp_path, log="first.log")
    run_dir = wait_for_checkpoint(tmp_path / "store", tmp_path / "first.log")  # Ray's checkpoint at step `every`
    (os.kill if signalled == "driver" else os.killpg)(first.pid, signal.SIGTERM)
    assert first.wait(timeout=300) == 75, (tmp_path / "first.log").read_text()[-3000:]
    assert "preempted (SIGTERM)" in (tmp_path / "first.log").read_text()
    assert not list((tmp_path / "store").glob(".stabench-driver-*"))  # the driver's token and flag are gone
    assert not list((tmp_path / "store").glob("*/record.json"))  # neither pruned nor finished: checkpointed
    step = checkpoint_step(run_dir)
    assert every <= step < 400
    rerun = cli(*args, "--resume", cwd=tmp_path, log="rerun.log")
    assert rerun.wait(timeout=900) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    t = tally(tmp_path / "store")
    (record,) = t["records"]
    ROWS.append({"scenario": "6: SIGTERM mid-seed on Ray, --resume", "records expected": 1, "arrived": t["arrived"],
                 "duplicated": t["duplicated"], "steps retrained": step - record["resumed_from_step"]})  # fmt: skip
    assert record["status"] == "ok"
    assert record["resumed_from_step"] == step  # continued where SIGTERM stopped it
    assert record["run_id"] == run_dir.name
    (trial,) = journal_study(tmp_path / "store" / "optuna" / "t.journal").trials
    assert trial.state == optuna.trial.TrialState.COMPLETE


# ---------------------------------------------------------------------------------------------------------
# 1, 5, 6 end to end: a second machine on the same journal; a dead machine's seed continued elsewhere
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_a_second_host
def test_a_second_machine_resuming_leaves_the_first_machines_trial_alone(tmp_path):
    path = space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [3e-3, 2e-3]}}, trials=2,
                      fixed={"optim.steps": 80, "checkpoint_every": 10}, sampler={"name": "grid"})  # fmt: skip
    a = cli(*sweep_args(path, "--n-trials", "1"), cwd=tmp_path, log="a.log", host=OTHER_HOST)
    wait_for_checkpoint(tmp_path / "store", tmp_path / "a.log")
    b = cli(*sweep_args(path, "--resume"), cwd=tmp_path, log="b.log")  # machine B, while A trains trial 0
    assert b.wait(timeout=1200) == 0, (tmp_path / "b.log").read_text()[-3000:]
    assert a.wait(timeout=1200) == 0, (tmp_path / "a.log").read_text()[-3000:]
    study = journal_study(tmp_path / "j.journal")
    t = tally(tmp_path / "store")
    configs = {json.dumps(tr.params, sort_keys=True) for tr in study.trials}  # the grid may hand out one twice
    ROWS.append({"scenario": "1/2: machine B --resume while machine A trains", "records expected": len(configs),
                 "arrived": t["arrived"], "duplicated": t["duplicated"], "steps retrained": 0})  # fmt: skip
    assert [tr.state.name for tr in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].user_attrs["worker"]["host"] == OTHER_HOST
    assert t["arrived"] == len(configs)
    assert t["duplicated"] == 0
    assert all(r["resumed_from_step"] is None for r in t["records"])  # nobody took A's seed over
    assert "interrupted trial" not in (tmp_path / "b.log").read_text()


@pytest.mark.slow
@needs_a_second_host
def test_a_dead_machines_seed_continues_on_another_from_its_checkpoint(tmp_path):
    every = 10
    # 400 steps: on an idle machine 80 tiny steps could finish in the 2 s between the first checkpoint and the kill
    path = space_file(tmp_path, space={"optim.lr": {"type": "categorical", "choices": [3e-3]}}, trials=1,
                      fixed={"optim.steps": 400, "checkpoint_every": every})  # fmt: skip
    a = cli(*sweep_args(path), cwd=tmp_path, log="a.log", host=OTHER_HOST)
    ckpt_dir = wait_for_checkpoint(tmp_path / "store", tmp_path / "a.log")
    time.sleep(2)
    kill_group(a)  # machine A dies mid-seed

    b = cli(*sweep_args(path, "--resume"), cwd=tmp_path, log="b.log")  # without --take-over: A might be alive
    assert b.wait(timeout=900) == 0
    said = (tmp_path / "b.log").read_text()
    assert f"trial 0 is RUNNING on host {OTHER_HOST}" in said, said[-3000:]
    assert f"--take-over {OTHER_HOST}" in said

    c = cli(*sweep_args(path, "--resume", "--take-over", OTHER_HOST), cwd=tmp_path, log="c.log")
    assert c.wait(timeout=900) == 0, (tmp_path / "c.log").read_text()[-3000:]
    t = tally(tmp_path / "store")
    (record,) = t["records"]
    killed_at = json.loads((ckpt_dir / "owner.json").read_text())  # the folder B continued (same run id)
    ROWS.append({"scenario": "5/6: machine A killed -9, B --resume --take-over A", "records expected": 1,
                 "arrived": t["arrived"], "duplicated": t["duplicated"],
                 "steps retrained": f"< {every} (resumed at {record['resumed_from_step']})"})  # fmt: skip
    assert t["arrived"] == 1
    assert t["duplicated"] == 0
    assert Path(record["run_dir"]) == ckpt_dir
    assert record["resumed_from_step"] >= every
    assert record["resumed_from_step"] % every == 0
    assert killed_at["host"] != OTHER_HOST  # the retry on this machine claimed the folder


def test_a_grid_sampler_may_stop_the_study_from_a_tell(tmp_path):
    """GridSampler calls study.stop() once every point was asked; outside study.optimize that raised in our
    ask/tell loop (search_spaces/ema.yaml is a grid)."""
    from stabench.sweep.study import tell

    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [0.5]}))
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([0.5])})
    with pytest.raises(RuntimeError, match="Study.stop"):
        study.tell(trial, 1.0)
    trial = study.ask({"x": optuna.distributions.CategoricalDistribution([0.5])})
    assert tell(study, trial, 1.0).state == optuna.trial.TrialState.COMPLETE

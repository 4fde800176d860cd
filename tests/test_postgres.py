"""Optuna on a real PostgreSQL server: heartbeats fail and retry the trial of a killed worker."""

import collections
import os
import signal
import subprocess
import sys
import time

import optuna

from stabench.store import Store
from tests.postgres import postgres_url  # noqa: F401  (fixture)
from tests.test_search import space_file


def test_postgres_sweep_survives_a_killed_worker(tmp_path, postgres_url):  # noqa: F811
    path = space_file(tmp_path, fixed={"optim.steps": 150}, trials=3)
    env = {**os.environ, "STABENCH_HEARTBEAT_S": "1", "STABENCH_HEARTBEAT_GRACE_S": "3"}
    args = [sys.executable, "-m", "stabench.cli", "sweep", str(path), "--store", "store", "--storage", postgres_url,
            "--study", "pg", "--wandb", "disabled"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "store").glob("*/record.json")):
        time.sleep(0.2)
    time.sleep(1.0)  # inside the second trial now
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(4)  # longer than the grace period: the running trial is stale now
    # a plain re-run (no --resume): the heartbeat marks the dead worker's trial failed and retries it
    out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    states = collections.Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] == 3 and states["RUNNING"] == 0 and states["FAIL"] == 1
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") is not None]
    assert len(retried) == 1
    records = list(Store(tmp_path / "store").records(sweep="pg"))
    assert len(records) == 3 and len({(r["config_hash"], r["seed"]) for r in records}) == 3

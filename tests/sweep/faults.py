"""Audit of a sweep after a fault: what was asked for, what the backend finished, what the store holds.

Each kill test calls `audit`, asserts on the row and adds it to ROWS; conftest prints ROWS as the fault table
at the end of the session (`pytest tests/sweep/test_faults.py -m "slow or not slow"` prints every scenario).
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stabench.config import config_hash
from stabench.records.store import Store
from stabench.sweep.space import SearchSpace, trial_config
from stabench.sweep.workers import proc_stat

ROWS: list[dict] = []


def audit(
    scenario: str,
    store: Store,
    sweep: str,
    space: SearchSpace,
    requested: int,
    finished_params: list[dict],
    n_finished: int,
) -> dict:
    """`finished_params`: params of every trial the backend counts as finished with a value (each of its seeds
    must have a record); `n_finished` also counts trials stopped early by a pruner or scheduler."""
    torn = 0
    for path in store.record_paths():
        try:
            json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            torn += 1
    records = list(store.records(sweep=sweep))
    finished = collections.Counter((r["config_hash"], r["seed"]) for r in records if r["status"] in ("ok", "diverged"))
    expected = {(config_hash(trial_config(space, p, seed)), seed) for p in finished_params for seed in space.seeds}
    run_dirs = [d for d in store.root.iterdir() if d.is_dir()]
    row = {
        "scenario": scenario,
        "requested": requested,
        "finished": n_finished,
        "records": len(records),
        "lost": len(expected - set(finished)),
        "duplicated": sum(c - 1 for c in finished.values()),
        "torn": torn,
        "unrecorded_dirs": sum(not (d / "record.json").exists() for d in run_dirs),
        "marked_duplicate": sum(r["status"] == "duplicate" for r in records),
    }
    ROWS.append(row)
    return row


def stabench(*args: str, cwd: Path, env: dict | None = None, log: str | None = None) -> subprocess.Popen:
    """The CLI as a process group of its own, so that kill -9 reaches its workers too."""
    out = open(cwd / log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (lives as long as the process)
    return subprocess.Popen(
        [sys.executable, "-m", "stabench.cli", *args],
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_records(store_dir: Path, n: int, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while len(list(store_dir.glob("*/record.json"))) < n:
        assert time.time() < deadline, f"no {n} record(s) in {store_dir} after {timeout_s}s"
        time.sleep(0.2)


def wait_for_training(store_dir: Path, timeout_s: float = 120) -> None:
    """Until some seed has just started training (its run directory is under a second old and has no record),
    so that a kill now lands seconds before that seed could finish."""
    deadline = time.time() + timeout_s

    def just_started(d: Path) -> bool:
        config = d / "config.yaml"
        return config.exists() and not (d / "record.json").exists() and time.time() - config.stat().st_mtime < 1.0

    while not any(just_started(d) for d in store_dir.iterdir()):
        assert time.time() < deadline, f"no trial started training in {store_dir} within {timeout_s}s"
        time.sleep(0.05)
    time.sleep(0.3)  # a few steps in


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(c) for c in task.read_text().split()]
    return found


def start_time(pid: int) -> int:
    """Clock ticks since boot at which `pid` started."""
    return int(proc_stat(pid)[1])


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid` (Ray's actor processes are children of the driver's raylet)."""
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def format_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


OOM_LR = 7.77e-3  # trials with exactly this learning rate hit a simulated CUDA OOM at their 5th step


def simulate_oom() -> None:
    """Make `optimization_step` raise torch.OutOfMemoryError for trials with lr == OOM_LR. Called by a test's
    monkeypatch or, in Ray workers, as `worker_process_setup_hook`."""
    import torch

    import stabench.engine.trial as trial_mod

    real, calls = trial_mod.optimization_step, collections.Counter()

    def step(forward, params, diffusion, optimizer, *args, **kwargs):
        calls[id(optimizer)] += 1
        if optimizer.defaults["lr"] == OOM_LR and calls[id(optimizer)] == 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(forward, params, diffusion, optimizer, *args, **kwargs)

    trial_mod.optimization_step = step


KILL_AT_STEP = 12  # between the evaluation (and Ray checkpoint) at step 10 and the next at 15
KILL_LR = 2.22e-3  # the learning rate that marks the trial kill_once_mid_seed targets


def kill_once_mid_seed() -> None:
    """Make the first trial with lr == KILL_LR to reach step KILL_AT_STEP exit its worker process, as a preempted
    node would; once only, marked by the file $STABENCH_KILL_MARKER (which holds the killed pid)."""
    marker = os.environ.get("STABENCH_KILL_MARKER")
    import stabench.engine.trial as trial_mod

    real, calls = trial_mod.optimization_step, collections.Counter()

    def step(forward, params, diffusion, optimizer, *args, **kwargs):
        calls[id(optimizer)] += 1
        due = optimizer.defaults["lr"] == KILL_LR and calls[id(optimizer)] == KILL_AT_STEP
        if marker and due and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)
        return real(forward, params, diffusion, optimizer, *args, **kwargs)

    trial_mod.optimization_step = step


def ray_worker_hooks() -> None:
    """The shared test Ray's `worker_process_setup_hook`: both faults above, each acting only on its own trials."""
    simulate_oom()
    kill_once_mid_seed()

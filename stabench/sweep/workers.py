"""Local worker processes: who runs a trial (so a dead one can be told from a live one), and a supervisor that
replaces workers that die. Knows processes, not Optuna: the backend says what to do about a dead worker."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..files import read_untrusted_json


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None if there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def this_worker() -> dict:
    """Who runs a trial: host, boot and pid, plus the pid's start time so a reused pid is not mistaken for it."""
    stat = proc_stat(os.getpid())
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": stat and stat[1]}


def owner(run: str) -> dict:
    """Who runs a trial of sweep run `run` (the driver's token): what a trial's `worker` attr and a seed claim hold,
    so that a driver fails or takes over only what its own run started."""
    return {**this_worker(), "run": run}


def same_machine(worker: dict) -> bool:
    """Did `worker` run on this machine since its last boot? (Never, for a value that is not a worker.)"""
    if owner_problem(worker) is not None:  # read back from a shared store or journal: untrusted
        return False
    return worker["host"] == socket.gethostname() and worker.get("boot") == _boot_id()


# What `this_worker` writes (into owner.json, and a trial's `worker` user attr): read back from a shared store, so
# checked before use. `start` is None where /proc could not tell.
WORKER_FIELDS = {"host": (str, "a string"), "boot": (str, "a string"), "pid": (int, "an integer")}


def owner_problem(worker: Any) -> str | None:
    """Why `worker` (an owner.json's contents, a trial's `worker` attr) is not what `this_worker` writes, or None."""
    if not isinstance(worker, dict):
        return f"a JSON {type(worker).__name__}, expected an object with {', '.join(WORKER_FIELDS)}, start"
    for key, (kind, described) in WORKER_FIELDS.items():
        if key not in worker:
            return f"'{key}' is missing"
        if not isinstance(worker[key], kind) or isinstance(worker[key], bool):
            return f"'{key}' is {worker[key]!r:.80}, expected {described}"
    if worker["pid"] <= 0:
        return f"'pid' is {worker['pid']}, expected a process id (> 0)"
    if not (worker.get("start") is None or isinstance(worker["start"], str)):
        return f"'start' is {worker['start']!r:.80}, expected a string or null"
    if not (worker.get("run") is None or isinstance(worker["run"], str)):
        return f"'run' is {worker['run']!r:.80}, expected a string or null"
    return None


def read_owner(path: Path) -> tuple[dict | None, str | None]:
    """The worker an owner file names, checked: (worker, None), or (None, why not) for a file that is missing,
    unreadable, not JSON or not a worker. Never raises: the file comes from a shared store."""
    path = Path(path)
    if not path.is_file():  # missing, or a FIFO or device planted to block whoever reads it
        return None, f"'{path}' {'is not a regular file' if path.exists() else 'does not exist'}"
    try:
        owner = read_untrusted_json(path, OWNER_BYTES)
    except (OSError, ValueError) as e:  # unreadable, too large, not UTF-8, not JSON, nested too deep
        return None, f"'{path}' cannot be read as an owner file ({type(e).__name__}: {e})"
    if problem := owner_problem(owner):
        return None, f"'{path}' is not an owner file: {problem}"
    return owner, None


OWNER_BYTES = 64 * 1024  # an owner is a few hundred bytes: a larger file is not one of ours


TAKE_OVER_ALL = "ALL"  # `--take-over ALL`: every host, and trials not yet tagged with a worker


def worker_is_gone(worker: dict | None, heartbeats: bool, take_over: frozenset[str] = frozenset()) -> bool:
    """Is the process that ran a RUNNING trial dead? Known for sure on this machine (a zombie or a reused pid
    counts as dead). Another machine's process is never judged from here: with heartbeats the storage decides
    (`optuna.storages.fail_stale_trials`), without them (journal files) it counts as alive unless the user named
    its host in `take_over` (`--take-over HOST`: that machine is down). An untagged trial (between ask and tag)
    is dead only with `--take-over ALL`."""
    if worker is None or owner_problem(worker) is not None:
        return TAKE_OVER_ALL in take_over
    if not same_machine(worker):
        return worker["host"] in take_over or TAKE_OVER_ALL in take_over
    stat = proc_stat(worker["pid"])
    return stat is None or stat[0] == "Z" or stat[1] != worker.get("start")


def process_is_gone(worker: dict) -> bool:
    """Is `worker` a process of this machine that is gone (never true of another machine's process)?"""
    return same_machine(worker) and worker_is_gone(worker, heartbeats=True)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


STOP_EXIT = 3  # a worker's exit code for "the sweep must stop" (e.g. a full store): it is not replaced
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: SIGTERM checkpointed the running seed and requeued its trial; run again


@contextlib.contextmanager
def sigterm_requests(on_term: Callable[[], None]):
    """While inside, SIGTERM (a preempting scheduler's polite signal: SLURM, Kubernetes) calls `on_term` instead
    of killing the process; the previous handler comes back on exit. Only the main thread can install handlers:
    elsewhere this does nothing."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: on_term())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def supervise(
    target: Callable[[dict], None],
    kwargs: dict,
    workers: int,
    max_restarts: int,
    on_death: Callable[[int, int], None],
) -> None:
    """Run `workers` processes of `target(kwargs)` (each with its share of the cores and its index). When one
    dies (OOM killer, kill -9), `on_death(pid, exit code)` is called and a replacement with the same index (so the
    same GPU) starts, at most `max_restarts` times. A worker that exits with STOP_EXIT is not replaced, and the
    sweep ends with a UserError once the others are done. SIGTERM is passed on to every worker (each checkpoints
    its seed, requeues its trial and exits with PREEMPTED_EXIT); then this process exits with PREEMPTED_EXIT."""
    threads = max(1, usable_cores() // workers)  # the cores `--workers auto` counts
    ctx = mp.get_context("spawn")

    def start(i: int) -> mp.Process:
        p = ctx.Process(target=target, args=({**kwargs, "threads": threads, "worker_index": i},), daemon=False)
        p.start()
        return p

    index = {start(i): i for i in range(workers)}
    running, preempted = set(index), []

    def forward_sigterm() -> None:  # Kubernetes signals only the main process: each worker checkpoints itself
        preempted.append(True)
        for q in list(running):
            with contextlib.suppress(ProcessLookupError):
                os.kill(q.pid, signal.SIGTERM)

    with sigterm_requests(forward_sigterm):
        stopped = _watch(index, running, start, max_restarts, on_death, preempted)
    if preempted:
        raise SystemExit(PREEMPTED_EXIT)
    if stopped:
        raise UserError("the sweep stopped: a worker met a fault every trial would meet (its message is above); "
                        "fix it and run the same command again to continue")  # fmt: skip


def _watch(index: dict, running: set, start: Callable, max_restarts: int, on_death: Callable, preempted: list) -> bool:
    """Wait for the workers, replacing those that die; True when one asked the sweep to stop (STOP_EXIT)."""
    restarts, stopped = 0, False
    while running:
        for sentinel in mp_connection.wait([p.sentinel for p in running]):
            p = next(q for q in running if q.sentinel == sentinel)
            p.join()
            running.discard(p)
            if p.exitcode == 0:
                continue
            if p.exitcode == STOP_EXIT:  # a fault its replacement would meet too: no more replacements
                stopped = True
                continue
            if p.exitcode == PREEMPTED_EXIT:  # it checkpointed and requeued its own trial; the node is going away
                preempted.append(True)
                continue
            on_death(p.pid, p.exitcode)
            if restarts < max_restarts and not stopped and not preempted:
                restarts += 1
                replacement = start(index[p])
                index[replacement] = index[p]
                running.add(replacement)
    return stopped

"""Local worker processes: who runs a trial (so a dead one can be told from a live one), and a supervisor that
replaces workers that die. Knows processes, not Optuna: the backend says what to do about a dead worker."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError


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


def same_machine(worker: dict) -> bool:
    """Did `worker` run on this machine since its last boot?"""
    return worker["host"] == socket.gethostname() and worker.get("boot") == _boot_id()


def worker_is_gone(worker: dict | None, heartbeats: bool) -> bool:
    """Is the process that ran a RUNNING trial dead? Known for sure on this machine (a zombie or a reused pid
    counts as dead). Elsewhere, or untagged (between ask and tag), heartbeats decide where the storage has
    them; without heartbeats (journal files) `--resume` means the user says it is dead."""
    if worker is None or not same_machine(worker):
        return not heartbeats
    stat = proc_stat(worker["pid"])
    return stat is None or stat[0] == "Z" or stat[1] != worker.get("start")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


STOP_EXIT = 3  # a worker's exit code for "the sweep must stop" (e.g. a full store): it is not replaced


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
    sweep ends with a UserError once the others are done."""
    threads = max(1, usable_cores() // workers)  # the cores `--workers auto` counts
    ctx = mp.get_context("spawn")

    def start(i: int) -> mp.Process:
        p = ctx.Process(target=target, args=({**kwargs, "threads": threads, "worker_index": i},), daemon=False)
        p.start()
        return p

    index = {start(i): i for i in range(workers)}
    running, restarts, stopped = set(index), 0, False
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
            on_death(p.pid, p.exitcode)
            if restarts < max_restarts and not stopped:
                restarts += 1
                replacement = start(index[p])
                index[replacement] = index[p]
                running.add(replacement)
    if stopped:
        raise UserError("the sweep stopped: a worker met a fault every trial would meet (its message is above); "
                        "fix it and run the same command again to continue")  # fmt: skip

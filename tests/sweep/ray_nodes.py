"""Ray nodes a test starts with `ray start --block` on this machine, and ends again: only its own processes (their
command lines name the test's temp dir), never another Ray running here."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_temp_dir() -> str:
    return tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes


def ray_env(temp_dir: str) -> dict:
    # token auth off: these throwaway clusters listen on loopback only
    return {**os.environ, "RAY_TMPDIR": temp_dir, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def wait_for_port(port: int, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.time() < deadline, f"nothing listens on port {port} after {timeout_s}s"
            time.sleep(0.5)


def start_head(port: int, temp_dir: str, num_cpus: int = 0) -> subprocess.Popen:
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
         f"--temp-dir={temp_dir}", "--block"],
        env=ray_env(temp_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    wait_for_port(port)
    return head


def stop(proc: subprocess.Popen, *temp_dirs: str) -> None:
    """End a `ray start --block` process group and every process naming one of `temp_dirs`."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for marker in temp_dirs:
        kill_processes_under(marker)


def kill_processes_under(marker: str) -> None:
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and int(pid_dir.name) != os.getpid():
            try:
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except ProcessLookupError:
                pass

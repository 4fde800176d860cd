"""Joining a Ray cluster, or starting a local Ray, for the duration of a sweep; fails fast and says why."""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Any

from ..errors import UserError


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot reach Ray at '{address}' ({e})",
            key="address",
            allowed="omit it for a local Ray, 'auto' for the cluster this machine belongs to, host:port or "
            "ray://host:port",
        ) from None


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to (or start) Ray; returns True when this call initialised it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    env = {k: os.environ[k] for k in ("STABENCH_INCEPTION_WEIGHTS", "STABENCH_CACHE", "WANDB_MODE") if k in os.environ}
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", **env}},
    }
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    except Exception as e:  # unreachable address, version mismatch, ...
        raise UserError(
            f"cannot connect to Ray at '{address}': {type(e).__name__}: {e}",
            key="address",
            allowed="omit it for a local Ray, 'auto' for a running cluster, or ray://host:port",
        ) from None
    return True


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None):
    """Ray for the duration of a sweep: joined or started here (and then shut down here)."""
    import ray

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    started = init_ray(address, num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()

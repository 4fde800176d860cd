"""What a Ray worker gets from the driver: the stabench package when asked to ship it, and the W&B variables; the
W&B key only when asked, since Ray shows a job's runtime_env to whoever reaches its dashboard or state API.
(A module of its own: it starts its own Ray, with its own runtime_env.)"""

import os

import pytest

from stabench.sweep.ray_cluster import FORWARD_SECRETS, forwarded_env

KEY = "k" * 40


def test_shipped_code_and_the_wandb_variables_reach_the_workers_but_the_key_stays_out_of_ray(monkeypatch):
    ray = pytest.importorskip("ray")
    from stabench.sweep.ray_cluster import init_ray
    from tests.helpers import stop_ray

    stop_ray()  # the shared test Ray, if up: this test starts Ray as the CLI does
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.delenv(FORWARD_SECRETS, raising=False)
    assert init_ray(None, num_cpus=1, ship_code=True)
    try:

        @ray.remote(num_cpus=0)
        def seen_by_a_worker():
            import sys

            shipped = [p for p in sys.path if "runtime_resources" in p and os.path.isdir(os.path.join(p, "stabench"))]
            return shipped, os.environ.get("WANDB_ENTITY"), os.environ.get("WANDB_API_KEY")

        shipped, entity, key = ray.get(seen_by_a_worker.remote())
        job_env = ray.get_runtime_context().runtime_env  # what Ray's dashboard and state API show of the job
    finally:
        ray.shutdown()
    # the package Ray unpacked on the worker (here an editable install would still win the import; on a node
    # without stabench installed, this copy is what imports)
    assert len(shipped) == 1
    assert entity == "my-team"
    assert job_env["env_vars"]["WANDB_ENTITY"] == "my-team"
    assert KEY not in repr(job_env)
    assert key == KEY  # a local Ray's workers inherit the driver's environment: they still log in


def test_the_wandb_key_is_forwarded_only_when_asked(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    monkeypatch.setenv("WANDB_PROJECT", "p")
    monkeypatch.delenv(FORWARD_SECRETS, raising=False)
    assert forwarded_env()["WANDB_PROJECT"] == "p" and "WANDB_API_KEY" not in forwarded_env()
    monkeypatch.setenv(FORWARD_SECRETS, "1")
    assert forwarded_env()["WANDB_API_KEY"] == KEY

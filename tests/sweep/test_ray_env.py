"""What a Ray worker gets from the driver: the stabench package when asked to ship it, and the W&B variables.
(A module of its own: it starts its own Ray, with its own runtime_env.)"""

import os

import pytest


def test_shipped_code_and_the_wandb_variables_reach_the_workers(monkeypatch):
    ray = pytest.importorskip("ray")
    from stabench.sweep.ray_cluster import init_ray
    from tests.helpers import stop_ray

    stop_ray()  # the shared test Ray, if up: this test starts Ray as the CLI does
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert init_ray(None, num_cpus=1, ship_code=True)
    try:

        @ray.remote(num_cpus=0)
        def seen_by_a_worker():
            import sys

            shipped = [p for p in sys.path if "runtime_resources" in p and os.path.isdir(os.path.join(p, "stabench"))]
            return shipped, os.environ.get("WANDB_ENTITY"), os.environ.get("WANDB_API_KEY")

        shipped, entity, key = ray.get(seen_by_a_worker.remote())
    finally:
        ray.shutdown()
    # the package Ray unpacked on the worker (here an editable install would still win the import; on a node
    # without stabench installed, this copy is what imports)
    assert len(shipped) == 1
    assert entity == "my-team"
    assert key == "k" * 40

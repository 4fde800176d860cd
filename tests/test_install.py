"""What `pip install -e .` (no extras) gives: the README's main flow runs without Ray or psycopg2, and the paths that
need them say which extra to install (exit 2) instead of a traceback.

The missing packages are simulated by modules on PYTHONPATH that fail to import as a missing package does, so the
block reaches every process a command starts (the sweep's worker processes too)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, space_file

MISSING = "raise ModuleNotFoundError(\"No module named '{0}'\", name='{0}')\n"


def without(tmp_path: Path, *packages: str) -> dict[str, str]:
    """The environment of a process in which `packages` cannot be imported."""
    blocked = tmp_path / "blocked"
    blocked.mkdir(exist_ok=True)
    for name in packages:
        (blocked / f"{name}.py").write_text(MISSING.format(name))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), REPO]), "WANDB_MODE": "disabled"}


def stabench(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stabench.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_blocked_package_cannot_be_imported(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import ray"], env=without(tmp_path, "ray"), capture_output=True)
    assert done.returncode == 1
    assert b"No module named 'ray'" in done.stderr


def sweep_and_leaderboard_without_ray(tmp_path: Path, trials: int, workers: int) -> None:
    env, store = without(tmp_path, "ray"), str(tmp_path / "runs")
    space = space_file(tmp_path, trials=trials)
    swept = stabench(env, "sweep", str(space), "--with-baselines", "--workers", str(workers), "--store", store)
    assert swept.returncode == 0, swept.stderr[-3000:]
    ranked = stabench(env, "leaderboard", "--sweep", "t", "--store", store, "--metric", "best_probe_loss", "--no-plots")
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    assert (tmp_path / "runs" / "leaderboard" / "leaderboard.md").is_file()


def test_a_sweep_with_baselines_and_its_leaderboard_run_without_ray(tmp_path):
    """The README's main flow on the default backend, in a tiny space, one trial in the command's process."""
    sweep_and_leaderboard_without_ray(tmp_path, trials=1, workers=1)


@pytest.mark.slow
def test_a_sweep_on_local_worker_processes_runs_without_ray(tmp_path):
    """The same with two worker processes (started by the sweep, so the block reaches them too)."""
    sweep_and_leaderboard_without_ray(tmp_path, trials=2, workers=2)


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["--backend", "ray"], "ray"),
        (["--study-storage", "postgresql+psycopg2://me@127.0.0.1:1/db"], "postgres"),
    ],
)
def test_a_path_whose_extra_is_missing_names_the_extra(tmp_path, args, extra):
    env = without(tmp_path, "ray", "psycopg2")
    done = stabench(env, "sweep", str(space_file(tmp_path)), "--store", str(tmp_path / "runs"), *args)
    assert done.returncode == 2
    assert f"pip install -e '.[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr

"""`stabench reproduce scalelong`: the paper's reference configs run through the baselines machinery, and the
report that sets the paper's numbers beside ours. The default test runs the smoke at depth 12, one seed, two
steps; the slow one runs the whole smoke (both depths, two seeds) as a user would, from the repository root."""

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabench.cli import main
from stabench.leaderboard.paper import NOT_REACHED
from stabench.records.store import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    store = tmp_path_factory.mktemp("reproduce") / "runs"
    args = ["reproduce", "scalelong", "--smoke", "--depth", "12", "--seeds", "1", "--budget-steps", "2",
            "--store", str(store)]  # fmt: skip
    result = CliRunner().invoke(main, args)
    return store, args, result


def test_the_smoke_runs_the_five_modes_and_writes_the_report(smoke):
    store, _, result = smoke
    assert result.exit_code == 0, result.output
    records = list(Store(store).records(sweep="baselines"))
    assert sorted(r["tags"]["baseline"] for r in records) == [
        "scalelong-cifar10-d12", "scalelong-cifar10-d12-cs", "scalelong-cifar10-d12-inv-sqrt2",
        "scalelong-cifar10-d12-ls", "scalelong-cifar10-d12-ls-per-skip"]  # fmt: skip
    assert all(r["steps_completed"] == 2 for r in records)
    assert {r["config"]["workload"]["depth"] for r in records} == {12}


def test_the_report_sets_the_papers_numbers_beside_ours_not_reached_where_the_budget_is_short(smoke):
    store, _, _ = smoke
    text = (store / "reproduce" / "scalelong.md").read_text()
    assert "| 12 | 0 original | 2 | 1 | not reached at this budget |" in text
    assert "| 12 | 2 CS (kappa) | 1 | 0.5 | not reached at this budget |" in text
    assert "| 12 | 1 1/sqrt2-CS | 1.4 | 0.7 | not reached at this budget |" in text
    assert f"{NOT_REACHED} (0/1 seeds)" in text  # the FID target
    assert "(n=1) at 2 |" in text  # our ratio at the last probe the run has, with its n
    assert "| 12 | 1 1/sqrt2-CS |" in text and "0.707 (n=1) at 2" in text  # a constant 1/sqrt2 scale, read back


def test_a_rerun_takes_every_trial_from_the_store(smoke):
    store, args, _ = smoke
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("already in the store") == 5


def test_a_depth_outside_the_papers_fails_fast_naming_the_flag(tmp_path):
    out = CliRunner().invoke(main, ["reproduce", "scalelong", "--smoke", "--depth", "13", "--store", str(tmp_path)])
    assert out.exit_code == 2
    assert "--depth" in out.output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_whole_smoke_from_the_repository_root_with_intervals(tmp_path):
    store = tmp_path / "runs"
    cmd = [sys.executable, "-m", "stabench.cli", "reproduce", "scalelong", "--smoke", "--seeds", "2", "--store",
           str(store)]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    text = (store / "reproduce" / "scalelong.md").read_text()
    assert "| 16 | 0 original | 5.5 | 1 | not reached at this budget |" in text
    assert "(n=2)" in text
    assert len(list(Store(store).records(sweep="baselines"))) == 20

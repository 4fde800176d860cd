"""The metric registry is the one list of metrics: every key a trial writes is in it, every row is written by
some kind of trial, and the docs' table, the CLI and the ranking direction all come from it."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabench.cli import main
from stabench.engine import run_trial
from stabench.records.metrics import METRICS, NUMERIC_METRICS, TEXT_METRICS, markdown_table
from stabench.scoring import get_extractor
from tests.helpers import tiny_config

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / "results" / "validation" / "exploratory" / "store"


@pytest.fixture(scope="module")
def trial_kinds() -> dict[str, dict]:
    """The metrics of the cheap kinds of trial: probe-only (no samples) and scored with the digits extractor."""
    return {
        "probe only": run_trial(tiny_config())["metrics"],
        "digits scored": run_trial(tiny_config("eval.samples=24", "eval.sampler_steps=3"))["metrics"],
    }


def test_every_metric_a_trial_writes_is_registered(trial_kinds):
    for kind, metrics in trial_kinds.items():
        assert set(metrics) - set(METRICS) == set(), kind


def test_every_registered_metric_is_written_by_some_trial(trial_kinds):
    written = set().union(*trial_kinds.values())
    # The inception rows are the digits rows under inception's key suffix (the same scoring code writes both).
    digits, inception = get_extractor("digits"), "inception"
    as_inception = {k.removesuffix(digits.key_suffix) for k in written if k.endswith(digits.key_suffix)}
    as_inception |= {f"{k.removesuffix(digits.key_suffix)}_auc" for k in written if k == "fid_digits"}
    as_inception |= {f"{k.removesuffix(digits.key_suffix)}_floor" for k in written if k == "fid_digits"}
    unwritten = set(METRICS) - written - as_inception
    assert unwritten == set()
    assert {m.name for m in METRICS.values() if m.extractor == inception} <= as_inception


def test_a_metric_the_registry_lacks_fails_the_check(trial_kinds, monkeypatch):
    monkeypatch.delitem(METRICS, "skipped_frac")
    assert set(trial_kinds["probe only"]) - set(METRICS) == {"skipped_frac"}


def test_collapse_is_recorded_for_a_run_that_never_learned():
    metrics = run_trial(tiny_config("optim.lr=1e-9", steps=10))["metrics"]
    assert metrics["final_probe_loss"] > 0.5
    assert metrics["collapsed"] == 1.0


def test_the_docs_table_is_the_registry():
    text = (ROOT / "docs" / "metrics.md").read_text()
    table = re.search(r"<!-- metric-table:start -->\n(.*?)<!-- metric-table:end -->", text, re.S)
    assert table is not None
    assert table.group(1) == markdown_table(), "regenerate with stabench.records.metrics.markdown_table()"


def test_text_metrics_are_not_rankable():
    assert set(TEXT_METRICS) == {"best_weights", "best_weights_by"}
    assert not set(TEXT_METRICS) & set(NUMERIC_METRICS)


def committed_metrics() -> set[str]:
    return {k for f in STORE.glob("*/record.json") for k in json.loads(f.read_text())["metrics"]}


def test_every_metric_in_the_committed_store_is_registered():
    assert committed_metrics() - set(METRICS) == set()


@pytest.mark.parametrize("metric", sorted(set(NUMERIC_METRICS) & committed_metrics()))
def test_leaderboard_ranks_by_every_registered_metric_of_the_committed_store(metric, tmp_path):
    out = CliRunner().invoke(
        main, ["leaderboard", "--store", str(STORE), "--metric", metric, "--no-plots", "--out", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "leaderboard.csv").exists()

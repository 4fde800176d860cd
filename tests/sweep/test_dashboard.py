"""optuna-dashboard, the real client, served on 127.0.0.1 against a finished sweep's journal: its API answers with
the study, its metric names, where it comes from, and the trials with the records behind them."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from stabench.cli import main
from tests.helpers import space_file

DASHBOARD = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, timeout_s: float = 60.0):
    """GET `url` as JSON, retrying while the server starts."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.skipif(DASHBOARD is None, reason="optuna-dashboard is installed by the dev extras")
def test_optuna_dashboard_serves_the_study_with_metric_names_run_ids_and_wandb_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    journal = tmp_path / "t.journal"
    args = ["sweep", str(space_file(tmp_path, trials=2)), "--store", str(tmp_path / "s"), "--study-storage",
            str(journal), "--wandb", "offline"]  # fmt: skip
    swept = CliRunner().invoke(main, args)
    assert swept.exit_code == 0, swept.output

    port = free_port()
    server = subprocess.Popen([DASHBOARD, str(journal), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        studies = get_json(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["t"]
        detail = get_json(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert detail["name"] == "t"
    assert detail["objective_names"] == ["best_probe_loss"]
    attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert attrs["space_file"].endswith("space.yaml")
    assert attrs["backend"] == "optuna"
    assert len(detail["trials"]) == 2
    assert {t["state"] for t in detail["trials"]} == {"Complete"}
    records = {p.parent.name for p in (tmp_path / "s").glob("*/record.json")}
    for trial in detail["trials"]:
        trial_attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        assert set(json.loads(trial_attrs["run_ids"])) <= records  # the dashboard shows attrs as JSON text
        assert json.loads(trial_attrs["records"]) == [f"{r}/record.json" for r in json.loads(trial_attrs["run_ids"])]
        assert len(json.loads(trial_attrs["wandb_ids"])) == len(json.loads(trial_attrs["run_ids"]))

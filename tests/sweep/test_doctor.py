"""`stabench doctor STORE` (issue 32): on a real store it finds nothing; it names each planted fault (a checkpoint
whose pickle would run code, a truncated record, a 0600 file in a shared store, a malformed owner file, a broken
journal line, a killed run, a blocking FIFO) by kind and path, exits 1, and changes nothing in the store. And a
malformed owner.json is untrusted input for the sweep's takeover of a dead worker's run."""

import json
import os
import re
import shutil
import stat
import warnings
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner

from stabench.cli import main
from stabench.config import config_hash
from stabench.engine import CHECKPOINT, run_trial
from stabench.records.store import Store
from stabench.sweep.core import OWNER, UntrustedOwner, abandoned_run, claim
from stabench.sweep.doctor import examine
from stabench.sweep.study import make_storage
from stabench.sweep.workers import (
    TAKE_OVER_ALL,
    owner_problem,
    read_owner,
    same_machine,
    this_worker,
    worker_is_gone,
)
from tests.helpers import RunsCode, tiny_config

CFG = ("checkpoint_every=5",)
STEPS = 10


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real store, written under the common umask 022: one finished trial with its checkpoint and owner file,
    the store's write lock, and an Optuna journal with two finished trials."""
    root = tmp_path_factory.mktemp("built") / "store"
    old = os.umask(0o022)
    try:
        record = run_trial(tiny_config(*CFG, steps=STEPS), root)
        claim(root / record["run_id"])
        with Store(root).lock():
            pass
        storage, _ = make_storage(str(root / "optuna" / "t.journal"), "t")
        study = optuna.create_study(study_name="t", storage=storage)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    finally:
        os.umask(old)
    return root, record["run_id"]


@pytest.fixture
def store(built, tmp_path):
    """A private copy of the built store (modes kept), and its run folder."""
    root, run_id = built
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    return copy, copy / run_id


def share(root: Path) -> None:
    """Make `root` a team's store the way docs/security.md says: group rw on everything, set-group-id folders."""
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        path.chmod(mode | stat.S_IRGRP | stat.S_IWGRP | (stat.S_IXGRP | stat.S_ISGID if path.is_dir() else 0))


def snapshot(root: Path) -> dict:
    """Every path under `root` with its type, size, mode, owner, group and modification time."""
    out = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), st.st_size, stat.S_IMODE(st.st_mode),
                                            st.st_uid, st.st_gid, st.st_mtime_ns)  # fmt: skip
    return out


def doctor(root: Path, *args: str):
    """Run `stabench doctor` on `root` as a user would (text) and as JSON; both must agree on the exit code."""
    text = CliRunner().invoke(main, ["doctor", str(root), *args])
    as_json = CliRunner().invoke(main, ["doctor", str(root), "--json", *args])
    assert text.exit_code == as_json.exit_code, (text.output, as_json.output)
    assert text.exception is None or isinstance(text.exception, SystemExit), text.output
    return text, json.loads(as_json.output)


def found(report: dict, kind: str) -> dict[str, str]:
    """The problems of `kind`: path -> message."""
    return {p["path"]: p["message"] for p in report["problems"] if p["kind"] == kind}


def test_a_real_store_is_clean(store):
    root, _ = store
    before = snapshot(root)
    out, report = doctor(root)
    assert out.exit_code == 0, out.output
    assert "no problems found" in out.output
    assert report["problems"] == [] and report["counts"] == {}
    assert report["checked"]["records"] == report["checked"]["checkpoints"] == 1
    assert report["checked"]["owner files"] == report["checked"]["journals"] == 1
    assert snapshot(root) == before


def test_a_real_shared_store_is_clean(store):
    root, _ = store
    share(root)
    out, report = doctor(root)
    assert out.exit_code == 0, out.output
    assert report["shared"] is True


# Each planted fault: what it does to the store (given the root and the run folder), and returns the kind of problem
# and the path the report must name.
def plant_checkpoint(root, run, tmp_path):
    state = torch.load(run / CHECKPOINT, weights_only=True)
    state["record_head"]["run_id"] = RunsCode(f"touch {tmp_path / 'pwned'}")
    torch.save(state, run / CHECKPOINT)
    return "checkpoint", run / CHECKPOINT, "nothing in it ran"


def plant_truncated_record(root, run, tmp_path):
    data = (run / "record.json").read_bytes()
    (run / "record.json").write_bytes(data[: len(data) // 2])
    return "record", run / "record.json", "not a JSON record"


def plant_0600_file(root, run, tmp_path):
    share(root)
    (run / "config.yaml").chmod(0o600)
    return "permission", run / "config.yaml", "mode 0600: teammates cannot read it"


def plant_owner(root, run, tmp_path):
    (run / OWNER).write_text(json.dumps({"host": "h", "boot": "b", "pid": "1; rm -rf /"}))
    return "owner", run / OWNER, "'pid' is '1; rm -rf /', expected an integer"


def plant_journal_line(root, run, tmp_path):
    journal = root / "optuna" / "t.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join([lines[0], b'{"op_code": 4, "trial_id\n', *lines[1:]]))
    return "journal", journal, "line 2 is not JSON"


def plant_killed_run(root, run, tmp_path):
    killed = root / (run.name[:-6] + "dead00")
    shutil.copytree(run, killed)
    (killed / "record.json").unlink()
    (killed / OWNER).write_text(json.dumps({**this_worker(), "start": "0"}))  # this machine; its process is gone
    return "unfinished", killed, "killed: its process"


def plant_fifo(root, run, tmp_path):
    (run / "record.json").unlink()
    os.mkfifo(run / "record.json")  # read naively, it blocks the reader for ever
    return "record", run / "record.json", "is a FIFO"


PLANTS = [plant_checkpoint, plant_truncated_record, plant_0600_file, plant_owner, plant_journal_line,
          plant_killed_run, plant_fifo]  # fmt: skip


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.__name__.removeprefix("plant_"))
def test_doctor_names_each_planted_fault(store, tmp_path, plant):
    root, run = store
    kind, path, says = plant(root, run, tmp_path)
    before = snapshot(root)
    out, report = doctor(root)
    assert out.exit_code == 1, out.output
    assert str(path) in found(report, kind), report
    assert says in found(report, kind)[str(path)]
    assert str(path) in out.output and "Traceback" not in out.output
    assert report["counts"] == {kind: 1}, report["problems"]  # only the planted fault
    assert snapshot(root) == before
    assert not (tmp_path / "pwned").exists()


def test_doctor_names_every_fault_of_the_issue_at_once(store, tmp_path):
    """The bar of issue 32: a planted bad checkpoint, a truncated record and a 0600 file in a shared store."""
    root, run = store
    planted = [plant(root, run, tmp_path)[:2] for plant in PLANTS[:5]]
    before = snapshot(root)
    out, report = doctor(root)
    assert out.exit_code == 1
    for kind, path in planted:
        assert str(path) in found(report, kind), (kind, path, out.output)
    assert "5 problems: 1 record, 1 checkpoint, 1 owner, 1 journal, 1 permission" in out.output
    assert snapshot(root) == before
    assert not (tmp_path / "pwned").exists()


def test_group_permissions_are_judged_by_how_open_the_store_is(store):
    root, run = store
    (run / "config.yaml").chmod(0o600)
    root.chmod(0o700)  # a private store: nobody else is meant in
    assert examine(root).problems == []
    root.chmod(0o755)  # open to the group for reading: a 0600 file locks readers out, 0755 folders do not
    assert [(f.kind, f.path) for f in examine(root).problems] == [("permission", str(run / "config.yaml"))]
    problems = {f.path: f for f in examine(root, shared=True).problems}  # shared: folders, journal, lock need g+w
    assert {str(root), str(run), str(root / "optuna"), str(root / "optuna" / "t.journal")} <= set(problems)
    assert str(root / ".write.lock") in problems
    assert problems[str(run)].fix == f"chmod g+w {run}"
    assert "0600" in problems[str(run / "config.yaml")].message


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_foreign_file_names_its_owner(store):
    root, run = store
    share(root)
    os.chown(run / "config.yaml", 65534, -1)
    (run / "config.yaml").chmod(0o600)
    report = examine(root)
    messages = {f.path: f.message for f in report.problems}
    assert "owned by" in messages[str(run / "config.yaml")]


def test_a_file_this_user_cannot_read_is_named(store, monkeypatch):
    """Another user's file this user cannot read (simulated where the tests run as root, who reads everything)."""
    root, run = store
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != run / CHECKPOINT and real_access(p, mode, **kw))
    report = examine(root)
    assert [(f.kind, f.path) for f in report.problems] == [("unreadable", str(run / CHECKPOINT))]
    assert report.checked["checkpoints"] == 0  # never opened


def test_a_running_trial_is_a_note_not_a_problem(store):
    root, run = store
    running = root / (run.name[:-6] + "live00")
    shutil.copytree(run, running)
    (running / "record.json").unlink()
    claim(running)  # this process: alive
    out, report = doctor(root)
    assert out.exit_code == 0, out.output
    assert any(n["path"] == str(running) and "still running" in n["message"] for n in report["notes"])


def test_a_bad_argument_exits_2(tmp_path):
    (tmp_path / "file").write_text("x")
    for arg in (tmp_path / "file", tmp_path / "missing"):
        out = CliRunner().invoke(main, ["doctor", str(arg)])
        assert out.exit_code == 2 and str(arg) in out.output, out.output


# ---------------------------------------------------------------------------------------------
# owner.json read back by a retried sweep trial (`abandoned_run`): untrusted input
# ---------------------------------------------------------------------------------------------

MALFORMED_OWNERS = ["[1, 2]", '"me"', "{}", '{"host": "h", "boot": "b"}', '{"host": 1, "boot": "b", "pid": 2}',
                    '{"host": "h", "boot": "b", "pid": true}', '{"host": "h", "boot": "b", "pid": 2, "start": 3}',
                    "{not json", ""]  # fmt: skip


@pytest.fixture
def interrupted_run(store):
    """The store's run folder made to look interrupted (a checkpoint, no record)."""
    root, run = store
    (run / "record.json").unlink()
    return Store(root), run


@pytest.mark.parametrize("text", MALFORMED_OWNERS)
def test_a_malformed_owner_file_is_named_and_never_taken_over(interrupted_run, text):
    store, run = interrupted_run
    (run / OWNER).write_text(text)
    with pytest.warns(UntrustedOwner, match=re.escape(str(run / OWNER))):
        assert abandoned_run(store, tiny_config(*CFG, steps=STEPS)) is None


def test_a_dead_owner_on_this_machine_is_still_taken_over(interrupted_run):
    store, run = interrupted_run
    cfg = tiny_config(*CFG, steps=STEPS)
    assert config_hash(cfg)[:8] in run.name
    (run / OWNER).write_text(json.dumps({**this_worker(), "start": "0"}))  # pid reused by another process: gone
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert abandoned_run(store, cfg) == run
    claim(run)  # alive: never taken
    assert abandoned_run(store, cfg) is None


def test_a_malformed_worker_never_crashes_the_liveness_checks(tmp_path):
    for worker in (None, [1], {}, {"host": "h"}, {"host": "h", "boot": "b", "pid": "x"}):
        assert owner_problem(worker) is not None
        assert same_machine(worker) is False
        assert worker_is_gone(worker, heartbeats=False) is False  # unknown: alive unless the user says otherwise
        assert worker_is_gone(worker, heartbeats=False, take_over=frozenset({TAKE_OVER_ALL})) is True
        assert worker_is_gone(worker, heartbeats=True) is False  # unknown: heartbeats decide
    assert owner_problem(this_worker()) is None
    fifo = tmp_path / OWNER
    os.mkfifo(fifo)
    assert read_owner(fifo) == (None, f"'{fifo}' is not a regular file")  # never opened: it would block

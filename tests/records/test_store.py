import json
import multiprocessing as mp
import os
import signal
import time

import pytest

from stabench.errors import UserError
from stabench.records.record import write_record
from stabench.records.store import Store, acquire_flock, curves_table, scalars_table


def fake_record(run_id, size=10):
    return {
        "run_id": run_id,
        "config_hash": run_id[:4],
        "seed": 0,
        "status": "ok",
        "tags": {"sweep": "w"},
        "config": {"optim": {"lr": 0.1}},
        "metrics": {"instability": 0.5},
        "curves": {"step": list(range(size)), "loss": [1.0] * size, "grad_norm": [2.0] * size},
    }


def _writer(root, worker, n):
    for i in range(n):
        rid = f"w{worker}-{i:03d}"
        write_record(fake_record(rid), os.path.join(root, rid))


def test_concurrent_writers_leave_every_record_readable(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    records = list(Store(tmp_path).records())
    assert len(records) == 200
    assert len({r["run_id"] for r in records}) == 200


def _endless_big_writer(root):
    i = 0
    while True:
        rid = f"big-{i:05d}"
        write_record(fake_record(rid, size=200_000), os.path.join(root, rid))
        i += 1


def test_writer_killed_mid_write_leaves_no_partial_record(tmp_path):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_endless_big_writer, args=(str(tmp_path),))
    p.start()
    deadline = time.time() + 60
    while time.time() < deadline and len(list(tmp_path.glob("*/record.json"))) < 2:
        time.sleep(0.05)
    while time.time() < deadline and not list(tmp_path.glob("*/.record.json.*.tmp")):
        time.sleep(0.005)  # catch it while a temp file is being written
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    for path in tmp_path.glob("*/record.json"):
        json.loads(path.read_text())  # every visible record is complete
    records = list(Store(tmp_path).records())
    assert len(records) == len(list(tmp_path.glob("*/record.json"))) >= 2


def test_scalar_and_curve_tables(tmp_path):
    for i in range(3):
        write_record(fake_record(f"r{i}xxx", size=5), tmp_path / f"r{i}xxx")
    records = list(Store(tmp_path).records())
    scalars, curves = scalars_table(records), curves_table(records)
    assert scalars.height == 3
    assert "metrics.instability" in scalars.columns
    assert "config.optim.lr" in scalars.columns
    assert curves.height == 15
    assert set(curves.columns) == {"run_id", "step", "loss", "grad_norm"}


def test_store_path_that_is_a_file_is_a_user_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        Store(f)


def test_write_unique_marks_a_second_finished_copy_as_duplicate(tmp_path, tiny):
    from stabench.engine import run_trial

    store = Store(tmp_path)
    first, second = (
        run_trial(tiny(steps=5), tmp_path, tags={"sweep": "s"}, writer=store.write_unique) for _ in range(2)
    )
    assert first["status"] == "ok"
    assert second["status"] == "duplicate"
    assert second["duplicate_of"] == first["run_id"]
    assert store.find(first["config_hash"], first["seed"], sweep="s")["run_id"] == first["run_id"]
    # another sweep's copy is not a duplicate; the leaderboard counts only ok/diverged records
    third = run_trial(tiny(steps=5), tmp_path, tags={"sweep": "t"}, writer=store.write_unique)
    assert third["status"] == "ok"
    assert len(list(store.records())) == 3


def test_a_lock_held_past_the_timeout_is_a_user_error_naming_it(tmp_path):
    store = Store(tmp_path)
    with store.lock(), open(tmp_path / ".write.lock", "w") as other:  # a second open file description
        with pytest.raises(UserError, match="could not lock") as err:
            acquire_flock(other, tmp_path / ".write.lock", timeout_s=0.2)
    assert err.value.key == "store"


def test_the_store_and_lock_settings_are_read_when_used_not_at_import(tmp_path, monkeypatch):
    monkeypatch.setenv("STABENCH_STORE", str(tmp_path / "elsewhere"))
    assert Store().root == tmp_path / "elsewhere"
    monkeypatch.setenv("STABENCH_LOCK_TIMEOUT", "0.1")
    store = Store(tmp_path)
    with open(tmp_path / ".write.lock", "w") as held:
        acquire_flock(held, tmp_path / ".write.lock", timeout_s=1)
        start = time.monotonic()
        with pytest.raises(UserError, match="within 0.1 s"), store.lock():
            pass
    assert time.monotonic() - start < 5


def test_a_filesystem_without_flock_is_a_user_error(tmp_path, monkeypatch):
    import fcntl

    def no_locks(f, op):
        raise OSError(37, "No locks available")  # ENOLCK, as on an NFS mount without lockd

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(UserError, match="does not support file locks"):
        with Store(tmp_path).lock():
            pass

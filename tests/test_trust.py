"""Trust boundaries of a shared store (issue 32): a planted checkpoint cannot run code on any path that reads one,
every field read back is checked, a filesystem fault (full disk, read-only, ...) is named for what it is and stops
a sweep, and written files get the mode the umask gives."""

import errno
import json
import os
import shutil
import stat

import pytest
import torch
from click.testing import CliRunner

from stabench.cli import main
from stabench.config import config_hash
from stabench.engine import CHECKPOINT, run_trial
from stabench.engine.state import read_checkpoint
from stabench.errors import StorageFault, UserError
from stabench.files import atomic_write, atomic_write_bytes
from stabench.records.record import Tags, write_record
from stabench.records.store import RecordSkipped, Store
from stabench.sweep.claims import MAX_GEN, SeedClaims
from stabench.sweep.core import OWNER, ConfigRun, Placement, run_config
from stabench.sweep.space import load_space, trial_config
from stabench.sweep.workers import read_owner, this_worker
from tests.helpers import RunsCode, space_file, tiny_config

STEPS = ("checkpoint_every=5",)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory):
    """A real interrupted-looking run directory: config.yaml and checkpoint.pt, no record.json."""
    root = tmp_path_factory.mktemp("genuine")
    record = run_trial(tiny_config(*STEPS, steps=10), root)
    run_dir = root / record["run_id"]
    (run_dir / "record.json").unlink()
    return run_dir


def planted(genuine, tmp_path, contents, name=None):
    """A copy of the genuine run directory whose checkpoint is `contents` (saved with torch.save, pickling
    whatever it holds); `name` renames the directory."""
    run_dir = tmp_path / (name or genuine.name)
    shutil.copytree(genuine, run_dir)
    torch.save(contents, run_dir / CHECKPOINT)
    return run_dir


def malicious(genuine, tmp_path, name=None):
    """A run directory whose checkpoint, once unpickled, creates the file it returns (as the issue's `os.system`)."""
    marker = tmp_path / "pwned"
    state = torch.load(genuine / CHECKPOINT, weights_only=True)
    state["record_head"]["run_id"] = RunsCode(f"touch {marker}")
    return planted(genuine, tmp_path, state, name), marker


def test_a_genuine_checkpoint_reads_back_whole(genuine):
    state = read_checkpoint(genuine / CHECKPOINT, "resume")
    assert state["loop"]["step"] == 10
    assert state["record_head"]["config_hash"] == config_hash(tiny_config(*STEPS, steps=10))
    assert set(state["loop"]["model"]) and all(isinstance(t, torch.Tensor) for t in state["loop"]["model"].values())


def test_resume_refuses_a_checkpoint_that_runs_code(genuine, tmp_path):
    run_dir, marker = malicious(genuine, tmp_path)
    out = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--quiet", "--wandb", "disabled"])
    assert out.exit_code == 2, out.output
    assert "nothing in it ran" in out.output and str(run_dir / CHECKPOINT) in out.output
    assert "Traceback" not in out.output
    assert not marker.exists()


def test_score_refuses_a_checkpoint_that_runs_code(genuine, tmp_path):
    run_dir, marker = malicious(genuine, tmp_path)
    out = CliRunner().invoke(main, ["score", str(run_dir), "--samples", "10"])
    assert out.exit_code == 2, out.output
    assert "nothing in it ran" in out.output
    assert not marker.exists()


@pytest.fixture
def space(tmp_path):
    return load_space(space_file(tmp_path, fixed={"checkpoint_every": 5}))


def test_a_retry_taking_over_a_dead_workers_run_refuses_a_checkpoint_that_runs_code(genuine, tmp_path, space):
    """A retried trial continues a dead worker's run directory of the same config and seed (`abandoned_run`)."""
    params = {"lsc.mode": "none", "optim.lr": 1e-3}
    cfg = trial_config(space, params, 0)
    store = tmp_path / "store"
    run_dir, marker = malicious(genuine, store, name=f"20200101-000000-{config_hash(cfg)[:8]}-s0-abcdef")
    dead = {**this_worker(), "pid": 2**22 + 1}  # this machine, a pid that does not run
    (run_dir / OWNER).write_text(json.dumps(dead))
    run = ConfigRun(space, Tags(sweep="t", backend="optuna", trial_number=0), Placement(str(store)))
    with pytest.raises(UserError, match="nothing in it ran"):
        run_config(run, params)
    assert not marker.exists()


def test_a_ray_restore_refuses_a_checkpoint_that_runs_code(genuine, tmp_path, space):
    """A restored Ray trial resumes the seed its Ray checkpoint names (`StabenchTrainable.load_checkpoint`)."""
    params = {"lsc.mode": "none", "optim.lr": 1e-3}
    store = tmp_path / "store"  # a resume folder outside the store, or of another config, is never opened at all
    name = f"20200101-000000-{config_hash(trial_config(space, params, 0))[:8]}-s0-abcdef"
    run_dir, marker = malicious(genuine, store, name=name)
    resume = {"seed_index": 0, "run_dir": str(run_dir)}
    run = ConfigRun(space, Tags(sweep="t", backend="ray"), Placement(str(store)), resume=resume)
    with pytest.raises(UserError, match="nothing in it ran"):
        run_config(run, params)
    assert not marker.exists()


def test_an_old_checkpoint_with_python_objects_is_refused_with_a_rerun_hint(genuine, tmp_path):
    state = torch.load(genuine / CHECKPOINT, weights_only=True)
    state["loop"]["probes"] = Store(tmp_path)  # any object beyond tensors and plain data
    run_dir = planted(genuine, tmp_path, state)
    with pytest.raises(UserError, match="Run the trial again") as err:
        read_checkpoint(run_dir / CHECKPOINT, "resume")
    assert str(run_dir / CHECKPOINT) in str(err.value)


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda s: s["record_head"].pop("config_hash"), "'record_head.config_hash' is missing"),
        (lambda s: s["record_head"].update(seed="0"), "'record_head.seed' is '0', expected an integer"),
        (lambda s: s["loop"].pop("torch_rng"), "'loop.torch_rng' is missing"),
        (lambda s: s["loop"]["batches"].update(order=[1, 2]), "'loop.batches.order' is list, expected a tensor"),
        (lambda s: s["loop"]["log"].update(loss=["x"]), "'loop.log.loss' is list, expected a list of numbers"),
        (lambda s: s["loop"].update(step=True), "'loop.step' is True, expected an integer"),
        (lambda s: s.clear(), "'record_head' is missing"),
    ],
)
def test_every_field_is_checked_and_the_error_names_file_and_field(genuine, tmp_path, damage, named):
    state = torch.load(genuine / CHECKPOINT, weights_only=True)
    damage(state)
    run_dir = planted(genuine, tmp_path, state)
    with pytest.raises(UserError) as err:
        read_checkpoint(run_dir / CHECKPOINT, "resume")
    assert named in str(err.value) and str(run_dir / CHECKPOINT) in str(err.value)
    out = CliRunner().invoke(main, ["train", "--resume", str(run_dir), "--quiet", "--wandb", "disabled"])
    assert out.exit_code == 2 and named in out.output and "Traceback" not in out.output, out.output


# ---------------------------------------------------------------------------------------------
# Faults of the store's filesystem are named for what they are
# ---------------------------------------------------------------------------------------------


def fill_disk_after(saves: int):
    """A torch.save that writes `saves` checkpoints, then fails as it does on a full filesystem: a partial write,
    then `RuntimeError: ... unexpected pos` raised while handling the OSError(ENOSPC) of the file write."""
    real, done = torch.save, []

    def save(obj, f, *args, **kwargs):
        if len(done) < saves:
            done.append(1)
            return real(obj, f, *args, **kwargs)
        f.write(b"\0" * 4096)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 277440 vs 277328") from None

    return save


def test_a_full_disk_stops_the_trial_with_a_message_saying_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", fill_disk_after(1))  # the step-5 checkpoint is written, the step-10 one not
    with pytest.raises(StorageFault, match="no space left on device writing '.*checkpoint.pt'") as err:
        run_trial(tiny_config(*STEPS, steps=10), tmp_path)
    assert err.value.errno == errno.ENOSPC and "free there" in str(err.value)
    (run_dir,) = tmp_path.iterdir()
    record = json.loads((run_dir / "record.json").read_text())  # the record says why (it fitted on the disk)
    assert record["status"] == "failed" and record["error"]["type"] == "StorageFault"
    assert "no space left on device" in record["error"]["message"]
    assert read_checkpoint(run_dir / CHECKPOINT, "resume")["loop"]["step"] == 5  # the previous one, whole
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]  # no torn temp file left


def test_train_on_a_full_disk_exits_2_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", fill_disk_after(0))
    args = ["train", "baselines/ddpm.yaml", "--quiet", "--wandb", "disabled", "--checkpoint-every", "5"]
    sets = [f"--set={k}={v}" for k, v in {"preset": "tiny", "steps": 10, "batch_size": 32, "samples": 0,
                                          "grid": 0, "eval.every": 5}.items()]  # fmt: skip
    out = CliRunner().invoke(main, [*args, *sets, "--out", str(tmp_path)])
    assert out.exit_code == 2, out.output
    assert "no space left on device writing" in out.output and "checkpoint.pt" in out.output
    assert "unexpected pos" not in out.output and "Traceback" not in out.output


def test_a_sweep_on_a_full_disk_stops_instead_of_failing_trial_after_trial(tmp_path, monkeypatch, space):
    from stabench.sweep import SweepSettings
    from stabench.sweep.optuna import run_optuna_sweep

    monkeypatch.setattr(torch, "save", fill_disk_after(0))
    settings = SweepSettings("t", n_trials=4, max_failures=3)
    with pytest.raises(StorageFault, match="no space left on device"):
        run_optuna_sweep(space, Store(tmp_path / "store"), settings, workers=1, log=lambda line: None)
    records = list((tmp_path / "store").glob("*/record.json"))
    assert len(records) == 1  # one trial met the full disk; no other was started to meet it again


@pytest.mark.parametrize(
    ("code", "named"),
    [
        (errno.EROFS, "read-only file system writing"),
        (errno.EACCES, "permission denied writing"),
        (errno.ESTALE, "stale file handle"),
        (errno.EDQUOT, "disk quota exceeded writing"),
    ],
)
def test_other_filesystem_faults_are_named_with_the_path(tmp_path, code, named):
    def refused(f):
        raise OSError(code, os.strerror(code))

    with pytest.raises(StorageFault, match=named) as err:
        atomic_write(tmp_path / "record.json", refused)
    assert str(tmp_path / "record.json") in str(err.value) and err.value.errno == code
    assert not list(tmp_path.iterdir())  # nothing left behind


def test_an_unrelated_error_is_not_mistaken_for_a_filesystem_fault(tmp_path):
    def broken(f):
        raise RuntimeError("unexpected pos 1 vs 2")

    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_write(tmp_path / "x", broken)


# ---------------------------------------------------------------------------------------------
# Written files honour the umask, as any new file does
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_records_are_written_with_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_record({"run_id": "r", "status": "ok"}, tmp_path / "run")
        atomic_write_bytes(tmp_path / "leaderboard.parquet", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "leaderboard.parquet").stat().st_mode) == mode


# ---------------------------------------------------------------------------------------------------------
# Files a shared store hands back to every reader: a FIFO, a huge file or deeply nested JSON blocks or crashes none
# ---------------------------------------------------------------------------------------------------------

NESTED = b"[" * 20_000  # json.loads raises RecursionError on it, which is no ValueError


def plant_fifo(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)


def test_a_fifo_planted_as_a_claim_is_read_as_no_holder_without_blocking(tmp_path):
    claims = SeedClaims(tmp_path, "t")
    plant_fifo(claims.dir / "abc-s0.0.claim")
    top = claims.top("abc-s0")  # a blocking read would hang the test here
    assert top is not None
    assert top.holder is None


def test_a_deeply_nested_claim_is_read_as_no_holder(tmp_path):
    claims = SeedClaims(tmp_path, "t")
    claims.dir.mkdir(parents=True)
    (claims.dir / "abc-s0.0.claim").write_bytes(NESTED)
    assert claims.top("abc-s0").holder is None


def test_a_fifo_planted_as_a_claims_run_folder_is_ignored(tmp_path):
    claims = SeedClaims(tmp_path, "t")
    claim = claims.take("abc-s0", None, this_worker())
    plant_fifo(claims.dir / "abc-s0.0.run")
    assert SeedClaims.run_of(claim) is None


def test_a_planted_last_generation_is_refused_by_name_instead_of_creating_an_unseen_claim(tmp_path):
    claims = SeedClaims(tmp_path, "t")
    claims.dir.mkdir(parents=True)
    (claims.dir / f"abc-s0.{MAX_GEN}.done").write_text("")
    with pytest.raises(UserError, match="abc-s0"):
        claims.take("abc-s0", claims.top("abc-s0"), this_worker())


def test_a_holder_keeps_its_seed_when_the_claims_folder_is_removed(tmp_path):
    claims = SeedClaims(tmp_path, "t")
    claim = claims.take("abc-s0", None, this_worker())
    shutil.rmtree(claims.dir)
    assert claims.holds(claim)  # its record is written, not thrown away as "taken over"


def test_an_owner_file_nested_too_deeply_is_no_owner(tmp_path):
    (tmp_path / OWNER).write_bytes(NESTED)
    owner, why = read_owner(tmp_path / OWNER)
    assert owner is None
    assert "nested too deeply" in why


@pytest.mark.parametrize("plant", ["fifo", "nested", "huge"])
def test_a_planted_record_is_skipped_with_a_warning_and_the_store_still_reads(tmp_path, plant, monkeypatch):
    store = Store(tmp_path)
    record = run_trial(tiny_config(steps=2), tmp_path)
    bad = tmp_path / "planted" / "record.json"
    size = (tmp_path / record["run_id"] / "record.json").stat().st_size
    if plant == "fifo":
        plant_fifo(bad)
    else:
        bad.parent.mkdir()
        bad.write_bytes(NESTED if plant == "nested" else b" " * (size + 1))
        monkeypatch.setattr("stabench.records.store.RECORD_BYTES", size)  # the genuine record is just within
    with pytest.warns(RecordSkipped, match="planted"):
        found = list(store.records())
    assert [r["run_id"] for r in found] == [record["run_id"]]

"""Bad input beyond the train config: spaces, paths, stores, checkpoints and studies. Each case asserts the exit
code, no traceback, the named key/flag/file, and that every file of the store is byte-for-byte unchanged."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from stabench.cli import main
from stabench.engine import run_trial
from stabench.records.store import Store
from tests.helpers import DEFAULT_SPACE, space_file, tiny_config

SWEEP = "g"
LEADERBOARD = ["leaderboard", "--sweep", SWEEP, "--baseline", "", "--metric", "best_probe_loss", "--no-plots"]


@pytest.fixture(scope="module")
def good_store(tmp_path_factory) -> Path:
    """Two real tiny records (seeds 0 and 1) of one config in sweep `g`."""
    root = tmp_path_factory.mktemp("good") / "store"
    store = Store(root)
    for seed in (0, 1):
        run_trial(tiny_config(f"seed={seed}"), root, tags={"sweep": SWEEP}, writer=store.write_unique)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (the store must come out of every case unchanged)."""
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def a_file(t: Path, name: str = "afile", data: bytes | str = "x") -> str:
    p = t / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data) if isinstance(data, bytes) else p.write_text(data)
    return str(p)


def space(t: Path, **kw) -> str:
    return str(space_file(t, **kw))


def space_with(t: Path, **top) -> str:
    """A valid tiny space file with top-level entries replaced (sampler, pruner, ...)."""
    body = {**yaml.safe_load(Path(space(t)).read_text()), **top}
    return a_file(t, "space2.yaml", yaml.safe_dump(body, sort_keys=False))


def first_record(store: Path) -> dict:
    return json.loads(next(store.glob("*/record.json")).read_text())


# --- files that are not what they claim ----------------------------------------------------------------------------
FILES = [
    ("space-not-utf8", lambda t, s: ["sweep", a_file(t, "s.yaml", b"name: \xff\xfe\n")], ["s.yaml", "not a UTF-8"]),
    ("config-not-utf8", lambda t, s: ["train", a_file(t, "c.yaml", b"optim:\n  lr: \xff\n")], ["c.yaml", "UTF-8"]),
    (
        "storage-not-a-journal",
        lambda t, s: ["sweep", space(t), "--store", s, "--study-storage", a_file(t, "x.journal", "hello\n")],
        ["--study-storage", "x.journal", "not an Optuna journal"],
    ),
    (
        "storage-under-a-file",
        lambda t, s: ["sweep", space(t), "--store", s, "--study-storage", a_file(t) + "/j.journal"],
        ["--study-storage", "lies under the regular file", "afile"],
    ),
    (
        "storage-is-a-directory",
        lambda t, s: ["sweep", space(t), "--store", s, "--study-storage", str(t)],
        ["--study-storage", "is a directory"],
    ),
    (
        "score-checkpoint-garbage",
        lambda t, s: [
            "score",
            str(Path(a_file(t, "run/checkpoint.pt", "garbage")).parent),
            a_file(t, "run/config.yaml", "{}") and "--samples=2",
        ],
        ["RUN_DIR_OR_CHECKPOINT", "checkpoint.pt", "not a readable checkpoint"],
    ),
    (
        "resume-checkpoint-garbage",
        lambda t, s: [
            "train",
            "baselines/ddpm.yaml",
            "--resume",
            str(Path(a_file(t, "run/checkpoint.pt", "x")).parent),
        ],  # noqa: E501
        ["--resume", "checkpoint.pt", "not a readable checkpoint"],
    ),
    (
        "resume-torch-file-not-ours",
        lambda t, s: (
            (t / "run").mkdir(),
            torch.save({"weights": 1}, t / "run" / "checkpoint.pt"),
            ["train", "baselines/ddpm.yaml", "--resume", str(t / "run")],
        )[-1],
        ["--resume", "not a stabench checkpoint"],
    ),
]

# --- output locations ----------------------------------------------------------------------------------------------
UNWRITABLE = "/proc/stabench-out"  # /proc refuses new entries, even to root
OUTPUTS = [
    (
        "train-out-under-a-file",
        lambda t, s: ["train", "baselines/ddpm.yaml", "--set", "steps=2", "--out", a_file(t) + "/out"],
        ["--out", "lies under the regular file"],
    ),
    (
        "train-out-unwritable",
        lambda t, s: ["train", "baselines/ddpm.yaml", "--set", "steps=2", "--out", UNWRITABLE],
        ["--out", "cannot write into", UNWRITABLE],
    ),
    (
        "sweep-store-under-a-file",
        lambda t, s: ["sweep", space(t), "--store", a_file(t) + "/s"],
        ["--store", "lies under the regular file"],
    ),
    ("sweep-store-unwritable", lambda t, s: ["sweep", space(t), "--store", UNWRITABLE], ["--store", UNWRITABLE]),
    (
        "leaderboard-out-under-a-file",
        lambda t, s: [*LEADERBOARD, "--store", s, "--out", a_file(t) + "/lb"],
        ["--out", "lies under the regular file"],
    ),
    (
        "leaderboard-out-unwritable",
        lambda t, s: [*LEADERBOARD, "--store", s, "--out", UNWRITABLE],
        ["--out", "cannot write into"],
    ),
    (
        "baselines-store-under-a-file",
        lambda t, s: ["baselines", "--only", "ddpm", "--store", a_file(t) + "/s"],
        ["--store", "lies under the regular file"],
    ),
    (
        "validate-out-under-a-file",
        lambda t, s: ["validate", "--fast", "--store", str(t / "v"), "--out", a_file(t) + "/v"],
        ["--out", "lies under the regular file"],
    ),
]

# --- options Optuna itself rejects ---------------------------------------------------------------------------------
OPTUNA_OPTIONS = [
    (
        "sampler-unknown-option",
        lambda t, s: ["sweep", space_with(t, sampler={"name": "tpe", "options": {"n_startup": 3}}), "--store", s],
        ["sampler.options.n_startup", "n_startup_trials"],
    ),
    (
        "sampler-option-wrong-type",
        lambda t, s: ["sweep", space_with(t, sampler={"name": "tpe", "options": {"n_startup_trials": "x"}})],
        ["sampler.options.n_startup_trials", "int"],
    ),
    (
        "sampler-option-rejected",
        lambda t, s: ["sweep", space_with(t, sampler={"name": "qmc", "options": {"qmc_type": "bogus"}})],
        ["sampler.options", "qmc_type", "sobol"],
    ),
    (
        "pruner-unknown-option",
        lambda t, s: ["sweep", space_with(t, pruner={"name": "median", "options": {"bogus": 1}})],
        ["pruner.options.bogus", "n_warmup_steps"],
    ),
    (
        "pruner-option-rejected",
        lambda t, s: ["sweep", space_with(t, pruner={"name": "median", "options": {"n_warmup_steps": -1}})],
        ["pruner.options", "cannot be negative"],
    ),
]

# --- values checked only in part -----------------------------------------------------------------------------------
VALUES = [
    ("space-later-seed-negative", lambda t, s: ["sweep", space(t, seeds=(0, -1)), "--store", s], ["seeds.1"]),
    ("space-empty-seeds", lambda t, s: ["sweep", space_with(t, seeds=[]), "--store", s], ["seeds"]),
    ("baselines-empty-seeds", lambda t, s: ["baselines", "--seeds", ",", "--store", s], ["--seeds", "no seeds"]),
    ("baselines-negative-seed", lambda t, s: ["baselines", "--seeds", "0,-2", "--store", s], ["seed"]),
    ("device-not-a-device", lambda t, s: ["train", "baselines/ddpm.yaml", "--device", "gpu7"], ["device", "cuda:N"]),
    ("device-bad-index", lambda t, s: ["train", "baselines/ddpm.yaml", "--device", "cuda:x"], ["device", "cuda:x"]),
    ("study-name-escapes", lambda t, s: ["sweep", space(t), "--store", s, "--study", "../x"], ["--study", "../x"]),
    ("study-name-has-slash", lambda t, s: ["sweep", space(t), "--store", s, "--study", "a/b"], ["--study", "a/b"]),
    (
        "config-duplicate-key",
        lambda t, s: ["train", a_file(t, "c.yaml", "optim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n"), "--dry-run"],
        ["c.yaml", "duplicate key 'lr'"],
    ),
    (
        "space-duplicate-key",
        lambda t, s: ["sweep", a_file(t, "s.yaml", Path(space(t)).read_text() + "name: other\n"), "--store", s],
        ["s.yaml", "duplicate key 'name'"],
    ),
    (
        "objective-needs-samples",
        lambda t, s: ["sweep", space(t, objectives=[{"metric": "fid_digits"}]), "--store", s],
        ["objectives.metric", "fid_digits", "eval.samples is 0"],
    ),
    ("confirm-unknown-metric", lambda t, s: ["confirm", SWEEP, "--metric", "fidd", "--store", s], ["--metric", "fidd"]),
    (
        "leaderboard-unknown-metric",
        lambda t, s: ["leaderboard", "--store", s, "--metric", "fidd", "--out", str(t / "lb")],
        ["--metric", "fidd", "fid_digits"],
    ),
    (
        "leaderboard-text-metric",
        lambda t, s: ["leaderboard", "--store", s, "--metric", "best_weights", "--out", str(t / "lb")],
        ["--metric", "best_weights"],
    ),
    (
        "resolution-preset-cannot-take",
        lambda t, s: [
            "train",
            "baselines/ddpm.yaml",
            "--set",
            "dataset=folder",
            "--set",
            f"root={t}",
            "--set",
            "preset=deep",
            "--set",
            "resolution=12",
        ],  # fmt: skip
        ["workload.resolution", "multiple of 8"],
    ),
    (
        "when-cycle-names-keys",
        lambda t, s: [
            "sweep",
            space(
                t,
                space={
                    "lsc.mode": {"type": "categorical", "choices": ["none", "constant"], "when": {"kappa": [0.5]}},
                    "lsc.kappa": {"type": "categorical", "choices": [0.5, 0.7], "when": {"mode": ["constant"]}},
                },
            ),
            "--store",
            s,
        ],
        ["cycle", "lsc.mode -> lsc.kappa -> lsc.mode"],
    ),
]

# --- names that do not exist: said so, with what does -------------------------------------------------------------
MISSING = [
    (
        "leaderboard-store-missing",
        lambda t, s: ["leaderboard", "--store", str(t / "nowhere")],
        ["--store", "nowhere", "does not exist"],
    ),
    (
        "confirm-store-missing",
        lambda t, s: ["confirm", SWEEP, "--store", str(t / "nowhere")],
        ["--store", "nowhere", "does not exist"],
    ),
    (
        "leaderboard-sweep-typo",
        lambda t, s: ["leaderboard", "--store", s, "--sweep", "gg", "--metric", "best_probe_loss"],
        ["--sweep", "no records of sweep 'gg'", "did you mean 'g'?", "allowed: g"],
    ),
    ("confirm-sweep-typo", lambda t, s: ["confirm", "x", "--store", s], ["SWEEP", "sweep 'x'", "allowed: g"]),
    (
        "space-file-missing",
        lambda t, s: ["sweep", str(t / "nope.yaml"), "--store", s],
        ["nope.yaml", "search space file not found"],
    ),
    (
        "space-loguniform",
        lambda t, s: [
            "sweep",
            space(t, space={"optim.lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}),
            "--store",
            s,
        ],
        ["space.optim.lr", "'loguniform'", "use {type: float, log: true}"],
    ),
]

EXIT_2 = [*FILES, *OUTPUTS, *OPTUNA_OPTIONS, *VALUES, *MISSING]


@pytest.mark.parametrize("build,needles", [c[1:] for c in EXIT_2], ids=[c[0] for c in EXIT_2])
def test_bad_input_exits_2_naming_it_and_changes_no_record(tmp_path, good_store, monkeypatch, build, needles):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # baselines/ddpm.yaml; nothing may be written here
    store = shutil.copytree(good_store, tmp_path / "store")
    before = snapshot(store)
    result = CliRunner().invoke(main, build(tmp_path, str(store)))
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)
    assert snapshot(store) == before
    assert len(list(tmp_path.rglob("record.json"))) == 2, "nothing may train on bad input"


# --- store contents: skipped, named (one warning line per file), the rest ranked, no file changed ------------------
def record_with(change):
    def make(good: dict) -> bytes:
        rec = json.loads(json.dumps(good))
        rec["run_id"] = "zz"
        change(rec)
        return json.dumps(rec).encode()

    return make


def _set_metric(rec):
    rec["metrics"]["best_probe_loss"] = "low"


BAD_RECORDS = [
    ("binary-garbage", lambda good: b"\x00\x01\xff\xfe", "not a JSON record"),
    ("truncated", lambda good: json.dumps(good).encode()[:300], "not a JSON record"),
    ("wrong-shape", lambda good: b"[1, 2, 3]", "a JSON list, expected an object"),
    ("missing-field", record_with(lambda r: r.pop("config_hash")), "missing 'config_hash'"),
    ("other-schema", record_with(lambda r: r.update(schema=99)), "schema 99"),
    ("non-numeric-metric", record_with(_set_metric), "metric 'best_probe_loss' is 'low'"),
    ("tags-null", record_with(lambda r: r.update(tags=None)), "'tags' is None"),
    ("unknown-status", record_with(lambda r: r.update(status="great")), "status 'great'"),
]


def store_with_bad_record(tmp_path: Path, good_store: Path, make) -> tuple[Path, Path]:
    """A copy of the good store plus one bad record.json made by `make` from a good one; (store, bad file)."""
    store = shutil.copytree(good_store, tmp_path / "store")
    bad = store / "zz-bad" / "record.json"
    bad.parent.mkdir()
    bad.write_bytes(make(first_record(store)))
    return store, bad


@pytest.mark.parametrize("make,reason", [c[1:] for c in BAD_RECORDS], ids=[c[0] for c in BAD_RECORDS])
def test_leaderboard_skips_a_bad_record_naming_it(tmp_path, good_store, make, reason):
    store, bad = store_with_bad_record(tmp_path, good_store, make)
    before = snapshot(store)
    result = CliRunner().invoke(main, [*LEADERBOARD, "--store", str(store), "--out", str(tmp_path / "lb")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning: skipping")]
    assert len(warnings) == 1, result.output
    assert str(bad) in warnings[0]
    assert reason in warnings[0]
    assert "(2 records)" in result.output  # the two good records are ranked
    assert snapshot(store) == before


@pytest.mark.parametrize("make,reason", [c[1:] for c in BAD_RECORDS[:2]], ids=[c[0] for c in BAD_RECORDS[:2]])
def test_confirm_skips_a_bad_record_naming_it(tmp_path, good_store, make, reason):
    store, bad = store_with_bad_record(tmp_path, good_store, make)
    before = snapshot(store)
    args = ["confirm", SWEEP, "--metric", "best_probe_loss", "--top", "1", "--n-seeds", "2", "--store", str(store)]
    result = CliRunner().invoke(main, [*args, "--wandb", "disabled"])
    assert result.exit_code == 0, result.output
    assert f"Warning: skipping {bad}: {reason}" in result.output
    assert snapshot(store) == before  # seeds 0 and 1 exist: nothing new was trained


def test_missing_baseline_is_said_on_the_terminal(tmp_path, good_store):
    args = ["leaderboard", "--store", str(good_store), "--baseline", "nope", "--metric", "best_probe_loss"]
    result = CliRunner().invoke(main, [*args, "--no-plots", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "Warning: baseline 'nope' has no records here" in result.output


def test_the_default_baseline_is_the_ddpm_point_of_the_given_sweep(tmp_path):
    """`sweep --with-baselines` runs ddpm as the point `ddpm@<sweep>`; `leaderboard --sweep <sweep>` compares with
    it without being told (no reference `ddpm` records in the store), and says nothing is missing."""
    store = Store(tmp_path / "store")
    for tags, override in (({"baseline_point": "ddpm"}, "lsc.mode=none"), ({"trial_number": 1}, "lsc.mode=constant")):
        run_trial(tiny_config(override), store.root, tags={"sweep": "q", **tags}, writer=store.write_unique)
    args = ["leaderboard", "--store", str(store.root), "--sweep", "q", "--metric", "best_probe_loss", "--no-plots"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "lb")])
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output
    assert "ddpm@q" in (tmp_path / "lb" / "leaderboard.md").read_text()


# --- changed studies -----------------------------------------------------------------------------------------------
def test_a_changed_space_stops_before_any_trial(tmp_path):
    journal = str(tmp_path / "study.journal")
    args = ["--store", str(tmp_path / "s"), "--study-storage", journal, "--wandb", "disabled"]
    first = CliRunner().invoke(main, ["sweep", space(tmp_path, trials=1), *args])
    assert first.exit_code == 0, first.output
    records = snapshot(tmp_path / "s")
    wider = {**DEFAULT_SPACE, "optim.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}}
    changed = CliRunner().invoke(main, ["sweep", space(tmp_path, trials=2, space=wider), *args])
    assert changed.exit_code == 2, changed.output
    assert "--study: study 't'" in changed.output
    assert "space.optim.lr.low" in changed.output
    assert "--study NEW_NAME" in changed.output
    assert snapshot(tmp_path / "s") == records

    import optuna

    study = optuna.load_study(study_name="t", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(journal)))  # fmt: skip
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # no FAIL trial added by the refused re-run

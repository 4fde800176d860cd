"""The results store: one directory per trial under a root, each holding an atomically written record.json.

Append-only and crash-safe by construction: a record is written to a temp file, fsynced and renamed, so
readers see a whole record or none; writers never touch another trial's directory, so any number of
processes (or Ray workers on a shared filesystem) can add records at once. Readers skip temp files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl

from ..config import flatten
from ..errors import UserError
from ..files import read_untrusted_json
from .record import FINISHED, Status, metrics_of, record_problem, run_id_glob, tags_of, write_record

# A record is kilobytes (a long run's curves, under a megabyte): a larger record.json is not one of ours.
RECORD_BYTES = 64 * 1024 * 1024


def default_store() -> Path:
    """The store when none is given: $STABENCH_STORE, else runs/. Read when called, so a test or a driver that sets
    the variable after import is obeyed."""
    return Path(os.environ.get("STABENCH_STORE", "runs"))


def lock_timeout_s() -> float:
    """How long the store's locks wait: $STABENCH_LOCK_TIMEOUT seconds, else 300 (read when called)."""
    return float(os.environ.get("STABENCH_LOCK_TIMEOUT", "300"))


def acquire_flock(f, path: Path, timeout_s: float) -> None:
    """flock(LOCK_EX) on an open file, polling until `timeout_s`; a UserError when it cannot be had."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise UserError(
                    f"could not lock {path} within {timeout_s:g} s: another process holds it (a stuck worker?); "
                    "stop it, or raise $STABENCH_LOCK_TIMEOUT",
                    key="store",
                ) from None
            time.sleep(0.05)
        except OSError as e:  # ENOLCK, EOPNOTSUPP: the filesystem does not do flock
            raise UserError(
                f"the filesystem holding {path} does not support file locks ({e}); the store needs them to count "
                "each (config, seed) once",
                key="store",
                allowed="a local disk, or a shared filesystem with flock support (NFS v4, Lustre with flock)",
            ) from None


class Store:
    """The append-only results store: `<root>/<run_id>/record.json` per trial, read back as records or tables."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(default_store() if root is None else root).absolute()
        self._warned: set[Path] = set()
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"'{root}' exists and is not a directory; pass a directory for the store", key="store")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def must_exist(self) -> Store:
        """This store, checked to exist, for a command that only reads it: a missing folder is a user error that
        says so (not an empty store)."""
        if not self.root.is_dir():
            raise UserError(
                f"store '{self.root}' does not exist; give the folder a sweep, `stabench baselines` or "
                "`stabench train --out` wrote its records into (default: runs/, or $STABENCH_STORE)",
                key="store",
            )
        return self

    def record_paths(self) -> list[Path]:
        """Every complete record file, sorted by run id."""
        return sorted(self.root.glob("*/record.json"))

    def records(self, **tags) -> Iterator[dict]:
        """Every readable record, optionally only those whose tags match (e.g. sweep='quickstart'); a file that
        is not a readable record is skipped with one warning naming it (`RecordSkipped`)."""
        return self._read_matching(self.record_paths(), tags)

    @contextlib.contextmanager
    def lock(self, name: str = "write", timeout_s: float | None = None):
        """An exclusive lock on `<root>/.<name>.lock` (flock: local processes, and NFS v4 clients). Held only for
        a record write or a trial hand-out, so a wait past `timeout_s` means a stuck holder: a UserError says so,
        as does a filesystem that does not support flock (where the dedup would silently stop working)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".{name}.lock"
        with open(path, "w") as f:
            acquire_flock(f, path, lock_timeout_s() if timeout_s is None else timeout_s)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def write_unique(self, record: dict, run_dir: Path) -> None:
        """Write a finished record, unless its sweep already has one of this (config, seed): then it is written
        with status `duplicate` (kept, never counted). That happens when a killed driver's orphaned Ray actor
        and the restored trial both finish the same seed. Every writer into a sweep passes this to the trial."""
        with self.lock():
            if record["status"] in FINISHED:
                first = self.find(record["config_hash"], record["seed"], sweep=record["tags"].get("sweep"))
                if first is not None and first["run_id"] != record["run_id"]:
                    record.update(status=Status.DUPLICATE, duplicate_of=first["run_id"])
            write_record(record, run_dir)

    def find(self, config_hash: str, seed: int, statuses: frozenset[str] = FINISHED, **tags) -> dict | None:
        """A record of this config and seed with one of `statuses` and these tags, if one exists.
        Run ids carry the hash prefix and seed, so only matching directories are read."""
        paths = sorted(self.root.glob(f"{run_id_glob(config_hash, seed)}/record.json"))
        return next(
            (
                rec
                for rec in self._read_matching(paths, tags)
                if rec["config_hash"] == config_hash and rec["seed"] == seed and rec["status"] in statuses
            ),
            None,
        )

    def _read_matching(self, paths: list[Path], tags: dict) -> Iterator[dict]:
        """The readable records at `paths` whose tags match."""
        for path in paths:
            rec = self._read(path)
            if rec is not None and all(tags_of(rec).get(k) == v for k, v in tags.items()):
                yield rec

    def _read(self, path: Path) -> dict | None:
        """The record in `path`, or None (warned once per file) when it is not one: our atomic writer never leaves
        a partial file, so this is a foreign, damaged or newer file, which must not crash a reader or be changed."""
        try:
            rec = read_untrusted_json(path, RECORD_BYTES)
            problem = record_problem(rec)
        except (OSError, ValueError) as e:  # unreadable, a FIFO, too large, not UTF-8, not JSON, nested too deep
            problem = f"not a JSON record ({type(e).__name__}: {e})"
        if problem is None:
            return rec
        if path not in self._warned:
            self._warned.add(path)
            warnings.warn(f"skipping {path}: {problem}", RecordSkipped, stacklevel=4)
        return None


class RecordSkipped(UserWarning):
    """A record.json in the store that could not be read as a record (named in the warning, left untouched)."""


# ---------------------------------------------------------------------------------------------
# Tables: scalars (one row per record) and curves (one row per record and step), read with polars
# ---------------------------------------------------------------------------------------------


def scalar_row(rec: dict) -> dict[str, Any]:
    """One table row of a record: ids, status, tags, scalar metrics and flattened config."""
    tags = tags_of(rec)
    row = {
        "run_id": rec["run_id"],
        "config_hash": rec["config_hash"],
        "seed": rec["seed"],
        "status": rec["status"],
        "sweep": tags.get("sweep"),
        "baseline": tags.get("baseline"),
        "backend": tags.get("backend"),
        "trial_number": None if tags.get("trial_number") is None else str(tags.get("trial_number")),
        "steps_completed": rec.get("steps_completed"),
        "wall_time_s": rec.get("wall_time_s"),
    }
    row.update({f"metrics.{k}": v for k, v in metrics_of(rec).items() if not isinstance(v, (dict, list))})
    row.update({f"config.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in flatten(rec["config"]).items()})
    return row


def curve_rows(rec: dict) -> dict[str, list]:
    """Table rows of a record's per-step curves."""
    curves = rec.get("curves") or {"step": []}
    n = len(curves["step"])
    return {
        "run_id": [rec["run_id"]] * n,
        "step": curves["step"],
        "loss": curves.get("loss", []),
        "grad_norm": curves.get("grad_norm", []),
    }


def scalars_table(records: list[dict]) -> pl.DataFrame:
    """One row per record: ids, status, tags, every scalar metric, every config key (flattened)."""
    rows = [scalar_row(r) for r in records]
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


def curves_table(records: list[dict]) -> pl.DataFrame:
    """Per-step loss and pre-clip grad norm of every record (downsampled curves), long format."""
    frames = [
        pl.DataFrame(
            curve_rows(r), schema={"run_id": pl.Utf8, "step": pl.Int64, "loss": pl.Float64, "grad_norm": pl.Float64}
        )
        for r in records
    ]
    return pl.concat(frames) if frames else pl.DataFrame()

"""The results store: one directory per trial under a root, each holding an atomically written record.json.

Append-only and crash-safe by construction: a record is written to a temp file, fsynced and renamed, so
readers see a whole record or none; writers never touch another trial's directory, so any number of
processes (or Ray workers on a shared filesystem) can add records at once. Readers skip temp files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError

DEFAULT_STORE = Path(os.environ.get("STABENCH_STORE", "runs"))


class Store:
    def __init__(self, root: str | Path = DEFAULT_STORE):
        self.root = Path(root).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"--store: '{root}' exists and is not a directory; pass a directory for the store")

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def record_paths(self) -> list[Path]:
        return sorted(self.root.glob("*/record.json"))

    def records(self, **tags) -> Iterator[dict]:
        """Every complete record, optionally only those whose tags match (e.g. sweep='quickstart')."""
        for path in self.record_paths():
            try:
                rec = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # unreadable: never produced by our atomic writer, so skip, don't crash
            if all(rec.get("tags", {}).get(k) == v for k, v in tags.items()):
                yield rec

    def find(self, config_hash: str, seed: int, **tags) -> dict | None:
        """A finished record (not `failed`) of this config and seed with these tags, if one exists."""
        for rec in self.records(**tags):
            if rec["config_hash"] == config_hash and rec["seed"] == seed and rec["status"] != "failed":
                return rec
        return None

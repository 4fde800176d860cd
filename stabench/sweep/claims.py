"""Seed claims: which process trains a (sweep, config, seed) now, decided by files that hold on shared filesystems.

flock is no cluster lock: on NFS mounted `nolock` or `local_lock=flock|all`, and on Lustre `localflock`, it succeeds
locally and excludes nobody. A claim is a file created with O_CREAT|O_EXCL, which is atomic on a local disk, NFSv3+
and Lustre: of two processes creating the same name, exactly one succeeds.

Claims of one seed are numbered generations, `<store>/.claims/<sweep>/<config_hash>-s<seed>.<gen>.claim`. The
highest generation is the current one. Its holder releases it by renaming it to `.done` when the seed ends
(recorded, failed, pruned or preempted). A newcomer creates generation top+1, and only when the top one is done
or its holder is gone (the backend says who is gone: this machine's /proc, the study's storage, `--take-over`);
two newcomers race for the same name and one wins. Files are never rewritten, so a reader sees a whole claim.
Their contents are read back from a shared store: untrusted, checked before use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .workers import owner_problem

CLAIMS_DIR = ".claims"
CLAIM_NAME = re.compile(r"(?P<key>.+)\.(?P<gen>\d{1,9})\.(?P<kind>claim|done)")


@dataclass(frozen=True)
class Claim:
    """One generation of a seed's claim: its file, whether released, and its holder (None: unreadable)."""

    path: Path
    gen: int
    done: bool
    holder: dict | None


def claim_key(config_hash: str, seed: int) -> str:
    return f"{config_hash}-s{seed}"


class SeedClaims:
    """The claims of one sweep in a store."""

    def __init__(self, store_root: Path, sweep: str):
        self.dir = Path(store_root) / CLAIMS_DIR / sweep

    def top(self, key: str) -> Claim | None:
        """The current (highest) generation of `key`'s claim, or None if nobody ever claimed it."""
        best: tuple[int, bool, Path] | None = None
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.dir):
                m = CLAIM_NAME.fullmatch(entry.name)
                if m is None or m["key"] != key:
                    continue
                gen, done = int(m["gen"]), m["kind"] == "done"
                if best is None or (gen, done) > best[:2]:  # a released generation outranks its own claim file
                    best = (gen, done, Path(entry.path))
        if best is None:
            return None
        gen, done, path = best
        return Claim(path, gen, done, read_holder(path))

    def take(self, key: str, after: Claim | None, holder: dict) -> Claim | None:
        """Create the generation after `after` (0 without one), holding `holder`; None when another process
        created it first (look again with `top`)."""
        gen = 0 if after is None else after.gen + 1
        path = self.dir / f"{key}.{gen}.claim"
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # less the umask, as every store file
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as f:  # written whole before anyone can judge its holder dead (mtime, not pid)
            f.write(json.dumps(holder))
            f.flush()
            os.fsync(f.fileno())
        return Claim(path, gen, False, holder)

    def holds(self, claim: Claim) -> bool:
        """Is `claim` still the current generation of its key (nobody took the seed over)?"""
        m = CLAIM_NAME.fullmatch(claim.path.name)
        top = self.top(m["key"]) if m else None
        return top is not None and top.gen == claim.gen

    @staticmethod
    def name_run(claim: Claim, run_dir: Path) -> None:
        """Say which run folder the holder of `claim` trains (`<key>.<gen>.run`), for whoever takes it over."""
        from ..files import atomic_write_text

        atomic_write_text(claim.path.with_name(claim.path.name.removesuffix(".claim") + ".run"), str(run_dir))

    @staticmethod
    def run_of(claim: Claim) -> Path | None:
        """The run folder the holder of `claim` named, if it did (untrusted: the caller checks it)."""
        base = claim.path.name.removesuffix(".claim").removesuffix(".done")
        try:
            text = claim.path.with_name(base + ".run").read_text().strip()
        except (OSError, ValueError):
            return None
        return Path(text) if text and "\n" not in text else None

    @staticmethod
    def release(claim: Claim) -> None:
        """The seed ended (record written, or checkpointed for a retry): the next claimer may take it."""
        with contextlib.suppress(FileNotFoundError):
            os.rename(claim.path, claim.path.with_name(claim.path.name.removesuffix(".claim") + ".done"))


def read_holder(path: Path) -> dict | None:
    """A claim file's holder, checked like an owner file; None for a file that is not one (still being written,
    damaged or planted): such a claim is never taken for a live holder's, nor its run folder continued."""
    try:
        holder = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if owner_problem(holder) is not None:
        return None
    trial = holder.get("trial")
    if not (trial is None or isinstance(trial, int | str)) or isinstance(trial, bool):
        return None
    return holder

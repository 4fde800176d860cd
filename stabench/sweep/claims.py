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

from ..errors import UserError
from ..files import create_exclusive, read_untrusted, read_untrusted_json
from .workers import owner_problem

CLAIMS_DIR = ".claims"
CLAIM_NAME = re.compile(r"(?P<key>.+)\.(?P<gen>[0-9]{1,9})\.(?P<kind>claim|done)")
MAX_GEN = 10**9 - 1  # the highest generation CLAIM_NAME reads back
HOLDER_BYTES = 64 * 1024  # a holder is a few hundred bytes: a larger claim file is not one of ours


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
        if gen > MAX_GEN:  # only a planted generation gets here: refuse rather than create a claim nobody can see
            raise UserError(f"'{after.path if after else key}' claims generation {gen - 1} of this seed; remove the "
                            f"files {key}.* in {self.dir} to claim it again", key="store")  # fmt: skip
        path = self.dir / f"{key}.{gen}.claim"
        self.dir.mkdir(parents=True, exist_ok=True)
        # written whole before anyone can judge its holder dead (by mtime, not pid)
        return Claim(path, gen, False, holder) if create_exclusive(path, json.dumps(holder)) else None

    def holds(self, claim: Claim) -> bool:
        """Is `claim` still the current generation of its key (nobody took the seed over)? A claims folder that
        vanished (removed by hand) took nothing over: the holder keeps its seed and writes its record."""
        m = CLAIM_NAME.fullmatch(claim.path.name)
        top = self.top(m["key"]) if m else None
        return top is None or top.gen == claim.gen

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
            text = read_untrusted(claim.path.with_name(base + ".run"), HOLDER_BYTES).decode().strip()
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
        holder = read_untrusted_json(path, HOLDER_BYTES)
    except (OSError, ValueError):  # missing, a FIFO or device, too large, not UTF-8, not JSON, nested too deep
        return None
    if owner_problem(holder) is not None:
        return None
    trial = holder.get("trial")
    if not (trial is None or isinstance(trial, int | str)) or isinstance(trial, bool):
        return None
    return holder

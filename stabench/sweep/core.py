"""The one per-config seed loop that every sweep backend drives.

One sampled config = one backend trial = one engine `Trial` per seed of the space, each writing its record to
the store tagged with the sweep, backend and trial number. A (config, seed) the sweep has already recorded is
reused, never trained twice. The objective of a config is the mean over its seeds; a diverged seed counts as
the worst possible value (infinity), never dropped.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..config import TrialConfig, build_config, config_hash, config_to_dict
from ..engine import CHECKPOINT, Trial
from ..engine.trial import PREEMPTION, Preempted, request_preemption
from ..errors import ConfigError, UserError
from ..files import atomic_write_text, create_exclusive, read_untrusted, read_untrusted_json
from ..records.record import Status, Tags, record_value, run_id_glob
from ..records.store import Store
from ..records.tracking import TrackingSettings
from .claims import Claim, SeedClaims, claim_key
from .space import CategoricalDist, SearchSpace, scalar_choices, trial_config
from .workers import (
    OWNER_BYTES,
    PREEMPTED_EXIT,
    process_is_gone,
    read_owner,
    same_machine,
    sigterm_requests,
    this_worker,
    worker_is_gone,
)

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SweepSettings:
    """What every backend is told: the study, its size, resumption, failures, named points and tracking."""

    study: str
    n_trials: int
    resume: bool = False
    max_failures: int = 3
    named_points: dict[str, dict] = field(default_factory=dict)  # name -> params, run first
    study_storage: str | None = None  # Optuna journal file or RDB URL (default: a journal file per study)
    tracking: TrackingSettings | None = None
    take_over: frozenset[str] = frozenset()  # hosts the user says are down: their RUNNING trials may be retried

    @classmethod
    def of(cls, space: SearchSpace, **fields: Any) -> SweepSettings:
        """The settings of a sweep over `space`: named after it, with its trial budget, unless `fields` say."""
        return cls(**{"study": space.name, "n_trials": space.budget.trials, **fields})

    def __post_init__(self) -> None:
        # The study name becomes file names (journal, lock, Ray experiment): no separators, no leading dot.
        if not STUDY_NAME.fullmatch(self.study):
            raise UserError(f"'{self.study}' cannot be a study name (it names files); use letters, digits, '.', "
                            "'_' and '-', starting with a letter or digit", key="study")  # fmt: skip


class TrialFailed(Exception):
    """A seed of the trial ended with status `failed` (the error is in its record), or its config is invalid."""


class TrialPruned(Exception):
    """The backend stopped the trial early."""


@dataclass
class Event:
    """What a config run reports: a seed starting to train in `run_dir`, an evaluation entry of the running seed,
    or a seed's finished record."""

    seed_index: int
    entry: dict | None = None
    record: dict | None = None
    run_dir: str | None = None


CLAIM_POLL_S = 2.0  # how often a seed held by another live process is looked at again
UNREADABLE_CLAIM_S = 60.0  # a claim file unreadable this long is not being written: damaged, its holder unknown


@dataclass(frozen=True)
class Placement:
    """Where a backend's worker trains and what it records to: the store, the device (a worker's GPU, cpu on a
    GPU-less Ray slot; None: the config's own, not hashed), torch's thread count (None: torch's default) and
    tracking. Small and picklable: Ray and the local worker processes receive it whole."""

    store_root: str
    device: str | None = None
    threads: int | None = None
    tracking: TrackingSettings | None = None

    def enter(self) -> Store:
        """Give this process its thread count; the store the worker records to."""
        if self.threads:
            import torch

            torch.set_num_threads(max(1, self.threads))
        return Store(self.store_root)


@dataclass
class ConfigRun:
    """Runs one sampled config for every seed of the space, reusing records already in the store.

    `events(params)` trains seed after seed and yields an `Event` per evaluation entry and per finished seed
    (but the last); it returns the objective values. `stop()` ends it: the running seed is recorded as
    `pruned` and the next step of `events` raises `TrialPruned`. A failed seed raises `TrialFailed`.
    """

    space: SearchSpace
    tags: Tags
    placement: Placement
    resume: dict | None = None  # {"seed_index", "run_dir"}: the interrupted seed resumes from that checkpoint
    # Which holders of a seed's claim are gone, so that this run may take the seed over (default: this machine's
    # dead processes, and this very trial restarted by its backend). Another machine's holder is the backend's call.
    holder_gone: Callable[[dict], bool] | None = None
    owner: dict | None = None  # who holds this run's claims (default: this process)
    log: Callable[[str], None] = print
    records: list[dict] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)  # run ids found in the store instead of trained again
    current: Trial | None = None
    current_index: int | None = None
    stopped: bool = False

    def __post_init__(self):
        self.store = Store(self.placement.store_root)
        self.claims = SeedClaims(self.store.root, self.tags.sweep or "_")
        self.claim: Claim | None = None
        self.previous_claim: Claim | None = None  # the generation this run took over (its run folder may continue)

    def events(self, params: dict[str, Any]) -> Generator[Event, None, list[float]]:
        """Train every seed of `params`; yields events, returns the objective values."""
        for i, seed in enumerate(self.space.seeds):
            if self.stopped:
                raise TrialPruned(f"pruned before seed {seed}")
            record = yield from self._seed(i, seed, params)
            self.records.append(record)
            if record["status"] == Status.FAILED:
                raise TrialFailed(f"seed {seed}: {record['error']['type']}: {record['error']['message']}")
            if record["status"] == Status.PRUNED:
                raise TrialPruned(f"pruned at step {record['pruned_at']}")
            if i + 1 < len(self.space.seeds):
                yield Event(i, record=record)
        return self.values()

    def _seed(self, index: int, seed: int, params: dict[str, Any]) -> Generator[Event, None, dict]:
        """Train one seed (or find it in the store, or wait for the process that trains it); returns its record."""
        try:
            cfg = trial_config(self.space, params, seed).on_device(self.placement.device)
        except ConfigError as e:  # values valid one by one but not together: this trial fails, the sweep goes on
            raise TrialFailed(str(e)) from None
        found = self._claim_or_find(cfg, index)
        if found is not None:  # a resumed sweep, a config sampled twice, or trained meanwhile by another process
            self.reused.append(found["run_id"])
            return found
        tags = replace(self.tags, seed_index=index, params=params)
        self.current_index = index
        try:
            self.current = Trial(
                cfg,
                self.store.root,
                tags=tags.to_dict(),
                tracking=self.placement.tracking,
                writer=self._write,
                resume_dir=self._resume_dir(index, cfg)
                or self._claimed_run(cfg)
                or abandoned_run(self.store, cfg, self.tags.sweep),
            )
            claim(self.current.run_dir)
            if self.claim is not None:
                self.claims.name_run(self.claim, self.current.run_dir)
            yield Event(index, run_dir=str(self.current.run_dir))
            for entry in self.current.run():
                yield Event(index, entry=entry)
        finally:  # recorded, failed, pruned or preempted: the seed is free for whoever comes next
            if self.claim is not None:
                self.claims.release(self.claim)
                self.claim = None
        record, self.current = self.current.record, None
        return record

    def _claim_or_find(self, cfg: TrialConfig, index: int) -> dict | None:
        """Claim (config, seed) for this run, or return its finished record; while another live process trains
        it, wait for its record (a seed is never trained twice at once, on any filesystem)."""
        key, waited = claim_key(config_hash(cfg), cfg.seed), False
        while True:
            found = self.store.find(config_hash(cfg), cfg.seed, sweep=self.tags.sweep)
            if found is not None:
                return found
            top = self.claims.top(key)
            if top is None or top.done or self._holder_gone(top):
                self.previous_claim = top
                self.claim = self.claims.take(key, top, self._holder(index))
                if self.claim is None:  # another process took this generation first: look again, after a pause
                    time.sleep(random.uniform(0.5, 1.5) * CLAIM_POLL_S)  # (an NFS listing may lag behind the winner)
                    continue
                found = self.store.find(config_hash(cfg), cfg.seed, sweep=self.tags.sweep)  # recorded just now?
                if found is not None:
                    self.claims.release(self.claim)
                    self.claim = None
                return found
            if not waited:
                h = top.holder or {}
                self.log(f"[{self.tags.sweep}] seed {cfg.seed} of this config is being trained by {h.get('host')} "
                         f"pid {h.get('pid')} (trial {h.get('trial')}); waiting for its record")  # fmt: skip
                waited = True
            time.sleep(CLAIM_POLL_S)

    def _holder(self, index: int) -> dict:
        return {**(self.owner or this_worker()), "trial": self.tags.trial_number, "seed_index": index}

    def _holder_gone(self, top: Claim) -> bool:
        """May this run take over the seed `top` holds? (Its holder released it, died, or the backend says so.)"""
        holder = top.holder
        if holder is None:  # being written right now, or damaged: only an old one is abandoned
            return time.time() - _mtime(top.path) > UNREADABLE_CLAIM_S
        if process_is_gone(holder):
            return True
        if holder.get("trial") is not None and holder.get("trial") == self.tags.trial_number:
            return True  # this very trial, restarted by its backend (Ray restarts a trial under its id)
        return self.holder_gone is not None and self.holder_gone(holder)

    def _claimed_run(self, cfg: TrialConfig) -> Path | None:
        """The run folder the previous holder of this seed's claim left mid-seed (it is gone, or released it at a
        preemption): continued from its checkpoint on whatever machine took the claim over."""
        top = self.previous_claim
        run_dir = self.claims.run_of(top) if top is not None else None
        return resumable_run(self.store, cfg, run_dir) if run_dir is not None else None

    def _write(self, record: dict, run_dir: Path) -> None:
        """The store's unique write, unless this run lost its claim (its holder was judged gone and the seed was
        taken over meanwhile): then the taker's record is the one that counts and this one is not written."""
        if self.claim is not None and not self.claims.holds(self.claim):
            self.log(f"[{self.tags.sweep}] not recording {record['run_id']}: its seed was taken over by another "
                     "process (this one was judged gone)")  # fmt: skip
            return
        self.store.write_unique(record, run_dir)

    def _resume_dir(self, index: int, cfg: TrialConfig) -> Path | None:
        """The interrupted seed's run directory when `resume` points at this seed and its checkpoint is there."""
        if not self.resume or self.resume.get("seed_index") != index or not isinstance(self.resume.get("run_dir"), str):
            return None
        return resumable_run(self.store, cfg, Path(self.resume["run_dir"]))

    def checkpoint(self) -> dict | None:
        """Save the running seed's state (between two evaluation points) and say where it is, for `resume`."""
        run_dir = self.current.checkpoint() if self.current is not None else None
        return {"seed_index": self.current_index, "run_dir": str(run_dir)} if run_dir else None

    def stop(self) -> None:
        """Stop after the current evaluation point (the running seed is recorded as `pruned`)."""
        self.stopped = True
        if self.current is not None and not self.current.finished:
            self.current.stop()

    def values(self) -> list[float]:
        """The objective values of the seeds run so far."""
        return objective_values(self.space, self.records)


OWNER = "owner.json"  # who trains a run directory: a retry may take over only once that process is gone


class UntrustedOwner(UserWarning):
    """An owner.json that is not what `claim` writes (damaged or planted): its run directory is not taken over."""


def interrupted(run_dir: Path) -> bool:
    """A run directory that stopped mid-seed and can continue: a checkpoint, and no record yet."""
    return (run_dir / CHECKPOINT).is_file() and not (run_dir / "record.json").exists()


STORE_ID = ".store-id"
STORE_ID_TEXT = re.compile(r"[0-9a-f]{32}")


def store_id(root: Path) -> str:
    """The store's identity: a random id kept in `<store>/.store-id`, created once (O_EXCL: of two machines
    creating it at once, one wins and both read its id), so it is the same wherever the store is mounted."""
    import uuid

    path = Path(root) / STORE_ID
    path.parent.mkdir(parents=True, exist_ok=True)
    create_exclusive(path, uuid.uuid4().hex)
    for _ in range(50):  # a file another process created a moment ago may still be empty
        try:
            text = read_untrusted(path, 64).decode().strip()
        except (OSError, ValueError):  # a FIFO, a device or a large file put there: never an id
            text = ""
        if STORE_ID_TEXT.fullmatch(text):
            return text
        time.sleep(0.1)
    raise UserError(f"'{path}' is not a store id (32 hex digits); remove it to give the store a new one",
                    key="store")  # fmt: skip


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def resumable_run(store: Store, cfg: TrialConfig | None, run_dir: Path) -> Path | None:
    """`run_dir` (named by a study attribute or a claim: untrusted) when it is a run folder of this store, of this
    config and seed (`cfg`; any when None), stopped mid-seed with a checkpoint; else None."""
    try:
        resolved = run_dir.resolve()
    except OSError:
        return None
    if resolved.parent != store.root.resolve() or not interrupted(resolved):
        return None
    if cfg is not None and not fnmatch(resolved.name, run_id_glob(config_hash(cfg), cfg.seed)):
        return None
    return resolved


def claim(run_dir: Path) -> None:
    """Mark `run_dir` as trained by this process (host, boot, pid and its start time)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / OWNER, json.dumps(this_worker()))


PREEMPTED_MARK = "preempted"  # {"owner": its owner.json, "sweep"}: the folder's process let go of it at a SIGTERM


def abandoned_run(store: Store, cfg: TrialConfig, sweep: str | None = None) -> Path | None:
    """A run directory of this config and seed left mid-seed (a checkpoint and no record) by a process on this
    machine that is dead, or by any process that let go of it at a preemption (`PREEMPTED_MARK`, taken here by
    one caller only, and only by the same sweep): a retried trial continues it from its last checkpoint step
    instead of step 0. A directory whose owner may still run (another machine, or alive) is never taken over."""
    for run_dir in sorted(store.root.glob(run_id_glob(config_hash(cfg), cfg.seed))):
        if not interrupted(run_dir):
            continue
        if take_preempted(run_dir, sweep):
            return run_dir  # else the mark adds nothing: the folder is judged by its owner, as without one
        owner, problem = read_owner(run_dir / OWNER)
        if owner is None:  # no owner file (a `stabench train` run): not ours to take; a damaged one is named
            if (run_dir / OWNER).exists():
                warnings.warn(f"not taking over {run_dir}: {problem}", UntrustedOwner, stacklevel=2)
            continue
        if worker_is_gone(owner, heartbeats=False) and same_machine(owner):
            return run_dir
    return None


def mark_preempted_run(run_dir: Path, sweep: str | None, log: Callable[[str], None] = print) -> None:
    """Let go of `run_dir` at a preemption: any machine's retry of the same sweep may continue it. The mark names
    the owner that let go, so that a mark left over from an earlier holder is not taken as this one's."""
    owner, _ = read_owner(run_dir / OWNER)
    try:
        atomic_write_text(run_dir / PREEMPTED_MARK, json.dumps({"owner": owner, "sweep": sweep}))
    except OSError as e:  # a full or read-only store: the checkpoint may still be continued on this machine
        log(f"could not mark {run_dir} as preempted ({e}); only this machine will continue it")


def take_preempted(run_dir: Path, sweep: str | None) -> bool:
    """Take a preempted run folder for this process. The mark is read back from a shared store (untrusted): it must
    name the folder's current owner and this sweep. Removing it is the taking: of two retriers, one removes it."""
    mark = run_dir / PREEMPTED_MARK
    try:
        said = read_untrusted_json(mark, OWNER_BYTES)
    except (OSError, ValueError):  # gone (taken), a FIFO, too large, not JSON
        return False
    owner, _ = read_owner(run_dir / OWNER)
    if not isinstance(said, dict) or owner is None or said.get("owner") != owner or said.get("sweep") != sweep:
        return False
    try:
        mark.unlink()
    except FileNotFoundError:  # another retrier took it first
        return False
    return True


def run_job(cfg: TrialConfig, store: Store, **trial_kwargs: Any) -> dict:
    """One fixed config and seed (a baseline, a validation trial) to its end; returns its record. It continues the
    run folder a dead or preempted run of the same config and seed left (`abandoned_run`), else starts at step 0.
    At a SIGTERM (`request_preemption`) it checkpoints, marks its folder for whoever retries it (on any machine)
    and raises `Preempted`. `trial_kwargs` are those of `Trial` (tags, tracking, writer, progress)."""
    if PREEMPTION.is_set():  # SIGTERM between two jobs: start nothing new
        raise Preempted(None, 0)
    sweep = (trial_kwargs.get("tags") or {}).get("sweep")
    trial = Trial(cfg, store.root, resume_dir=abandoned_run(store, cfg, sweep), **trial_kwargs)
    claim(trial.run_dir)
    try:
        for _ in trial.run():
            pass
    except Preempted as e:
        if e.run_dir is not None:
            mark_preempted_run(e.run_dir, sweep)
        raise
    return trial.record


@contextlib.contextmanager
def preemptible_jobs(log: Callable[[str], None] = print):
    """While inside, SIGTERM (a preempting scheduler) makes the running `run_job` checkpoint after its current step;
    the command then ends with PREEMPTED_EXIT, and running it again continues that job from its checkpoint."""
    PREEMPTION.clear()  # an earlier preemption in this process (tests) is over
    try:
        with sigterm_requests(request_preemption):
            yield
    except Preempted as e:
        where = f"at step {e.step}; checkpoint in {e.run_dir}" if e.run_dir else "before the next job"
        log(f"preempted (SIGTERM) {where}; run the same command again to continue")
        raise SystemExit(PREEMPTED_EXIT) from None


def run_config(run: ConfigRun, params: dict[str, Any]) -> list[float]:
    """Drive `run` to its end without intermediate decisions; returns the objective values."""
    events = run.events(params)
    while True:
        try:
            next(events)
        except StopIteration as done:
            return done.value


def objective_values(space: SearchSpace, records: list[dict]) -> list[float]:
    """A config's value of each objective: the mean over its seeds' records (diverged = the worst value)."""
    return [sum(record_value(r, o.metric, o.direction) for r in records) / len(records) for o in space.objectives]


def named_point_params(space: SearchSpace, config: dict) -> dict[str, Any] | None:
    """A config's values for the space's keys (only keys active under its own values): a point of the space. None
    when the config is not a point of this space (a value outside a key's choices or range): enqueuing part of
    it would let the sampler fill in the rest and run some other config under the baseline's name."""
    params: dict[str, Any] = {}
    for key, d in space.space.items():
        value: Any = config
        for part in key.split("."):
            value = value[part]
        if d.when and not all(params.get(p) in v for p, v in d.when.items()):
            continue
        if not _in_range(d, value):
            return None
        params[key] = json.dumps(value) if isinstance(d, CategoricalDist) and not scalar_choices(d) else value
    return params


def _in_range(d: Any, value: Any) -> bool:
    """Can distribution `d` propose `value`?"""
    if isinstance(d, CategoricalDist):
        return value in d.choices
    return isinstance(value, int | float) and not isinstance(value, bool) and d.low <= value <= d.high


def named_points(space: SearchSpace, references: dict[str, TrialConfig]) -> dict[str, dict]:
    """The reference configs (name -> config, `baselines.reference_configs()`) as named points of this space: those
    on the same workload, `ddpm` first; a config that lands on the same point as an earlier one is skipped."""
    points: dict[str, dict] = {}
    workload = config_to_dict(build_config(space.base))["workload"]
    for name in sorted(references, key=lambda n: (n != "ddpm", n)):
        cfg = config_to_dict(references[name])
        if cfg["workload"] == workload:
            params = named_point_params(space, cfg)
            if params and params not in points.values():
                points[name] = params
    return points

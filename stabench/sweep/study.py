"""A sweep's Optuna study: its storage (journal file or RDB with heartbeats), sampler and pruner, and the
bookkeeping on its trials (counts, failing a dead worker's trials, the summary) that both backends share.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import UserError, missing_extra
from ..paths import existing_ancestor
from ..secrets import redact_url, register, scrub
from .space import SearchSpace, grid_values, pruner_class, sampler_class
from .workers import same_machine, this_worker

LEGACY_STORAGE_DIR = Path("results") / "optuna"  # the default before journals moved under the store


def default_journal(store_root: Path, study_name: str) -> Path:
    """A study's journal when no storage is given: under the store (`<store>/optuna/<study>.journal`), so that the
    study lives wherever the records do, on a cluster a shared filesystem, never in the working directory."""
    return Path(store_root) / "optuna" / f"{study_name}.journal"


def legacy_journal_note(store_root: Path, study_name: str) -> str | None:
    """A hint when this study's journal exists only at the old default (./results/optuna): pass it to continue."""
    old = LEGACY_STORAGE_DIR / f"{study_name}.journal"
    if old.is_file() and not default_journal(store_root, study_name).exists():
        return f"a journal from an older stabench is at {old}; pass --study-storage {old} to continue that study"
    return None


def make_sampler(space: SearchSpace, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler. `seed_offset` differs per worker and per restart so that a seeded sampler in a
    second process does not propose the same sequence of configs again."""
    s = space.sampler
    opts = dict(s.options)
    seed = None if s.seed is None else s.seed + seed_offset
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    if s.name == "tpe":
        opts = {**tpe_defaults(space), **opts}  # the space's own options win
    with warnings.catch_warnings():  # multivariate, group and constant_liar are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return sampler_class(s.name)(seed=seed, **opts)


def tpe_defaults(space: SearchSpace) -> dict[str, Any]:
    """TPE as a parallel, conditional sweep needs it: constant_liar so that workers running at once do not propose
    near-duplicates (no effect when trials run one at a time); multivariate with group where a key is conditional
    (`when:`), so kappa is modelled jointly with the mode it belongs to."""
    conditional = any(d.when for d in space.space.values())
    return {"constant_liar": True, **({"multivariate": True, "group": True} if conditional else {})}


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    """The space's Optuna pruner with its options."""
    return pruner_class(space.pruner.name)(**space.pruner.options)


HEARTBEAT_INTERVAL_S = int(os.environ.get("STABENCH_HEARTBEAT_S", "60"))
HEARTBEAT_GRACE_S = int(os.environ.get("STABENCH_HEARTBEAT_GRACE_S", "180"))
STORAGES = "a journal file path, or an RDB URL such as postgresql://user:pw@host/db"
MAX_RETRY = 2  # a trial whose worker died is retried this many times (RDB storages, via heartbeats)


def check_journal_path(path: Path) -> None:
    """A journal path must be a new file in a directory we can create, or an existing Optuna journal: opening any
    other file would append Optuna's log to it (or fail inside Optuna at the first trial)."""
    key, hint = "study_storage", "give a journal file path or a database URL"
    anchor = existing_ancestor(path)
    if anchor.is_dir() and anchor == path:
        raise UserError(f"'{path}' is a directory; {hint}", key=key)
    if not anchor.is_dir() and anchor != path:
        raise UserError(f"'{path}' lies under the regular file '{anchor}'; {hint}", key=key)
    if anchor == path and path.stat().st_size > 0:
        with open(path, "rb") as f:
            first = f.readline()
        try:
            entry = json.loads(first)
        except ValueError:
            entry = None
        is_journal = isinstance(entry, dict) and "op_code" in entry
        if not is_journal:
            raise UserError(f"'{path}' exists and is not an Optuna journal (its first line is not a journal "
                            f"entry); {hint}, or remove the file", key=key)  # fmt: skip


def make_storage(url: str, study_name: str, heartbeats: bool = True) -> tuple[optuna.storages.BaseStorage, str]:
    """A journal file path (safe for several local processes; its folder is created), or any RDB URL, with
    heartbeats: a trial whose worker stops beating for HEARTBEAT_GRACE_S is marked FAIL and retried (up to
    MAX_RETRY). Ray's OptunaSearch asks and tells from the driver only, so it opens RDB storages without heartbeats.
    The URL's password is a secret of this process from here on: no message shows it (`secrets`)."""
    if "://" not in url:  # a plain path: an Optuna journal file
        path = Path(url)
        check_journal_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path))), str(path)
    register(url)
    if url.split("://")[0] in ("postgresql", "postgresql+psycopg2", "postgres"):  # psycopg2: the [postgres] extra
        try:
            import psycopg2  # noqa: F401
        except ImportError as e:
            raise missing_extra(e, "postgres", "a PostgreSQL study storage", key="study_storage") from None
    try:
        return open_rdb(url, heartbeats), url
    except Exception as e:  # bad dialect, unreachable server, ...; the driver's text may quote the URL whole
        shown = f"cannot open '{redact_url(url)}': {type(e).__name__}: {scrub(str(e), url)}"
        raise UserError(shown, key="study_storage", allowed=STORAGES) from None


SCHEMA_RACE_TRIES = 5  # workers that open a new database at once race to create Optuna's tables


def open_rdb(url: str, heartbeats: bool) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at `url` (see `make_storage`). On an empty database every worker of an array job
    creates Optuna's tables at the same moment and all but one fail (a duplicate table or type): the losers find
    the tables made and open them on a second try."""
    import sqlalchemy.exc

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what we need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        beats = dict(
            heartbeat_interval=HEARTBEAT_INTERVAL_S,
            grace_period=HEARTBEAT_GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY),
        )
        for attempt in range(SCHEMA_RACE_TRIES):
            try:
                return optuna.storages.RDBStorage(
                    url,
                    **(beats if heartbeats else {}),
                    engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                if attempt == SCHEMA_RACE_TRIES - 1:
                    raise
                time.sleep(random.uniform(0.2, 1.0))
    raise AssertionError("unreachable")


def open_study(space: SearchSpace, study_name: str, storage_url: str | None) -> optuna.Study:
    """Create the sweep's study, or load it to continue."""
    storage, _ = make_storage(storage_url, study_name)
    kw = {"directions": space.directions} if len(space.objectives) > 1 else {"direction": space.directions[0]}
    return optuna.create_study(
        study_name=study_name,
        storage=storage,
        sampler=make_sampler(space),
        pruner=make_pruner(space),
        load_if_exists=True,
        **kw,
    )


def space_fingerprint(space: SearchSpace) -> dict[str, Any]:
    """What a study's trials depend on, as flat JSON-able `section.key -> value` (the study remembers it)."""
    from ..config import flatten

    parts = {
        "space": {k: d.model_dump(mode="json", exclude_none=True) for k, d in space.space.items()},
        "objectives": {o.metric: o.direction for o in space.objectives},
        "seeds": space.seeds,
        "config": space.base,  # the base with the fixed values applied
    }
    return json.loads(json.dumps(flatten(parts), sort_keys=True, default=str))


def study_fingerprint(space: SearchSpace, store_root: Path | None) -> dict[str, Any]:
    """The space's fingerprint and the store the study's records go to (`store.id`, the id in the store itself:
    the same on every machine that mounts it, wherever): a study's values are means of that store's records."""
    fp = space_fingerprint(space)
    if store_root is not None:
        from .core import store_id

        fp["store.id"] = store_id(Path(store_root))
    return fp


FINGERPRINT_ATTR = "fingerprint"  # user attr: a short hash, so that `optuna studies` stays one readable line
FINGERPRINT_FULL = "stabench:fingerprint"  # study system attr: the whole fingerprint, to say what changed


def fingerprint_hash(fp: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]


def remembered_fingerprint(study: optuna.Study) -> dict[str, Any] | None:
    """The fingerprint a study was created with: the full one (system attr), or an older stabench's user attr."""
    full = study._storage.get_study_system_attrs(study._study_id).get(FINGERPRINT_FULL)
    if isinstance(full, dict):
        return full
    old = study.user_attrs.get("space_fingerprint")
    return old if isinstance(old, dict) else None


def remember_fingerprint(study: optuna.Study, fp: dict[str, Any]) -> None:
    study._storage.set_study_system_attr(study._study_id, FINGERPRINT_FULL, fp)
    study.set_user_attr(FINGERPRINT_ATTR, fingerprint_hash(fp))


def describe_study(study: optuna.Study, space: SearchSpace, backend: str) -> None:
    """What optuna-dashboard shows about a study: objective names instead of "Objective 0", and where the
    study comes from (space file, seeds, backend, code version). Set once, when the study is new."""
    from .. import __version__
    from ..records.record import git_sha

    if study.metric_names is None:
        with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.metric for o in space.objectives])
    if "space_file" not in study.user_attrs:
        attrs = {"space_file": space.source, "seeds": space.seeds, "backend": backend, "git_sha": git_sha(),
                 "stabench_version": __version__}  # fmt: skip
        for key, value in attrs.items():
            study.set_user_attr(key, value)


def check_same_space(
    study: optuna.Study, space: SearchSpace, storage_url: str | None, store_root: Path | None = None
) -> None:
    """Stop before any trial when an existing study was run with another space or, given `store_root`, into
    another store: its trials would mix two searches (or FAIL on a changed distribution), or average records the
    store does not hold. A study without a remembered fingerprint takes this one; one of an older stabench (the
    space only) gains the store. Both backends call this (Ray: before its searcher asks)."""
    now, before = study_fingerprint(space, store_root), remembered_fingerprint(study)
    if before is None:
        remember_fingerprint(study, now)
        return
    compared = set(now) | set(before)
    if "store.id" not in before or "store.id" not in now:  # an older study, or a caller that knows no store
        compared.discard("store.id")
    changed = sorted(k for k in compared if now.get(k, "<absent>") != before.get(k, "<absent>"))
    if changed:
        shown = "; ".join(f"{k}: {before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        where = redact_url(storage_url) or "the default journal"
        what = "into another store" if changed == ["store.id"] else "with another space"
        raise UserError(
            f"study '{study.study_name}' in {where} was run {what}; "
            f"changed: {shown}{more}. Start a new study with --study NEW_NAME (or another --study-storage), "
            "or restore the old space file (and --store) to continue",
            key="study",
        )
    merged = {**before, **now}
    if merged != before or FINGERPRINT_ATTR not in study.user_attrs:
        remember_fingerprint(study, merged)  # an older study: now names its store, and has a short hash


def counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds in each state."""
    c = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        c[t.state.name.lower()] += 1
    return c


WORKER_ATTR = "worker"  # a trial's owner: host, boot id, pid, start, run (`workers.owner`)
SEED_RUN_ATTR = "seed_run"  # {"seed_index", "run_dir"}: the run folder of the seed the trial trains now


def fail_running(study: optuna.Study, dead: Callable[[dict | None], bool], requeue: bool = True) -> int:
    """Mark RUNNING trials whose worker (the `worker` user attr) is `dead` as FAIL and, with `requeue`, enqueue
    their params again (same config, same baseline name; the seeds it already finished are found in the store,
    so nothing is recorded twice; the seed it was training continues from its run folder's last checkpoint, on
    whichever machine runs the retry). The storage decides who fails a trial first: a trial finished meanwhile
    (by its worker, a heartbeat check or another driver) is skipped. Returns how many it failed."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not dead(t.user_attrs.get(WORKER_ATTR)):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile, or a heartbeat check or another driver failed it first
        if requeue:
            requeue_trial(study, t)
        n += 1
    return n


def requeue_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a failed trial's params again, naming it (`retry_of`) and the run folder its seed continues from."""
    keep = {k: v for k, v in trial.user_attrs.items() if k == "baseline_point"}
    seed_run = trial.user_attrs.get(SEED_RUN_ATTR)
    if isinstance(seed_run, dict):  # read back from the storage: ConfigRun checks the folder before continuing it
        keep["resume"] = seed_run
    study.enqueue_trial(trial.params, user_attrs={**keep, "retry_of": trial.number}, skip_if_exists=False)


def owned_by(run: str) -> Callable[[dict | None], bool]:
    """The `dead` test of `fail_running` that picks the trials whose worker names sweep run `run` (the token of
    one driver's run, `workers.owner(run)`): what a driver may fail once its own sweep has ended."""
    return lambda worker: isinstance(worker, dict) and worker.get("run") == run


def fail_orphaned(name: str, storage: optuna.storages.BaseStorage, run: str | None = None) -> int:
    """Mark failed the RUNNING trials of a finished sweep's study that this sweep run asked (its worker attr
    names `run`): trials a killed worker left running. Another run's or machine's trials are never touched; without
    `run`, only trials whose worker is this process are."""
    study = optuna.load_study(study_name=name, storage=storage)
    if run is not None:
        return fail_running(study, owned_by(run), requeue=False)
    me = this_worker()
    mine = lambda w: isinstance(w, dict) and same_machine(w) and w.get("pid") == me["pid"]  # noqa: E731
    return fail_running(study, mine, requeue=False)


def set_attr_unless_finished(
    study: optuna.Study, trial: optuna.Trial, key: str, value: Any, log: Callable[[str], None]
) -> bool:
    """`trial.set_user_attr`, unless another process finished the trial (a heartbeat check, `--take-over`, a
    retry's driver): then it is logged, never raised. Returns whether it was written."""
    return _unless_finished(study, trial, lambda: trial.set_user_attr(key, value), f"set '{key}'", log)


def report_unless_finished(
    study: optuna.Study, trial: optuna.Trial, value: float, step: int, log: Callable[[str], None]
) -> bool:
    """`trial.report`, unless another process finished the trial (logged, never raised)."""
    return _unless_finished(study, trial, lambda: trial.report(value, step), f"report step {step}", log)


def _unless_finished(
    study: optuna.Study, trial: optuna.Trial, write: Callable[[], object], what: str, log: Callable[[str], None]
) -> bool:
    if is_finished(study, trial):
        log(f"[{study.study_name}] trial {trial.number} was finished by another process; not told to {what}")
        return False
    try:
        write()
    except optuna.exceptions.UpdateFinishedTrialError:  # finished between the check and the write
        log(f"[{study.study_name}] trial {trial.number} was finished by another process; not told to {what}")
        return False
    return True


def is_finished(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Has the trial ended in the storage (told by anyone)?"""
    return study._storage.get_trial(trial._trial_id).state.is_finished()


def over_budget(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """After `ask`: is `trial` one too many for a study of `n_trials`? The storage numbers trials in the order they
    were asked, so of the RUNNING trials the earliest get the places left: two workers that counted at once (flock
    excludes nobody on NFS `nolock`) agree which of them runs, without any lock."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
    return trial.number not in running or running.index(trial.number) >= n_trials - done


def tell(study: optuna.Study, trial: optuna.Trial, *args: Any, **kwargs: Any) -> optuna.trial.FrozenTrial:
    """`study.tell` as inside `study.optimize`, where a sampler may stop the study: GridSampler does once every
    grid point was asked, and outside `optimize` that raises. Our loop stops by the budget, not by that flag."""
    study._thread_local.in_optimize_loop = True
    try:
        return study.tell(trial, *args, **kwargs)
    finally:
        study._thread_local.in_optimize_loop = False


def give_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """Undo an `ask` that `over_budget` refused: the trial ends FAIL marked `surplus` (not counted as a failure),
    and a queued trial (a retry, a named point) is queued again for a later run."""
    frozen = study._storage.get_trial(trial._trial_id)
    try:
        trial.set_user_attr("surplus", True)
        tell(study, trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    fixed = frozen.system_attrs.get("fixed_params")
    if fixed is not None:
        keep = {k: v for k, v in frozen.user_attrs.items() if k in ("baseline_point", "resume", "retry_of")}
        study.enqueue_trial(fixed, user_attrs=keep, skip_if_exists=False)


def running_elsewhere(study: optuna.Study, run: str) -> list[optuna.trial.FrozenTrial]:
    """RUNNING trials that this sweep run does not own (another machine's, a dead machine's, or untagged)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not owned_by(run)(t.user_attrs.get(WORKER_ATTR))]  # fmt: skip


def trial_failures(study: optuna.Study) -> int:
    """Trials that failed by themselves (an exception in training); not those of a dead worker or a stale
    heartbeat, which are retried."""
    return sum("error" in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def summarize_study(study: optuna.Study, space: SearchSpace) -> dict:
    """Trial counts and the best trial (or the Pareto front)."""
    c = counts(study)
    out: dict[str, Any] = {"study": study.study_name, "counts": c}
    if not c["complete"]:
        return out
    if len(space.objectives) == 1:
        b = study.best_trial
        out["best"] = {"trial": b.number, "value": b.value, "params": b.params}
    else:
        out["pareto_front"] = [{"trial": t.number, "values": t.values, "params": t.params} for t in study.best_trials]
    return out


def load_journal_study(name: str, store_root: Path) -> optuna.Study | None:
    """The study of sweep `name` in its default journal file under the store, if there is one (knob importance)."""
    path = default_journal(store_root, name)
    if not path.is_file():
        return None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))

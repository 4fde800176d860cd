"""A sweep's Optuna study: its storage (journal file or RDB with heartbeats), sampler and pruner, and the
bookkeeping on its trials (counts, failing a dead worker's trials, the summary) that both backends share.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ..errors import UserError
from ..paths import existing_ancestor
from ..secrets import redact_url, register, scrub
from .space import SearchSpace, grid_values, pruner_class, sampler_class

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
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            beats = dict(
                heartbeat_interval=HEARTBEAT_INTERVAL_S,
                grace_period=HEARTBEAT_GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRY),
            )
            storage = optuna.storages.RDBStorage(
                url,
                **(beats if heartbeats else {}),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
        return storage, url
    except Exception as e:  # bad dialect, unreachable server, ...; the driver's text may quote the URL whole
        shown = f"cannot open '{redact_url(url)}': {type(e).__name__}: {scrub(str(e), url)}"
        raise UserError(shown, key="study_storage", allowed=STORAGES) from None


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


def check_same_space(study: optuna.Study, space: SearchSpace, storage_url: str | None) -> None:
    """Stop before any trial when an existing study was run with another space: its trials would mix two
    searches (or FAIL on a changed distribution). A study without a remembered space takes this one."""
    now, before = space_fingerprint(space), study.user_attrs.get("space_fingerprint")
    if before is None:
        study.set_user_attr("space_fingerprint", now)
        return
    changed = sorted(k for k in set(now) | set(before) if now.get(k, "<absent>") != before.get(k, "<absent>"))
    if changed:
        shown = "; ".join(f"{k}: {before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}" for k in changed[:6])
        more = f" (and {len(changed) - 6} more)" if len(changed) > 6 else ""
        where = redact_url(storage_url) or "the default journal"
        raise UserError(
            f"study '{study.study_name}' in {where} was run with another space; "
            f"changed: {shown}{more}. Start a new study with --study NEW_NAME (or another --study-storage), "
            "or restore the old space file to continue",
            key="study",
        )


def counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds in each state."""
    c = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        c[t.state.name.lower()] += 1
    return c


def fail_running(study: optuna.Study, dead: Callable[[dict | None], bool], requeue: bool = True) -> int:
    """Mark RUNNING trials whose worker (the `worker` user attr) is `dead` as FAIL and, with `requeue`, enqueue
    their params again (same config, same baseline name; the seeds it already finished are found in the store,
    so nothing is recorded twice). Returns how many it failed."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not dead(t.user_attrs.get("worker")):
            continue
        try:
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished meanwhile, or a heartbeat check failed it first
        if requeue:
            keep = {k: v for k, v in t.user_attrs.items() if k == "baseline_point"}
            study.enqueue_trial(t.params, user_attrs={**keep, "retry_of": t.number}, skip_if_exists=False)
        n += 1
    return n


def fail_orphaned(name: str, storage: optuna.storages.BaseStorage) -> int:
    """Mark every RUNNING trial of a finished sweep's study failed (asked by a driver that was killed)."""
    return fail_running(optuna.load_study(study_name=name, storage=storage), dead=lambda w: True, requeue=False)


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

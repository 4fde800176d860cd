"""The Optuna backend: a study (journal file or RDB) asks for configs, `ConfigRun` trains them, the study is told.

With `study` (storage, sampler, pruner, trial bookkeeping), the only modules that touch Optuna's internals
(heartbeats, a trial's storage id): `study.optimize` hides what a supervised, resumable ask/tell loop needs.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled  # as study.optimize; we ask/tell
from optuna.trial import TrialState

from ..errors import StorageFault, UserError
from ..records.record import Tags, eval_value, record_value
from ..records.store import Store
from .core import ConfigRun, Event, Placement, SweepSettings, TrialFailed, TrialPruned
from .space import SearchSpace, suggest
from .study import (
    check_same_space,
    counts,
    default_journal,
    describe_study,
    fail_running,
    legacy_journal_note,
    make_sampler,
    open_study,
    summarize_study,
    trial_failures,
)
from .workers import STOP_EXIT, same_machine, supervise, this_worker, usable_cores, worker_is_gone


def sweep_lock(store: Store, name: str):
    """Serialises 'count trials, then create one' across local workers so the count is exact."""
    return store.lock(f"sweep-{name}")


def should_prune(trial: optuna.Trial, space: SearchSpace, event: Event) -> bool:
    """Report to the pruner and ask it: eval points of the first seed, or (Wilcoxon) one value per finished seed.
    Optuna cannot prune multi-objective studies."""
    if len(space.objectives) > 1 or space.pruner.name == "none":
        return False
    o = space.objectives[0]
    if space.pruner.name == "wilcoxon":
        if event.record is None:
            return False
        trial.report(record_value(event.record, o.metric, o.direction), event.seed_index)
        return trial.should_prune()
    if event.entry is None or event.seed_index > 0:
        return False
    value = eval_value(event.entry, o.metric)
    if value is None:
        return False
    trial.report(value, event.entry["step"])
    return trial.should_prune()


def run_with_pruner(run: ConfigRun, params: dict[str, Any], trial: optuna.Trial, space: SearchSpace) -> list[float]:
    """Every seed of `params`, stopped when the pruner says so; returns the objective values."""
    events = run.events(params)
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        if should_prune(trial, space, event):
            run.stop()


def run_one_optuna_trial(
    study: optuna.Study, trial: optuna.Trial, space: SearchSpace, placement: Placement
) -> tuple[TrialState, list[float] | None]:
    """Train one asked trial over every seed and tell the study how it ended."""
    tags = Tags(
        sweep=study.study_name,
        backend="optuna",
        trial_number=trial.number,
        scheduled_unix=time.time(),
        named_point=trial.user_attrs.get("baseline_point"),
    )
    run = ConfigRun(space, tags, placement)
    try:
        values = run_with_pruner(run, suggest(trial, space), trial, space)
        trial.set_user_attr("run_ids", [r["run_id"] for r in run.records])  # the records behind the values
        if run.reused:
            trial.set_user_attr("reused", run.reused)
    except TrialPruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return TrialState.PRUNED, None
    except TrialFailed as e:
        trial.set_user_attr("error", str(e)[:500])
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return TrialState.FAIL, None
    except BaseException:  # anything else (Ctrl-C included): never leave the trial RUNNING in the study
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    if space.pruner.name == "wilcoxon" and len(space.objectives) == 1:
        o = space.objectives[0]
        trial.report(record_value(run.records[-1], o.metric, o.direction), len(run.records) - 1)
    # skip_if_finished: a trial failed meanwhile by a heartbeat check was queued again; its retry reuses the records
    told = study.tell(trial, values if len(values) > 1 else values[0], skip_if_finished=True)
    return told.state, values


def progress_line(study: optuna.Study, n_trials: int, space: SearchSpace) -> str:
    """One line of progress: done, running, pruned, failed, best so far."""
    c = counts(study)
    done = c["complete"] + c["pruned"]
    line = (
        f"[{study.study_name}] done {done}/{n_trials} | running {c['running']} | pruned {c['pruned']} | "
        f"failed {c['fail']}"
    )
    if c["complete"] and len(space.objectives) == 1:
        best = study.best_trial
        line += f" | best {space.objectives[0].metric}={best.value:.4g} (trial {best.number})"
    elif c["complete"]:
        line += f" | Pareto front: {len(study.best_trials)} trials"
    return line


def optuna_worker(
    space: SearchSpace,
    sweep: str,
    storage_url: str | None,
    n_trials: int,
    max_failures: int,
    timeout_s: float | None,
    placement: Placement,
    threads: int | None = None,
    worker_index: int = 0,
    gpus: tuple[int, ...] = (),
    log: Callable[[str], None] = print,
) -> None:
    """Ask/run/tell until the study holds `n_trials` finished trials, too many failures or the timeout. With
    `gpus`, worker k trains on GPU gpus[k % len(gpus)] (round-robin); `threads` is its share of the cores."""
    device = f"cuda:{gpus[worker_index % len(gpus)]}" if gpus else None
    placement = replace(placement, device=device, threads=threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, study = placement.enter(), open_study(space, sweep, storage_url)
    study.sampler = make_sampler(space, seed_offset=1000 * len(study.trials) + worker_index)
    limits = WorkerLimits(n_trials, max_failures, timeout_s, trial_failures(study), time.monotonic())
    while (trial := ask_next(study, store, sweep, limits, log)) is not None:
        with get_heartbeat_thread(trial._trial_id, study._storage):  # no-op for journal files
            state, values = run_one_optuna_trial(study, trial, space, placement)
        shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(space.objectives, values)) if values else ""
        if values and state != TrialState.COMPLETE:
            shown += " (finished after a heartbeat check had failed it; its retry reuses these records)"
        log(f"trial {trial.number} {state.name.lower()} {shown}  {progress_line(study, n_trials, space)}")


@dataclass(frozen=True)
class WorkerLimits:
    """When a worker stops asking: enough trials, too many failed trials, or past its deadline."""

    n_trials: int
    max_failures: int  # failed trials since this worker started
    timeout_s: float | None
    failures_at_start: int
    started: float  # time.monotonic()


def ask_next(
    study: optuna.Study, store: Store, sweep: str, limits: WorkerLimits, log: Callable[[str], None]
) -> optuna.Trial | None:
    """The next trial to run, tagged with this worker; None once a limit is reached."""
    if is_heartbeat_enabled(study._storage):  # RDB: trials of dead workers -> FAIL -> retried
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    with sweep_lock(store, sweep):  # 'count, then ask' is exact across local workers
        c = counts(study)
        if c["complete"] + c["pruned"] + c["running"] >= limits.n_trials:
            return None
        if trial_failures(study) - limits.failures_at_start > limits.max_failures:
            log(f"[{sweep}] stopping: more than {limits.max_failures} failed trials (see their records)")
            return None
        if limits.timeout_s is not None and time.monotonic() - limits.started > limits.timeout_s:
            log(f"[{sweep}] stopping: timeout of {limits.timeout_s:g}s reached")
            return None
        trial = study.ask()
        trial.set_user_attr("worker", this_worker())  # lets the driver or --resume retry it
        return trial


def default_workers(n_trials: int, gpus: list[int] | None = None) -> int:
    """`--workers auto`: one worker per visible GPU, else one per CPU core this process may use, never more than
    the trials wanted. On a 2-core CPU, one trial per core ran the quickstart sweep at 1.32x (4 trials) and 1.19x
    (2 trials) the trials/hour of one trial on both cores (`benchmarks/throughput.py`)."""
    import torch

    return max(1, min(len(gpus) if gpus else torch.cuda.device_count() or usable_cores(), n_trials))


def trials_left(study: optuna.Study, n_trials: int) -> int:
    """Trials still to run for the study to hold `n_trials` (a resumed sweep needs fewer workers); at least 1."""
    c = counts(study)
    return max(1, n_trials - c["complete"] - c["pruned"] - c["running"])


def worker_gpus(gpus: list[int] | None, workers: int) -> tuple[int, ...]:
    """The GPUs the workers take in turn: the ones asked for (each must exist), else every visible GPU when there
    are several workers; () leaves `device` to the config (one worker, or no GPU)."""
    import torch

    visible = torch.cuda.device_count()
    if gpus is None:
        return tuple(range(visible)) if workers > 1 else ()
    missing = [g for g in gpus if not 0 <= g < visible]
    if missing:
        raise UserError(f"GPU {missing[0]} is not visible here ({visible} visible)", key="gpus",
                        allowed=f"indices 0..{visible - 1}" if visible else "none (no GPU is visible)")  # fmt: skip
    return tuple(gpus)


def _worker_entry(kwargs: dict) -> None:
    try:
        optuna_worker(**kwargs)
    except StorageFault as e:  # the store's filesystem refused a write: every worker would meet it, none retries
        print(f"Error: {e}", file=sys.stderr, flush=True)
        sys.exit(STOP_EXIT)


def optuna_backend(
    space: SearchSpace, store: Store, settings: SweepSettings, *, workers: int | None = 1, gpus=None, **_: Any
) -> dict:
    """The `optuna` entry of the backend registry (`backend.BACKENDS`): `run_optuna_sweep` with the CLI's options."""
    return run_optuna_sweep(space, store, settings, workers=workers, gpus=gpus)


def run_optuna_sweep(
    space: SearchSpace,
    store: Store,
    settings: SweepSettings | None = None,
    *,
    workers: int | None = 1,
    gpus: list[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or continue) a sweep with Optuna in this process or `workers` supervised local processes (None: one
    per GPU, else per core, `default_workers`); returns a summary with the best trial(s). The settings' named
    points (name -> params) run first, labelled `<name>@<sweep>`; without settings, the space's name and budget."""
    settings = settings or SweepSettings.of(space)
    name, storage_url = settings.study, settings.study_storage
    if gpus:
        worker_gpus(gpus, len(gpus))  # before the study opens: a listed GPU that is not there fails first
    if storage_url is None:
        if note := legacy_journal_note(store.root, name):
            log(f"[{name}] note: {note}")
        storage_url = str(default_journal(store.root, name))
    study = open_study(space, name, storage_url)
    check_same_space(study, space, storage_url)
    describe_study(study, space, "optuna")
    if settings.resume:
        retry_interrupted(study, store, log)
    for point, params in settings.named_points.items():
        study.enqueue_trial(params, user_attrs={"baseline_point": point}, skip_if_exists=True)
    workers = workers or default_workers(trials_left(study, settings.n_trials), gpus)
    placed = worker_gpus(gpus, workers)
    kwargs = dict(
        space=space,
        sweep=name,
        storage_url=storage_url,
        n_trials=settings.n_trials,
        max_failures=settings.max_failures,
        timeout_s=space.budget.timeout_s,
        placement=Placement(str(store.root), tracking=settings.tracking),
        gpus=placed,
    )
    if placed:
        log(f"[{name}] {workers} worker(s) on GPUs {', '.join(map(str, placed))} (round-robin)")
    if workers <= 1:
        optuna_worker(**kwargs, log=log)
    else:
        supervise(_worker_entry, kwargs, workers, settings.max_failures, on_death=requeue_dead_worker(study, log))
    c = counts(study)
    if c["waiting"] and c["complete"] + c["pruned"] < settings.n_trials:
        log(
            f"[{name}] {c['waiting']} queued trial(s) did not run (the workers stopped); "
            "run the same command again to finish them"
        )
    return summarize_study(study, space)


def retry_interrupted(study: optuna.Study, store: Store, log: Callable[[str], None]) -> None:
    """--resume: trials whose worker is really gone are marked failed and queued again."""
    heartbeats = is_heartbeat_enabled(study._storage)
    with sweep_lock(store, study.study_name):  # local workers ask and tag under this lock
        retried = fail_running(study, lambda w: worker_is_gone(w, heartbeats))
    if retried:
        log(f"[{study.study_name}] resuming: {retried} interrupted trial(s) marked failed and queued again")


def requeue_dead_worker(study: optuna.Study, log: Callable[[str], None]) -> Callable[[int, int], None]:
    """What the supervisor does when a local worker dies: its trial is marked failed and queued again."""

    def on_death(pid: int, exitcode: int) -> None:
        n = fail_running(study, lambda w: w is not None and same_machine(w) and w["pid"] == pid)
        log(
            f"[{study.study_name}] worker pid {pid} died (exit code {exitcode}); {n} trial(s) marked failed "
            "and queued again"
        )

    return on_death

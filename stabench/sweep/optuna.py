"""The Optuna backend: a study (journal file or RDB) asks for configs, `ConfigRun` trains them, the study is told.

With `study` (storage, sampler, pruner, trial bookkeeping), the only modules that touch Optuna's internals
(heartbeats, a trial's storage id): `study.optimize` hides what a supervised, resumable ask/tell loop needs.
"""

from __future__ import annotations

import sys
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled  # as study.optimize; we ask/tell
from optuna.trial import TrialState

from ..engine.trial import PREEMPTION, Preempted, request_preemption
from ..errors import StorageFault, UserError
from ..records.record import Tags, eval_value, record_value
from ..records.store import Store
from ..records.tracking import wandb_attrs
from .core import ConfigRun, Event, Placement, SweepSettings, TrialFailed, TrialPruned
from .space import SearchSpace, suggest
from .study import (
    SEED_RUN_ATTR,
    WORKER_ATTR,
    check_same_space,
    counts,
    default_journal,
    describe_study,
    fail_running,
    give_back,
    is_finished,
    legacy_journal_note,
    make_sampler,
    open_study,
    over_budget,
    report_unless_finished,
    requeue_trial,
    running_elsewhere,
    set_attr_unless_finished,
    summarize_study,
    tell,
    trial_failures,
)
from .workers import (
    PREEMPTED_EXIT,
    STOP_EXIT,
    TAKE_OVER_ALL,
    owner,
    same_machine,
    sigterm_requests,
    supervise,
    usable_cores,
    worker_is_gone,
)

Log = Callable[[str], None]


def sweep_lock(store: Store, name: str):
    """Serialises 'count trials, then create one' across local workers so the count is exact."""
    return store.lock(f"sweep-{name}")


def should_prune(study: optuna.Study, trial: optuna.Trial, space: SearchSpace, event: Event, log: Log) -> bool:
    """Report to the pruner and ask it: eval points of the first seed, or (Wilcoxon) one value per finished seed.
    Optuna cannot prune multi-objective studies."""
    if len(space.objectives) > 1 or space.pruner.name == "none":
        return False
    o = space.objectives[0]
    if space.pruner.name == "wilcoxon":
        if event.record is None:
            return False
        value, step = record_value(event.record, o.metric, o.direction), event.seed_index
    else:
        if event.entry is None or event.seed_index > 0:
            return False
        value, step = eval_value(event.entry, o.metric), event.entry["step"]
        if value is None:
            return False
    return report_unless_finished(study, trial, value, step, log) and trial.should_prune()


def run_with_pruner(
    run: ConfigRun, params: dict[str, Any], study: optuna.Study, trial: optuna.Trial, space: SearchSpace, log: Log
) -> list[float]:
    """Every seed of `params`, stopped when the pruner says so, or when another process finished the trial (a
    heartbeat check or `--take-over` judged this worker gone; a retry may be training it): returns the values."""
    events = run.events(params)
    while True:
        try:
            event = next(events)
        except StopIteration as done:
            return done.value
        if event.run_dir is not None:  # a seed starts: name its run folder, so any machine's retry continues it
            seed_run = {"seed_index": event.seed_index, "run_dir": event.run_dir}
            if not set_attr_unless_finished(study, trial, SEED_RUN_ATTR, seed_run, log):
                run.stop()
        elif should_prune(study, trial, space, event, log) or (event.entry is not None and is_finished(study, trial)):
            run.stop()


def run_one_optuna_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    space: SearchSpace,
    placement: Placement,
    run_token: str = "",
    take_over: frozenset[str] = frozenset(),
    log: Log = print,
) -> tuple[TrialState, list[float] | None]:
    """Train one asked trial over every seed and tell the study how it ended. A trial another process finished
    meanwhile is never told again: what it would have said is logged."""
    tags = Tags(
        sweep=study.study_name,
        backend="optuna",
        trial_number=trial.number,
        scheduled_unix=time.time(),
        named_point=trial.user_attrs.get("baseline_point"),
    )
    resume = trial.user_attrs.get("resume")  # a retry: the run folder its seed continues from (checked there)
    run = ConfigRun(space, tags, placement, resume=resume if isinstance(resume, dict) else None,
                    holder_gone=claim_holder_gone(study, take_over), owner=owner(run_token), log=log)  # fmt: skip
    try:
        params = suggest(trial, space)
    except optuna.exceptions.UpdateFinishedTrialError:  # finished by another process between ask and suggest
        log(f"[{study.study_name}] trial {trial.number} was finished by another process before it started")
        return study._storage.get_trial(trial._trial_id).state, None
    try:
        values = run_with_pruner(run, params, study, trial, space, log)
        set_attr_unless_finished(study, trial, "run_ids", [r["run_id"] for r in run.records], log)
        for key, value in record_links(run.records).items():
            set_attr_unless_finished(study, trial, key, value, log)
        if run.reused:
            set_attr_unless_finished(study, trial, "reused", run.reused, log)
    except TrialPruned:  # the state told, or the one another process told first
        return tell(study, trial, state=TrialState.PRUNED, skip_if_finished=True).state, None
    except TrialFailed as e:
        set_attr_unless_finished(study, trial, "error", str(e)[:500], log)
        return tell(study, trial, state=TrialState.FAIL, skip_if_finished=True).state, None
    except Preempted as e:  # SIGTERM: the seed is checkpointed; the trial is queued again to continue it
        requeue_preempted(study, trial, run, e, log)
        raise
    except BaseException:  # anything else (Ctrl-C included): never leave the trial RUNNING in the study
        tell(study, trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    if space.pruner.name == "wilcoxon" and len(space.objectives) == 1:
        o = space.objectives[0]
        report_unless_finished(study, trial, record_value(run.records[-1], o.metric, o.direction),
                               len(run.records) - 1, log)  # fmt: skip
    # skip_if_finished: a trial failed meanwhile by a heartbeat check was queued again; its retry reuses the records
    told = tell(study, trial, values if len(values) > 1 else values[0], skip_if_finished=True)
    return told.state, values


def record_links(records: list[dict]) -> dict[str, list[str]]:
    """What a dashboard links a trial to: each seed's record file (relative to the store) and W&B run."""
    runs = [wandb_attrs(r) for r in records]
    links = {"records": [f"{r['run_id']}/record.json" for r in records],
             "wandb_ids": [a["wandb_id"] for a in runs if "wandb_id" in a],
             "wandb_urls": [a["wandb_url"] for a in runs if "wandb_url" in a]}  # fmt: skip
    return {k: v for k, v in links.items() if v}


def claim_holder_gone(study: optuna.Study, take_over: frozenset[str]) -> Callable[[dict], bool]:
    """When a seed's claim may be taken from another machine's holder: the storage finished its trial (a
    heartbeat check, `--take-over` or its own worker failed it), or the user named its host with `--take-over`."""

    def gone(holder: dict) -> bool:
        if holder["host"] in take_over or TAKE_OVER_ALL in take_over:
            return True
        number = holder.get("trial")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number < len(study.trials):
            return False
        return study.trials[number].state.is_finished()

    return gone


def requeue_preempted(study: optuna.Study, trial: optuna.Trial, run: ConfigRun, e: Preempted, log: Log) -> None:
    """Fail the preempted trial and queue it again, naming the run folder its seed continues from."""
    if e.run_dir is not None:
        seed_run = {"seed_index": run.current_index, "run_dir": str(e.run_dir)}
        set_attr_unless_finished(study, trial, SEED_RUN_ATTR, seed_run, log)
    try:
        study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another process finished it (and queued its retry)
    requeue_trial(study, study._storage.get_trial(trial._trial_id))
    log(f"[{study.study_name}] trial {trial.number} preempted at step {e.step}: checkpointed in {e.run_dir}, "
        "queued again; run the same command to continue it")  # fmt: skip


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
    run_token: str = "",
    take_over: frozenset[str] = frozenset(),
    log: Log = print,
) -> None:
    """Ask/run/tell until the study holds `n_trials` finished trials, too many failures or the timeout. With
    `gpus`, worker k trains on GPU gpus[k % len(gpus)] (round-robin); `threads` is its share of the cores.
    SIGTERM checkpoints the running seed, queues its trial again and raises `Preempted`."""
    device = f"cuda:{gpus[worker_index % len(gpus)]}" if gpus else None
    placement = replace(placement, device=device, threads=threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, study = placement.enter(), open_study(space, sweep, storage_url)
    study.sampler = make_sampler(space, seed_offset=1000 * len(study.trials) + worker_index)
    limits = WorkerLimits(n_trials, max_failures, timeout_s, trial_failures(study), time.monotonic())
    PREEMPTION.clear()  # a SIGTERM of an earlier sweep in this process was obeyed then
    with sigterm_requests(request_preemption):
        while (trial := ask_next(study, store, sweep, limits, run_token, log)) is not None:
            with get_heartbeat_thread(trial._trial_id, study._storage):  # no-op for journal files
                state, values = run_one_optuna_trial(study, trial, space, placement, run_token, take_over, log)
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
    study: optuna.Study, store: Store, sweep: str, limits: WorkerLimits, run_token: str = "", log: Log = print
) -> optuna.Trial | None:
    """The next trial to run, tagged with this worker; None once a limit is reached. The budget holds without
    any lock (`over_budget`); the store's lock only saves local workers a trial asked and given back."""
    if is_heartbeat_enabled(study._storage):  # RDB: trials of dead workers -> FAIL -> retried
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    with sweep_lock(store, sweep):
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
        trial.set_user_attr(WORKER_ATTR, owner(run_token))  # lets the driver, --resume or --take-over retry it
    if over_budget(study, trial, limits.n_trials):  # another machine asked at the same time, and first
        give_back(study, trial)
        return None
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
    except Preempted:  # checkpointed and queued again: the supervisor must not count it as a death
        sys.exit(PREEMPTED_EXIT)


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
    check_same_space(study, space, storage_url, store.root)
    describe_study(study, space, "optuna")
    if settings.resume or settings.take_over:
        retry_interrupted(study, store, settings.take_over, log)
    for point, params in settings.named_points.items():
        study.enqueue_trial(params, user_attrs={"baseline_point": point}, skip_if_exists=True)
    workers = workers or default_workers(trials_left(study, settings.n_trials), gpus)
    placed = worker_gpus(gpus, workers)
    run_token = uuid.uuid4().hex[:12]  # this run's trials and claims carry it: it fails only what it started
    kwargs = dict(
        space=space,
        sweep=name,
        storage_url=storage_url,
        n_trials=settings.n_trials,
        max_failures=settings.max_failures,
        timeout_s=space.budget.timeout_s,
        placement=Placement(str(store.root), tracking=settings.tracking),
        gpus=placed,
        run_token=run_token,
        take_over=settings.take_over,
    )
    if placed:
        log(f"[{name}] {workers} worker(s) on GPUs {', '.join(map(str, placed))} (round-robin)")
    if workers <= 1:
        try:
            optuna_worker(**kwargs, log=log)
        except Preempted:
            raise SystemExit(PREEMPTED_EXIT) from None
    else:
        on_death = requeue_dead_worker(study, log, run_token)
        supervise(_worker_entry, kwargs, workers, settings.max_failures, on_death=on_death)
    c = counts(study)
    if c["waiting"] and c["complete"] + c["pruned"] < settings.n_trials:
        log(
            f"[{name}] {c['waiting']} queued trial(s) did not run (the workers stopped); "
            "run the same command again to finish them"
        )
    if c["complete"] + c["pruned"] < settings.n_trials:
        for line in short_of_budget(study, run_token, settings.n_trials):
            log(f"[{name}] {line}")
    return summarize_study(study, space)


def short_of_budget(study: optuna.Study, run_token: str, n_trials: int) -> list[str]:
    """Why a sweep ended short of `n_trials`: the RUNNING trials it does not own (they count towards the budget),
    each with its owner and what to do."""
    lines = []
    for t in running_elsewhere(study, run_token):
        w = t.user_attrs.get(WORKER_ATTR)
        if not isinstance(w, dict) or not isinstance(w.get("host"), str):
            lines.append(f"trial {t.number} is RUNNING with no owner recorded (its worker died as it asked?); if "
                         "no machine runs this study now, run again with --resume --take-over ALL")  # fmt: skip
        elif same_machine(w):
            lines.append(f"trial {t.number} is RUNNING in pid {w.get('pid')} on this machine; "
                         "if that process is gone, run again with --resume")  # fmt: skip
        else:
            lines.append(f"trial {t.number} is RUNNING on host {w['host']} (pid {w.get('pid')}) and counts towards "
                         f"the {n_trials} trials; it finishes there if that machine is alive. If {w['host']} is "
                         f"down, run again with --resume --take-over {w['host']} to retry its trials here")  # fmt: skip
    return lines


def retry_interrupted(study: optuna.Study, store: Store, take_over: frozenset[str], log: Log) -> None:
    """--resume: trials whose worker is really gone are marked failed and queued again: this machine's dead
    processes; another machine's only when the storage's heartbeats say so, or its host is named in `take_over`."""
    heartbeats = is_heartbeat_enabled(study._storage)
    with sweep_lock(store, study.study_name):  # local workers ask and tag under this lock
        retried = fail_running(study, lambda w: worker_is_gone(w, heartbeats, take_over))
    if retried:
        log(f"[{study.study_name}] resuming: {retried} interrupted trial(s) marked failed and queued again")


def requeue_dead_worker(study: optuna.Study, log: Log, run_token: str | None = None) -> Callable[[int, int], None]:
    """What the supervisor does when a local worker dies: its trial (this run's, that pid's) is marked failed and
    queued again."""

    def mine(w: dict | None, pid: int) -> bool:
        ours = run_token is None or w is not None and w.get("run") == run_token
        return w is not None and ours and same_machine(w) and w["pid"] == pid

    def on_death(pid: int, exitcode: int) -> None:
        n = fail_running(study, lambda w: mine(w, pid))
        log(
            f"[{study.study_name}] worker pid {pid} died (exit code {exitcode}); {n} trial(s) marked failed "
            "and queued again"
        )

    return on_death

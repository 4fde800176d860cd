"""Sweeps: decide which configs run, run them through the trial engine, and report the results.

The search layer never changes how a trial trains or is scored. One sampled config = one Optuna trial
(or Ray Tune trial) = one `run_trial` per seed of the space, each writing its record to the store tagged
with the sweep name, backend and trial number. The objective of a config is the mean over its seeds;
a diverged seed counts as the worst possible value (infinity), never dropped.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled  # as study.optimize; we ask/tell
from optuna.trial import TrialState

from .config import config_hash
from .engine import Trial, run_trial
from .errors import ConfigError, UserError
from .record import FINISHED, Status, eval_value, record_value
from .space import CategoricalDist, SearchSpace, grid_values, scalar_choices, suggest, trial_config
from .store import Store
from .tracking import TrackingSettings

DEFAULT_STORAGE_DIR = Path("results") / "optuna"


class TrialFailed(Exception):
    """A seed of the trial ended with status `failed`; the error is in its record."""


class TrialPruned(Exception):
    """The backend asked to stop the trial early."""


# ---------------------------------------------------------------------------------------------
# One sampled config over all seeds (shared by both backends)
# ---------------------------------------------------------------------------------------------


@dataclass
class ConfigRun:
    """Runs one sampled config for every seed of the space, reusing records already in the store."""

    space: SearchSpace
    store: Store
    tags: dict
    report: Callable[[int, int, dict], bool] | None = None  # (seed_index, step, eval entry) -> prune?
    tracking: TrackingSettings | None = None
    after_seed: Callable[[int, dict], bool] | None = None  # (seed_index, record) -> prune? (Wilcoxon)
    records: list[dict] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)  # run ids found in the store instead of re-run

    def run(self, params: dict[str, Any]) -> list[float]:
        for i, seed in enumerate(self.space.seeds):
            try:
                cfg = trial_config(self.space, params, seed)
            except ConfigError as e:  # values valid one by one but not together: this trial fails, the sweep goes on
                raise TrialFailed(str(e)) from None
            rec = self.store.find(config_hash(cfg), seed, sweep=self.tags["sweep"])
            if rec is None:  # resumed sweeps (or a config sampled twice) do not re-run a finished seed
                trial = Trial(
                    cfg,
                    self.store.root,
                    tracking=self.tracking,
                    tags={**self.tags, "seed_index": i, "params": params},
                    writer=self.store.write_unique,
                )
                for entry in trial.run():
                    if self.report is not None and self.report(i, entry["step"], entry):
                        trial.stop()  # the backend prunes: status `pruned`
                rec = trial.record
            else:
                self.reused.append(rec["run_id"])
            self.records.append(rec)
            if rec["status"] == Status.FAILED:
                raise TrialFailed(f"seed {seed}: {rec['error']['type']}: {rec['error']['message']}")
            if rec["status"] == Status.PRUNED:
                raise TrialPruned(f"pruned at step {rec['pruned_at']}")
            if self.after_seed is not None and i + 1 < len(self.space.seeds) and self.after_seed(i, rec):
                raise TrialPruned(f"pruned after seed {seed}")
        return objective_values(self.space, self.records)


def objective_values(space: SearchSpace, records: list[dict]) -> list[float]:
    """A config's value of each objective: the mean over its seeds' records (diverged = the worst value)."""
    return [sum(record_value(r, o.metric, o.direction) for r in records) / len(records) for o in space.objectives]


# ---------------------------------------------------------------------------------------------
# Optuna backend
# ---------------------------------------------------------------------------------------------


def make_sampler(space: SearchSpace, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The space's sampler. `seed_offset` differs per worker and per restart so that a seeded sampler in a
    second process does not propose the same sequence of configs again."""
    s = space.sampler
    opts = dict(s.options)
    seed = None if s.seed is None else s.seed + seed_offset
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    cls = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "qmc": optuna.samplers.QMCSampler,
    }[s.name]
    return cls(seed=seed, **opts)


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    p = space.pruner
    cls = {
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "wilcoxon": optuna.pruners.WilcoxonPruner,
        "none": optuna.pruners.NopPruner,
    }[p.name]
    return cls(**p.options)


HEARTBEAT_INTERVAL_S = int(os.environ.get("STABENCH_HEARTBEAT_S", "60"))
HEARTBEAT_GRACE_S = int(os.environ.get("STABENCH_HEARTBEAT_GRACE_S", "180"))
MAX_RETRY = 2  # a trial whose worker died is retried this many times (RDB storages, via heartbeats)


def make_storage(url: str | None, study_name: str, heartbeats: bool = True) -> tuple[optuna.storages.BaseStorage, str]:
    """Journal file by default (safe for several local processes); any RDB URL otherwise, with heartbeats:
    a trial whose worker stops beating for HEARTBEAT_GRACE_S is marked FAIL and retried (up to MAX_RETRY).
    Ray's OptunaSearch asks and tells from the driver only, so it opens RDB storages without heartbeats."""
    if url is None:
        DEFAULT_STORAGE_DIR.mkdir(parents=True, exist_ok=True)
        url = str(DEFAULT_STORAGE_DIR / f"{study_name}.journal")
    if "://" not in url:  # a plain path: an Optuna journal file
        path = Path(url)
        if path.exists() and path.is_dir():
            raise UserError(f"--storage: '{url}' is a directory; give a journal file path or a database URL")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path))), str(path)
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
    except Exception as e:  # bad dialect, unreachable server, ...
        raise UserError(
            f"--storage: cannot open '{url}': {type(e).__name__}: {e}. Allowed: a journal file "
            "path, or an RDB URL such as postgresql://user:pw@host/db"
        ) from None


def open_study(space: SearchSpace, study_name: str, storage_url: str | None) -> optuna.Study:
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


def counts(study: optuna.Study) -> dict[str, int]:
    c = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        c[t.state.name.lower()] += 1
    return c


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, from /proc; None if there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def this_worker() -> dict:
    """Who runs a trial: host, boot and pid, plus the pid's start time so a reused pid is not mistaken for it."""
    stat = proc_stat(os.getpid())
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "start": stat and stat[1]}


def same_machine(worker: dict) -> bool:
    return worker["host"] == socket.gethostname() and worker.get("boot") == _boot_id()


def worker_is_gone(worker: dict | None, heartbeats: bool) -> bool:
    """Is the process that ran a RUNNING trial dead? Known for sure on this machine (a zombie or a reused pid
    counts as dead). Elsewhere, or untagged (between ask and tag), RDB heartbeats decide; without heartbeats
    (journal files) `--resume` means the user says it is dead."""
    if worker is None or not same_machine(worker):
        return not heartbeats
    stat = proc_stat(worker["pid"])
    return stat is None or stat[0] == "Z" or stat[1] != worker.get("start")


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


def trial_failures(study: optuna.Study) -> int:
    """Trials that failed by themselves (an exception in training); not those of a dead worker or a stale
    heartbeat, which are retried."""
    return sum("error" in t.user_attrs for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def sweep_lock(store: Store, name: str):
    """Serialises 'count trials, then create one' across local workers so the count is exact."""
    return store.lock(f"sweep-{name}")


def optuna_reporter(trial: optuna.Trial, space: SearchSpace) -> Callable[[int, int, dict], bool] | None:
    """Intermediate values for pruners: eval points of the first seed, or one value per seed (Wilcoxon)."""
    if len(space.objectives) > 1 or space.pruner.name == "none":
        return None  # Optuna cannot prune multi-objective studies
    metric = space.objectives[0].metric

    def report(seed_index: int, step: int, entry: dict) -> bool:
        if space.pruner.name == "wilcoxon" or seed_index > 0:
            return False
        value = eval_value(entry, metric)
        if value is None:
            return False
        trial.report(value, step)
        return trial.should_prune()

    return report


def wilcoxon_reporter(trial: optuna.Trial, space: SearchSpace) -> Callable[[int, dict], bool] | None:
    """WilcoxonPruner compares per-instance values: report each seed's final value as one instance."""
    if space.pruner.name != "wilcoxon" or len(space.objectives) > 1:
        return None
    o = space.objectives[0]

    def after_seed(seed_index: int, record: dict) -> bool:
        trial.report(record_value(record, o.metric, o.direction), seed_index)
        return trial.should_prune()

    return after_seed


def run_one_optuna_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    space: SearchSpace,
    store: Store,
    sweep: str,
    tracking: TrackingSettings | None = None,
) -> tuple[TrialState, list[float] | None]:
    tags = {"sweep": sweep, "backend": "optuna", "trial_number": trial.number, "scheduled_unix": time.time()}
    if "baseline_point" in trial.user_attrs:
        tags["baseline_point"] = trial.user_attrs["baseline_point"]
    runner = ConfigRun(space, store, tags, optuna_reporter(trial, space), tracking, wilcoxon_reporter(trial, space))
    try:
        values = runner.run(suggest(trial, space))
        if runner.reused:
            trial.set_user_attr("reused", runner.reused)
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
        trial.report(
            record_value(runner.records[-1], space.objectives[0].metric, space.directions[0]), len(runner.records) - 1
        )
    # skip_if_finished: a trial failed meanwhile by a heartbeat check was queued again; its retry reuses the records
    told = study.tell(trial, values if len(values) > 1 else values[0], skip_if_finished=True)
    return told.state, values


def progress_line(study: optuna.Study, n_trials: int, space: SearchSpace) -> str:
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
    store_root: str,
    sweep: str,
    storage_url: str | None,
    n_trials: int,
    max_failures: int,
    timeout_s: float | None,
    threads: int | None = None,
    worker_index: int = 0,
    tracking: TrackingSettings | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Ask/run/tell until the study holds `n_trials` finished trials, too many failures or the timeout."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store, study = Store(store_root), open_study(space, sweep, storage_url)
    study.sampler = make_sampler(space, seed_offset=1000 * len(study.trials) + worker_index)
    fails_at_start, started = trial_failures(study), time.monotonic()
    while True:
        if is_heartbeat_enabled(study._storage):  # RDB: trials of dead workers -> FAIL -> retried
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        with sweep_lock(store, sweep):
            c = counts(study)
            if c["complete"] + c["pruned"] + c["running"] >= n_trials:
                break
            if trial_failures(study) - fails_at_start > max_failures:
                log(f"[{sweep}] stopping: more than {max_failures} failed trials (see their records)")
                break
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                log(f"[{sweep}] stopping: timeout of {timeout_s:g}s reached")
                break
            trial = study.ask()
            trial.set_user_attr("worker", this_worker())  # lets the driver or --resume retry it
        with get_heartbeat_thread(trial._trial_id, study._storage):  # no-op for journal files
            state, values = run_one_optuna_trial(study, trial, space, store, sweep, tracking)
        shown = ", ".join(f"{o.metric}={v:.4g}" for o, v in zip(space.objectives, values)) if values else ""
        if values and state != TrialState.COMPLETE:
            shown += " (finished after a heartbeat check had failed it; its retry reuses these records)"
        log(f"trial {trial.number} {state.name.lower()} {shown}  {progress_line(study, n_trials, space)}")


def _worker_entry(kwargs: dict) -> None:
    optuna_worker(**kwargs)


def run_optuna_sweep(
    space: SearchSpace,
    store: Store,
    *,
    study_name: str | None = None,
    storage_url: str | None = None,
    n_trials: int | None = None,
    workers: int = 1,
    resume: bool = False,
    max_failures: int = 3,
    baselines: dict[str, dict] | None = None,
    tracking: TrackingSettings | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run (or continue) a sweep with Optuna; returns a summary with the best trial(s)."""
    name = study_name or space.name
    n_trials = n_trials or space.budget.trials
    study = open_study(space, name, storage_url)
    if resume:
        heartbeats = is_heartbeat_enabled(study._storage)
        with sweep_lock(store, name):  # local workers ask and tag under this lock
            retried = fail_running(study, lambda w: worker_is_gone(w, heartbeats))
        if retried:
            log(f"[{name}] resuming: {retried} interrupted trial(s) marked failed and queued again")
    for baseline, params in (baselines or {}).items():  # named points first, labelled "<baseline>@<sweep>"
        study.enqueue_trial(params, user_attrs={"baseline_point": baseline}, skip_if_exists=True)
    kwargs = dict(
        space=space,
        store_root=str(store.root),
        sweep=name,
        storage_url=storage_url,
        n_trials=n_trials,
        max_failures=max_failures,
        timeout_s=space.budget.timeout_s,
        tracking=tracking,
    )
    if workers <= 1:
        optuna_worker(**kwargs, log=log)
    else:
        supervise_workers(study, kwargs, workers, max_failures, log)
    c = counts(study)
    if c["waiting"] and c["complete"] + c["pruned"] < n_trials:
        log(
            f"[{name}] {c['waiting']} queued trial(s) did not run (the workers stopped); "
            "run the same command again to finish them"
        )
    return summarize_study(study, space)


def supervise_workers(
    study: optuna.Study, kwargs: dict, workers: int, max_restarts: int, log: Callable[[str], None]
) -> None:
    """Run `workers` local worker processes. When one dies (OOM killer, kill -9), its trial is marked failed and
    queued again, and a replacement worker starts (at most `max_restarts` times)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")

    def start(i: int) -> mp.Process:
        p = ctx.Process(target=_worker_entry, args=({**kwargs, "threads": threads, "worker_index": i},), daemon=False)
        p.start()
        return p

    running, restarts = {start(i) for i in range(workers)}, 0
    while running:
        for sentinel in mp_connection.wait([p.sentinel for p in running]):
            p = next(q for q in running if q.sentinel == sentinel)
            p.join()
            running.discard(p)
            if p.exitcode == 0:
                continue
            n = fail_running(study, lambda w, pid=p.pid: w is not None and same_machine(w) and w["pid"] == pid)
            log(
                f"[{study.study_name}] worker pid {p.pid} died (exit code {p.exitcode}); "
                f"{n} trial(s) marked failed and queued again"
            )
            if restarts < max_restarts:
                restarts += 1
                running.add(start(workers + restarts))


def summarize_study(study: optuna.Study, space: SearchSpace) -> dict:
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


def baseline_params(space: SearchSpace, baseline_cfg: dict) -> dict[str, Any]:
    """A baseline's values for the space's keys (only keys active under its own values)."""
    params: dict[str, Any] = {}
    for key, d in space.space.items():
        value: Any = baseline_cfg
        for part in key.split("."):
            value = value[part]
        if d.when and not all(params.get(p) in v for p, v in d.when.items()):
            continue
        if isinstance(d, CategoricalDist) and value not in d.choices:
            continue
        params[key] = json.dumps(value) if isinstance(d, CategoricalDist) and not scalar_choices(d) else value
    return params


# ---------------------------------------------------------------------------------------------
# Confirmation: the top configs of a sweep again, with more seeds (DeepOBS / AlgoPerf practice)
# ---------------------------------------------------------------------------------------------


def top_configs(store: Store, sweep: str, metric: str, top: int) -> list[dict]:
    """One representative record per config of the sweep, best mean `metric` first (diverged = worst)."""
    groups: dict[str, list[dict]] = {}
    for rec in store.records(sweep=sweep):
        if rec["status"] in FINISHED:
            groups.setdefault(rec["config_hash"], []).append(rec)
    scored = sorted(
        groups.values(),
        key=lambda rs: (sum(record_value(r, metric, "minimize") for r in rs) / len(rs), rs[0]["config_hash"]),
    )
    return [min(rs, key=lambda r: r["run_id"]) for rs in scored[:top]]


def confirm(
    store: Store,
    sweep: str,
    metric: str,
    top: int,
    n_seeds: int,
    tracking: TrackingSettings | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run seeds 0..n_seeds-1 of the `top` best configs of `sweep` (seeds already recorded are skipped)."""
    from .config import build_config

    records = []
    for rank, rep in enumerate(top_configs(store, sweep, metric, top), 1):
        tags = {**(rep.get("tags") or {}), "job_type": "confirm"}
        for seed in range(n_seeds):
            cfg = build_config({**rep["config"], "seed": seed}, f"record {rep['run_id']}")
            rec = store.find(rep["config_hash"], seed, sweep=sweep)
            if rec is None:
                rec = run_trial(
                    cfg, store.root, tags={**tags, "seed_index": seed}, tracking=tracking, writer=store.write_unique
                )
                log(
                    f"confirm #{rank} {rep['config_hash'][:8]} seed {seed}: {rec['status']} "
                    f"{metric}={(rec.get('metrics') or {}).get(metric)}"
                )
            records.append(rec)
    return records

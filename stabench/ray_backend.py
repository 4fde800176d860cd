"""Ray Tune backend: the same sampled configs and records as the Optuna backend, run on a Ray cluster.

`Tuner(with_resources(StabenchTrainable), TuneConfig(search_alg=OptunaSearch, scheduler=ASHA), RunConfig)`.
The trainable is a class so that a trial stopped by ASHA still finishes its record (status `pruned`)
in `cleanup()`: Ray calls it between two `step()`s, never in the middle of training.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import optuna
from ray import tune

from .config import config_hash
from .engine import Trial
from .errors import UserError
from .record import Status, eval_value, worst
from .search import fail_running, make_sampler, make_storage, objective_values
from .space import SearchSpace, decode_params, suggest, trial_config
from .store import Store
from .tracking import TrackingSettings

DEFAULT_RAY_DIR = Path("results") / "ray"


def _define_by_run(trial, space: SearchSpace) -> dict:
    # OptunaSearch lays the returned dict over the values it captured: list-valued choices come back decoded
    return suggest(trial, space)


def metric_names(space: SearchSpace) -> list[str]:
    return [o.metric for o in space.objectives]


def evals_per_seed(cfg) -> int:
    return -(-cfg.optim.steps // cfg.eval.every)


def eval_budget(space: SearchSpace) -> int:
    """ASHA's max_t: every evaluation point of every seed, plus the final result, so that a trial that runs to
    the end finishes on its own (its records written inside `step()`), never by a scheduler stop."""
    return evals_per_seed(trial_config(space, {}, space.seeds[0])) * len(space.seeds) + 1


class StabenchTrainable(tune.Trainable):
    """One sampled config: every seed of the space in turn, one `step()` per evaluation point."""

    def setup(
        self,
        config: dict,
        space: SearchSpace = None,
        store_root: str = "",
        sweep: str = "",
        threads: int = 1,
        tracking: TrackingSettings | None = None,
        baselines: dict | None = None,
    ):
        import torch

        torch.set_num_threads(max(1, threads))
        self.space, self.store, self.sweep, self.tracking = space, Store(store_root), sweep, tracking
        self.params = dict(config)
        # a --with-baselines point (OptunaSearch's points_to_evaluate) keeps its name, as with Optuna
        self.baseline = next((n for n, p in (baselines or {}).items() if decode_params(space, p) == self.params), None)
        cfg = trial_config(space, self.params, space.seeds[0])
        self.evals_per_seed, self.every, self.budget = evals_per_seed(cfg), cfg.eval.every, eval_budget(space)
        self.records: list[dict] = []
        self.scheduled_unix = time.time()  # the trial's start as its actor sees it (overhead benchmark)
        self.seed_index, self.current = 0, None

    def _start_seed(self) -> dict | None:
        """Start the next seed; returns its record instead when the store already has it finished (a restored
        trial, or a config sampled twice), so no seed is recorded twice."""
        seed = self.space.seeds[self.seed_index]
        cfg = trial_config(self.space, self.params, seed)
        found = self.store.find(config_hash(cfg), seed, sweep=self.sweep)
        if found is not None:
            return found
        tags = {
            "sweep": self.sweep,
            "backend": "ray",
            "trial_number": self.trial_id,
            "scheduled_unix": self.scheduled_unix,
            "seed_index": self.seed_index,
            "params": self.params,
        }
        if self.baseline:
            tags["baseline_point"] = self.baseline
        self.current = Trial(cfg, self.store.root, tags=tags, tracking=self.tracking, writer=self.store.write_unique)
        return None

    def step(self) -> dict:
        while True:
            rec = self._start_seed() if self.current is None else None
            if rec is None:
                entry = next(self.current.run(), None)
                if entry is not None:
                    return self._intermediate(entry)
                rec, self.current = self.current.record, None
            self.records.append(rec)
            self.seed_index += 1
            if rec["status"] == Status.FAILED:
                raise RuntimeError(f"trial failed: {rec['error']['type']}: {rec['error']['message']}")
            if self.seed_index == len(self.space.seeds):
                return self._final()

    def _intermediate(self, entry: dict) -> dict:
        # ASHA's clock: evaluation points of the whole trial, counted by us rather than by Ray's
        # training_iteration, which a restored trial resumes while its interrupted seed trains from step 0.
        k = -(-entry["step"] // self.every)
        out: dict[str, Any] = {
            "step": entry["step"],
            "seed_index": self.seed_index,
            "eval_index": min(self.seed_index * self.evals_per_seed + k, self.budget - 1),
        }
        for o in self.space.objectives:
            v = eval_value(entry, o.metric)
            # metrics only known at the end (e.g. instability) report the worst value meanwhile
            out[o.metric] = v if v is not None else worst(o.direction)
        return out

    def _final(self) -> dict:
        out: dict[str, Any] = {
            "done": True,
            "step": self.records[-1].get("steps_completed"),
            "eval_index": self.budget,
            "statuses": [r["status"] for r in self.records],
        }
        out.update(zip(metric_names(self.space), objective_values(self.space, self.records)))
        return out

    def cleanup(self) -> None:
        if self.current is not None and not self.current.finished:
            self.current.stop()  # stopped by the scheduler: record it as pruned

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        return {}  # the store is the state: finished seeds are found there again

    def load_checkpoint(self, checkpoint: dict) -> None:
        # Restarted (failed actor) or restored (killed driver) trial: start over from the first seed;
        # `_start_seed` finds every seed already finished in the store, and an interrupted seed trains again.
        self.seed_index, self.records, self.current = 0, [], None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise UserError(
            f"--address: cannot reach Ray at '{address}' ({e}). Allowed: omit it for a local Ray, "
            "'auto' for the cluster this machine belongs to, host:port or ray://host:port"
        ) from None


def init_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to (or start) Ray; returns True when this call initialised it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        check_reachable(address)
    env = {k: os.environ[k] for k in ("STABENCH_INCEPTION_WEIGHTS", "STABENCH_CACHE", "WANDB_MODE") if k in os.environ}
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", **env}},
    }
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    except Exception as e:  # unreachable address, version mismatch, ...
        raise UserError(
            f"--address: cannot connect to Ray at '{address}': {type(e).__name__}: {e}. Allowed: "
            "omit it for a local Ray, 'auto' for a running cluster, or ray://host:port"
        ) from None
    return True


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None):
    """Ray for the duration of a sweep: joined or started here (and then shut down here)."""
    import ray

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    started = init_ray(address, num_cpus)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def make_searcher(space: SearchSpace, name: str, baselines: dict | None, study_storage, max_concurrent: int | None):
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    metrics, modes = metric_names(space), [d[:3] for d in space.directions]
    single = len(metrics) == 1
    searcher = OptunaSearch(
        space=functools.partial(_define_by_run, space=space),
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        sampler=make_sampler(space),
        points_to_evaluate=list((baselines or {}).values()) or None,
        study_name=name,
        storage=study_storage,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent) if max_concurrent else searcher


def make_scheduler(space: SearchSpace):
    """ASHA compares trials at equal numbers of evaluation points; several objectives: no early stopping."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if len(space.objectives) > 1:
        return FIFOScheduler()
    return ASHAScheduler(time_attr="eval_index", grace_period=1, reduction_factor=2, max_t=eval_budget(space))


def run_ray_sweep(
    space: SearchSpace,
    store: Store,
    *,
    study_name: str | None = None,
    n_trials: int | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    max_concurrent: int | None = None,
    storage_path: str | None = None,
    resume: bool = False,
    max_failures: int = 3,
    baselines: dict[str, dict] | None = None,
    num_cpus: int | None = None,
    storage_url: str | None = None,
    tracking: TrackingSettings | None = None,
    log=print,
) -> dict:
    """Run (or restore) a sweep with Ray Tune; returns the best config(s). With `storage_url` (a journal file
    or an RDB URL such as PostgreSQL) the OptunaSearch study lives there too, e.g. for optuna-dashboard."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # tiny checkpoints
    name, n_trials = study_name or space.name, n_trials or space.budget.trials
    study_storage = make_storage(storage_url, name, heartbeats=False)[0] if storage_url else None  # fail fast
    storage = storage_path if "://" in (storage_path or "") else str(Path(storage_path or DEFAULT_RAY_DIR).absolute())
    experiment = f"{storage}/{name}"
    store.root.mkdir(parents=True, exist_ok=True)
    with ray_session(address, num_cpus):
        trainable = tune.with_resources(
            tune.with_parameters(
                StabenchTrainable,
                space=space,
                store_root=str(store.root),
                sweep=name,
                threads=max(1, int(cpus_per_trial)),
                tracking=tracking,
                baselines=baselines,
            ),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        progress = ProgressCallback(name, n_trials, space, log)
        if resume and tune.Tuner.can_restore(experiment):
            log(f"[{name}] restoring Ray Tune experiment from {experiment}")
            tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
        else:
            single = len(space.objectives) == 1
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=make_searcher(space, name, baselines, study_storage, max_concurrent),
                    scheduler=make_scheduler(space),
                    num_samples=n_trials,
                    metric=space.objectives[0].metric if single else None,
                    mode=space.directions[0][:3] if single else None,
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=storage,
                    verbose=0,
                    callbacks=[progress],
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=1),
                ),
            )
        results = tuner.fit()
    # Once the sweep has ended none of its study's trials can still run; trials a killed driver asked after its
    # last experiment checkpoint would stay RUNNING in the study otherwise.
    if study_storage is not None and (
        n := fail_running(optuna.load_study(study_name=name, storage=study_storage), dead=lambda w: True, requeue=False)
    ):
        log(f"[{name}] {n} trial(s) of a killed driver left running in the study: marked failed")
    return {**summarize_results(results, space), "trial_started_unix": progress.started_unix}


def summarize_results(results, space: SearchSpace) -> dict:
    statuses = [r.metrics.get("statuses") for r in results]
    out: dict[str, Any] = {
        "trials": len(results),
        "errors": results.num_errors,
        "finished": sum(1 for s in statuses if s),
    }
    if len(space.objectives) == 1:
        o = space.objectives[0]
        try:
            best = results.get_best_result(metric=o.metric, mode=o.direction[:3], scope="last")
            out["best"] = {"value": best.metrics.get(o.metric), "params": best.config}
        except RuntimeError:
            pass
    return out


class ProgressCallback(tune.Callback):
    """One line per finished trial: done / running / errored, best so far."""

    def __init__(self, name: str, n_trials: int, space: SearchSpace, log):
        self.name, self.n_trials, self.space, self.log = name, n_trials, space, log
        self.best: float | None = None
        self.started_unix: dict[str, float] = {}  # driver-side start of each trial (overhead benchmark)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started_unix[trial.trial_id] = time.time()

    def _line(self, trials, finishing=None) -> str:
        states = [t.status for t in trials if t is not finishing]  # Tune marks `finishing` after the callback
        done = sum(s == "TERMINATED" for s in states) + (finishing is not None)
        line = (
            f"[{self.name}] done {done}/{self.n_trials} | running {states.count('RUNNING')} | "
            f"errored {states.count('ERROR')}"
        )
        if self.best is not None:
            line += f" | best {self.space.objectives[0].metric}={self.best:.4g}"
        return line

    def on_trial_complete(self, iteration, trials, trial, **info):
        o = self.space.objectives[0]
        result = trial.last_result or {}
        value = result.get(o.metric)
        if "statuses" not in result:  # Tune sets `done` on any last result; only `_final` reports statuses
            self.log(f"ray trial {trial.trial_id} stopped early by the scheduler  {self._line(trials, trial)}")
            return
        if value is not None and math.isfinite(value):
            better = self.best is None or (value < self.best if o.direction == "minimize" else value > self.best)
            self.best = value if better else self.best
        self.log(f"ray trial {trial.trial_id} finished {o.metric}={value}  {self._line(trials, trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"ray trial {trial.trial_id} errored  {self._line(trials)}")


def _run_job(
    config: dict, jobs: list = None, store_root: str = "", threads: int = 1, tracking: TrackingSettings | None = None
) -> None:
    import torch

    from .engine import run_trial

    torch.set_num_threads(max(1, threads))
    name, cfg, tags = jobs[config["job"]]
    rec = run_trial(cfg, store_root, tags=tags, tracking=tracking)
    tune.report({"status_ok": rec["status"] == Status.OK, "done": True})


def run_ray_jobs(
    jobs: list[tuple[str, Any, dict]],
    store: Store,
    *,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    storage_path: str | None = None,
    name: str = "baselines",
    num_cpus: int | None = None,
    tracking: TrackingSettings | None = None,
) -> None:
    """Run fixed (name, config, tags) jobs as Ray Tune trials (a grid over job indices)."""
    store.root.mkdir(parents=True, exist_ok=True)
    with ray_session(address, num_cpus):
        trainable = tune.with_resources(
            tune.with_parameters(
                _run_job, jobs=jobs, store_root=str(store.root), threads=max(1, int(cpus_per_trial)), tracking=tracking
            ),
            {"cpu": cpus_per_trial, "gpu": gpus_per_trial},
        )
        storage = str(Path(storage_path or DEFAULT_RAY_DIR).absolute())
        tune.Tuner(
            trainable,
            param_space={"job": tune.grid_search(list(range(len(jobs))))},
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
        ).fit()

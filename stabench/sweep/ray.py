"""Ray Tune backend: the same sampled configs and records as the Optuna backend, run on a Ray cluster.

`Tuner(with_resources(StabenchTrainable), TuneConfig(search_alg=OptunaSearch, scheduler=ASHA), RunConfig)`.
The trainable is a class so that a trial stopped by ASHA still finishes its record (status `pruned`)
in `cleanup()`: Ray calls it between two `step()`s, never in the middle of training.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

from ray import tune
from ray.tune.search.optuna import OptunaSearch

from ..engine import run_trial
from ..records.record import Status, Tags, eval_value, worst
from ..records.store import Store
from ..records.tracking import TrackingSettings
from .core import ConfigRun, Event, Placement, SweepSettings, TrialFailed
from .ray_cluster import LOCAL_RAY, RayCluster, placed, ray_for
from .space import SearchSpace, decode_params, suggest, trial_config
from .study import fail_orphaned, make_sampler, make_storage


def _define_by_run(trial, space: SearchSpace) -> dict:
    # OptunaSearch lays the returned dict over the values it captured: list-valued choices come back decoded
    return suggest(trial, space)


def metric_names(space: SearchSpace) -> list[str]:
    """The names of the space's objectives, in order."""
    return [o.metric for o in space.objectives]


def evals_per_seed(cfg) -> int:
    """Evaluation points of one seed (the last step always evaluates)."""
    return -(-cfg.optim.steps // cfg.eval.every)


def eval_budget(space: SearchSpace) -> int:
    """ASHA's max_t: every evaluation point of every seed, plus the final result, so that a trial that runs to
    the end finishes on its own (its records written inside `step()`), never by a scheduler stop."""
    return evals_per_seed(trial_config(space, {}, space.seeds[0])) * len(space.seeds) + 1


class StabenchTrainable(tune.Trainable):
    """One sampled config: a `ConfigRun` over every seed of the space, one `step()` per evaluation point."""

    def setup(self, config: dict, space: SearchSpace, sweep: str, placement: Placement, named_points: dict):
        """Tune's start of a trial: `config` is its sampled params, the rest comes from `with_parameters`."""
        placement.enter()
        self.space, self.sweep, self.placement, self.named_points = space, sweep, placement, named_points
        self._begin(config)

    def reset_config(self, new_config: dict) -> bool:
        """Tune hands this actor the next trial (`reuse_actors`): the previous trial ends as `cleanup` would end it
        (a running seed the scheduler stopped is recorded as pruned) and the process, its imports and its device
        stay warm for the next one."""
        self.run.stop()
        self._begin(new_config)
        return True

    def _begin(self, config: dict) -> None:
        """This actor's (new) trial: its sampled params, tags and seed loop."""
        space = self.space
        self.params = dict(config)
        # a --with-baselines point (OptunaSearch's points_to_evaluate) keeps its name, as with Optuna
        point = next((n for n, p in self.named_points.items() if decode_params(space, p) == self.params), None)
        # scheduled_unix: the trial's start as its actor sees it (overhead benchmark)
        self.tags = Tags(
            sweep=self.sweep, backend="ray", trial_number=self.trial_id, scheduled_unix=time.time(), named_point=point
        )
        cfg = trial_config(space, self.params, space.seeds[0])
        self.evals_per_seed, self.every, self.budget = evals_per_seed(cfg), cfg.eval.every, eval_budget(space)
        self._start()

    def _start(self, resume: dict | None = None) -> None:
        """Start (again) from the first seed: seeds already finished are found in the store, never recorded twice;
        the seed a checkpoint names (`resume`) continues from its checkpoint step."""
        self.run = ConfigRun(self.space, self.tags, self.placement, resume=resume)
        self.events = self.run.events(self.params)

    def step(self) -> dict:
        """Train to the next evaluation point and report it; the last step reports the objective values."""
        while True:
            try:
                event = next(self.events)
            except StopIteration:
                return self._final()
            except TrialFailed as e:
                raise RuntimeError(f"trial failed: {e}") from None
            if event.entry is not None:
                return self._intermediate(event)

    def _intermediate(self, event: Event) -> dict:
        # ASHA's clock: evaluation points of the whole trial, counted by us rather than by Ray's
        # training_iteration, which a restored trial resumes while its interrupted seed trains from step 0.
        k = -(-event.entry["step"] // self.every)
        out: dict[str, Any] = {
            "step": event.entry["step"],
            "seed_index": event.seed_index,
            "eval_index": min(event.seed_index * self.evals_per_seed + k, self.budget - 1),
        }
        for o in self.space.objectives:
            v = eval_value(event.entry, o.metric)
            # metrics only known at the end (e.g. instability) report the worst value meanwhile
            out[o.metric] = v if v is not None else worst(o.direction)
        return out

    def _final(self) -> dict:
        records = self.run.records
        out: dict[str, Any] = {
            "done": True,
            "step": records[-1].get("steps_completed"),
            "eval_index": self.budget,
            "statuses": [r["status"] for r in records],
        }
        out.update(zip(metric_names(self.space), self.run.values()))
        return out

    def cleanup(self) -> None:
        """Stopped by the scheduler: the running seed is recorded as pruned."""
        self.run.stop()  # stopped by the scheduler: the running seed is recorded as pruned

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        """The running seed's train state is saved in its run directory in the (shared) store; Ray's checkpoint
        says which seed and where. Finished seeds need nothing: they are found in the store."""
        return self.run.checkpoint() or {}

    def load_checkpoint(self, checkpoint: dict) -> None:
        """A restarted (failed actor, preempted node) or restored (killed driver) trial: finished seeds are found in
        the store, the interrupted one resumes at its last checkpoint step."""
        self._start(resume=checkpoint or None)


class FinalValuesSearch(OptunaSearch):
    """OptunaSearch that tells the study final values only. A trial the scheduler stopped early ends with an
    evaluation point's result, not the final one (which carries `statuses`): it is told PRUNED, its last value
    already reported as an intermediate value, so early and final values never mix among COMPLETE trials."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell the study how the trial ended: its final values, PRUNED when stopped early, FAIL on error."""
        if not error and result is not None and "statuses" not in result:
            result = None  # OptunaSearch tells PRUNED when there is no value and no error
        super().on_trial_complete(trial_id, result, error)


def make_searcher(space: SearchSpace, name: str, named_points: dict | None, study_storage, max_concurrent: int | None):
    """OptunaSearch over the space (named points first), limited to `max_concurrent` trials at once."""
    from ray.tune.search import ConcurrencyLimiter

    metrics, modes = metric_names(space), [d[:3] for d in space.directions]
    single = len(metrics) == 1
    searcher = FinalValuesSearch(
        space=functools.partial(_define_by_run, space=space),
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        sampler=make_sampler(space),
        points_to_evaluate=list((named_points or {}).values()) or None,
        study_name=name,
        storage=study_storage,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=max_concurrent) if max_concurrent else searcher


def asha_settings(space: SearchSpace) -> dict | None:
    """ASHA's grace period and reduction factor from the space's pruner, in evaluation points (None: no early
    stopping, for pruner `none` or several objectives). successive_halving and hyperband give theirs
    (`min_resource`, `reduction_factor`); the others stop trials after `n_warmup_steps` at rate 2."""
    p, opts = space.pruner.name, space.pruner.options
    if p == "none" or len(space.objectives) > 1:
        return None
    if p in ("successive_halving", "hyperband"):
        grace = opts.get("min_resource", 1)
        return {
            "grace_period": 1 if grace == "auto" else max(1, int(grace)),
            "reduction_factor": opts.get("reduction_factor", 4 if p == "successive_halving" else 3),
        }
    return {"grace_period": max(1, int(opts.get("n_warmup_steps", 1))), "reduction_factor": 2}


def make_scheduler(space: SearchSpace):
    """ASHA compares trials at equal numbers of evaluation points, set by the space's pruner; FIFO (no early
    stopping) when the pruner is `none` or there are several objectives."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    settings = asha_settings(space)
    if settings is None:
        return FIFOScheduler()
    o = space.objectives[0]
    return ASHAScheduler(
        time_attr="eval_index", metric=o.metric, mode=o.direction[:3], max_t=eval_budget(space), **settings
    )


def ray_backend(
    space: SearchSpace, store: Store, settings: SweepSettings, *, max_concurrent: int | None = None, **cluster: Any
) -> dict:
    """The `ray` entry of the backend registry (`backend.BACKENDS`): `run_ray_sweep` on the `RayCluster` that the
    CLI's options (address, gpus_per_trial, ...) describe."""
    return run_ray_sweep(space, store, settings, RayCluster(**cluster), max_concurrent=max_concurrent)


def run_ray_sweep(
    space: SearchSpace,
    store: Store,
    settings: SweepSettings,
    cluster: RayCluster = LOCAL_RAY,
    *,
    max_concurrent: int | None = None,
    log=print,
) -> dict:
    """Run (or restore) a sweep with Ray Tune; returns the best config(s). With a study storage in the settings (a
    journal file or an RDB URL such as PostgreSQL) the OptunaSearch study lives there too, e.g. for
    optuna-dashboard. `cluster` says where the trials run and how large each is (default: a local Ray)."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # tiny checkpoints
    name, n_trials, url = settings.study, settings.n_trials, settings.study_storage
    study_storage = make_storage(url, name, heartbeats=False)[0] if url else None  # fail fast
    with ray_for(store, cluster) as storage:
        experiment = f"{storage}/{name}"
        log(f"[{name}] {'{:g} CPU(s) and {:g} GPU(s)'.format(*cluster.per_trial())} per trial")
        trainable = placed(
            StabenchTrainable, store, cluster, settings.tracking,
            space=space, sweep=name, named_points=settings.named_points,
        )  # fmt: skip
        progress = ProgressCallback(name, n_trials, space, log)
        if settings.resume and tune.Tuner.can_restore(experiment):
            log(f"[{name}] restoring Ray Tune experiment from {experiment}")
            tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True)
        else:
            searcher = make_searcher(space, name, settings.named_points, study_storage, max_concurrent)
            tuner = make_tuner(trainable, space, searcher, n_trials, name, storage, [progress], settings.max_failures)
        results = tuner.fit()
    # Once the sweep has ended none of its study's trials can still run; trials a killed driver asked after its
    # last experiment checkpoint would stay RUNNING in the study otherwise.
    if study_storage is not None and (n := fail_orphaned(name, study_storage)):
        log(f"[{name}] {n} trial(s) of a killed driver left running in the study: marked failed")
    return {**summarize_results(results, space), "trial_started_unix": progress.started_unix}


def make_tuner(
    trainable, space: SearchSpace, searcher, n_trials: int, name: str, storage: str, callbacks: list, max_failures: int
) -> tune.Tuner:
    """A new experiment: OptunaSearch proposes, ASHA stops, a failed actor is restarted `max_failures` times."""
    return tune.Tuner(
        trainable,
        # reuse_actors: a trial's actor trains the next trial too (StabenchTrainable.reset_config), so each trial does
        # not pay a new process's imports, data loading and device start-up
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=make_scheduler(space), num_samples=n_trials, reuse_actors=True
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # Every checkpoint is kept: a restored driver reads the experiment state its killed predecessor saved
            # last, which may name a checkpoint already superseded (and deleted, with num_to_keep=1) when it died.
            # Each is a few bytes (which seed, which run directory; the train state lives in the store).
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=None),
        ),
    )


def summarize_results(results, space: SearchSpace) -> dict:
    """Trial counts and the best result of a finished Tune run."""
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
        """Note when the driver saw the trial start."""
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
        """Log a finished trial (or one the scheduler stopped) and keep the best value."""
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
        """Log an errored trial."""
        self.log(f"ray trial {trial.trial_id} errored  {self._line(trials)}")


def _run_job(config: dict, jobs: list, placement: Placement) -> None:
    """One fixed job of `run_ray_jobs`: the grid's value says which."""
    placement.enter()
    name, cfg, tags = jobs[config["job"]]
    cfg = cfg.on_device(placement.device)
    rec = run_trial(cfg, placement.store_root, tags=tags, tracking=placement.tracking)
    tune.report({"status_ok": rec["status"] == Status.OK, "done": True})


def run_ray_jobs(
    jobs: list[tuple[str, Any, dict]],
    store: Store,
    cluster: RayCluster = LOCAL_RAY,
    *,
    name: str = "baselines",
    tracking: TrackingSettings | None = None,
) -> None:
    """Run fixed (name, config, tags) jobs as Ray Tune trials (a grid over job indices)."""
    with ray_for(store, cluster) as storage:
        trainable = placed(_run_job, store, cluster, tracking, jobs=jobs)
        tune.Tuner(
            trainable,
            param_space={"job": tune.grid_search(list(range(len(jobs))))},
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
        ).fit()

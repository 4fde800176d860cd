"""Ray Tune backend: the same sampled configs and records as the Optuna backend, run on a Ray cluster.

`Tuner(with_resources(StabenchTrainable), TuneConfig(search_alg=OptunaSearch, scheduler=ASHA), RunConfig)`.
The trainable is a class so that a trial stopped by ASHA still finishes its record (status `pruned`)
in `cleanup()`: Ray calls it between two `step()`s, never in the middle of training.

The study is the truth, as on the Optuna backend: it lives in a storage (default: the journal under the store), its
space is checked, `n_trials` is its total, and a trial counts as finished only once its records are in the
driver's store (every trial proves first that it writes there: `ray_cluster.prove_store`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna

from ..errors import UserError, missing_extra

try:
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
except ImportError as e:  # an optional dependency (pyproject.toml's [ray] extra): the default backend runs without it
    raise missing_extra(e, "ray", "Ray Tune (--backend ray, baselines --backend ray, validate)") from None

from ..engine.trial import PREEMPTION, Preempted, request_preemption
from ..records.record import Status, Tags, eval_value, worst
from ..records.store import Store
from ..records.tracking import TrackingSettings
from .core import ConfigRun, Event, Placement, SweepSettings, TrialFailed, run_job
from .ray_cluster import (
    LOCAL_RAY,
    UNREACHABLE,
    RayCluster,
    StoreProof,
    mark_preempted,
    on_assigned_device,
    placed,
    preempting,
    prove_store,
    ray_for,
    store_proof,
)
from .space import SearchSpace, decode_params, suggest, trial_config
from .study import (
    WORKER_ATTR,
    check_same_space,
    counts,
    default_journal,
    describe_study,
    fail_orphaned,
    fail_running,
    is_finished,
    legacy_journal_note,
    make_sampler,
    make_storage,
    set_attr_unless_finished,
    summarize_study,
)
from .workers import PREEMPTED_EXIT, owner, sigterm_requests

CHECKPOINTS_KEPT = 2  # Ray checkpoints per trial: the last one and the one before it (a few bytes each)


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

    def setup(
        self, config: dict, space: SearchSpace, sweep: str, placement: Placement, named_points: dict, proof: StoreProof
    ):
        """Tune's start of a trial: `config` is its sampled params, the rest comes from `with_parameters`."""
        placement = on_assigned_device(placement)
        placement.enter()
        self.space, self.sweep, self.placement, self.named_points = space, sweep, placement, named_points
        self.proof = proof
        PREEMPTION.clear()  # this actor's process may have obeyed an earlier driver's preemption
        watch_for_preemption(proof)
        self._begin(config)

    def reset_config(self, new_config: dict) -> bool:
        """Tune hands this actor the next trial (`reuse_actors`): the previous trial ends as `cleanup` would end it
        (a running seed the scheduler stopped is recorded as pruned) and the process, its imports and its device
        stay warm for the next one."""
        self._stop()
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
        self.steps = cfg.optim.steps
        # before any training, on whatever node this is: do records written here reach the driver's store?
        self.store_problem = prove_store(self.proof)
        self.run: ConfigRun | None = None
        if self.store_problem is None:
            self._start()

    def _stop(self) -> None:
        if self.run is not None:
            self.run.stop()  # the running seed is recorded as pruned

    def _start(self, resume: dict | None = None) -> None:
        """Start (again) from the first seed: seeds already finished are found in the store, never recorded twice;
        the seed a checkpoint names (`resume`) continues from its checkpoint step."""
        self.run = ConfigRun(self.space, self.tags, self.placement, resume=resume)
        self.events = self.run.events(self.params)

    def step(self) -> dict:
        """Train to the next evaluation point and report it; the last step reports the objective values. A trial
        whose records would not reach the driver's store ends at once, for good (an error would be retried)."""
        if self.store_problem is not None:
            return self._unreachable_store()
        while True:
            try:
                event = next(self.events)
            except StopIteration:
                return self._final()
            except TrialFailed as e:
                raise RuntimeError(f"trial failed: {e}") from None
            except Preempted as e:  # the driver is being preempted: Tune stops this actor and ignores the result
                self.run = None  # nothing left to stop: the seed is checkpointed and its claim released
                return {"preempted_at": e.step}
            if event.entry is not None and not self._last_evaluation(event):
                return self._intermediate(event)

    def _last_evaluation(self, event: Event) -> bool:
        """The last seed's final evaluation: not reported on its own but as the final result, so that no ASHA rung
        falls on it and a trial that trained every step is never stopped (and told PRUNED) there."""
        return event.seed_index == len(self.space.seeds) - 1 and event.entry["step"] >= self.steps

    def _unreachable_store(self) -> dict:
        out: dict[str, Any] = {"done": True, "eval_index": self.budget, "store_error": self.store_problem}
        out.update({o.metric: math.nan for o in self.space.objectives})  # no value (TensorBoard skips NaN)
        return out

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
        assert self.run is not None  # step() reaches _final only with a run
        records = self.run.records
        out: dict[str, Any] = {
            "done": True,
            "step": records[-1].get("steps_completed"),
            "eval_index": self.budget,
            # strings, not lists: TensorBoard's logger would warn about a list on every run
            "statuses": ",".join(r["status"] for r in records),
            "run_ids": ",".join(r["run_id"] for r in records),
        }
        out.update(zip(metric_names(self.space), self.run.values()))
        return out

    def cleanup(self) -> None:
        """Stopped by the scheduler: the running seed is recorded as pruned. Stopped because the driver is being
        preempted: nothing is recorded; the seed continues from its checkpoint when the experiment is restored."""
        if not preempting(self.proof):
            self._stop()

    def save_checkpoint(self, checkpoint_dir: str) -> dict:
        """The running seed's train state is saved in its run directory in the (shared) store; Ray's checkpoint
        says which seed and where. Finished seeds need nothing: they are found in the store."""
        return (self.run.checkpoint() if self.run is not None else None) or {}

    def load_checkpoint(self, checkpoint: dict) -> None:
        """A restarted (failed actor, preempted node) or restored (killed driver) trial: finished seeds are found in
        the store, the interrupted one resumes at its last checkpoint step."""
        if self.store_problem is None:
            self._start(resume=checkpoint or None)


def watch_for_preemption(proof: StoreProof, every_s: float = 1.0) -> threading.Event:
    """In a trial's actor: once its driver says it is being preempted (`mark_preempted`), the running seed
    checkpoints after its current step and stops (`request_preemption`), before Tune ends the actor. Setting the
    returned event ends the watch (a job that finished: a reused actor does not gather watchers)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(every_s):
            if preempting(proof):
                request_preemption()
                return

    threading.Thread(target=watch, name="stabench-preemption", daemon=True).start()
    return done


def trial_outcome(result: dict | None, store_root: Path) -> tuple[str, str | None]:
    """How a Tune trial ended, judged by the driver: ("complete", None) once every record it names is in the driver's
    store; ("failed", why) when its store was not the driver's or a record is missing there; ("pruned", None) when
    the scheduler stopped it before its final result."""
    result = result or {}
    if result.get("store_error"):
        return "failed", str(result["store_error"])
    if "statuses" not in result:
        return "pruned", None
    run_ids = [r for r in str(result.get("run_ids", "")).split(",") if r]
    missing = [r for r in run_ids if not (store_root / r / "record.json").is_file()]
    if missing or not run_ids:
        return "failed", f"record(s) {', '.join(missing) or '(none named)'} not in the driver's store {store_root}"
    return "complete", None


class FinalValuesSearch(OptunaSearch):
    """OptunaSearch that tells the study final values only, and only for records that reached the driver's store.
    A trial the scheduler stopped early ends with an evaluation point's result, not the final one (which carries
    `statuses`): it is told PRUNED, its last value already reported as an intermediate value, so early and final
    values never mix among COMPLETE trials. A trial whose records are not in the driver's store is told FAIL with
    the reason in its `error` attribute. Every trial it asks names its owner, this driver and its run token
    `<experiment>@<id>` (`workers.owner`), so that a driver fails only its own trials (`study.fail_orphaned`), and
    `--resume` only the restored experiment's (`of_experiment`)."""

    def __init__(self, *args, run_token: str, store_root: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_token, self.store_root = run_token, store_root  # pickled with the searcher: a restore keeps them

    def suggest(self, trial_id: str) -> dict | None:
        """Ask the study for a config; tag the new trial with its owner (this driver's run) and Tune's trial id."""
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr(WORKER_ATTR, owner(self.run_token))  # this driver and its run
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tell the study how the trial ended: its final values, PRUNED when stopped early, FAIL on error or when
        its records are not in the driver's store. A trial the study already holds as finished is not told again
        (a killed driver told it after its last experiment checkpoint; the restored copy ran it once more)."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None or trial_id in self._completed_trials:
            return super().on_trial_complete(trial_id, result, error)
        study = self._ot_study
        if is_finished(study, ot_trial):
            print(f"[{study.study_name}] trial {ot_trial.number} was finished by an earlier driver; not told again")
            self._completed_trials.add(trial_id)
            return None
        if not error:
            outcome, why = trial_outcome(result, Path(self.store_root))
            if outcome == "failed":
                set_attr_unless_finished(study, ot_trial, "error", str(why)[:500], print)
                result, error = None, True
            elif outcome == "pruned":
                result = None  # OptunaSearch tells PRUNED when there is no value and no error
            else:
                run_ids = str(result["run_ids"]).split(",")  # type: ignore[index]
                set_attr_unless_finished(study, ot_trial, "run_ids", run_ids, print)
        return super().on_trial_complete(trial_id, result, error)


def make_searcher(
    space: SearchSpace,
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    named_points: dict | None,
    max_concurrent: int | None,
    run_token: str,
    store_root: Path,
):
    """OptunaSearch over the study (named points not yet in it first), limited to `max_concurrent` trials at once.
    Its seeded sampler is offset by the study's trial count, so that a re-run continues the search instead of
    proposing the same configs again."""
    from ray.tune.search import ConcurrencyLimiter

    metrics, modes = metric_names(space), [d[:3] for d in space.directions]
    single = len(metrics) == 1
    seen = [t.params for t in study.get_trials(deepcopy=False)]
    points = [p for p in (named_points or {}).values() if p not in seen]
    searcher = FinalValuesSearch(
        space=functools.partial(_define_by_run, space=space),
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        sampler=make_sampler(space, seed_offset=len(study.trials)),
        points_to_evaluate=points or None,
        study_name=study.study_name,
        storage=storage,
        run_token=run_token,
        store_root=str(store_root),
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


def open_ray_study(
    space: SearchSpace, name: str, storage: optuna.storages.BaseStorage, url: str, store_root: Path
) -> optuna.Study:
    """The sweep's study, created or loaded as the Optuna backend does; a study run with another space is refused
    (`check_same_space`) before Ray starts."""
    kw = {"directions": space.directions} if len(space.objectives) > 1 else {"direction": space.directions[0]}
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True, **kw)
    check_same_space(study, space, url, store_root)
    describe_study(study, space, "ray")
    return study


def of_experiment(experiment: str):
    """The `dead` test of `study.fail_running` that picks the trials of any driver run of this Ray experiment (their
    run token is `<experiment>@<id>`): after `--resume` restored it, none of them can still run."""
    return lambda worker: isinstance(worker, dict) and str(worker.get("run", "")).startswith(f"{experiment}@")


def counted(study: optuna.Study) -> int:
    """The study's trials that count towards `n_trials`, as on the Optuna backend: finished or still running."""
    c = counts(study)
    return c["complete"] + c["pruned"] + c["running"]


def run_ray_sweep(
    space: SearchSpace,
    store: Store,
    settings: SweepSettings,
    cluster: RayCluster = LOCAL_RAY,
    *,
    max_concurrent: int | None = None,
    log=print,
) -> dict:
    """Run (or continue) a sweep with Ray Tune until its study holds `settings.n_trials` trials; returns the
    summary (the study's counts and best trial, the records that reached the store). The study lives in
    `settings.study_storage` (a journal file or an RDB URL such as PostgreSQL), by default in the journal under
    the store, as on the Optuna backend. With `resume`, a killed driver's experiment is restored first; a budget
    larger than the study holds runs a new Tuner for the remainder. `cluster` says where the trials run and how
    large each is (default: a local Ray). Raises a UserError when a trial's records cannot reach the store."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # tiny checkpoints
    name, n_trials = settings.study, settings.n_trials
    url = settings.study_storage
    if url is None:
        if note := legacy_journal_note(store.root, name):
            log(f"[{name}] note: {note}")
        url = str(default_journal(store.root, name))
    study_storage = make_storage(url, name, heartbeats=False)[0]  # fails fast, before Ray starts
    study = open_ray_study(space, name, study_storage, url, store.root)
    run = RayRun(space, store, settings, study, study_storage, log)
    with ray_for(store, cluster) as storage, store_proof(store.root) as proof, preemptible(proof, log) as preempted:
        experiment = f"{storage}/{name}"
        log(f"[{name}] {cluster.describe_per_trial()}")
        trainable = placed(
            StabenchTrainable, store, cluster, settings.tracking,
            space=space, sweep=name, named_points=settings.named_points, proof=proof,
        )  # fmt: skip
        if settings.resume and tune.Tuner.can_restore(experiment):
            log(f"[{name}] restoring Ray Tune experiment from {experiment}")
            run.fit(tune.Tuner.restore(experiment, trainable, resume_errored=True))
            # The restored experiment has ended: its trials still RUNNING were asked by the killed driver after its
            # last experiment checkpoint, and will never run. They must not count towards the budget below.
            if not preempted and (n := fail_running(study, of_experiment(experiment), requeue=False)):
                log(f"[{name}] {n} trial(s) of the killed driver left running in the study: marked failed")
        if preempted:
            pass  # no new trials: the experiment Tune just saved is the one to restore
        elif (left := n_trials - counted(study)) > 0:
            run.token = f"{experiment}@{uuid.uuid4().hex[:8]}"  # this driver's trials (another may share the path)
            searcher = make_searcher(
                space, study, study_storage, settings.named_points, max_concurrent, run.token, store.root
            )
            run.fit(make_tuner(trainable, space, searcher, left, name, storage, [run.progress], settings.max_failures))
        else:
            log(f"[{name}] the study holds {counted(study)} of {n_trials} trials: nothing to run")
    if preempted:
        log(f"[{name}] preempted (SIGTERM): Ray Tune saved the experiment and each running seed its checkpoint; "
            "run the same command with --resume to continue them")  # fmt: skip
        raise SystemExit(PREEMPTED_EXIT)
    # Once the sweep has ended none of this driver's trials can still run (Tune asks the searcher only for trials
    # it then runs; this is a safety net). Other drivers' trials are theirs.
    if run.token and (n := fail_orphaned(name, study_storage, run=run.token)):
        log(f"[{name}] {n} trial(s) of this run left running in the study: marked failed")
    return run.summary()


# After SIGTERM, the driver exits 75 at the latest this long after. Tune saves its experiment state within a second
# of the signal; what can take longer is stopping the trial actors, and when the scheduler signalled Ray's own
# processes too (SLURM signals the whole job), Ray waits 60 s for a GCS that is gone before it ends the driver.
PREEMPTION_GRACE_S = 20.0


@contextlib.contextmanager
def preemptible(proof: StoreProof, log=print, rerun: str = "run again with --resume"):
    """While inside, SIGTERM (a preempting scheduler: SLURM, Kubernetes) tells this driver's trials that a
    preemption is coming (each checkpoints its running seed and records nothing) and stops Tune as Ctrl+C does
    (it saves the experiment state one last time, so that `--resume` restores it). Yields a list that is
    non-empty once that happened."""
    preempted: list[bool] = []
    timer = threading.Timer(PREEMPTION_GRACE_S, lambda: give_up(proof, log, rerun))
    timer.daemon = True

    def on_term() -> None:
        if not preempted:
            preempted.append(True)
            mark_preempted(proof)
            timer.start()
            os.kill(os.getpid(), signal.SIGINT)  # Tune's graceful stop, or KeyboardInterrupt outside Tuner.fit

    try:
        with sigterm_requests(on_term):
            yield preempted
    except KeyboardInterrupt:
        if not preempted:
            raise
    finally:
        timer.cancel()  # Tune stopped in time: the driver exits 75 itself


def give_up(proof: StoreProof, log, rerun: str) -> None:
    """Tune did not stop within PREEMPTION_GRACE_S of the SIGTERM; what a re-run needs is saved: exit 75 now."""
    log(f"preempted (SIGTERM): Ray did not stop its trials in time; exiting, {rerun}")
    for path in (Path(proof.path) / proof.name, proof.preempted_flag):
        path.unlink(missing_ok=True)
    os._exit(PREEMPTED_EXIT)


class RayRun:
    """One `run_ray_sweep` call: its Tuner fits, its progress lines and what it found in the driver's store."""

    def __init__(self, space: SearchSpace, store: Store, settings: SweepSettings, study, storage, log):
        self.space, self.store, self.study, self.log = space, store, study, log
        self.token = ""  # the run token of this driver's new Tuner (its trials' `worker.run`), if it made one
        self.progress = ProgressCallback(settings.study, settings.n_trials, space, log, store.root, counted(study))
        self.trials = self.errors = 0
        self.failures: list[str] = []  # trials whose records did not reach the driver's store, and why

    def fit(self, tuner: tune.Tuner) -> None:
        """Run one Tuner to its end and keep what its trials left in the driver's store."""
        results = tuner.fit()
        self.trials += len(results)
        self.errors += results.num_errors
        for r in results:
            outcome, why = trial_outcome(r.metrics, self.store.root)
            if outcome == "failed":
                self.failures.append(f"trial {r.metrics.get('trial_id', '?')}: {why}")

    def summary(self) -> dict:
        """The study's counts and best trial, Tune's trial and error counts, the records of this sweep in the
        driver's store. Raises a UserError naming each trial whose records did not reach the store."""
        if self.failures:
            shown = "; ".join(self.failures[:5]) + (
                f" (and {len(self.failures) - 5} more)" if len(self.failures) > 5 else ""
            )
            raise UserError(
                f"{len(self.failures)} trial(s) could not record to the driver's store {self.store.root} and were "
                f"marked failed in the study: {shown}",
                key="store",
                allowed="a folder every Ray node mounts at the same path (NFS, a cluster filesystem)",
            )
        records = sum(1 for _ in self.store.records(sweep=self.study.study_name))
        return {
            **summarize_study(self.study, self.space),
            "trials": self.trials,
            "errors": self.errors,
            "finished": self.progress.finished,
            "records": records,
            "trial_started_unix": self.progress.started_unix,
        }


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
            verbose=1,  # Tune's own status table, every 30 s or so, beside our one line per finished trial
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # Each checkpoint is a few bytes (which seed, which run directory; the train state lives in the store).
            # With num_to_keep set, Tune saves the experiment state every num_to_keep checkpoints, so a restored
            # driver never reads a state naming a checkpoint already deleted.
            checkpoint_config=tune.CheckpointConfig(checkpoint_frequency=1, num_to_keep=CHECKPOINTS_KEPT),
        ),
    )


class ProgressCallback(tune.Callback):
    """One line per finished trial: done (records in the driver's store) / running / pruned / failed, best so far."""

    def __init__(self, name: str, n_trials: int, space: SearchSpace, log, store_root: Path, done_before: int = 0):
        self.name, self.n_trials, self.space, self.log = name, n_trials, space, log
        self.store_root, self.done_before = store_root, done_before
        self.best: float | None = None
        self.finished = self.pruned = self.failed = 0
        self.started_unix: dict[str, float] = {}  # driver-side start of each trial (overhead benchmark)

    def on_trial_start(self, iteration, trials, trial, **info):
        """Note when the driver saw the trial start."""
        self.started_unix[trial.trial_id] = time.time()

    def _line(self, trials, finishing=None) -> str:
        running = sum(t.status == "RUNNING" for t in trials if t is not finishing)  # Tune marks it after us
        done = self.done_before + self.finished + self.pruned
        line = (
            f"[{self.name}] done {done}/{self.n_trials} | running {running} | pruned {self.pruned} | "
            f"failed {self.failed}"
        )
        if self.best is not None:
            line += f" | best {self.space.objectives[0].metric}={self.best:.4g}"
        return line

    def on_trial_complete(self, iteration, trials, trial, **info):
        """Log a finished trial (only once its records are in the driver's store), a stopped or a failed one."""
        o = self.space.objectives[0]
        outcome, why = trial_outcome(trial.last_result, self.store_root)
        if outcome == "failed":
            self.failed += 1
            self.log(f"ray trial {trial.trial_id} FAILED: {why}  {self._line(trials, trial)}")
            return
        if outcome == "pruned":
            self.pruned += 1
            self.log(f"ray trial {trial.trial_id} stopped early by the scheduler  {self._line(trials, trial)}")
            return
        self.finished += 1
        value = trial.last_result.get(o.metric)
        if value is not None and math.isfinite(value):
            better = self.best is None or (value < self.best if o.direction == "minimize" else value > self.best)
            self.best = value if better else self.best
        self.log(f"ray trial {trial.trial_id} finished {o.metric}={value}  {self._line(trials, trial)}")

    def on_trial_error(self, iteration, trials, trial, **info):
        """Log an errored trial."""
        self.failed += 1
        self.log(f"ray trial {trial.trial_id} errored  {self._line(trials)}")


def _run_job(config: dict, jobs: list, placement: Placement, proof: StoreProof) -> None:
    """One fixed job of `run_ray_jobs`: the grid's value says which. It continues the run folder a preempted or
    dead run of its config and seed left; when its driver is preempted it checkpoints and ends without a result."""
    if problem := prove_store(proof):
        raise RuntimeError(problem)
    placement = on_assigned_device(placement)
    store = placement.enter()
    PREEMPTION.clear()  # this actor's process may have obeyed an earlier driver's preemption
    watching = watch_for_preemption(proof)
    name, cfg, tags = jobs[config["job"]]
    cfg = cfg.on_device(placement.device)
    try:
        rec = run_job(cfg, store, tags=tags, tracking=placement.tracking)
    except Preempted:  # checkpointed and marked: the driver's re-run continues it
        return
    finally:
        watching.set()
    tune.report({"status_ok": rec["status"] == Status.OK, "done": True})


def run_ray_jobs(
    jobs: list[tuple[str, Any, dict]],
    store: Store,
    cluster: RayCluster = LOCAL_RAY,
    *,
    name: str = "baselines",
    tracking: TrackingSettings | None = None,
) -> None:
    """Run fixed (name, config, tags) jobs as Ray Tune trials (a grid over job indices). Raises a UserError when a
    job's node could not record to the store (its record would be missing without a word)."""
    rerun = "run the same command again"
    with (
        ray_for(store, cluster) as storage,
        store_proof(store.root) as proof,
        preemptible(proof, rerun=rerun) as preempted,
    ):
        trainable = placed(_run_job, store, cluster, tracking, jobs=jobs, proof=proof)
        results = tune.Tuner(
            trainable,
            param_space={"job": tune.grid_search(list(range(len(jobs))))},
            run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0),
        ).fit()
    if preempted:
        print(f"preempted (SIGTERM): each running job checkpointed its seed; {rerun} to continue")
        raise SystemExit(PREEMPTED_EXIT)
    unreachable = [str(e) for e in results.errors if UNREACHABLE in str(e)]
    if unreachable:
        why = next(line.strip() for line in unreachable[0].splitlines() if UNREACHABLE in line)
        raise UserError(
            f"{len(unreachable)} of {len(jobs)} Ray job(s) could not record to the store: {why}",
            key="store",
            allowed="a folder every Ray node mounts at the same path (NFS, a cluster filesystem)",
        )

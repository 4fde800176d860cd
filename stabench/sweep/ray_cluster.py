"""Joining a Ray cluster, or starting a local Ray, for the duration of a run (fails fast and says why); the run's
Ray folder, the check that every node shares it and the store, and trainables placed on their resources."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..records.store import Store
from .core import Placement

RAY_ADDRESSES = "omit it for a local Ray, 'auto' for the cluster this machine belongs to, host:port or ray://host:port"
# What the workers need of the driver's environment: data and cache locations, and W&B's mode and destination (a
# worker on another node has none of them).
FORWARDED_ENV = (
    "STABENCH_INCEPTION_WEIGHTS",
    "STABENCH_CACHE",
    "WANDB_MODE",
    "WANDB_ENTITY",
    "WANDB_PROJECT",
    "WANDB_BASE_URL",
)
# Credentials travel only when asked (FORWARD_SECRETS=1): Ray shows a job's runtime_env, env_vars included, to
# whoever reaches its dashboard or state API (`ray list jobs --detail`). Workers read the W&B key from their own
# environment or ~/.netrc (`wandb login` on each node); a local Ray's workers inherit the driver's (docs/security.md).
SECRET_ENV = ("WANDB_API_KEY",)
FORWARD_SECRETS = "STABENCH_RAY_FORWARD_SECRETS"


def forwarded_env() -> dict[str, str]:
    """The driver's variables a Ray job's workers get (its runtime_env's env_vars): FORWARDED_ENV, and SECRET_ENV
    only when $STABENCH_RAY_FORWARD_SECRETS is 1."""
    names = FORWARDED_ENV + (SECRET_ENV if os.environ.get(FORWARD_SECRETS) == "1" else ())
    return {k: os.environ[k] for k in names if k in os.environ}


def cluster_address(address: str | None) -> str | None:
    """The Ray cluster a run joins: `--address`, else $RAY_ADDRESS (`ray job submit` sets it for the driver), else
    None (a local Ray on this machine, which has the data the driver sees)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on (ray.init would retry for minutes)."""
    hostport = address.split("://", 1)[-1]
    if address == "auto" or ":" not in hostport:
        return
    host, port = hostport.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot reach Ray at '{address}' ({e})", key="address", allowed=RAY_ADDRESSES) from None


def init_ray(address: str | None, num_cpus: int | None = None, ship_code: bool = False) -> bool:
    """Connect to (or start) Ray; returns True when this call initialised it. With `ship_code`, this stabench
    package travels to the workers in the runtime_env (`py_modules`): nodes need its dependencies, not its code."""
    import ray

    if ray.is_initialized():
        return False
    address = cluster_address(address)  # `ray job submit` sets $RAY_ADDRESS: join that cluster
    if address:
        check_reachable(address)
    env = forwarded_env()
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", **env}},
    }
    if ship_code:
        kwargs["runtime_env"]["py_modules"] = [str(Path(__file__).resolve().parents[1])]  # the stabench package
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
    except Exception as e:  # unreachable address, version mismatch, ...
        failed = f"cannot connect to Ray at '{address}'"
        raise UserError.caused_by(e, failed, key="address", allowed=RAY_ADDRESSES) from None
    return True


@dataclass(frozen=True)
class RayCluster:
    """Where Ray trials run and how large each is: the cluster (`address`; None starts a local Ray of `num_cpus`,
    None: every core), Ray Tune's folder (`ray_dir`; None: under the store), the resources of one trial, and
    whether this checkout's stabench travels to the workers (`ship_code`)."""

    address: str | None = None
    ray_dir: str | None = None
    num_cpus: int | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float | None = None  # None: one per trial while the cluster has GPUs, else none
    ship_code: bool = False

    def __post_init__(self) -> None:
        # A trial trains on one device: a second GPU would be reserved and idle.
        if self.gpus_per_trial is not None and self.gpus_per_trial > 1:
            raise UserError(
                f"{self.gpus_per_trial:g} GPUs per trial: a trial trains on one device (no data parallelism), so "
                "every GPU past the first would idle",
                key="gpus_per_trial",
                allowed="a number from 0 to 1 (fractions share a GPU: 0.25 = four trials per GPU)",
            )

    def trial_resources(self) -> dict[str, float] | functools.partial:
        """What each trial asks Ray for, once Ray is up: the GPUs as given; by default a callable that Tune asks as
        it creates each trial, so the GPU default follows the cluster as it is then (`resources_now`). On a
        cluster joined by address with no GPU up yet (scaling from zero), the default would run every trial on
        a CPU: a UserError asks for --gpus-per-trial instead."""
        if self.gpus_per_trial is not None:
            return {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial}
        import ray

        if cluster_address(self.address) and cluster_gpus() < 1:
            nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
            raise UserError(
                f"the Ray cluster has no GPU up ({nodes} node(s), {ray.cluster_resources().get('CPU', 0):g} CPUs), so "
                "the default of one GPU per trial while the cluster has GPUs would train every trial on a CPU; "
                "say what each trial needs",
                key="gpus_per_trial",
                allowed="1 (trials wait for GPU nodes, e.g. an autoscaler's), a fraction, or 0 (train on CPUs)",
            )
        return functools.partial(resources_now, self.cpus_per_trial)

    def describe_per_trial(self) -> str:
        """The resources of one trial, in words."""
        gpus = (
            f"{self.gpus_per_trial:g} GPU(s)"
            if self.gpus_per_trial is not None
            else f"1 GPU while the cluster has one (now {cluster_gpus():g} GPUs), else none"
        )
        return f"{self.cpus_per_trial:g} CPU(s) and {gpus} per trial"


def cluster_gpus() -> float:
    """The GPUs of the Ray cluster's alive nodes, now."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def resources_now(cpus: float, config: dict):
    """One trial's resources, asked by Tune as it creates the trial: one GPU when the cluster has one now."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    return resource_dict_to_pg_factory({"cpu": cpus, "gpu": 1.0 if cluster_gpus() >= 1 else 0.0})


LOCAL_RAY = RayCluster()  # a local Ray on every core, one CPU per trial


def on_assigned_device(placement: Placement) -> Placement:
    """In a Ray trial: its placement on the device Ray assigned it. cpu when it holds no GPU (Ray hides none from a
    zero-GPU actor, so `auto` would pick GPU 0 on every trial); with a GPU share, the config's device (`auto` is the
    GPU Ray assigned, the only one it leaves visible)."""
    import ray

    return replace(placement, device=None if ray.get_gpu_ids() else "cpu")


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None, ship_code: bool = False):
    """Ray for the duration of a sweep: joined or started here (and then shut down here)."""
    import ray

    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    started = init_ray(address, num_cpus, ship_code)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def probe_shared_dir(path: str, name: str, token: str) -> str | None:
    """On a node: None when `path` is the driver's folder (it holds the driver's token file) and writable here;
    else what is wrong."""
    if not (Path(path) / name).is_file():
        return f"{path} does not hold the driver's probe file (a different disk, or not mounted)"
    if (Path(path) / name).read_text() != token:
        return f"{path}/{name} holds another token (a different folder of the same name)"
    mine = Path(path) / f"{name}.{socket.gethostname()}.{os.getpid()}"
    try:
        mine.write_text(token)
        mine.unlink()
    except OSError as e:
        return f"cannot write in {path}: {e}"
    return None


UNREACHABLE = "cannot record to the driver's store"  # what `prove_store` says of a node that fails


@dataclass(frozen=True)
class StoreProof:
    """The driver's token in its store: a trial that finds it at its own store path records where the driver
    reads (`prove_store`)."""

    path: str
    name: str
    token: str

    @property
    def preempted_flag(self) -> Path:
        """Beside the token while the driver is being preempted: its trials are stopped to resume, not pruned."""
        return Path(self.path) / f"{self.name}.preempted"


@contextlib.contextmanager
def store_proof(root: Path) -> Iterator[StoreProof]:
    """The driver's token written into the store for the duration of a run (a new token per run)."""
    name, token = f".stabench-driver-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    path = Path(root).absolute()
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(token)
    proof = StoreProof(str(path), name, token)
    try:
        yield proof
    finally:
        (path / name).unlink(missing_ok=True)
        proof.preempted_flag.unlink(missing_ok=True)


def mark_preempted(proof: StoreProof) -> None:
    """Tell every trial of this driver, on whatever node, that the stop coming is a preemption (`preempting`)."""
    proof.preempted_flag.touch()


def preempting(proof: StoreProof) -> bool:
    """Is this driver being preempted? Read by a trial Tune stops: it keeps its checkpoint instead of recording
    its running seed as pruned."""
    return proof.preempted_flag.exists()


def node_name() -> str:
    """This process's machine as a message names it: host name and, inside Ray, the node id."""
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside a Ray worker
        node = None
    return socket.gethostname() + (f" (Ray node {node[:12]})" if node else "")


def prove_store(proof: StoreProof) -> str | None:
    """On whatever node a trial lands, before it trains: None when the store at the driver's path holds the
    driver's token and is writable here; else why this node's records would not reach the driver's store."""
    problem = probe_shared_dir(proof.path, proof.name, proof.token)
    if problem is None:
        return None
    return f"node {node_name()} {UNREACHABLE} {proof.path}: {problem}"


def check_shared(paths: dict[str, Path]) -> None:
    """Before any trial: every alive node of the Ray cluster sees each of `paths` (e.g. the record store) as the
    driver does and can write there, so that a record written on a worker reaches the driver's store. Fails with a
    UserError naming the folder and the nodes that do not share it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(probe_shared_dir)
    for key, path in paths.items():
        path.mkdir(parents=True, exist_ok=True)
        name, token = f".stabench-shared-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
        (path / name).write_text(token)
        try:
            answers = ray.get([
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                    str(path.absolute()), name, token
                )
                for n in nodes
            ])  # fmt: skip
        finally:
            (path / name).unlink(missing_ok=True)
        problems = [f"{n.get('NodeManagerHostname', n['NodeID'])}: {a}" for n, a in zip(nodes, answers) if a]
        if problems:
            raise UserError(
                f"{path} is not shared with every Ray node; " + "; ".join(problems),
                key=key,
                allowed="a folder every node mounts at the same path (NFS, a cluster filesystem)",
            )


# ---------------------------------------------------------------------------------------------
# A run's Ray: its folder, the session, and trainables placed on their resources
# ---------------------------------------------------------------------------------------------


def default_ray_dir(store: Store) -> Path:
    """Ray Tune's experiment folder when none is given: under the store, which every node must share anyway."""
    return store.root / "ray"


def ray_folder(store: Store, ray_dir: str | None) -> str:
    """Ray Tune's storage path: a URI as given (s3://, gs://, ...), else an absolute folder (default: under the
    store)."""
    if ray_dir is not None and "://" in ray_dir:
        return ray_dir
    return str(Path(ray_dir or default_ray_dir(store)).absolute())


@contextlib.contextmanager
def ray_for(store: Store, cluster: RayCluster):
    """Ray joined or started for a run over `store`, every node checked to share the store (and Ray's folder,
    unless it is a URI); yields Ray Tune's storage path."""
    storage = ray_folder(store, cluster.ray_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    with ray_session(cluster.address, cluster.num_cpus, cluster.ship_code):
        check_shared({"store": store.root} | ({} if "://" in storage else {"ray_dir": Path(storage)}))
        yield storage


def placed(trainable, store: Store, cluster: RayCluster, tracking, **params):
    """`trainable` with its parameters and the cluster's resources per trial (`RayCluster.trial_resources`); its
    `Placement`: the store, torch threads from its CPUs and tracking (the device follows the GPUs Ray assigns:
    `on_assigned_device`)."""
    from ray import tune

    placement = Placement(str(store.root), threads=max(1, int(cluster.cpus_per_trial)), tracking=tracking)
    resources = cluster.trial_resources()
    return tune.with_resources(tune.with_parameters(trainable, placement=placement, **params), resources)

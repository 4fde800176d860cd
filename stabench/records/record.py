"""The result record of one trial: what ran (config, hash, seed, versions, device) and what happened.

Records are plain JSON (non-finite floats become null; the status says why) written atomically:
a reader sees either the whole file or none of it, even if the writer is killed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import TrialConfig, config_hash, config_to_dict
from ..files import atomic_write_text
from .metrics import METRICS, TEXT_METRICS

SCHEMA_VERSION = 2  # 2: decoder-side probe readout, probe gradient norm, weighting-free instability


class Status(StrEnum):
    """A record's status. Members are strings, so records stay plain JSON."""

    RUNNING = "running"  # in memory only: a record on disk has finished one way or another
    OK = "ok"
    DIVERGED = "diverged"  # a result: counted as the worst value, never dropped
    PRUNED = "pruned"  # stopped early by a search backend
    FAILED = "failed"  # an exception during training; the record keeps its traceback tail
    DUPLICATE = "duplicate"  # a second finished copy of a (config, seed, sweep); kept, never counted


FINISHED = frozenset({Status.OK, Status.DIVERGED})  # the records that count on leaderboards and objectives


@dataclass(frozen=True)
class Tags:
    """Where a record comes from: stored in `record["tags"]` (None fields are left out)."""

    sweep: str | None = None  # the sweep (Optuna study / Ray experiment) or "baselines"
    backend: str | None = None  # optuna, ray or local
    trial_number: int | str | None = None  # the backend's trial id within the sweep
    scheduled_unix: float | None = None  # when the backend scheduled the trial (start-up overhead)
    reference: str | None = None  # a baselines/*.yaml config run by `stabench baselines` (stored as "baseline")
    named_point: str | None = None  # a baseline's values as a point of a sweep's space (stored as "baseline_point")
    job_type: str | None = None  # confirm, for `stabench confirm`
    seed_index: int | None = None
    params: dict | None = None  # the sampled values of the space's keys

    def to_dict(self) -> dict:
        """The tags as stored in a record (the store's historical names, None fields left out)."""
        return {_STORED.get(k, k): v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_record(cls, record: dict) -> Tags:
        """The tags of a stored record."""
        read = {v: k for k, v in _STORED.items()}
        return cls(**{read.get(k, k): v for k, v in tags_of(record).items() if read.get(k, k) in _FIELDS})


_STORED = {"reference": "baseline", "named_point": "baseline_point"}  # the names records have always used
_FIELDS = set(Tags.__dataclass_fields__)


REQUIRED_FIELDS = {"run_id": str, "config_hash": str, "seed": int, "status": str, "config": dict}


def record_problem(record: Any) -> str | None:
    """Why a parsed record.json cannot be read as a record of this stabench (None when it can): readers skip such
    a file and name it, and never change it."""
    if not isinstance(record, dict):
        return f"not a record (a JSON {type(record).__name__}, expected an object)"
    schema = record.get("schema", 1)
    if schema not in range(1, SCHEMA_VERSION + 1):
        return f"schema {schema!r}; this stabench reads schemas 1 to {SCHEMA_VERSION}"
    for key, kind in REQUIRED_FIELDS.items():
        if key not in record:
            return f"missing '{key}'"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"'{key}' is {record[key]!r}, expected a {kind.__name__}"
    if record["status"] not in set(Status) - {Status.RUNNING}:
        return f"status {record['status']!r}; allowed: {', '.join(s for s in Status if s != Status.RUNNING)}"
    for key in ("tags", "metrics"):
        if key in record and not isinstance(record[key], dict):
            return f"'{key}' is {record[key]!r}, expected a mapping"
    for name, value in (record.get("metrics") or {}).items():
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not (value is None or numeric or name in TEXT_METRICS):
            return f"metric '{name}' is {value!r}, expected a number or null"
    return None


def tags_of(record: dict) -> dict:
    """A record's tags (an empty dict for records without any)."""
    return record.get("tags") or {}


def metrics_of(record: dict) -> dict:
    """A record's final metrics (an empty dict for a record that has none, e.g. a failed one)."""
    return record.get("metrics") or {}


def label(record: dict) -> str:
    """One name for a record's config, the same on leaderboards, plots and W&B: the reference config's name,
    `<named point>@<sweep>`, `<sweep>#<trial>`, or the config hash prefix."""
    tags = tags_of(record)
    if tags.get("baseline"):
        return tags["baseline"]
    if tags.get("baseline_point"):  # a baseline's point inside a sweep's space (other fixed settings)
        return f"{tags['baseline_point']}@{tags.get('sweep')}"
    if tags.get("sweep") is not None and tags.get("trial_number") is not None:
        return f"{tags['sweep']}#{tags['trial_number']}"
    return record["config_hash"][:8]


MAX_CURVE_POINTS = 2000


def git_sha() -> str | None:
    """The checked-out commit of the stabench source, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    """Versions of what produced a record."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,  # the CUDA torch was built with (None on CPU builds)
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "stabench": __version__,
        "git_sha": git_sha(),
    }


def device_info(device: torch.device) -> dict:
    """Where a trial ran: host (and Ray node and GPU ids inside a Ray worker), the devices visible to the process,
    the device's type, name and threads; on CUDA also its index, capability and the driver."""
    info = {
        "type": device.type,
        "host": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        # the CPU and the kernels torch picked on it (AVX2, AVX512, ...): the last digits of a result depend on them,
        # so two records of the same config and seed from different CPUs can differ where the code does not
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **ray_placement(),
    }
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
        info["index"] = device.index if device.index is not None else torch.cuda.current_device()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["driver"] = cuda_driver_version()
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what Python's platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "Model")):  # x86; some ARM kernels say "Model"
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ray_placement() -> dict:
    """The Ray node and the GPU ids Ray assigned, when this process is a Ray worker (Ray is not imported here)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    try:
        ctx = ray.get_runtime_context()
        return {"ray_node_id": ctx.get_node_id(), "ray_gpu_ids": [str(g) for g in ray.get_gpu_ids()]}
    except Exception:  # a driver outside any task, or an older Ray: placement is a nicety, not a result
        return {}


def cuda_driver_version() -> str | None:
    """The CUDA driver version as 'major.minor' (None where torch cannot tell)."""
    try:
        v = torch._C._cuda_getDriverVersion()  # type: ignore[attr-defined]  # e.g. 12040; private, may be absent
    except (AttributeError, RuntimeError):
        return None
    return f"{v // 1000}.{v % 1000 // 10}"


# A run id: `<created %Y%m%d-%H%M%S>-<config hash[:8]>-s<seed>-<6 random hex>`: unique, sorted by creation time,
# and findable by (config, seed) from the folder name alone. Built and matched only here.
def new_run_id(cfg: TrialConfig) -> str:
    """A unique, sortable run id that carries the config hash prefix and the seed."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{config_hash(cfg)[:8]}-s{cfg.seed}-{uuid.uuid4().hex[:6]}"


def run_id_glob(config_hash: str, seed: int) -> str:
    """The glob pattern of the run folders of one (config, seed), whatever their time and suffix."""
    return f"*-{config_hash[:8]}-s{seed}-*"


def new_record(cfg: TrialConfig, device: torch.device) -> dict:
    """The head of a record before training: what runs, where, and status `running`."""
    return {
        "schema": SCHEMA_VERSION,
        "run_id": new_run_id(cfg),
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "status": Status.RUNNING,
        "error": None,
        "config": config_to_dict(cfg),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": versions(),
        "device": device_info(device),
    }


def downsample(curves: dict[str, list], max_points: int = MAX_CURVE_POINTS) -> dict[str, list]:
    """Keep every k-th point (and the last) of equally long curves; `step` says which were kept."""
    n = len(curves["step"])
    if n <= max_points:
        return curves
    stride = math.ceil(n / max_points)
    keep = list(range(0, n, stride))
    if keep[-1] != n - 1:
        keep.append(n - 1)
    return {k: [v[i] for i in keep] for k, v in curves.items()}


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def write_record(record: dict, run_dir: Path) -> Path:
    """Write `run_dir/record.json` atomically as strict JSON (non-finite floats become null)."""
    path = Path(run_dir) / "record.json"
    atomic_write_text(path, json.dumps(_json_safe(record), indent=1, allow_nan=False) + "\n")
    return path


def direction_of(metric: str) -> str:
    """Which way `metric` is better, from the registry ("minimize" for a name it does not hold)."""
    registered = METRICS.get(metric)
    return registered.direction if registered else "minimize"


def best(values: list[float], direction: str) -> float:
    """The best of `values` in `direction`: the smallest when minimised, the largest when maximised."""
    return min(values) if direction == "minimize" else max(values)


def eval_value(entry: dict, metric: str) -> float | None:
    """The best weight set's value of `metric` at one evaluation point (best in the metric's direction), if
    measured there; the worst value when no weight set has a finite one."""
    registered = METRICS.get(metric)
    values = entry.get(registered.eval_key if registered else metric)
    if not isinstance(values, dict) or not values:
        return None
    finite = [v for v in values.values() if v is not None and math.isfinite(v)]
    direction = direction_of(metric)
    return best(finite, direction) if finite else worst(direction)


def worst(direction: str) -> float:
    """The worst value of an objective: +inf when minimised, -inf when maximised."""
    return math.inf if direction == "minimize" else -math.inf


def record_value(record: dict, metric: str, direction: str | None = None) -> float:
    """A record's final value of `metric`; diverged (or missing, or non-finite) counts as the worst value in
    `direction` (by default the metric's registered one)."""
    direction = direction or direction_of(metric)
    if record["status"] == Status.DIVERGED:
        return worst(direction)
    value = metrics_of(record).get(metric)
    return float(value) if value is not None and math.isfinite(value) else worst(direction)

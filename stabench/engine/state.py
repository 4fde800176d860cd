"""What one trial carries from step to step: weights, optimizer, EMA, data order, RNG streams and telemetry,
and its checkpoint on disk (written atomically, read back by `train --resume` and by `score`)."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..config import TrialConfig, config_hash
from ..errors import UserError
from ..files import atomic_torch_save
from ..models import build_model
from ..workloads.data import BatchStream
from .ema import MultiEMA
from .precision import Compiled, Precision
from .telemetry import PROBE_SERIES, DivergenceDetector, StepLog

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's `device` ('auto' picks CUDA when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: '{name}' requested but CUDA is not available; allowed here: auto, cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        visible = ", ".join(f"cuda:{i}" for i in range(torch.cuda.device_count()))
        raise UserError(f"device: '{name}' does not exist here; allowed: auto, cpu, cuda, {visible}")
    return device


def stream_seed(seed: int, name: str) -> int:
    """Independent, reproducible seeds for the separate random streams of one trial."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def burn_in(cfg: TrialConfig) -> int:
    """Steps the stability statistics ignore: the burn-in, and at least the lr warm-up (docs/metrics.md)."""
    return min(max(cfg.stability.burn_in, cfg.optim.warmup_steps), cfg.optim.steps // 2)


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """AdamW groups: no decay on norms, biases and embeddings (1-D tensors, positional embeddings)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        exempt = p.ndim <= 1 or "pos_embed" in name
        (no_decay if exempt and not decay_all else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_weights(cfg: TrialConfig, in_channels: int, device: torch.device) -> tuple[nn.Module, MultiEMA]:
    """The trial's freshly initialised model and its EMA shadows."""
    torch.manual_seed(cfg.seed)  # model init, dropout, drop-path: everything random derives from the seed
    model = build_model(cfg, in_channels=in_channels).to(device)
    return model, MultiEMA(model, cfg.ema.betas, cfg.ema.warmup)


class TrainState:
    """Everything the training loop carries from one step to the next (what a checkpoint holds)."""

    def __init__(self, cfg: TrialConfig, images: torch.Tensor, device: torch.device):
        o = cfg.optim
        self.device = device
        self.model, self.ema = build_weights(cfg, images.shape[1], device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # built once, not every step
        self.optimizer = torch.optim.AdamW(
            param_groups(self.model, o.weight_decay, o.decay_all),
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            fused=device.type in ("cpu", "cuda"),  # one kernel per step, no host sync (CPU step counters)
        )
        self.precision = Precision(cfg.engine.precision, device, cfg.engine.compile)
        self.forward = Compiled(self.model, cfg.engine.compile)
        self.batches = BatchStream(images.to(device), o.batch_size, stream_seed(cfg.seed, "data"), cfg.augment.hflip)
        self.noise_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "noise"))
        self.log = StepLog()
        # Under loss scaling an overflowing gradient is a skipped step, not a divergence.
        self.detector = DivergenceDetector(
            cfg.stability.divergence_factor, burn_in(cfg), skips_nonfinite_grads=self.precision.scaler is not None
        )
        self.probes: dict[str, list] = {"step": [], **{k: [] for k in PROBE_SERIES}}
        self.evals: list[dict] = []
        self.step = 0

    def state_dict(self) -> dict:
        """Every piece of state, RNG included: a resumed trial continues bit for bit."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "batches": self.batches.state_dict(),
            "noise_gen": self.noise_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "scaler": self.precision.scaler.state_dict() if self.precision.scaler else None,
            "log": {k: getattr(self.log, k) for k in ("loss", "grad_norm", "clipped", "lr")},
            "detector": self.detector.state_dict(),
            "probes": self.probes,
            "evals": self.evals,
            "step": self.step,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (into the same objects, so references to them stay valid)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.batches.load_state_dict(state["batches"])
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        cuda_rng = state["cuda_rng"]
        if cuda_rng is not None and self.device.type == "cuda":  # only the trial's own device
            if isinstance(cuda_rng, list):  # older checkpoints held every visible GPU's state
                cuda_rng = cuda_rng[self.device.index or 0]
            torch.cuda.set_rng_state(cuda_rng, self.device)
        if self.precision.scaler is not None and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        for k, v in state["log"].items():
            setattr(self.log, k, list(v))
        self.detector.load_state_dict(state["detector"])
        if set(state["probes"]) != set(self.probes):
            raise UserError(
                "the checkpoint was written by an older stabench whose probe readout differs "
                f"({sorted(state['probes'])}); start the trial again",
                key="resume",
            )
        self.probes, self.evals, self.step = state["probes"], state["evals"], state["step"]


# ---------------------------------------------------------------------------------------------
# Checkpoint files: {"record_head": who the trial is, "loop": TrainState.state_dict()}
#
# A checkpoint holds tensors and plain data only (dicts, lists, tuples, str, int, float, bool, None), so it is
# read with `torch.load(weights_only=True)`: a file planted in a shared store cannot run code when it is
# resumed, scored, taken over by a retry or restored by Ray. Every field is checked before it is used.
# ---------------------------------------------------------------------------------------------


class Field:
    """What a checkpoint field must be: `description` for the error, `accepts(value)` for the check, and, for a
    mapping, the `keys` it must hold (each checked in turn)."""

    def __init__(self, description: str, accepts: Callable[[Any], bool], keys: dict[str, Field] | None = None):
        self.description, self.accepts, self.keys = description, accepts, keys


def _is(*kinds: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)


def _list_of(*kinds: type) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(_is(*kinds)(x) for x in v)


def _mapping(keys: dict[str, Field]) -> Field:
    return Field("a mapping", _is(dict), keys)


TENSOR = Field("a tensor", _is(torch.Tensor))
INT = Field("an integer", _is(int))
TEXT = Field("a string", _is(str))
NUMBER = (int, float)
CHECKPOINT_FIELDS = _mapping({
    "record_head": _mapping({"run_id": TEXT, "config_hash": TEXT, "seed": INT, "created_at": TEXT}),
    "loop": _mapping({
        "model": Field("a mapping of names to tensors",
                       lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                             for k, t in v.items())),
        "optimizer": _mapping({"state": Field("a mapping", _is(dict)),
                               "param_groups": Field("a list of mappings", _list_of(dict))}),
        "ema": _mapping({"num_updates": INT,
                         "shadows": Field("a mapping of betas to lists of tensors",
                                          lambda v: isinstance(v, dict) and all(
                                              isinstance(k, str) and _list_of(torch.Tensor)(s) for k, s in v.items()
                                          ))}),
        "batches": _mapping({"generator": TENSOR, "order": TENSOR, "pos": INT}),
        "noise_gen": TENSOR,
        "torch_rng": TENSOR,
        "cuda_rng": Field("a tensor, a list of tensors or null",
                          lambda v: v is None or isinstance(v, torch.Tensor) or _list_of(torch.Tensor)(v)),
        "scaler": Field("a mapping or null", lambda v: v is None or isinstance(v, dict)),
        "log": _mapping({"loss": Field("a list of numbers", _list_of(*NUMBER)),
                         "grad_norm": Field("a list of numbers", _list_of(*NUMBER)),
                         "clipped": Field("a list of booleans", _list_of(bool)),
                         "lr": Field("a list of numbers", _list_of(*NUMBER))}),
        "detector": _mapping({"smoothed": Field("a number or null", lambda v: v is None or _is(*NUMBER)(v)),
                              "running_min": Field("a number", _is(*NUMBER)),
                              "checked": INT}),
        "probes": Field("a mapping of names to lists",
                        lambda v: isinstance(v, dict) and all(isinstance(x, list) for x in v.values())),
        "evals": Field("a list of mappings", _list_of(dict)),
        "step": INT,
    }),
})  # fmt: skip


def checkpoint_problem(state, spec: Field = CHECKPOINT_FIELDS, where: str = "") -> str | None:
    """Why a loaded checkpoint is not one of ours (the first field that is missing or of the wrong kind), or
    None when every field is what `TrainState.load_state_dict` and the record head need."""
    if not spec.accepts(state):
        shown = type(state).__name__ if isinstance(state, (dict, list, torch.Tensor)) else repr(state)[:80]
        what = f"'{where}'" if where else "the file"
        return f"{what} is {shown}, expected {spec.description}"
    for key, field in (spec.keys or {}).items():
        path = f"{where}.{key}" if where else key
        if key not in state:
            return f"'{path}' is missing"
        if problem := checkpoint_problem(state[key], field, path):
            return problem
    return None


def save_checkpoint(run_dir: Path, record: dict, state: TrainState) -> None:
    """Write the checkpoint atomically: a kill at any moment leaves the previous one intact."""
    head = {k: record[k] for k in ("run_id", "config_hash", "seed", "created_at")}
    atomic_torch_save({"record_head": head, "loop": state.state_dict()}, run_dir / CHECKPOINT)


def read_checkpoint(path: Path, key: str) -> dict:
    """A checkpoint file's contents, loaded without running any of its code (`weights_only`) and every field
    checked; a file that is not one of ours is a UserError naming it, the field (and the input `key`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line), None)
        if refused is None:  # bytes that are no pickle at all (garbage, truncated)
            raise UserError.caused_by(e, f"'{path}' is not a readable checkpoint", key=key) from None
        # a Python object beyond tensors and plain data: refused, never run
        raise UserError(
            f"'{path}' holds Python objects a checkpoint never holds (written by an older stabench, or crafted); "
            f"it was not loaded and nothing in it ran ({refused[:200]}). Run the trial again from the start",
            key=key,
        ) from None
    except Exception as e:  # truncated, not a torch file: torch raises many kinds
        raise UserError.caused_by(e, f"'{path}' is not a readable checkpoint", key=key) from None
    if problem := checkpoint_problem(state):
        raise UserError(f"'{path}' is not a stabench checkpoint of this version: {problem}", key=key)
    return state


def load_checkpoint(run_dir: Path, cfg: TrialConfig) -> dict:
    """The checkpoint of an interrupted trial of this config and seed (`train --resume`)."""
    path = run_dir / CHECKPOINT
    if (run_dir / "record.json").exists():
        raise UserError(
            f"'{run_dir}' already finished (it has a record.json); records are never rewritten", key="resume"
        )
    if not path.is_file():
        raise UserError(f"no checkpoint at '{path}' (trials write one every `checkpoint_every` steps)", key="resume")
    state = read_checkpoint(path, "resume")
    head = state["record_head"]
    if head["config_hash"] != config_hash(cfg) or head["seed"] != cfg.seed:
        raise UserError(
            f"'{path}' belongs to config {head['config_hash']} seed {head['seed']}, not to this config "
            f"({config_hash(cfg)} seed {cfg.seed})",
            key="resume",
        )
    return state


def load_weights(run_dir: Path) -> dict:
    """The model and EMA weights of a trial's checkpoint and their step (`score`); nothing else of the loop."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise UserError(
            f"no {CHECKPOINT} in '{run_dir}'; train with --checkpoint (or --checkpoint-every)", key="run_dir"
        )
    loop = read_checkpoint(path, "run_dir")["loop"]
    return {k: loop[k] for k in ("model", "ema", "step")}

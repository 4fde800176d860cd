"""The trial engine: train one diffusion model from a config and a seed while measuring how stably it trains.

`Trial(cfg, ...).run()` yields each evaluation entry and finishes the record; `run_trial` drives it to the
end; `rescore` re-scores a finished trial's checkpoint. Nothing here imports the search, store or CLI layers.
"""

from .rescore import rescore
from .state import CHECKPOINT, resolve_device, stream_seed
from .trial import Trial, run_trial

__all__ = ["CHECKPOINT", "Trial", "rescore", "resolve_device", "run_trial", "stream_seed"]

"""Re-score a finished trial's weights (raw and each EMA beta) from its checkpoint, with another sample count
or extractor; the record itself is never rewritten."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import load_config
from ..errors import UserError
from ..files import atomic_write_text
from .diffusion import Diffusion
from .evaluate import EvalNet, generate, make_scorer
from .state import build_weights, load_weights, resolve_device


def rescore(
    run_dir: str | Path, samples: int | None = None, inception_weights: str | None = None, extractor: str | None = None
) -> dict:
    """FID/KID of a finished trial's weights (raw and each EMA beta) from its checkpoint, with `samples`
    samples; written to RUN_DIR/score-<extractor>-n<N>.json (the record itself is never rewritten)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():  # a checkpoint path was given
        run_dir = run_dir.parent
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"'{run_dir}' has no config.yaml; give a trial's directory from the store", key="run_dir")
    overrides = [f"eval.samples={samples}"] if samples else []
    overrides += [f"eval.inception_weights={inception_weights}"] if inception_weights else []
    overrides += [f"eval.extractor={extractor}"] if extractor else []
    cfg = load_config(run_dir / "config.yaml", overrides)
    if cfg.eval.samples == 0:
        raise UserError("give a sample count (the trial's config has eval.samples = 0)", key="samples")
    weights = load_weights(run_dir)
    device = resolve_device(cfg.device)
    scorer = make_scorer(cfg, device)
    channels = scorer.reference.shape[1]  # the held-out split has the training images' channels
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(device)
    model, ema = build_weights(cfg, channels, device)
    model.load_state_dict(weights["model"])
    ema.load_state_dict(weights["ema"])
    result: dict = {
        "run_dir": str(run_dir),
        "step": weights["step"],
        "n_samples": cfg.eval.samples,
        "extractor": cfg.extractor,
    }
    for name, net in EvalNet(model, cfg, device).weight_sets(model, ema):
        scores = scorer.score(generate(net, diffusion, cfg.eval.samples, cfg=cfg, device=device, channels=channels))
        for key in (scorer.fid_key, scorer.kid_key):
            result.setdefault(key, {})[name] = scores[key]
    result[f"{scorer.fid_key}_floor"] = scorer.floor(cfg.eval.samples)
    atomic_write_text(run_dir / f"score-{cfg.extractor}-n{cfg.eval.samples}.json", json.dumps(result, indent=1) + "\n")
    return result

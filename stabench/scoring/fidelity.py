"""FID and KID through torch-fidelity: images in its format, its extractor built once per process and device, a
reference's features and statistics held in the process over torch-fidelity's disk cache, and the metrics from
its own functions (the numbers its `calculate_metrics` gives). torch-fidelity is imported on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import UserError
from ..files import atomic_write_text
from .extractors import Extractor, get_extractor

CACHE_ENV = "STABENCH_CACHE"
KID_MAX_SUBSET = 1000  # torch-fidelity's default subset size


# ---------------------------------------------------------------------------------------------
# Images in torch-fidelity's format
# ---------------------------------------------------------------------------------------------


def images_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) floats in [-1, 1] -> (N, 3, H, W) uint8 on the CPU; grayscale repeated to 3 channels.

    Non-finite pixels (a diverged model's samples) become mid-gray or the clamped extreme instead of
    crashing the evaluation: such samples simply score badly.
    """
    assert x.dim() == 4 and x.shape[1] in (1, 3), f"expected (N, 1 or 3, H, W) images, got {tuple(x.shape)}"
    x = torch.nan_to_num(x.detach().float().cpu(), nan=0.0).clamp(-1.0, 1.0)
    u8 = ((x + 1.0) * 127.5).round().to(torch.uint8)
    return u8.repeat(1, 3, 1, 1) if u8.shape[1] == 1 else u8.contiguous()


class ImageDataset(Dataset):
    """uint8 (N, 3, H, W) images; item i is one 3xHxW uint8 tensor, as torch-fidelity requires."""

    def __init__(self, images: torch.Tensor):
        assert images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3, images.shape
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


# ---------------------------------------------------------------------------------------------
# Cache names
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$STABENCH_CACHE/fidelity, else ~/.cache/stabench/fidelity."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "stabench").expanduser() / "fidelity"


def _cache_name(name: str, reference: torch.Tensor, ext: Extractor) -> str:
    """`name` plus the reference size and a hash of its pixels and the extractor weights.

    torch-fidelity keys its cache by the name alone; this makes a different reference tensor (a
    subset, another folder dataset, a changed loader) or other weights a different entry.
    """
    h = hashlib.sha256(f"{tuple(reference.shape)} {ext.fidelity_name} {ext.weights_sha}".encode())
    h.update(reference.numpy().tobytes())
    return f"{name}-n{len(reference)}-{h.hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def kid_subset_size(n_samples: int, n_reference: int) -> int:
    """torch-fidelity refuses a KID subset larger than either input."""
    return min(n_samples, n_reference, KID_MAX_SUBSET)


# The device torch-fidelity extracts features on: a trial's own (cuda:1 scores on cuda:1, cpu on the CPU even where a
# GPU is visible); None outside a trial keeps torch-fidelity's default (the current GPU when there is one).
_SCORING_DEVICE: ContextVar[torch.device | None] = ContextVar("scoring_device", default=None)


@contextlib.contextmanager
def scoring_on(device: torch.device | None) -> Iterator[None]:
    """Run the scoring calls inside on `device` (torch-fidelity moves its extractor with `.cuda()`, i.e. to the
    current CUDA device, so a CUDA device is also made current)."""
    token = _SCORING_DEVICE.set(device)
    try:
        with torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext():
            yield
    finally:
        _SCORING_DEVICE.reset(token)


def _uses_cuda() -> bool:
    device = _SCORING_DEVICE.get()
    return torch.cuda.is_available() if device is None else device.type == "cuda"


# Reference features and FID statistics held in this process, most recently used last: a sweep's workers score
# against the same two references (test split, training images) at every evaluation.
_REFERENCES: OrderedDict[tuple[str, str, str], tuple[torch.Tensor, dict]] = OrderedDict()
_REFERENCES_KEPT = 4


@lru_cache(maxsize=4)
def _feature_extractor(fidelity_name: str, feature_layer: str, weights_path: str, weights_sha: str, device: str):
    """torch-fidelity's extractor, built once per process, weights file and device (torch-fidelity's
    `calculate_metrics` builds and loads it at every call)."""
    from torch_fidelity.utils import create_feature_extractor

    fe = create_feature_extractor(
        fidelity_name, [feature_layer], cuda=False, feature_extractor_weights_path=weights_path, verbose=False
    )
    return fe.to(device)


def _extractor_here(ext: Extractor):
    """The process's extractor for `ext` on the scoring device."""
    device = f"cuda:{torch.cuda.current_device()}" if _uses_cuda() else "cpu"
    return _feature_extractor(ext.fidelity_name, ext.feature_layer, str(ext.weights_path), ext.weights_sha, device)


def _features(images: torch.Tensor, ext: Extractor) -> torch.Tensor:
    """The extractor's features of uint8 images."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    batch = min(ext.batch_size, len(images))
    featuresdict = get_featuresdict_from_dataset(
        ImageDataset(images), _extractor_here(ext), batch, _uses_cuda(), True, False
    )
    return featuresdict[ext.feature_layer]


def _reference(reference: torch.Tensor, ext: Extractor, cache_name: str | None, cache_dir: Path):
    """The reference's features and FID statistics: from this process, else from torch-fidelity's disk cache
    under `cache_name` (its own file names), else computed (and cached when named)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_featuresdict_to_statistics_cached
    from torch_fidelity.utils import extract_featuresdict_from_input_id_cached

    key = (str(cache_dir), cache_name or "", ext.weights_sha)
    if cache_name is not None and key in _REFERENCES:
        _REFERENCES.move_to_end(key)
        return _REFERENCES[key]
    if cache_name is None:
        features = _features(reference, ext)
        return features, fid_features_to_statistics(features)
    fe = _extractor_here(ext)
    disk = dict(cache=True, cache_root=str(cache_dir), verbose=False, cuda=_uses_cuda(), save_cpu_ram=True)
    featuresdict = extract_featuresdict_from_input_id_cached(
        2, fe, input2=ImageDataset(reference), input2_cache_name=cache_name, batch_size=ext.batch_size, **disk
    )
    stats = fid_featuresdict_to_statistics_cached(featuresdict, cache_name, fe, ext.feature_layer, **disk)
    _REFERENCES[key] = (featuresdict[ext.feature_layer], stats)
    while len(_REFERENCES) > _REFERENCES_KEPT:
        _REFERENCES.popitem(last=False)
    return _REFERENCES[key]


def _calculate(
    images: torch.Tensor,
    reference: torch.Tensor,
    ext: Extractor,
    cache_name: str | None,
    cache_dir: Path,
    kid_subsets: int,
) -> dict:
    """FID and KID of uint8 images against a reference, with torch-fidelity's metric functions (the numbers its
    `calculate_metrics` gives); the reference's features are cached when it has a name."""
    from torch_fidelity import KEY_METRIC_FID, KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    if min(len(images), len(reference)) < 2:
        raise UserError(
            f"FID/KID need at least 2 images on each side, got {len(images)} samples "
            f"and {len(reference)} reference images"
        )
    ref_features, ref_stats = _reference(reference, ext, cache_name, cache_dir)
    features = _features(images, ext)
    subset = kid_subset_size(len(images), len(reference))
    fid = fid_statistics_to_metric(fid_features_to_statistics(features), ref_stats, False)
    kid = kid_features_to_metric(features, ref_features, kid_subsets=kid_subsets, kid_subset_size=subset, verbose=False)
    return {
        ext.key("fid"): fid[KEY_METRIC_FID],
        ext.key("kid"): kid[KEY_METRIC_KID_MEAN],
        ext.key("kid") + "_std": kid[KEY_METRIC_KID_STD],
        "extractor": ext.fidelity_name,
        "kid_subset_size": subset,
    }


def _resolve(extractor: str | Extractor) -> Extractor:
    """An extractor given by name (the Inception weights file from $STABENCH_INCEPTION_WEIGHTS) or as itself."""
    return extractor if isinstance(extractor, Extractor) else get_extractor(extractor)


def score(
    samples: torch.Tensor,
    reference: torch.Tensor,
    reference_name: str,
    extractor: str | Extractor = "digits",
    cache_dir: str | Path | None = None,
    kid_subsets: int = 100,
) -> dict:
    """FID and KID of `samples` against `reference` (both (N, C, H, W) in [-1, 1]) via torch-fidelity.

    Returns e.g. {'fid_digits', 'kid_digits', 'kid_digits_std', 'n_samples', 'n_reference', 'extractor',
    'kid_subset_size'}. The reference's features and statistics are computed once per cache entry.
    """
    ext = _resolve(extractor)
    ref = images_to_uint8(reference)
    cache_name = _cache_name(reference_name, ref, ext)
    metrics = _calculate(
        images_to_uint8(samples), ref, ext, cache_name, Path(cache_dir or default_cache_dir()), kid_subsets
    )
    return {**metrics, "n_samples": len(samples), "n_reference": len(reference)}


def fid_floor(
    reference: torch.Tensor,
    reference_name: str,
    real: torch.Tensor | None = None,
    n: int | None = None,
    extractor: str | Extractor = "digits",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    splits: int = 5,
    kid_subsets: int = 100,
) -> dict:
    """FID/KID of real images scored like samples: the floor of the metric, averaged over `splits` seeded draws.

    With `real` (the training images) and `n`: `n` real images, drawn without replacement, against the whole
    reference, exactly as a trial's `n` samples are scored (`source` "train-vs-reference"). FID is biased
    upwards at small sample counts, so only a floor at the trial's own `n` tells a real gap from noise.
    Without them: two disjoint halves of the reference (`source` "halves"), the metric's own noise.
    Returns the mean as `fid_digits`/`kid_digits` (or `fid`/`kid`), the spread as `*_std`, each draw's FID,
    and `n`. Computed once and stored as JSON next to the cached reference statistics.
    """
    ext = _resolve(extractor)
    ref = images_to_uint8(reference)
    cache_dir = Path(cache_dir or default_cache_dir())
    ref_cache = _cache_name(reference_name, ref, ext)
    at_n = real is not None
    if real is not None:  # at_n
        real_u8 = images_to_uint8(real)
        n = min(n or len(ref), len(real_u8))
        path = cache_dir / f"{ref_cache}-floor-{_cache_name('train', real_u8, ext)}-n{n}-seed{seed}x{splits}.json"
    else:
        n = len(ref) // 2
        path = cache_dir / f"{ref_cache}-floor-seed{seed}x{splits}.json"
    if path.is_file():
        return json.loads(path.read_text())
    gen, runs = torch.Generator().manual_seed(seed), []
    for _ in range(splits):
        if at_n:  # the reference's statistics come from the cache, as for a trial's samples
            drawn = real_u8[torch.randperm(len(real_u8), generator=gen)[:n]]
            runs.append(_calculate(drawn, ref, ext, ref_cache, cache_dir, kid_subsets))
        else:
            perm = torch.randperm(len(ref), generator=gen)
            runs.append(_calculate(ref[perm[:n]], ref[perm[n : 2 * n]], ext, None, cache_dir, kid_subsets))
    fid, kid = [r[ext.key("fid")] for r in runs], [r[ext.key("kid")] for r in runs]
    result = {
        ext.key("fid"): statistics.mean(fid),
        ext.key("fid") + "_std": statistics.pstdev(fid),
        ext.key("kid"): statistics.mean(kid),
        ext.key("kid") + "_std": statistics.pstdev(kid),
        ext.key("fid") + "_splits": fid,
        "extractor": ext.fidelity_name,
        "source": "train-vs-reference" if at_n else "halves",
        "n": n,
        "n_reference": len(ref) if at_n else n,
        "splits": splits,
        "seed": seed,
        "reference": reference_name,
    }
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return result

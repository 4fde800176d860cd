"""Sample quality: FID and KID computed by torch-fidelity, with reference statistics cached on disk.

Nothing here knows about configs: callers pass image tensors in [-1, 1] and names. Two extractors:

- `digits`: stabench's small CNN (`stabench.scoring.digits_cnn`, torch-fidelity name `digits-cnn`), penultimate
  features. Keys `fid_digits`, `kid_digits`, `kid_digits_std`.
- `inception`: torch-fidelity's `inception-v3-compat` (standard FID) from a LOCAL weights file, never
  downloaded. Keys `fid`, `kid`, `kid_std`.

The extractor is part of every metric key, so numbers from the two can never be mixed up.

The extractor is built once per process and device, and a reference's features and FID statistics are held
in the process (the last few references) and cached on disk by torch-fidelity under `cache_dir` (default
`$STABENCH_CACHE/fidelity`, else `~/.cache/stabench/fidelity`); FID and KID come from torch-fidelity's own
metric functions, so the numbers are those of its `calculate_metrics`. torch-fidelity's own cache key is the
input name plus the extractor name only (not its weights, not the sample count), so stabench names each
reference itself: `reference_name(...)` (dataset, resolution, split, extractor, weights hash) plus the
reference's size and a hash of its pixels and of the extractor weights, so a stale entry is never read.

torch_fidelity (slow to import) and stabench.scoring.digits_cnn are imported on first use, so the CLI can call
`resolve_inception_weights` to fail fast before training without paying for them.

Modules: `extractors` (which extractor, its weights, reference names), `fidelity` (images, features, caches,
`score`, `fid_floor`), `digits_cnn` (the digits CNN and its training); this package adds `ReferenceScorer`,
what a trial scores with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .extractors import (
    EXTRACTORS,
    INCEPTION_ENV,
    INCEPTION_FILE,
    INCEPTION_URL,
    Extractor,
    file_sha256,
    get_extractor,
    reference_name,
    resolve_inception_weights,
)
from .fidelity import (
    _REFERENCES,
    CACHE_ENV,
    KID_MAX_SUBSET,
    ImageDataset,
    _cache_name,
    _feature_extractor,
    default_cache_dir,
    fid_floor,
    images_to_uint8,
    kid_subset_size,
    score,
    scoring_on,
)

__all__ = [
    "CACHE_ENV",
    "EXTRACTORS",
    "INCEPTION_ENV",
    "INCEPTION_FILE",
    "INCEPTION_URL",
    "KID_MAX_SUBSET",
    "Extractor",
    "ImageDataset",
    "ReferenceScorer",
    "_REFERENCES",
    "_cache_name",
    "_feature_extractor",
    "default_cache_dir",
    "fid_floor",
    "file_sha256",
    "get_extractor",
    "images_to_uint8",
    "kid_subset_size",
    "reference_name",
    "resolve_inception_weights",
    "score",
    "scoring_on",
]


class ReferenceScorer:
    """Scores sample batches of one trial against its workload's held-out reference split, with the
    reference statistics cached on disk (computed by the first scoring, reused by every later one).

    With the training images (`real`), it also gives the floor at a trial's sample count and a selection
    FID against the training images, so that choosing among weight sets never looks at the reported reference.
    """

    def __init__(
        self,
        extractor: str,
        reference: torch.Tensor,
        dataset: str,
        resolution: int,
        split: str = "test",
        inception_weights: str | Path | None = None,
        cache_dir: str | Path | None = None,
        real: torch.Tensor | None = None,
        device: torch.device | None = None,
    ):
        self.ext = get_extractor(extractor, inception_weights)
        self.reference, self.real, self.cache_dir, self.device = reference, real, cache_dir, device
        self.name = self.ext.reference_name(dataset, resolution, split)
        self.selection_name = self.ext.reference_name(dataset, resolution, "train")
        self.fid_key, self.kid_key = self.ext.key("fid"), self.ext.key("kid")

    def score(self, samples: torch.Tensor) -> dict:
        """FID/KID of `samples` against the reported reference."""
        with scoring_on(self.device):
            return score(samples, self.reference, self.name, self.ext, cache_dir=self.cache_dir)

    def selection_fid(self, samples: torch.Tensor) -> float:
        """FID of `samples` against the training images (for choosing weights; never reported as quality)."""
        assert self.real is not None, "selection needs the training images"
        with scoring_on(self.device):
            return score(samples, self.real, self.selection_name, self.ext, cache_dir=self.cache_dir)[self.fid_key]

    def floor(self, n: int | None = None) -> float:
        """The metric's floor: `n` training images against the reference (two halves without training images)."""
        with scoring_on(self.device):
            floor = fid_floor(self.reference, self.name, self.real, n, self.ext, self.cache_dir)
        return floor[self.fid_key]

"""Workloads: real image datasets held in memory as float tensors in [-1, 1], and a seeded batch order.

- `digits`: the 1,797 8x8 UCI digits of scikit-learn's `load_digits`, shipped inside the package (`digits.py`),
  optionally upsampled to 16x16.
- `cifar10`: torchvision's CIFAR-10 from a local root; downloaded into it only with `workload.download: true`.
- `folder`: every image under a directory (recursively), center-cropped and resized.

`digits` and `folder` use a fixed 80/20 train/test split that does not depend on the trial seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import WorkloadConfig
from ..errors import DataError
from .digits import digits_arrays

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_SEED = 0  # the train/test split is part of the workload, not of the trial
TEST_FRACTION = 0.2


def fixed_split(images: torch.Tensor, split: str) -> torch.Tensor:
    """The `split` share of `images` under the fixed permutation (seeded by `SPLIT_SEED`, never the trial seed),
    so images and their labels split alike."""
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = int(round(len(images) * TEST_FRACTION))
    return images[perm[n_test:]] if split == "train" else images[perm[:n_test]]


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-1] == resolution:
        return images
    return F.interpolate(
        images,
        size=(resolution, resolution),
        mode="bilinear",
        align_corners=False,
        antialias=resolution < images.shape[-1],
    ).clamp(-1, 1)


def load_digits_images(resolution: int, split: str) -> torch.Tensor:
    """The 8x8 digits (shipped with the package) in [-1, 1], the split's fixed share, resized."""
    images = torch.from_numpy(digits_arrays()[0].copy())[:, None] / 8.0 - 1.0
    return _resize(fixed_split(images, split), resolution)


def load_cifar10_images(root: str, resolution: int, split: str, download: bool = False) -> torch.Tensor:
    """CIFAR-10 from torchvision's copy under `root` in [-1, 1]; fetched into `root` by torchvision only when
    `download` (config `workload.download`) is asked for, never otherwise."""
    from torchvision.datasets import CIFAR10

    try:
        ds = CIFAR10(root, train=split == "train", download=download)
    except (RuntimeError, OSError) as e:
        if download:
            raise DataError(f"workload.download: fetching CIFAR-10 into '{root}' failed: {e}") from None
        raise DataError(
            f"workload.root: CIFAR-10 not found under '{root}' (expected '{Path(root) / 'cifar-10-batches-py'}'). "
            "Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html on a machine "
            "with internet, extract it into that root, and pass it with --set workload.root=PATH (or let "
            "torchvision fetch it there: --set workload.download=true)."
        ) from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return _resize(images, resolution)


def _read_image(path: Path, resolution: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize(
                (resolution, resolution), Image.Resampling.BICUBIC
            )
            arr = np.asarray(img, dtype=np.float32)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"workload.root: cannot read image '{path}': {e}") from None
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def load_folder_images(root: str, resolution: int, split: str) -> torch.Tensor:
    """Every image file under `root` (sorted, resized to `resolution`) in [-1, 1], the split's fixed share."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"workload.root: image folder '{root}' does not exist or is not a directory")
    paths = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(paths) < 2:
        raise DataError(
            f"workload.root: found {len(paths)} images under '{root}'; need at least 2 "
            f"(extensions: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    images = torch.stack([_read_image(p, resolution) for p in paths])
    return fixed_split(images, split)


def check_available(workload: WorkloadConfig) -> None:
    """Cheap existence check of a workload's data, so a sweep fails before its first trial."""
    if workload.dataset == "cifar10":
        if not workload.download and not (Path(workload.root) / "cifar-10-batches-py").is_dir():
            load_cifar10_images(workload.root, workload.resolution, "train")  # raises the full explanation
    elif workload.dataset == "folder":
        base = Path(workload.root)
        if not base.is_dir() or not any(p.suffix.lower() in IMAGE_SUFFIXES for p in base.rglob("*")):
            load_folder_images(workload.root, workload.resolution, "train")


def load_images(workload: WorkloadConfig, split: str = "train") -> torch.Tensor:
    """(N, C, H, W) float32 images in [-1, 1] for a workload split ('train' or 'test')."""
    assert split in ("train", "test")
    if workload.dataset == "digits":
        return load_digits_images(workload.resolution, split)
    if workload.dataset == "cifar10":
        return load_cifar10_images(workload.root, workload.resolution, split, workload.download)
    return load_folder_images(workload.root, workload.resolution, split)


class BatchStream:
    """Endless minibatches in a seeded order: a fresh permutation per epoch, optional seeded h-flips.

    Indices and flips are drawn on the images' device, so a step never copies from the host (no CUDA sync)."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int, hflip: float = 0.0):
        self.images, self.batch_size, self.hflip = images, batch_size, hflip
        self.generator = torch.Generator(device=images.device).manual_seed(seed)
        self.order, self.pos = torch.empty(0, dtype=torch.long, device=images.device), 0

    def _indices(self) -> torch.Tensor:
        chunks, need = [], self.batch_size
        while need:
            if self.pos == len(self.order):
                n = len(self.images)
                self.order, self.pos = torch.randperm(n, generator=self.generator, device=self.images.device), 0
            take = self.order[self.pos : self.pos + need]
            self.pos += len(take)
            need -= len(take)
            chunks.append(take)
        return torch.cat(chunks)

    def __next__(self) -> torch.Tensor:
        idx = self._indices()
        batch = self.images[idx]
        if self.hflip > 0:
            flip = torch.rand(len(idx), generator=self.generator, device=batch.device) < self.hflip
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        return batch

    def __iter__(self) -> BatchStream:
        return self

    def state_dict(self) -> dict:
        """The stream's position and generator: a resumed trial draws the same batches."""
        return {"generator": self.generator.get_state(), "order": self.order, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`."""
        self.generator.set_state(state["generator"])
        self.order, self.pos = state["order"].to(self.images.device), state["pos"]

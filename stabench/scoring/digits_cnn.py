"""A small CNN trained on the 8x8 digits, used as torch-fidelity's feature extractor `digits-cnn`.

InceptionV3 was trained on 299x299 photographs; for 8x8 grayscale digits the usual practice (as for
MNIST) is a classifier trained on the data itself. So for the `digits` workload FID/KID use the
penultimate features (64 dims) of this CNN, trained on the digits TRAIN split only; its held-out TEST
accuracy is reported so readers can trust the features. The weights ship in `stabench/assets/digits_cnn.pt`.

    python -m stabench.scoring.digits_cnn [--out PATH] [--seed N] [--epochs N]   # retrain, print accuracy
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from ..workloads.data import digits_arrays, fixed_split, load_digits_images

NAME = "digits-cnn"  # the name torch-fidelity knows it by
FEATURE_LAYER = "penultimate"
WEIGHTS_PATH = Path(__file__).parents[1] / "assets" / "digits_cnn.pt"  # stabench/assets/
N_FEATURES = 64


class DigitsCNN(nn.Module):
    """Two conv stages (8x8 -> 4x4 -> 2x2), a 64-unit penultimate layer and a 10-way linear head."""

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.penultimate = nn.Sequential(nn.Flatten(), nn.Linear(64 * 2 * 2, N_FEATURES))
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(N_FEATURES, 10))
        # 1 / RMS of the train-split features, set after training, so FID/KID come out on a unit scale.
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) for images in any form `to_model_input` accepts.

        The features are taken before the ReLU: no dead dimensions and closer to Gaussian, which is
        what FID assumes (measured: a better blur-vs-noise-floor separation than after the ReLU).
        """
        h = self.penultimate(self.conv(to_model_input(x, self.feature_scale.dtype)))
        return h * self.feature_scale, self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (training the classifier)."""
        return self.features(x)[1]


def to_model_input(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 1, 8, 8) floats in [-1, 1] from uint8 or float, 1 or 3 channels, 8x8 or larger images."""
    x = x.to(dtype) / 127.5 - 1.0 if x.dtype == torch.uint8 else x.to(dtype)  # torch-fidelity feeds uint8 RGB
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    assert x.dim() == 4 and x.shape[1] == 1, f"expected (N, 1 or 3, H, W) images, got {tuple(x.shape)}"
    if x.shape[-1] != 8 or x.shape[-2] != 8:
        # Box-filter (area) downsampling: antialiased, and the closest to undoing data.py's bilinear 8 -> 16.
        x = F.interpolate(x, size=(8, 8), mode="area")
    return x


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) in [-1, 1] and labels of data.py's fixed digits split."""
    labels = fixed_split(torch.from_numpy(digits_arrays()[1]), split)  # same permutation as the images
    return load_digits_images(8, split), labels


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random one-pixel shifts, and for half the images the 8 -> 16 -> 8 round trip of the 16x16 workload."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # -1 is the background
    dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
    x = padded[..., dy : dy + 8, dx : dx + 8]
    round_trip = to_model_input(F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False))
    pick = torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5
    return torch.where(pick, round_trip, x)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of `images` the classifier labels correctly."""
    model.eval()
    return (model(images).argmax(1) == labels).float().mean().item()


def _train(images: torch.Tensor, labels: torch.Tensor, seed: int, epochs: int, batch_size: int, lr: float) -> DigitsCNN:
    model = DigitsCNN()
    gen = torch.Generator().manual_seed(seed)  # batch order and augmentation
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(_augment(images[idx], gen)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        model.feature_scale.fill_(model.features(images)[0].pow(2).mean().rsqrt())
    return model


def fit_extractor(
    out_path: str | Path | None = WEIGHTS_PATH, seed: int = 0, epochs: int = 40, batch_size: int = 64, lr: float = 3e-3
) -> dict:
    """Train DigitsCNN on the digits TRAIN split (seeded, CPU), save its state_dict, report TEST accuracy."""
    start = time.perf_counter()
    train_x, train_y = _digits_split("train")
    test_x, test_y = _digits_split("test")
    with torch.random.fork_rng(devices=[]):  # init and dropout draw from the global RNG: seed it, then restore it
        torch.manual_seed(seed)
        model = _train(train_x, train_y, seed, epochs, batch_size, lr)
    result = {
        "test_accuracy": accuracy(model, test_x, test_y),
        "test_accuracy_16px": accuracy(model, load_digits_images(16, "test"), test_y),
        "train_accuracy": accuracy(model, train_x, train_y),
        "n_train": len(train_x),
        "n_test": len(test_x),
        "seed": seed,
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
    }
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out_path)
        result.update(path=str(out_path), sha256=hashlib.sha256(out_path.read_bytes()).hexdigest())
    return result


def load_classifier(path: str | Path | None = None) -> DigitsCNN:
    """The trained DigitsCNN in eval mode, from `path` or the committed weights."""
    model = DigitsCNN()
    model.load_state_dict(torch.load(Path(path or WEIGHTS_PATH), map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# torch-fidelity feature extractor
# ---------------------------------------------------------------------------------------------


class DigitsFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity extractor: uint8 (N, 3, H, W) -> 'penultimate' (N, 64) and 'logits' (N, 10)."""

    def __init__(
        self,
        name: str,
        features_list: list[str],
        feature_extractor_weights_path: str | None = None,
        feature_extractor_internal_dtype: str | None = None,
        **kwargs,
    ):
        super().__init__(name, features_list)
        assert feature_extractor_internal_dtype in (None, "float32", "float64"), feature_extractor_internal_dtype
        self.dtype = torch.float64 if feature_extractor_internal_dtype == "float64" else torch.float32
        self.net = load_classifier(feature_extractor_weights_path).to(self.dtype)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        """torch-fidelity API: the feature layers this extractor provides."""
        return (FEATURE_LAYER, "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        """torch-fidelity API: logits for the Inception Score, the penultimate layer for FID/KID."""
        return "logits" if metric == "isc" else FEATURE_LAYER

    @staticmethod
    def can_be_compiled() -> bool:
        """torch-fidelity API: not compiled (a small CNN; compilation would cost more than it saves)."""
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        """torch-fidelity API: an input of the expected shape and dtype."""
        return torch.zeros(1, 3, 8, 8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """torch-fidelity API: the requested features of uint8 Bx3xHxW images, as float32."""
        assert x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3, f"expected uint8 Bx3xHxW, got {x.shape}"
        h, logits = self.net.features(x)
        out = {FEATURE_LAYER: h.float(), "logits": logits.float()}  # stats in float32 like inception's
        return tuple(out[name] for name in self.features_list)


def register() -> str:
    """Register `digits-cnn` with torch-fidelity (safe to call any number of times); returns the name."""
    current = FEATURE_EXTRACTORS_REGISTRY.get(NAME)
    if current is None:
        register_feature_extractor(NAME, DigitsFeatureExtractor)
    elif current is not DigitsFeatureExtractor:
        # Only a reloaded copy of this module may take the name over; anything else is a clash.
        assert current.__qualname__ == DigitsFeatureExtractor.__qualname__, f"'{NAME}' is registered to {current}"
        FEATURE_EXTRACTORS_REGISTRY[NAME] = DigitsFeatureExtractor
    return NAME


register()


def main(argv: list[str] | None = None) -> None:
    """`python -m stabench.scoring.digits_cnn`: train the digits classifier and write its weights (deterministic)."""
    parser = argparse.ArgumentParser(prog="python -m stabench.scoring.digits_cnn", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH, help=f"weights file (default: {WEIGHTS_PATH})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    r = fit_extractor(args.out, seed=args.seed, epochs=args.epochs)
    print(
        f"test accuracy {r['test_accuracy']:.4f} ({r['n_test']} held-out digits; "
        f"{r['test_accuracy_16px']:.4f} at 16x16), train accuracy {r['train_accuracy']:.4f}, "
        f"{r['seconds']:.1f}s\nsaved {r['path']} ({Path(r['path']).stat().st_size / 1024:.0f} KB, "
        f"sha256 {r['sha256'][:16]})"
    )


if __name__ == "__main__":
    main()

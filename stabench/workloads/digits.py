"""The 8x8 digits, shipped inside the package (`digits.npz` beside this file), so no trial needs scikit-learn.

The data is the test set of the UCI "Optical Recognition of Handwritten Digits" dataset (E. Alpaydin, C. Kaynak,
1998; CC BY 4.0), the copy scikit-learn ships as `load_digits()`: 1,797 images of integer levels 0..16 and their
labels 0..9, in scikit-learn's order. `digits.npz` was written once from that copy (docs/install.md says how), and
`tests/workloads/test_digits.py` checks it equals scikit-learn's whenever scikit-learn is installed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np

FILE = Path(__file__).with_name("digits.npz")
SHAPE = (1797, 8, 8)
# sha256 of images.tobytes() + labels.tobytes() (uint8): the arrays every digits record was trained and scored on
SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def digits_checksum(images: np.ndarray, labels: np.ndarray) -> str:
    """The sha256 of the uint8 arrays as shipped."""
    return hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()


@lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as (images (1797, 8, 8) float32 levels 0..16, labels (1797,) int64), read from the shipped file
    (plain arrays: no pickle) and checked against its checksum."""
    with np.load(FILE, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    if images.shape != SHAPE or labels.shape != SHAPE[:1] or digits_checksum(images, labels) != SHA256:
        raise RuntimeError(f"{FILE} is not the shipped digits file (shape or checksum differ); reinstall stabench")
    return images.astype(np.float32), labels.astype(np.int64)

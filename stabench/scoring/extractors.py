"""The feature extractors FID and KID are computed with (stabench's digits CNN; torch-fidelity's Inception from a
local weights file, never downloaded) and the names their reference statistics are cached under.

Cheap to import (no torch-fidelity): the CLI calls `resolve_inception_weights` to fail fast before training.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import UserError

EXTRACTORS = ("digits", "inception")
INCEPTION_ENV = "STABENCH_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3 (0.4.0), quoted so the error needs no import.
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


@dataclass(frozen=True)
class Extractor:
    """One torch-fidelity feature extractor, its weights file, and the suffix its metric keys carry."""

    name: str  # stabench's name: "digits" | "inception"
    fidelity_name: str  # torch-fidelity's registered name
    feature_layer: str  # features used for both FID and KID
    weights_path: Path
    key_suffix: str  # "_digits" -> fid_digits; "" -> fid
    batch_size: int = 64

    @property
    def weights_sha(self) -> str:
        """The weights file's sha256 prefix: reference caches are keyed by it."""
        return file_sha256(self.weights_path)[:16]

    def key(self, metric: str) -> str:
        """'fid' -> 'fid_digits' for the digits extractor, 'fid' for inception."""
        return f"{metric}{self.key_suffix}"

    def reference_name(self, dataset: str, resolution: int, split: str) -> str:
        """The cache name of a reference split's statistics under these weights."""
        return reference_name(dataset, resolution, split, self.fidelity_name, self.weights_sha)


def get_extractor(
    name: str = "digits", inception_weights: str | Path | None = None, digits_weights: str | Path | None = None
) -> Extractor:
    """The extractor called `name` ('digits' or 'inception'), registered with torch-fidelity and ready to use."""
    if name == "digits":
        from . import digits_cnn as digits  # imports torch_fidelity

        return Extractor(
            "digits",
            digits.register(),
            digits.FEATURE_LAYER,
            Path(digits_weights or digits.WEIGHTS_PATH),
            key_suffix="_digits",
            batch_size=500,
        )
    if name == "inception":
        # pool3 features, the standard FID layer
        return Extractor(
            "inception", "inception-v3-compat", "2048", resolve_inception_weights(inception_weights), key_suffix=""
        )
    raise UserError(f"eval.extractor: unknown extractor '{name}'; allowed: {', '.join(EXTRACTORS)}")


def _inception_help(problem: str) -> str:
    return (
        f"{problem}. FID with the 'inception' extractor needs torch-fidelity's InceptionV3 weights file "
        f"{INCEPTION_FILE}, which is never downloaded at run time. Download it on a machine with internet "
        f"from {INCEPTION_URL} and pass its path with --inception-weights PATH, the config key "
        f"eval.inception_weights, or the environment variable {INCEPTION_ENV}=PATH."
    )


def resolve_inception_weights(path: str | Path | None = None) -> Path:
    """The local InceptionV3 weights file: `path`, else $STABENCH_INCEPTION_WEIGHTS; UserError if neither exists.

    Cheap (no torch-fidelity import): call it before training so a missing file fails fast.
    """
    source = "--inception-weights / eval.inception_weights"
    if not path:
        path, source = os.environ.get(INCEPTION_ENV) or None, f"${INCEPTION_ENV}"
    if not path:
        raise UserError(_inception_help("eval.inception_weights: no Inception weights file given"))
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise UserError(
            _inception_help(
                f"eval.inception_weights: Inception weights file '{resolved}' (from {source}) does not exist"
            )
        )
    return resolved


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime): the Inception weights are ~100 MB."""
    path = Path(path).resolve()
    st = path.stat()
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


def reference_name(dataset: str, resolution: int, split: str, extractor: str, weights_sha: str) -> str:
    """A readable cache name for a reference set, e.g. 'digits-8px-test-digits-cnn-64df0185c66a'."""
    name = f"{dataset}-{resolution}px-{split}-{extractor}-{weights_sha[:12]}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)  # becomes part of a file name

"""The digits shipped in the package: scikit-learn's copy of the UCI digits, read without scikit-learn."""

import subprocess
import sys

import numpy as np
import pytest

from stabench.workloads import digits
from stabench.workloads.digits import digits_arrays
from tests.helpers import REPO


def test_the_shipped_digits_equal_scikit_learns_load_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = digits_arrays()
    reference = datasets.load_digits()
    assert images.dtype == np.float32
    assert np.array_equal(images, reference.images.astype(np.float32))
    assert np.array_equal(labels, reference.target)


def test_the_digits_train_without_scikit_learn(tmp_path):
    """A process in which scikit-learn cannot be imported loads the digits workload."""
    (tmp_path / "sklearn.py").write_text("raise ModuleNotFoundError(\"No module named 'sklearn'\", name='sklearn')\n")
    code = (
        "from stabench.config import WorkloadConfig\nfrom stabench.workloads.data import load_images\n"
        "print(tuple(load_images(WorkloadConfig(), 'train').shape))"
    )
    env_path = f"{tmp_path}:{REPO}"
    done = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": env_path, "PATH": ""}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1438, 1, 8, 8)"


def test_a_changed_digits_file_is_refused(tmp_path, monkeypatch):
    images, labels = digits_arrays()
    images = images.astype(np.uint8)
    images[0, 0, 0] += 1
    np.savez_compressed(tmp_path / "digits.npz", images=images, labels=labels.astype(np.uint8))
    monkeypatch.setattr(digits, "FILE", tmp_path / "digits.npz")
    digits_arrays.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="checksum"):
            digits_arrays()
    finally:
        digits_arrays.cache_clear()

import numpy as np
import pytest
import torch
from PIL import Image

from stabench.config import WorkloadConfig
from stabench.errors import DataError
from stabench.workloads.data import BatchStream, load_images


def test_digits_train_test_split_is_fixed_and_disjoint():
    train = load_images(WorkloadConfig(), "train")
    test = load_images(WorkloadConfig(), "test")
    assert train.shape == (1438, 1, 8, 8)
    assert test.shape == (359, 1, 8, 8)
    assert train.min() >= -1
    assert train.max() <= 1
    assert torch.equal(train, load_images(WorkloadConfig(), "train"))
    rows = {tuple(r) for r in train.flatten(1).tolist()}
    assert sum(tuple(r) in rows for r in test.flatten(1).tolist()) < 10  # only exact duplicate digits


def test_digits_upsampled_to_16():
    x = load_images(WorkloadConfig(resolution=16), "train")
    assert x.shape[1:] == (1, 16, 16)
    assert x.min() >= -1
    assert x.max() <= 1


def test_batch_order_is_deterministic_per_seed_and_covers_each_epoch():
    images = torch.arange(10.0).reshape(10, 1, 1, 1)
    a, b, c = (BatchStream(images, 4, seed) for seed in (1, 1, 2))
    first = [next(a) for _ in range(5)]
    assert all(torch.equal(x, next(b)) for x in first)
    assert not all(torch.equal(x, next(c)) for x in first)
    epoch = torch.cat(first)[:10].flatten().sort().values
    assert torch.equal(epoch, torch.arange(10.0))


def test_hflip_augmentation_is_seeded():
    images = torch.arange(4.0).reshape(1, 1, 2, 2).repeat(64, 1, 1, 1)
    batch = next(BatchStream(images, 64, seed=0, hflip=0.5))
    flipped = (batch[:, 0, 0, 0] == 1.0).float().mean()
    assert 0.2 < flipped < 0.8
    assert torch.equal(batch, next(BatchStream(images, 64, seed=0, hflip=0.5)))


def test_folder_workload_reads_nested_images(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        sub = tmp_path / f"class{i % 2}"
        sub.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(sub / f"{i}.png")
    cfg = WorkloadConfig(dataset="folder", root=str(tmp_path), resolution=8)
    train, test = load_images(cfg, "train"), load_images(cfg, "test")
    assert train.shape[1:] == (3, 8, 8)
    assert len(train) + len(test) == 6


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(WorkloadConfig(dataset="folder", root=str(tmp_path / "missing")))
    (tmp_path / "a.png").write_bytes(b"not a png")
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image .*a.png"):
        load_images(WorkloadConfig(dataset="folder", root=str(tmp_path)))


def test_missing_cifar10_says_how_to_provide_it(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*workload.root"):
        load_images(WorkloadConfig(dataset="cifar10", root=str(tmp_path), resolution=32))

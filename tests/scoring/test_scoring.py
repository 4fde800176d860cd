"""FID/KID through torch-fidelity: the digits extractor, reference caching, the floor, inception weights."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
from torch.utils.data import Dataset

from stabench import scoring
from stabench.errors import UserError
from stabench.scoring import digits_cnn
from stabench.workloads.data import load_digits_images

N = 359  # the size of the digits test split
FEW = 10  # KID subsets where only caching is under test (torch-fidelity's default, 100, is the slow part)


@pytest.fixture(scope="module")
def test_digits() -> torch.Tensor:
    return load_digits_images(8, "test")


@pytest.fixture(scope="module")
def train_digits() -> torch.Tensor:
    """N digits from the train split: real images the reference has never seen."""
    images = load_digits_images(8, "train")
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:N]]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fidelity")


@pytest.fixture(scope="module")
def ref_name() -> str:
    return scoring.get_extractor("digits").reference_name("digits", 8, "test")


@pytest.fixture
def images_seen(monkeypatch) -> list[int]:
    """Number of images each forward of the digits extractor receives."""
    seen: list[int] = []
    forward = digits_cnn.DigitsFeatureExtractor.forward

    def counting_forward(self, x):
        seen.append(len(x))
        return forward(self, x)

    monkeypatch.setattr(digits_cnn.DigitsFeatureExtractor, "forward", counting_forward)
    return seen


def blurred(x: torch.Tensor) -> torch.Tensor:
    """Half-strength 3x3 box blur: still digits, visibly softer."""
    return 0.5 * x + 0.5 * F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


class RawUint8(Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def to_uint8_by_hand(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)


# ---------------------------------------------------------------------------------------------
# The digits extractor
# ---------------------------------------------------------------------------------------------


def test_committed_weights_classify_held_out_digits():
    model = digits_cnn.load_classifier()
    images, labels = digits_cnn._digits_split("test")
    assert len(images) == N
    assert digits_cnn.accuracy(model, images, labels) > 0.97
    # The forms torch-fidelity and the 16x16 workload feed it: uint8 RGB, and 16x16 floats.
    assert digits_cnn.accuracy(model, to_uint8_by_hand(images), labels) > 0.97
    assert digits_cnn.accuracy(model, load_digits_images(16, "test"), labels) > 0.97
    assert digits_cnn.WEIGHTS_PATH.stat().st_size < 500_000


def test_fit_extractor_is_deterministic(tmp_path):
    a = digits_cnn.fit_extractor(tmp_path / "a.pt", seed=3, epochs=1)
    b = digits_cnn.fit_extractor(tmp_path / "b.pt", seed=3, epochs=1)
    wa, wb = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["test_accuracy"] == b["test_accuracy"]
    assert a["n_test"] == N
    assert a["n_train"] == 1438


def test_register_is_idempotent():
    assert digits_cnn.register() == digits_cnn.register() == "digits-cnn"
    assert torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY["digits-cnn"] is digits_cnn.DigitsFeatureExtractor


def test_extractor_features_are_penultimate_activations(test_digits):
    fe = digits_cnn.DigitsFeatureExtractor("digits-cnn", ["penultimate", "logits"])
    feats, logits = fe(scoring.images_to_uint8(test_digits[:10]))
    assert feats.shape == (10, digits_cnn.N_FEATURES)
    assert logits.shape == (10, 10)
    assert feats.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def test_images_to_uint8():
    x = torch.tensor([-1.0, 0.0, 1.0, float("nan"), 5.0]).view(5, 1, 1, 1)
    u8 = scoring.images_to_uint8(x)
    assert u8.dtype == torch.uint8
    assert u8.shape == (5, 3, 1, 1)
    assert u8[:, 0].flatten().tolist() == [0, 128, 255, 128, 255]
    assert scoring.images_to_uint8(torch.zeros(2, 3, 4, 4)).shape == (2, 3, 4, 4)


def test_fid_orders_real_blurred_noise(train_digits, test_digits, ref_name, cache_dir):
    noise = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    real, blur, rand = (
        scoring.score(x, test_digits, ref_name, cache_dir=cache_dir)
        for x in (train_digits, blurred(train_digits), noise)
    )
    assert real["fid_digits"] < 1.0 < blur["fid_digits"] < rand["fid_digits"]
    assert 3 * real["fid_digits"] < blur["fid_digits"]
    assert blur["fid_digits"] * 2 < rand["fid_digits"]
    assert real["kid_digits"] < blur["kid_digits"] < rand["kid_digits"]
    assert real["extractor"] == "digits-cnn"
    assert real["n_samples"] == N
    assert real["kid_subset_size"] == N
    assert {"fid", "kid"}.isdisjoint(real)  # never the plain Inception keys


def test_equals_a_direct_torch_fidelity_call(train_digits, test_digits, ref_name, cache_dir):
    ours = scoring.score(train_digits, test_digits, ref_name, cache_dir=cache_dir)
    direct = torch_fidelity.calculate_metrics(
        input1=RawUint8(to_uint8_by_hand(train_digits)),
        input2=RawUint8(to_uint8_by_hand(test_digits)),
        fid=True,
        kid=True,
        kid_subset_size=N,
        feature_extractor="digits-cnn",
        feature_layer_fid="penultimate",
        feature_layer_kid="penultimate",
        cache=False,
        cuda=False,
        save_cpu_ram=True,
        verbose=False,
    )
    assert ours["fid_digits"] == pytest.approx(direct[torch_fidelity.KEY_METRIC_FID], rel=1e-6)
    assert ours["kid_digits"] == pytest.approx(direct[torch_fidelity.KEY_METRIC_KID_MEAN], rel=1e-6, abs=1e-9)


def test_reference_features_are_cached(train_digits, test_digits, ref_name, tmp_path, images_seen):
    first = scoring.score(train_digits, test_digits, ref_name, cache_dir=tmp_path, kid_subsets=FEW)
    assert sum(images_seen) == 2 * N
    images_seen.clear()
    scoring._REFERENCES.clear()  # as in a new process: only the disk cache holds the reference
    second = scoring.score(train_digits, test_digits, ref_name, cache_dir=tmp_path, kid_subsets=FEW)
    assert sum(images_seen) == N  # only the samples
    assert second == first
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 2
    assert all(name.startswith(ref_name + f"-n{N}-") for name in cached)


def test_another_reference_under_the_same_name_is_not_read_from_cache(
    train_digits, test_digits, ref_name, tmp_path, images_seen
):
    scoring.score(train_digits, test_digits, ref_name, cache_dir=tmp_path, kid_subsets=FEW)
    images_seen.clear()
    subset = scoring.score(train_digits, test_digits[:200], ref_name, cache_dir=tmp_path, kid_subsets=FEW)
    assert sum(images_seen) == N + 200
    fresh = scoring.score(train_digits, test_digits[:200], ref_name, cache_dir=tmp_path / "fresh", kid_subsets=FEW)
    assert subset == fresh


def test_kid_subset_size_adapts_to_few_samples(train_digits, test_digits, ref_name, cache_dir):
    r = scoring.score(train_digits[:50], test_digits, ref_name, cache_dir=cache_dir)
    assert r["kid_subset_size"] == 50
    assert r["n_samples"] == 50
    assert all(torch.isfinite(torch.tensor(r[k])) for k in ("fid_digits", "kid_digits", "kid_digits_std"))
    assert scoring.kid_subset_size(5000, 10000) == 1000


def test_diverged_samples_score_badly_instead_of_crashing(test_digits, ref_name, cache_dir):
    nan = torch.full((64, 1, 8, 8), float("nan"))
    assert scoring.score(nan, test_digits, ref_name, cache_dir=cache_dir)["fid_digits"] > 5.0
    with pytest.raises(UserError, match="at least 2"):
        scoring.score(test_digits[:1], test_digits, ref_name, cache_dir=cache_dir)


def test_floor_is_small_positive_and_cached(test_digits, ref_name, tmp_path, images_seen):
    floor = scoring.fid_floor(test_digits, ref_name, cache_dir=tmp_path, splits=3, kid_subsets=FEW)
    assert 0 < floor["fid_digits"] < 3.0
    assert floor["n"] == N // 2
    assert floor["source"] == "halves"
    assert len(floor["fid_digits_splits"]) == floor["splits"] == 3
    assert sum(images_seen) == 3 * 2 * (N // 2)
    (stored,) = tmp_path.glob("*floor*.json")
    assert stored.name.startswith(ref_name)
    assert json.loads(stored.read_text()) == floor
    images_seen.clear()
    assert scoring.fid_floor(test_digits, ref_name, cache_dir=tmp_path, splits=3, kid_subsets=FEW) == floor
    assert images_seen == []


def test_floor_at_n_scores_training_images_like_a_trial(test_digits, train_digits, ref_name, cache_dir):
    small = scoring.fid_floor(
        test_digits, ref_name, cache_dir=cache_dir, splits=3, kid_subsets=FEW, real=train_digits, n=50
    )
    large = scoring.fid_floor(
        test_digits, ref_name, cache_dir=cache_dir, splits=3, kid_subsets=FEW, real=train_digits, n=300
    )
    assert small["source"] == "train-vs-reference"
    assert small["n"] == 50
    assert small["n_reference"] == N
    assert len(small["fid_digits_splits"]) == 3
    assert 0 < large["fid_digits"] < small["fid_digits"]  # FID's small-sample bias: the floor depends on n


def test_reference_name_has_every_part():
    name = scoring.reference_name("folder", 32, "test", "inception-v3-compat", "0123456789abcdef")
    assert name == "folder-32px-test-inception-v3-compat-0123456789ab"
    assert "/" not in scoring.reference_name("a/b", 8, "test", "digits-cnn", "ff")


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("STABENCH_CACHE", str(tmp_path))
    assert scoring.default_cache_dir() == tmp_path / "fidelity"
    monkeypatch.delenv("STABENCH_CACHE")
    assert scoring.default_cache_dir().parts[-3:] == (".cache", "stabench", "fidelity")


# ---------------------------------------------------------------------------------------------
# Inception: only from a local weights file
# ---------------------------------------------------------------------------------------------


def test_missing_inception_weights_explain_how_to_get_them(monkeypatch, tmp_path):
    monkeypatch.delenv("STABENCH_INCEPTION_WEIGHTS", raising=False)
    with pytest.raises(UserError) as err:
        scoring.resolve_inception_weights(None)
    msg = str(err.value)
    for needed in (
        "weights-inception-2015-12-05-6726825d.pth",
        fidelity_inception.URL_INCEPTION_V3,
        "--inception-weights PATH",
        "eval.inception_weights",
        "STABENCH_INCEPTION_WEIGHTS",
    ):
        assert needed in msg
    with pytest.raises(UserError, match="does not exist"):
        scoring.resolve_inception_weights(tmp_path / "nope.pth")
    monkeypatch.setenv("STABENCH_INCEPTION_WEIGHTS", str(tmp_path / "nope.pth"))
    with pytest.raises(UserError, match=r"\$STABENCH_INCEPTION_WEIGHTS"):
        scoring.resolve_inception_weights(None)
    with pytest.raises(UserError, match="inception"):
        scoring.score(torch.zeros(4, 1, 8, 8), torch.zeros(4, 1, 8, 8), "x", extractor="inception")


def test_unknown_extractor_is_a_user_error():
    with pytest.raises(UserError, match="allowed: digits, inception"):
        scoring.get_extractor("clip")


def test_inception_scores_from_a_local_file_and_reports_plain_keys(monkeypatch, tmp_path, test_digits):
    # A randomly initialised InceptionV3 with the real layout stands in for the real weights file.
    with (
        mock.patch.object(fidelity_inception, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fidelity_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda *a: None),
    ):
        fake = fidelity_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(fake.state_dict(), weights)
    monkeypatch.setenv("STABENCH_INCEPTION_WEIGHTS", str(weights))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(fidelity_inception, "load_state_dict_from_url", no_download)
    ext = scoring.get_extractor("inception")
    r = scoring.score(
        test_digits[:4],
        test_digits[4:8],
        ext.reference_name("digits", 8, "test"),
        extractor=ext,
        cache_dir=tmp_path / "cache",
        kid_subsets=FEW,
    )
    assert {"fid", "kid", "kid_std"} <= set(r)
    assert r["extractor"] == "inception-v3-compat"
    assert not any(k.endswith("_digits") for k in r)


def recording_cuda(monkeypatch, seen: list, then=None):
    """Record the `cuda` argument of each feature extraction torch-fidelity runs (and run it, or `then`)."""
    real = torch_fidelity.utils.get_featuresdict_from_dataset

    def extract(input, feat_extractor, batch_size, cuda, save_cpu_ram, verbose):
        seen.append(cuda)
        return (then or real)(input, feat_extractor, batch_size, cuda, save_cpu_ram, verbose)

    monkeypatch.setattr(torch_fidelity.utils, "get_featuresdict_from_dataset", extract)


def test_a_trial_on_the_cpu_scores_on_the_cpu_even_where_a_gpu_is_visible(monkeypatch, test_digits, cache_dir):
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, seen from torch-fidelity's call
    recording_cuda(monkeypatch, seen)
    cpu = torch.device("cpu")
    scorer = scoring.ReferenceScorer("digits", test_digits, "digits", 8, cache_dir=cache_dir, device=cpu)
    scorer.score(test_digits[:20])
    assert seen  # the samples' features (and the reference's, unless this process holds them already)
    assert set(seen) == {False}


def test_outside_a_trial_scoring_keeps_torch_fidelitys_default(monkeypatch, test_digits, cache_dir):
    seen = []

    def stop(*args):
        raise KeyError("only the call's arguments are under test")

    recording_cuda(monkeypatch, seen, then=stop)
    with pytest.raises(KeyError):
        scoring.score(test_digits[:20], test_digits[:30], "stub-reference", cache_dir=cache_dir)
    assert seen == [torch.cuda.is_available()]


def test_the_extractor_is_built_once_per_process(monkeypatch, test_digits, cache_dir):
    scoring._feature_extractor.cache_clear()
    built = []
    real = torch_fidelity.utils.create_feature_extractor
    monkeypatch.setattr(
        torch_fidelity.utils, "create_feature_extractor", lambda *a, **k: built.append(a) or real(*a, **k)
    )
    scorer = scoring.ReferenceScorer("digits", test_digits, "digits", 8, cache_dir=cache_dir)
    scorer.score(test_digits[:20])
    scorer.score(test_digits[20:40])
    assert len(built) == 1


def test_reference_statistics_are_held_in_the_process(train_digits, test_digits, ref_name, tmp_path, images_seen):
    first = scoring.score(train_digits, test_digits, ref_name, cache_dir=tmp_path, kid_subsets=FEW)
    for cached in tmp_path.iterdir():  # the disk cache is gone: only the process's copy can serve the reference
        cached.unlink()
    images_seen.clear()
    second = scoring.score(train_digits, test_digits, ref_name, cache_dir=tmp_path, kid_subsets=FEW)
    assert sum(images_seen) == N  # only the samples
    assert second == first

"""Cost of scoring samples through stabench vs a direct torch-fidelity call, and what the reference cache saves.

Workload: 8x8 digits. Reference = the test split (359 images); samples = 1,000 train-split digits, half
with added Gaussian noise and half blurred, so FID/KID are neither trivial nor huge. Extractor: digits-cnn.

(a) Cached reference, both sides: `stabench.scoring.score` (float samples and reference in [-1, 1];
    converts, hashes the reference for its cache name, calls torch-fidelity) vs `calculate_metrics` called
    by hand with the same extractor and options on a reference Dataset built once, its cache warmed
    under its own name. Rounds alternate between the two so machine drift hits both; the ratio of the
    medians (and of the minima, less
    sensitive to other load on the machine) is printed (target <= 1.1).
(b) First call on an empty cache (reference features computed and saved) vs the second (read back).

    python benchmarks/scoring.py [--samples 1000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch_fidelity

from stabench import scoring
from stabench.workloads.data import load_digits_images


def noisy_and_blurred(n: int, seed: int = 0) -> torch.Tensor:
    """n train digits (drawn with replacement): even ones + N(0, 0.3) noise, odd ones 3x3 box-blurred."""
    gen = torch.Generator().manual_seed(seed)
    train = load_digits_images(8, "train")
    x = train[torch.randint(0, len(train), (n,), generator=gen)]
    noisy = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.where((torch.arange(n) % 2 == 0)[:, None, None, None], noisy, blurred)


def direct_call(
    samples: torch.Tensor, reference_ds: scoring.ImageDataset, cache_name: str, cache_dir: Path, ext: scoring.Extractor
) -> float:
    """What a user would write with torch-fidelity alone (same extractor and options as stabench)."""
    u8 = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).repeat(1, 3, 1, 1)
    m = torch_fidelity.calculate_metrics(
        input1=scoring.ImageDataset(u8),
        input2=reference_ds,
        input2_cache_name=cache_name,
        cache_root=str(cache_dir),
        fid=True,
        kid=True,
        kid_subset_size=min(len(u8), len(reference_ds), 1000),
        feature_extractor=ext.fidelity_name,
        feature_layer_fid=ext.feature_layer,
        feature_layer_kid=ext.feature_layer,
        feature_extractor_weights_path=str(ext.weights_path),
        batch_size=ext.batch_size,
        save_cpu_ram=True,
        cuda=torch.cuda.is_available(),
        verbose=False,
    )
    return m[torch_fidelity.KEY_METRIC_FID]


def seconds(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def own_work(samples: torch.Tensor, reference: torch.Tensor, name: str) -> float:
    """Seconds stabench spends outside torch-fidelity in one `score` call."""
    start = time.perf_counter()
    ext = scoring.get_extractor("digits")
    ref = scoring.images_to_uint8(reference)
    scoring._cache_name(name, ref, ext)
    scoring.ImageDataset(scoring.images_to_uint8(samples))
    return time.perf_counter() - start


def _fmt(times: list[float]) -> str:
    return f"median {statistics.median(times) * 1e3:.1f} ms (min {min(times) * 1e3:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    reference = load_digits_images(8, "test")
    samples = noisy_and_blurred(args.samples)
    ext = scoring.get_extractor("digits")
    name = ext.reference_name("digits", 8, "test")
    reference_ds = scoring.ImageDataset(scoring.images_to_uint8(reference))
    print(
        f"digits 8x8: {len(samples)} samples vs {len(reference)} reference images (test split), "
        f"extractor {ext.fidelity_name}, torch-fidelity {torch_fidelity.__version__}, "
        f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "warm"
        ours = scoring.score(samples, reference, name, cache_dir=cache)  # warm both caches (and imports)
        theirs = direct_call(samples, reference_ds, "direct-" + name, cache, ext)
        assert abs(ours["fid_digits"] - theirs) <= 1e-6 * abs(theirs), (ours["fid_digits"], theirs)
        print(f"fid_digits {ours['fid_digits']:.4f} (direct call: {theirs:.4f}), kid_digits {ours['kid_digits']:.4f}")

        def ours():
            scoring.score(samples, reference, name, cache_dir=cache)

        def direct():
            direct_call(samples, reference_ds, "direct-" + name, cache, ext)

        t_ours, t_direct = [], []
        for r in range(args.rounds):
            pair = [(t_ours, ours), (t_direct, direct)]
            for times, fn in pair if r % 2 == 0 else pair[::-1]:  # neither side always runs first
                times.append(seconds(fn))
        print(
            f"(a) cached reference, {args.rounds} alternating rounds: stabench {_fmt(t_ours)}, "
            f"direct torch-fidelity {_fmt(t_direct)}; ratio of medians "
            f"{statistics.median(t_ours) / statistics.median(t_direct):.3f}, of minima "
            f"{min(t_ours) / min(t_direct):.3f} (target <= 1.1)"
        )
        print(
            f"    stabench's own work per call (get_extractor, uint8 conversion, reference hash): "
            f"{_fmt([own_work(samples, reference, name) for _ in range(args.rounds)])}"
        )

        first, second = [], []
        for r in range(args.rounds):
            fresh = Path(tmp) / f"fresh{r}"
            first.append(seconds(scoring.score, samples, reference, name, cache_dir=fresh))
            second.append(seconds(scoring.score, samples, reference, name, cache_dir=fresh))
        print(
            f"(b) empty cache, {args.rounds} rounds: first call {_fmt(first)}, second call {_fmt(second)}; "
            f"the cache saves {(statistics.median(first) - statistics.median(second)) * 1e3:.0f} ms (median)"
        )


if __name__ == "__main__":
    main()

"""Training throughput against the machine's own peak, for each backbone x preset and each engine mode.

For every preset: FLOPs of one training step (forward + backward, `torch.utils.flop_counter.FlopCounterMode`),
steps/s of the engine's own step (`stabench.engine.trial.train_step` on a `TrainState`: the trial's
precision, compile setting, fused AdamW and clipping) in each mode, the achieved FLOP/s, and the peak of this
machine in the mode's arithmetic (a large matmul, best of several) -> utilisation. Ratios to eager fp32 are
taken in one run, so a shared, noisy machine affects every mode alike.

Then, end to end: trials/hour of the quickstart sweep with one trial using every core (`--workers 1`) against
one trial per core (`--workers <cores>`), each in a fresh store and study.

    python benchmarks/throughput.py [--presets unet/small/8/128,uvit/deep/16/64] [--modes fp32,bf16]
                                    [--steps 10] [--sweep-trials 4 | --no-sweep]

Runs unchanged on a GPU (`--device cuda`): there `tf32` is a mode too, and the peak is measured on the GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stabench.config import load_config
from stabench.data import load_images
from stabench.diffusion import Diffusion
from stabench.engine import resolve_device
from stabench.engine.state import TrainState
from stabench.engine.trial import train_step

PRESETS = "unet/small/8/128,unet/deep/16/64,uvit/small/8/128,uvit/deep/16/64,uvit/deep/16/32/64"
MODES = {  # name -> (engine.precision, engine.compile)
    "fp32": ("fp32", False),
    "tf32": ("tf32", False),
    "compile": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16+compile": ("bf16", True),
}
PEAK_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REPO = Path(__file__).resolve().parents[1]


def preset_config(spec: str, mode: str, device: str):
    """A trial config for 'backbone/preset/resolution/batch[/width]' in an engine mode."""
    backbone, preset, resolution, batch, *width = spec.split("/")
    precision, compile_ = MODES[mode]
    return load_config(
        None,
        [
            f"workload.backbone={backbone}",
            f"workload.preset={preset}",
            f"workload.resolution={resolution}",
            f"optim.batch_size={batch}",
            f"engine.precision={precision}",
            f"engine.compile={str(compile_).lower()}",
            f"device={device}",
            *([f"workload.width={width[0]}"] if width else []),
        ],
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(cfg, images: torch.Tensor, device: torch.device) -> int:
    """FLOPs of one training step's forward and backward (eager, as written)."""
    state = TrainState(cfg, images, device)
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(device)
    x0 = next(state.batches)
    t = torch.randint(0, diffusion.T, (len(x0),), device=device)
    with FlopCounterMode(display=False) as counter:
        diffusion.loss(state.model, x0, t, torch.randn_like(x0)).backward()
    return counter.get_total_flops()


def steps_per_second(cfg, images: torch.Tensor, device: torch.device, steps: int, warmup: int) -> tuple[float, dict]:
    """Steps/s of the engine's step after `warmup` steps (which include any compilation)."""
    state = TrainState(cfg, images, device)
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(device)
    state.precision.set_flags()

    def one_step():
        return train_step(state, diffusion, cfg.optim.clip_norm)

    for _ in range(warmup):
        one_step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    sync(device)
    return steps / (time.perf_counter() - start), state.forward.info()


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of the best of `reps` n x n matmuls: this machine's own ceiling in that arithmetic."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def preset_table(presets: list[str], modes: list[str], device: torch.device, steps: int, warmup: int) -> None:
    peaks: dict[str, float] = {}
    print(f"\n{'preset':<22} {'mode':<13} {'GFLOP/step':>10} {'steps/s':>8} {'x fp32':>7} {'GFLOP/s':>8} {'util':>6}")
    for spec in presets:
        base_cfg = preset_config(spec, "fp32", str(device))
        images = load_images(base_cfg.workload, "train")
        flops = step_flops(base_cfg, images, device)
        reference = None
        for mode in modes:
            precision = MODES[mode][0]
            if precision not in peaks:
                peaks[precision] = matmul_peak(PEAK_DTYPES[precision], device)
            rate, info = steps_per_second(preset_config(spec, mode, str(device)), images, device, steps, warmup)
            reference = reference or rate
            note = f"  (fell back to eager: {info['fallback']})" if info["fallback"] else ""
            print(
                f"{spec:<22} {mode:<13} {flops / 1e9:>10.2f} {rate:>8.2f} {rate / reference:>6.2f}x "
                f"{flops * rate / 1e9:>8.1f} {flops * rate / peaks[precision]:>6.0%}{note}",
                flush=True,
            )
    print("\npeak (matmul 2048^2): " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))


def sweep_trials_per_hour(workers: int, trials: int, threads_total: int) -> float:
    """Trials/hour of the quickstart sweep with `workers` local processes, in a fresh store and study."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "stabench.cli", "sweep", str(REPO / "search_spaces/quickstart.yaml"),
            "--n-trials", str(trials), "--workers", str(workers), "--store", f"{tmp}/runs",
            "--study-storage", f"{tmp}/study.journal", "--wandb", "disabled",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads_total // workers))}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
        return trials * 3600 / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default=PRESETS, help="comma-separated backbone/preset/resolution/batch[/width]")
    ap.add_argument("--modes", default=None, help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sweep-trials", type=int, default=4, help="trials per end-to-end sweep")
    ap.add_argument("--no-sweep", action="store_true", help="skip the end-to-end trials/hour comparison")
    args = ap.parse_args()

    device = resolve_device(args.device)
    default_modes = ["fp32", "compile", "bf16", "bf16+compile"] + (["tf32"] if device.type == "cuda" else [])
    modes = args.modes.split(",") if args.modes else default_modes
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        ap.error(f"--modes: unknown {', '.join(unknown)}; allowed: {', '.join(MODES)}")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.steps} timed steps")
    if args.presets:  # --presets "" measures only the end-to-end sweep
        preset_table(args.presets.split(","), modes, device, args.steps, args.warmup)

    if not args.no_sweep:
        cores = os.cpu_count() or 1
        print(f"\nquickstart sweep, {args.sweep_trials} trials, {cores} cores:")
        one = sweep_trials_per_hour(1, args.sweep_trials, cores)
        print(f"  --workers 1 (one trial on every core): {one:.1f} trials/hour", flush=True)
        if cores > 1:
            many = sweep_trials_per_hour(cores, args.sweep_trials, cores)
            print(f"  --workers {cores} (one trial per core):   {many:.1f} trials/hour   ratio {many / one:.2f}")


if __name__ == "__main__":
    main()

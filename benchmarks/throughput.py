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
    python benchmarks/throughput.py --profile unet/deep/16/64:bf16 [--steps 5]
    python benchmarks/throughput.py --presets uvit/deep/16/64 --set model.dropout=0   # any config override
    python benchmarks/throughput.py --presets scalelong-cifar10-d12,scalelong-cifar10-d16 --modes preset \
                                    --tflops 400 --no-sweep --device cuda

A preset may also be a reference config by name (`scalelong-cifar10-d12`: ScaleLong's U-ViT and CIFAR-10 recipe,
docs/scalelong.md); mode `preset` runs it with its own engine settings (bf16 + torch.compile), and without the
CIFAR-10 files it times random images of CIFAR's shape (the arithmetic does not depend on the pixels).
`--tflops 400` adds what a GPU run needs: steps/s and hours for the whole run at that sustained rate.

`--profile unet/deep/16/64:bf16` prints, instead, where one preset's step spends its time in one mode: the
profiler's self time per kind of op (convolutions, matmuls, norms, activations and other elementwise ops, dtype
casts and copies, the optimizer) and the largest single ops with their shapes, which says what bounds a mode
that stays far below the matmul peak.

Runs unchanged on a GPU (`--device cuda`): there `tf32` is a mode too, and the peak is measured on the GPU.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from stabench.config import load_config
from stabench.engine import resolve_device
from stabench.engine.diffusion import Diffusion
from stabench.engine.state import TrainState
from stabench.engine.trial import train_step
from stabench.errors import DataError
from stabench.sweep.baselines import load_baseline
from stabench.workloads.data import load_images

PRESETS = "unet/small/8/128,unet/deep/16/64,uvit/small/8/128,uvit/deep/16/64,uvit/deep/16/32/64"
MODES = {  # name -> (engine.precision, engine.compile); None: a named preset's own
    "preset": (None, None),
    "fp32": ("fp32", False),
    "tf32": ("tf32", False),
    "compile": ("fp32", True),
    "bf16": ("bf16", False),
    "bf16+compile": ("bf16", True),
}
PEAK_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REPO = Path(__file__).resolve().parents[1]


def preset_config(spec: str, mode: str, device: str, overrides: list[str] = ()):
    """A trial config for 'backbone/preset/resolution/batch[/width]' or a reference config's name in an engine mode,
    with `--set` overrides."""
    precision, compile_ = MODES[mode]
    engine = [] if precision is None else [f"engine.precision={precision}", f"engine.compile={str(compile_).lower()}"]
    if "/" not in spec:  # a reference config (baselines/NAME.yaml)
        return load_baseline(spec, [*engine, f"device={device}", *overrides])
    if precision is None:
        raise SystemExit("--modes preset: only for a reference config by name (e.g. scalelong-cifar10-d12)")
    backbone, preset, resolution, batch, *width = spec.split("/")
    return load_config(
        None,
        [
            f"workload.backbone={backbone}",
            f"workload.preset={preset}",
            f"workload.resolution={resolution}",
            f"optim.batch_size={batch}",
            *engine,
            f"device={device}",
            *([f"workload.width={width[0]}"] if width else []),
            *overrides,
        ],
    )


def training_images(cfg) -> torch.Tensor:
    """The workload's training images, or random ones of its shape when its files are not here (a GPU node being
    sized before the data arrive): FLOPs and speed do not depend on the pixels."""
    try:
        return load_images(cfg.workload, "train")
    except DataError:
        w = cfg.workload
        print(f"({w.dataset} not under {w.root}: timing 2,048 random images of its shape)")
        return torch.rand(2048, 3, w.resolution, w.resolution, generator=torch.Generator().manual_seed(0)) * 2 - 1


def gpu_needs(cfg, flops: int, tflops: float) -> str:
    """What a run of this config needs at a sustained `tflops`: steps/s and hours for its steps."""
    rate = tflops * 1e12 / flops
    hours = cfg.optim.steps / rate / 3600
    return f"at {tflops:g} TFLOP/s: {rate:.1f} steps/s, {hours:.1f} h for {cfg.optim.steps:,} steps"


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


# Kinds of op, by a substring of the profiler's op name (first match wins; the rest is "other").
OP_KINDS = (
    ("optimizer", ("adam", "_foreach_")),
    ("convolution", ("conv",)),
    ("matmul / attention", ("mm", "matmul", "linear", "attention", "softmax")),
    ("norm", ("norm",)),
    ("dtype casts, copies", ("copy_", "_to_copy", "aten::to", "clone", "contiguous", "cat")),
    ("activation", ("silu", "gelu", "relu", "sigmoid")),
    ("other elementwise", ("add", "mul", "sub", "div", "pow", "sqrt", "rsqrt", "where", "fill", "zero", "neg",
                           "exp", "mean", "sum", "randn", "rand", "dropout", "bernoulli", "index", "gather")),
)  # fmt: skip


def op_kind(name: str) -> str:
    """The kind of a profiler op name such as 'aten::native_group_norm_backward'."""
    low = name.lower()
    return next((kind for kind, keys in OP_KINDS if any(k in low for k in keys)), "other")


def op_profile(cfg, images: torch.Tensor, device: torch.device, steps: int, warmup: int) -> tuple[dict, list]:
    """Self time (s) per kind of op over `steps` engine steps, after `warmup` untimed ones; and the largest ops,
    as (seconds, name, input shapes)."""
    from torch.profiler import ProfilerActivity, profile

    state = TrainState(cfg, images, device)
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(device)
    state.precision.set_flags()
    for _ in range(warmup):
        train_step(state, diffusion, cfg.optim.clip_norm)
    sync(device)
    cuda = device.type == "cuda"
    with profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []), record_shapes=True
    ) as prof:
        for _ in range(steps):
            train_step(state, diffusion, cfg.optim.clip_norm)
        sync(device)
    totals: dict[str, float] = collections.defaultdict(float)
    largest = []
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key.startswith("aten::") or cuda:  # leaf aten ops: their self times add up without overlap
            seconds = (event.self_device_time_total if cuda else event.self_cpu_time_total) / 1e6
            totals[op_kind(event.key)] += seconds
            largest.append((seconds, event.key, event.input_shapes))
    return dict(totals), sorted(largest, key=lambda t: -t[0])[:8]


def print_profile(spec_mode: str, device: torch.device, steps: int, warmup: int, overrides: list[str]) -> None:
    """`--profile PRESET:MODE`: the step's time per kind of op, largest first, then the largest single ops."""
    spec, _, mode = spec_mode.partition(":")
    cfg = preset_config(spec, mode or "fp32", str(device), overrides)
    totals, largest = op_profile(cfg, load_images(cfg.workload, "train"), device, steps, warmup)
    whole = sum(totals.values())
    print(f"\n{spec} {mode or 'fp32'}: self time per kind of op over {steps} steps ({whole / steps * 1e3:.0f} ms/step)")
    for kind, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<22} {seconds / steps * 1e3:>8.1f} ms/step {seconds / whole:>6.0%}")
    print("largest ops (name, input shapes):")
    for seconds, name, shapes in largest:
        print(f"  {seconds / steps * 1e3:>8.1f} ms/step {seconds / whole:>6.0%}  {name} {str(shapes)[:80]}")


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


def preset_table(
    presets: list[str],
    modes: list[str],
    device: torch.device,
    steps: int,
    warmup: int,
    overrides: list[str],
    tflops: float | None = None,
) -> None:
    peaks: dict[str, float] = {}
    print(f"\n{'preset':<22} {'mode':<13} {'GFLOP/step':>10} {'steps/s':>8} {'x fp32':>7} {'GFLOP/s':>8} {'util':>6}")
    for spec in presets:
        base_cfg = preset_config(spec, "fp32", str(device), overrides)
        images = training_images(base_cfg)
        flops = step_flops(base_cfg, images, device)
        print(
            f"{spec:<22} {flops / 1e9:.2f} GFLOP/step" + (f"; {gpu_needs(base_cfg, flops, tflops)}" if tflops else "")
        )
        reference = None
        for mode in modes:
            if MODES[mode][0] is None and "/" in spec:
                continue
            cfg = preset_config(spec, mode, str(device), overrides)
            precision = cfg.engine.precision
            if precision not in peaks:
                peaks[precision] = matmul_peak(PEAK_DTYPES[precision], device)
            rate, info = steps_per_second(cfg, images, device, steps, warmup)
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
    ap.add_argument("--profile", metavar="PRESET:MODE", help="only the time per kind of op of one preset and mode")
    ap.add_argument("--tflops", type=float, default=None, help="print steps/s and run hours at this TFLOP/s")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every preset, e.g. --set model.dropout=0 (repeatable)")  # fmt: skip
    args = ap.parse_args()

    device = resolve_device(args.device)
    default_modes = ["fp32", "compile", "bf16", "bf16+compile"] + (["tf32"] if device.type == "cuda" else [])
    modes = args.modes.split(",") if args.modes else default_modes
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        ap.error(f"--modes: unknown {', '.join(unknown)}; allowed: {', '.join(MODES)}")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, {args.steps} timed steps"
          + (f", overrides {' '.join(args.overrides)}" if args.overrides else ""))  # fmt: skip
    if args.profile:
        if args.profile.partition(":")[2] not in ("", *MODES):
            ap.error(f"--profile: unknown mode in '{args.profile}'; allowed: {', '.join(MODES)}")
        print_profile(args.profile, device, args.steps, args.warmup, args.overrides)
        return
    if args.presets:  # --presets "" measures only the end-to-end sweep
        preset_table(args.presets.split(","), modes, device, args.steps, args.warmup, args.overrides, args.tflops)

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

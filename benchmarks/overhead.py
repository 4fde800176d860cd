"""Overhead of stabench's instrumented training step vs a plain hand-written PyTorch loop.

Both train the same model (same config, same batch size) on the same digits data. stabench runs with
telemetry on (per-step loss/grad-norm, probe batch every `probe_every` steps with feature norms,
divergence checks) and 4 EMA betas; the plain loop does forward, loss, backward, clip, step and
nothing else. Rounds alternate between the two so machine drift hits both; the ratio of the median
per-step times is printed.

    python benchmarks/overhead.py [--steps 300] [--rounds 3] [--set KEY=VALUE ...]
    python benchmarks/overhead.py --set engine.precision=bf16     # the overhead in another engine mode
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stabench.config import load_config
from stabench.engine import resolve_device, run_trial
from stabench.engine.diffusion import Diffusion
from stabench.engine.precision import Precision
from stabench.models import build_model
from stabench.workloads.data import load_images

EMA_BETAS = "ema.betas=[0.99,0.999,0.9995,0.9999]"


def plain_loop_step_time(cfg, images: torch.Tensor, device: torch.device) -> float:
    """Seconds per step of the loop a user would write by hand."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, images.shape[1]).to(device)
    diffusion = Diffusion(cfg.diffusion, cfg.timestep_weighting).to(device)
    # the same engine mode as the trial: fused AdamW, the trial's autocast (compare fp32 with fp32, bf16 with bf16)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
    precision = Precision(cfg.engine.precision, device)
    data = images.to(device)
    bs, steps = cfg.optim.batch_size, cfg.optim.steps
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        x0 = data[torch.randint(0, len(data), (bs,), device=device)]
        t = torch.randint(0, diffusion.T, (bs,), device=device)
        noise = torch.randn_like(x0)
        with precision.autocast():
            loss = diffusion.loss(model, x0, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def stabench_step_time(cfg) -> float:
    rec = run_trial(cfg)
    assert rec["status"] == "ok", rec.get("error") or rec.get("diverged_reason")
    return 1.0 / rec["steps_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="baselines/ddpm.yaml")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()

    # eval.every = steps: the only evaluation is the final one (sampling is off: it is not a training step).
    cfg = load_config(
        args.config, [f"steps={args.steps}", f"eval.every={args.steps}", "samples=0", EMA_BETAS, *args.overrides]
    )
    device = resolve_device(cfg.device)
    images = load_images(cfg.workload, "train")
    print(
        f"device {device}, threads {torch.get_num_threads()}, {cfg.workload.backbone}/{cfg.workload.preset}, "
        f"batch {cfg.optim.batch_size}, {args.steps} steps x {args.rounds} rounds, "
        f"probe every {cfg.eval.probe_every}, EMA betas {list(cfg.ema.betas)}"
    )
    plain_loop_step_time(cfg, images, device)  # warm-up (allocator, kernels)
    plain, ours = [], []
    for r in range(args.rounds):
        plain.append(plain_loop_step_time(cfg, images, device))
        ours.append(stabench_step_time(cfg))
        print(
            f"round {r + 1}: plain {plain[-1] * 1e3:.2f} ms/step   stabench {ours[-1] * 1e3:.2f} ms/step   "
            f"ratio {ours[-1] / plain[-1]:.3f}"
        )
    p, s = statistics.median(plain), statistics.median(ours)
    paired = statistics.median(o / q for o, q in zip(ours, plain))
    print(f"median: plain {p * 1e3:.2f} ms/step, stabench {s * 1e3:.2f} ms/step")
    print(
        f"overhead ratio (stabench / plain): median of per-round ratios {paired:.3f}, ratio of medians "
        f"{s / p:.3f}   (target <= 1.05)"
    )


if __name__ == "__main__":
    main()

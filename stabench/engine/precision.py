"""How a trial computes: numeric precision (TF32 flags, autocast, loss scaling) and `torch.compile`.

Precision changes results, so `engine.precision` is part of the config hash and leaderboards never pool two
precisions. Compilation does not change the arithmetic a trial asks for (only how it is scheduled), so
`engine.compile` is recorded but not hashed; a compile failure falls back to eager with one warning.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import UserError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, device: torch.device) -> None:
    """Exit early for a precision the device cannot run (before any training)."""
    if name == "tf32" and device.type != "cuda":
        raise UserError(
            f"'tf32' needs a CUDA device (TF32 is a tensor-core format), this trial runs on {device.type}",
            key="engine.precision",
            allowed=["fp32", "bf16", "fp16"],
        )


class Precision:
    """One trial's precision: the fp32 matmul/conv mode, the autocast context and the fp16 loss scaler."""

    def __init__(self, name: str, device: torch.device, compiled: bool = False):
        check_precision(name, device)
        self.name, self.device = name, device
        self.dtype = AUTOCAST_DTYPES.get(name)
        # fp16's narrow range overflows gradients: scale the loss and skip steps whose gradients overflowed.
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None
        # On CPU, torch's fused flash-attention kernel runs its bf16/fp16 backward several times slower than
        # SDPA's math path (U-ViT small, dropout 0: 4.7 vs 17.7 steps/s, benchmarks/throughput.py); CUDA keeps
        # the fused kernels. Attention with dropout takes the math path on CPU in any case. A compiled model is
        # left to torch.compile's own lowering (which the kernel choice does not steer), recorded as `auto`.
        low_on_cpu = self.dtype is not None and device.type == "cpu"
        self.attention = "math" if low_on_cpu and not compiled else "auto"

    def set_flags(self) -> None:
        """TF32 for fp32 matmuls and convolutions only under `tf32` (cuDNN would otherwise use it silently)."""
        mode = "tf32" if self.name == "tf32" else "ieee"
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.conv.fp32_precision = mode

    @contextlib.contextmanager
    def autocast(self):
        """The context the forward pass runs in: autocast to bf16/fp16 (with the attention kernel `attention`
        says); a no-op for fp32 and tf32."""
        if self.dtype is None:
            yield
            return
        kernel = sdpa_kernel(SDPBackend.MATH) if self.attention == "math" else contextlib.nullcontext()
        with torch.autocast(self.device.type, dtype=self.dtype), kernel:
            yield

    def flags(self) -> dict:
        """What the record says about how fp32 arithmetic ran."""
        return {
            "precision": self.name,
            "matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
            "cudnn_conv_fp32_precision": torch.backends.cudnn.conv.fp32_precision,
            "loss_scaling": self.scaler is not None,
            "attention": self.attention,
        }


class Compiled:
    """A model's forward, compiled on request. Compilation is lazy in torch (the forward compiles at its first
    call, the backward at its first backward), so the first use runs under `guard`: if it fails, it is rerun
    eagerly from the RNG state it started from, and the rest of the trial runs eagerly (one warning, recorded).
    """

    def __init__(self, model: nn.Module, enabled: bool):
        self.model, self.enabled = model, enabled
        self.fallback: str | None = None
        self.forward: Callable = torch.compile(model, dynamic=False) if enabled else model
        self._proven = not enabled

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def guard(self, fn: Callable[[], object]):
        """Run `fn` (which calls this forward); the first time, fall back to eager if compilation fails."""
        if self._proven:
            return fn()
        device = next(self.model.parameters()).device
        cuda = device.type == "cuda"
        rng = torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None
        try:
            out = fn()
        except Exception as e:  # any compiler error: the trial goes on eagerly, from the same RNG state
            self.fallback = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"[:300]
            warnings.warn(f"engine.compile: torch.compile failed, running eagerly ({self.fallback})", stacklevel=2)
            torch.set_rng_state(rng[0])
            if cuda:
                torch.cuda.set_rng_state(rng[1], device)
            for p in self.model.parameters():
                p.grad = None
            self.forward = self.model
            out = fn()
        self._proven = True
        return out

    def info(self) -> dict:
        """What the record says about compilation."""
        return {"compile": self.enabled, "compiled": self.enabled and self.fallback is None, "fallback": self.fallback}

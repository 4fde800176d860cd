"""Exponential moving averages of the weights, several betas in one run.

theta'_beta <- beta * theta'_beta + (1 - beta) * theta after every optimizer step (seed 001), with the
optional warm-up beta_t = min(beta, (1 + t) / (10 + t)). One fused `_foreach_lerp_` per beta keeps four
betas cheap.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


class MultiEMA:
    """Shadow copies of a model's parameters for each beta (buffers are copied at evaluation time)."""

    def __init__(self, model: nn.Module, betas: tuple[float, ...], warmup: bool = False):
        self.betas, self.warmup, self.num_updates = tuple(betas), warmup, 0
        self.params = [p for p in model.parameters()]
        self.shadows = {b: [p.detach().clone() for p in self.params] for b in self.betas}

    def effective_beta(self, beta: float) -> float:
        """The beta used at this update (smaller during the warm-up)."""
        t = self.num_updates
        return min(beta, (1 + t) / (10 + t)) if self.warmup else beta

    @torch.no_grad()
    def update(self) -> None:
        """Move every EMA copy towards the current weights."""
        current = [p.detach() for p in self.params]
        for beta, shadow in self.shadows.items():
            torch._foreach_lerp_(shadow, current, 1.0 - self.effective_beta(beta))
        self.num_updates += 1

    def copy_to(self, model: nn.Module, beta: float) -> nn.Module:
        """A deep copy of `model` carrying the EMA weights for `beta`, in eval mode."""
        ema_model = copy.deepcopy(model).eval()
        with torch.no_grad():
            torch._foreach_copy_(list(ema_model.parameters()), self.shadows[beta])
        return ema_model

    def state_dict(self) -> dict:
        """The EMA weights and update count, for checkpoints."""
        return {"num_updates": self.num_updates, "shadows": {str(b): s for b, s in self.shadows.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore the EMA weights and update count."""
        self.num_updates = state["num_updates"]
        for b, s in state["shadows"].items():
            torch._foreach_copy_(self.shadows[float(b)], s)

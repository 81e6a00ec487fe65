"""An exponential moving average of the backbone's weights (``train.ema_decay``).

Averaged weights generalise better than the last iterate of a noisy run; evaluation during and after the run
and the exported ``backbone.pt`` use them when the EMA is on.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA", "ema_decay_at"]


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used by update number ``updates`` (1-based): ``min(decay, (1 + n) / (10 + n))``.

    The ramp keeps the early average from being dominated by the initial weights in short runs (the rule of
    TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``).
    """
    return min(decay, (1.0 + updates) / (10.0 + updates))


class EMA:
    """A frozen copy of ``model`` whose floating-point parameters and buffers follow the model's average.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights (call after each optimiser step)."""
        self.updates += 1
        d = ema_decay_at(self.decay, self.updates)
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = current[name].detach()
            if avg.is_floating_point():
                avg.lerp_(new.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(new)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

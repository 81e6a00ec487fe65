"""A module kept out of training: a teacher or a fixed feature extractor inside a method."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["Frozen"]


class Frozen(nn.Module):
    """A module that stays in evaluation mode and out of autograd (a teacher): ``train()`` does not reach it,
    its parameters have ``requires_grad = False`` (so no optimiser takes them), its forward runs without
    building a graph. Its state is still saved in checkpoints, so a resumed run needs no outside file."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Frozen:
        self.training = False
        self.module.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return self.module(*args, **kwargs)

"""Optimiser parameter groups and the learning-rate schedule."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from tface.core.recipe import TrainConfig

__all__ = ["NO_DECAY_MODULES", "param_groups", "lr_factor", "build_optimizer", "build_scheduler"]

# Normalisation layers and learnable activations: weight decay on these only fights the normalisation.
NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.PReLU,
)


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Split parameters into a decayed group and a no-decay group (norm layers, PReLU, every bias).

    Selection is by the type of the module that owns the parameter, so it holds for any naming scheme
    (TFace matched the substring "bn" and so decayed all BN parameters of its IR models).
    """
    decay, no_decay, seen = [], [], set()
    for root in modules:
        for module in root.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(module, NO_DECAY_MODULES) or name == "bias":
                    no_decay.append(p)
                else:
                    decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, warmup_steps: int, warmup_start: float, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base LR at ``step`` (0-based): linear warm-up from ``warmup_start`` to 1, then
    ×``gamma`` at each milestone passed."""
    if warmup_steps and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    return gamma ** bisect.bisect_right(list(milestones), step)


def build_optimizer(cfg: TrainConfig, modules: Iterable[nn.Module]) -> torch.optim.Optimizer:
    """The ``[train]`` table's optimiser over ``modules`` (norm layers and biases without weight decay)."""
    return torch.optim.SGD(param_groups(modules, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule by step: :func:`lr_factor` times the base LR, stepped once per step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, cfg.warmup_steps, cfg.warmup_start, cfg.lr_milestones, cfg.lr_gamma),
    )

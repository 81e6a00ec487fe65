"""Optimiser parameter groups and the learning-rate schedule."""

from __future__ import annotations

import bisect
import math
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


def lr_factor(step: int, warmup_steps: int, warmup_start: float, milestones: Sequence[int], gamma: float, *,
              schedule: str = "step", total_steps: int = 0, poly_power: float = 1.0, min_factor: float = 0.0) -> float:
    """Multiplier of the base LR at ``step`` (0-based): linear warm-up from ``warmup_start`` to 1, then the decay.

    ``step``: ×``gamma`` at each milestone passed. ``cosine`` and ``poly`` decay from 1 at the end of the warm-up
    to ``min_factor`` at ``total_steps``, following ``(1 + cos(pi·p)) / 2`` or ``(1 - p) ** poly_power`` of the
    fraction ``p`` of the decay done.
    """
    if warmup_steps and step < warmup_steps:
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    if schedule == "step":
        return gamma ** bisect.bisect_right(list(milestones), step)
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * p))
    elif schedule == "poly":
        shape = (1.0 - p) ** poly_power
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_factor + (1.0 - min_factor) * shape


def build_optimizer(cfg: TrainConfig, modules: Iterable[nn.Module]) -> torch.optim.Optimizer:
    """The ``[train]`` table's optimiser over ``modules`` (norm layers and biases without weight decay).

    AdamW's weight decay is decoupled from the gradient (Loshchilov & Hutter); SGD's is the classic L2 term.
    """
    groups = param_groups(modules, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule by step: :func:`lr_factor` times the base LR, stepped once per optimiser step.

    A plain function, not a callable object: LambdaLR saves an object's attributes in its state, and a resumed
    run must follow its own recipe's schedule (e.g. a longer ``max_steps``), not the checkpoint's.
    """
    min_factor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        return lr_factor(step, cfg.warmup_steps, cfg.warmup_start, cfg.lr_milestones, cfg.lr_gamma,
                         schedule=cfg.schedule, total_steps=cfg.max_steps, poly_power=cfg.poly_power,
                         min_factor=min_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

"""Augmentation of the whole uint8 batch on the training device: the ``[[augment]]`` ops with ``on = "device"``.

Per-image ops run in the data workers, which on a GPU machine are often the bottleneck; an op with a batch
form can instead run once per step on the batch after it moved to the device (colour jitter, blur, warps).
Such ops come last in ``[[augment]]``: they act after the batch is assembled, so a worker op after them would
run before them, against the recipe's order. Their random numbers come from a generator on the device seeded
from (run seed, step, micro-batch, rank), so a resumed run draws the same augmentation at the same step.

The contract for a plugin's augmenter (see ``docs/plugins.md``): an attribute ``on`` (``"workers"`` or
``"device"``, usually a recipe option) and, when it can be ``"device"``, a method
``batch(images, generator) -> images`` on uint8 ``[N, 3, H, W]`` that keeps the shape and draws from
``generator`` alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from tface.core.config import ConfigError
from tface.core.data.samplers import derive_seed

__all__ = ["DeviceAugment", "on_device", "split_augmenters"]

#: keeps the device seeds apart from the loader's per-batch seeds
_DEVICE_STREAM = 0xDE71CE


def on_device(op: Callable[..., Any]) -> bool:
    """Whether the augmenter asks to run on the batch on the training device (``on = "device"``)."""
    return getattr(op, "on", "workers") == "device"


def split_augmenters(ops: Sequence[Callable[..., Any]], keys: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """``(worker ops, device ops)`` of the recipe's augmenters, in order; :class:`ConfigError` naming the key of
    a device op without a batch form, or of a worker op that follows a device op."""
    problems = []
    first = next((i for i, op in enumerate(ops) if on_device(op)), None)
    for i, (op, key) in enumerate(zip(ops, keys)):
        if on_device(op) and not callable(getattr(op, "batch", None)):
            problems.append(f'{key}.on: {type(op).__name__} has no batch form, so it cannot run on the device '
                            '(remove on = "device")')
        elif first is not None and i > first and not on_device(op):
            problems.append(f"{key}: runs in the data workers but comes after {keys[first]}, which runs on the "
                            'device once the batch is assembled; put the on = "device" ops last')
    if problems:
        raise ConfigError(problems)
    cut = len(ops) if first is None else first
    return list(ops[:cut]), list(ops[cut:])


class DeviceAugment:
    """The device ops of a run, applied in order to each micro-batch's uint8 images."""

    def __init__(self, ops: Sequence[Any], seed: int):
        self.ops, self.seed = list(ops), seed

    def generator(self, device: torch.device, step: int, micro: int, rank: int) -> torch.Generator:
        """The generator of one micro-batch: its seed depends on (run seed, step, micro-batch, rank) alone."""
        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(self.seed, _DEVICE_STREAM, step, micro, rank))
        return gen

    def __call__(self, images: torch.Tensor, step: int, micro: int = 0, rank: int = 0) -> torch.Tensor:
        gen = self.generator(images.device, step, micro, rank)
        for op in self.ops:
            images = op.batch(images, gen)
        return images

    def __repr__(self) -> str:
        return f"DeviceAugment({self.ops!r})"

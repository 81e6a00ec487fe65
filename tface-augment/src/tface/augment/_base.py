"""What every augmenter of this package shares: option checks, the ``p`` draw, random values, ``__repr__``.

All randomness comes from torch's global generator, which the data loader seeds per worker and per
batch, so a resumed run draws the same augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch

__all__ = ["PROBABILITY", "Augmenter", "between", "fires", "randint", "span", "uniform"]

#: Validators of a probability option ``p``.
PROBABILITY = (attrs.validators.ge(0), attrs.validators.le(1))


def between(lo: float, hi: float) -> Callable[[Any, Any, Any], None]:
    """Validator: a single number in ``[lo, hi]``."""

    def check(instance: Any, attribute: Any, value: Any) -> None:
        if not lo <= value <= hi:
            raise ValueError(f"{attribute.name} must lie in [{lo}, {hi}], got {value}")

    return check


def span(lo: float, hi: float) -> Callable[[Any, Any, Any], None]:
    """Validator: a range ``[a, b]`` (2 numbers) with ``lo <= a <= b <= hi``.

    Every range option of the augmenters uses it, so a bad recipe value is refused with one message
    shape: ``augment.sigma: sigma must be [a, b] with 0.0 <= a <= b <= 50.0, got [3.0, 1.0]``.
    """

    def check(instance: Any, attribute: Any, value: Any) -> None:
        ok = isinstance(value, (list, tuple)) and len(value) == 2
        if ok:
            a, b = value
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            ok = ok and lo <= a <= b <= hi
        if not ok:
            shown = list(value) if isinstance(value, (list, tuple)) else value
            raise ValueError(f"{attribute.name} must be [a, b] with {lo} <= a <= b <= {hi}, got {shown}")

    return check


def fires(p: float) -> bool:
    """Whether an op with probability ``p`` acts this time (draws only when ``0 < p < 1``)."""
    return p > 0 and (p >= 1 or bool(torch.rand(()) < p))


def uniform(lo: float, hi: float) -> float:
    """A float drawn uniformly from ``[lo, hi]`` (torch's global generator)."""
    return lo + (hi - lo) * float(torch.rand(()))


def randint(lo: int, hi: int) -> int:
    """An int drawn uniformly from ``lo..hi``, both included (torch's global generator)."""
    return int(torch.randint(int(lo), int(hi) + 1, ()))


class Augmenter:
    """Base of this package's augmenters: ``__call__(img)`` on one uint8 ``[3, H, W]`` tensor.

    A subclass decorated with ``@options`` stores its options with :meth:`_store`, which runs the
    option validators (so a bad value from Python is refused as a recipe value is), and implements
    :meth:`apply`; ``__call__`` applies it with probability ``p``.
    """

    p: float

    def _store(self, **values: Any) -> None:
        type(self).Config(**values)  # type: ignore[attr-defined]  # runs the validators
        for name, value in values.items():
            if isinstance(value, list):
                value = tuple(value)
            setattr(self, name, value)

    def fires(self) -> bool:
        """Whether to apply the op this time (draws only when ``0 < p < 1``)."""
        return fires(self.p)

    def apply(self, img: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not self.fires():
            return img
        return self.apply(img).contiguous()

    def __repr__(self) -> str:
        fields = attrs.fields(type(self).Config)  # type: ignore[attr-defined]
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields)
        return f"{type(self).__name__}({shown})"

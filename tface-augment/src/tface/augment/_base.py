"""What every augmenter of this package shares: option checks, the ``p`` draw, random values, ``__repr__``,
and the batch form of the ops that have one.

In a data worker all randomness comes from torch's global generator, which the data loader seeds per worker
and per batch, so a resumed run draws the same augmentation. An op with a batch form (:class:`BatchAugmenter`)
can instead run on the whole uint8 batch on the training device (``on = "device"``): the trainer hands it a
generator seeded from (run seed, step, micro-batch, rank), so a resumed run draws the same there too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import attrs
import torch

__all__ = ["PROBABILITY", "Augmenter", "BatchAugmenter", "Draw", "Placement", "batch_apply", "between", "fires",
           "randint", "span", "to_uint8", "uniform"]

#: Where an op with a batch form runs: per image in the data workers, or per batch on the training device.
Placement = Literal["workers", "device"]

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


class Draw:
    """Random values for ``n`` samples at once from ``generator`` (None: torch's global one) on ``device``.

    The per-image path (``n = 1``, global generator) and the batch path (a seeded device generator) of an op
    draw through the same calls, so both follow one formula.
    """

    def __init__(self, generator: torch.Generator | None, device: torch.device | str = "cpu"):
        self.generator = generator
        self.device = torch.device(device) if generator is None else generator.device

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform on [0, 1)."""
        return torch.rand(shape, generator=self.generator, device=self.device, dtype=dtype)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device)

    def uniform(self, lo: float, hi: float, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform on ``[lo, hi]``, one value per element of ``shape``."""
        return lo + (hi - lo) * self.rand(*shape, dtype=dtype)

    def randint(self, lo: int, hi: int, *shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """Integers uniform on ``lo..hi``, both included."""
        return torch.randint(int(lo), int(hi) + 1, shape, generator=self.generator, device=self.device, dtype=dtype)

    def fires(self, p: float, n: int) -> torch.Tensor:
        """Which of ``n`` samples an op with probability ``p`` acts on (bool ``[n]``; draws only when 0 < p < 1)."""
        if p <= 0 or p >= 1:
            return torch.full((n,), p >= 1, dtype=torch.bool, device=self.device)
        return self.rand(n) < p


def batch_apply(images: torch.Tensor, chosen: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``images`` with ``fn`` applied to the samples ``chosen`` marks (a new tensor; the input is left alone)."""
    if bool(chosen.all()):
        return fn(images)
    out = images.clone()
    if bool(chosen.any()):
        index = chosen.nonzero().squeeze(1)
        out[index] = fn(images[index])
    return out


_GLOBAL = Draw(None)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixel values rounded (half to even) and clamped to uint8, in place where possible."""
    return x.round_().clamp_(0, 255).to(torch.uint8)


def fires(p: float) -> bool:
    """Whether an op with probability ``p`` acts this time (draws only when ``0 < p < 1``).

    The scalar form of :meth:`Draw.fires` (the same draw), without tensors for ``p`` of 0 or 1: every op calls
    it once per image.
    """
    return p > 0 and (p >= 1 or bool(torch.rand(()) < p))


def uniform(lo: float, hi: float) -> float:
    """A float drawn uniformly from ``[lo, hi]`` (torch's global generator)."""
    return lo + (hi - lo) * float(_GLOBAL.rand())


def randint(lo: int, hi: int) -> int:
    """An int drawn uniformly from ``lo..hi``, both included (torch's global generator)."""
    return int(_GLOBAL.randint(lo, hi))


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


class BatchAugmenter(Augmenter):
    """An augmenter that also has a batch form: ``params`` draws per-sample values, ``kernel`` applies them.

    ``apply`` (one image in a worker) and ``batch`` (the uint8 batch ``[N, 3, H, W]`` on the training device,
    ``on = "device"``) run the same two methods, so the two placements follow one formula.
    """

    on: str = "workers"

    def params(self, n: int, draw: Draw, h: int, w: int) -> Any:  # pragma: no cover - abstract
        """The random values of ``n`` samples of size ``h × w``."""
        raise NotImplementedError

    def kernel(self, images: torch.Tensor, params: Any) -> torch.Tensor:  # pragma: no cover - abstract
        """``images`` (uint8 ``[n, 3, H, W]``) changed by ``params``; uint8 out."""
        raise NotImplementedError

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        return self.kernel(img[None], self.params(1, Draw(None, img.device), h, w))[0]

    def batch(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Each sample of the uint8 batch with probability ``p``, its values drawn from ``generator``."""
        draw = Draw(generator)
        chosen = draw.fires(self.p, len(images))
        h, w = images.shape[-2:]
        return batch_apply(images, chosen, lambda x: self.kernel(x, self.params(len(x), draw, h, w)))

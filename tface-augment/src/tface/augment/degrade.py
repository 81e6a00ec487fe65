"""Image-quality augmenters: blur, motion blur, JPEG re-compression, low resolution, noise, random erasing.

Like :mod:`tface.augment.photometric` they never move pixels (landmarks stay valid): uint8 ``[3, H, W]``
in, contiguous uint8 of the same shape out, randomness from torch's global generator.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms import InterpolationMode

from tface.augment._base import PROBABILITY, Augmenter, between, randint, span, uniform
from tface.core.config import option, options

__all__ = ["GaussianBlur", "GaussianNoise", "JpegCompression", "LowResolution", "MotionBlur", "RandomErasing"]


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round_().clamp_(0, 255).to(torch.uint8)


@options
class GaussianBlur(Augmenter):
    """Gaussian blur with ``sigma`` (pixels) drawn from [a, b]; kernel side ``2·ceil(3σ) + 1``.

    The kernel is cut to the image (at most ``2·side − 1``, as reflect padding needs); sigma 0 is no blur.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 sigma: tuple[float, float] = option((0.5, 2.0), span(0, 50))):
        self._store(p=p, sigma=sigma)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        sigma = uniform(*self.sigma)
        if sigma <= 0:
            return img
        k = 2 * math.ceil(3 * sigma) + 1
        h, w = img.shape[-2:]
        return F.gaussian_blur(img, [min(k, 2 * w - 1), min(k, 2 * h - 1)], [sigma, sigma])


def line_kernel(length: int, angle: float) -> torch.Tensor:
    """A normalised ``[k, k]`` kernel (k = length rounded up to odd) holding a centred line at ``angle`` degrees."""
    k = length | 1
    kernel = torch.zeros(k, k)
    c = (k - 1) / 2
    t = torch.linspace(-(length - 1) / 2, (length - 1) / 2, 4 * length)
    rad = math.radians(angle)
    x = (c + t * math.cos(rad)).round().long().clamp(0, k - 1)
    y = (c - t * math.sin(rad)).round().long().clamp(0, k - 1)  # image rows grow downwards
    kernel[y, x] = 1.0
    return kernel / kernel.sum()


@options
class MotionBlur(Augmenter):
    """Linear motion blur: a line kernel of ``length`` px (drawn from [a, b]) at an ``angle`` (degrees, from [a, b]).

    Edges are padded by replication, so any image size works; length 1 is no blur.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 length: tuple[int, int] = option((3, 11), span(1, 101)),
                 angle: tuple[float, float] = option((0.0, 180.0), span(-360, 360))):
        self._store(p=p, length=length, angle=angle)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        length, angle = randint(*self.length), uniform(*self.angle)
        if length <= 1:
            return img
        kernel = line_kernel(length, angle)
        r = kernel.shape[-1] // 2
        x = nnf.pad(img[None].float(), (r, r, r, r), mode="replicate")
        out = nnf.conv2d(x, kernel.expand(3, 1, -1, -1), groups=3)[0]
        return _to_uint8(out)


@options
class JpegCompression(Augmenter):
    """Re-compress as JPEG at a ``quality`` drawn from [a, b] (1–100) with torchvision.io, and decode again."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 quality: tuple[int, int] = option((30, 90), span(1, 100))):
        self._store(p=p, quality=quality)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        data = encode_jpeg(img.contiguous(), quality=randint(*self.quality))
        return decode_jpeg(data, mode=ImageReadMode.RGB)


_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


@options
class LowResolution(Augmenter):
    """Down-up: shrink by a ``factor`` drawn from [a, b] (≥ 1), then resize back to the original size.

    ``down``: ``area`` (pixel averaging, a camera's sensor), ``bilinear`` (antialiased) or ``nearest``
    (aliased); ``up``: ``bilinear``, ``bicubic`` or ``nearest``. The small side is at least 1 pixel.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 factor: tuple[float, float] = option((1.5, 4.0), span(1, 64)),
                 down: Literal["area", "bilinear", "nearest"] = "area",
                 up: Literal["bilinear", "bicubic", "nearest"] = "bilinear"):
        self._store(p=p, factor=factor, down=down, up=up)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        factor = uniform(*self.factor)
        h, w = img.shape[-2:]
        size = [max(1, round(h / factor)), max(1, round(w / factor))]
        if size == [h, w]:
            return img
        if self.down == "area":
            small = _to_uint8(nnf.interpolate(img[None].float(), size=size, mode="area")[0])
        else:
            small = F.resize(img, size, interpolation=_INTERPOLATION[self.down], antialias=self.down == "bilinear")
        return F.resize(small, [h, w], interpolation=_INTERPOLATION[self.up], antialias=False)


@options
class GaussianNoise(Augmenter):
    """Add zero-mean Gaussian noise with ``sigma`` in pixel units (0–255) drawn from [a, b], independent per value."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 sigma: tuple[float, float] = option((2.0, 10.0), span(0, 255))):
        self._store(p=p, sigma=sigma)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        sigma = uniform(*self.sigma)
        return _to_uint8(img.float() + sigma * torch.randn(img.shape))


@options
class RandomErasing(Augmenter):
    """Fill one rectangle with random values (``fill = "random"``) or with ``value`` (``fill = "constant"``).

    Its area is a fraction drawn from ``scale`` of the image, its aspect ratio (height / width) drawn
    log-uniformly from ``ratio``; up to 10 tries find one that fits, after which the image is left as
    it is. TFace's Cutout (a square of side 24 × mag px) is ``ratio = [1, 1]``.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 scale: tuple[float, float] = option((0.02, 0.25), span(0, 1)),
                 ratio: tuple[float, float] = option((0.3, 3.3), span(0.01, 100)),
                 fill: Literal["random", "constant"] = "random",
                 value: int = option(0, between(0, 255))):
        self._store(p=p, scale=scale, ratio=ratio, fill=fill, value=value)

    def rectangle(self, h: int, w: int) -> tuple[int, int, int, int] | None:
        """``(top, left, height, width)`` of a rectangle drawn for an ``h × w`` image, or None."""
        lo, hi = self.scale
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = h * w * uniform(lo, hi)
            aspect = math.exp(uniform(*log_ratio))
            eh, ew = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if 1 <= eh <= h and 1 <= ew <= w and lo <= eh * ew / (h * w) <= hi:
                return randint(0, h - eh), randint(0, w - ew), eh, ew
        return None

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        box = self.rectangle(*img.shape[-2:])
        if box is None:
            return img
        top, left, eh, ew = box
        out = img.clone()
        if self.fill == "random":
            out[:, top:top + eh, left:left + ew] = torch.randint(0, 256, (3, eh, ew), dtype=torch.uint8)
        else:
            out[:, top:top + eh, left:left + ew] = self.value
        return out

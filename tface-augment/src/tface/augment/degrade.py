"""Image-quality augmenters: blur, motion blur, JPEG re-compression, low resolution, noise, random erasing.

Like :mod:`tface.augment.photometric` they never move pixels (landmarks stay valid): uint8 ``[3, H, W]``
in, contiguous uint8 of the same shape out, randomness from torch's global generator.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms import InterpolationMode

from tface.augment._base import (
    PROBABILITY,
    Augmenter,
    BatchAugmenter,
    Draw,
    Placement,
    between,
    randint,
    span,
    to_uint8,
    uniform,
)
from tface.core.config import option, options

__all__ = ["GaussianBlur", "GaussianNoise", "JpegCompression", "LowResolution", "MotionBlur", "RandomErasing"]


def _gauss_taps(sigma: torch.Tensor, sides: torch.Tensor, width: int) -> torch.Tensor:
    """``[n, width]`` normalised 1-D Gaussians (centred; sample ``i`` nonzero over its own ``sides[i]`` taps).

    A sample's taps are torchvision's kernel of its own size padded with zeros, so one convolution of
    ``width`` taps blurs every sample by its own sigma; sigma 0 is the identity tap.
    """
    t = torch.arange(width, device=sigma.device, dtype=torch.float32) - (width - 1) / 2
    s = sigma.clamp(min=1e-12).view(-1, 1)
    taps = torch.exp(-0.5 * (t / s) ** 2) * (t.abs() <= (sides.view(-1, 1) - 1) / 2)
    taps = torch.where(sigma.view(-1, 1) > 0, taps, (t == 0).float())
    return taps / taps.sum(1, keepdim=True)


def _separable(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Float ``[n, c, H, W]`` convolved per sample with ``cols`` (``[n, kw]``) along x, ``rows`` (``[n, kh]``)
    along y; reflect padding keeps the size."""
    n, c, h, w = x.shape
    kh, kw = rows.shape[1], cols.shape[1]
    y = nnf.pad(x.reshape(1, n * c, h, w), (kw // 2, kw // 2, 0, 0), mode="reflect")
    y = nnf.conv2d(y, cols.repeat_interleave(c, 0).view(n * c, 1, 1, kw), groups=n * c)
    y = nnf.pad(y, (0, 0, kh // 2, kh // 2), mode="reflect")
    y = nnf.conv2d(y, rows.repeat_interleave(c, 0).view(n * c, 1, kh, 1), groups=n * c)
    return y.view(n, c, h, w)


@options
class GaussianBlur(BatchAugmenter):
    """Gaussian blur with ``sigma`` (pixels) drawn from [a, b]; kernel side ``2·ceil(3σ) + 1``.

    The kernel is cut to the image (at most ``2·side − 1``, as reflect padding needs); sigma 0 is no blur.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 sigma: tuple[float, float] = option((0.5, 2.0), span(0, 50)),
                 on: Placement = "workers"):
        self._store(p=p, sigma=sigma, on=on)

    def params(self, n: int, draw: Draw, h: int, w: int) -> torch.Tensor:
        return draw.uniform(*self.sigma, n)

    def kernel(self, images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        side = 2 * torch.ceil(3 * sigma) + 1
        side_x, side_y = side.clamp(max=2 * w - 1), side.clamp(max=2 * h - 1)
        kw, kh = int(side_x.max()), int(side_y.max())
        if kw == 1 and kh == 1:
            return images.clone()
        out = _separable(images.float(), _gauss_taps(sigma, side_y, kh), _gauss_taps(sigma, side_x, kw))
        return to_uint8(out)


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
        return to_uint8(out)


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
            small = to_uint8(nnf.interpolate(img[None].float(), size=size, mode="area")[0])
        else:
            small = F.resize(img, size, interpolation=_INTERPOLATION[self.down], antialias=self.down == "bilinear")
        return F.resize(small, [h, w], interpolation=_INTERPOLATION[self.up], antialias=False)


@options
class GaussianNoise(BatchAugmenter):
    """Add zero-mean Gaussian noise with ``sigma`` in pixel units (0–255) drawn from [a, b], independent per value."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 sigma: tuple[float, float] = option((2.0, 10.0), span(0, 255)),
                 on: Placement = "workers"):
        self._store(p=p, sigma=sigma, on=on)

    def params(self, n: int, draw: Draw, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        return draw.uniform(*self.sigma, n), draw.randn(n, 3, h, w)

    def kernel(self, images: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        sigma, noise = params
        return to_uint8(images.float() + sigma.view(-1, 1, 1, 1) * noise[:, :images.shape[1]])


#: rectangles drawn per image before giving up (torchvision's RandomErasing: 10)
TRIES = 10


@options
class RandomErasing(BatchAugmenter):
    """Fill one rectangle with random values (``fill = "random"``) or with ``value`` (``fill = "constant"``).

    Its area is a fraction drawn from ``scale`` of the image, its aspect ratio (height / width) drawn
    log-uniformly from ``ratio``; the first of 10 drawn rectangles that fits is used, and when none does the
    image is left as it is. TFace's Cutout (a square of side 24 × mag px) is ``ratio = [1, 1]``.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 scale: tuple[float, float] = option((0.02, 0.25), span(0, 1)),
                 ratio: tuple[float, float] = option((0.3, 3.3), span(0.01, 100)),
                 fill: Literal["random", "constant"] = "random",
                 value: int = option(0, between(0, 255)),
                 on: Placement = "workers"):
        self._store(p=p, scale=scale, ratio=ratio, fill=fill, value=value, on=on)

    def params(self, n: int, draw: Draw, h: int, w: int) -> tuple[list[list[int]], Draw]:
        """Per image ``[top, left, height, width]`` (height 0: nothing fits), and ``draw`` for the random fill.

        One draw of ``2·TRIES + 2`` uniforms per image; the rectangle search runs in float64 numpy (a few dozen
        numbers, where torch's per-op overhead would cost more than the erasing itself).
        """
        lo, hi = self.scale
        u = draw.rand(n, 2 * TRIES + 2, dtype=torch.float64).cpu().numpy()
        area = h * w * (lo + (hi - lo) * u[:, :TRIES])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = np.exp(log_lo + (log_hi - log_lo) * u[:, TRIES:2 * TRIES])
        eh, ew = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
        share = eh * ew / (h * w)
        fits = (eh >= 1) & (eh <= h) & (ew >= 1) & (ew <= w) & (share >= lo) & (share <= hi)
        first = fits.argmax(1)  # the first rectangle that fits
        found = fits.any(1)
        rows = np.arange(n)
        eh, ew = eh[rows, first] * found, ew[rows, first] * found
        top = np.floor(u[:, -2] * (h - eh + 1))
        left = np.floor(u[:, -1] * (w - ew + 1))
        return np.stack([top, left, eh, ew], 1).astype(np.int64).tolist(), draw

    def rectangle(self, h: int, w: int) -> tuple[int, int, int, int] | None:
        """``(top, left, height, width)`` of a rectangle drawn for an ``h × w`` image, or None."""
        top, left, eh, ew = self.params(1, Draw(None), h, w)[0][0]
        return (top, left, eh, ew) if eh > 0 else None

    def kernel(self, images: torch.Tensor, params: tuple[list[list[int]], Draw]) -> torch.Tensor:
        # one slice per image: a random fill is drawn for the rectangle only (a whole-image draw costs 8x more)
        boxes, draw = params
        out = images.clone()
        for i, (top, left, eh, ew) in enumerate(boxes):
            if eh > 0:
                out[i, :, top:top + eh, left:left + ew] = (
                    draw.randint(0, 255, 3, eh, ew, dtype=torch.uint8) if self.fill == "random" else self.value)
        return out

"""Photometric augmenters: they change pixel values, never pixel positions, so landmarks stay valid.

Each works on one uint8 image tensor ``[3, H, W]`` in a data worker and returns a contiguous uint8 tensor
of the same shape. Randomness comes from torch's global generator (seeded per worker and batch by the
loader). ``color_jitter``, ``grayscale``, ``posterize`` and ``solarize`` also run on the training device
(``on = "device"``, see :class:`~tface.augment._base.BatchAugmenter`).
The blur, compression, resolution, noise and erasing ops are in :mod:`tface.augment.degrade`.

TFace's magnitude-driven ops (``torchkit/augmentation/transforms.py``) map a magnitude ``mag`` in [0, 1]
to the quantity the options here take directly:

- AutoContrast: cutoff = int(mag × 49) percent → ``autocontrast(cutoff=[c, c])``
- Posterize: bits = int((1 − mag) × 8) → ``posterize(bits=[b, b])``
- Solarize: threshold = (1 − mag) × 255 → ``solarize(threshold=[t, t])``
- Sharpness, Contrast, Color, Brightness: enhance factor mag × 10 → ``sharpness(factor=[f, f])``;
  ``color_jitter`` takes the deviation from 1 instead (factor f is deviation ``|f − 1|``)
- Equalize: no magnitude → ``equalize``
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as F

from tface.augment._base import (
    PROBABILITY,
    Augmenter,
    BatchAugmenter,
    Draw,
    Placement,
    between,
    span,
    to_uint8,
    uniform,
)
from tface.core.config import option, options

__all__ = ["AutoContrast", "ColorJitter", "Equalize", "Grayscale", "Posterize", "Sharpness", "Solarize"]


#: torchvision's grey weights (ColorJitter's contrast and saturation blend with this grey)
_GREY = (0.2989, 0.587, 0.114)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Float ``[n, 1, H, W]`` grey of float ``[n, 3, H, W]`` (torchvision's weights)."""
    r, g, b = x.unbind(-3)
    return (_GREY[0] * r + _GREY[1] * g + _GREY[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor · x + (1 − factor) · other`` per sample (``factor`` ``[n]``), clamped to [0, 255]."""
    f = factor.view(-1, 1, 1, 1)
    return (x * f + other * (1 - f)).clamp_(0, 255)


@options
class ColorJitter(BatchAugmenter):
    """Random brightness, contrast, saturation and hue, in a random order per image (torchvision's ColorJitter).

    Each option is a maximum deviation: brightness, contrast and saturation factors are drawn from
    ``[max(0, 1 − d), 1 + d]``, the hue shift from ``[−hue, hue]`` (a fraction of the colour circle).
    An option of 0 leaves that property alone. Hue is off by default: it changes skin colour. Brightness
    scales the values; contrast blends with the image's mean grey, saturation with each pixel's grey
    (torchvision's weights 0.2989, 0.587, 0.114); the result is rounded once, at the end. On the device, the hue
    shift (torchvision's HSV ``adjust_hue``) runs image by image; the other three run on the whole batch.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 brightness: float = option(0.3, between(0, 1e6)),
                 contrast: float = option(0.3, between(0, 1e6)),
                 saturation: float = option(0.3, between(0, 1e6)),
                 hue: float = option(0.0, between(0, 0.5)),
                 on: Placement = "workers"):
        self._store(p=p, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, on=on)

    def params(self, n: int, draw: Draw, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        factors = torch.stack([draw.uniform(max(0.0, 1 - d), 1 + d, n)
                               for d in (self.brightness, self.contrast, self.saturation)], 1)
        shift = draw.uniform(-self.hue, self.hue, n)
        order = draw.rand(n, 4).argsort(1)  # a random order of the four adjustments, per image
        return factors, shift, order

    def kernel(self, images: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        factors, shift, order = params
        x = images.float()
        on = (self.brightness > 0, self.contrast > 0, self.saturation > 0, self.hue > 0)
        orders = order.tolist()
        for position in range(4):
            groups: dict[int, list[int]] = {}
            for i, o in enumerate(orders):
                if on[o[position]]:
                    groups.setdefault(o[position], []).append(i)
            for k, rows in groups.items():
                if len(rows) == len(x):  # every image (always so for one image): no gather and scatter
                    x = self._adjust(k, x, factors, shift)
                else:
                    index = torch.tensor(rows, device=x.device)
                    x[index] = self._adjust(k, x[index], factors[index], shift[index])
        return to_uint8(x)

    @staticmethod
    def _adjust(k: int, x: torch.Tensor, factors: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        if k == 0:
            return (x * factors[:, 0].view(-1, 1, 1, 1)).clamp_(0, 255)
        if k == 1:
            return _blend(x, _grey(x).mean(dim=(-3, -2, -1), keepdim=True), factors[:, 1])
        if k == 2:
            return _blend(x, _grey(x), factors[:, 2])
        return torch.stack([F.adjust_hue(img / 255, float(s)) * 255 for img, s in zip(x, shift.tolist())])


@options
class Grayscale(BatchAugmenter):
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (rounded half up) in all 3 channels."""

    def __init__(self, p: float = option(0.2, *PROBABILITY), on: Placement = "workers"):
        self._store(p=p, on=on)

    def params(self, n: int, draw: Draw, h: int, w: int) -> None:
        return None

    def kernel(self, images: torch.Tensor, params: None) -> torch.Tensor:
        # exact integer arithmetic (torchvision's rgb_to_grayscale uses 0.2989 and rounds in float)
        r, g, b = images.to(torch.int32).unbind(-3)
        luma = (r * 299 + g * 587 + b * 114 + 500).div_(1000, rounding_mode="floor").to(torch.uint8)
        return luma.unsqueeze(-3).expand_as(images).contiguous()


@options
class AutoContrast(Augmenter):
    """Stretch each channel to [0, 255] after clipping ``cutoff`` percent of its darkest and brightest pixels.

    ``cutoff`` ([a, b] percent, drawn per image) is PIL's ``ImageOps.autocontrast`` cutoff; [0, 0] is
    plain min-max stretching (torchvision's ``autocontrast``). TFace: cutoff = int(mag × 49).
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 cutoff: tuple[float, float] = option((0.0, 0.0), span(0, 49))):
        self._store(p=p, cutoff=cutoff)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        cutoff = uniform(*self.cutoff)
        cut = int(img[0].numel() * cutoff / 100)
        if cut > 0:  # clip to the values `cut` pixels in from each end, then stretch those to 0 and 255
            ordered = img.reshape(3, -1).sort(dim=1).values
            lo, hi = ordered[:, cut], ordered[:, -1 - cut]
            img = img.clamp(lo[:, None, None], hi[:, None, None])
        return F.autocontrast(img)


@options
class Equalize(Augmenter):
    """Histogram equalisation of each channel (torchvision's ``equalize``; TFace's Equalize has no magnitude)."""

    def __init__(self, p: float = option(0.5, *PROBABILITY)):
        self._store(p=p)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return F.equalize(img)


@options
class Posterize(BatchAugmenter):
    """Keep the top ``bits`` bits of every value (drawn from [a, b] per image); TFace: bits = int((1 − mag) × 8)."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 bits: tuple[int, int] = option((4, 6), span(1, 8)),
                 on: Placement = "workers"):
        self._store(p=p, bits=bits, on=on)

    def params(self, n: int, draw: Draw, h: int, w: int) -> torch.Tensor:
        return draw.randint(*self.bits, n)

    def kernel(self, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        keep = ((255 << (8 - bits)) & 255).to(torch.uint8).view(-1, 1, 1, 1)
        return images & keep


@options
class Solarize(BatchAugmenter):
    """Invert every value ``>= threshold`` (drawn from [a, b] per image); TFace: threshold = (1 − mag) × 255."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 threshold: tuple[int, int] = option((128, 224), span(0, 255)),
                 on: Placement = "workers"):
        self._store(p=p, threshold=threshold, on=on)

    def params(self, n: int, draw: Draw, h: int, w: int) -> torch.Tensor:
        return draw.randint(*self.threshold, n)

    def kernel(self, images: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        return torch.where(images >= threshold.view(-1, 1, 1, 1), 255 - images, images)


@options
class Sharpness(Augmenter):
    """PIL-style sharpness: blend with a smoothed copy by ``factor`` (drawn from [a, b]; 1 = unchanged).

    Below 1 it blurs, above 1 it sharpens (torchvision's ``adjust_sharpness``). TFace: factor = mag × 10.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 factor: tuple[float, float] = option((0.5, 2.0), span(0, 10))):
        self._store(p=p, factor=factor)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return F.adjust_sharpness(img, uniform(*self.factor))

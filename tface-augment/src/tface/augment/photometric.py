"""Photometric augmenters: they change pixel values, never pixel positions, so landmarks stay valid.

Each works on one uint8 image tensor ``[3, H, W]`` in a data worker and returns a contiguous uint8 tensor
of the same shape. Randomness comes from torch's global generator (seeded per worker and batch by the
loader). The blur, compression, resolution, noise and erasing ops are in :mod:`tface.augment.degrade`.

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

from tface.augment._base import PROBABILITY, Augmenter, between, randint, span, uniform
from tface.core.config import option, options

__all__ = ["AutoContrast", "ColorJitter", "Equalize", "Grayscale", "Posterize", "Sharpness", "Solarize"]


@options
class ColorJitter(Augmenter):
    """Random brightness, contrast, saturation and hue, in a random order (torchvision's ColorJitter).

    Each option is a maximum deviation: brightness, contrast and saturation factors are drawn from
    ``[max(0, 1 − d), 1 + d]``, the hue shift from ``[−hue, hue]`` (a fraction of the colour circle).
    An option of 0 leaves that property alone. Hue is off by default: it changes skin colour.
    """

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 brightness: float = option(0.3, between(0, 1e6)),
                 contrast: float = option(0.3, between(0, 1e6)),
                 saturation: float = option(0.3, between(0, 1e6)),
                 hue: float = option(0.0, between(0, 0.5))):
        self._store(p=p, brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        factors = [uniform(max(0.0, 1 - d), 1 + d) for d in (self.brightness, self.contrast, self.saturation)]
        shift = uniform(-self.hue, self.hue)
        adjust = [(F.adjust_brightness, factors[0], self.brightness > 0),
                  (F.adjust_contrast, factors[1], self.contrast > 0),
                  (F.adjust_saturation, factors[2], self.saturation > 0),
                  (F.adjust_hue, shift, self.hue > 0)]
        for i in torch.randperm(4).tolist():
            fn, value, on = adjust[i]
            if on:
                img = fn(img, value)
        return img


@options
class Grayscale(Augmenter):
    """ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` (rounded half up) in all 3 channels."""

    def __init__(self, p: float = option(0.2, *PROBABILITY)):
        self._store(p=p)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        # exact integer arithmetic (torchvision's rgb_to_grayscale uses 0.2989 and rounds in float)
        r, g, b = img.to(torch.int32).unbind(0)
        luma = (r * 299 + g * 587 + b * 114 + 500).div_(1000, rounding_mode="floor").to(torch.uint8)
        return luma.expand(3, -1, -1)


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
class Posterize(Augmenter):
    """Keep the top ``bits`` bits of every value (drawn from [a, b] per image); TFace: bits = int((1 − mag) × 8)."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 bits: tuple[int, int] = option((4, 6), span(1, 8))):
        self._store(p=p, bits=bits)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return F.posterize(img, randint(*self.bits))


@options
class Solarize(Augmenter):
    """Invert every value ``>= threshold`` (drawn from [a, b] per image); TFace: threshold = (1 − mag) × 255."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 threshold: tuple[int, int] = option((128, 224), span(0, 255))):
        self._store(p=p, threshold=threshold)

    def apply(self, img: torch.Tensor) -> torch.Tensor:
        return F.solarize(img, randint(*self.threshold))


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

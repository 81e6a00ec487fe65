"""Geometric augmenters. Each works on one image tensor ``[3, H, W]`` (uint8 from the data sets) in a data worker."""

from __future__ import annotations

import attrs
import torch

from tface.core.config import option, options

__all__ = ["HorizontalFlip"]


@options
class HorizontalFlip:
    """Mirror the image with probability ``p`` (TFace's only training augmentation).

    Faces are near-symmetric, so a mirrored face is a plausible new sample of the same identity.
    Randomness comes from torch's global generator, which DataLoader seeds per worker.
    """

    def __init__(self, p: float = option(0.5, attrs.validators.ge(0), attrs.validators.le(1))):
        self.p = float(p)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.p > 0 and (self.p >= 1 or torch.rand(()) < self.p):
            return img.flip(-1)
        return img

    def __repr__(self) -> str:
        return f"HorizontalFlip(p={self.p})"

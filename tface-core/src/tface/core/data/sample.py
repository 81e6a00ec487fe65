"""One training sample as augmenters see it: the uint8 image and its five landmarks.

Geometric augmenters (flip, rotation, crops) must move the landmarks with the pixels, so that ops placed
by landmarks (occluders: a mask over nose and mouth, glasses over the eyes) land on the face after them.
Landmarks follow OpenCV's convention (:mod:`tface.core.data.align`): pixel ``(col, row)`` has its centre at
``(x, y) = (col, row)``; the order is left eye, right eye, nose tip, left and right mouth corner, as seen in
the image. Aligned crops without landmarks of their own get the ArcFace template scaled to their size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch import Tensor

from tface.core.data.align import ARCFACE_TEMPLATE

__all__ = ["FaceSample", "takes_sample", "MIRROR"]

#: Where each landmark goes when the image is mirrored: the eyes and the mouth corners swap sides.
MIRROR = (1, 0, 2, 4, 3)

_TEMPLATE = torch.tensor(ARCFACE_TEMPLATE.tolist(), dtype=torch.float32)


@attrs.define
class FaceSample:
    """A uint8 image ``[3, H, W]`` and its landmarks ``[5, 2]`` (float32, ``(x, y)`` pixel centres)."""

    image: Tensor
    landmarks: Tensor

    @classmethod
    def aligned(cls, image: Tensor) -> FaceSample:
        """``image`` with the ArcFace template's landmarks for its size (an aligned crop)."""
        h, w = image.shape[-2:]
        scale = torch.tensor([w / 112.0, h / 112.0], dtype=torch.float32)
        return cls(image, _TEMPLATE * scale)


def takes_sample(op: Callable[..., Any]) -> bool:
    """Whether an augmenter maps a :class:`FaceSample` (declares ``takes_sample = True``) rather than an image.

    Image-only augmenters must not move pixels (photometric ops): the landmarks pass them unchanged.
    """
    return bool(getattr(op, "takes_sample", False))

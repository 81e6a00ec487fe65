"""Geometric augmenters: they move pixels, so they move the five landmarks with them.

Each takes a :class:`~tface.core.data.sample.FaceSample` (``takes_sample = True``): a uint8 image ``[3, H, W]``
in a data worker and its landmarks (OpenCV's pixel-centre convention). Rotation, shift and random resized
crop are one affine warp each: the op draws a 2×3 matrix ``M`` mapping source to output pixel centres, the
image is resampled through its inverse (bilinear, ``fill`` outside) and the landmarks are mapped by ``M``
itself, so both follow the same transform exactly. Randomness comes from torch's global generator, which the
loader seeds per worker and batch (a resumed run draws the same).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from tface.augment._base import PROBABILITY, fires, span, uniform
from tface.core.config import option, options
from tface.core.data.sample import MIRROR, FaceSample

__all__ = ["HFlip", "HorizontalFlip", "Rotate", "Shift", "RandomResizedCrop", "warp_affine"]

def warp_affine(image: Tensor, matrix: Tensor, fill: int = 0) -> Tensor:
    """``image`` (uint8 ``[3, H, W]``) resampled so that source pixel ``(x, y)`` lands at ``M @ [x, y, 1]``.

    Bilinear; output pixels whose source lies outside the image get ``fill``. The pixel-space inverse is turned
    into ``affine_grid``'s normalised coordinates (``align_corners``: -1 and 1 are the outer pixel centres).
    """
    _, h, w = image.shape
    full = torch.cat([matrix.double(), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    norm = torch.tensor([[2.0 / max(w - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(h - 1, 1), -1.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float64)
    theta = (norm @ torch.linalg.inv(full) @ torch.linalg.inv(norm))[:2].float().unsqueeze(0)
    grid = F.affine_grid(theta, [1, 3, h, w], align_corners=True)
    src = image.float().unsqueeze(0)
    if fill:  # a ones channel marks what the source covers
        src = torch.cat([src, torch.ones(1, 1, h, w)], dim=1)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    if fill:
        out = out[:3] + (1 - out[3:]) * float(fill)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _map(landmarks: Tensor, matrix: Tensor) -> Tensor:
    return landmarks @ matrix[:, :2].T.to(landmarks.dtype) + matrix[:, 2].to(landmarks.dtype)


def _about_centre(linear: Tensor, h: int, w: int, shift: tuple[float, float] = (0.0, 0.0)) -> Tensor:
    """``x -> linear @ (x - c) + c + shift`` as a 2×3 matrix, ``c`` the image centre."""
    c = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64)
    offset = c - linear @ c + torch.tensor(shift, dtype=torch.float64)
    return torch.cat([linear, offset.unsqueeze(1)], dim=1)


class _Affine:
    """Draw a matrix with probability ``p``; warp the image and map the landmarks by it."""

    takes_sample = True
    p: float
    fill: int

    def matrix(self, h: int, w: int) -> Tensor:
        raise NotImplementedError

    def __call__(self, sample: FaceSample) -> FaceSample:
        if not fires(self.p):
            return sample
        _, h, w = sample.image.shape
        m = self.matrix(h, w)
        return FaceSample(warp_affine(sample.image, m, self.fill), _map(sample.landmarks, m))


_MIRROR_INDEX = torch.tensor(MIRROR)


@options
class HFlip:
    """Mirror the image with probability ``p`` (TFace's only training augmentation); the landmarks are mirrored
    and the left/right ones swap (the left eye of a mirrored face is the old right eye).

    Also takes a bare image tensor (then returns one), as before landmarks travelled with images.
    """

    takes_sample = True

    def __init__(self, p: float = option(0.5, *PROBABILITY)):
        self.p = float(p)

    def __call__(self, sample: FaceSample | Tensor) -> FaceSample | Tensor:
        if not fires(self.p):
            return sample
        if isinstance(sample, Tensor):
            return sample.flip(-1)
        w = sample.image.shape[-1]
        lm = sample.landmarks
        # x -> (W - 1) - x, y kept, left and right swapped: one indexed multiply-add
        mirrored = torch.addcmul(lm.new_tensor([w - 1.0, 0.0]), lm[_MIRROR_INDEX], lm.new_tensor([-1.0, 1.0]))
        return FaceSample(sample.image.flip(-1), mirrored)

    def __repr__(self) -> str:
        return f"HFlip(p={self.p})"


#: The name before landmarks travelled with images.
HorizontalFlip = HFlip


@options
class Rotate(_Affine):
    """Turn the image about its centre by an angle drawn from ``degrees`` (positive: counter-clockwise on
    screen); ``fill`` (0-255) where the turned image does not reach."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 degrees: Sequence[float] = option((-15.0, 15.0), span(-180, 180)),
                 fill: int = option(0, attrs.validators.ge(0), attrs.validators.le(255))):
        self.p, self.degrees, self.fill = float(p), (float(degrees[0]), float(degrees[1])), int(fill)

    def matrix(self, h: int, w: int) -> Tensor:
        a = math.radians(uniform(*self.degrees))
        # y points down: a counter-clockwise turn on screen is (x, y) -> (x cos a + y sin a, -x sin a + y cos a)
        linear = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
        return _about_centre(linear, h, w)

    def __repr__(self) -> str:
        return f"Rotate(p={self.p}, degrees={list(self.degrees)}, fill={self.fill})"


@options
class Shift(_Affine):
    """Move the image by up to ``fraction`` of its width and height in each direction (uniform)."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 fraction: float = option(0.1, attrs.validators.ge(0), attrs.validators.le(0.5)),
                 fill: int = option(0, attrs.validators.ge(0), attrs.validators.le(255))):
        self.p, self.fraction, self.fill = float(p), float(fraction), int(fill)

    def matrix(self, h: int, w: int) -> Tensor:
        dx = uniform(-self.fraction, self.fraction) * w
        dy = uniform(-self.fraction, self.fraction) * h
        return _about_centre(torch.eye(2, dtype=torch.float64), h, w, (dx, dy))

    def __repr__(self) -> str:
        return f"Shift(p={self.p}, fraction={self.fraction}, fill={self.fill})"


@options
class RandomResizedCrop(_Affine):
    """Crop a box of ``scale`` (area fraction) and ``ratio`` (width/height relative to the image's) at a random
    place inside the image, and stretch it back to the full size."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 scale: Sequence[float] = option((0.8, 1.0), span(0.05, 1)),
                 ratio: Sequence[float] = option((0.9, 1.1), span(0.25, 4))):
        self.p = float(p)
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.fill = 0

    def matrix(self, h: int, w: int) -> Tensor:
        area = uniform(*self.scale)
        ratio = math.exp(uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        cw, ch = min(w, w * math.sqrt(area * ratio)), min(h, h * math.sqrt(area / ratio))
        x0, y0 = uniform(0, w - cw), uniform(0, h - ch)  # the box's left and top edges
        sx, sy = w / cw, h / ch
        # pixel edges lie at centre ± 0.5: x_out + 0.5 = (x_in + 0.5 - x0) · sx
        return torch.tensor([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]],
                            dtype=torch.float64)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(p={self.p}, scale={list(self.scale)}, ratio={list(self.ratio)})"

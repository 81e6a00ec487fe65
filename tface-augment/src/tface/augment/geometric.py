"""Geometric augmenters: they move pixels, so they move the five landmarks with them.

Each takes a :class:`~tface.core.data.sample.FaceSample` (``takes_sample = True``): a uint8 image ``[3, H, W]``
in a data worker and its landmarks (OpenCV's pixel-centre convention). Rotation, shift and random resized
crop are one affine warp each: the op draws a 2×3 matrix ``M`` mapping source to output pixel centres, the
image is resampled through its inverse (bilinear, ``fill`` outside) and the landmarks are mapped by ``M``
itself, so both follow the same transform exactly. Randomness comes from torch's global generator, which the
loader seeds per worker and batch (a resumed run draws the same). With ``on = "device"`` each op runs on the
whole uint8 batch on the training device instead (its landmarks are no longer needed there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tface.augment._base import PROBABILITY, Draw, Placement, batch_apply, fires, span, to_uint8
from tface.core.config import option, options
from tface.core.data.sample import MIRROR, FaceSample

__all__ = ["HFlip", "HorizontalFlip", "Rotate", "Shift", "RandomResizedCrop", "warp_affine"]

def warp_affine(image: Tensor, matrix: Tensor | np.ndarray, fill: int = 0) -> Tensor:
    """``image`` (uint8 ``[3, H, W]``, or a batch ``[N, 3, H, W]`` with ``[N, 2, 3]`` matrices) resampled so that
    source pixel ``(x, y)`` lands at ``M @ [x, y, 1]``.

    Bilinear; output pixels whose source lies outside the image get ``fill``. The pixel-space inverse is turned
    into ``affine_grid``'s normalised coordinates (``align_corners``: -1 and 1 are the outer pixel centres), in
    float64 numpy: a few 3×3 matrices, for which torch's per-op overhead would cost more than the warp's setup.
    """
    single = image.dim() == 3
    images = image[None] if single else image
    m = np.asarray(matrix.detach().cpu() if isinstance(matrix, Tensor) else matrix, dtype=np.float64)
    m = m[None] if single else m
    n, c, h, w = images.shape
    full = np.concatenate([m, np.broadcast_to(np.array([[[0.0, 0.0, 1.0]]]), (n, 1, 3))], axis=1)
    norm = np.array([[2.0 / max(w - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(h - 1, 1), -1.0], [0.0, 0.0, 1.0]])
    theta = (norm @ np.linalg.inv(full) @ np.linalg.inv(norm))[:, :2]
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32, device=images.device), [n, c, h, w],
                         align_corners=True)
    src = images.float()
    if fill:  # a ones channel marks what the source covers
        src = torch.cat([src, torch.ones(n, 1, h, w, device=images.device)], dim=1)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if fill:
        out = out[:, :c] + (1 - out[:, c:]) * float(fill)
    out = to_uint8(out)
    return out[0] if single else out


def _map(landmarks: Tensor, matrix: Tensor) -> Tensor:
    return landmarks @ matrix[:, :2].T.to(landmarks.dtype) + matrix[:, 2].to(landmarks.dtype)


def _about_centre(linear: np.ndarray, h: int, w: int, shift: np.ndarray | None = None) -> np.ndarray:
    """``x -> linear @ (x - c) + c + shift`` as ``[n, 2, 3]`` matrices (``linear`` ``[n, 2, 2]``, ``shift``
    ``[n, 2]``), ``c`` the image centre."""
    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    offset = c - linear @ c
    if shift is not None:
        offset = offset + shift
    return np.concatenate([linear, offset[:, :, None]], axis=2)


def _uniforms(draw: Draw, n: int, k: int) -> np.ndarray:
    """``[n, k]`` uniforms on [0, 1) from ``draw`` (one draw, on its device), as float64 numpy for the matrix math."""
    return draw.rand(n, k, dtype=torch.float64).cpu().numpy()


class _Affine:
    """Draw a matrix with probability ``p``; warp the image and map the landmarks by it.

    ``matrices(n, draw, h, w)`` draws ``n`` of them at once: one in a data worker (torch's global
    generator), one per chosen sample of the batch on the device (``on = "device"``, :meth:`batch`).
    """

    takes_sample = True
    p: float
    fill: int
    on: str = "workers"

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> np.ndarray:
        """``[n, 2, 3]`` float64 matrices, their random values drawn from ``draw``."""
        raise NotImplementedError

    def matrix(self, h: int, w: int) -> Tensor:
        """One ``2 × 3`` matrix from torch's global generator."""
        return torch.from_numpy(self.matrices(1, Draw(None), h, w)[0])

    def __call__(self, sample: FaceSample) -> FaceSample:
        if not fires(self.p):
            return sample
        _, h, w = sample.image.shape
        m = self.matrix(h, w)
        return FaceSample(warp_affine(sample.image, m, self.fill), _map(sample.landmarks, m))

    def batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Each sample of the uint8 batch warped with probability ``p``, by a matrix drawn from ``generator``."""
        draw = Draw(generator)
        h, w = images.shape[-2:]
        chosen = draw.fires(self.p, len(images))
        return batch_apply(images, chosen, lambda x: warp_affine(x, self.matrices(len(x), draw, h, w), self.fill))


_MIRROR_INDEX = torch.tensor(MIRROR)


@options
class HFlip:
    """Mirror the image with probability ``p`` (TFace's only training augmentation); the landmarks are mirrored
    and the left/right ones swap (the left eye of a mirrored face is the old right eye).

    Also takes a bare image tensor (then returns one), as before landmarks travelled with images.
    """

    takes_sample = True

    def __init__(self, p: float = option(0.5, *PROBABILITY), on: Placement = "workers"):
        self.p, self.on = float(p), on

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

    def batch(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Each sample of the uint8 batch mirrored with probability ``p`` (drawn from ``generator``)."""
        chosen = Draw(generator).fires(self.p, len(images))
        return torch.where(chosen.view(-1, 1, 1, 1), images.flip(-1), images)

    def __repr__(self) -> str:
        return f"HFlip(p={self.p}, on={self.on!r})"


#: The name before landmarks travelled with images.
HorizontalFlip = HFlip


@options
class Rotate(_Affine):
    """Turn the image about its centre by an angle drawn from ``degrees`` (positive: counter-clockwise on
    screen); ``fill`` (0-255) where the turned image does not reach."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 degrees: Sequence[float] = option((-15.0, 15.0), span(-180, 180)),
                 fill: int = option(0, attrs.validators.ge(0), attrs.validators.le(255)),
                 on: Placement = "workers"):
        self.p, self.degrees, self.fill, self.on = float(p), (float(degrees[0]), float(degrees[1])), int(fill), on

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> np.ndarray:
        lo, hi = self.degrees
        a = np.deg2rad(lo + (hi - lo) * _uniforms(draw, n, 1)[:, 0])
        cos, sin = np.cos(a), np.sin(a)
        # y points down: a counter-clockwise turn on screen is (x, y) -> (x cos a + y sin a, -x sin a + y cos a)
        linear = np.stack([np.stack([cos, sin], 1), np.stack([-sin, cos], 1)], 1)
        return _about_centre(linear, h, w)

    def __repr__(self) -> str:
        return f"Rotate(p={self.p}, degrees={list(self.degrees)}, fill={self.fill}, on={self.on!r})"


@options
class Shift(_Affine):
    """Move the image by up to ``fraction`` of its width and height in each direction (uniform)."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 fraction: float = option(0.1, attrs.validators.ge(0), attrs.validators.le(0.5)),
                 fill: int = option(0, attrs.validators.ge(0), attrs.validators.le(255)),
                 on: Placement = "workers"):
        self.p, self.fraction, self.fill, self.on = float(p), float(fraction), int(fill), on

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> np.ndarray:
        shift = (2 * _uniforms(draw, n, 2) - 1) * self.fraction * np.array([w, h])
        return _about_centre(np.broadcast_to(np.eye(2), (n, 2, 2)), h, w, shift)

    def __repr__(self) -> str:
        return f"Shift(p={self.p}, fraction={self.fraction}, fill={self.fill}, on={self.on!r})"


@options
class RandomResizedCrop(_Affine):
    """Crop a box of ``scale`` (area fraction) and ``ratio`` (width/height relative to the image's) at a random
    place inside the image, and stretch it back to the full size."""

    def __init__(self, p: float = option(0.5, *PROBABILITY),
                 scale: Sequence[float] = option((0.8, 1.0), span(0.05, 1)),
                 ratio: Sequence[float] = option((0.9, 1.1), span(0.25, 4)),
                 on: Placement = "workers"):
        self.p, self.on = float(p), on
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.fill = 0

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> np.ndarray:
        u = _uniforms(draw, n, 4)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[:, 0]
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        ratio = np.exp(lo + (hi - lo) * u[:, 1])
        cw, ch = np.minimum(w, w * np.sqrt(area * ratio)), np.minimum(h, h * np.sqrt(area / ratio))
        x0, y0 = u[:, 2] * (w - cw), u[:, 3] * (h - ch)  # the box's left and top edges
        sx, sy = w / cw, h / ch
        zero = np.zeros(n)
        # pixel edges lie at centre ± 0.5: x_out + 0.5 = (x_in + 0.5 - x0) · sx
        return np.stack([np.stack([sx, zero, (0.5 - x0) * sx - 0.5], 1),
                         np.stack([zero, sy, (0.5 - y0) * sy - 0.5], 1)], 1)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(p={self.p}, scale={list(self.scale)}, ratio={list(self.ratio)}, on={self.on!r})"

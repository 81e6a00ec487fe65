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
import torch
import torch.nn.functional as F
from torch import Tensor

from tface.augment._base import PROBABILITY, Draw, Placement, batch_apply, fires, span, to_uint8
from tface.core.config import option, options
from tface.core.data.sample import MIRROR, FaceSample

__all__ = ["HFlip", "HorizontalFlip", "Rotate", "Shift", "RandomResizedCrop", "warp_affine"]

def warp_affine(image: Tensor, matrix: Tensor, fill: int = 0) -> Tensor:
    """``image`` (uint8 ``[3, H, W]``, or a batch ``[N, 3, H, W]`` with ``[N, 2, 3]`` matrices) resampled so that
    source pixel ``(x, y)`` lands at ``M @ [x, y, 1]``.

    Bilinear; output pixels whose source lies outside the image get ``fill``. The pixel-space inverse is turned
    into ``affine_grid``'s normalised coordinates (``align_corners``: -1 and 1 are the outer pixel centres).
    """
    single = image.dim() == 3
    images, matrices = (image[None], matrix[None]) if single else (image, matrix)
    n, c, h, w = images.shape
    f64 = dict(dtype=torch.float64, device=images.device)
    bottom = torch.tensor([[0.0, 0.0, 1.0]], **f64).expand(n, 1, 3)
    full = torch.cat([matrices.to(**f64), bottom], dim=1)
    norm = torch.tensor([[2.0 / max(w - 1, 1), 0.0, -1.0], [0.0, 2.0 / max(h - 1, 1), -1.0], [0.0, 0.0, 1.0]], **f64)
    theta = (norm @ torch.linalg.inv(full) @ torch.linalg.inv(norm))[:, :2].float()
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=True)
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


def _about_centre(linear: Tensor, h: int, w: int, shift: Tensor | None = None) -> Tensor:
    """``x -> linear @ (x - c) + c + shift`` as ``[n, 2, 3]`` matrices (``linear`` ``[n, 2, 2]``, ``shift``
    ``[n, 2]``), ``c`` the image centre."""
    c = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64, device=linear.device)
    offset = c - linear @ c
    if shift is not None:
        offset = offset + shift
    return torch.cat([linear, offset.unsqueeze(2)], dim=2)


class _Affine:
    """Draw a matrix with probability ``p``; warp the image and map the landmarks by it.

    ``matrices(n, draw, h, w)`` draws ``n`` of them at once: one in a data worker (torch's global
    generator), one per chosen sample of the batch on the device (``on = "device"``, :meth:`batch`).
    """

    takes_sample = True
    p: float
    fill: int
    on: str = "workers"

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> Tensor:
        raise NotImplementedError

    def matrix(self, h: int, w: int) -> Tensor:
        """One ``2 × 3`` matrix from torch's global generator."""
        return self.matrices(1, Draw(None), h, w)[0]

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

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> Tensor:
        a = torch.deg2rad(draw.uniform(*self.degrees, n, dtype=torch.float64))
        cos, sin = torch.cos(a), torch.sin(a)
        # y points down: a counter-clockwise turn on screen is (x, y) -> (x cos a + y sin a, -x sin a + y cos a)
        linear = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
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

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> Tensor:
        d = draw.uniform(-self.fraction, self.fraction, n, 2, dtype=torch.float64)
        shift = d * torch.tensor([w, h], dtype=torch.float64, device=d.device)
        return _about_centre(torch.eye(2, dtype=torch.float64, device=d.device).expand(n, 2, 2), h, w, shift)

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

    def matrices(self, n: int, draw: Draw, h: int, w: int) -> Tensor:
        f64 = torch.float64
        area = draw.uniform(*self.scale, n, dtype=f64)
        ratio = torch.exp(draw.uniform(math.log(self.ratio[0]), math.log(self.ratio[1]), n, dtype=f64))
        cw, ch = (w * torch.sqrt(area * ratio)).clamp(max=w), (h * torch.sqrt(area / ratio)).clamp(max=h)
        x0, y0 = draw.rand(n, dtype=f64) * (w - cw), draw.rand(n, dtype=f64) * (h - ch)  # the box's left, top
        sx, sy = w / cw, h / ch
        zero = torch.zeros_like(sx)
        # pixel edges lie at centre ± 0.5: x_out + 0.5 = (x_in + 0.5 - x0) · sx
        return torch.stack([torch.stack([sx, zero, (0.5 - x0) * sx - 0.5], 1),
                            torch.stack([zero, sy, (0.5 - y0) * sy - 0.5], 1)], 1)

    def __repr__(self) -> str:
        return f"RandomResizedCrop(p={self.p}, scale={list(self.scale)}, ratio={list(self.ratio)}, on={self.on!r})"

"""Five-point face alignment to the ArcFace template, as TFace's ``img2tfrecord`` does it.

TFace estimates a least-squares similarity transform (skimage's ``SimilarityTransform.estimate``, i.e.
Umeyama's method) from the five landmarks to the 112×112 ArcFace template and warps with
``cv2.warpAffine`` (bilinear, black border). This module does the same with numpy only, so packing
needs neither OpenCV nor scikit-image.

Coordinates follow OpenCV: pixel ``(col, row)`` has its centre at ``(x, y) = (col, row)``. Landmark
files written by the usual detectors use that convention, and so does the template.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tface.core.data.index import IndexFormatError

__all__ = [
    "ARCFACE_TEMPLATE",
    "template",
    "similarity_transform",
    "transform_points",
    "warp",
    "reduce68",
    "align_face",
    "read_landmark_list",
]

#: The 112×112 ArcFace template (left eye, right eye, nose tip, left and right mouth corner), x then y:
#: the 96×112 template of SphereFace/ArcFace shifted by +8 px in x.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
ARCFACE_TEMPLATE.setflags(write=False)


def template(size: int = 112) -> np.ndarray:
    """The ArcFace template for a ``size``×``size`` crop (the 112 template scaled by ``size / 112``)."""
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return ARCFACE_TEMPLATE * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping ``src`` onto ``dst`` (Umeyama, 1991).

    Returns the 2×3 matrix ``M`` with ``dst ≈ M @ [x, y, 1]``; reflections are excluded. Same result as
    skimage's ``SimilarityTransform.estimate``. Raises ``ValueError`` when ``src`` has no spread (all
    points equal), where no transform is defined.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two equal-shaped N×2 point arrays (N >= 2), got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks must be finite numbers")
    n = len(src)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c**2).sum() / n
    if src_var <= 1e-12 * max(1.0, float(np.abs(src).max())) ** 2:
        raise ValueError("landmarks are degenerate (all points coincide); no similarity transform exists")
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    if s[0] <= 1e-12 * max(1.0, float(np.abs(dst).max())) ** 2:
        raise ValueError("target points are degenerate (all coincide); no similarity transform exists")
    d = np.ones(2)
    if s[1] <= s[0] * 1e-12:
        # rank 1 (collinear points): the reflection sign is free; take whichever of U·Vᵀ, U·diag(1,-1)·Vᵀ
        # is a proper rotation, as Umeyama's paper (and skimage) do
        if np.linalg.det(u) * np.linalg.det(vt) <= 0:
            d[1] = -1.0
    elif np.linalg.det(cov) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = float(s @ d) / src_var
    out = np.empty((2, 3))
    out[:, :2] = scale * rot
    out[:, 2] = dst_mean - scale * rot @ src_mean
    return out


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine matrix to N×2 points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def _as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return arr[:, :, :3]
    raise ValueError(f"expected an H×W, H×W×3 or H×W×4 image, got shape {arr.shape}")


def warp(image: np.ndarray | Image.Image, matrix: np.ndarray, size: int = 112) -> np.ndarray:
    """``cv2.warpAffine(image, matrix, (size, size))`` semantics: uint8 ``size``×``size``×3, bilinear.

    Output pixel ``p`` takes the input at ``M⁻¹ p``; input pixels outside the image count as black, so
    the border fades to black over one pixel exactly as OpenCV's ``BORDER_CONSTANT`` does.
    """
    img = _as_rgb_array(image)
    h, w = img.shape[:2]
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"expected a 2×3 matrix, got shape {m.shape}")
    a = m[:, :2]
    if abs(np.linalg.det(a)) < 1e-12:
        raise ValueError("the transform is singular")
    inv = np.linalg.inv(a)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    out_pts = np.stack([xs.ravel() - m[0, 2], ys.ravel() - m[1, 2]])
    sx, sy = inv @ out_pts
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0)[:, None], (sy - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    acc = np.zeros((size * size, 3))
    flat = img.reshape(-1, 3)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            idx = np.where(inside, yi.clip(0, h - 1) * w + xi.clip(0, w - 1), 0)
            acc += np.where(inside[:, None], flat[idx], 0) * (wx * wy)
    return np.clip(np.rint(acc), 0, 255).astype(np.uint8).reshape(size, size, 3)


def reduce68(points: np.ndarray) -> np.ndarray:
    """TFace's 68 → 5 reduction: eye centres (36+39, 42+45 averaged), nose tip 30, mouth corners 48, 54."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(p) != 68:
        raise ValueError(f"expected 68 landmarks, got {len(p)}")
    return np.stack([(p[36] + p[39]) / 2, (p[42] + p[45]) / 2, p[30], p[48], p[54]])


def align_face(image: np.ndarray | Image.Image, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` so its 5 (or 68) landmarks land on the ArcFace template; uint8 ``size``×``size``×3."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if len(pts) == 68:
        pts = reduce68(pts)
    if len(pts) != 5:
        raise ValueError(f"expected 5 or 68 landmarks, got {len(pts)}")
    return warp(image, similarity_transform(pts, template(size)), size)


def read_landmark_list(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """TFace ``pts_list``: ``path x1 y1 ... x5 y5 [score]`` or 68 points ``[score]`` → ``{path: 5×2}``.

    10 or 136 numbers are points; an 11th / 137th is the detector score and dropped. Anything else, a
    non-finite or non-numeric value, or a path given twice is an :class:`IndexFormatError` naming the line.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    first_line: dict[str, int] = {}
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise IndexFormatError(f"{path}: cannot read landmark list: {exc.strerror or exc}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            tokens = line.split()
            if not tokens:
                continue
            key, values = tokens[0], tokens[1:]
            if len(values) not in (10, 11, 136, 137):
                raise IndexFormatError(
                    f"{path}:{lineno}: expected a path then 10 or 136 coordinates (plus an optional score), "
                    f"got {len(values)} numbers: {line.strip()[:120]!r}"
                )
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                bad = next(v for v in values if not _is_float(v))
                raise IndexFormatError(f"{path}:{lineno}: not a number: {bad!r}") from None
            if not all(math.isfinite(v) for v in numbers):
                raise IndexFormatError(f"{path}:{lineno}: landmarks must be finite numbers: {line.strip()[:120]!r}")
            if key in out:
                raise IndexFormatError(f"{path}:{lineno}: {key!r} already has landmarks (line {first_line[key]})")
            if len(values) >= 136:
                pts = reduce68(np.asarray(numbers[:136]))
            else:
                pts = np.asarray(numbers[:10], dtype=np.float64).reshape(5, 2)
            out[key] = pts
            first_line[key] = lineno
    return out


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

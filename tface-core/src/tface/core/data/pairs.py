"""Verification pair lists (LFW ``pairs.txt`` or a plain list) → the images and flags of a ``.bin`` file.

Without landmarks the ``.bin`` stores each image's original file bytes (as insightface's first packers
did), so building one never re-encodes; every image is still decoded once to prove that evaluation can
read it and that it has the aligned size the models expect. With landmarks (a TFace ``pts_list``) each
raw photo is aligned to the ArcFace template and stored as a JPEG crop, exactly as ``tface data pack``
aligns and encodes (:func:`tface.core.data.pack.encode_face`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import attrs
import numpy as np

__all__ = ["PairsError", "Pair", "read_lfw_pairs", "read_pair_list", "load_pair_images", "landmark_key",
           "PAIR_FORMATS"]

PAIR_FORMATS = ("lfw", "list")


class PairsError(ValueError):
    """A bad pair list or image: names the pair-list file and line."""


@attrs.frozen
class Pair:
    first: Path
    second: Path
    same: bool
    line: int


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PairsError(f"{path}: cannot read pair list: {exc}") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        out.append((lineno, line.split("\t") if "\t" in line else line.split()))
    if not out:
        raise PairsError(f"{path}: the pair list is empty")
    return out


def _number(path: Path, lineno: int, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PairsError(f"{path}:{lineno}: image number must be an integer, got {text!r}") from None
    if value < 1:
        raise PairsError(f"{path}:{lineno}: image numbers start at 1, got {value}")
    return value


def read_lfw_pairs(path: str | os.PathLike, root: str | os.PathLike, ext: str = "jpg") -> list[Pair]:
    """Parse LFW ``pairs.txt``: ``name i j`` (same person) or ``name1 i name2 j`` (different people).

    An optional first line of one or two integers (``N``: N same then N different pairs; ``F N``: F
    folds of that) is checked against the number of pair lines. Images are ``root/name/name_%04d.ext``.
    """
    path, root = Path(path), Path(root)
    lines = _lines(path)
    expected = None
    first_line, first = lines[0]
    if len(first) in (1, 2) and all(t.isdigit() for t in first):
        counts = [int(t) for t in first]
        expected = 2 * counts[0] if len(counts) == 1 else 2 * counts[0] * counts[1]
        lines = lines[1:]

    def image(name: str, number: int) -> Path:
        return root / name / f"{name}_{number:04d}.{ext}"

    pairs: list[Pair] = []
    for lineno, cols in lines:
        if len(cols) == 3:
            name, i, j = cols
            pairs.append(Pair(image(name, _number(path, lineno, i)), image(name, _number(path, lineno, j)),
                              True, lineno))
        elif len(cols) == 4:
            a, i, b, j = cols
            pairs.append(Pair(image(a, _number(path, lineno, i)), image(b, _number(path, lineno, j)), False, lineno))
        else:
            raise PairsError(f"{path}:{lineno}: expected 'name i j' or 'name1 i name2 j', got {len(cols)} fields: "
                             f"{' '.join(cols)[:120]!r}")
    if not pairs:
        raise PairsError(f"{path}: no pairs after the header line")
    if expected is not None and expected != len(pairs):
        raise PairsError(f"{path}:{first_line}: the header {' '.join(first)!r} announces {expected} pairs but the "
                         f"file has {len(pairs)}")
    return pairs


_TRUE = {"1": True, "true": True, "0": False, "false": False}


def read_pair_list(path: str | os.PathLike, root: str | os.PathLike) -> list[Pair]:
    """Parse ``path1 path2 issame`` lines (tab- or space-separated; issame ``0/1`` or ``true/false``).

    Relative image paths are taken from ``root``.
    """
    path, root = Path(path), Path(root)
    pairs: list[Pair] = []
    for lineno, cols in _lines(path):
        if len(cols) != 3:
            raise PairsError(f"{path}:{lineno}: expected 'path1 path2 issame', got {len(cols)} fields: "
                             f"{' '.join(cols)[:120]!r}")
        same = _TRUE.get(cols[2].strip().lower())
        if same is None:
            raise PairsError(f"{path}:{lineno}: issame must be 0/1 or true/false, got {cols[2]!r}")
        pairs.append(Pair(root / cols[0], root / cols[1], same, lineno))
    return pairs


def landmark_key(image: Path, root: Path | None, table: Mapping[str, np.ndarray]) -> str | None:
    """The landmark-list entry of ``image``: its path relative to ``root`` (as the pair list names it,
    ``name/name_0001.jpg`` for LFW), else its full path — the lookup ``tface data pack`` makes."""
    keys = []
    if root is not None and image.is_relative_to(root):  # not so for an absolute path in a plain list
        keys.append(image.relative_to(root).as_posix())
    keys.append(str(image))
    return next((k for k in keys if k in table), None)


def load_pair_images(pairs: Sequence[Pair], list_path: str | os.PathLike, *, image_size: int | None = 112,
                     progress: Callable[[Iterable[Pair], int], Iterable[Pair]] | None = None,
                     landmarks: Mapping[str, np.ndarray] | None = None, root: str | os.PathLike | None = None,
                     quality: int = 95) -> tuple[list[bytes], list[bool]]:
    """The ``2N`` image bytes and ``N`` flags; every image must exist and decode.

    Without ``landmarks`` each image must be ``image_size`` square and its original bytes are kept. With
    ``landmarks`` (``{path: 5×2}``, from :func:`tface.core.data.align.read_landmark_list`; keys as
    :func:`landmark_key` looks them up under ``root``) each image is aligned to the ``image_size`` ArcFace
    template and stored as a JPEG of ``quality``; an image without an entry is an error, since dropping
    its pairs would change the folds of the protocol. Each distinct file is read and processed once,
    however many pairs use it.
    """
    from tface.core.data.image import ImageDecodeError, decode_rgb

    root_path = Path(root) if root is not None else None
    cache: dict[Path, bytes] = {}
    images: list[bytes] = []
    flags: list[bool] = []
    items: Iterable[Pair] = pairs if progress is None else progress(pairs, len(pairs))
    for pair in items:
        for img in (pair.first, pair.second):
            data = cache.get(img)
            if data is None:
                where = f"{list_path}:{pair.line}: image {img}"
                points = None
                if landmarks is not None:
                    key = landmark_key(img, root_path, landmarks)
                    if key is None:
                        raise PairsError(f"{where} has no landmarks in the landmark list")
                    points = landmarks[key]
                try:
                    data = img.read_bytes()
                except FileNotFoundError:
                    raise PairsError(f"{where} does not exist") from None
                except OSError as exc:
                    raise PairsError(f"{where} cannot be read: {exc.strerror or exc}") from None
                if points is not None:
                    data = _aligned(data, points, where, image_size or 112, quality)
                else:
                    try:
                        decoded = decode_rgb(data)
                    except ImageDecodeError as exc:
                        raise PairsError(f"{where} does not decode: {exc}") from None
                    h, w = int(decoded.shape[-2]), int(decoded.shape[-1])
                    if image_size is not None and (h, w) != (image_size, image_size):
                        raise PairsError(f"{where} is {w}x{h}, expected {image_size}x{image_size} (aligned "
                                         "crops; pass --landmarks to align raw photos)")
                cache[img] = data
            images.append(data)
        flags.append(pair.same)
    return images, flags


def _aligned(data: bytes, points: np.ndarray, where: str, size: int, quality: int) -> bytes:
    """The JPEG of the aligned crop, made by pack's own decode-align-encode step."""
    from tface.core.data.pack import encode_face

    try:
        jpeg, _ = encode_face(data, points, quality=quality, size=size)
    except ValueError as exc:  # undecodable, or degenerate landmarks
        raise PairsError(f"{where} cannot be aligned: {exc}") from None
    return jpeg

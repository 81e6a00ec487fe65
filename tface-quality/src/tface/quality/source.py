"""The ``quality_list`` data source: images with a quality score each, as ``path<TAB>score`` lines (TFace's format).

The training loader yields ``(image, int label)`` items and a batch carries no sample indices, so the score
travels as the label: ``label = round(score × SCORE_SCALE)`` (nearest integer; :func:`encode_scores`), and the
``quality_regression`` method divides it back (:func:`decode_labels`). With ``SCORE_SCALE = 1000`` a score given
to three decimals comes back exactly, and any other to within 5e-4 (1/200,000 of the 0–100 range, far below
the noise of pseudo labels). Scores must lie in [0, 100], the range of SDD-FIQA's pseudo labels
(:func:`tface.quality.pseudo.pseudo_labels`), which also keeps labels small non-negative ints.

Images are read by core's image-file dataset (:class:`~tface.core.data.folder.ImageFileDataset`: the one decoder,
the ``on_error`` policy, messages naming ``file (list <list>:<line>)``); only the list's lines are parsed here,
because core's :func:`~tface.core.data.imagelist.read_image_list` takes integer identity labels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import attrs
import numpy as np
import torch

from tface.core.config import option, options
from tface.core.data.base import ON_ERROR, Transform
from tface.core.data.folder import ImageFileDataset
from tface.core.data.imagelist import ImageList
from tface.core.data.index import IndexFormatError, text_lines
from tface.core.data.source import DatasetSource, missing_path

__all__ = ["MAX_SCORE", "SCORE_SCALE", "QualityListDataset", "QualityListSource", "decode_labels", "encode_scores",
           "read_quality_list"]

#: Labels are ``round(score × SCORE_SCALE)``.
SCORE_SCALE = 1000
#: Scores lie in ``[0, MAX_SCORE]``.
MAX_SCORE = 100.0


def encode_scores(scores: np.ndarray | list[float]) -> np.ndarray:
    """Scores in [0, 100] → int64 labels ``round(score × SCORE_SCALE)``."""
    a = np.asarray(scores, dtype=np.float64)
    if a.size and (not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > MAX_SCORE):
        raise ValueError(f"scores must be finite and lie in [0, {MAX_SCORE:g}]")
    return np.rint(a * SCORE_SCALE).astype(np.int64)


def decode_labels(labels: torch.Tensor) -> torch.Tensor:
    """Labels of a ``quality_list`` batch → float32 scores (``label / SCORE_SCALE``)."""
    return labels.to(torch.float32) / SCORE_SCALE


def _split(line: str) -> tuple[str, str] | None:
    """``(path, score text)``: a tab separates the score (TFace); else the last whitespace-separated token does."""
    if "\t" in line:
        img, _, score = line.rpartition("\t")
        return img.strip(), score.strip()
    parts = line.rsplit(None, 1)
    return (parts[0].strip(), parts[1]) if len(parts) == 2 else None


def read_quality_list(path: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[ImageList, np.ndarray]:
    """The images of a ``path<TAB>score`` file and their scores (float64, as written).

    Relative image paths resolve against ``root`` (default: the list's folder). The :class:`ImageList`'s labels
    are the encoded scores (:func:`encode_scores`). Blank lines are skipped; anything else that is not an image
    path and a score in [0, 100], or a path listed twice, is an :class:`IndexFormatError` naming ``file:line``.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    paths: list[str] = []
    scores: list[float] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    for lineno, line in text_lines(path, "quality list"):
        split = _split(line)
        if split is None or not split[0]:
            raise IndexFormatError(f"{path}:{lineno}: expected 'path<TAB>score', got {line[:120]!r}")
        img, text = split
        try:
            score = float(text)
        except ValueError:
            raise IndexFormatError(f"{path}:{lineno}: the score must be a number, got {text[:40]!r}") from None
        if not (math.isfinite(score) and 0.0 <= score <= MAX_SCORE):
            raise IndexFormatError(f"{path}:{lineno}: the score must lie in [0, {MAX_SCORE:g}] (a quality "
                                   f"pseudo label), got {text[:40]}")
        if img in seen:
            raise IndexFormatError(f"{path}:{lineno}: {img!r} is listed twice (first on line {seen[img]})")
        seen[img] = lineno
        paths.append(img)
        scores.append(score)
        lines.append(lineno)
    if not paths:
        raise IndexFormatError(f"{path}: the quality list is empty")
    values = np.asarray(scores, dtype=np.float64)
    images = ImageList(root=base, paths=tuple(paths), labels=encode_scores(values), classes={}, source=path,
                       lines=tuple(lines))
    return images, values


class QualityListDataset(ImageFileDataset):
    """``dataset[i] -> (uint8 image, round(score × SCORE_SCALE))``; ``scores`` holds the scores as written.

    ``quality_scale`` marks the labels as encoded scores (the ``quality_regression`` method refuses branches
    without it); ``num_classes`` is 0: the labels are not identities, and no classifier is built on them.
    """

    quality_scale: int = SCORE_SCALE

    def __init__(self, images: ImageList, scores: np.ndarray, *, image_size: int = 112,
                 transform: Transform | None = None, on_error: str = "error"):
        super().__init__(images, image_size=image_size, transform=transform, on_error=on_error, label_gaps="warn")
        self.label_message = None  # "labels span 0..N with gaps" is about identities; these are scores
        self.scores = scores

    @property
    def num_classes(self) -> int:
        return 0


@options
class QualityListSource(DatasetSource):
    """``[data] name = "quality_list"``: a ``path<TAB>score`` file (e.g. ``tface quality labels`` output).

    ``list``: the file (required; it is optional in the signature only so the source can be built without one
    for inspection, and a run without it is refused by name); ``root``: the folder relative image paths are
    taken from (default: the list's folder); ``image_size``: the side of the aligned square crops;
    ``on_error``: the bad-image policy (``error`` or ``skip``).
    """

    def __init__(self, list: Path | None = None, root: Path | None = None,
                 image_size: int = option(112, attrs.validators.gt(0)),
                 on_error: str = option("error", attrs.validators.in_(ON_ERROR))):
        self.list = Path(list) if list is not None else None
        self.root = Path(root) if root is not None else None
        self.image_size = image_size
        self.on_error = on_error

    def train_dataset(self, transform: Transform | None = None) -> QualityListDataset:
        if self.list is None:
            raise ValueError("quality_list: list is not set (the path<TAB>score file to train on)")
        images, scores = read_quality_list(self.list, self.root)
        return QualityListDataset(images, scores, image_size=self.image_size, transform=transform,
                                  on_error=self.on_error)

    def check_inputs(self) -> list[str]:
        if self.list is None:
            return ["list: not set: name the path<TAB>score file to train on"]
        return [*missing_path("list", self.list), *missing_path("root", self.root, "folder")]

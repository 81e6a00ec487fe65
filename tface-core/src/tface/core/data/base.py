"""What every training dataset shares: the item contract, the bad-sample policy and the label space.

Items are ``(uint8 image [3, H, W], int label)``. Images stay uint8 until the trainer normalises a whole
batch on the device (:func:`tface.core.data.image.normalize`): decoding is then the only per-sample
work in a loader worker, and batches cross process boundaries and the PCIe bus at a quarter of the
float32 size.

Bad samples follow ``on_error``: ``"error"`` raises :class:`DataError` naming the file and offset or
line; ``"skip"`` logs the sample, counts it in a counter shared by all DataLoader workers, and returns
the next good sample instead (so batch shapes never change).
"""

from __future__ import annotations

import abc
import logging
import multiprocessing as mp
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tface.core.data.errors import DataError
from tface.core.data.index import LabelSpace, label_space

__all__ = ["FaceDataset", "ON_ERROR", "LABEL_GAPS", "LabelGapError", "resolve_labels", "Transform", "collate_faces"]

log = logging.getLogger("tface.data")

ON_ERROR = ("error", "skip")
LABEL_GAPS = ("warn", "error", "compact")
Transform = Callable[[torch.Tensor], torch.Tensor]

#: With ``on_error = "skip"``, give up after this many bad samples in a row (the data is not usable).
MAX_CONSECUTIVE_BAD = 1000


class LabelGapError(ValueError):
    pass


def resolve_labels(labels: np.ndarray, policy: str, where: str) -> tuple[np.ndarray, LabelSpace, str | None]:
    """Apply a ``label_gaps`` policy; returns (labels, the original label space, a message or None).

    ``warn`` keeps the labels and says how many classes have no sample (the classifier still has
    ``max + 1`` rows, as in TFace); ``error`` refuses; ``compact`` renumbers the used labels 0..K-1 in
    increasing order.
    """
    if policy not in LABEL_GAPS:
        raise ValueError(f"label_gaps must be one of {LABEL_GAPS}, got {policy!r}")
    space = label_space(labels)
    if space.contiguous:
        return labels, space, None
    if policy == "error":
        raise LabelGapError(f"{where}: {space.describe()}; set label_gaps = \"compact\" to renumber them "
                            "or \"warn\" to train with empty classes")
    if policy == "compact":
        used = np.flatnonzero(np.bincount(labels))
        remap = np.full(space.num_classes, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return remap[labels], space, f"{where}: {space.describe()}; renumbered to 0..{len(used) - 1}"
    return labels, space, (f"{where}: {space.describe()}; the classifier gets {space.num_classes} classes "
                           "(set label_gaps = \"compact\" to renumber)")


def collate_faces(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` items into ``(images [B, 3, H, W] in channels-last memory, labels [B])``.

    Pair items ``((first, second), label)`` (a pair source) give ``images [2B, 3, H, W]``, each pair's two
    images next to each other (``images[0::2]`` the firsts, ``images[1::2]`` the seconds), and ``labels [B]``.

    JPEG decoders hand back channels-last (HWC-strided) views; copying them in that order is a plain
    memcpy (about 4× faster than gathering them into CHW), and channels-last is what the trainer feeds
    the network anyway. Items that are not 3-D tensors fall back to torch's default collate.
    """
    images = [img for img, _ in items]
    if items and isinstance(images[0], tuple):  # pairs ((first, second), label): first0, second0, first1, ...
        images = [im for pair in images for im in pair]
    if not all(isinstance(im, torch.Tensor) and im.dim() == 3 for im in images):
        from torch.utils.data import default_collate

        return default_collate(items)
    batch = torch.stack([im.permute(1, 2, 0) for im in images]).permute(0, 3, 1, 2)
    return batch, torch.as_tensor([int(lab) for _, lab in items], dtype=torch.int64)


class FaceDataset(Dataset, abc.ABC):
    """Base of the map-style training datasets. Subclasses implement :meth:`load` and set ``labels``."""

    labels_np: np.ndarray  # int64 [N], after the label policy
    transform: Transform | None

    def __init__(self, *, transform: Transform | None = None, on_error: str = "error"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.transform = transform
        self.on_error = on_error
        self.label_message: str | None = None
        self._skipped = mp.get_context().Value("q", 0) if on_error == "skip" else None
        self._warned: set[int] = set()

    # -- what subclasses provide --------------------------------------------------------------------
    @abc.abstractmethod
    def load(self, i: int) -> torch.Tensor:
        """The uint8 ``[3, H, W]`` image of sample ``i``; raises :class:`DataError` when it is bad."""

    @abc.abstractmethod
    def where(self, i: int) -> str:
        """Where sample ``i`` lives, for messages (file and offset, or file and line)."""

    def load_with_landmarks(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image of sample ``i`` and its five landmarks ``[5, 2]`` when the data stores them (else None).

        Asked only when the augmenters move landmarks (``transform.takes_landmarks``); sources that store none
        keep this default, and their crops get the ArcFace template.
        """
        return self.load(i), None

    # -- the shared behaviour -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels_np)

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.labels_np)

    @property
    def num_classes(self) -> int:
        return int(self.labels_np.max()) + 1 if len(self.labels_np) else 0

    @property
    def skipped(self) -> int:
        """Bad samples skipped so far, summed over every DataLoader worker of this dataset."""
        return int(self._skipped.value) if self._skipped is not None else 0

    def _bad(self, i: int, exc: DataError) -> None:
        if self._skipped is None:
            raise exc
        with self._skipped.get_lock():
            self._skipped.value += 1
        if i not in self._warned:
            self._warned.add(i)
            log.warning("skipping bad sample %d: %s", i, exc)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self)
        j = int(i)
        for _ in range(min(n, MAX_CONSECUTIVE_BAD)):
            landmarks = None
            try:
                if self.transform is not None and getattr(self.transform, "takes_landmarks", False):
                    img, landmarks = self.load_with_landmarks(j)
                else:
                    img = self.load(j)
            except DataError as exc:
                self._bad(j, exc)
                j = (j + 1) % n
                continue
            if landmarks is not None:
                img = self.transform(img, landmarks)
            elif self.transform is not None:
                img = self.transform(img)
            return img, int(self.labels_np[j])
        raise DataError(f"{self.where(int(i))}: {min(n, MAX_CONSECUTIVE_BAD)} bad samples in a row from here; "
                        "the data set looks unusable (check it with `tface data verify`)")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_warned"] = set()
        return state

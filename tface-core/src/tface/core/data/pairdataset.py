"""Map-style dataset over an 8-column pair index (TFace's ``PairIndexTFRDataset``; DDL's positive pairs).

Both images of a pair are read by :class:`~tface.core.data.dataset.IndexedTFRecordDataset` over
:meth:`PairIndex.images` (every image of the index as one plain index), so pairs share the single-image
path: the shard check at construction, the cached descriptors, one ``pread`` per record, the CRCs, the
``Example`` fast path and tface's one decoder.
"""

from __future__ import annotations

import os

import torch

from tface.core.data.base import MAX_CONSECUTIVE_BAD, FaceDataset, Transform, resolve_labels
from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.errors import DataError
from tface.core.data.index import PairIndex, read_pair_index

__all__ = ["PairTFRecordDataset"]

_HALVES = ("first", "second")


class PairTFRecordDataset(FaceDataset):
    """``dataset[i] -> ((uint8 image [3, H, W], uint8 image [3, H, W]), label)``, the label being the first one's.

    ``transform`` is applied to each image separately (random augmenters draw for each, as in TFace).
    ``num_classes``, ``labels`` and ``label_gaps`` concern the first labels (TFace's ``class_num``).
    A bad record names the shard, the offset, the pair-index line and which image of the pair it is;
    ``on_error = "skip"`` replaces the whole pair by the next good one.
    """

    #: items are image pairs: the loader stacks a batch of B pairs as 2B images (``MultiBatch.pairs``)
    yields_pairs = True

    def __init__(self, index: str | os.PathLike | PairIndex, root: str | os.PathLike | None = None, *,
                 transform: Transform | None = None, verify_crc: bool = True, image_key: str = "image",
                 on_error: str = "error", label_gaps: str = "warn"):
        super().__init__(transform=transform, on_error=on_error)
        self.pairs = index if isinstance(index, PairIndex) else read_pair_index(index, root)
        # Errors always raise in the image reader: the skip policy acts on whole pairs, here.
        self.images = IndexedTFRecordDataset(self.pairs.images(), verify_crc=verify_crc, image_key=image_key)
        self.labels_np, self.label_space, self.label_message = resolve_labels(
            self.pairs.labels, label_gaps, str(self.pairs.path))

    def where(self, i: int) -> str:
        return f"pair index {self.pairs.path}:{self.pairs.line_of(i)}"

    def _image(self, i: int, half: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image ``half`` (0, 1) of pair ``i`` and its landmarks when the transform moves them."""
        j = i + half * len(self.pairs)
        try:
            if self.transform is not None and getattr(self.transform, "takes_landmarks", False):
                return self.images.load_with_landmarks(j)
            return self.images.load(j), None
        except DataError as exc:
            raise self._located(exc, j, _HALVES[half]) from None

    def _located(self, exc: DataError, j: int, half: str) -> DataError:
        """``exc`` reworded as ``<shard>: offset N (index <pair index>:<line>), <half> image: <reason>``.

        Record-level messages name only the shard and offset, the image reader's others its own ``where``;
        both prefixes are replaced, so every pair error reads the same and names the line once.
        """
        index = self.images.index
        shard, offset = index.files[int(index.file_id[j])], int(index.offsets[j])
        where = index.where(j)
        reason = str(exc)
        for prefix in (f"{where}: ", f"{shard}: offset {offset}: ", f"{shard}: "):
            if reason.startswith(prefix):
                reason = reason[len(prefix):]
                break
        return type(exc)(f"{where}, {half} image: {reason}")

    def load_pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Both uint8 images of pair ``i``, untransformed."""
        return self._image(i, 0)[0], self._image(i, 1)[0]

    def load(self, i: int) -> torch.Tensor:
        """The first image of pair ``i`` (:class:`FaceDataset`'s one-image contract, for tools that look at one)."""
        return self._image(i, 0)[0]

    def _transformed(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for half in (0, 1):
            img, landmarks = self._image(i, half)
            if landmarks is not None:
                img = self.transform(img, landmarks)
            elif self.transform is not None:
                img = self.transform(img)
            out.append(img)
        return out[0], out[1]

    def __getitem__(self, i: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        n = len(self)
        j = int(i)
        for _ in range(min(n, MAX_CONSECUTIVE_BAD)):
            try:
                pair = self._transformed(j)
            except DataError as exc:
                self._bad(j, exc)
                j = (j + 1) % n
                continue
            return pair, int(self.labels_np[j])
        raise DataError(f"{self.where(int(i))}: {min(n, MAX_CONSECUTIVE_BAD)} bad pairs in a row from here; "
                        "the data set looks unusable (check it with `tface data verify`)")

    def close(self) -> None:
        """Close the shard descriptors this process opened (reopened on the next read)."""
        self.images.close()

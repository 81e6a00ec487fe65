"""Map-style dataset over TFRecord shards addressed by a TFace index (random access by byte offset)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from tface.core.data.base import FaceDataset, Transform, resolve_labels
from tface.core.data.image import ImageDecodeError, decode_rgb, max_image_pixels
from tface.core.data.index import Index, IndexFormatError, read_index
from tface.core.data.tfrecord import HEADER, RecordError, bytes_feature, parse_example, pread_record

__all__ = ["IndexedTFRecordDataset", "check_shards"]


def check_shards(index: Index) -> int:
    """Fail now, not mid-epoch: every shard exists and every offset leaves room for a record header.

    Returns the total size of the shards in bytes.
    """
    total = 0
    order = np.argsort(index.file_id, kind="stable")
    bounds = np.searchsorted(index.file_id[order], np.arange(len(index.files) + 1))
    for fid, path in enumerate(index.files):
        rows = order[bounds[fid]:bounds[fid + 1]]
        try:
            size = path.stat().st_size
        except OSError:
            first = int(rows[0]) if len(rows) else 0
            raise IndexFormatError(
                f"{index.path}:{index.line_of(first)}: shard file {path} is missing "
                f"({len(rows)} samples of the index point into it)"
            ) from None
        total += size
        if not len(rows):
            continue
        worst = int(rows[np.argmax(index.offsets[rows])])
        if int(index.offsets[worst]) + HEADER > size:
            raise IndexFormatError(
                f"{index.path}:{index.line_of(worst)}: offset {int(index.offsets[worst])} points past the end "
                f"of {path} ({size} bytes)"
            )
    return total


class IndexedTFRecordDataset(FaceDataset):
    """``dataset[i] -> (uint8 image [3, H, W], label)``.

    All shard files are checked at construction (present, every offset inside its file); each record's
    CRCs are checked when it is read. Open shard handles are cached per process (DataLoader workers
    open their own after fork), so a sample costs one seek and one read.
    """

    def __init__(self, index: str | os.PathLike | Index, root: str | os.PathLike | None = None, *,
                 transform: Transform | None = None, verify_crc: bool = True, image_key: str = "image",
                 on_error: str = "error", label_gaps: str = "warn"):
        super().__init__(transform=transform, on_error=on_error)
        max_image_pixels()  # a bad TFACE_MAX_IMAGE_PIXELS fails here, not in every loader worker
        self.index = index if isinstance(index, Index) else read_index(index, root)
        self.verify_crc = verify_crc
        self.image_key = image_key
        total = check_shards(self.index)
        # One pread per record when it fits: read twice the mean record size (a larger record costs a second read).
        self._size_hint = int(min(max(2 * total // max(len(self.index), 1), 4096), 1 << 22))
        self.labels_np, self.label_space, self.label_message = resolve_labels(
            self.index.labels, label_gaps, str(self.index.path))
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def where(self, i: int) -> str:
        return self.index.where(i)

    def _fd(self, fid: int) -> int:
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._fds = {}
            self._pid = os.getpid()
        fd = self._fds.get(fid)
        if fd is None:
            try:
                fd = self._fds[fid] = os.open(self.index.files[fid], os.O_RDONLY)
            except OSError as exc:
                raise RecordError(f"{self.index.files[fid]}: cannot open shard: {exc.strerror or exc}") from None
        return fd

    def read_payload(self, i: int) -> bytes:
        """The serialised Example of sample ``i`` (CRCs checked unless ``verify_crc`` is off)."""
        fid, offset = int(self.index.file_id[i]), int(self.index.offsets[i])
        return pread_record(self._fd(fid), offset, path=str(self.index.files[fid]), verify=self.verify_crc,
                            size_hint=self._size_hint)

    def read_example(self, i: int) -> dict[str, list[bytes] | np.ndarray]:
        """Every feature of sample ``i``'s record (``image``, and ``label``/``landmarks``/``path`` if written)."""
        payload = self.read_payload(i)
        try:
            return parse_example(payload)
        except ValueError as exc:
            raise RecordError(f"{self.where(i)}: not a tf.train.Example: {exc}") from None

    def read_image_bytes(self, i: int) -> bytes:
        """The encoded image of sample ``i``."""
        try:
            data = bytes_feature(self.read_payload(i), self.image_key)
        except ValueError as exc:
            raise RecordError(f"{self.where(i)}: not a tf.train.Example with image bytes: {exc}") from None
        if data is None:
            raise RecordError(f"{self.where(i)}: record has no {self.image_key!r} feature")
        return data

    def load(self, i: int) -> torch.Tensor:
        return self._decode(i, self.read_image_bytes(i))

    def _decode(self, i: int, data: bytes) -> torch.Tensor:
        try:
            return decode_rgb(data)
        except ImageDecodeError as exc:
            raise RecordError(f"{self.where(i)}: cannot decode image: {exc}") from None

    def load_with_landmarks(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image and the record's ``landmarks`` (``pack --extra-keys``: 10 floats in the stored crop's
        pixel coordinates), or None when the record has none."""
        example = self.read_example(i)
        images = example.get(self.image_key)
        if not isinstance(images, list) or not images:
            raise RecordError(f"{self.where(i)}: record has no {self.image_key!r} feature")
        values = example.get("landmarks")
        if values is None:
            return self._decode(i, images[0]), None
        points = np.asarray(values, dtype=np.float32)
        if points.size != 10 or not np.isfinite(points).all():
            raise RecordError(f"{self.where(i)}: 'landmarks' holds {points.size} values"
                              f"{'' if points.size != 10 else ' that are not all finite'}; expected 5 (x, y) "
                              "points = 10 finite numbers")
        return self._decode(i, images[0]), torch.from_numpy(points.reshape(5, 2).copy())

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_fds"] = {}
        return state

    def close(self) -> None:
        """Close the shard descriptors this process opened (reopened on the next read)."""
        fds, self._fds = getattr(self, "_fds", {}), {}
        if getattr(self, "_pid", None) == os.getpid():
            for fd in fds.values():
                os.close(fd)

    def __del__(self) -> None:
        self.close()

"""Map-style dataset over TFRecord shards addressed by a TFace index (random access by byte offset)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, BinaryIO

import torch
from torch.utils.data import Dataset

from tface.core.data.image import decode_normalized
from tface.core.data.index import Index, IndexFormatError, read_index
from tface.core.data.tfrecord import HEADER, RecordError, parse_example, read_record_at

__all__ = ["IndexedTFRecordDataset"]


class IndexedTFRecordDataset(Dataset):
    """``dataset[i] -> (image [3, H, W] in [-1, 1], label)``.

    All shard files are checked at construction (present, every offset inside its file); each record's
    CRCs are checked when it is read. Open shard handles are cached per process (DataLoader workers
    reopen their own after fork).
    """

    def __init__(self, index: str | os.PathLike | Index, root: str | os.PathLike | None = None, *,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, verify_crc: bool = True,
                 image_key: str = "image"):
        self.index = index if isinstance(index, Index) else read_index(index, root)
        self.transform = transform
        self.verify_crc = verify_crc
        self.image_key = image_key
        self._check_files()
        self._handles: dict[int, BinaryIO] = {}
        self._pid = os.getpid()

    def _check_files(self) -> None:
        idx = self.index
        for fid, path in enumerate(idx.files):
            try:
                size = path.stat().st_size
            except OSError:
                raise IndexFormatError(f"{idx.path}: shard file {path} is missing") from None
            mask = idx.file_id == fid
            worst = int(idx.offsets[mask].max())
            if worst + HEADER > size:
                raise IndexFormatError(
                    f"{idx.path}: offset {worst} points past the end of {path} ({size} bytes)"
                )

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.index.labels)

    def __len__(self) -> int:
        return len(self.index)

    def _handle(self, fid: int) -> BinaryIO:
        if self._pid != os.getpid():  # forked worker: never share file positions with the parent
            self._handles = {}
            self._pid = os.getpid()
        f = self._handles.get(fid)
        if f is None:
            f = self._handles[fid] = open(self.index.files[fid], "rb")  # noqa: SIM115 - cached handle
        return f

    def read_image_bytes(self, i: int) -> bytes:
        """The encoded image of sample ``i``."""
        fid, offset = int(self.index.file_id[i]), int(self.index.offsets[i])
        path = str(self.index.files[fid])
        payload = read_record_at(self._handle(fid), offset, path=path, verify=self.verify_crc)
        try:
            feature = parse_example(payload)[self.image_key]
        except KeyError:
            raise RecordError(f"{path}: offset {offset}: record has no {self.image_key!r} feature") from None
        except ValueError as exc:
            raise RecordError(f"{path}: offset {offset}: not a tf.train.Example: {exc}") from None
        if not isinstance(feature, list) or not feature:
            raise RecordError(f"{path}: offset {offset}: feature {self.image_key!r} holds no bytes")
        return feature[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        data = self.read_image_bytes(i)
        try:
            img = decode_normalized(data)
        except RuntimeError as exc:
            fid, offset = int(self.index.file_id[i]), int(self.index.offsets[i])
            raise RecordError(f"{self.index.files[fid]}: offset {offset}: cannot decode image: {exc}") from None
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.index.labels[i])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def __del__(self) -> None:
        for f in getattr(self, "_handles", {}).values():
            f.close()



"""Write face crops as TFace-compatible TFRecord shards plus a training index.

Records are serialised and framed by :mod:`tface.core.data.tfrecord` (standard framing, ``Example`` with the
JPEG under ``image``), byte for byte what the ``tfrecord`` package writes, without importing protobuf (a
process that holds another generated ``example.proto`` module, TensorFlow's or TFace's, can still pack).
Offsets are taken from the file position, so the index always matches what was written.
With ``extra_keys=True`` a record also carries ``label`` (int64), ``landmarks`` (10 floats, x1 y1 ... x5 y5
in the stored image's pixels) and ``path`` (UTF-8 source path) when given; TFace's reader ignores them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np

from tface.core.data.index import check_record_name, shard_path, write_index, write_pack_index
from tface.core.data.tfrecord import frame, serialize_example

__all__ = ["ShardWriter"]

DEFAULT_SHARD_SIZE = 500_000  # TFace's img2tfrecord default


class ShardWriter:
    """``with ShardWriter(root, name) as w: w.add(jpeg, label)``; the index is written on a clean exit.

    Shards land in ``root/name/name-00000.tfrecord``...; the index at ``index_path`` (default
    ``root/name.txt``) is written last, so its presence means the data set is complete. With
    ``pack_index=True`` the TFace 3-column ``root/name/name.index`` (source path, shard, offset) is
    written too; every ``add`` must then give a ``path``.
    """

    def __init__(self, root: str | os.PathLike, name: str, *, shard_size: int = DEFAULT_SHARD_SIZE,
                 index_path: str | os.PathLike | None = None, extra_keys: bool = False,
                 pack_index: bool = False):
        check_record_name(name)
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.root = Path(root)
        self.name = name
        self.shard_size = shard_size
        self.index_path = Path(index_path) if index_path is not None else self.root / f"{name}.txt"
        self.extra_keys = extra_keys
        self.pack_index_path = self.root / name / f"{name}.index" if pack_index else None
        self.pack_rows: list[tuple[str, int, int]] = []
        self._writer: BinaryIO | None = None
        self._shard = -1
        self._in_shard = 0
        self.rows: list[tuple[str, int, int, int]] = []
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def _next_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._shard += 1
        self._in_shard = 0
        self._writer = open(shard_path(self.root, self.name, self._shard), "wb")  # noqa: SIM115 - closed in close()

    def add(self, image: bytes, label: int, *, path: str | None = None,
            landmarks: Sequence[float] | None = None) -> tuple[str, int, int, int]:
        """Append one encoded image; returns its index row."""
        if label < 0:
            raise ValueError(f"labels must be >= 0, got {label}")
        if label >= 1 << 63:
            raise ValueError(f"labels must fit in int64, got {label}")
        if self.pack_index_path is not None and path is None:
            raise ValueError("this writer keeps a pack index: every image needs its source path")
        features: dict[str, list[bytes] | np.ndarray] = {"image": [bytes(image)]}
        if self.extra_keys:
            features["label"] = np.asarray([label], dtype=np.int64)
            if landmarks is not None:
                pts = np.asarray([float(v) for v in landmarks], dtype=np.float32)
                if len(pts) != 10:
                    raise ValueError(f"landmarks must be 5 (x, y) points = 10 numbers, got {len(pts)}")
                features["landmarks"] = pts
            if path is not None:
                features["path"] = [path.encode("utf-8")]
        record = frame(serialize_example(features))
        if self._writer is None or self._in_shard >= self.shard_size:
            self._next_shard()
        offset = self._writer.tell()
        self._writer.write(record)
        self._in_shard += 1
        row = (self.name, self._shard, offset, int(label))
        self.rows.append(row)
        if self.pack_index_path is not None:
            self.pack_rows.append((path, self._shard, offset))
        return row

    def close(self) -> Path:
        """Close the last shard and write the index."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.pack_index_path is not None:
            write_pack_index(self.pack_index_path, self.pack_rows)
        return write_index(self.index_path, self.rows)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()

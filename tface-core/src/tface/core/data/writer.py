"""Write face crops as TFace-compatible TFRecord shards plus a training index.

Records go through the ``tfrecord`` package's writer (standard framing, ``Example`` with the JPEG under
``image``); offsets are taken from the file position, so the index always matches what was written.
With ``extra_keys=True`` a record also carries ``label`` (int64), ``landmarks`` (10 floats, x1 y1 ... x5 y5
in the stored image's pixels) and ``path`` (UTF-8 source path) when given; TFace's reader ignores them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tface.core.data.index import shard_path, write_index, write_pack_index

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
        from tfrecord.writer import TFRecordWriter  # imported here: reading never needs protobuf

        if not name or "/" in name or "\t" in name:
            raise ValueError(f"invalid record name {name!r}")
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.root = Path(root)
        self.name = name
        self.shard_size = shard_size
        self.index_path = Path(index_path) if index_path is not None else self.root / f"{name}.txt"
        self.extra_keys = extra_keys
        self.pack_index_path = self.root / name / f"{name}.index" if pack_index else None
        self.pack_rows: list[tuple[str, int, int]] = []
        self._writer_cls = TFRecordWriter
        self._writer = None
        self._shard = -1
        self._in_shard = 0
        self.rows: list[tuple[str, int, int, int]] = []
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def _next_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._shard += 1
        self._in_shard = 0
        self._writer = self._writer_cls(str(shard_path(self.root, self.name, self._shard)))

    def add(self, image: bytes, label: int, *, path: str | None = None,
            landmarks: Sequence[float] | None = None) -> tuple[str, int, int, int]:
        """Append one encoded image; returns its index row."""
        if label < 0:
            raise ValueError(f"labels must be >= 0, got {label}")
        if self.pack_index_path is not None and path is None:
            raise ValueError("this writer keeps a pack index: every image needs its source path")
        datum = {"image": (bytes(image), "byte")}
        if self.extra_keys:
            datum["label"] = (int(label), "int")
            if landmarks is not None:
                pts = [float(v) for v in landmarks]
                if len(pts) != 10:
                    raise ValueError(f"landmarks must be 5 (x, y) points = 10 numbers, got {len(pts)}")
                datum["landmarks"] = (pts, "float")
            if path is not None:
                datum["path"] = (path.encode("utf-8"), "byte")
        if self._writer is None or self._in_shard >= self.shard_size:
            self._next_shard()
        offset = self._writer.file.tell()
        self._writer.write(datum)
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

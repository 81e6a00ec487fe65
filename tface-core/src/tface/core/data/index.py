"""TFace training index files: ``record_name<TAB>shard_idx<TAB>byte_offset<TAB>label`` per line.

The shard of a line is ``<root>/<record_name>/<record_name>-<shard_idx:05d>.tfrecord``. Indexes can be
rewritten (cleaned, relabelled, subset) without touching the shards.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import attrs
import numpy as np

__all__ = ["IndexFormatError", "Index", "read_index", "write_index", "shard_path"]


class IndexFormatError(ValueError):
    """A malformed index: names the file and line."""


def shard_path(root: Path, record_name: str, shard: int) -> Path:
    return root / record_name / f"{record_name}-{shard:05d}.tfrecord"


@attrs.frozen
class Index:
    """Parsed index: per sample a shard file id, a byte offset and a label."""

    path: Path
    files: tuple[Path, ...]
    file_id: np.ndarray  # int32 [N]
    offsets: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def read_index(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Index:
    """Parse an index; shard paths are relative to ``root`` (default: the index's folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    files: dict[tuple[str, int], int] = {}
    file_id, offsets, labels = [], [], []
    try:
        handle = path.open("r", encoding="utf-8")
    except OSError as exc:
        raise IndexFormatError(f"{path}: cannot read index: {exc.strerror or exc}") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 4:
                raise IndexFormatError(
                    f"{path}:{lineno}: expected 4 tab-separated columns "
                    f"(record_name, shard, offset, label), got {len(cols)}: {line[:120]!r}"
                )
            name, shard, offset, label = cols
            try:
                shard_i, offset_i, label_i = int(shard), int(offset), int(label)
            except ValueError:
                raise IndexFormatError(
                    f"{path}:{lineno}: shard, offset and label must be integers: {line[:120]!r}"
                ) from None
            if shard_i < 0 or offset_i < 0 or label_i < 0:
                raise IndexFormatError(f"{path}:{lineno}: negative shard, offset or label: {line[:120]!r}")
            key = (name, shard_i)
            if key not in files:
                files[key] = len(files)
            file_id.append(files[key])
            offsets.append(offset_i)
            labels.append(label_i)
    if not labels:
        raise IndexFormatError(f"{path}: the index has no samples")
    return Index(
        path=path,
        files=tuple(shard_path(root, n, s) for (n, s) in files),
        file_id=np.asarray(file_id, dtype=np.int32),
        offsets=np.asarray(offsets, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
    )


def write_index(path: str | os.PathLike, lines: Iterable[tuple[str, int, int, int]]) -> Path:
    """Write ``(record_name, shard, offset, label)`` rows atomically."""
    from tface.core.fsutil import atomic_write_bytes

    text = "".join(f"{n}\t{s}\t{o}\t{lab}\n" for n, s, o, lab in lines)
    return atomic_write_bytes(path, text.encode("utf-8"))

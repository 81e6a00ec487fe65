"""Write the images of an index back to files, one folder per label (TFace's ``decode.py``, made safe).

Names are ``<label>/<record>-<shard:05d>-<offset>.<ext>``: unique per record (TFace's tool used the
source basename, which collides across identity folders). ``unpacked.tsv`` maps every file back to
its index line, label and the record's ``path`` feature when the writer stored one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import attrs
import numpy as np

from tface.core.data.index import Index, IndexFormatError
from tface.core.data.tfrecord import RecordError, parse_example, read_record_at

__all__ = ["UnpackResult", "image_extension", "check_shards_exist", "unpack", "TSV_NAME"]

TSV_NAME = "unpacked.tsv"


def image_extension(data: bytes) -> str:
    """``jpg`` / ``png`` from the magic bytes, ``bin`` for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return "bin"


@attrs.frozen
class UnpackResult:
    out_dir: Path
    files: int
    bytes: int
    labels: int
    tsv: Path


def _tsv_field(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _inside(out_dir: Path, rel: str, where: str) -> Path:
    """``out_dir / rel``, refused when it resolves outside ``out_dir``: a second guard behind the record-name
    rule, so no index (however it was built) makes unpack write elsewhere."""
    target = out_dir / rel
    if not target.resolve().is_relative_to(out_dir.resolve()):
        raise IndexFormatError(f"{where}: the file name {rel!r} would land outside {out_dir}; nothing written there")
    return target


def check_shards_exist(index: Index, n: int | None = None) -> None:
    """Fail before writing anything when a shard used by the first ``n`` rows is missing."""
    n = len(index) if n is None else n
    fids, first = np.unique(index.file_id[:n], return_index=True)
    for fid, row in zip(fids.tolist(), first.tolist()):
        path = index.files[fid]
        if not path.is_file():
            raise IndexFormatError(f"{index.path}:{index.line_of(row)}: shard file {path} is missing")


def unpack(index: Index, out_dir: str | os.PathLike, *, limit: int | None = None, image_key: str = "image",
           overwrite: bool = False,
           progress: Callable[[Iterable[int], int], Iterable[int]] | None = None) -> UnpackResult:
    """Write the first ``limit`` (default: all) samples of ``index`` under ``out_dir``.

    ``out_dir`` must be new or empty unless ``overwrite`` (which replaces only what tface wrote there);
    the files are written in a temporary sibling and moved in when all are done
    (:class:`~tface.core.outdir.OutputFolder`). Raises :class:`~tface.core.outdir.OutputExistsError`
    or :class:`~tface.core.outdir.SameFileError` (``out_dir`` holds the index or a shard) before
    writing anything, :class:`IndexFormatError` for a missing shard and :class:`RecordError` naming the
    shard, offset and index line of the first bad record.
    """
    from tface.core.fsutil import atomic_write_bytes
    from tface.core.outdir import OutputFolder, check_distinct

    n = len(index) if limit is None else min(limit, len(index))
    shards = {f"shard {p}": p for p in sorted({index.files[f] for f in np.unique(index.file_id[:n]).tolist()})}
    check_distinct({"OUT_DIR": out_dir}, {"INDEX": index.path, **shards}, folders=["OUT_DIR"])
    output = OutputFolder(out_dir, overwrite=overwrite, last=[TSV_NAME])
    output.check()
    check_shards_exist(index, n)
    with output:
        total, labels, table = _unpack_into(index, output.path, n, image_key, progress)
        atomic_write_bytes(output.path / TSV_NAME, table.encode("utf-8"))
    out_dir = Path(out_dir)
    return UnpackResult(out_dir, n, total, labels, out_dir / TSV_NAME)


def _unpack_into(index: Index, out_dir: Path, n: int, image_key: str,
                 progress: Callable[[Iterable[int], int], Iterable[int]] | None) -> tuple[int, int, str]:
    """Write the first ``n`` images under ``out_dir``; returns (bytes, labels, the unpacked.tsv text)."""
    rows: Iterable[int] = range(n)
    if progress is not None:
        rows = progress(rows, n)
    handles: dict[int, BinaryIO] = {}
    lines = ["file\tindex_line\tlabel\tpath\n"]
    total = 0
    labels: set[int] = set()
    try:
        for i in rows:
            fid, offset, label = int(index.file_id[i]), int(index.offsets[i]), int(index.labels[i])
            f = handles.get(fid)
            if f is None:
                f = handles[fid] = open(index.files[fid], "rb")  # noqa: SIM115 - closed in finally
            try:
                payload = read_record_at(f, offset, path=str(index.files[fid]))
            except RecordError as exc:
                raise RecordError(f"{exc} (index {index.path}:{index.line_of(i)})") from None
            try:
                example = parse_example(payload)
            except ValueError as exc:
                raise RecordError(f"{index.where(i)}: not a tf.train.Example: {exc}") from None
            feature = example.get(image_key)
            if not isinstance(feature, list) or not feature:
                raise RecordError(f"{index.where(i)}: record has no bytes under {image_key!r}")
            data = feature[0]
            source = example.get("path")
            source_text = source[0].decode("utf-8", "replace") if isinstance(source, list) and source else ""
            name, shard = index.keys[fid]
            rel = f"{label}/{name}-{shard:05d}-{offset}.{image_extension(data)}"
            target = _inside(out_dir, rel, f"{index.path}:{index.line_of(i)}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            total += len(data)
            labels.add(label)
            lines.append(f"{_tsv_field(rel)}\t{index.line_of(i)}\t{label}\t{_tsv_field(source_text)}\n")
    finally:
        for f in handles.values():
            f.close()
    return total, len(labels), "".join(lines)

"""TFace index files.

Training index (what a run reads), one line per sample::

    record_name<TAB>shard_idx<TAB>byte_offset<TAB>label

The shard of a line is ``<root>/<record_name>/<record_name>-<shard_idx:05d>.tfrecord``, so a record name is a
single path component (:func:`check_record_name`, enforced wherever a name is read or written: an index
naming ``../x`` could otherwise send readers and ``unpack`` outside their folders). Indexes can be
rewritten (cleaned, relabelled, subset) without touching the shards.

Pack index (what TFace's ``img2tfrecord`` writes as ``<name>/<name>.index``), one line per image::

    image_path<TAB>shard_idx<TAB>byte_offset

It becomes a training index by joining it with a ``path label`` list (:func:`join_labels`, TFace's
``convert_new_index``).

Pair index (TFace's ``PairIndexTFRDataset``, DDL's positive pairs), one line per pair: two training-index
quadruples, ``name1 shard1 offset1 label1 name2 shard2 offset2 label2``, read by :func:`read_pair_index`
with the same per-quadruple rules as :func:`read_index`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import numpy as np

__all__ = [
    "text_lines",
    "IndexFormatError",
    "check_record_name",
    "Index",
    "PairIndex",
    "LabelSpace",
    "PackEntry",
    "JoinResult",
    "read_index",
    "read_pair_index",
    "write_index",
    "index_rows",
    "read_pack_index",
    "write_pack_index",
    "read_label_list",
    "join_labels",
    "shard_path",
    "label_space",
]


class IndexFormatError(ValueError):
    """A malformed index or list file: names the file and line."""


#: characters a record name may not hold: path separators (both kinds, so a data set moves between systems),
#: the index's own separators, and NUL (which no file name can hold)
_NAME_FORBIDDEN = "/\\\t\n\r\0"


def check_record_name(name: str) -> str:
    """``name`` when it is a valid record name, else :class:`ValueError` saying why.

    A record name is one path component: the folder under the data root and the stem of its shard files.
    The one rule for ``pack --name``, the shard writer, ``reindex`` and every index read.
    """
    if not name:
        reason = "it is empty"
    elif name in (".", ".."):
        reason = "it names the folder itself or its parent"
    elif any(c in name for c in _NAME_FORBIDDEN):
        bad = next(c for c in name if c in _NAME_FORBIDDEN)
        reason = f"it holds {bad!r}"
    else:
        return name
    raise ValueError(f"invalid record name {name!r}: {reason} (a record name is one folder name, "
                     "without '/', '\\', tabs or newlines)")


def shard_path(root: Path, record_name: str, shard: int) -> Path:
    """``root/record_name/record_name-SHARD.tfrecord``; the name is checked, so the path stays under ``root``."""
    check_record_name(record_name)
    if shard < 0:
        raise ValueError(f"negative shard number {shard}")
    return Path(root) / record_name / f"{record_name}-{shard:05d}.tfrecord"


@attrs.frozen
class LabelSpace:
    """What the labels of an index look like: ``max + 1`` classes, of which ``missing`` have no sample."""

    num_classes: int
    used: int
    missing: np.ndarray  # int64, sorted

    @property
    def contiguous(self) -> bool:
        return len(self.missing) == 0

    def describe(self, limit: int = 8) -> str:
        if self.contiguous:
            return f"labels 0..{self.num_classes - 1} all used"
        shown = ", ".join(str(int(v)) for v in self.missing[:limit])
        more = f", ... ({len(self.missing) - limit} more)" if len(self.missing) > limit else ""
        return (f"labels span 0..{self.num_classes - 1} but {len(self.missing)} of them have no sample "
                f"(e.g. {shown}{more}); {self.used} classes are used")


def label_space(labels: np.ndarray) -> LabelSpace:
    if len(labels) == 0:
        return LabelSpace(0, 0, np.zeros(0, dtype=np.int64))
    counts = np.bincount(labels)
    return LabelSpace(len(counts), int((counts > 0).sum()), np.flatnonzero(counts == 0).astype(np.int64))


@attrs.frozen
class Index:
    """Parsed training index: per sample a shard file id, a byte offset and a label."""

    path: Path
    files: tuple[Path, ...]
    file_id: np.ndarray  # int32 [N]
    offsets: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]
    #: (record_name, shard_idx) of every file, parallel to ``files`` (for rewriting the index).
    keys: tuple[tuple[str, int], ...] = ()
    #: 1-based line number of every sample in ``path`` (for error messages).
    lines: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def label_space(self) -> LabelSpace:
        return label_space(self.labels)

    def line_of(self, i: int) -> int:
        return int(self.lines[i]) if self.lines is not None else i + 1

    def where(self, i: int) -> str:
        """``"<shard>: offset N (index <file>:<line>)"`` for messages about sample ``i``."""
        fid = int(self.file_id[i])
        return f"{self.files[fid]}: offset {int(self.offsets[i])} (index {self.path}:{self.line_of(i)})"

    def subset(self, rows: np.ndarray, labels: np.ndarray | None = None) -> Index:
        """The samples ``rows`` (in that order), optionally relabelled."""
        rows = np.asarray(rows, dtype=np.int64)
        return attrs.evolve(
            self,
            file_id=self.file_id[rows],
            offsets=self.offsets[rows],
            labels=self.labels[rows] if labels is None else np.asarray(labels, dtype=np.int64),
            lines=self.lines[rows] if self.lines is not None else rows + 1,
        )


def _open_text(path: Path, what: str):
    try:
        return path.open("r", encoding="utf-8")
    except OSError as exc:
        raise IndexFormatError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def text_lines(path: Path, what: str) -> Iterator[tuple[int, str]]:
    """``(line number, line without its newline)`` of every non-blank line of a list file; a file that cannot be
    read is an :class:`IndexFormatError` naming it as ``what``. The one line loop of tface's list and index files
    (and of plugins' lists, e.g. tface-quality's score list)."""
    with _open_text(path, what) as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n\r")
            if line.strip():
                yield lineno, line


def _index_lines(path: Path, what: str) -> Iterator[tuple[int, str, list[str]]]:
    """``(line number, line, tab-separated columns)`` of every non-blank line: the line loop of both index kinds."""
    for lineno, line in text_lines(path, what):
        yield lineno, line, line.split("\t")


class _ShardTable:
    """The shard files an index names, numbered as they are first met; parses ``(record_name, shard, offset,
    label)`` quadruples into ``(file id, offset, label)``.

    The one quadruple parser, so a plain index and each half of a pair index are checked by the same rules
    with the same messages, and the halves of a pair index share one files table (and one descriptor per shard).
    """

    def __init__(self, path: Path, root: Path):
        self.path = path
        self.root = root
        self.ids: dict[tuple[str, int], int] = {}
        self._names: set[str] = set()

    def parse(self, cols: list[str], lineno: int, line: str, half: str | None = None,
              first_column: int = 1) -> tuple[int, int, int]:
        """``cols`` = one quadruple; ``half`` ("first"/"second") and ``first_column`` locate it in a pair line.

        Messages are built only on the error paths: this runs once per line of indexes of millions of lines.
        """
        name, shard, offset, label = cols
        try:
            shard_i, offset_i, label_i = int(shard), int(offset), int(label)
        except ValueError:
            for k, (col, text) in enumerate((("shard", shard), ("offset", offset), ("label", label)), 1):
                try:
                    int(text)
                except ValueError:
                    raise IndexFormatError(f"{self._at(lineno, half)}{self._column(k, col, half, first_column)} "
                                           f"must be an integer, got {text!r}: {line[:120]!r}") from None
            raise
        if shard_i < 0 or offset_i < 0 or label_i < 0:
            where = "" if half is None else f" (columns {first_column}-{first_column + 3})"
            raise IndexFormatError(f"{self._at(lineno, half)}negative shard, offset or label{where}: {line[:120]!r}")
        key = (name, shard_i)
        fid = self.ids.get(key)
        if fid is None:
            if name not in self._names:
                try:
                    check_record_name(name)
                except ValueError as exc:
                    named = "" if half is None else f"{self._column(0, 'record name', half, first_column)}: "
                    raise IndexFormatError(f"{self._at(lineno, half)}{named}{exc}") from None
                self._names.add(name)
            fid = self.ids[key] = len(self.ids)
        return fid, offset_i, label_i

    def _at(self, lineno: int, half: str | None) -> str:
        return f"{self.path}:{lineno}: " + (f"{half} image: " if half else "")

    @staticmethod
    def _column(k: int, name: str, half: str | None, first_column: int) -> str:
        """A column's name in messages: bare in a training index (as ever), with its number in a pair index."""
        return name if half is None else f"{name} (column {first_column + k})"

    def files(self) -> tuple[Path, ...]:
        return tuple(shard_path(self.root, n, s) for (n, s) in self.ids)


def _column_count_error(path: Path, lineno: int, line: str, got: int, pairs: bool) -> IndexFormatError:
    """Wrong column count, saying which format was expected and, for the other known formats, what the file is."""
    hint = ""
    if got == 3:
        hint = " (a 3-column pack index has no labels: join it with a label list, `tface data reindex`)"
    elif got == 8 and not pairs:
        hint = (" (8 columns is a pair index, two images per line: read it with read_pair_index, "
                "the `tfrecord_pairs` source)")
    elif got == 4 and pairs:
        hint = " (4 columns is a training index, one image per line: read it with read_index, the `tfrecord` source)"
    expected = ("8 tab-separated columns in a pair index (record_name, shard, offset, label of the first image, "
                "then of the second)" if pairs else "4 tab-separated columns (record_name, shard, offset, label)")
    return IndexFormatError(f"{path}:{lineno}: expected {expected}, got {got}{hint}: {line[:120]!r}")


def _make_index(path: Path, table: _ShardTable, files: tuple[Path, ...], file_id: list[int], offsets: list[int],
                labels: list[int], lines: list[int]) -> Index:
    return Index(
        path=path,
        files=files,
        file_id=np.asarray(file_id, dtype=np.int32),
        offsets=np.asarray(offsets, dtype=np.int64),
        labels=np.asarray(labels, dtype=np.int64),
        keys=tuple(table.ids),
        lines=np.asarray(lines, dtype=np.int64),
    )


def read_index(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Index:
    """Parse a training index; shard paths are relative to ``root`` (default: the index's folder)."""
    path = Path(path)
    table = _ShardTable(path, Path(root) if root is not None else path.parent)
    file_id, offsets, labels, lines = [], [], [], []
    for lineno, line, cols in _index_lines(path, "index"):
        if len(cols) != 4:
            raise _column_count_error(path, lineno, line, len(cols), pairs=False)
        fid, offset, label = table.parse(cols, lineno, line)
        file_id.append(fid)
        offsets.append(offset)
        labels.append(label)
        lines.append(lineno)
    if not labels:
        raise IndexFormatError(f"{path}: the index has no samples")
    return _make_index(path, table, table.files(), file_id, offsets, labels, lines)


@attrs.frozen
class PairIndex:
    """Parsed pair index (TFace's ``PairIndexTFRDataset``, DDL's positive pairs): line ``i`` is pair ``i``.

    ``first`` and ``second`` are the two images of every pair as plain :class:`Index` halves over one files
    table (``first.files is second.files``) with the same line numbers; the pair's label is the first
    image's, as in TFace (the second label is parsed and checked, and kept in ``second.labels``).
    """

    path: Path
    first: Index
    second: Index

    def __len__(self) -> int:
        return len(self.first)

    @property
    def files(self) -> tuple[Path, ...]:
        return self.first.files

    @property
    def labels(self) -> np.ndarray:
        return self.first.labels

    @property
    def lines(self) -> np.ndarray:
        return self.first.lines

    @property
    def num_classes(self) -> int:
        return self.first.num_classes

    def line_of(self, i: int) -> int:
        return self.first.line_of(i)

    def images(self) -> Index:
        """Every image as one plain index, pair ``i`` at rows ``i`` and ``len(self) + i``, each row keeping its
        pair line: what the single-image reader and the shard check take."""
        return attrs.evolve(
            self.first,
            file_id=np.concatenate([self.first.file_id, self.second.file_id]),
            offsets=np.concatenate([self.first.offsets, self.second.offsets]),
            labels=np.concatenate([self.first.labels, self.second.labels]),
            lines=np.concatenate([self.first.lines, self.second.lines]),
        )


def read_pair_index(path: str | os.PathLike, root: str | os.PathLike | None = None) -> PairIndex:
    """Parse an 8-column pair index (two training-index quadruples per line), with :func:`read_index`'s rules."""
    path = Path(path)
    table = _ShardTable(path, Path(root) if root is not None else path.parent)
    halves: tuple[tuple[list[int], list[int], list[int]], ...] = (([], [], []), ([], [], []))
    lines: list[int] = []
    for lineno, line, cols in _index_lines(path, "pair index"):
        if len(cols) != 8:
            raise _column_count_error(path, lineno, line, len(cols), pairs=True)
        for (file_id, offsets, labels), half, start in zip(halves, ("first", "second"), (0, 4)):
            fid, offset, label = table.parse(cols[start:start + 4], lineno, line, half, start + 1)
            file_id.append(fid)
            offsets.append(offset)
            labels.append(label)
        lines.append(lineno)
    if not lines:
        raise IndexFormatError(f"{path}: the pair index has no pairs")
    files = table.files()
    first, second = (_make_index(path, table, files, *half, lines) for half in halves)
    return PairIndex(path, first, second)


def index_rows(index: Index) -> Iterator[tuple[str, int, int, int]]:
    """The ``(record_name, shard, offset, label)`` rows of a parsed index (for rewriting it)."""
    for fid, off, lab in zip(index.file_id.tolist(), index.offsets.tolist(), index.labels.tolist()):
        name, shard = index.keys[fid]
        yield name, shard, off, lab


def write_index(path: str | os.PathLike, lines: Iterable[tuple[str, int, int, int]]) -> Path:
    """Write ``(record_name, shard, offset, label)`` rows atomically (never an index that cannot be read back)."""
    from tface.core.fsutil import atomic_write_bytes

    rows = list(lines)
    for name in {n for n, _, _, _ in rows}:
        check_record_name(name)
    text = "".join(f"{n}\t{s}\t{o}\t{lab}\n" for n, s, o, lab in rows)
    return atomic_write_bytes(path, text.encode("utf-8"))


# --- pack index and label lists ------------------------------------------------------------------------


@attrs.frozen
class PackEntry:
    path: str
    shard: int
    offset: int
    line: int


def read_pack_index(path: str | os.PathLike) -> list[PackEntry]:
    """Parse a 3-column ``image_path<TAB>shard<TAB>offset`` index (TFace ``img2tfrecord`` output)."""
    path = Path(path)
    out: list[PackEntry] = []
    with _open_text(path, "pack index") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) != 3:
                raise IndexFormatError(
                    f"{path}:{lineno}: expected 3 tab-separated columns (image_path, shard, offset), "
                    f"got {len(cols)}: {line[:120]!r}"
                )
            try:
                shard, offset = int(cols[1]), int(cols[2])
            except ValueError:
                raise IndexFormatError(f"{path}:{lineno}: shard and offset must be integers: {line[:120]!r}") from None
            if shard < 0 or offset < 0:
                raise IndexFormatError(f"{path}:{lineno}: negative shard or offset: {line[:120]!r}")
            out.append(PackEntry(cols[0], shard, offset, lineno))
    if not out:
        raise IndexFormatError(f"{path}: the pack index has no entries")
    return out


def write_pack_index(path: str | os.PathLike, rows: Iterable[tuple[str, int, int]]) -> Path:
    """Write ``(image_path, shard, offset)`` rows atomically (paths must not contain tabs or newlines)."""
    from tface.core.fsutil import atomic_write_bytes

    parts = []
    for p, s, o in rows:
        if "\t" in p or "\n" in p or "\r" in p:
            raise ValueError(f"image path {p!r} contains a tab or newline; it cannot go into an index")
        parts.append(f"{p}\t{s}\t{o}\n")
    return atomic_write_bytes(path, "".join(parts).encode("utf-8"))


def read_label_list(path: str | os.PathLike) -> list[tuple[str, int, int]]:
    """``path<TAB>label`` lines (or ``path label``, split on the last space) → ``(path, label, line)``."""
    path = Path(path)
    out: list[tuple[str, int, int]] = []
    with _open_text(path, "label list") as handle:
        for lineno, line in enumerate(handle, 1):
            line = line.rstrip("\n\r")
            if not line.strip():
                continue
            if "\t" in line:
                img, _, label = line.rpartition("\t")
            else:
                parts = line.rsplit(None, 1)
                if len(parts) != 2:
                    raise IndexFormatError(f"{path}:{lineno}: expected 'path label', got {line[:120]!r}")
                img, label = parts
            try:
                value = int(label)
            except ValueError:
                raise IndexFormatError(f"{path}:{lineno}: label must be an integer, got {label!r}") from None
            if value < 0:
                raise IndexFormatError(f"{path}:{lineno}: negative label {value}")
            out.append((img, value, lineno))
    if not out:
        raise IndexFormatError(f"{path}: the label list is empty")
    return out


@attrs.frozen
class JoinResult:
    rows: list[tuple[str, int, int, int]]
    #: label-list paths with no record in the pack index, with their line numbers
    unmatched: list[tuple[str, int]]
    #: pack-index paths that no label-list line mentions
    unlabelled: int


def join_labels(pack: list[PackEntry], labels: list[tuple[str, int, int]], record_name: str) -> JoinResult:
    """TFace's ``convert_new_index``: training rows in label-list order, unmatched paths reported."""
    check_record_name(record_name)
    where = {e.path: (e.shard, e.offset) for e in pack}
    rows: list[tuple[str, int, int, int]] = []
    unmatched: list[tuple[str, int]] = []
    used: set[str] = set()
    for img, label, line in labels:
        hit = where.get(img)
        if hit is None:
            unmatched.append((img, line))
            continue
        used.add(img)
        rows.append((record_name, hit[0], hit[1], label))
    return JoinResult(rows, unmatched, len(where) - len(used))

"""Check TFRecord shards (and the index that points into them) record by record.

Every shard is scanned sequentially from byte 0: header present, length CRC, payload present, payload
CRC, ``Example`` parse, the ``image`` key present, image decodes. A length CRC failure means the length
cannot be trusted, so the scan resynchronises on the next offset whose 8 bytes carry a matching masked
CRC and reports the bytes it skipped: one flipped byte does not hide the rest of the file.

For a training index, every shard it uses is scanned and every index line's offset must be one of the
record boundaries the scan found; lines pointing elsewhere are reported by index file and line.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import attrs
import numpy as np

from tface.core.data.index import Index, read_index
from tface.core.data.tfrecord import FOOTER, HEADER, masked_crc, parse_example

__all__ = [
    "Problem",
    "ShardReport",
    "VerifyReport",
    "find_boundary",
    "scan_shard",
    "scan_shards",
    "check_index_offsets",
    "resolve_target",
    "verify",
]

T = TypeVar("T")
Progress = Callable[[Iterable[T], int], Iterable[T]]

#: A real record is shorter than 1 TiB, so bytes 5..7 of its little-endian length are zero: resync
#: candidates failing that are skipped without computing a CRC.
_FIRST_ZERO_LENGTH_BYTE = 5
_RESYNC_CHUNK = 1 << 20


@attrs.frozen
class Problem:
    """One bad thing: a record (``file`` + ``offset``), an index line (``file`` + ``line``) or a whole file."""

    file: str
    reason: str
    offset: int | None = None
    line: int | None = None

    def __str__(self) -> str:
        if self.line is not None:
            return f"{self.file}:{self.line}: {self.reason}"
        if self.offset is not None:
            return f"{self.file}: offset {self.offset}: {self.reason}"
        return f"{self.file}: {self.reason}"

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "offset": self.offset, "line": self.line, "reason": self.reason}


@attrs.frozen
class ShardReport:
    """What a sequential scan of one shard found."""

    path: str
    size: int
    #: every offset where the scan expected a record to start (good or bad), increasing
    boundaries: np.ndarray = attrs.field(eq=False)
    problems: tuple[Problem, ...] = ()
    #: ``(start, end)`` byte ranges skipped while resynchronising after a length CRC failure
    damaged: tuple[tuple[int, int], ...] = ()

    @property
    def records(self) -> int:
        return len(self.boundaries)

    def to_dict(self) -> dict[str, object]:
        return {"file": self.path, "bytes": self.size, "records": self.records, "bad": len(self.problems),
                "damaged": [list(r) for r in self.damaged]}


@attrs.frozen
class VerifyReport:
    """The result of :func:`verify`: shard reports in input order plus index-line problems."""

    target: str
    shards: tuple[ShardReport, ...]
    index_problems: tuple[Problem, ...] = ()
    index_lines: int = 0

    @property
    def problems(self) -> list[Problem]:
        out = [p for s in self.shards for p in s.problems]
        return out + list(self.index_problems)

    @property
    def files(self) -> int:
        return len(self.shards)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.size for s in self.shards)

    @property
    def bad(self) -> int:
        return len(self.problems)

    @property
    def ok(self) -> bool:
        return self.bad == 0

    def to_dict(self) -> dict[str, object]:
        return {
            "target": self.target,
            "files": self.files,
            "records": self.records,
            "bytes": self.bytes,
            "index_lines": self.index_lines,
            "bad": self.bad,
            "shards": [s.to_dict() for s in self.shards],
            "problems": [p.to_dict() for p in self.problems],
        }


def find_boundary(buf: bytes | mmap.mmap, start: int, end: int | None = None) -> int | None:
    """The first offset ``>= start`` whose 12 bytes are a length with a matching masked CRC, else ``None``.

    Candidates are pre-filtered with numpy (a real length is below 1 TiB, so its top three bytes are
    zero), so only a few positions per megabyte pay for a CRC.
    """
    end = len(buf) if end is None else end
    p = start
    while p + HEADER <= end:
        stop = min(end - HEADER + 1, p + _RESYNC_CHUNK)  # candidates p .. stop-1
        n = stop - p
        a = np.frombuffer(bytes(buf[p:stop + HEADER - 1]), dtype=np.uint8)
        zero = np.ones(n, dtype=bool)
        for k in range(_FIRST_ZERO_LENGTH_BYTE, 8):
            zero &= a[k:k + n] == 0
        for c in np.flatnonzero(zero).tolist():
            q = p + c
            if masked_crc(bytes(buf[q:q + 8])) == struct.unpack("<I", buf[q + 8:q + HEADER])[0]:
                return q
        p = stop
    return None


def _check_payload(payload: bytes, decode: bool, image_key: str) -> str | None:
    """The reason a CRC-clean payload is bad, or ``None``."""
    try:
        example = parse_example(payload)
    except ValueError as exc:
        return f"not a tf.train.Example: {exc}"
    feature = example.get(image_key)
    if feature is None:
        keys = ", ".join(sorted(example)) or "none"
        return f"record has no {image_key!r} feature (keys: {keys})"
    if not isinstance(feature, list) or not feature:
        return f"feature {image_key!r} holds no bytes"
    if decode:
        from tface.core.data.image import ImageDecodeError, decode_rgb

        try:
            decode_rgb(feature[0])
        except ImageDecodeError as exc:
            return f"cannot decode image ({len(feature[0])} bytes): {exc}"
    return None


def _scan_bytes(buf: bytes | mmap.mmap, path: str, decode: bool, image_key: str) -> ShardReport:
    size = len(buf)
    problems: list[Problem] = []
    boundaries: list[int] = []
    damaged: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        boundaries.append(pos)
        if size - pos < HEADER:
            problems.append(Problem(path, f"truncated record header ({size - pos} of {HEADER} bytes)", pos))
            break
        head = bytes(buf[pos:pos + HEADER])
        length, want = struct.unpack("<QI", head)
        if masked_crc(head[:8]) != want:
            nxt = find_boundary(buf, pos + 1, size)
            if nxt is None:
                damaged.append((pos, size))
                problems.append(Problem(path, f"length CRC mismatch; no record boundary follows, bytes {pos}..{size} "
                                              "are unreadable", pos))
                break
            damaged.append((pos, nxt))
            problems.append(Problem(path, f"length CRC mismatch; skipped bytes {pos}..{nxt} "
                                          f"({nxt - pos} bytes) to the next record boundary", pos))
            pos = nxt
            continue
        end = pos + HEADER + length + FOOTER
        if end > size:
            problems.append(Problem(path, f"truncated record (needs {HEADER + length + FOOTER} bytes, "
                                          f"{size - pos} left in the file)", pos))
            break
        payload = bytes(buf[pos + HEADER:pos + HEADER + length])
        (crc,) = struct.unpack("<I", buf[end - FOOTER:end])
        if masked_crc(payload) != crc:
            problems.append(Problem(path, "payload CRC mismatch (corrupted record)", pos))
        else:
            reason = _check_payload(payload, decode, image_key)
            if reason is not None:
                problems.append(Problem(path, reason, pos))
        pos = end
    return ShardReport(path, size, np.asarray(boundaries, dtype=np.int64), tuple(problems), tuple(damaged))


def scan_shard(path: str | os.PathLike, *, decode: bool = True, image_key: str = "image") -> ShardReport:
    """Scan one shard from byte 0; an unreadable file is one problem, never an exception."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                return ShardReport(path, 0, np.zeros(0, dtype=np.int64))
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _scan_bytes(mm, path, decode, image_key)
    except OSError as exc:
        return ShardReport(path, 0, np.zeros(0, dtype=np.int64),
                           (Problem(path, f"cannot read: {exc.strerror or exc}"),))


def _scan_one(args: tuple[str, bool, str]) -> ShardReport:
    return scan_shard(args[0], decode=args[1], image_key=args[2])


def scan_shards(paths: Sequence[str | os.PathLike], *, decode: bool = True, workers: int = 1,
                image_key: str = "image") -> Iterator[ShardReport]:
    """Scan shards, yielding reports as they finish (in a process pool when ``workers > 1``)."""
    jobs = [(str(p), decode, image_key) for p in paths]
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _scan_one(job)
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        futures = [pool.submit(_scan_one, job) for job in jobs]
        for fut in as_completed(futures):
            yield fut.result()


def check_index_offsets(index: Index, reports: dict[str, ShardReport]) -> list[Problem]:
    """Index-line problems: missing shards, offsets past the end or not on a record boundary."""
    problems: list[tuple[int, Problem]] = []
    order = np.argsort(index.file_id, kind="stable")
    bounds = np.searchsorted(index.file_id[order], np.arange(len(index.files) + 1))
    where = str(index.path)
    for fid, shard in enumerate(index.files):
        rows = order[bounds[fid]:bounds[fid + 1]]
        if not len(rows):
            continue
        rep = reports.get(str(shard))
        if rep is None:
            first = int(rows[0])
            line = index.line_of(first)
            problems.append((line, Problem(where, f"shard file {shard} is missing ({len(rows)} index lines point "
                                                  "into it)", line=line)))
            continue
        offs = index.offsets[rows]
        good = np.isin(offs, rep.boundaries)
        for i in rows[~good].tolist():
            off = int(index.offsets[i])
            line = index.line_of(i)
            if off >= rep.size:
                reason = f"offset {off} points past the end of {shard} ({rep.size} bytes)"
            else:
                hit = next(((a, b) for a, b in rep.damaged if a <= off < b), None)
                if hit is not None:
                    reason = f"offset {off} lies in the damaged bytes {hit[0]}..{hit[1]} of {shard}"
                else:
                    reason = f"offset {off} is not a record boundary of {shard}"
            problems.append((line, Problem(where, reason, line=line)))
    problems.sort(key=lambda t: t[0])
    return [p for _, p in problems]


def _looks_like_shard(path: Path) -> bool:
    if path.suffix == ".tfrecord":
        return True
    try:
        with path.open("rb") as f:
            head = f.read(HEADER)
    except OSError:
        return False
    return len(head) == HEADER and masked_crc(head[:8]) == struct.unpack("<I", head[8:])[0]


def resolve_target(target: str | os.PathLike, root: str | os.PathLike | None = None
                   ) -> tuple[Index | None, list[Path]]:
    """``(index or None, shard paths)`` for an index file, a shard file or a folder of ``*.tfrecord``.

    Raises :class:`FileNotFoundError`, or :class:`~tface.core.data.index.IndexFormatError` naming the file
    and line.
    """
    target = Path(target)
    if target.is_dir():
        shards = sorted(target.rglob("*.tfrecord"))
        if not shards:
            raise FileNotFoundError(f"{target}: no *.tfrecord files in this folder or below it")
        return None, shards
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such file or folder")
    if _looks_like_shard(target):
        return None, [target]
    index = read_index(target, root)
    return index, list(index.files)


def verify(target: str | os.PathLike, *, root: str | os.PathLike | None = None, decode: bool = True,
           workers: int = 1, image_key: str = "image", progress: Progress | None = None) -> VerifyReport:
    """Scan every shard of ``target`` (index, shard or folder) and, for an index, check its offsets.

    ``progress(iterable, length)`` may wrap the per-shard results (e.g. with a progress bar).
    """
    index, shards = resolve_target(target, root)
    present = [p for p in shards if p.exists()] if index is not None else shards
    results = scan_shards(present, decode=decode, workers=workers, image_key=image_key)
    if progress is not None:
        results = progress(results, len(present))
    by_path = {r.path: r for r in results}
    ordered = tuple(by_path[str(p)] for p in present)
    index_problems: tuple[Problem, ...] = ()
    if index is not None:
        index_problems = tuple(check_index_offsets(index, by_path))
    return VerifyReport(str(target), ordered, index_problems, len(index) if index is not None else 0)

"""IJB-B / IJB-C meta files (insightface's repackaged release), the 1:N protocol lists and the image dataset.

Layout (``ROOT`` is the folder given as ``root``, or ``root/IJBC`` / ``root/IJBB`` when that is where
``meta/`` lives)::

    ROOT/meta/ijbc_face_tid_mid.txt         image_name template_id media_id          (one line per image)
    ROOT/meta/ijbc_name_5pts_score.txt      image_name x1 y1 ... x5 y5 faceness      (same rows, same order)
    ROOT/meta/ijbc_template_pair_label.txt  template_id template_id label(0|1)       (one line per pair)
    ROOT/meta/ijbc_1N_{gallery_G1,gallery_G2,probe_mixed}.csv   1:N lists (IJB-B: gallery_S1/S2)
    ROOT/loose_crop/<image_name>

The target (``IJBB`` / ``IJBC``) picks the ``ijbb_`` / ``ijbc_`` names; TFace's script opened the
``ijbc_`` files whatever its ``--dataset`` said, which silently evaluated IJB-C when IJB-B was asked for.

The pair file of IJB-C has 15.6M lines, so the whitespace tables are parsed without a Python loop per line:
the bytes are cut into newline-aligned chunks, token boundaries and per-line token counts are found with
numpy, and the numeric columns are converted by ``np.fromstring`` in C (string columns are blanked out
first). Only when that fails is the chunk re-read line by line, to name the offending line. Every error is
an :class:`IJBFormatError` that names ``file:line``.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset

from tface.core.data.align import align_face
from tface.core.data.image import ImageDecodeError, decode_rgb

__all__ = [
    "IJBFormatError",
    "TARGETS",
    "LineMap",
    "IJBMeta",
    "IdentificationMeta",
    "IJBImages",
    "check_target",
    "find_root",
    "read_table",
    "read_meta",
    "meta_files",
    "identification_files",
    "read_template_subjects",
    "read_identification_meta",
    "check_images",
    "dataset_fingerprint",
]

#: target → (file-name prefix, display name, the two 1:N gallery names)
TARGETS: dict[str, tuple[str, str, tuple[str, str]]] = {
    "IJBB": ("ijbb", "IJB-B", ("S1", "S2")),
    "IJBC": ("ijbc", "IJB-C", ("G1", "G2")),
}

#: Bytes per parsing chunk: big enough that numpy's per-call overhead vanishes, small enough that the
#: per-byte temporaries stay far below the size of the file.
_CHUNK = 1 << 24
_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z|[+-]?(?:nan|inf|infinity)\Z", re.I)


class IJBFormatError(ValueError):
    """A malformed or inconsistent IJB meta file or image: names the file and line."""


def check_target(target: str) -> str:
    """``"IJBB"`` or ``"IJBC"`` (as given); anything else is a ``ValueError`` listing both."""
    if target not in TARGETS:
        raise ValueError(f"IJB target must be one of {', '.join(map(repr, TARGETS))}, got {target!r}")
    return target


def find_root(root: str | os.PathLike, target: str) -> Path:
    """The folder holding ``meta/`` and ``loose_crop/``: ``root`` itself, or ``root/<target>``.

    insightface's scripts take the folder *above* ``IJBC/``; accepting both saves a confusing
    "file not found" for the most common way of pointing at the data.
    """
    root = Path(root)
    if not (root / "meta").is_dir() and (root / target / "meta").is_dir():
        return root / target
    return root


@attrs.frozen
class LineMap:
    """Record index → line number of a table file that may contain blank lines (which are skipped).

    Stores one entry per blank line (the index of the record that follows it) rather than one line
    number per record, which for the 15.6M-line pair file would cost 125 MB to name an error.
    """

    path: Path
    skipped: np.ndarray = attrs.field(factory=lambda: np.zeros(0, dtype=np.int64))

    def line(self, record: int) -> int:
        return int(record) + 1 + int(np.searchsorted(self.skipped, record, side="right"))

    def where(self, record: int) -> str:
        return f"{self.path}:{self.line(record)}"


def _chunks(data: bytes, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` byte ranges covering ``data``, each ending just after a newline (or at the end)."""
    out, lo, n = [], 0, len(data)
    while lo < n:
        hi = lo + size
        if hi >= n:
            hi = n
        else:
            cut = data.rfind(b"\n", lo, hi)
            if cut < 0:  # one line longer than a chunk: extend to its end
                cut = data.find(b"\n", hi)
                hi = n if cut < 0 else cut + 1
            else:
                hi = cut + 1
        out.append((lo, hi))
        lo = hi
    return out


def _bad_token(path: Path, line: int, kinds: str, tokens: list[bytes]) -> IJBFormatError | None:
    """The error for the first token of a line that is not of its column's kind (``None`` if all are)."""
    for col, (kind, tok) in enumerate(zip(kinds, tokens), 1):
        text = tok.decode("utf-8", "replace")
        if kind == "i" and not _INT.match(text):
            return IJBFormatError(f"{path}:{line}: column {col}: expected an integer, got {text!r}")
        if kind == "f" and not _FLOAT.match(text):
            return IJBFormatError(f"{path}:{line}: column {col}: expected a number, got {text!r}")
    return None


def read_table(
    path: str | os.PathLike, kinds: str, *, chunk_size: int = _CHUNK
) -> tuple[list[list[str]], np.ndarray, LineMap]:
    """Read a whitespace-separated table whose every non-blank line has ``len(kinds)`` columns.

    ``kinds`` has one letter per column: ``s`` (string), ``i`` (integer) or ``f`` (float); all numeric
    columns must share one kind. Returns the string columns (lists, in column order), the numeric columns
    as an ``int64`` / ``float64`` array ``[rows, numeric columns]`` and the :class:`LineMap`. Blank lines
    are skipped; a line with another number of columns or a token of the wrong kind is an
    :class:`IJBFormatError` naming ``file:line``.
    """
    path = Path(path)
    ncols = len(kinds)
    str_cols = [c for c, k in enumerate(kinds) if k == "s"]
    num_kinds = {k for k in kinds if k != "s"}
    if not ncols or not set(kinds) <= {"s", "i", "f"} or len(num_kinds) > 1:
        raise ValueError(f"kinds must be letters s/i/f with one numeric kind, got {kinds!r}")
    dtype = np.int64 if "i" in num_kinds else np.float64
    nnum = ncols - len(str_cols)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IJBFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    arr = np.frombuffer(data, dtype=np.uint8)
    strings: list[list[str]] = [[] for _ in str_cols]
    numbers: list[np.ndarray] = []
    skipped: list[np.ndarray] = []
    lines_before = records_before = 0
    chunks = _chunks(data, chunk_size)
    for lo, hi in chunks:
        b = arr[lo:hi]
        tok = b > 32
        # every byte below 32 must be bytes.split() whitespace (9-13); other control bytes are an error
        if np.count_nonzero(~tok) != np.count_nonzero(b == 32) + np.count_nonzero((b - np.uint8(9)) < 5):
            pos = int(np.flatnonzero((b < 9) | ((b > 13) & (b < 32)))[0])
            line = lines_before + data.count(b"\n", lo, lo + pos) + 1
            raise IJBFormatError(f"{path}:{line}: control character {bytes([b[pos]])!r} in a text table")
        first = np.empty(len(b), dtype=bool)
        first[0] = tok[0]
        np.greater(tok[1:], tok[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        del first
        if str_cols:
            last = np.empty(len(b), dtype=bool)
            last[-1] = tok[-1]
            np.greater(tok[:-1], tok[1:], out=last[:-1])
            ends = np.flatnonzero(last) + 1
            del last
        del tok
        newlines = np.flatnonzero(b == 10)
        if b[-1] != 10:  # the file's last line has no newline
            newlines = np.append(newlines, len(b))
        grid = starts.reshape(-1, ncols) if len(starts) == ncols * len(newlines) else None
        if grid is None or not ((grid[:, -1] < newlines).all() and (grid[1:, 0] > newlines[:-1]).all()):
            # not simply ncols tokens on every line: count per line (blank lines are allowed)
            per_line = np.diff(np.searchsorted(starts, newlines), prepend=0)
            wrong = np.flatnonzero((per_line != ncols) & (per_line != 0))
            if wrong.size:
                i = int(wrong[0])
                a = lo + (int(newlines[i - 1]) + 1 if i else 0)
                text = data[a : lo + int(newlines[i])].decode("utf-8", "replace").strip()
                raise IJBFormatError(
                    f"{path}:{lines_before + i + 1}: expected {ncols} columns ({_describe_kinds(kinds)}), "
                    f"got {int(per_line[i])}: {text[:120]!r}"
                )
            blank = np.flatnonzero(per_line == 0)
            if blank.size:
                skipped.append(records_before + blank - np.arange(blank.size))
        rows = len(starts) // ncols
        starts = starts.reshape(rows, ncols)
        if str_cols:
            ends = ends.reshape(rows, ncols)
        for k, c in enumerate(str_cols):
            strings[k].extend(
                data[s:e].decode("utf-8", "surrogateescape")
                for s, e in zip((starts[:, c] + lo).tolist(), (ends[:, c] + lo).tolist())
            )
        if nnum and rows:
            if str_cols:  # blank the string columns so only numbers remain for the C parser
                edge = np.zeros(len(b) + 1, dtype=np.int8)
                edge[starts[:, str_cols].ravel()] = 1
                edge[ends[:, str_cols].ravel()] = -1
                text = b.copy()
                text[np.cumsum(edge[:-1], dtype=np.int8).astype(bool)] = 32
                del edge
                buf = text.tobytes()
            else:
                buf = data[lo:hi]
            values = None
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                try:
                    values = np.fromstring(buf, dtype=dtype, sep=" ")
                except (ValueError, DeprecationWarning):
                    values = None
            if values is None or values.size != rows * nnum:
                raise _locate_bad(path, data[lo:hi], kinds, lines_before)
            values = values.reshape(rows, nnum)
            if dtype is np.float64 and not np.isfinite(values).all():
                r = int(np.flatnonzero(~np.isfinite(values).all(1))[0])
                where = LineMap(path, _concat(skipped)).line(records_before + r)
                raise IJBFormatError(f"{path}:{where}: numbers must be finite, got {values[r].tolist()}")
            numbers.append(values)
        lines_before += len(newlines)
        records_before += rows
    table = np.concatenate(numbers) if numbers else np.zeros((records_before, nnum), dtype=dtype)
    return strings, table, LineMap(path, _concat(skipped))


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def _describe_kinds(kinds: str) -> str:
    """``"sii"`` → ``"name, 2 integers"`` (for column-count errors)."""
    names = {"s": ("name", "names"), "i": ("integer", "integers"), "f": ("number", "numbers")}
    parts = []
    for kind, group in itertools.groupby(kinds):
        n = len(list(group))
        parts.append(names[kind][0] if n == 1 else f"{n} {names[kind][1]}")
    return ", ".join(parts)


def _locate_bad(path: Path, chunk: bytes, kinds: str, lines_before: int) -> IJBFormatError:
    """Re-read a chunk that the fast parser rejected, line by line, to name the first bad token."""
    for i, raw in enumerate(chunk.split(b"\n")):
        tokens = raw.split()
        if tokens:
            err = _bad_token(path, lines_before + i + 1, kinds, tokens)
            if err is not None:
                return err
    last = lines_before + chunk.count(b"\n") + 1
    return IJBFormatError(f"{path}: lines {lines_before + 1}-{last} cannot be parsed")


@attrs.frozen(eq=False)
class IJBMeta:
    """The validated 1:1 meta data of one IJB set; rows of the image arrays follow ``face_tid_mid``."""

    root: Path
    target: str
    names: list[str]
    templates: np.ndarray  # int64 [N]
    medias: np.ndarray  # int64 [N]
    landmarks: np.ndarray  # float32 [N, 5, 2], original-image pixels (insightface reads them as float32)
    faceness: np.ndarray  # float32 [N]
    pairs: np.ndarray  # int64 [P, 2]
    labels: np.ndarray  # int8 [P], 1 = same subject
    tid_lines: LineMap
    points_lines: LineMap
    pair_lines: LineMap

    @property
    def dataset(self) -> str:
        return TARGETS[self.target][1]

    @property
    def meta_dir(self) -> Path:
        return self.root / "meta"

    @property
    def image_dir(self) -> Path:
        return self.root / "loose_crop"

    def image_where(self, i: int) -> str:
        """Where image row ``i`` is listed (the landmark file's line), for error messages."""
        return self.points_lines.where(i)


def meta_files(root: Path, target: str) -> dict[str, Path]:
    prefix = TARGETS[target][0]
    meta = root / "meta"
    return {
        "tid": meta / f"{prefix}_face_tid_mid.txt",
        "points": meta / f"{prefix}_name_5pts_score.txt",
        "pairs": meta / f"{prefix}_template_pair_label.txt",
    }


def _id_lookup(known: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``values`` occur in the sorted unique array ``known`` (table lookup when dense)."""
    if known.size == 0:
        return np.zeros(values.shape, dtype=bool)
    lo, hi = int(known[0]), int(known[-1])
    if hi - lo < 1 << 26:
        table = np.zeros(hi - lo + 1, dtype=bool)
        table[known - lo] = True
        inside = (values >= lo) & (values <= hi)
        return inside & table[np.where(inside, values - lo, 0)]
    return np.isin(values, known)


def read_meta(root: str | os.PathLike, target: str = "IJBC") -> IJBMeta:
    """Read and cross-check the three meta files of ``target`` under ``root`` (see the module docstring).

    Checks: column counts and number formats (every file), finite landmarks and faceness, the landmark
    file listing the same images in the same order as ``face_tid_mid``, pair template ids that occur in
    ``face_tid_mid`` and labels that are 0 or 1. Each failure names ``file:line``.
    """
    target = check_target(target)
    root = find_root(root, target)
    files = meta_files(root, target)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{TARGETS[target][1]} meta files not found: {', '.join(missing)} "
            f"(root must hold meta/ and loose_crop/ of insightface's IJB release)"
        )
    (names,), ids, tid_lines = read_table(files["tid"], "sii")
    if not names:
        raise IJBFormatError(f"{files['tid']}: no images listed")
    (point_names,), points, points_lines = read_table(files["points"], "s" + "f" * 11)
    if point_names != names:
        m = min(len(names), len(point_names))
        i = next((k for k in range(m) if names[k] != point_names[k]), m)
        if i < m:
            raise IJBFormatError(
                f"{files['points']}:{points_lines.line(i)}: image {point_names[i]!r} where "
                f"{files['tid']}:{tid_lines.line(i)} lists {names[i]!r}; the landmark file must list the "
                "images of face_tid_mid in the same order"
            )
        if len(point_names) < len(names):
            raise IJBFormatError(
                f"{files['points']}: {len(point_names)} images but {files['tid']} lists {len(names)}; "
                f"{files['tid']}:{tid_lines.line(i)} ({names[i]!r}) has no landmarks"
            )
        raise IJBFormatError(
            f"{files['points']}:{points_lines.line(i)}: extra image {point_names[i]!r}; {files['tid']} lists "
            f"only {len(names)}"
        )
    (), pair_table, pair_lines = read_table(files["pairs"], "iii")
    if not len(pair_table):
        raise IJBFormatError(f"{files['pairs']}: no pairs listed")
    templates = np.ascontiguousarray(ids[:, 0])
    medias = np.ascontiguousarray(ids[:, 1])
    labels = pair_table[:, 2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        r = int(bad[0])
        raise IJBFormatError(f"{pair_lines.where(r)}: label must be 0 or 1, got {int(labels[r])}")
    pairs = np.ascontiguousarray(pair_table[:, :2])
    del pair_table
    known = np.unique(templates)
    ok = _id_lookup(known, pairs)
    if not ok.all():
        r, c = (int(v[0]) for v in np.nonzero(~ok))
        raise IJBFormatError(
            f"{pair_lines.where(r)}: template {int(pairs[r, c])} (column {c + 1}) is not in {files['tid']}"
        )
    return IJBMeta(
        root=root,
        target=target,
        names=names,
        templates=templates,
        medias=medias,
        landmarks=points[:, :10].astype(np.float32).reshape(-1, 5, 2),
        faceness=points[:, 10].astype(np.float32),
        pairs=pairs,
        labels=labels.astype(np.int8),
        tid_lines=tid_lines,
        points_lines=points_lines,
        pair_lines=pair_lines,
    )


# --------------------------------------------------------------------------------------------------
# 1:N identification lists


@attrs.frozen(eq=False)
class IdentificationMeta:
    """1:N lists: per gallery and for the mixed probes, unique template ids (ascending) and subject ids."""

    galleries: dict[str, tuple[np.ndarray, np.ndarray]]
    probes: tuple[np.ndarray, np.ndarray]


def identification_files(root: Path, target: str) -> dict[str, Path]:
    """``{gallery name: csv, ..., "probe": csv}`` as insightface names them (IJB-B: S1/S2, IJB-C: G1/G2)."""
    prefix, _, galleries = TARGETS[target]
    meta = root / "meta"
    out = {g: meta / f"{prefix}_1N_gallery_{g}.csv" for g in galleries}
    out["probe"] = meta / f"{prefix}_1N_probe_mixed.csv"
    return out


def read_template_subjects(path: str | os.PathLike, known: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unique template ids (ascending) and their subject ids from an IJB 1:N protocol CSV.

    The CSV has a header naming ``TEMPLATE_ID`` and ``SUBJECT_ID`` (other columns, e.g. ``FILENAME``, are
    ignored: the images of a template come from ``face_tid_mid``) and one row per image. A template listed
    with two subjects, a non-integer id, or (with ``known``, sorted unique ids) a template that
    ``face_tid_mid`` does not have is an :class:`IJBFormatError` naming ``file:line``.
    """
    path = Path(path)
    subject_of: dict[int, int] = {}
    first_line: dict[int, int] = {}
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise IJBFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        cols = [h.strip().upper() for h in header or []]
        if "TEMPLATE_ID" not in cols or "SUBJECT_ID" not in cols:
            raise IJBFormatError(f"{path}:1: the header must name TEMPLATE_ID and SUBJECT_ID, got {header!r}")
        ti, si = cols.index("TEMPLATE_ID"), cols.index("SUBJECT_ID")
        need = max(ti, si) + 1
        for row in reader:
            if not row or not any(f.strip() for f in row):
                continue
            line = reader.line_num
            if len(row) < need:
                raise IJBFormatError(f"{path}:{line}: expected at least {need} columns, got {len(row)}")
            try:
                t, s = int(row[ti]), int(row[si])
            except ValueError:
                raise IJBFormatError(
                    f"{path}:{line}: TEMPLATE_ID and SUBJECT_ID must be integers, got {row[ti]!r}, {row[si]!r}"
                ) from None
            prev = subject_of.setdefault(t, s)
            if prev != s:
                raise IJBFormatError(
                    f"{path}:{line}: template {t} has subject {s} but subject {prev} at line {first_line[t]}"
                )
            first_line.setdefault(t, line)
    if not subject_of:
        raise IJBFormatError(f"{path}: no templates listed")
    templates = np.array(sorted(subject_of), dtype=np.int64)
    subjects = np.array([subject_of[t] for t in templates.tolist()], dtype=np.int64)
    if known is not None:
        ok = _id_lookup(known, templates)
        if not ok.all():
            t = int(templates[np.flatnonzero(~ok)[0]])
            raise IJBFormatError(f"{path}:{first_line[t]}: template {t} is not in face_tid_mid")
    return templates, subjects


def read_identification_meta(meta: IJBMeta) -> IdentificationMeta:
    """The 1:N lists of ``meta``'s target; every file must exist (listed in the error when not)."""
    files = identification_files(meta.root, meta.target)
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{meta.dataset} 1:N protocol files not found: {', '.join(missing)}")
    known = np.unique(meta.templates)
    galleries = {g: read_template_subjects(p, known) for g, p in files.items() if g != "probe"}
    return IdentificationMeta(galleries=galleries, probes=read_template_subjects(files["probe"], known))


# --------------------------------------------------------------------------------------------------
# Images


def check_images(meta: IJBMeta, indices: Sequence[int] | np.ndarray | None = None) -> None:
    """Fail before any model work when an image file is missing (naming it and its landmark line).

    One directory listing answers for flat names (all of insightface's), which is far faster than a
    ``stat`` per file over 469k images; names with a folder part are checked one by one.
    """
    rows = range(len(meta.names)) if indices is None else indices
    try:
        present = set(os.listdir(meta.image_dir))
    except OSError as exc:
        raise FileNotFoundError(f"{meta.image_dir}: cannot list the image folder: {exc.strerror or exc}") from None
    for i in rows:
        name = meta.names[int(i)]
        found = name in present if ("/" not in name and os.sep not in name) else (meta.image_dir / name).is_file()
        if not found:
            raise IJBFormatError(
                f"{meta.image_dir / name}: image missing (listed at {meta.image_where(int(i))})"
            )


class IJBImages(Dataset):
    """Aligned uint8 ``[3, size, size]`` RGB crops of the IJB images, in ``face_tid_mid`` row order.

    Decoding and the 5-point similarity warp (insightface's ``face_align``: landmarks → ArcFace template,
    bilinear, black border) run here, so DataLoader workers do them in parallel. Landmarks are float32 as
    insightface reads them; an undecodable image or degenerate landmarks are an :class:`IJBFormatError`
    naming the image and its landmark line.
    """

    def __init__(self, meta: IJBMeta, size: int = 112):
        self.image_dir = meta.image_dir
        self.names = meta.names
        self.landmarks = meta.landmarks
        self.points_lines = meta.points_lines
        self.size = size

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.image_dir / self.names[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise IJBFormatError(
                f"{path}: cannot read ({exc.strerror or exc}); listed at {self.points_lines.where(i)}"
            ) from None
        try:
            img = decode_rgb(data)
        except ImageDecodeError as exc:
            raise IJBFormatError(f"{path}: cannot decode ({exc}); listed at {self.points_lines.where(i)}") from None
        try:
            crop = align_face(img.permute(1, 2, 0).numpy(), self.landmarks[i].astype(np.float64), self.size)
        except ValueError as exc:
            raise IJBFormatError(f"{path}: cannot align ({exc}); landmarks at {self.points_lines.where(i)}") from None
        return torch.from_numpy(crop).permute(2, 0, 1)


def dataset_fingerprint(meta: IJBMeta, size: int = 112) -> str:
    """A hash of what determines the aligned crops (image names, landmarks, crop size, image folder).

    Part of the feature-cache key, so editing the landmark file or pointing at another copy of the data
    never reuses features of other crops. The image bytes themselves are not hashed (469k files).
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(str(meta.image_dir.resolve()).encode("utf-8", "surrogateescape") + b"\0")
    h.update(f"{meta.target}\0{size}\0{len(meta.names)}\0".encode())
    h.update("\n".join(meta.names).encode("utf-8", "surrogateescape"))
    h.update(np.ascontiguousarray(meta.landmarks, dtype=np.float32).tobytes())
    return h.hexdigest()

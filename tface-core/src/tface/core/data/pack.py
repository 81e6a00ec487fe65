"""Pack an image folder or image list into TFace TFRecord shards (``tface data pack``).

Per image: decode it (``decode_rgb``: EXIF orientation applied, as ``cv2.imread`` does), align it to the 112×112 ArcFace
template when landmarks are given (else it must already be 112×112), and encode it as JPEG. Images are
processed in a process pool (``imap``, ordered) while the parent alone writes, so the output bytes do not
depend on the number of workers. Outputs, under ``OUT``::

    NAME/NAME-00000.tfrecord ...   shards (a new one every ``shard_size`` images)
    NAME/NAME.index                TFace 3-column pack index: source path, shard, offset
    NAME/classes.tsv               label<TAB>identity, one line per label
    NAME.txt                       4-column training index (written last: its presence means complete)
    NAME/tface-manifest.txt        the files pack wrote (``--overwrite`` deletes only these)

Everything is built in a temporary sibling and moved into place on success (:mod:`tface.core.outdir`).
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import attrs
import numpy as np
from PIL import Image

from tface.core.data.align import read_landmark_list, similarity_transform, template, transform_points, warp
from tface.core.data.image import ImageDecodeError, decode_rgb
from tface.core.data.imagelist import ImageList, read_image_list, scan_folder
from tface.core.data.index import check_record_name
from tface.core.data.writer import DEFAULT_SHARD_SIZE, ShardWriter
from tface.core.outdir import OutputExistsError, OutputFolder, SameFileError, check_distinct

__all__ = ["PackError", "PackReport", "pack", "encode_face", "ON_ERROR"]

ON_ERROR = ("error", "skip")
#: The crop size TFace trains on; without landmarks images must already have it.
SIZE = 112

Progress = Callable[[Iterable, int], Iterable]


class PackError(ValueError):
    """Packing cannot go on: names the image (or the output that is in the way)."""


@attrs.frozen
class PackReport:
    """What ``pack`` wrote and what it left out."""

    out_dir: Path
    name: str
    #: the 4-column training index, the 3-column pack index and classes.tsv
    index: Path
    pack_index: Path
    classes_file: Path
    shards: tuple[Path, ...]
    written: int
    #: identities with at least one image written / labels in the label space
    identities: int
    classes: int
    #: (image, reason) for every image left out with ``on_error="skip"``
    skipped: tuple[tuple[str, str], ...]
    #: identity folders without images (they got no label)
    empty_identities: tuple[str, ...]
    #: landmark entries that matched no image of the source
    unused_landmarks: int
    seconds: float
    #: files of a source folder that are no image the decoder reads (or lie outside identity folders)
    ignored_files: tuple[str, ...] = ()


class _Bad(Exception):
    """One image that cannot be packed (the reason is the message)."""


def encode_face(data: bytes, landmarks: np.ndarray | None, *, quality: int = 95,
                size: int = SIZE) -> tuple[bytes, np.ndarray | None]:
    """Encoded image bytes → (JPEG of the aligned ``size``×``size`` crop, its 5 landmarks or None).

    Raises ``ValueError`` with the reason when the image cannot be decoded, the landmarks are degenerate,
    or (without landmarks) the image is not ``size``×``size``.
    """
    try:
        rgb = decode_rgb(data).permute(1, 2, 0).contiguous().numpy()
    except ImageDecodeError as exc:
        raise ValueError(f"cannot decode image: {exc}") from None
    out_pts = None
    if landmarks is not None:
        pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        matrix = similarity_transform(pts, template(size))
        rgb = warp(rgb, matrix, size)
        out_pts = transform_points(matrix, pts)
    elif rgb.shape[:2] != (size, size):
        raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, expected {size}x{size}; "
                         "pass --landmarks to align it")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), out_pts


def _job(args: tuple[str, np.ndarray | None, int]) -> tuple[bool, bytes | str, np.ndarray | None]:
    """Worker: (file, landmarks, quality) → (True, jpeg, landmarks) or (False, reason, None)."""
    file, landmarks, quality = args
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as exc:
        return False, f"cannot read: {exc.strerror or exc}", None
    try:
        jpeg, pts = encode_face(data, landmarks, quality=quality)
    except ValueError as exc:
        return False, str(exc), None
    return True, jpeg, pts


def _source(source: str | os.PathLike | ImageList, image_list: bool, root: str | os.PathLike | None) -> ImageList:
    if isinstance(source, ImageList):
        return source
    if image_list:
        return read_image_list(source, root)
    if root is not None:
        raise ValueError("root applies to image lists only (a folder's paths are relative to the folder)")
    return scan_folder(source)


def _landmarks_for(images: ImageList, table: dict[str, np.ndarray]) -> tuple[list[np.ndarray | None], int]:
    """Landmarks per image, looked up by the path as the source names it, then by the file's full path."""
    found: list[np.ndarray | None] = []
    used: set[str] = set()
    for i, p in enumerate(images.paths):
        for key in (p, str(images.file(i))):
            if key in table:
                found.append(table[key])
                used.add(key)
                break
        else:
            found.append(None)
    return found, len(table) - len(used)


def _pool(workers: int):
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return mp.get_context(method).Pool(workers)


def pack(source: str | os.PathLike | ImageList, out_dir: str | os.PathLike, name: str, *,
         image_list: bool = False, root: str | os.PathLike | None = None,
         landmarks: str | os.PathLike | dict[str, np.ndarray] | None = None,
         shard_size: int = DEFAULT_SHARD_SIZE, quality: int = 95, extra_keys: bool = False, workers: int = 1,
         on_error: str = "error", overwrite: bool = False, progress: Progress | None = None) -> PackReport:
    """Pack ``source`` (a folder, an image list with ``image_list=True``, or an :class:`ImageList`).

    ``landmarks`` is a TFace ``pts_list`` file (or its parsed dict); images are then aligned to 112×112.
    ``on_error="error"`` raises :class:`PackError` at the first image that cannot be packed (unreadable,
    undecodable, no landmarks, wrong size); ``"skip"`` leaves it out and lists it in the report.
    ``workers`` > 1 encodes in that many processes (0: one per CPU core); the bytes are the same.
    """
    t0 = time.perf_counter()
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    check_record_name(name)
    images = _source(source, image_list, root)
    table = read_landmark_list(landmarks) if isinstance(landmarks, (str, os.PathLike)) else landmarks
    if table is not None:
        points, unused = _landmarks_for(images, table)
    else:
        points, unused = [None] * len(images), 0
    out_dir = Path(out_dir)
    output = OutputFolder(out_dir / name, overwrite=overwrite, companions=[f"{name}.txt"])
    try:
        check_distinct({"the output folder": output.target, "the index": out_dir / f"{name}.txt"},
                       {"source": source if not isinstance(source, ImageList) else None, "landmarks":
                        landmarks if isinstance(landmarks, (str, os.PathLike)) else None},
                       folders=["the output folder"])
        output.check()
    except (OutputExistsError, SameFileError) as exc:
        raise PackError(str(exc)) from None

    jobs: list[tuple[str, np.ndarray | None, int]] = []
    skipped: list[tuple[str, str]] = []
    keep: list[int] = []
    for i in range(len(images)):
        if table is not None and points[i] is None:
            reason = "no landmarks for this image in the landmark list"
            if on_error == "error":
                raise PackError(f"{images.where(i)}: {reason}")
            skipped.append((images.paths[i], reason))
            continue
        keep.append(i)
        jobs.append((str(images.file(i)), points[i], quality))

    workers = workers or os.cpu_count() or 1
    pool = _pool(workers) if workers > 1 and len(jobs) > 1 else None
    try:
        # built in a temporary sibling of OUT/NAME and moved into place only when complete, so a failed
        # pack (even with --overwrite) leaves the old data set and everything else in OUT as they were
        with output:
            results: Iterator = (pool.imap(_job, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers))))
                                 if pool is not None else map(_job, jobs))
            if progress is not None:
                results = iter(progress(results, len(jobs)))
            assert output.staging is not None
            with ShardWriter(output.staging, name, shard_size=shard_size, pack_index=True,
                             extra_keys=extra_keys) as writer:
                labels_written: set[int] = set()
                for i, (ok, payload, pts) in zip(keep, results):
                    if not ok:
                        if on_error == "error":
                            raise PackError(f"{images.where(i)}: {payload}")
                        skipped.append((images.paths[i], payload))
                        continue
                    label = int(images.labels[i])
                    writer.add(payload, label, path=images.paths[i],
                               landmarks=pts.ravel().tolist() if pts is not None else None)
                    labels_written.add(label)
                if not writer.rows:
                    shown = "; ".join(f"{p}: {r}" for p, r in skipped[:3])
                    raise PackError(f"no image could be packed ({len(skipped)} skipped: {shown}"
                                    f"{' ...' if len(skipped) > 3 else ''})")
                shards = sorted({row[1] for row in writer.rows})
                _write_classes(output.path / "classes.tsv", images.classes)
    except OutputExistsError as exc:  # something appeared in the way during the build
        raise PackError(str(exc)) from None
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    order = {p: k for k, p in enumerate(images.paths)}
    skipped.sort(key=lambda s: order[s[0]])
    return PackReport(
        out_dir=out_dir, name=name, index=out_dir / f"{name}.txt", pack_index=out_dir / name / f"{name}.index",
        classes_file=out_dir / name / "classes.tsv",
        shards=tuple(out_dir / name / f"{name}-{s:05d}.tfrecord" for s in shards),
        written=len(writer.rows), identities=len(labels_written), classes=images.num_classes,
        skipped=tuple(skipped), empty_identities=images.empty, ignored_files=images.ignored, unused_landmarks=unused,
        seconds=time.perf_counter() - t0,
    )


def _write_classes(path: Path, classes: dict[int, str]) -> None:
    from tface.core.fsutil import atomic_write_bytes

    for label, ident in classes.items():
        if any(c in ident for c in "\t\n\r"):
            raise PackError(f"identity name {ident!r} (label {label}) contains a tab or newline")
    atomic_write_bytes(path, "".join(f"{k}\t{v}\n" for k, v in sorted(classes.items())).encode("utf-8"))

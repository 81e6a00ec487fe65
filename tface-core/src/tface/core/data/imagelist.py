"""Find the images of a face data set: an image folder (one sub-folder per identity) or an image list.

Both give an :class:`ImageList`: paths (as the source names them), a label per image and a name per
label. The same object feeds ``tface data pack`` and the ``image_folder`` / ``image_list`` dataset
sources, so packing a source and training on it directly see the same labels.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import numpy as np

from tface.core.data.image import IMAGE_EXTENSIONS
from tface.core.data.index import IndexFormatError, text_lines

__all__ = ["IMAGE_EXTENSIONS", "ImageList", "ImageSourceError", "scan_folder", "read_image_list"]


class ImageSourceError(ValueError):
    """An image folder that cannot be used (missing, or without any identity that has images)."""


@attrs.frozen
class ImageList:
    """Images with labels; ``paths[i]`` resolves against ``root`` unless absolute."""

    #: the folder the relative paths are relative to
    root: Path
    #: image paths: relative to ``root`` with '/' separators (folders), or as written (lists)
    paths: tuple[str, ...]
    #: int64 [N]
    labels: np.ndarray
    #: label -> identity name
    classes: dict[int, str]
    #: the folder scanned or the list file read
    source: Path
    #: 1-based line of every image in the list file (``None`` for a folder)
    lines: tuple[int, ...] | None = None
    #: identity folders that held no image (skipped: they get no label)
    empty: tuple[str, ...] = ()
    #: files of a scanned folder left out: not an image format the decoder reads, or directly in the root
    ignored: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def file(self, i: int) -> Path:
        """The file of image ``i``."""
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.root / p

    def scan_notes(self, shown: int = 3) -> list[str]:
        """One line each about ignored files and empty identity folders (none for a clean folder)."""
        notes = []
        if self.ignored:
            more = " ..." if len(self.ignored) > shown else ""
            notes.append(f"{self.source}: {len(self.ignored)} files ignored (not a readable image format, or not "
                         f"inside an identity folder): {', '.join(self.ignored[:shown])}{more}")
        if self.empty:
            more = " ..." if len(self.empty) > shown else ""
            notes.append(f"{self.source}: {len(self.empty)} identity folders hold no image and get no label: "
                         f"{', '.join(self.empty[:shown])}{more}")
        return notes

    def where(self, i: int) -> str:
        """``"<file>"``, plus ``(list <file>:<line>)`` for lists, for messages about image ``i``."""
        if self.lines is None:
            return str(self.file(i))
        return f"{self.file(i)} (list {self.source}:{self.lines[i]})"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_folder(root: str | os.PathLike) -> ImageList:
    """``root/<identity>/**/<image>``: identities sorted by folder name get labels 0..C-1.

    Images are found by extension (case-insensitive, every format :func:`~tface.core.data.image.decode_rgb`
    reads) anywhere below an identity folder and sorted by relative path. Hidden entries (names starting
    with '.') are skipped silently; other files left out (another extension, or directly in ``root``) are
    listed in ``ignored``. Identity folders without any image get no label and are listed in ``empty``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageSourceError(f"{root}: not a folder")
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
    identities = sorted(e.name for e in entries if e.is_dir())
    paths: list[str] = []
    labels: list[int] = []
    classes: dict[int, str] = {}
    empty: list[str] = []
    ignored = sorted(e.name for e in entries if not e.is_dir())
    for identity in identities:
        found = []
        for dirpath, dirnames, filenames in os.walk(root / identity):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(root).as_posix()
            for f in filenames:
                if not f.startswith("."):
                    (found if _is_image(f) else ignored).append(f"{rel}/{f}")
        if not found:
            empty.append(identity)
            continue
        label = len(classes)
        classes[label] = identity
        found.sort()
        paths.extend(found)
        labels.extend([label] * len(found))
    if not paths:
        seen = f"; {len(ignored)} other files, e.g. {', '.join(sorted(ignored)[:3])}" if ignored else ""
        raise ImageSourceError(
            f"{root}: no images found (expected one sub-folder per identity holding "
            f"{' '.join(e[1:] for e in IMAGE_EXTENSIONS)} files{seen})"
        )
    return ImageList(root=root, paths=tuple(paths), labels=np.asarray(labels, dtype=np.int64), classes=classes,
                     source=root, empty=tuple(empty), ignored=tuple(sorted(ignored)))


def _split_line(line: str) -> tuple[str, str | None]:
    """``(path, label text or None)``: a tab separates a label; else a trailing integer token does."""
    if "\t" in line:
        img, _, label = line.rpartition("\t")
        return img.strip(), label.strip()
    parts = line.rsplit(None, 1)
    if len(parts) == 2:
        try:
            int(parts[1])
        except ValueError:
            return line.strip(), None
        return parts[0].strip(), parts[1]
    return line.strip(), None


def read_image_list(path: str | os.PathLike, root: str | os.PathLike | None = None) -> ImageList:
    """Lines ``path``, ``path<TAB>label`` or ``path label``; relative paths resolve against ``root``.

    ``root`` defaults to the list's folder. Without labels, an image's identity is the name of its
    parent folder and identities sorted by name get labels 0..C-1. Every line must agree on whether it
    has a label; a path may appear once. Errors are :class:`IndexFormatError` naming the line.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    paths: list[str] = []
    raw_labels: list[int] = []
    lines: list[int] = []
    seen: dict[str, int] = {}
    labelled: bool | None = None
    first = 0
    for lineno, line in text_lines(path, "image list"):
        img, label = _split_line(line)
        if not img:
            raise IndexFormatError(f"{path}:{lineno}: empty image path: {line[:120]!r}")
        has_label = label is not None
        if labelled is None:
            labelled, first = has_label, lineno
        elif has_label != labelled:
            mode = "has a label" if labelled else "has no label"
            raise IndexFormatError(
                f"{path}:{lineno}: line {first} {mode} but this one {'does' if has_label else 'does not'}: "
                f"label every line or none: {line[:120]!r}"
            )
        if has_label:
            try:
                value = int(label)
            except ValueError:
                raise IndexFormatError(f"{path}:{lineno}: label must be an integer, got {label!r}") from None
            if value < 0:
                raise IndexFormatError(f"{path}:{lineno}: negative label {value}")
            raw_labels.append(value)
        if img in seen:
            raise IndexFormatError(f"{path}:{lineno}: {img!r} is listed twice (first on line {seen[img]})")
        seen[img] = lineno
        paths.append(img)
        lines.append(lineno)
    if not paths:
        raise IndexFormatError(f"{path}: the image list is empty")
    if labelled:
        labels = np.asarray(raw_labels, dtype=np.int64)
        classes = _names_for_labels(paths, labels)
    else:
        names = []
        for img, lineno in zip(paths, lines):
            parent = Path(img).parent.name
            if not parent:
                raise IndexFormatError(
                    f"{path}:{lineno}: {img!r} has no parent folder to name its identity; "
                    "give a label (path<TAB>label) or list paths as identity/image"
                )
            names.append(parent)
        ordered = sorted(set(names))
        label_of = {n: i for i, n in enumerate(ordered)}
        labels = np.asarray([label_of[n] for n in names], dtype=np.int64)
        classes = dict(enumerate(ordered))
    return ImageList(root=base, paths=tuple(paths), labels=labels, classes=classes, source=path, lines=tuple(lines))


def _names_for_labels(paths: list[str], labels: np.ndarray) -> dict[int, str]:
    """A labelled list names a label by the parent folder all its images share, else by the number."""
    folders: dict[int, set[str]] = {}
    for img, label in zip(paths, labels.tolist()):
        folders.setdefault(label, set()).add(Path(img).parent.name)
    out = {}
    for label in sorted(folders):
        names = folders[label]
        only = next(iter(names)) if len(names) == 1 else ""
        out[label] = only or str(label)
    return out

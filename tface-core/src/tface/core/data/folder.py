"""Train straight from image files: the ``image_folder`` and ``image_list`` dataset sources.

Images must already be aligned crops of ``image_size``×``image_size`` (pack them with landmarks,
``tface data pack --landmarks``, to align them). Labels come from :mod:`tface.core.data.imagelist`, so a
folder trained on directly and the same folder packed into shards get the same labels. Packed shards read
faster (one open file per shard instead of one per image); these sources are for small or changing sets.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

from tface.core.config import option, options
from tface.core.data.base import LABEL_GAPS, ON_ERROR, FaceDataset, Transform, log, resolve_labels
from tface.core.data.errors import DataError
from tface.core.data.image import ImageDecodeError, decode_rgb, max_image_pixels
from tface.core.data.imagelist import ImageList, read_image_list, scan_folder
from tface.core.data.source import DatasetSource, missing_path

__all__ = ["ImageFileDataset", "ImageFolderSource", "ImageListSource"]


class ImageFileDataset(FaceDataset):
    """``dataset[i] -> (uint8 image [3, S, S], label)`` read from the files of an :class:`ImageList`."""

    def __init__(self, images: ImageList, *, image_size: int = 112, transform: Transform | None = None,
                 on_error: str = "error", label_gaps: str = "warn"):
        super().__init__(transform=transform, on_error=on_error)
        max_image_pixels()  # a bad TFACE_MAX_IMAGE_PIXELS fails here, not in every loader worker
        self.images = images
        self.image_size = image_size
        self.labels_np, self.label_space, self.label_message = resolve_labels(
            images.labels, label_gaps, str(images.source))

    def where(self, i: int) -> str:
        return self.images.where(i)

    def load(self, i: int) -> torch.Tensor:
        file = self.images.file(i)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise DataError(f"{self.where(i)}: cannot read: {exc.strerror or exc}") from None
        try:
            img = decode_rgb(data)
        except ImageDecodeError as exc:
            raise DataError(f"{self.where(i)}: cannot decode image: {exc}") from None
        s = self.image_size
        if tuple(img.shape[1:]) != (s, s):
            raise DataError(f"{self.where(i)}: image is {img.shape[2]}x{img.shape[1]}, expected {s}x{s} "
                            "(align it first: tface data pack --landmarks)")
        return img


def _choice(options: tuple[str, ...]):
    return attrs.validators.in_(options)


@options
class ImageFolderSource(DatasetSource):
    """``root/<identity>/<image>``: identities sorted by folder name are labels 0..C-1."""

    def __init__(self, root: Path, image_size: int = option(112, attrs.validators.gt(0)),
                 on_error: str = option("error", _choice(ON_ERROR)),
                 label_gaps: str = option("warn", _choice(LABEL_GAPS))):
        self.root = Path(root)
        self.image_size = image_size
        self.on_error = on_error
        self.label_gaps = label_gaps

    def train_dataset(self, transform: Transform | None = None) -> ImageFileDataset:
        images = scan_folder(self.root)
        for note in images.scan_notes():
            log.warning("%s", note)
        return ImageFileDataset(images, image_size=self.image_size, transform=transform,
                                on_error=self.on_error, label_gaps=self.label_gaps)

    def check_inputs(self) -> list[str]:
        return missing_path("root", self.root, "folder")


@options
class ImageListSource(DatasetSource):
    """An image list (``path``, ``path<TAB>label`` or ``path label`` lines); see :func:`read_image_list`."""

    def __init__(self, list: Path, root: Path | None = None, image_size: int = option(112, attrs.validators.gt(0)),
                 on_error: str = option("error", _choice(ON_ERROR)),
                 label_gaps: str = option("warn", _choice(LABEL_GAPS))):
        self.list = Path(list)
        self.root = Path(root) if root is not None else None
        self.image_size = image_size
        self.on_error = on_error
        self.label_gaps = label_gaps

    def train_dataset(self, transform: Transform | None = None) -> ImageFileDataset:
        return ImageFileDataset(read_image_list(self.list, self.root), image_size=self.image_size,
                                transform=transform, on_error=self.on_error, label_gaps=self.label_gaps)

    def check_inputs(self) -> list[str]:
        return [*missing_path("list", self.list), *missing_path("root", self.root, "folder")]

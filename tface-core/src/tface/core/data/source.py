"""Dataset sources (entry-point group ``tface.datasets``).

A source turns recipe options into a training dataset (``(image, label)`` items, a ``num_classes``
attribute) and may offer evaluation files for protocols (``eval_sets``), so a recipe can say "evaluate
on whatever held-out data this source ships" without knowing where it lives.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import torch
from torch.utils.data import Dataset

from tface.core.config import option, options
from tface.core.data.base import LABEL_GAPS, ON_ERROR
from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.pairdataset import PairTFRecordDataset

__all__ = ["DatasetSource", "IndexedTFRecordSource", "PairTFRecordSource", "Transform", "missing_path"]

Transform = Callable[[torch.Tensor], torch.Tensor]


class DatasetSource(abc.ABC):
    """Base class for ``tface.datasets`` entries."""

    @abc.abstractmethod
    def train_dataset(self, transform: Transform | None = None) -> Dataset:
        """The training set; items are ``(uint8 image [3, H, W], int label)`` (see :mod:`tface.core.data.base`)."""

    def eval_sets(self) -> dict[str, dict[str, Path]]:
        """Evaluation files this source offers: ``{protocol: {dataset name: path}}``."""
        return {}

    def check_inputs(self) -> list[str]:
        """Problems with the files this source reads, each ``"<option>: <what is wrong>"``; empty when none.

        Only cheap checks (does the path exist, is it a file or a folder), so ``tface run --dry-run`` and
        the start of a run (before the run folder is created) can report a missing path at once. A source
        that reads no user files (it generates its data) has nothing to check.
        """
        return []


def missing_path(option: str, path: Path | None, kind: str = "file") -> list[str]:
    """``["<option>: <path> does not exist"]`` (or "is not a file/folder") when ``path`` is unusable, else ``[]``."""
    if path is None:
        return []
    if not path.exists():
        return [f"{option}: {path} does not exist"]
    if kind == "file" and not path.is_file():
        return [f"{option}: {path} is not a file"]
    if kind == "folder" and not path.is_dir():
        return [f"{option}: {path} is not a folder"]
    return []


@options
class IndexedTFRecordSource(DatasetSource):
    """TFace-format shards + index (``name<TAB>shard<TAB>offset<TAB>label``).

    ``root`` is TFace's ``DATA_ROOT`` (default: the index's folder); ``on_error`` is the bad-record policy
    (``error`` stops with file and offset, ``skip`` counts, logs and replaces the sample); ``label_gaps``
    says what to do when some labels in ``0..max`` have no sample (``warn``, ``error`` or ``compact``).
    """

    def __init__(self, index: Path, root: Path | None = None, verify_crc: bool = True,
                 on_error: str = option("error", attrs.validators.in_(ON_ERROR)),
                 label_gaps: str = option("warn", attrs.validators.in_(LABEL_GAPS)), bins: Sequence[Path] = ()):
        self.index = Path(index)
        self.root = Path(root) if root is not None else None
        self.verify_crc = verify_crc
        self.on_error = on_error
        self.label_gaps = label_gaps
        self.bins = [Path(b) for b in bins or []]

    def train_dataset(self, transform: Transform | None = None) -> IndexedTFRecordDataset:
        return IndexedTFRecordDataset(self.index, self.root, transform=transform, verify_crc=self.verify_crc,
                                      on_error=self.on_error, label_gaps=self.label_gaps)

    def eval_sets(self) -> dict[str, dict[str, Path]]:
        return {"verification": {b.stem: b for b in self.bins}} if self.bins else {}

    def check_inputs(self) -> list[str]:
        return [*missing_path("index", self.index), *missing_path("root", self.root, "folder"),
                *(p for i, b in enumerate(self.bins) for p in missing_path(f"bins[{i}]", b))]


@options
class PairTFRecordSource(IndexedTFRecordSource):
    """TFace-format shards + an 8-column pair index (two ``name, shard, offset, label`` quadruples per line).

    TFace's ``PairIndexTFRDataset`` (DDL's positive pairs): items are ``((image, image), first label)``. The
    options and checks are the ``tfrecord`` source's; ``label_gaps`` concerns the first labels.
    """

    def train_dataset(self, transform: Transform | None = None) -> PairTFRecordDataset:
        return PairTFRecordDataset(self.index, self.root, transform=transform, verify_crc=self.verify_crc,
                                   on_error=self.on_error, label_gaps=self.label_gaps)

"""What a training index holds, from the index alone (shards are only stat-ed, never read).

Answers the questions asked before training: how many images and identities, are the labels
contiguous (the classifier gets ``max + 1`` rows), how unbalanced are the identities, and are all the
shards there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import attrs
import numpy as np

from tface.core.data.index import Index, LabelSpace

__all__ = ["IndexStats", "index_stats", "log_histogram"]


def log_histogram(counts: np.ndarray) -> list[tuple[int, int, int]]:
    """``(lo, hi, n)`` buckets ``1, 2–3, 4–7, 8–15, ...`` up to the largest count (positive counts only)."""
    counts = np.asarray(counts, dtype=np.int64)
    if not len(counts):
        return []
    if counts.min() < 1:
        raise ValueError("log_histogram needs positive counts")
    buckets = np.frexp(counts.astype(np.float64))[1] - 1  # exact floor(log2) for integers below 2**53
    per = np.bincount(buckets)
    return [(1 << k, (1 << (k + 1)) - 1, int(n)) for k, n in enumerate(per.tolist())]


@attrs.frozen
class IndexStats:
    images: int
    identities: int
    label_space: LabelSpace
    per_identity_min: int
    per_identity_median: float
    per_identity_mean: float
    per_identity_max: int
    histogram: list[tuple[int, int, int]]
    shards: int
    shard_bytes: int
    records_per_shard_min: int
    records_per_shard_max: int
    missing_shards: list[str]

    def to_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "identities": self.identities,
            "label_space": {
                "num_classes": self.label_space.num_classes,
                "used": self.label_space.used,
                "missing": len(self.label_space.missing),
                "missing_labels": self.label_space.missing.tolist(),
                "contiguous": self.label_space.contiguous,
            },
            "images_per_identity": {
                "min": self.per_identity_min,
                "median": self.per_identity_median,
                "mean": self.per_identity_mean,
                "max": self.per_identity_max,
                "histogram": [{"from": lo, "to": hi, "identities": n} for lo, hi, n in self.histogram],
            },
            "shards": {
                "count": self.shards,
                "bytes": self.shard_bytes,
                "records_min": self.records_per_shard_min,
                "records_max": self.records_per_shard_max,
                "missing": self.missing_shards,
            },
        }


def index_stats(index: Index, *, progress: Callable[[Iterable[Path], int], Iterable[Path]] | None = None
                ) -> IndexStats:
    """Count everything from the index; shard sizes come from ``stat`` (missing shards are listed).

    ``progress(paths, length)`` may wrap the loop over shard files (it can be long on network storage).
    """
    space = index.label_space()
    counts = np.bincount(index.labels)
    per = counts[counts > 0]
    per_shard = np.bincount(index.file_id, minlength=len(index.files))
    total = 0
    missing: list[str] = []
    paths: Iterable[Path] = index.files if progress is None else progress(index.files, len(index.files))
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            missing.append(str(path))
    return IndexStats(
        images=len(index),
        identities=int(len(per)),
        label_space=space,
        per_identity_min=int(per.min()),
        per_identity_median=float(np.median(per)),
        per_identity_mean=float(per.mean()),
        per_identity_max=int(per.max()),
        histogram=log_histogram(per),
        shards=len(index.files),
        shard_bytes=total,
        records_per_shard_min=int(per_shard.min()),
        records_per_shard_max=int(per_shard.max()),
        missing_shards=missing,
    )

"""Deterministic subsets of a training index (fewer identities, fewer images each), shards untouched.

Randomness comes from two streams spawned from ``seed``: one key per identity (``--identities N``
keeps the N eligible identities with the smallest keys) and one key per index row (an identity keeps
its images with the smallest keys). Keys depend only on the seed and the input index, so an identity
keeps the same images whichever other identities are chosen, and a larger N keeps a superset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs
import numpy as np

from tface.core.data.index import Index

__all__ = ["SubsetError", "IdentityList", "SubsetResult", "read_identity_list", "select_subset",
           "write_label_map"]


class SubsetError(ValueError):
    """Options that cannot be satisfied, or a bad identity list (names the file and line)."""


@attrs.frozen
class IdentityList:
    """Labels to keep, with where they came from (for error messages)."""

    labels: np.ndarray  # int64
    lines: np.ndarray | None = None
    path: str = "identity list"

    @classmethod
    def of(cls, labels: Sequence[int]) -> IdentityList:
        return cls(np.asarray(labels, dtype=np.int64))


def read_identity_list(path: str | os.PathLike) -> IdentityList:
    """One label per line (the first field of the line; blank lines and ``#`` comments are skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubsetError(f"{path}: cannot read identity list: {exc}") from None
    labels, lines = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        field = body.split()[0]
        try:
            value = int(field)
        except ValueError:
            raise SubsetError(f"{path}:{lineno}: expected an integer label, got {field!r}") from None
        if value < 0:
            raise SubsetError(f"{path}:{lineno}: negative label {value}")
        labels.append(value)
        lines.append(lineno)
    if not labels:
        raise SubsetError(f"{path}: the identity list is empty")
    return IdentityList(np.asarray(labels, dtype=np.int64), np.asarray(lines, dtype=np.int64), str(path))


@attrs.frozen
class SubsetResult:
    index: Index
    #: the kept original labels, increasing; with relabelling, new label ``k`` is ``old_labels[k]``
    old_labels: np.ndarray
    relabelled: bool
    identities_before: int
    images_before: int

    @property
    def identities(self) -> int:
        return len(self.old_labels)

    @property
    def images(self) -> int:
        return len(self.index)


def select_subset(index: Index, *, identities: int | None = None, identity_list: IdentityList | None = None,
                  min_images: int = 1, max_per_identity: int | None = None, fraction: float | None = None,
                  seed: int = 0, keep_labels: bool = False) -> SubsetResult:
    """Pick identities, then images per identity; rows keep their input order and shard/offset.

    Identities: those with at least ``min_images`` images, restricted to ``identity_list`` or to
    ``identities`` of them chosen at random. Images of a kept identity with ``n`` images:
    ``max(1, floor(fraction * n + 0.5))`` when ``fraction`` is set, then at most ``max_per_identity``.
    Labels are renumbered ``0..K-1`` in increasing order of the old label unless ``keep_labels``.
    """
    if identities is not None and identity_list is not None:
        raise SubsetError("give either a number of identities or an identity list, not both")
    if identities is not None and identities < 1:
        raise SubsetError(f"the number of identities must be at least 1, got {identities}")
    if min_images < 1:
        raise SubsetError(f"min_images must be at least 1, got {min_images}")
    if max_per_identity is not None and max_per_identity < 1:
        raise SubsetError(f"max_per_identity must be at least 1, got {max_per_identity}")
    if fraction is not None and not 0 < fraction <= 1:
        raise SubsetError(f"fraction must be in (0, 1], got {fraction}")

    labels = index.labels
    counts = np.bincount(labels)
    eligible = counts >= min_images
    identity_keys_seed, row_keys_seed = np.random.SeedSequence(seed).spawn(2)

    if identity_list is not None:
        wanted = np.zeros(len(counts), dtype=bool)
        for j, lab in enumerate(identity_list.labels.tolist()):
            if lab >= len(counts) or counts[lab] == 0:
                where = (f"{identity_list.path}:{int(identity_list.lines[j])}" if identity_list.lines is not None
                         else identity_list.path)
                raise SubsetError(f"{where}: label {lab} has no image in {index.path}")
            wanted[lab] = True
        eligible &= wanted
    elif identities is not None:
        candidates = np.flatnonzero(eligible)
        if identities > len(candidates):
            raise SubsetError(f"{index.path}: asked for {identities} identities but only {len(candidates)} have "
                              f"at least {min_images} images")
        keys = np.random.default_rng(identity_keys_seed).random(len(counts))
        chosen = candidates[np.argsort(keys[candidates], kind="stable")[:identities]]
        eligible = np.zeros(len(counts), dtype=bool)
        eligible[chosen] = True
    if not eligible.any():
        raise SubsetError(f"{index.path}: no identity has at least {min_images} images; the subset would be empty")

    quota = counts.copy()
    if fraction is not None:
        quota = np.maximum(1, np.floor(fraction * counts + 0.5).astype(np.int64))
    if max_per_identity is not None:
        quota = np.minimum(quota, max_per_identity)
    quota = np.where(eligible, quota, 0)

    row_keys = np.random.default_rng(row_keys_seed).random(len(labels))
    order = np.lexsort((row_keys, labels))  # by label, then by key
    sorted_labels = labels[order]
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - group_start[sorted_labels]
    rows = np.sort(order[rank < quota[sorted_labels]])

    kept = np.flatnonzero(eligible).astype(np.int64)
    new_labels = None if keep_labels else np.searchsorted(kept, labels[rows]).astype(np.int64)
    return SubsetResult(
        index=index.subset(rows, new_labels),
        old_labels=kept,
        relabelled=not keep_labels,
        identities_before=int((counts > 0).sum()),
        images_before=len(index),
    )


def write_label_map(path: str | os.PathLike, old_labels: np.ndarray) -> Path:
    """``new_label<TAB>old_label`` lines under a header, written atomically."""
    from tface.core.fsutil import atomic_write_bytes

    text = "new_label\told_label\n" + "".join(f"{k}\t{int(v)}\n" for k, v in enumerate(old_labels.tolist()))
    return atomic_write_bytes(path, text.encode("utf-8"))

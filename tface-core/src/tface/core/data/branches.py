"""Several training data sets in one run (TFace's ``DATASETS``): one batch per branch per step.

Each branch keeps its own dataset, sampler, DataLoader, batch size, weight and class space. A step draws
one batch from every branch and concatenates the images, so the backbone runs one forward pass; the
embeddings are split back per branch (:meth:`MultiBatch.split`) for each branch's own classifier.

An epoch is ``max`` over branches of that branch's batches per epoch (TFace's ``step_per_epoch``);
shorter branches start their next pass early, each with its own epoch counter, so every pass is a
fresh shuffle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tface.core.data.base import collate_faces
from tface.core.data.samplers import DistributedShuffleSampler, IdentityBalancedBatchSampler, seed_worker

__all__ = ["BranchSpec", "MultiBatch", "BranchLoader"]


@attrs.define
class BranchSpec:
    name: str
    dataset: Dataset
    batch_size: int
    weight: float = 1.0
    sampler: str = "shuffle"
    images_per_identity: int = 4


@attrs.frozen
class MultiBatch:
    """One step's data: images of every branch concatenated, labels per branch."""

    images: torch.Tensor  # uint8 [sum(sizes), 3, H, W]
    labels: tuple[torch.Tensor, ...]
    names: tuple[str, ...]
    sizes: tuple[int, ...]

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-branch chunks of a tensor whose first dimension follows ``images``."""
        return torch.split(x, list(self.sizes))

    def to(self, device: torch.device, non_blocking: bool = True) -> MultiBatch:
        return MultiBatch(self.images.to(device, non_blocking=non_blocking),
                          tuple(y.to(device, non_blocking=non_blocking) for y in self.labels), self.names, self.sizes)


class _Branch:
    def __init__(self, spec: BranchSpec, index: int, *, num_workers: int, seed: int, pin_memory: bool,
                 num_replicas: int | None, rank: int | None, worker_init_fn: Callable[[int], None] | None):
        self.spec = spec
        self.epoch = 0
        ds = spec.dataset
        gen = torch.Generator()
        gen.manual_seed((seed * 1000 + index) % 2**64)  # distinct worker seeds per branch, reproducible per run
        common = dict(collate_fn=collate_faces, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=pin_memory, worker_init_fn=worker_init_fn or seed_worker, generator=gen)
        if spec.sampler == "balanced":
            self.sampler = IdentityBalancedBatchSampler(_labels_of(ds, spec.name), spec.batch_size,
                                                        spec.images_per_identity, num_replicas=num_replicas,
                                                        rank=rank, seed=seed + index)
            self.loader = DataLoader(ds, batch_sampler=self.sampler, **common)
        elif spec.sampler == "shuffle":
            self.sampler = DistributedShuffleSampler(len(ds), num_replicas=num_replicas, rank=rank,
                                                     seed=seed + index, drop_last=True)
            self.loader = DataLoader(ds, batch_size=spec.batch_size, sampler=self.sampler, drop_last=True, **common)
        else:
            raise ValueError(f"branch {spec.name!r}: unknown sampler {spec.sampler!r}")
        if len(self.loader) == 0:
            raise ValueError(
                f"branch {spec.name!r}: {len(ds)} samples give no full batch of {spec.batch_size} per process"
            )
        self._it: Iterator | None = None

    def next(self):
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1


class BranchLoader:
    """Iterate one epoch of :class:`MultiBatch` es; ``len()`` is the number of steps per epoch."""

    def __init__(self, specs: Sequence[BranchSpec], *, num_workers: int = 0, seed: int = 0, pin_memory: bool = False,
                 num_replicas: int | None = None, rank: int | None = None,
                 worker_init_fn: Callable[[int], None] | None = None):
        if not specs:
            raise ValueError("at least one data branch is needed")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"branch names must be unique, got {names}")
        self.branches = [_Branch(s, i, num_workers=num_workers, seed=seed, pin_memory=pin_memory,
                                 num_replicas=num_replicas, rank=rank, worker_init_fn=worker_init_fn)
                         for i, s in enumerate(specs)]

    @property
    def specs(self) -> list[BranchSpec]:
        return [b.spec for b in self.branches]

    def __len__(self) -> int:
        return max(len(b.loader) for b in self.branches)

    def __iter__(self) -> Iterator[MultiBatch]:
        for _ in range(len(self)):
            parts = [b.next() for b in self.branches]
            images = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
            yield MultiBatch(images, tuple(p[1] for p in parts), tuple(b.spec.name for b in self.branches),
                             tuple(len(p[1]) for p in parts))

    @property
    def skipped(self) -> dict[str, int]:
        """Bad samples skipped so far per branch (``on_error = "skip"``)."""
        return {b.spec.name: int(getattr(b.spec.dataset, "skipped", 0)) for b in self.branches}


def _labels_of(ds: Dataset, name: str) -> np.ndarray:
    labels = getattr(ds, "labels_np", None)
    if labels is None:
        labels = getattr(ds, "labels", None)
    if labels is None:
        raise ValueError(f"branch {name!r}: the balanced sampler needs the data set's labels "
                         f"({type(ds).__name__} has neither labels_np nor labels)")
    return np.asarray(labels, dtype=np.int64)

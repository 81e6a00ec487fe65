"""Several training data sets in one run (TFace's ``DATASETS``): one batch per branch per step.

Each branch keeps its own dataset, sampler, DataLoader, batch size, weight and class space. A step draws
one batch from every branch and concatenates the images, so the backbone runs one forward pass; the
embeddings are split back per branch (:meth:`MultiBatch.split`) for each branch's own classifier.

An epoch is ``max`` over branches of that branch's batches per epoch (TFace's ``step_per_epoch``);
shorter branches start their next pass early, each with its own epoch counter, so every pass is a
fresh shuffle.

Resuming: :meth:`BranchLoader.state_dict` counts the batches the trainer has taken (per branch: its epoch
and the batches of that epoch), never what a DataLoader's workers have read ahead. Worker processes draw
their random numbers (augmentation) from a seed per batch, (run seed, branch, epoch, batch), so a batch
comes out the same whichever worker loads it and however far the workers had read before a restart; each
DataLoader's own generator is seeded from (run seed, branch, epoch) at every pass, so no generator state
of the data side needs saving.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from tface.core.data.base import collate_faces
from tface.core.data.samplers import (
    DistributedShuffleSampler,
    IdentityBalancedBatchSampler,
    derive_seed,
    seed_everything,
    seed_worker,
)

__all__ = ["BranchSpec", "MultiBatch", "BranchLoader", "SeededBatch", "is_pair_dataset"]


def is_pair_dataset(dataset: Dataset) -> bool:
    """Whether ``dataset`` yields ``((first, second), label)`` pairs (declares ``yields_pairs = True``)."""
    return bool(getattr(dataset, "yields_pairs", False))


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
    #: images per branch (a pair branch: twice its labels, each pair's images side by side)
    sizes: tuple[int, ...]
    #: per branch, whether it holds image pairs (a pair source, e.g. ``tfrecord_pairs``); empty: none does
    pairs: tuple[bool, ...] = ()

    def is_pairs(self, i: int) -> bool:
        return bool(self.pairs) and self.pairs[i]

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-branch chunks of a tensor whose first dimension follows ``images``."""
        return torch.split(x, list(self.sizes))

    def to(self, device: torch.device, non_blocking: bool = True) -> MultiBatch:
        return MultiBatch(self.images.to(device, non_blocking=non_blocking),
                          tuple(y.to(device, non_blocking=non_blocking) for y in self.labels), self.names, self.sizes,
                          self.pairs)


@attrs.frozen
class SeededBatch:
    """The sample indices of one batch and the seed a worker process draws its random numbers from."""

    indices: list[int]
    seed: int


class _SeededBatches(Sampler[SeededBatch]):
    """The batches of a branch's resumable sampler, each tagged with a seed derived from its place."""

    def __init__(self, sampler: DistributedShuffleSampler | IdentityBalancedBatchSampler, batch_size: int | None,
                 seed: int, index: int):
        self.sampler, self.batch_size, self.seed, self.index = sampler, batch_size, seed, index

    def __len__(self) -> int:
        n = len(self.sampler)
        return n if self.batch_size is None else n // self.batch_size

    def __iter__(self) -> Iterator[SeededBatch]:
        items = iter(self.sampler)  # a resumed pass starts at the saved position
        epoch, start = self.sampler.epoch, self.sampler.state_dict()["start"]
        if self.batch_size is None:  # already a batch sampler: ``start`` counts batches
            for k, batch in enumerate(items, start):
                yield SeededBatch(list(batch), derive_seed(self.seed, self.index, epoch, k))
            return
        k, chunk = start // self.batch_size, []
        for i in items:
            chunk.append(i)
            if len(chunk) == self.batch_size:  # drop_last: a short tail is never yielded
                yield SeededBatch(chunk, derive_seed(self.seed, self.index, epoch, k))
                k, chunk = k + 1, []


class _SeededDataset(Dataset):
    """Loads a :class:`SeededBatch`; in a worker process it first seeds ``random``, numpy and torch from it.

    In the main process (``num_workers = 0``) the global generators are left alone: they are the run's own
    and the checkpoint saves them.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def __getitems__(self, batch: SeededBatch) -> list[Any]:
        if get_worker_info() is not None:
            seed_everything(batch.seed)
        many = getattr(self.dataset, "__getitems__", None)
        return list(many(batch.indices)) if many else [self.dataset[i] for i in batch.indices]


class _Branch:
    def __init__(self, spec: BranchSpec, index: int, *, num_workers: int, seed: int, pin_memory: bool,
                 num_replicas: int | None, rank: int | None, worker_init_fn: Callable[[int], None] | None):
        self.spec = spec
        self.seed, self.index = seed, index
        self.epoch = 0
        self.batches = 0  # batches of this epoch handed to the trainer (not what the workers read ahead)
        ds = spec.dataset
        gen = torch.Generator()  # seeded at each pass (next)
        common = dict(collate_fn=collate_faces, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=pin_memory, worker_init_fn=worker_init_fn or seed_worker, generator=gen)
        if spec.sampler == "balanced":
            self.sampler = IdentityBalancedBatchSampler(_labels_of(ds, spec.name), spec.batch_size,
                                                        spec.images_per_identity, num_replicas=num_replicas,
                                                        rank=rank, seed=seed + index)
            self.per_batch = 1  # the sampler's position counts batches
        elif spec.sampler == "shuffle":
            self.sampler = DistributedShuffleSampler(len(ds), num_replicas=num_replicas, rank=rank,
                                                     seed=seed + index, drop_last=True)
            self.per_batch = spec.batch_size  # the sampler's position counts samples
        else:
            raise ValueError(f"branch {spec.name!r}: unknown sampler {spec.sampler!r}")
        batches = _SeededBatches(self.sampler, None if self.per_batch == 1 else spec.batch_size, seed, index)
        self.loader = DataLoader(_SeededDataset(ds), batch_sampler=batches, **common)
        if len(self.loader) == 0:
            raise ValueError(
                f"branch {spec.name!r}: {len(ds)} samples give no full batch of {spec.batch_size} per process"
            )
        self._it: Iterator | None = None

    def next(self):
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch)
                self.loader.generator.manual_seed(derive_seed(self.seed, self.index, self.epoch))
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.batches = 0
                continue
            self.batches += 1
            return batch

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after the saved batch: the sampler's next pass starts there."""
        epoch, batches = int(state["epoch"]), int(state["batches"])
        self.sampler.set_epoch(epoch)
        self.sampler.set_start(batches * self.per_batch)
        self.epoch, self.batches, self._it = epoch, batches, None


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
        self.position = 0  # steps taken in the current pass (``len(self)`` steps a pass)
        self._start = 0  # where the next pass starts (a resumed run)

    @property
    def pairs(self) -> tuple[bool, ...]:
        """Per branch, whether its data set yields image pairs (empty when none does)."""
        flags = tuple(is_pair_dataset(b.spec.dataset) for b in self.branches)
        return flags if any(flags) else ()

    @property
    def specs(self) -> list[BranchSpec]:
        return [b.spec for b in self.branches]

    def __len__(self) -> int:
        return max(len(b.loader) for b in self.branches)

    def __iter__(self) -> Iterator[MultiBatch]:
        start, self._start = self._start, 0
        self.position = start
        for _ in range(start, len(self)):
            parts = [b.next() for b in self.branches]
            self.position += 1
            images = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
            yield MultiBatch(images, tuple(p[1] for p in parts), tuple(b.spec.name for b in self.branches),
                             tuple(len(p[0]) for p in parts), self.pairs)

    def state_dict(self) -> dict[str, Any]:
        """Where the trainer is: batches taken in this pass, and per branch its epoch and batches of it."""
        return {"position": self.position, "branches": [b.state_dict() for b in self.branches]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: the next pass yields exactly the batches the saved run had still to take."""
        saved = [b["name"] for b in state["branches"]]
        names = [b.spec.name for b in self.branches]
        if saved != names:
            raise ValueError(f"the checkpoint has data branches {saved}, this run has {names}")
        for branch, s in zip(self.branches, state["branches"]):
            branch.load_state_dict(s)
        self._start = self.position = int(state["position"])

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

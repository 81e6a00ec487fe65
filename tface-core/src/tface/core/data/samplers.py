"""Samplers that are reproducible, split across processes, and resumable mid-epoch.

Every process builds the same global order for an epoch from ``seed + epoch`` alone, then keeps its own
rank-strided share, so the processes need no communication to agree and together see each sample (or
batch) at most once per epoch. The global order never depends on the number of processes except in the
final split, so a run can be continued on a different number of GPUs with the same data order.

Both samplers remember the epoch and how far into it they are (``state_dict``); a resumed run loads that
and its first pass yields exactly what was left of the interrupted epoch. See ``docs/data-sampling.md``.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["DistributedShuffleSampler", "IdentityBalancedBatchSampler", "seed_worker", "derive_seed",
           "seed_everything"]


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """Fill in what was not given from the process group (1 and 0 without one), then validate."""
    initialised = dist.is_available() and dist.is_initialized()
    if num_replicas is None:
        num_replicas = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if num_replicas < 1:
        raise ValueError(f"num_replicas must be at least 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas - 1}] for num_replicas = {num_replicas}, got {rank}")
    return int(num_replicas), int(rank)


def _generator(seed: int, epoch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed + epoch) % 2**64)  # a torch seed is 64-bit; any recipe seed (< 2**63) fits
    return g


class _Resumable:
    """Epoch and position bookkeeping shared by both samplers (each defines ``__len__``, which this uses).

    ``start`` is a one-shot skip: the next ``__iter__`` begins there and later passes begin at 0.
    ``state_dict()["start"]`` is how far the current pass has got (what has been handed out so far).
    """

    epoch: int
    _start: int
    _pos: int

    def _init_state(self) -> None:
        self.epoch = 0
        self._start = 0  # where the next pass begins (consumed by __iter__)
        self._pos = 0  # how far the current (or last) pass of this epoch has got

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next pass draws; a pending ``set_start`` survives only if the epoch is unchanged."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self._start = self._pos = 0
        self.epoch = epoch

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` items of this rank's current epoch on the next pass only (mid-epoch resume)."""
        start = int(start)
        n = len(self)
        if not 0 <= start <= n:
            raise ValueError(f"start must be in [0, {n}] (this rank's items per epoch), got {start}")
        self._start = self._pos = start

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "start"}``; ``start`` counts the items of this epoch already handed out on this rank."""
        return {"epoch": self.epoch, "start": self._pos}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore :meth:`state_dict` output: the next pass resumes the saved epoch where it stopped."""
        missing = {"epoch", "start"} - set(state)
        if missing:
            raise ValueError(f"sampler state lacks {sorted(missing)}; expected keys 'epoch' and 'start'")
        self.set_epoch(state["epoch"])
        self.set_start(state["start"])

    def _begin(self) -> int:
        begin, self._start = self._start, 0
        self._pos = begin
        return begin

    def _track(self, items: Sequence) -> Iterator:
        for item in items:
            self._pos += 1
            yield item


class DistributedShuffleSampler(_Resumable, Sampler[int]):
    """Rank-strided share of one global permutation per epoch (like ``DistributedSampler``, plus resuming).

    The permutation comes from a ``torch.Generator`` seeded with ``seed + epoch``; rank ``r`` takes positions
    ``r, r + W, r + 2W, ...``. With ``drop_last`` the tail is cut so each rank gets ``N // W`` distinct
    samples; without it the permutation wraps around so each rank gets ``ceil(N / W)``.
    """

    def __init__(self, num_samples: int, *, num_replicas: int | None = None, rank: int | None = None,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        super().__init__()
        num_samples = int(num_samples)
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.num_replicas, self.rank = _world(num_replicas, rank)
        if drop_last and num_samples < self.num_replicas:
            raise ValueError(f"num_samples = {num_samples} is smaller than num_replicas = {self.num_replicas}: "
                             "with drop_last every rank would get no sample (use drop_last=False to pad)")
        self.num_samples = num_samples
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        if drop_last:
            self.per_rank = num_samples // self.num_replicas
        else:
            self.per_rank = -(-num_samples // self.num_replicas)
        self._init_state()

    def __len__(self) -> int:
        return self.per_rank

    def indices(self) -> list[int]:
        """This rank's whole epoch, ignoring any start offset."""
        n, total = self.num_samples, self.per_rank * self.num_replicas
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        if total > n:  # pad by wrapping around (more than once when n < num_replicas)
            order = order.repeat(-(-total // n))
        return order[self.rank:total:self.num_replicas].tolist()

    def __iter__(self) -> Iterator[int]:
        begin = self._begin()
        return self._track(self.indices()[begin:])


class IdentityBalancedBatchSampler(_Resumable, Sampler[list[int]]):
    """Batches of ``batch_size / k`` distinct identities with exactly ``k`` images each (P×K batches).

    One epoch, from a ``torch.Generator`` seeded with ``seed + epoch`` (the same on every rank):

    1. ``randperm(N)`` orders the images; each identity's images in that order are its shuffle.
    2. Each identity's shuffle is cut into groups of ``k``. A short last group is topped up with other images
       of the same identity: the first ones of its shuffle when it has at least ``k`` images (a random subset
       without replacement), else ``rand`` draws with replacement (identities in increasing label order).
       Every image is thus in some group, and an identity gets ``ceil(n / k)`` groups, not TFace's
       "as many as the largest identity".
    3. ``randperm(G)`` shuffles the groups; they are packed in that order into batches of distinct identities.
       A group whose identity is already in the batch is deferred; each batch first takes the oldest deferred
       group of every waiting identity, in the order the identities started waiting. The final incomplete batch
       (and what is still deferred) is dropped.
    4. Batches are dealt round-robin to ranks and the tail cut so every rank gets the same number.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, batch_size: int, images_per_identity: int,
                 *, num_replicas: int | None = None, rank: int | None = None, seed: int = 0):
        super().__init__()
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        k, batch_size = int(images_per_identity), int(batch_size)
        if k < 1:
            raise ValueError(f"images_per_identity must be at least 1, got {k}")
        if batch_size < 1 or batch_size % k:
            raise ValueError(f"batch_size = {batch_size} must be a positive multiple of "
                             f"images_per_identity = {k}")
        self.num_replicas, self.rank = _world(num_replicas, rank)
        self.batch_size, self.images_per_identity = batch_size, k
        self.identities_per_batch = batch_size // k
        self.seed = int(seed)

        self.labels = labels.astype(np.int64)
        _, self._ident, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        self._ident = self._ident.reshape(-1)
        self.num_identities = len(counts)
        if self.num_identities < self.identities_per_batch:
            raise ValueError(f"{self.num_identities} identities cannot fill a batch of {self.identities_per_batch} "
                             f"distinct identities (batch_size = {batch_size}, images_per_identity = {k})")
        groups = -(-counts // k)
        self.num_groups = int(groups.sum())
        most = self.num_groups // self.identities_per_batch
        if most < self.num_replicas:
            raise ValueError(f"the labels give at most {most} batches of {batch_size} per epoch, fewer than "
                             f"num_replicas = {self.num_replicas}")
        # Slot layout of the groups (fixed across epochs): identity of each slot and its position within it.
        self._counts = counts
        self._first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slots = groups * k
        self._slot_ident = np.repeat(np.arange(self.num_identities), slots)
        self._slot_local = np.arange(self._slot_ident.size) - np.repeat(np.cumsum(slots) - slots, slots)
        slot_count = counts[self._slot_ident]
        self._slot_fill = (self._slot_local >= slot_count) & (slot_count < k)  # draws with replacement
        self._num_fill = int(self._slot_fill.sum())
        self._cache: tuple[int, np.ndarray] | None = None
        self._init_state()

    def _rank_batches(self) -> np.ndarray:
        """This rank's batches of the current epoch, ``int64 [len, batch_size]`` (cached per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = self._global_batches(self.epoch)
            per = len(batches) // self.num_replicas
            self._cache = (self.epoch, batches[self.rank:per * self.num_replicas:self.num_replicas])
        return self._cache[1]

    def _global_batches(self, epoch: int) -> np.ndarray:
        g = _generator(self.seed, epoch)
        k, n = self.images_per_identity, len(self.labels)
        perm = torch.randperm(n, generator=g).numpy()
        by_identity = perm[np.argsort(self._ident[perm], kind="stable")]  # grouped by identity, shuffled within
        local = self._slot_local.copy()
        count = self._counts[self._slot_ident]
        wrap = local >= count
        local[wrap] -= count[wrap]  # top up from the start of the identity's own shuffle (no repeats in the group)
        draws = torch.rand(self._num_fill, dtype=torch.float64, generator=g).numpy()
        fill_count = count[self._slot_fill]
        local[self._slot_fill] = np.minimum((draws * fill_count).astype(np.int64), fill_count - 1)
        images = by_identity[self._first[self._slot_ident] + local].reshape(self.num_groups, k)
        group_ident = self._slot_ident[::k]
        order = torch.randperm(self.num_groups, generator=g).numpy()
        packed = _pack(group_ident[order], self.identities_per_batch)
        return images[order][packed].reshape(len(packed), self.batch_size)

    def __len__(self) -> int:
        return len(self._rank_batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        begin = self._begin()
        return self._track(batches[begin:].tolist())


def _pack(idents: np.ndarray, per_batch: int) -> np.ndarray:
    """Group positions of full batches, ``[B, per_batch]``, each batch with distinct identities.

    Deferred groups wait in per-identity queues (identities in the order they started waiting). Only an
    identity already in the batch being filled is deferred, so fewer than ``per_batch`` identities ever wait
    at once and a batch takes one group from each of them before it reads on in the stream. Each group is
    handled at most twice: O(groups) for the whole epoch.
    """
    waiting: dict[int, deque[int]] = {}
    stream = idents.tolist()
    batches: list[list[int]] = []
    pos = 0
    while True:
        batch: list[int] = []
        members: set[int] = set()
        for ident, queue in list(waiting.items()):
            batch.append(queue.popleft())
            members.add(ident)
            if not queue:
                del waiting[ident]
        while len(batch) < per_batch and pos < len(stream):
            ident = stream[pos]
            if ident in members:
                waiting.setdefault(ident, deque()).append(pos)
            else:
                batch.append(pos)
                members.add(ident)
            pos += 1
        if len(batch) < per_batch:
            break
        batches.append(batch)
    return np.asarray(batches, dtype=np.int64).reshape(len(batches), per_batch)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and numpy's global state from the worker's torch seed.

    The DataLoader gives worker ``i`` the torch seed ``base_seed + i`` with ``base_seed`` drawn from its
    ``generator``, so augmentations that use ``random`` or ``np.random`` become reproducible per (seed, worker)
    and differ between workers, whatever the torch version does on its own.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on ``parts`` (non-negative integers, e.g. seed, branch, epoch, batch) alone."""
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 ^ int(words[1])) & (2**63 - 1)


def seed_everything(seed: int) -> None:
    """Seed ``random``, numpy's global generator and torch's CPU generator from one integer."""
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
    torch.manual_seed(seed)

"""Samplers: compared with plain-Python re-derivations, checked for their invariants, and run on 2 real ranks."""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp
from torch.utils.data import DataLoader, Dataset

from tface.core.data.samplers import DistributedShuffleSampler, IdentityBalancedBatchSampler, seed_worker


# -- brute-force references -----------------------------------------------------------------------------------------
def ref_shuffle(n: int, world: int, rank: int, seed: int, epoch: int, shuffle: bool, drop_last: bool) -> list[int]:
    if shuffle:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        perm = list(range(n))
    per = n // world if drop_last else math.ceil(n / world)
    padded = [perm[i % n] for i in range(per * world)]
    return [padded[i] for i in range(len(padded)) if i % world == rank]


def ref_balanced(labels: list[int], batch_size: int, k: int, world: int, rank: int, seed: int,
                 epoch: int) -> list[list[int]]:
    """The documented epoch recipe, one identity and one group at a time, with quadratic list-scanning packing."""
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(len(labels), generator=g).tolist()
    idents = sorted(set(labels))
    shuffled = {lab: [i for i in perm if labels[i] == lab] for lab in idents}
    draws = torch.rand(sum(max(k - len(v), 0) for v in shuffled.values()), dtype=torch.float64, generator=g).tolist()
    groups = []
    for lab in idents:
        imgs = shuffled[lab]
        c = len(imgs)
        if c >= k:
            ext = imgs + imgs[:(-c) % k]
        else:
            ext = imgs + [imgs[min(int(draws.pop(0) * c), c - 1)] for _ in range(k - c)]
        groups += [(lab, ext[s:s + k]) for s in range(0, len(ext), k)]
    stream = [groups[i] for i in torch.randperm(len(groups), generator=g).tolist()]

    per_batch = batch_size // k
    pending: list[int] = []  # deferred stream positions, in deferral order
    since: dict[int, int] = {}  # identity -> when it last started waiting
    clock = 0
    batches, pos = [], 0
    while True:
        waiting = sorted({stream[p][0] for p in pending}, key=lambda lab: since[lab])
        assert len(waiting) < per_batch  # only identities of the batch being filled are ever deferred
        batch = []
        for lab in waiting:
            first = next(p for p in pending if stream[p][0] == lab)
            pending.remove(first)
            batch.append(first)
        members = {stream[p][0] for p in batch}
        while len(batch) < per_batch and pos < len(stream):
            lab = stream[pos][0]
            if lab in members:
                if all(stream[p][0] != lab for p in pending):
                    since[lab] = clock
                    clock += 1
                pending.append(pos)
            else:
                batch.append(pos)
                members.add(lab)
            pos += 1
        if len(batch) < per_batch:
            break
        batches.append([i for p in batch for i in stream[p][1]])
    per = len(batches) // world
    return [batches[i] for i in range(per * world) if i % world == rank]


def check_batch(batch: list[int], labels: np.ndarray, batch_size: int, k: int) -> None:
    assert len(batch) == batch_size
    counts = Counter(labels[batch].tolist())
    assert len(counts) == batch_size // k  # distinct identities
    assert set(counts.values()) == {k}
    for lab in counts:  # no image twice in a group unless its identity has fewer than k images
        imgs = [i for i in batch if labels[i] == lab]
        if (labels == lab).sum() >= k:
            assert len(set(imgs)) == k


# -- DistributedShuffleSampler --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 12, 13])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shuffle_matches_reference_and_partitions(n, world, drop_last, shuffle):
    if drop_last and n < world:
        with pytest.raises(ValueError, match="smaller than num_replicas"):
            DistributedShuffleSampler(n, num_replicas=world, rank=0, drop_last=drop_last)
        return
    per_rank = []
    for rank in range(world):
        s = DistributedShuffleSampler(n, num_replicas=world, rank=rank, seed=5, shuffle=shuffle, drop_last=drop_last)
        s.set_epoch(2)
        got = list(s)
        assert got == ref_shuffle(n, world, rank, 5, 2, shuffle, drop_last)
        assert len(s) == len(got) == (n // world if drop_last else math.ceil(n / world))
        per_rank.append(got)
    flat = [i for got in per_rank for i in got]
    if drop_last:
        assert len(set(flat)) == len(flat)  # disjoint, no duplicates
        assert len(flat) == n - n % world
    else:
        assert set(flat) == set(range(n))  # everything, the padding repeats only to even out the ranks
        assert len(flat) - n < world


def test_shuffle_epochs():
    s = DistributedShuffleSampler(50, num_replicas=2, rank=1, seed=9)
    first = list(s)
    assert list(s) == first  # same epoch reproduces
    s.set_epoch(1)
    second = list(s)
    assert second != first and sorted(second) != second
    other = DistributedShuffleSampler(50, num_replicas=2, rank=1, seed=9)
    other.set_epoch(1)
    assert list(other) == second  # a fresh instance agrees
    assert list(DistributedShuffleSampler(50, num_replicas=2, rank=1, seed=10)) != first


def test_shuffle_defaults_without_process_group():
    assert not dist.is_initialized()
    s = DistributedShuffleSampler(10)
    assert (s.num_replicas, s.rank) == (1, 0)
    assert sorted(s) == list(range(10))


@pytest.mark.parametrize("consumed", [0, 1, 7, 16])
def test_shuffle_resume(consumed):
    s = DistributedShuffleSampler(50, num_replicas=3, rank=2, seed=4, drop_last=False)
    s.set_epoch(3)
    full = list(s)
    it = iter(s)
    head = list(itertools.islice(it, consumed))
    state = s.state_dict()
    assert state == {"epoch": 3, "start": consumed}
    resumed = DistributedShuffleSampler(50, num_replicas=3, rank=2, seed=4, drop_last=False)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a trainer loop re-selecting the same epoch keeps the resume point
    assert head + list(resumed) == full
    assert resumed.state_dict() == {"epoch": 3, "start": len(full)}
    assert list(resumed) == full  # the skip applies to one pass only
    resumed.set_start(5)
    resumed.set_epoch(4)  # another epoch: the skip is dropped
    assert resumed.state_dict() == {"epoch": 4, "start": 0}
    assert list(resumed) == ref_shuffle(50, 3, 2, 4, 4, True, False)


def test_shuffle_validation():
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedShuffleSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedShuffleSampler(10, num_replicas=2, rank=-1)
    with pytest.raises(ValueError, match="num_replicas must be"):
        DistributedShuffleSampler(10, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="num_samples"):
        DistributedShuffleSampler(0)
    s = DistributedShuffleSampler(10, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match=r"start must be in \[0, 5\]"):
        s.set_start(6)
    with pytest.raises(ValueError, match="lacks"):
        s.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="epoch"):
        s.set_epoch(-1)


# -- IdentityBalancedBatchSampler -----------------------------------------------------------------------------------
def random_labels(seed: int, identities: int, most: int, spread: int = 1) -> list[int]:
    rng = random.Random(seed)
    names = rng.sample(range(spread * identities * 10), identities)  # non-contiguous when spread > 1
    labels = [lab for lab in names for _ in range(rng.randint(1, most))]
    rng.shuffle(labels)
    return labels


CASES = [  # labels, batch_size, k
    (random_labels(0, 12, 9), 8, 4),
    (random_labels(1, 20, 5, spread=7), 6, 3),  # non-contiguous labels
    (random_labels(2, 9, 3), 12, 4),  # many identities with fewer than k images
    ([3, 3, 3, 3, 3, 3, 3, 50, 50, 50, 50, 50, 50, 50, 9, 9, 9, 9, 9, 9, 9], 6, 2),  # 3 identities: all in every batch
    (random_labels(3, 15, 6), 4, 1),
    ([i * 7 + 2 for i in range(5) for _ in range(12)], 4, 1),  # heavy deferral: several identities wait at once
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("world", [1, 2, 3])
def test_balanced_matches_reference(case, world):
    labels, batch_size, k = CASES[case]
    lengths = []
    for rank in range(world):
        s = IdentityBalancedBatchSampler(labels, batch_size, k, num_replicas=world, rank=rank, seed=11)
        for epoch in (0, 1):
            s.set_epoch(epoch)
            got = list(s)
            assert got == ref_balanced(labels, batch_size, k, world, rank, 11, epoch)
            assert len(s) == len(got)
            for batch in got:
                check_batch(batch, np.asarray(labels), batch_size, k)
        lengths.append(len(s))
    assert len(set(lengths)) == 1 and lengths[0] > 0  # every rank the same number of batches


@pytest.mark.parametrize("case", range(len(CASES)))
def test_balanced_ranks_split_one_global_sequence(case):
    labels, batch_size, k = CASES[case]
    single = list(IdentityBalancedBatchSampler(labels, batch_size, k, num_replicas=1, rank=0, seed=2))
    for world in (2, 3):
        ranks = [list(IdentityBalancedBatchSampler(labels, batch_size, k, num_replicas=world, rank=r, seed=2))
                 for r in range(world)]
        per = len(single) // world
        assert all(len(r) == per for r in ranks)
        assert [ranks[i % world][i // world] for i in range(per * world)] == single[:per * world]


def test_balanced_covers_every_image_without_oversampling():
    labels = np.asarray(random_labels(7, 40, 11, spread=3))
    k, batch_size = 4, 8
    idents, counts = np.unique(labels, return_counts=True)
    groups = int(np.ceil(counts / k).sum())
    assert groups % (batch_size // k) == 0 and counts.min() < k < counts.max()
    s = IdentityBalancedBatchSampler(labels, batch_size, k, num_replicas=1, rank=0, seed=1)
    for epoch in range(4):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) * (batch_size // k) == groups  # nothing left deferred with 40 identities
        seen = Counter(i for b in batches for i in b)
        assert set(seen) == set(range(len(labels)))  # every image at least once
        per_identity = Counter(labels[i] for b in batches for i in b)
        for lab, c in zip(idents.tolist(), counts.tolist()):
            assert per_identity[lab] == math.ceil(c / k) * k  # not padded to the largest identity
            if c >= k:  # topping up repeats an image at most once
                assert max(seen[i] for i in np.flatnonzero(labels == lab)) <= 2


def test_balanced_epochs_and_resume():
    labels, batch_size, k = CASES[0]
    s = IdentityBalancedBatchSampler(labels, batch_size, k, num_replicas=2, rank=1, seed=3)
    first = list(s)
    assert list(s) == first
    s.set_epoch(1)
    second = list(s)
    assert second != first
    it = iter(s)
    head = list(itertools.islice(it, 2))
    state = s.state_dict()
    assert state == {"epoch": 1, "start": 2}
    resumed = IdentityBalancedBatchSampler(labels, batch_size, k, num_replicas=2, rank=1, seed=3)
    resumed.load_state_dict(state)
    assert len(resumed) == len(second)  # the length is the whole epoch's, whatever the start
    assert head + list(resumed) == second
    assert list(resumed) == second
    with pytest.raises(ValueError, match="start must be in"):
        resumed.set_start(len(second) + 1)


def test_balanced_deferral_with_a_dominant_identity():
    # identity 0 has 300 groups, 300 others have one each: almost every batch must hold one group of identity 0,
    # so most of its groups are deferred; quadratic packing would still finish, but be visibly slow here.
    labels = [0] * 1200 + list(range(1, 301)) * 2
    k, batch_size = 2, 4
    s = IdentityBalancedBatchSampler(labels, batch_size, k, num_replicas=1, rank=0, seed=0)
    batches = list(s)
    for batch in batches:
        check_batch(batch, np.asarray(labels), batch_size, k)
    zeros = sum(1 for b in batches if labels[b[0]] == 0 or labels[b[2]] == 0)
    assert len(batches) >= 290 and zeros == len(batches)  # at most 300: one identity-0 group per batch
    big = [0] * 40_000 + list(range(1, 20_001))  # at most 20 000 batches of (identity 0, another)
    assert len(IdentityBalancedBatchSampler(big, 2, 1, num_replicas=1, rank=0)) >= 19_900


def test_balanced_validation():
    with pytest.raises(ValueError, match="multiple of"):
        IdentityBalancedBatchSampler([0, 1, 2, 3], 6, 4, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="cannot fill a batch"):
        IdentityBalancedBatchSampler([0, 0, 0, 1, 1, 1], 6, 2, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        IdentityBalancedBatchSampler([], 2, 1, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="integers"):
        IdentityBalancedBatchSampler([0.5, 1.0], 2, 1, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="images_per_identity"):
        IdentityBalancedBatchSampler([0, 1], 2, 0, num_replicas=1, rank=0)
    with pytest.raises(ValueError, match="fewer than num_replicas"):
        IdentityBalancedBatchSampler([0, 1, 2, 3], 2, 1, num_replicas=3, rank=0)
    with pytest.raises(ValueError, match="rank must be in"):
        IdentityBalancedBatchSampler([0, 1, 2, 3], 2, 1, num_replicas=2, rank=2)


class _Labelled(Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return i, self.labels[i]


def test_balanced_in_a_dataloader():
    labels, batch_size, k = CASES[1]
    s = IdentityBalancedBatchSampler(torch.tensor(labels), batch_size, k, num_replicas=1, rank=0)
    loader = DataLoader(_Labelled(labels), batch_sampler=s)
    assert len(loader) == len(s)
    got = [(idx.tolist(), lab.tolist()) for idx, lab in loader]
    assert [i for i, _ in got] == list(s)
    assert all(lab == [labels[i] for i in idx] for idx, lab in got)


# -- on two real ranks ----------------------------------------------------------------------------------------------
DIST_N = 30
DIST_LABELS = random_labels(5, 10, 7, spread=2)


def _distributed_worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=2)
    try:
        shuffle = DistributedShuffleSampler(DIST_N, seed=8)
        balanced = IdentityBalancedBatchSampler(DIST_LABELS, 6, 3, seed=8)
        shuffle.set_epoch(1)
        balanced.set_epoch(1)
        mine = {"world": [shuffle.num_replicas, shuffle.rank, balanced.num_replicas, balanced.rank],
                "shuffle": list(shuffle), "balanced": list(balanced)}
        gathered: list = [None, None]
        dist.all_gather_object(gathered, mine)
        if rank == 0:
            Path(folder, "gathered.json").write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


def test_two_real_ranks_read_the_process_group(tmp_path):
    ctx = torch_mp.start_processes(_distributed_worker, args=(str(tmp_path),), nprocs=2, join=False,
                                   start_method="spawn")
    deadline = time.monotonic() + 120
    try:
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "the two ranks did not finish"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = json.loads((tmp_path / "gathered.json").read_text())
    assert r0["world"] == [2, 0, 2, 0] and r1["world"] == [2, 1, 2, 1]

    assert not set(r0["shuffle"]) & set(r1["shuffle"])
    single = DistributedShuffleSampler(DIST_N, num_replicas=1, rank=0, seed=8)
    single.set_epoch(1)
    assert sorted(r0["shuffle"] + r1["shuffle"]) == sorted(single) == list(range(DIST_N))
    assert [x for pair in zip(r0["shuffle"], r1["shuffle"]) for x in pair] == list(single)

    one = IdentityBalancedBatchSampler(DIST_LABELS, 6, 3, num_replicas=1, rank=0, seed=8)
    one.set_epoch(1)
    whole = list(one)
    assert len(r0["balanced"]) == len(r1["balanced"]) == len(whole) // 2 > 0
    assert not {tuple(b) for b in r0["balanced"]} & {tuple(b) for b in r1["balanced"]}
    assert [b for pair in zip(r0["balanced"], r1["balanced"]) for b in pair] == whole[:len(whole) // 2 * 2]


# -- seed_worker ----------------------------------------------------------------------------------------------------
class _Draws(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        return info.id, torch.initial_seed(), float(np.random.rand()), random.random()


def _draw(seed: int) -> dict[int, list[tuple[int, float, float]]]:
    loader = DataLoader(_Draws(), batch_size=None, num_workers=2, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(seed))
    out: dict[int, list] = {}
    for worker, torch_seed, np_value, py_value in loader:
        out.setdefault(int(worker), []).append((int(torch_seed), np_value, py_value))
    return out


def test_seed_worker_streams():
    a, again, other = _draw(1), _draw(1), _draw(2)
    assert a == again  # same seed, same streams
    assert a[0][0][1:] != a[1][0][1:]  # different workers, different streams
    assert a[0][0][1:] != other[0][0][1:]
    for draws in a.values():  # numpy and random were seeded from the worker's torch seed, as documented
        seed = draws[0][0]
        rs = np.random.RandomState([seed & 0xFFFFFFFF, seed >> 32])
        py = random.Random(seed)
        assert [d[1:] for d in draws] == [(rs.random_sample(), py.random()) for _ in draws]

"""The classifier's layouts: the class split, centre initialisation, local vs sharded vs sampled vs DDP on 2 gloo
processes (through the public ``tface.core.classifier.testing`` harness), Partial FC's sampling and whole state."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from tface.core.classifier import Classifier, HeadOutput, MarginHead, ReduceContext, ShardedClassifier, ops
from tface.core.classifier.testing import check_heads


class Margin(MarginHead):
    """An ArcFace-style target, s = 8: enough to exercise targets held on one rank only."""

    def forward(self, b):
        rows, cols, t = b.local_targets()
        sin = torch.sqrt((1 - t * t).clamp(min=1e-7))
        return b.with_targets(rows, cols, t * math.cos(0.3) - sin * math.sin(0.3)) * 8


class Stateful(MarginHead):
    """A buffer from a global-batch statistic, a row sum over classes with gradient, and an extra loss term."""

    def __init__(self):
        super().__init__()
        self.register_buffer("t", torch.zeros(1, dtype=torch.float64))

    def forward(self, b):
        if self.training:
            with torch.no_grad():
                self.t.mul_(0.9).add_(0.1 * b.ctx.batch_mean(b.target_cos))
        # per row: the sum of squared positive cosines over every class, wherever the class is held
        penalty = b.ctx.row_sum((b.cos.clamp(min=0) ** 2).sum(dim=1)) / b.num_classes
        rows, cols, t = b.local_targets()
        logits = b.with_targets(rows, cols, t - 0.2 - self.t - penalty[rows]) * 8
        return HeadOutput(logits, extra_loss=(b.norms ** 2).mean() * 0.01)


class SubCentres(MarginHead):
    centres_per_class = 3

    def forward(self, b):
        flat = b.cos.max(dim=2).values
        rows = b.local_rows
        cols = b.target_col[rows]
        return b.with_targets(rows, cols, flat[rows, cols] - 0.3, table=flat) * 8


def test_class_split_gives_the_first_ranks_one_more():
    for c in range(1, 40):
        for w in range(1, 9):
            sizes = ops.class_split(c, w)
            assert sum(sizes) == c and sizes == [c // w + (1 if r < c % w else 0) for r in range(w)]
            ranges = [ops.shard_range(c, w, r) for r in range(w)]
            assert [hi - lo for lo, hi in ranges] == sizes
            assert all(ranges[r][1] == ranges[r + 1][0] for r in range(w - 1)) and ranges[0][0] == 0


@pytest.mark.parametrize("k", [1, 2])
def test_centres_of_a_class_do_not_depend_on_the_split(k):
    whole = ops.init_centres(0, 9000, k, 4, 0.01, seed=5)  # three init blocks
    for bounds in ([0, 4096, 9000], [0, 3, 4100, 8191, 8192, 9000], [0, 4500, 9000]):
        parts = [ops.init_centres(lo, hi, k, 4, 0.01, seed=5) for lo, hi in zip(bounds, bounds[1:])]
        assert torch.equal(torch.cat(parts), whole)
    assert whole.std().item() == pytest.approx(0.01, rel=0.05)
    assert not torch.equal(ops.init_centres(0, 10, k, 4, 0.01, seed=6), whole[:10 * k])


def test_softmax_nll_on_one_process_is_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 9, dtype=torch.float64)
    target = torch.randint(0, 9, (6,))
    expect = -torch.log_softmax(logits, 1)[torch.arange(6), target]
    assert torch.allclose(ops.softmax_nll(logits, target, ReduceContext()), expect)


def test_top1_is_the_argmax_on_one_process():
    torch.manual_seed(1)
    cos = torch.randn(20, 7)
    target = torch.randint(0, 7, (20,))
    hits = ops.top1(cos, cos[torch.arange(20), target], ReduceContext())
    assert torch.equal(hits, cos.argmax(1) == target)


def test_every_layout_equals_the_single_process_computation():
    """Sharded and sampled (rate 1) on 2 gloo processes, and local under DDP's layout, against one process:
    loss, embedding and centre gradients, top-1 and buffers over 3 steps (1e-5, float64)."""
    check_heads({"margin": Margin, "stateful": Stateful, "subcentres": SubCentres})


def test_the_harness_reports_a_head_that_reads_only_its_own_rows():
    """A head that averages over the rows it sees (not the global batch) differs under DDP's layout."""
    with pytest.raises(AssertionError, match=r"ddp, step 1: buffer 't' on rank 0"):
        check_heads({"local_mean": LocalMean}, steps=1)


class LocalMean(MarginHead):
    def __init__(self):
        super().__init__()
        self.register_buffer("t", torch.zeros(1, dtype=torch.float64))

    def forward(self, b):
        if self.training:
            with torch.no_grad():
                self.t.copy_(b.target_cos.mean())  # wrong: the local mean, not b.ctx.batch_mean
        rows, cols, t = b.local_targets()
        return b.with_targets(rows, cols, t - 0.2) * 8


def _sampled(rate: float, classes: int = 40, optimizer: str = "sgd"):
    torch.manual_seed(0)
    clf = ShardedClassifier(classes, 8, Margin(), sample_rate=rate, sampled=True, seed=1).double()
    if optimizer == "sgd":
        opt = torch.optim.SGD(clf.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    else:
        opt = torch.optim.AdamW(clf.parameters(), lr=0.01, weight_decay=0.05)
    clf.attach(opt)
    return clf, opt


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_sampled_moves_only_the_sampled_centres_and_their_state(optimizer):
    clf, opt = _sampled(0.2, optimizer=optimizer)
    g = torch.Generator().manual_seed(3)
    seen: set[int] = set()
    for _ in range(4):
        before = clf.weight.clone()
        state_before = {k: v.clone() for k, v in clf.row_state.items()}
        emb = torch.randn(6, 8, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 40, (6,), generator=g)
        opt.zero_grad()
        clf(emb, labels).loss.backward()
        sampled = set(clf._index.tolist())
        assert set(labels.tolist()) <= sampled  # positives are always kept
        assert len(sampled) == max(int(0.2 * 40), len(set(labels.tolist())))
        opt.step()
        moved = set((clf.weight != before).any(1).nonzero().view(-1).tolist())
        assert moved <= sampled and moved  # no momentum or weight-decay drift of unsampled centres
        others = sorted(set(range(40)) - sampled)
        for key, value in clf.row_state.items():
            if key in state_before:
                assert torch.equal(value[others], state_before[key][others]), key
            else:  # created at the first step: zero outside the sample
                assert not value[others].any()
        seen |= sampled
    assert len(seen) > 8  # new negatives each step


def test_sampled_rows_follow_the_optimiser_as_if_they_had_always_been_there():
    """A row sampled at steps 1 and 3 only gets exactly two SGD updates with its own momentum carried over."""
    clf, opt = _sampled(0.25, classes=8)
    clf._sample = lambda positives: torch.tensor([0, 1]) if step != 1 else torch.tensor([1, 2])  # noqa: E731
    w0 = clf.weight[0].clone()
    emb = torch.randn(2, 8, dtype=torch.float64)
    labels = torch.tensor([1, 1])
    grads = []
    for step in range(3):
        opt.zero_grad()
        clf(emb, labels).loss.backward()
        if step != 1:
            grads.append(clf.sub.grad[0].clone())
        opt.step()
    # SGD, momentum 0.9, wd 5e-4 by hand for row 0 over its two steps
    w, buf = w0.clone(), None
    for grad in grads:
        d = grad + 5e-4 * w
        buf = d if buf is None else 0.9 * buf + d
        w = w - 0.1 * buf
    assert torch.allclose(clf.weight[0], w, atol=1e-12)
    assert torch.allclose(clf.row_state["momentum_buffer"][0], buf, atol=1e-12)


def test_sampled_at_rate_one_scores_every_class():
    clf, _ = _sampled(1.0, classes=12)
    clf(torch.randn(3, 8, dtype=torch.float64), torch.tensor([0, 5, 11])).loss.backward()
    assert clf._index.tolist() == list(range(12))


def test_whole_state_moves_between_layouts():
    """A sharded rank holds its rows of the whole centres; whole states load into any layout."""

    class Rank1Of3(ReduceContext):
        world_size, rank = 3, 1

    whole = Classifier(10, 4, Margin(), seed=2).whole_state_dict()
    shard = ShardedClassifier(10, 4, Margin(), ctx=Rank1Of3(), seed=9)
    assert (shard.start, shard.stop) == ops.shard_range(10, 3, 1) == (4, 7)
    shard.load_whole_state_dict(whole)
    assert torch.equal(shard.weight, whole["weight"][4:7])
    sampled = ShardedClassifier(10, 4, Margin(), ctx=Rank1Of3(), sample_rate=0.5, seed=9)
    sampled.load_whole_state_dict(whole)
    assert torch.equal(sampled.weight, whole["weight"][4:7]) and "sub" not in sampled.state_dict()
    with pytest.raises(ValueError, match=r"weight: shape \(12, 4\) does not fit 10 classes"):
        shard.load_whole_state_dict({"weight": torch.zeros(12, 4)})


def test_sharded_on_one_process_equals_local():
    torch.manual_seed(0)
    emb = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 20, (8,))
    outs = []
    for clf in (Classifier(20, 6, Stateful(), seed=4), ShardedClassifier(20, 6, Stateful(), seed=4)):
        clf = clf.double()
        out = clf(emb, labels)
        (grad,) = torch.autograd.grad(out.loss, emb)
        outs.append((out.loss, grad, out.correct))
    assert torch.allclose(outs[0][0], outs[1][0]) and torch.allclose(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2]
    # and the local loss is the mean cross-entropy of the head's logits
    clf = Classifier(20, 6, Margin(), seed=4).double()
    logits = clf.head(clf.head_input(emb, labels))
    assert torch.allclose(clf(emb, labels).loss, F.cross_entropy(logits, labels))


def test_bad_layouts_are_refused():
    class Rows(ReduceContext):
        rows_split = True

    with pytest.raises(ValueError, match="rows_split = False"):
        ShardedClassifier(10, 4, Margin(), ctx=Rows())
    with pytest.raises(ValueError, match=r"sample_rate must lie in \(0, 1\]"):
        ShardedClassifier(10, 4, Margin(), sample_rate=0)

    class Wide(ReduceContext):
        world_size, rank = 4, 0

    with pytest.raises(ValueError, match="3 classes cannot be sharded over 4 processes"):
        ShardedClassifier(3, 4, Margin(), ctx=Wide())


# -- whole state across world sizes (2 gloo processes) -------------------------------------------------------------

_C, _D, _ROWS = 9, 5, 4  # 4 rows per process, 8 global


def _resume_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(2 * _ROWS, _D, generator=g, dtype=torch.float64), torch.randint(0, _C, (2 * _ROWS,), generator=g)


def _resume_model(ctx, sampled: bool):
    clf = ShardedClassifier(_C, _D, Margin(), ctx=ctx, seed=7, sampled=sampled, sample_rate=1.0).double()
    opt = torch.optim.SGD(clf.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    clf.attach(opt)
    return clf, opt


def _resume_steps(clf, opt, steps, rank: int, world: int) -> None:
    for step in steps:
        emb, labels = _resume_batch(step)
        rows = slice(rank * 2 * _ROWS // world, (rank + 1) * 2 * _ROWS // world)
        opt.zero_grad()
        clf(emb[rows], labels[rows]).loss.backward()
        opt.step()


def _resume_worker(rank: int, folder: str, phase: str) -> None:
    import torch.distributed as dist

    from tface.core.classifier.ops import GroupContext

    dist.init_process_group("gloo", init_method=f"file://{folder}/pg-{phase}", rank=rank, world_size=2)
    try:
        out = {}
        for sampled in (False, True):
            clf, opt = _resume_model(GroupContext(rows_split=False), sampled)
            if phase == "save":  # steps 0, 1 on 2 processes, then save the whole state
                _resume_steps(clf, opt, [0, 1], rank, 2)
            else:  # load what 1 process saved after steps 0, 1; then step 2 on 2 processes
                saved = torch.load(f"{folder}/one-{sampled}.pt", weights_only=True)
                clf.load_whole_state_dict(saved["model"])
                clf.load_whole_optimizer_state(opt, saved["optim"])
                _resume_steps(clf, opt, [2], rank, 2)
            out[sampled] = {"model": clf.whole_state_dict(), "optim": clf.whole_optimizer_state(opt)}
        if rank == 0:
            torch.save(out, f"{folder}/two-{phase}.pt")
        dist.barrier()  # rank 1 must not tear down while rank 0 still receives the last gather (gloo aborts)
    finally:
        dist.destroy_process_group()


def _spawn_phase(folder, phase: str) -> dict:
    import torch.multiprocessing as mp

    mp.start_processes(_resume_worker, args=(str(folder), phase), nprocs=2, start_method="spawn")
    return torch.load(folder / f"two-{phase}.pt", weights_only=True)


def test_whole_state_resumes_under_another_number_of_processes(tmp_path):
    """2 processes save after 2 steps, 1 process loads and takes step 3; 1 process saves, 2 load and take step 3:
    both equal 3 uninterrupted steps in 1 process (centres and momentum, sharded and sampled)."""
    ref, one_saved = {}, {}
    for sampled in (False, True):
        clf, opt = _resume_model(ReduceContext(), sampled)
        _resume_steps(clf, opt, [0, 1], 0, 1)
        one_saved[sampled] = copy.deepcopy({"model": clf.whole_state_dict(), "optim": clf.whole_optimizer_state(opt)})
        torch.save(one_saved[sampled], tmp_path / f"one-{sampled}.pt")
        _resume_steps(clf, opt, [2], 0, 1)
        ref[sampled] = (clf.weight.clone(), clf.whole_optimizer_state(opt)["momentum_buffer"])
    two_saved = _spawn_phase(tmp_path, "save")
    two_loaded = _spawn_phase(tmp_path, "load")
    for sampled in (False, True):
        # 2 processes after 2 steps = 1 process after 2 steps
        torch.testing.assert_close(two_saved[sampled]["model"]["weight"], one_saved[sampled]["model"]["weight"])
        # saved by 2, continued by 1
        clf, opt = _resume_model(ReduceContext(), sampled)
        clf.load_whole_state_dict(two_saved[sampled]["model"])
        clf.load_whole_optimizer_state(opt, two_saved[sampled]["optim"])
        _resume_steps(clf, opt, [2], 0, 1)
        torch.testing.assert_close(clf.weight, ref[sampled][0])
        torch.testing.assert_close(clf.whole_optimizer_state(opt)["momentum_buffer"], ref[sampled][1])
        # saved by 1, continued by 2
        torch.testing.assert_close(two_loaded[sampled]["model"]["weight"], ref[sampled][0])
        torch.testing.assert_close(two_loaded[sampled]["optim"]["momentum_buffer"], ref[sampled][1])


def test_loader_positions_rescale_with_the_number_of_processes():
    from tface.core.train.state import rescale_loader

    saved = {"position": 3, "branches": [{"name": "a", "epoch": 1, "batches": 3}, {"name": "b", "epoch": 0,
                                                                                 "batches": 5}]}
    assert rescale_loader(saved, 2, 1) == {"position": 6, "branches": [{"name": "a", "epoch": 1, "batches": 6},
                                                                      {"name": "b", "epoch": 0, "batches": 10}]}
    assert rescale_loader(saved, 1, 2)["branches"][1]["batches"] == 2  # 5 batches of 1 = 2.5 of 2: floor

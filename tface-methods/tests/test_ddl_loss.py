"""DDL: soft histograms against numpy, KL against the formula, teacher detachment, threshold, helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tface.core.config import ConfigError, check_options, structure, validate_options
from tface.methods.ddl_loss import DDL, hardest_negatives, kl_divergence, pair_similarities, soft_histogram


def np_histogram(values: np.ndarray, bins: int = 1000, sigma: float = 0.1) -> np.ndarray:
    grid = np.array([k * 0.001 for k in range(1000)]) if bins == 1000 else np.arange(bins) / bins
    h = np.zeros(len(grid))
    for s in values:
        h += np.exp(-0.5 * ((s - grid) / sigma) ** 2)
    return h / h.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(sum(a * (math.log(a + 1e-9) - math.log(b + 1e-9)) for a, b in zip(p, q)))


def branches(seed: int, sizes=((20, 15), (18, 12), (25, 9))):
    g = torch.Generator().manual_seed(seed)
    neg = [torch.rand(n, generator=g, dtype=torch.float64) * 0.6 - 0.1 for n, _ in sizes]
    pos = [torch.rand(p, generator=g, dtype=torch.float64) * 0.9 + 0.05 for _, p in sizes]
    return neg, pos


def test_grid_is_tface_grid():
    grid = DDL().grid(torch.zeros(1, dtype=torch.float64))
    assert grid.shape == (1000,)
    assert np.allclose(grid.numpy(), np.array([k * 0.001 for k in range(1000)]), atol=1e-15)
    assert float(grid[-1]) == pytest.approx(0.999)


@pytest.mark.parametrize("bins", [1000, 37])
def test_soft_histogram_matches_numpy(bins):
    values = torch.tensor([-0.2, 0.0, 0.31, 0.5, 0.93, 1.0], dtype=torch.float64)
    ours = soft_histogram(values, DDL(bins=bins).grid(values), 0.1)
    assert np.allclose(ours.numpy(), np_histogram(values.numpy(), bins), rtol=1e-12, atol=1e-15)
    assert float(ours.sum()) == pytest.approx(1.0)


def test_kl_matches_formula():
    p = np_histogram(np.array([0.2, 0.4, 0.45]))
    q = np_histogram(np.array([0.1, 0.7]))
    ours = kl_divergence(torch.from_numpy(p), torch.from_numpy(q))
    assert float(ours) == pytest.approx(np_kl(p, q), rel=1e-10)
    assert float(kl_divergence(torch.from_numpy(p), torch.from_numpy(p))) == 0.0


def test_loss_matches_reference():
    neg, pos = branches(0)
    pos[1][0] = -0.3  # dropped by the default threshold 0
    ddl = DDL()
    out = ddl(neg, pos)
    kept = [p.numpy()[p.numpy() > 0.0] for p in pos]
    negs = [n.numpy() for n in neg]
    pos_kl = sum(np_kl(np_histogram(kept[0]), np_histogram(kept[b])) for b in (1, 2))
    neg_kl = sum(np_kl(np_histogram(negs[0]), np_histogram(negs[b])) for b in (1, 2))
    order = sum(negs[a].mean() - kept[b].mean() for a in range(3) for b in range(3))
    ref = 0.1 * pos_kl + 0.02 * neg_kl + 0.5 * order
    assert float(out.loss) == pytest.approx(ref, rel=1e-10)
    assert np.allclose(out.neg_mean.numpy(), [n.mean() for n in negs])
    assert np.allclose(out.pos_mean.numpy(), [p.mean() for p in kept])
    assert not out.neg_mean.requires_grad and out.neg_mean.shape == (3,)


def test_identical_teacher_and_student_give_zero_kl():
    neg, pos = branches(1, sizes=((10, 8), (10, 8)))
    out = DDL(order_weight=0.0)([neg[0], neg[0].clone()], [pos[0], pos[0].clone()])
    assert float(out.loss) == 0.0


def test_no_kl_gradient_reaches_the_teacher():
    neg, pos = branches(2)
    for t in [*neg, *pos]:
        t.requires_grad_(True)
    DDL(order_weight=0.0)(neg, pos).loss.backward()
    for teacher in (neg[0], pos[0]):
        assert teacher.grad is None or torch.count_nonzero(teacher.grad) == 0
    for student in [*neg[1:], *pos[1:]]:
        assert student.grad is not None and torch.count_nonzero(student.grad) > 0


def test_teacher_gets_only_the_order_gradient():
    # the order term (TFace's, over all branch pairs) does train the teacher: d/ds = ±order_weight·B/n
    neg, pos = branches(3)
    for t in [*neg, *pos]:
        t.requires_grad_(True)
    DDL(order_weight=0.5)(neg, pos).loss.backward()
    assert torch.allclose(neg[0].grad, torch.full_like(neg[0], 0.5 * 3 / len(neg[0])))
    assert torch.allclose(pos[0].grad, torch.full_like(pos[0], -0.5 * 3 / len(pos[0])))


def test_positive_threshold_drops_values():
    neg, pos = branches(4)
    ddl = DDL(positive_threshold=0.5)
    kept = [p[p > 0.5] for p in pos]
    assert all(0 < len(k) < len(p) for k, p in zip(kept, pos))
    out = ddl(neg, pos)
    assert torch.allclose(out.loss, DDL(positive_threshold=-1.0)(neg, kept).loss, atol=1e-12)
    assert np.allclose(out.pos_mean.numpy(), [float(k.mean()) for k in kept])
    # a dropped value has no influence
    pos[1] = torch.cat([pos[1], torch.tensor([0.2, 0.45], dtype=torch.float64)])
    assert float(ddl(neg, pos).loss) == pytest.approx(float(out.loss), rel=1e-12)


def test_empty_branch_is_skipped_and_backward_works():
    neg, pos = branches(5)
    pos[2] = torch.tensor([-0.5, -0.1], dtype=torch.float64, requires_grad=True)  # all dropped
    out = DDL()(neg, pos)
    assert math.isnan(float(out.pos_mean[2])) and torch.isfinite(out.loss)
    pos_all_dropped = [torch.tensor([-0.5], dtype=torch.float64, requires_grad=True) for _ in range(2)]
    neg_empty = [torch.zeros(0, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    out = DDL()(neg_empty, pos_all_dropped)
    assert float(out.loss.detach()) == 0.0
    out.loss.backward()
    assert pos_all_dropped[0].grad is not None


def test_pair_similarities():
    torch.manual_seed(0)
    a, b = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    ref = [float(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)) for u, v in zip(a.numpy(), b.numpy())]
    assert np.allclose(pair_similarities(a, b).numpy(), ref)
    zero = torch.zeros(1, 4, dtype=torch.float64)
    assert float(pair_similarities(zero, a[:1])) == 0.0


def test_hardest_negatives_use_labels():
    torch.manual_seed(1)
    f = torch.randn(7, 3, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3])
    x = f.numpy() / np.linalg.norm(f.numpy(), axis=1, keepdims=True)
    ref = [max(float(x[i] @ x[j]) for j in range(7) if labels[j] != labels[i]) for i in range(7)]
    assert np.allclose(hardest_negatives(f, labels).numpy(), ref)


def test_hardest_negatives_are_not_clipped_and_last_row_counts():
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [0.0, 1.0]], dtype=torch.float64)
    out = hardest_negatives(f, torch.tensor([0, 1, 2]))
    assert float(out[2]) > 0  # TFace: the last row is always 0
    out = hardest_negatives(f[:2], torch.tensor([0, 1]))
    assert (out < 0).all()  # TFace would clip to 0
    assert hardest_negatives(f, torch.tensor([4, 4, 4])).shape == (0,)


def test_kind_and_options():
    assert DDL.takes == "pairs"
    assert check_options(DDL, kind="losses") == []
    d = DDL()
    assert (d.pos_kl_weight, d.neg_kl_weight, d.order_weight, d.positive_threshold, d.bins, d.sigma) == (
        0.1, 0.02, 0.5, 0.0, 1000, 0.1)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match="ddl.sigma:"):
        validate_options(DDL, {"sigma": 0.0}, "ddl")
    with pytest.raises(ConfigError, match="ddl.bins:"):
        structure(DDL.Config, {"bins": 1}, "ddl")
    with pytest.raises(ConfigError, match="ddl.pos_kl_weight:"):
        structure(DDL.Config, {"pos_kl_weight": -1.0}, "ddl")
    with pytest.raises(ConfigError, match="ddl.positive_threshold:"):
        structure(DDL.Config, {"positive_threshold": 1.5}, "ddl")
    with pytest.raises(ValueError, match="teacher"):
        DDL()([torch.zeros(3)], [torch.ones(3)])

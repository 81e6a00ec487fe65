"""Triplet loss against brute-force loops over every (anchor, positive, negative) triplet, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from tface.core.config import ConfigError, check_options, structure, validate_options
from tface.core.losses import EmbeddingLoss
from tface.heads.triplet import Triplet, pairwise_distances


def distance(u: list[float], v: list[float], squared: bool) -> float:
    sq = sum((a - b) ** 2 for a, b in zip(u, v))
    return sq if squared else math.sqrt(sq)


def rows(emb: torch.Tensor, normalize: bool) -> list[list[float]]:
    out = []
    for row in emb.tolist():
        if normalize:
            norm = math.sqrt(sum(v * v for v in row))
            row = [v / norm for v in row]
        out.append(row)
    return out


def brute(emb, labels, margin, mining, normalize=True, squared=False) -> float:
    x = rows(emb, normalize)
    y = labels.tolist()
    n = len(y)
    d = [[distance(x[i], x[j], squared) for j in range(n)] for i in range(n)]
    if mining == "hard":
        per_anchor = []
        for a in range(n):
            pos = [d[a][p] for p in range(n) if p != a and y[p] == y[a]]
            neg = [d[a][q] for q in range(n) if y[q] != y[a]]
            if pos and neg:
                per_anchor.append(max(0.0, max(pos) - min(neg) + margin))
        return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0
    active = []
    for a in range(n):
        for p in range(n):
            for q in range(n):
                if p != a and y[p] == y[a] and y[q] != y[a]:
                    value = d[a][p] - d[a][q] + margin
                    if value > 0:
                        active.append(value)
    return sum(active) / len(active) if active else 0.0


def batch(seed: int, n: int = 14, dim: int = 5, ids: int = 4):
    torch.manual_seed(seed)
    return torch.randn(n, dim, dtype=torch.float64) * 2, torch.randint(0, ids, (n,))


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.3, 1.0])
def test_matches_brute_force(mining, normalize, squared, margin):
    for seed in range(3):
        emb, labels = batch(seed)
        loss = Triplet(margin=margin, mining=mining, normalize=normalize, squared=squared)(emb, labels)
        assert float(loss) == pytest.approx(brute(emb, labels, margin, mining, normalize, squared), rel=1e-9, abs=1e-12)


def test_batch_all_in_chunks(monkeypatch):
    import tface.heads.triplet as triplet

    emb, labels = batch(7, n=11)
    whole = Triplet(mining="all", margin=0.5)(emb, labels)
    monkeypatch.setattr(triplet, "_CHUNK_ENTRIES", 11 * 11 * 3)  # 3 anchors per chunk
    assert torch.allclose(Triplet(mining="all", margin=0.5)(emb, labels), whole, atol=1e-14)
    assert float(whole) == pytest.approx(brute(emb, labels, 0.5, "all"), rel=1e-9)


def test_anchors_without_positive_are_skipped():
    emb, _ = batch(3, n=6)
    labels = torch.tensor([0, 0, 1, 2, 3, 4])  # only anchors 0 and 1 have a positive
    for mining in ("hard", "all"):
        assert float(Triplet(mining=mining)(emb, labels)) == pytest.approx(brute(emb, labels, 0.3, mining), rel=1e-9)


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5, 5]])
def test_no_valid_anchor_gives_connected_zero(mining, labels):
    emb = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    loss = Triplet(mining=mining)(emb, torch.tensor(labels))
    assert float(loss.detach()) == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(emb.grad, torch.zeros_like(emb))


def test_batch_all_without_active_triplet_is_connected_zero():
    # two well separated identities and margin 0: every triplet has loss <= 0
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], dtype=torch.float64,
                       requires_grad=True)
    loss = Triplet(mining="all", margin=0.0)(emb, torch.tensor([0, 0, 1, 1]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize("mining", ["hard", "all"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_embeddings_have_finite_gradient(mining, normalize, dtype):
    base = torch.randn(1, 8, dtype=dtype)
    emb = torch.cat([base, base, base, torch.randn(2, 8, dtype=dtype)]).requires_grad_(True)
    loss = Triplet(mining=mining, margin=0.5, normalize=normalize)(emb, torch.tensor([0, 0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_distances_and_gradient():
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    d = pairwise_distances(x)
    assert torch.allclose(d, torch.tensor([[0, 5, 0], [5, 0, 5], [0, 5, 0]], dtype=torch.float64))
    assert torch.allclose(pairwise_distances(x, squared=True), d.detach() ** 2)
    d[0, 1].backward()
    assert torch.allclose(x.grad, torch.tensor([[-0.6, -0.8], [0.6, 0.8], [0.0, 0.0]], dtype=torch.float64))


def test_gradient_matches_finite_differences():
    emb, labels = batch(11, n=8)
    emb.requires_grad_(True)
    for mining in ("hard", "all"):
        assert torch.autograd.gradcheck(lambda e, m=mining: Triplet(mining=m, margin=0.4)(e, labels), (emb,))


def test_kind_and_options():
    assert isinstance(Triplet(), EmbeddingLoss) and Triplet.takes == "embeddings"
    assert check_options(Triplet, kind="losses") == []
    t = Triplet()
    assert (t.margin, t.mining, t.normalize, t.squared) == (0.3, "hard", True, False)


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match=r"loss\[1\]\.margin:"):
        validate_options(Triplet, {"margin": -0.1}, "loss[1]")
    with pytest.raises(ConfigError, match="loss.mining:"):
        structure(Triplet.Config, {"mining": "semi"}, "loss")
    with pytest.raises(ConfigError, match="loss.normalize:"):
        structure(Triplet.Config, {"normalize": "yes"}, "loss")
    with pytest.raises(ValueError, match="mining"):
        Triplet(mining="semi")

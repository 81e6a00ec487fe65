"""ArcFace / CosFace against the formulas written out per element with the math module."""

from __future__ import annotations

import math

import pytest
import torch

from tface.core.classifier import Classifier
from tface.core.config import ConfigError, structure
from tface.heads.margins import ArcFace, CosFace


def arcface_ref(cos: float, s: float, m: float, easy: bool) -> float:
    theta = math.acos(max(-1.0, min(1.0, cos)))
    if easy:
        return s * (math.cos(theta + m) if cos > 0 else cos)
    if cos > math.cos(math.pi - m):
        return s * math.cos(theta + m)
    return s * (cos - math.sin(math.pi - m) * m)


def brute(head, cos: torch.Tensor, labels: torch.Tensor, target_fn) -> torch.Tensor:
    out = torch.empty_like(cos, dtype=torch.float64)
    for i in range(cos.shape[0]):
        for j in range(cos.shape[1]):
            c = float(cos[i, j].detach())
            out[i, j] = target_fn(c) if j == int(labels[i]) else head.s * c
    return out


def head_logits(head, emb, labels, num_classes=7, seed=0):
    torch.manual_seed(seed)
    clf = Classifier(num_classes, emb.shape[1], head).double()
    batch = clf.head_input(emb, labels)
    return batch.cos, head(batch)


@pytest.mark.parametrize("easy", [False, True])
@pytest.mark.parametrize("m", [0.5, 0.2, 1.2])
def test_arcface_matches_formula(m, easy):
    torch.manual_seed(1)
    emb = torch.randn(12, 5, dtype=torch.float64)
    labels = torch.randint(0, 7, (12,))
    head = ArcFace(s=30.0, m=m, easy_margin=easy)
    cos, logits = head_logits(head, emb, labels)
    ref = brute(head, cos, labels, lambda c: arcface_ref(c, 30.0, m, easy))
    assert torch.allclose(logits, ref, atol=1e-9)


def test_arcface_fallback_branch_is_exercised():
    # embeddings opposite to their centre: cos ≈ -1 < cos(pi - m), so the linear fallback applies
    head = ArcFace(s=10.0, m=0.5)
    torch.manual_seed(0)
    clf = Classifier(3, 4, head).double()
    emb = -clf.weight.detach()[[0, 1]].clone()
    labels = torch.tensor([0, 1])
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    for i in range(2):
        c = float(batch.cos[i, i].detach())
        assert c < math.cos(math.pi - 0.5)
        assert float(logits[i, i].detach()) == pytest.approx(10.0 * (c - math.sin(math.pi - 0.5) * 0.5), abs=1e-9)


def test_cosface_matches_formula():
    torch.manual_seed(2)
    emb = torch.randn(9, 6, dtype=torch.float64)
    labels = torch.randint(0, 7, (9,))
    head = CosFace(s=64.0, m=0.4)
    cos, logits = head_logits(head, emb, labels)
    assert torch.allclose(logits, brute(head, cos, labels, lambda c: 64.0 * (c - 0.4)), atol=1e-9)


def test_loss_is_softmax_cross_entropy_of_the_logits():
    torch.manual_seed(3)
    emb = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    clf = Classifier(5, 4, CosFace(s=16.0, m=0.3)).double()
    loss = clf(emb, labels).loss
    cos = clf.head_input(emb, labels).cos.detach()
    ref = 0.0
    for i in range(6):
        z = [16.0 * (float(cos[i, j]) - (0.3 if j == int(labels[i]) else 0.0)) for j in range(5)]
        ref += -(z[int(labels[i])] - math.log(sum(math.exp(v) for v in z)))
    assert float(loss.detach()) == pytest.approx(ref / 6, rel=1e-9)


def test_gradients_finite_at_cos_one():
    head = ArcFace(s=64.0, m=0.5)
    clf = Classifier(3, 4, head)
    emb = clf.weight.detach()[[0, 1]].clone().requires_grad_(True)  # cos exactly 1 with its own centre
    loss = clf(emb * 5, torch.tensor([0, 1])).loss
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(clf.weight.grad).all()


def test_config_validation():
    with pytest.raises(ConfigError, match="head.s:"):
        structure(ArcFace.Config, {"s": 0.0}, "head")
    with pytest.raises(ConfigError, match='head.m: expected float, got "big"'):
        structure(CosFace.Config, {"m": "big"}, "head")
    cfg = structure(ArcFace.Config, {"s": 32, "m": 0.3}, "head")
    assert ArcFace(**{"s": cfg.s, "m": cfg.m, "easy_margin": cfg.easy_margin}).s == 32.0

"""Sub-center ArcFace: ArcFace over the best of k sub-centres; only the winner gets gradient."""

from __future__ import annotations

import math

import pytest
import torch
from headref import build, loss_of

from tface.core import registry
from tface.core.config import ConfigError, check_options, structure
from tface.heads.subcenter import SubCenterArcFace


def arcface(c: float, s: float, m: float) -> float:
    if c > math.cos(math.pi - m):
        return s * math.cos(math.acos(c) + m)
    return s * (c - math.sin(math.pi - m) * m)


@pytest.mark.parametrize("k", [1, 3])
def test_matches_arcface_over_best_subcentre(k):
    head = SubCenterArcFace(s=30.0, m=0.5, k=k)
    clf, emb, labels = build(head, n=9, c=5, d=6)
    assert clf.weight.shape == (5 * k, 6)
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    assert logits.shape == (9, 5)
    unit = (emb / emb.norm(dim=1, keepdim=True)).detach()
    centres = torch.nn.functional.normalize(clf.weight.detach(), dim=1)
    for i in range(9):
        for j in range(5):
            best = max(float(unit[i] @ centres[j * k + q]) for q in range(k))  # class j's sub-centres
            ref = arcface(best, 30.0, 0.5) if j == int(labels[i]) else 30.0 * best
            assert float(logits[i, j].detach()) == pytest.approx(ref, abs=1e-9)


def test_gradient_reaches_only_the_winning_subcentre():
    head = SubCenterArcFace(s=8.0, m=0.3, k=3)
    clf, emb, labels = build(head, n=1, c=4, d=5, seed=2)
    batch = clf.head_input(emb, labels)
    y = int(labels[0])
    winner = int(batch.cos[0, y].argmax())
    head(batch)[0, y].backward()
    grad = clf.weight.grad.view(4, 3, 5)
    for q in range(3):
        assert (grad[y, q].abs().sum() > 0) == (q == winner)
    others = [j for j in range(4) if j != y]
    assert torch.all(grad[others] == 0)


def test_training_step_is_finite():
    head = SubCenterArcFace()
    clf, emb, labels = build(head)
    loss_of(clf(emb, labels)).backward()
    assert torch.isfinite(clf.weight.grad).all() and torch.isfinite(emb.grad).all()


def test_options():
    assert check_options(SubCenterArcFace, kind="heads") == []
    assert SubCenterArcFace(k=4).centres_per_class == 4
    with pytest.raises(ConfigError, match="head.k:"):
        structure(SubCenterArcFace.Config, {"k": 0}, "head")
    with pytest.raises(ConfigError, match='head.k: expected int'):
        structure(SubCenterArcFace.Config, {"k": 1.5}, "head")
    assert registry.get("heads", "subcenter_arcface") is SubCenterArcFace

"""SphereFace's ψ(θ) against the A-Softmax formula written out with the math module."""

from __future__ import annotations

import math

import pytest
import torch
from headref import build, loss_of

from tface.core.config import ConfigError, check_options, structure
from tface.heads.sphereface import SphereFace


def psi(cos: float, m: float) -> float:
    theta = math.acos(max(-1.0, min(1.0, cos)))
    k = math.floor(m * theta / math.pi)
    return (-1) ** k * math.cos(m * theta) - 2 * k


@pytest.mark.parametrize("m", [1.0, 1.7, 2.0, 4.0])
def test_matches_formula(m):
    head = SphereFace(s=20.0, m=m)
    clf, emb, labels = build(head, n=16, c=5, seed=3)
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    for i in range(16):
        for j in range(5):
            c = float(batch.cos[i, j].detach())
            ref = 20.0 * (psi(c, m) if j == int(labels[i]) else c)
            assert float(logits[i, j].detach()) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("m", [1.35, 1.7, 4.0])
def test_psi_is_continuous_and_decreasing_over_zero_to_pi(m):
    head = SphereFace(s=1.0, m=m)
    theta = torch.linspace(0.0, math.pi, 20001, dtype=torch.float64)
    values = head.target_logit(torch.cos(theta))
    assert (values[1:] <= values[:-1] + 1e-12).all()
    assert (values[1:] - values[:-1]).abs().max() < 1e-2  # no jumps at θ = kπ/m
    assert float(values[0]) == pytest.approx(1.0, abs=1e-5)  # cos is kept 1e-7 inside ±1
    assert m == 1.0 or float(values[-1]) < -1.0


def test_m_one_is_normface_and_gradients_finite_at_cos_one():
    head = SphereFace(s=8.0, m=1.0)
    clf, emb, labels = build(head)
    batch = clf.head_input(emb, labels)
    assert torch.allclose(head(batch), 8.0 * batch.cos, atol=1e-6)
    head = SphereFace(s=64.0, m=1.7)
    clf, _, _ = build(head, c=3, d=4)
    emb = (clf.weight.detach()[[0, 1]] * 5).requires_grad_(True)  # cos exactly 1 to its own centre
    loss = loss_of(clf(emb, torch.tensor([0, 1])))
    loss.backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(clf.weight.grad).all()


def test_options():
    assert check_options(SphereFace, kind="heads") == []
    with pytest.raises(ConfigError, match="head.m:"):
        structure(SphereFace.Config, {"m": 0.5}, "head")

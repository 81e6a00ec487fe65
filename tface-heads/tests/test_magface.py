"""MagFace against the paper's formulas per row (values and gradients, the norm's included)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from headref import assert_same_grads, build, loss_of, stack

from tface.core.classifier import HeadOutput
from tface.core.config import ConfigError, check_options, structure
from tface.heads.magface import MagFace
from tface.heads.margins import ArcFace


def batch_with_norms(head, seed=0, n=12, c=6):
    clf, emb, labels = build(head, n=n, c=c, seed=seed)
    with torch.no_grad():  # norms from ~3 to ~250: below l_a, inside, above u_a
        emb *= torch.logspace(0.2, 2.1, n, dtype=torch.float64).unsqueeze(1)
    return clf, emb, labels


def reference(cos, norms, labels, s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lambda_g=35.0):
    out, g = [], []
    for i in range(cos.shape[0]):
        a = norms[i].clamp(l_a, u_a)
        m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        y = int(labels[i])
        c = cos[i, y]
        row = [s * cos[i, j] for j in range(cos.shape[1])]
        if float(c.detach()) > math.cos(math.pi - float(m.detach())):
            row[y] = s * (c * torch.cos(m) - torch.sqrt(1 - c * c) * torch.sin(m))
        else:
            row[y] = s * (c - torch.sin(math.pi - m) * m)
        out.append(row)
        g.append(a / u_a**2 + 1 / a)
    return stack(out), lambda_g * torch.stack(g).mean()


def test_matches_formula_with_gradients():
    head = MagFace(s=32.0)
    clf, emb, labels = batch_with_norms(head)
    batch = clf.head_input(emb, labels)
    out = head(batch)
    assert isinstance(out, HeadOutput)
    ref, extra = reference(batch.cos, batch.norms, labels, s=32.0)
    assert torch.allclose(out.logits, ref, atol=1e-9)
    assert float(out.extra_loss.detach()) == pytest.approx(float(extra.detach()), rel=1e-12)
    assert_same_grads(out.logits, ref, [emb, clf.weight])
    g1 = torch.autograd.grad(out.extra_loss, emb, retain_graph=True)[0]
    g2 = torch.autograd.grad(extra, emb, retain_graph=True)[0]
    assert torch.allclose(g1, g2, atol=1e-12)
    # the margin depends on the norm: rows with norms inside [l_a, u_a] get a gradient along themselves
    radial = (torch.autograd.grad(out.logits.sum(), emb)[0] * emb).sum(dim=1)
    norms = batch.norms.detach()
    inside = (norms > 10) & (norms < 110)
    assert inside.any() and (radial[inside].abs() > 1e-9).all()
    assert torch.allclose(radial[~inside], torch.zeros_like(radial[~inside]), atol=1e-9)


def test_fallback_branch_with_per_row_margin():
    head = MagFace(s=10.0)
    clf, _, _ = build(head, n=2, c=3, d=4)
    emb = (-F.normalize(clf.weight.detach()[[0, 1]], dim=1) * torch.tensor([[20.0], [100.0]], dtype=torch.float64))
    labels = torch.tensor([0, 1])
    batch = clf.head_input(emb, labels)
    ref, _ = reference(batch.cos, batch.norms, labels, s=10.0)
    assert torch.allclose(head(batch).logits, ref, atol=1e-9)


def test_constant_margin_is_arcface_and_loss_adds_the_regulariser():
    head = MagFace(s=16.0, l_m=0.5, u_m=0.5)
    clf, emb, labels = batch_with_norms(head, seed=1)
    batch = clf.head_input(emb, labels)
    out = head(batch)
    assert torch.allclose(out.logits, ArcFace(s=16.0, m=0.5)(batch), atol=1e-9)
    ce = F.cross_entropy(out.logits, labels)
    assert float(loss_of(clf(emb, labels)).detach()) == pytest.approx(float((ce + out.extra_loss).detach()), rel=1e-9)


def test_options():
    assert check_options(MagFace, kind="heads") == []
    with pytest.raises(ConfigError, match=r"head.u_a: must be greater than l_a \(10.0\)"):
        structure(MagFace.Config, {"u_a": 5.0}, "head")
    with pytest.raises(ConfigError, match="head.u_m: must be at least l_m"):
        structure(MagFace.Config, {"l_m": 0.9, "u_m": 0.8}, "head")
    with pytest.raises(ConfigError, match="head.lambda_g:"):
        structure(MagFace.Config, {"lambda_g": -1.0}, "head")

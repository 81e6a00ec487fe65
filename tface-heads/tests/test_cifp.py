"""CIFP against a brute-force implementation (loops over entries, explicit detach for the centre-free part)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from headref import assert_same_grads, build, stack

from tface.core import registry
from tface.core.config import ConfigError, check_options, structure
from tface.heads.cifp import Cifp


def brute(emb, weight, labels, s, m):
    """TFace's CIFP written out; returns ``(logits, info)`` with the sets it used."""
    unit = emb / emb.norm(dim=1, keepdim=True)
    full = (unit @ F.normalize(weight, dim=1).T).clamp(-1, 1)
    detached = (unit @ F.normalize(weight.detach(), dim=1).T).clamp(-1, 1)
    n, c = full.shape
    v = full.detach().tolist()
    y = [int(label) for label in labels]
    hard = {(i, j) for i in range(n) for j in range(c) if j != y[i] and v[i][j] > v[i][y[i]]}
    ranked = sorted((v[i][j] - (2.0 if (i, j) in hard else 0.0) for i in range(n) for j in range(c) if j != y[i]),
                    reverse=True)
    k = max(1, math.ceil((n * (c - 1) - len(hard)) / (c - 1)))
    tau = ranked[k - 1] if len(ranked) >= k else ranked[-1]
    rows, info = [], {"hard": len(hard), "k": k, "full": 0, "detached": 0}
    for i in range(n):
        fp = [j for j in range(c) if j != y[i] and (i, j) not in hard and v[i][j] > tau]
        terms = []
        for j in fp:
            if v[i][j] < v[i][y[i]] - m:
                terms.append(full[i, j] ** 2)
                info["full"] += 1
            else:
                terms.append(detached[i, j] ** 2)
                info["detached"] += 1
        p = sum(terms) / max(len(fp), 1) if terms else torch.zeros((), dtype=full.dtype)
        row = [s * full[i, j] for j in range(c)]
        row[y[i]] = s * (full[i, y[i]] - m - (1 + detached[i, y[i]]) * p)
        rows.append(row)
    return stack(rows), info


def setup(head, seed, pull):
    """Random rows, pulled towards their own centre by ``pull`` (so that targets beat many negatives)."""
    clf, emb, labels = build(head, n=10, c=7, d=5, seed=seed)
    with torch.no_grad():
        emb += pull * emb.norm(dim=1, keepdim=True) * F.normalize(clf.weight[labels], dim=1)
    return clf, emb, labels


@pytest.mark.parametrize(("seed", "pull"), [(0, 0.0), (1, 0.0), (1, 0.6), (2, 0.6), (3, 1.0)])
@pytest.mark.parametrize("m", [0.35, 0.1])
def test_matches_brute_force_values_and_gradients(seed, pull, m):
    head = Cifp(s=20.0, m=m)
    clf, emb, labels = setup(head, seed, pull)
    logits = head(clf.head_input(emb, labels))
    ref, info = brute(emb, clf.weight, labels, 20.0, m)
    assert torch.allclose(logits, ref, atol=1e-9)
    assert_same_grads(logits, ref, [emb, clf.weight])


def test_both_branches_and_hard_negatives_are_exercised():
    head = Cifp(s=20.0, m=0.35)
    clf, emb, labels = setup(head, 2, 0.6)
    _, info = brute(emb, clf.weight, labels, 20.0, 0.35)
    assert info["hard"] > 0 and info["full"] > 0 and info["detached"] > 0
    assert info["k"] == math.ceil((10 * 6 - info["hard"]) / 6)


def test_detached_entries_send_no_gradient_to_centres():
    # one row, 3 classes; the negative inside the margin band (cos ≥ cos_y − m) reaches its centre only if
    # the head used the full-gradient table for it
    head = Cifp(s=1.0, m=0.35)
    clf, _, _ = build(head, n=1, c=3, d=3)
    with torch.no_grad():
        clf.weight.copy_(torch.eye(3, dtype=torch.float64))
    emb = torch.tensor([[1.0, 0.9, -2.0]], dtype=torch.float64, requires_grad=True)
    batch = clf.head_input(emb, torch.tensor([0]))
    logits = head(batch)  # cos = (0.41, 0.37, -0.82): class 1 is within m of the target, class 2 far below
    logits[0, 0].backward()
    assert torch.all(clf.weight.grad[1] == 0)  # its penalty term used the centre-detached cosine
    assert clf.weight.grad[0].abs().sum() > 0  # the target keeps its own gradient
    assert emb.grad.abs().sum() > 0


def test_options():
    assert check_options(Cifp, kind="heads") == []
    with pytest.raises(ConfigError, match="head.m:"):
        structure(Cifp.Config, {"m": -0.1}, "head")
    for name in ("cifp", "Cifp", "CIFP"):
        assert registry.get("heads", name) is Cifp

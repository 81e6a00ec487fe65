"""AdaFace against the paper's reference forward written out per element, over several training steps."""

from __future__ import annotations

import math

import pytest
import torch
from headref import assert_same_grads, build, stack

from tface.core.config import ConfigError, check_options, structure
from tface.heads.adaface import AdaFace


def batch_with_norms(head, seed, n=12, c=6):
    clf, emb, labels = build(head, n=n, c=c, seed=seed)
    with torch.no_grad():  # norms between ~2 and ~40, so the margin scaler spans [-1, 1]
        emb *= torch.linspace(0.5, 8.0, n, dtype=torch.float64).unsqueeze(1)
    return clf, emb, labels


def reference(cos, norms, labels, mean, std, s, m, h, eps):
    out = []
    for i in range(cos.shape[0]):
        safe = min(max(float(norms[i].detach()), 0.001), 100.0)
        scaler = max(-1.0, min(1.0, (safe - mean) / (std + eps) * h))
        row = [s * cos[i, j] for j in range(cos.shape[1])]
        y = int(labels[i])
        theta = torch.acos(cos[i, y].clamp(-1 + eps, 1 - eps))
        theta = (theta - m * scaler).clamp(eps, math.pi - eps)
        row[y] = s * (torch.cos(theta) - (m + m * scaler))
        out.append(row)
    return stack(out)


@pytest.mark.parametrize("t_alpha", [1.0, 0.01, 0.3])
def test_training_steps_follow_the_reference(t_alpha):
    head = AdaFace(s=30.0, m=0.4, h=0.333, t_alpha=t_alpha, eps=1e-3)
    mean, std = 20.0, 100.0
    for step in range(3):
        clf, emb, labels = batch_with_norms(head, step)
        batch = clf.head_input(emb, labels)
        logits = head(batch)
        safe = [min(max(float(v), 0.001), 100.0) for v in batch.norms.detach()]
        mu = sum(safe) / len(safe)
        sigma = math.sqrt(sum((v - mu) ** 2 for v in safe) / (len(safe) - 1))
        mean = t_alpha * mu + (1 - t_alpha) * mean  # updated before the margin is computed
        std = t_alpha * sigma + (1 - t_alpha) * std
        assert float(head.batch_mean) == pytest.approx(mean, abs=1e-10)
        assert float(head.batch_std) == pytest.approx(std, abs=1e-10)
        ref = reference(batch.cos, batch.norms, labels, mean, std, 30.0, 0.4, 0.333, 1e-3)
        assert torch.allclose(logits, ref, atol=1e-9)
        assert_same_grads(logits, ref, [emb, clf.weight])


def test_std_is_torch_std_on_one_process():
    head = AdaFace(t_alpha=1.0)
    clf, emb, labels = batch_with_norms(head, 0)
    batch = clf.head_input(emb, labels)
    head(batch)
    norms = batch.norms.detach().clamp(0.001, 100)
    assert torch.allclose(head.batch_mean, norms.mean().view(1), atol=1e-12)
    assert torch.allclose(head.batch_std, torch.std(norms).view(1), atol=1e-12)


def test_margin_scaler_is_clamped_and_norms_get_no_gradient():
    head = AdaFace(s=1.0, t_alpha=1.0)
    clf, emb, labels = batch_with_norms(head, 1)
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    scaler = ((batch.norms.detach() - head.batch_mean) / (head.batch_std + 1e-3) * 0.333)
    assert scaler.max() > 0.3 and scaler.min() < -0.3
    # only the direction of an embedding reaches the logits: the gradient is orthogonal to it
    g = torch.autograd.grad(logits.sum(), emb)[0]
    assert torch.allclose((g * emb).sum(dim=1), torch.zeros(emb.shape[0], dtype=torch.float64), atol=1e-9)


def test_eval_mode_state_dict_and_single_row_batches():
    head = AdaFace()
    clf, emb, labels = batch_with_norms(head, 2)
    head(clf.head_input(emb, labels))
    mean, std = head.batch_mean.clone(), head.batch_std.clone()
    head.eval()
    batch = clf.head_input(emb, labels)
    ref = reference(batch.cos, batch.norms, labels, float(mean), float(std), 64.0, 0.4, 0.333, 1e-3)
    assert torch.allclose(head(batch), ref, atol=1e-9)
    assert torch.equal(head.batch_mean, mean) and torch.equal(head.batch_std, std)
    state = clf.state_dict()
    assert torch.equal(state["head.batch_mean"], mean) and torch.equal(state["head.batch_std"], std)
    fresh = AdaFace().double()
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh.batch_mean, mean) and torch.equal(fresh.batch_std, std)
    head.train()
    head(clf.head_input(emb[:1], labels[:1]))  # one row: the std is undefined and kept, never nan
    assert torch.equal(head.batch_std, std) and torch.isfinite(head.batch_mean).all()


def test_options():
    assert check_options(AdaFace, kind="heads") == []
    with pytest.raises(ConfigError, match="head.t_alpha:"):
        structure(AdaFace.Config, {"t_alpha": 2.0}, "head")
    with pytest.raises(ConfigError, match="head.eps:"):
        structure(AdaFace.Config, {"eps": 0.0}, "head")

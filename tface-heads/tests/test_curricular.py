"""CurricularFace against TFace's rule written out per element, over several training steps."""

from __future__ import annotations

import math

import pytest
import torch
from headref import assert_same_grads, build, stack

from tface.core import registry
from tface.core.config import ConfigError, check_options, structure
from tface.heads.curricular import CurricularFace


def reference(cos: torch.Tensor, labels: torch.Tensor, t: float, s: float, m: float) -> torch.Tensor:
    """TFace's forward for a given ``t`` (already updated), per element with torch scalars (keeps gradients)."""
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    out = []
    for i in range(cos.shape[0]):
        y = int(labels[i])
        cy = float(cos[i, y].detach())
        ctm = math.cos(math.acos(cy) + m)
        row = []
        for j in range(cos.shape[1]):
            c = cos[i, j]
            if j == y:
                if cy > th:
                    sin = torch.sqrt(1 - c * c)
                    row.append(s * (c * math.cos(m) - sin * math.sin(m)))
                else:
                    row.append(s * (c - mm))
            elif float(c.detach()) > ctm:
                row.append(s * c * (t + c))
            else:
                row.append(s * c)
        out.append(row)
    return stack(out)


def test_several_training_steps_follow_tface():
    head = CurricularFace(s=30.0, m=0.5, alpha=0.1)
    t = 0.0
    for step in range(4):
        clf, emb, labels = build(head, n=12, c=6, seed=step, scale=1.0)
        with torch.no_grad():  # pull some embeddings towards their centre so that targets vary
            emb[:6] += 3 * torch.nn.functional.normalize(clf.weight[labels[:6]], dim=1)
        batch = clf.head_input(emb, labels)
        logits = head(batch)
        target = [float(batch.cos[i, int(labels[i])].detach()) for i in range(12)]
        t = 0.1 * sum(target) / 12 + 0.9 * t  # TFace: t ← alpha·mean(cos_y) + (1 − alpha)·t, then used
        assert float(head.t) == pytest.approx(t, abs=1e-12)
        ref = reference(batch.cos, labels, t, 30.0, 0.5)
        assert torch.allclose(logits, ref, atol=1e-9)
        assert_same_grads(logits, ref, [emb, clf.weight])
    hard = (batch.cos.detach() > torch.cos(torch.acos(batch.target_cos) + 0.5).unsqueeze(1)).sum()
    assert int(hard) > 12  # the hard-negative branch was exercised beyond the target column


def test_fallback_branch():
    head = CurricularFace(s=10.0, m=0.5)
    clf, _, _ = build(head, n=2, c=3, d=4)
    emb = -clf.weight.detach()[[0, 1]].clone()  # cos ≈ −1 with their own centres
    labels = torch.tensor([0, 1])
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    assert torch.allclose(logits, reference(batch.cos, labels, float(head.t), 10.0, 0.5), atol=1e-9)


def test_eval_mode_leaves_t_alone_and_t_is_checkpointed():
    head = CurricularFace(s=16.0, m=0.4)
    clf, emb, labels = build(head)
    head(clf.head_input(emb, labels))
    t = float(head.t)
    assert t != 0.0
    head.eval()
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    assert float(head.t) == t
    assert torch.allclose(logits, reference(batch.cos, labels, t, 16.0, 0.4), atol=1e-9)
    state = clf.state_dict()
    assert "head.t" in state and float(state["head.t"]) == t
    fresh = CurricularFace(s=16.0, m=0.4).double()
    fresh.load_state_dict(head.state_dict())
    assert float(fresh.t) == t


def test_options():
    assert check_options(CurricularFace, kind="heads") == []
    with pytest.raises(ConfigError, match="head.alpha:"):
        structure(CurricularFace.Config, {"alpha": 1.5}, "head")
    with pytest.raises(ConfigError, match="head.m:"):
        registry.create("heads", "curricularface", m=2.0)
    assert registry.get("heads", "CurricularFace") is CurricularFace

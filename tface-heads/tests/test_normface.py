"""NormFace: scaled cosines, nothing else."""

from __future__ import annotations

import pytest
import torch
from headref import build

from tface.core import registry
from tface.core.config import ConfigError, check_options, structure
from tface.heads.normface import NormFace


def test_logits_are_scaled_cosines():
    head = NormFace(s=30.0)
    clf, emb, labels = build(head)
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            assert float(logits[i, j].detach()) == pytest.approx(30.0 * float(batch.cos[i, j].detach()), abs=1e-12)


def test_options():
    assert check_options(NormFace, kind="heads") == []
    with pytest.raises(ConfigError, match="head.s:"):
        structure(NormFace.Config, {"s": -1.0}, "head")
    assert registry.get("heads", "normface") is NormFace
    assert registry.get("heads", "NormFace") is NormFace
    assert torch.equal(torch.tensor(NormFace().s), torch.tensor(64.0))

# tests/test_heads.py
import functools
import math

import pytest
import torch
from tface_head_example import CombinedMargin
from tface_head_example.ramp import RampCosFace

from tface.core.classifier import Classifier
from tface.core.classifier.testing import check_head, check_heads
from tface.core.config import check_options


@pytest.mark.parametrize("head", [CombinedMargin, RampCosFace])
def test_options_are_declared_right(head):
    assert check_options(head, kind="heads") == []


def test_combined_formula():
    torch.manual_seed(0)
    head = CombinedMargin(s=10.0, m1=0.9, m2=0.3, m3=0.1)
    clf = Classifier(4, 3, head).double()           # 4 classes, 3-d embeddings, float64
    labels = torch.tensor([0, 1, 2, 3, 0])
    batch = clf.head_input(torch.randn(5, 3, dtype=torch.float64), labels)
    logits = head(batch)
    for i in range(5):
        for j in range(4):
            c = float(batch.cos[i, j].detach())
            want = 10.0 * (math.cos(min(0.9 * math.acos(c) + 0.3, math.pi)) - 0.1) if j == labels[i] else 10.0 * c
            assert float(logits[i, j].detach()) == pytest.approx(want, abs=1e-6)


def test_ramp_moves_t_in_training_mode_only():
    head = RampCosFace(s=10.0, m=0.4, alpha=0.5)
    clf = Classifier(4, 3, head).double()
    labels = torch.tensor([0, 1, 2, 3])
    emb = torch.nn.functional.normalize(clf.weight.detach()[labels], dim=1) * 4.0  # on the centres: cos_y = 1
    out = head(clf.head_input(emb, labels))
    assert float(head.t) == pytest.approx(0.5)                                      # 0.5·0 + 0.5·1
    assert float(out.logits[0, 0].detach()) == pytest.approx(10.0 * (1.0 - 0.4 * 0.5))
    head.eval()
    head(clf.head_input(emb, labels))
    assert float(head.t) == pytest.approx(0.5)
    assert "head.t" in clf.state_dict()                                             # saved with the classifier


def test_same_numbers_in_every_layout():
    check_head(CombinedMargin)                       # sharded, sampled, DDP on 2 gloo processes vs 1 process
    check_heads({                                    # several heads share one pair of processes
        "ramp": functools.partial(RampCosFace, alpha=0.5),
        "ramp+ring": functools.partial(RampCosFace, alpha=0.5, ring_weight=0.1, ring=5.0),
    })

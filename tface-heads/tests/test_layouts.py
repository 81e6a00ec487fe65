"""Every built-in head gives the same loss, gradients, top-1 and buffers in every classifier layout.

Sharded and sampled (rate 1) on 2 gloo processes, and local classifiers under DDP's layout (each process its
own rows), against the single-process local classifier on the same global batch, over 3 training steps
(float64, 1e-5). The harness is the public ``tface.core.classifier.testing.check_heads``.
"""

from __future__ import annotations

import functools

from tface.core import registry
from tface.core.classifier.testing import check_heads
from tface.heads.adaface import AdaFace
from tface.heads.cifp import Cifp
from tface.heads.curricular import CurricularFace
from tface.heads.magface import MagFace
from tface.heads.margins import ArcFace, CosFace
from tface.heads.normface import NormFace
from tface.heads.sphereface import SphereFace
from tface.heads.subcenter import SubCenterArcFace

HEADS = {
    "arcface": ArcFace,
    "cosface": CosFace,
    "curricularface": CurricularFace,
    "normface": NormFace,
    "sphereface": SphereFace,
    # m = 0.1 and s = 16: with 11 classes some negatives pass the threshold, so the penalty is exercised
    "cifp": functools.partial(Cifp, s=16.0, m=0.1),
    "adaface": AdaFace,
    # norms of the test embeddings (about 7) lie below l_a = 10: move the band so the margin varies
    "magface": functools.partial(MagFace, l_a=2.0, u_a=12.0),
    "subcenter_arcface": SubCenterArcFace,
}


def test_the_table_covers_every_registered_head():
    assert {e.name for e in registry.entries("heads") if e.distribution == "tface-heads"} == set(HEADS)


def test_every_head_is_the_same_in_every_layout():
    check_heads(HEADS)

"""Sub-center ArcFace (Deng et al., ECCV 2020): K centres per class, each row scored by its nearest one."""

from __future__ import annotations

import math

import attrs
from torch import Tensor

from tface.core.classifier import HeadInput
from tface.core.config import option, options
from tface.heads.margins import _TargetMargin, arc_constants, arc_target

__all__ = ["SubCenterArcFace"]


@options
class SubCenterArcFace(_TargetMargin):
    """ArcFace over ``max_k cos θ_{j,k}``: each class has ``k`` centres and a row's cosine to a class is the one to
    its closest sub-centre, so noisy samples can gather round a sub-centre of their own instead of dragging
    the dominant one.

    The head declares ``centres_per_class = k`` and the classifier then holds ``C·k`` centres and hands it
    cosines ``[N, C_local, k]``; only the winning sub-centre of each entry gets gradient. The paper's later
    step (dropping non-dominant sub-centres and the samples near them) is a data-cleaning job, not part of
    the head.
    """

    def __init__(self, s: float = option(64.0, attrs.validators.gt(0)),
                 m: float = option(0.5, attrs.validators.ge(0), attrs.validators.lt(math.pi / 2)),
                 k: int = option(3, attrs.validators.ge(1))):
        super().__init__(s, m)
        self.k = int(k)
        self.centres_per_class = self.k
        self.cos_m, self.sin_m, self.th, self.mm = arc_constants(m)

    def target_logit(self, cos: Tensor) -> Tensor:
        return arc_target(cos, self.cos_m, self.sin_m, self.th, self.mm)

    def forward(self, batch: HeadInput) -> Tensor:
        flat = batch.cos.max(dim=2).values if batch.cos.dim() == 3 else batch.cos
        rows = batch.local_rows
        cols = batch.target_col[rows]
        return batch.with_targets(rows, cols, self.target_logit(flat[rows, cols]), table=flat) * self.s

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}"

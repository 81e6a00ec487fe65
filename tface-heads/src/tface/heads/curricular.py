"""CurricularFace (Huang et al., CVPR 2020): ArcFace's target, plus hard negatives weighted by a running ``t``."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from tface.core.classifier import HeadInput
from tface.core.config import option, options
from tface.heads.margins import _TargetMargin, arc_constants, arc_target, cos_plus

__all__ = ["CurricularFace"]


@options
class CurricularFace(_TargetMargin):
    """Target ``cos(θ_y + m)`` (ArcFace's form with its fallback); every negative with ``cos_j > cos(θ_y + m)``
    becomes ``cos_j · (t + cos_j)``.

    ``t`` (a persistent buffer, shape ``[1]``, starts at 0) follows the mean target cosine of the **global**
    batch: in training mode each forward first sets ``t ← α·mean(cos_y) + (1 − α)·t`` and then uses the new
    value, as TFace does. Eval mode leaves ``t`` alone (TFace updates it in eval mode too). The hard-negative
    test compares with ``cos(θ_y + m)`` before the fallback, like TFace.
    """

    def __init__(self, s: float = option(64.0, attrs.validators.gt(0)),
                 m: float = option(0.5, attrs.validators.ge(0), attrs.validators.lt(math.pi / 2)),
                 alpha: float = option(0.1, attrs.validators.ge(0), attrs.validators.le(1))):
        super().__init__(s, m)
        self.alpha = float(alpha)
        self.cos_m, self.sin_m, self.th, self.mm = arc_constants(m)
        self.register_buffer("t", torch.zeros(1))

    def target_logit(self, cos: Tensor) -> Tensor:
        return arc_target(cos, self.cos_m, self.sin_m, self.th, self.mm)

    def forward(self, batch: HeadInput) -> Tensor:
        if self.training:
            with torch.no_grad():
                mean = batch.ctx.batch_mean(batch.target_cos)
                self.t.mul_(1.0 - self.alpha).add_(self.alpha * mean.to(self.t.dtype))
        cos = batch.cos
        ctm = cos_plus(batch.target_cos, self.cos_m, self.sin_m).to(cos.dtype)  # [N], no gradient
        hard = cos.detach() > ctm.unsqueeze(1)
        t = self.t.to(cos.dtype)
        table = torch.where(hard, cos * (t + cos), cos)
        rows, cols, target = batch.local_targets()
        return batch.with_targets(rows, cols, self.target_logit(target), table=table) * self.s

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}"

"""Combined margin head (insightface): target logit ``s·(cos(m1·θ + m2) − m3)``.

ArcFace is ``(1, 0.5, 0)``, CosFace ``(1, 0, 0.35)``; mixing them is what this head is for.
"""

from __future__ import annotations

import math

import torch
from attrs.validators import ge, gt

from tface.core.classifier import HeadInput, MarginHead
from tface.core.config import option, options


@options  # the options (and their checks) are the constructor's keyword arguments
class CombinedMargin(MarginHead):
    def __init__(self, s: float = option(64.0, gt(0)), m1: float = option(1.0, gt(0)),
                 m2: float = option(0.3, ge(0)), m3: float = option(0.2, ge(0))):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

    def forward(self, batch: HeadInput) -> torch.Tensor:
        rows, cols, cos = batch.local_targets()
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        # capped at π: past it cos() would rise again and reward a worse angle
        angle = (self.m1 * theta + self.m2).clamp(max=math.pi)
        return batch.with_targets(rows, cols, torch.cos(angle) - self.m3) * self.s

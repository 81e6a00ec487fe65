"""Combined margin head (insightface): target logit ``s·(cos(m1·θ + m2) − m3)``.

ArcFace is ``(1, 0.5, 0)``, CosFace ``(1, 0, 0.35)``; mixing them is what this head is for.
"""

from __future__ import annotations

import math

import attrs
import torch

from tface.core.classifier import HeadInput, MarginHead


class CombinedMargin(MarginHead):
    @attrs.define
    class Config:
        s: float = attrs.field(default=64.0, validator=attrs.validators.gt(0))
        m1: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
        m2: float = attrs.field(default=0.3, validator=attrs.validators.ge(0))
        m3: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2):
        super().__init__()
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3

    def forward(self, batch: HeadInput) -> torch.Tensor:
        rows, cols, cos = batch.local_targets()
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        # capped at π: past it cos() would rise again and reward a worse angle
        angle = (self.m1 * theta + self.m2).clamp(max=math.pi)
        return batch.with_targets(rows, cols, torch.cos(angle) - self.m3) * self.s

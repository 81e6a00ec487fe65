"""NormFace (Wang et al. 2017): softmax over scaled cosines, no margin."""

from __future__ import annotations

import attrs
from torch import Tensor

from tface.core.classifier import HeadInput, MarginHead
from tface.core.config import option, options

__all__ = ["NormFace"]


@options
class NormFace(MarginHead):
    """Logits ``s · cos θ_j`` for every class (TFace's distfc NormFace, whose constructor was broken)."""

    def __init__(self, s: float = option(64.0, attrs.validators.gt(0))):
        super().__init__()
        self.s = float(s)

    def forward(self, batch: HeadInput) -> Tensor:
        return batch.cos * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}"

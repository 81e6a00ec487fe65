"""Classification losses: reduce the classifier's per-sample nll of the target class to a scalar.

The classifier (``tface.core.classifier``) computes ``nll_i = -log softmax(logits_i)[y_i]`` over the full class
set, however it is laid out (local, sharded across processes, sampled), and hands it over with its gradient. A
classification loss therefore only decides how the per-sample values are weighted and averaged.
"""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from tface.core.config import option, options
from tface.core.losses import ClassificationLoss

__all__ = ["Softmax", "Focal"]


class Softmax(ClassificationLoss):
    """Softmax cross-entropy: the mean of the per-sample nll (``nn.CrossEntropyLoss`` on the margin logits)."""

    def forward(self, nll: Tensor) -> Tensor:
        return nll.mean()


@options
class Focal(ClassificationLoss):
    """Focal loss (Lin et al. 2017), per sample: ``mean_i (1 − p_i)^γ · nll_i`` with ``p_i = exp(−nll_i)``.

    Each sample is down-weighted by how well it is already classified; ``gamma = 0`` is :class:`Softmax`.

    TFace v0.1.0 applies the modulation to the *batch-mean* cross-entropy instead,
    ``(1 − exp(−CE))^γ · CE`` with ``CE = mean_i nll_i``, which scales the whole batch by one factor and
    is not the loss of the paper; this class implements the paper's per-sample form.

    ``1 − p`` is computed as ``−expm1(−nll)`` (accurate when ``p`` is close to 1) and clamped to the smallest
    positive normal number of the dtype, so a sample with ``nll`` rounded to 0 (or to a tiny negative value)
    contributes 0 with a finite gradient for any ``gamma`` ≥ 0.
    """

    def __init__(self, gamma: float = option(2.0, attrs.validators.ge(0))):
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def forward(self, nll: Tensor) -> Tensor:
        if self.gamma == 0:
            return nll.mean()
        one_minus_p = (-torch.expm1(-nll)).clamp_min(torch.finfo(nll.dtype).tiny)
        return (one_minus_p.pow(self.gamma) * nll).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"

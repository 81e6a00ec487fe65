"""SphereFace / A-Softmax (Liu et al., CVPR 2017) on normalised features: target ``s · ψ(θ_y)``."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from tface.core.config import option, options
from tface.heads.margins import _TargetMargin

__all__ = ["SphereFace"]

#: cosines are kept this far inside [-1, 1] before ``acos``, whose derivative is infinite at ±1
ACOS_EPS = 1e-7


@options
class SphereFace(_TargetMargin):
    """Multiplicative angular margin: the target logit is ``s · ψ(θ_y)`` with
    ``ψ(θ) = (−1)^k cos(mθ) − 2k``, ``k = ⌊mθ/π⌋``.

    ``cos(mθ)`` alone is monotone only on ``[0, π/m]``; ψ is the paper's extension that stays continuous and
    decreasing on all of ``[0, π]``, so a larger angle never earns a larger target logit. Unlike the 2017
    paper (logit ``‖x‖ ψ(θ)`` with unnormalised features and a λ-annealed blend with softmax), features are
    L2-normalised and the scale ``s`` is fixed, as in NormFace/ArcFace-style training, so a smaller ``m``
    (default 1.7, not 4) trains without annealing. ``m ≥ 1``; ``m = 1`` is NormFace.
    """

    def __init__(self, s: float = option(64.0, attrs.validators.gt(0)), m: float = option(1.7, attrs.validators.ge(1))):
        super().__init__(s, m)

    def target_logit(self, cos: Tensor) -> Tensor:
        theta = torch.acos(cos.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS))
        k = torch.floor(self.m * theta / math.pi).detach()
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (−1)^k
        return sign * torch.cos(self.m * theta) - 2.0 * k

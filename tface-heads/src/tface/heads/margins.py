"""Additive margin heads: cosines in, scaled logits out (the head contract of ``tface.core.classifier``).

Only the target logit of each row changes; everything is then multiplied by ``s``.
"""

from __future__ import annotations

import abc
import math

import attrs
import torch
from torch import Tensor

from tface.core.classifier import HeadInput, MarginHead
from tface.core.config import option, options

__all__ = ["ArcFace", "CosFace", "arc_constants", "cos_plus", "arc_target"]

_positive = attrs.validators.gt(0)

#: floor of ``1 − cos²`` under the square root: ``d sinθ / d cos`` stays finite at |cos| = 1 (TFace has none)
SIN2_MIN = 1e-7


def arc_constants(m: float) -> tuple[float, float, float, float]:
    """``(cos m, sin m, th, mm)`` for :func:`arc_target`: ``th = cos(π − m)``, ``mm = sin(π − m)·m``."""
    return math.cos(m), math.sin(m), math.cos(math.pi - m), math.sin(math.pi - m) * m


def cos_plus(cos: Tensor, cos_m: float | Tensor, sin_m: float | Tensor) -> Tensor:
    """``cos(θ + m)`` from ``cos θ`` (θ ∈ [0, π]), with ``1 − cos²`` clamped before the square root."""
    sin = torch.sqrt((1.0 - cos * cos).clamp(min=SIN2_MIN))
    return cos * cos_m - sin * sin_m


def arc_target(cos: Tensor, cos_m: float | Tensor, sin_m: float | Tensor,
               th: float | Tensor, mm: float | Tensor) -> Tensor:
    """ArcFace's target ``cos(θ + m)``, or ``cos θ − mm`` where ``cos θ ≤ th`` (θ + m would pass π).

    The fallback keeps the logit monotone in θ. The constants come from :func:`arc_constants`; they may
    also be tensors broadcasting against ``cos`` (MagFace's per-row margin).
    """
    return torch.where(cos > th, cos_plus(cos, cos_m, sin_m), cos - mm)


class _TargetMargin(MarginHead):
    """Shared plumbing: replace each local target cosine by ``target_logit(cos)``, then scale."""

    def __init__(self, s: float, m: float):
        super().__init__()
        self.s = float(s)
        self.m = float(m)

    @abc.abstractmethod
    def target_logit(self, cos: Tensor) -> Tensor:
        """The margin-adjusted target cosine (before scaling)."""

    def forward(self, batch: HeadInput) -> Tensor:
        rows, cols, target = batch.local_targets()
        return batch.with_targets(rows, cols, self.target_logit(target)) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}"


@options
class ArcFace(_TargetMargin):
    """ArcFace (Deng et al. 2019): target ``cos(θ + m)``.

    Where ``θ + m`` would pass π the logit falls back to ``cos θ − m·sin m``, which keeps it monotone in θ
    (TFace and insightface do the same). ``sin θ`` is clamped so the gradient stays finite at |cos| = 1.
    """

    def __init__(self, s: float = option(64.0, _positive),
                 m: float = option(0.5, attrs.validators.ge(0), attrs.validators.lt(math.pi / 2)),
                 easy_margin: bool = False):
        super().__init__(s, m)
        self.easy_margin = bool(easy_margin)
        self.cos_m, self.sin_m, self.th, self.mm = arc_constants(m)

    def target_logit(self, cos: Tensor) -> Tensor:
        if self.easy_margin:
            return torch.where(cos > 0, cos_plus(cos, self.cos_m, self.sin_m), cos)
        return arc_target(cos, self.cos_m, self.sin_m, self.th, self.mm)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", easy_margin={self.easy_margin}"


@options
class CosFace(_TargetMargin):
    """CosFace / AM-Softmax (Wang et al. 2018): target ``cos θ − m``."""

    def __init__(self, s: float = option(64.0, _positive), m: float = option(0.4, attrs.validators.ge(0))):
        super().__init__(s, m)

    def target_logit(self, cos: Tensor) -> Tensor:
        return cos - self.m

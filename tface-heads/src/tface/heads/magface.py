"""MagFace (Meng et al., CVPR 2021): an ArcFace margin that grows with the embedding norm, plus a norm regulariser."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from tface.core.classifier import HeadInput, HeadOutput, MarginHead
from tface.core.config import option, options
from tface.heads.margins import arc_target

__all__ = ["MagFace"]

_positive = attrs.validators.gt(0)


def _above(other: str, strict: bool = True):
    """Validator: the value must exceed (or, not ``strict``, equal) option ``other`` of the same table."""
    def check(instance, attribute, value):
        low = getattr(instance, other)
        if value < low or (strict and value == low):
            raise ValueError(f"must be {'greater than' if strict else 'at least'} {other} ({low}), got {value}")
    return check


@options
class MagFace(MarginHead):
    """Target ``cos(θ_y + m(a))`` (ArcFace's form and fallback) with ``a = clamp(‖x‖, l_a, u_a)`` and
    ``m(a) = l_m + (u_m − l_m)·(a − l_a)/(u_a − l_a)``; extra loss ``λ_g · mean g(a)``, ``g(a) = a/u_a² + 1/a``.

    ``a`` keeps its gradient, so the norm is pushed up by the margin term and held by ``g``: the norm of a
    trained embedding measures its quality. The extra loss is the mean over the rows this head sees (all
    rows of the global batch when classes are sharded, this process's rows under DDP); the classifier
    makes either the mean over the global batch. Defaults are the paper's (insightface/MagFace repository).
    """

    def __init__(self, s: float = option(64.0, _positive),
                 l_a: float = option(10.0, _positive), u_a: float = option(110.0, _above("l_a")),
                 l_m: float = option(0.45, attrs.validators.ge(0)),
                 u_m: float = option(0.8, _above("l_m", strict=False), attrs.validators.lt(math.pi / 2)),
                 lambda_g: float = option(35.0, attrs.validators.ge(0))):
        super().__init__()
        if not (0 < l_a < u_a) or not (0 <= l_m <= u_m):
            raise ValueError(f"MagFace needs 0 < l_a < u_a and 0 <= l_m <= u_m, got l_a={l_a}, u_a={u_a}, "
                             f"l_m={l_m}, u_m={u_m}")
        self.s, self.l_a, self.u_a, self.l_m, self.u_m = float(s), float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)

    def margin(self, a: Tensor) -> Tensor:
        """``m(a)`` for clamped norms ``a``."""
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def forward(self, batch: HeadInput) -> HeadOutput:
        cos = batch.cos
        a = batch.norms.to(cos.dtype).clamp(self.l_a, self.u_a)
        rows, cols, target = batch.local_targets()
        m = self.margin(a[rows])
        new = arc_target(target, torch.cos(m), torch.sin(m), torch.cos(math.pi - m), torch.sin(math.pi - m) * m)
        logits = batch.with_targets(rows, cols, new) * self.s
        g = a / self.u_a**2 + 1.0 / a
        return HeadOutput(logits, self.lambda_g * g.mean())

    def extra_repr(self) -> str:
        return (f"s={self.s}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
                f"lambda_g={self.lambda_g}")

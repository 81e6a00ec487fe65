"""AdaFace (Kim et al., CVPR 2022): a margin that adapts to image quality, read off the embedding norm."""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

from tface.core.classifier import HeadInput, MarginHead
from tface.core.config import option, options

__all__ = ["AdaFace"]

_positive = attrs.validators.gt(0)


@options
class AdaFace(MarginHead):
    """Target ``cos(θ' ) − (m + m·ŝ)`` with ``θ' = clamp(θ − m·ŝ, ε, π − ε)``; the other logits are ``s·cos``.

    ``ŝ = clamp(h · (‖x‖ − μ)/(σ + ε), −1, 1)`` is the row's normalised embedding norm (norms clamped to
    [0.001, 100], no gradient): high-norm (good quality) rows get an ArcFace-like angular margin, low-norm
    rows a CosFace-like one that leaves hard samples alone. ``μ`` and ``σ`` are persistent buffers
    (``batch_mean`` from 20, ``batch_std`` from 100) that, in training mode, move by ``t_alpha`` towards the
    mean and the unbiased standard deviation of the norms of the **global** batch before the margin is
    computed. Eval mode leaves them alone.
    """

    def __init__(self, s: float = option(64.0, _positive),
                 m: float = option(0.4, attrs.validators.ge(0), attrs.validators.lt(math.pi / 2)),
                 h: float = option(0.333, attrs.validators.ge(0)),
                 t_alpha: float = option(0.01, attrs.validators.ge(0), attrs.validators.le(1)),
                 eps: float = option(1e-3, _positive, attrs.validators.lt(0.5))):
        super().__init__()
        self.s, self.m, self.h, self.t_alpha, self.eps = float(s), float(m), float(h), float(t_alpha), float(eps)
        self.register_buffer("batch_mean", torch.full((1,), 20.0))
        self.register_buffer("batch_std", torch.full((1,), 100.0))

    @torch.no_grad()
    def _update(self, batch: HeadInput, norms: Tensor) -> None:
        """Move the running mean/std towards those of the global batch (two passes: no cancellation)."""
        ctx = batch.ctx
        n = ctx.batch_size(norms.numel())
        mean = ctx.batch_mean(norms)
        self.batch_mean.mul_(1.0 - self.t_alpha).add_(self.t_alpha * mean.to(self.batch_mean.dtype))
        if n < 2:  # the unbiased std of one value is undefined (torch.std gives nan): keep σ
            return
        var = ctx.batch_mean((norms - mean) ** 2) * (n / (n - 1))
        self.batch_std.mul_(1.0 - self.t_alpha).add_(self.t_alpha * var.sqrt().to(self.batch_std.dtype))

    def forward(self, batch: HeadInput) -> Tensor:
        cos = batch.cos
        norms = batch.norms.detach().clamp(0.001, 100.0)
        if self.training:
            self._update(batch, norms)
        mean, std = self.batch_mean.to(cos.dtype), self.batch_std.to(cos.dtype)
        scaler = ((norms.to(cos.dtype) - mean) / (std + self.eps) * self.h).clamp(-1.0, 1.0)
        rows, cols, target = batch.local_targets()
        g = self.m * scaler[rows]
        theta = torch.acos(target.clamp(-1.0 + self.eps, 1.0 - self.eps))
        theta = (theta - g).clamp(self.eps, math.pi - self.eps)
        return batch.with_targets(rows, cols, torch.cos(theta) - (self.m + g)) * self.s

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"

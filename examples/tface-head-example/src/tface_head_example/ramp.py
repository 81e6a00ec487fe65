"""A head with state: CosFace whose margin ramps up as the model learns, plus an optional ring loss.

Target logit ``s·(cos θ_y − m·t)``. ``t`` is a persistent buffer (starts at 0, saved in the run checkpoint
with the classifier): each training forward first sets ``t ← (1 − α)·t + α·clamp(mean cos θ_y, 0, 1)``, the
mean over the **global** batch, then uses it. Early on (``t ≈ 0``) there is almost no margin; as target
cosines grow, the margin approaches ``m``. With ``ring_weight > 0`` it adds the ring loss
``ring_weight/2 · mean (‖x‖ − ring)²``, which pulls embedding norms towards ``ring``.
"""

from __future__ import annotations

import torch
from attrs.validators import ge, gt, le

from tface.core.classifier import HeadInput, HeadOutput, MarginHead
from tface.core.config import option, options


@options
class RampCosFace(MarginHead):
    def __init__(self, s: float = option(64.0, gt(0)), m: float = option(0.35, ge(0)),
                 alpha: float = option(0.01, ge(0), le(1)), ring_weight: float = option(0.0, ge(0)),
                 ring: float = option(20.0, gt(0))):
        super().__init__()
        self.s, self.m, self.alpha, self.ring_weight, self.ring = s, m, alpha, ring_weight, ring
        self.register_buffer("t", torch.zeros(1))  # persistent: part of state_dict, hence of checkpoints

    def forward(self, batch: HeadInput) -> HeadOutput:
        if self.training:  # eval mode uses t as it is
            with torch.no_grad():
                # the same number on every process, in every layout: the mean over the global batch
                mean = batch.ctx.batch_mean(batch.target_cos).clamp(0, 1)
                self.t.mul_(1 - self.alpha).add_(self.alpha * mean.to(self.t.dtype))
        rows, cols, cos = batch.local_targets()  # only the target entries this process holds
        logits = batch.with_targets(rows, cols, cos - self.m * self.t.to(cos.dtype)) * self.s
        if self.ring_weight == 0:
            return HeadOutput(logits)
        # a mean over the rows this head sees; the classifier counts its gradient once when sharded
        ring = self.ring_weight / 2 * (batch.norms - self.ring).pow(2).mean()
        return HeadOutput(logits, ring)

    def extra_repr(self) -> str:
        return f"s={self.s}, m={self.m}, alpha={self.alpha}, ring_weight={self.ring_weight}, ring={self.ring}"

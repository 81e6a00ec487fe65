"""CIFP, "Consistent Instance False Positive" (Xu et al., CVPR 2021), after TFace's ``localfc/cifp.py``."""

from __future__ import annotations

import attrs
import torch
from torch import Tensor

from tface.core.classifier import HeadInput
from tface.core.config import option, options
from tface.heads.margins import _TargetMargin

__all__ = ["Cifp"]


def _count(x: Tensor) -> int:
    return int(x.sum().item())


@options
class Cifp(_TargetMargin):
    """CosFace's target ``cos θ_y − m``, minus a penalty for each row's *instance false positives*.

    1. ``H``: the negatives (non-target entries) already above their own row's target cosine.
    2. One threshold ``τ`` for the whole global batch at a false-accept rate ``FAR = 1/(C − 1)``:
       ``k = ⌈FAR · (N·(C − 1) − |H|)⌉`` (at least 1; computed in integers, so it never rounds up by one
       ulp), and ``τ`` is the ``k``-th largest negative cosine of the global table, with the ``H`` entries
       lowered by 2 so they rank last (the smallest one when fewer than ``k`` negatives exist).
    3. ``F_i``: row ``i``'s negatives outside ``H`` above ``τ``. Each contributes ``cos_ij²``, with gradient
       to centre and embedding when ``cos_ij < cos θ_iy − m``, otherwise with the centre detached.
       ``p_i`` is their mean (0 when ``F_i`` is empty).
    4. Target ``cos θ_iy − m − (1 + cos θ_iy|centre detached) · p_i``; everything times ``s``.

    ``|H|``, ``N``, ``τ`` and the per-row sums are global (``ctx.sum``, ``ctx.batch_size``, ``ctx.gather``,
    ``ctx.row_sum``), so the logits are the same whether classes or rows are split over processes. TFace
    needs CUDA and a process group even on one GPU; this head needs neither.
    """

    def __init__(self, s: float = option(64.0, attrs.validators.gt(0)),
                 m: float = option(0.35, attrs.validators.ge(0))):
        super().__init__(s, m)

    def target_logit(self, cos: Tensor) -> Tensor:  # without the false-positive penalty
        return cos - self.m

    def forward(self, batch: HeadInput) -> Tensor:
        ctx, cos = batch.ctx, batch.cos
        n, c_local = cos.shape
        rows, cols, target = batch.local_targets()
        is_target = torch.zeros(n, c_local, dtype=torch.bool, device=cos.device)
        is_target[rows, cols] = True
        negative = ~is_target
        with torch.no_grad():
            plain = cos.detach()
            target_cos = batch.target_cos.to(plain.dtype).unsqueeze(1)
            hard = negative & (plain > target_cos)
            n_hard = _count(ctx.sum(hard.sum().to(torch.float64).view(1)))
            n_global = ctx.batch_size(n)
            per_class = batch.num_classes - 1
            k = max(1, -(-(n_global * per_class - n_hard) // per_class))  # ⌈(N·(C−1) − |H|) / (C−1)⌉
            ranked = (plain - 2.0 * hard.to(plain.dtype))[negative]
            local_top = ranked.topk(min(k, ranked.numel())).values
            candidates = torch.cat([t.to(plain.dtype) for t in ctx.gather(local_top)])
            if candidates.numel() == 0:  # no negatives anywhere (cannot happen with C ≥ 2)
                tau = plain.new_tensor(float("inf"))
            elif candidates.numel() >= k:
                tau = candidates.topk(k).values[-1]
            else:
                tau = candidates.min()
            false_pos = negative & ~hard & (plain > tau)
            full_grad = plain < target_cos - self.m
        detached = batch.cos_detached()
        fp = false_pos.to(cos.dtype)
        value = torch.where(full_grad, cos, detached)
        penalty = ctx.row_sum((fp * value * value).sum(dim=1))
        count = ctx.row_sum(fp.sum(dim=1).detach())
        p = penalty / count.clamp(min=1.0)
        new_target = target - self.m - (1.0 + detached[rows, cols]) * p[rows]
        return batch.with_targets(rows, cols, new_target) * self.s

"""DDL, the distribution distillation loss (Huang et al., ECCV 2020), for training methods.

DDL trains on several data *branches* at once: branch 0 is the teacher (easy data, e.g. frontal faces),
branches 1.. are students (hard data: profile faces, low resolution, ...). For each branch it takes the
similarities of positive pairs (two images of one identity) and of negative pairs, turns each set into a soft
histogram, and pulls every student histogram towards the teacher's (a KL divergence per sign), plus an *order*
term that pushes negative similarities below positive ones.

It consumes pair similarities, not nll or embeddings, so it is not a ``[[loss]]`` of a recipe
(``takes = "pairs"``): a training method builds the pairs, calls :func:`pair_similarities` and
:func:`hardest_negatives`, and adds the loss.

Differences to TFace v0.1.0 (``torchkit/loss/ddl.py``), all documented bugs there:

- the teacher histograms are **detached** (they are the KL target); TFace back-propagates the KL into the
  teacher branch as well;
- ``positive_threshold`` is **used**: positive similarities ``<= positive_threshold`` are dropped (TFace stores
  the option but always drops ``<= 0``);
- :func:`hardest_negatives` uses the labels: the most similar sample of *another identity*, which may be
  negative. TFace takes the row maximum of the upper triangle of the cosine matrix, which assumes all samples
  are of different identities, clips every value to ``>= 0`` and always gives 0 for the last sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tface.core.config import option, options

__all__ = ["DDL", "DDLResult", "pair_similarities", "hardest_negatives", "soft_histogram", "kl_divergence"]

_EPS = 1e-12  # of the L2 normalisation
_KL_EPS = 1e-9  # inside the logs of the KL divergence (TFace's value)


def pair_similarities(first: Tensor, second: Tensor) -> Tensor:
    """Cosine similarity ``[P]`` of each pair ``(first[i], second[i])`` of ``[P, D]`` features.

    Rows are L2-normalised with an epsilon (a zero row has similarity 0, not NaN).
    """
    if first.shape != second.shape or first.dim() != 2:
        raise ValueError(f"expected two [P, D] tensors of one shape, got {tuple(first.shape)} "
                         f"and {tuple(second.shape)}")
    return (F.normalize(first, dim=1, eps=_EPS) * F.normalize(second, dim=1, eps=_EPS)).sum(1)


def hardest_negatives(features: Tensor, labels: Tensor) -> Tensor:
    """For each sample of ``features [N, D]``, the largest cosine to a sample with a different label: ``[N]``.

    A sample has a negative unless all ``N`` labels are equal, so the result is ``[N]``, or ``[0]`` for a batch
    of one identity. Values may be negative (nothing is clipped), and the gradient reaches both samples of
    each hardest pair. (TFace's upper-triangle trick instead assumes N distinct identities, clips at 0 and
    always returns 0 for the last sample.)
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"expected features [N, D] and labels [N], got {tuple(features.shape)} "
                         f"and {tuple(labels.shape)}")
    x = F.normalize(features, dim=1, eps=_EPS)
    cos = x @ x.t()
    labels = labels.to(features.device)
    same = labels[:, None] == labels[None, :]
    has_negative = (~same).any(1)
    return cos.masked_fill(same, float("-inf")).amax(1)[has_negative]


def soft_histogram(values: Tensor, grid: Tensor, sigma: float) -> Tensor:
    """``h(t) = Σ_i exp(−½((s_i − t)/σ)²)`` on ``grid``, normalised to sum 1 (``values`` must not be empty)."""
    h = torch.exp(-0.5 * ((values[:, None] - grid[None, :]) / sigma) ** 2).sum(0)
    return h / h.sum()


def kl_divergence(target: Tensor, other: Tensor) -> Tensor:
    """``KL(target ‖ other) = Σ target·(log(target + 1e-9) − log(other + 1e-9))`` of two histograms."""
    return (target * (torch.log(target + _KL_EPS) - torch.log(other + _KL_EPS))).sum()


class DDLResult(NamedTuple):
    """What :meth:`DDL.forward` returns.

    ``neg_mean``/``pos_mean`` are ``[B]`` detached per-branch means of the negative and of the kept positive
    similarities, for logging (NaN for a branch with none).
    """

    loss: Tensor
    neg_mean: Tensor
    pos_mean: Tensor


_nonneg = attrs.validators.ge(0)


@options
class DDL(nn.Module):
    """Distribution distillation loss over branches ``0`` (teacher) and ``1..B−1`` (students).

    With ``P⁺_b``/``P⁻_b`` the soft histograms of branch ``b``'s positive/negative similarities::

        loss = pos_kl_weight · Σ_{b≥1} KL(P⁺_0 ‖ P⁺_b) + neg_kl_weight · Σ_{b≥1} KL(P⁻_0 ‖ P⁻_b)
             + order_weight · Σ_{a=0..B−1} Σ_{b=0..B−1} (mean S⁻_a − mean S⁺_b)

    - Positive similarities ``<= positive_threshold`` are dropped before everything else.
    - The histogram grid is ``t = k / bins`` for ``k = 0 .. bins−1`` (TFace: 0, 0.001, …, 0.999) with a
      Gaussian kernel of width ``sigma``; similarities below 0 reach it only through the kernel's tail.
    - The teacher histograms ``P⁺_0``, ``P⁻_0`` are detached: the KL terms move only the students.
    - The order term is TFace's: it runs over **all** pairs of a negative branch ``a`` and a positive branch
      ``b``, the same branch and the teacher included, so it equals
      ``order_weight · B · (Σ_a mean S⁻_a − Σ_b mean S⁺_b)``, and it does train the teacher branch
      (it is a ranking term, not a distillation target).
    - A branch whose similarity set is empty (e.g. every positive dropped by the threshold) contributes no KL
      and no order term of that sign; an empty teacher set disables that KL term for the batch.
    """

    takes = "pairs"

    def __init__(self, pos_kl_weight: float = option(0.1, _nonneg), neg_kl_weight: float = option(0.02, _nonneg),
                 order_weight: float = option(0.5, _nonneg),
                 positive_threshold: float = option(0.0, attrs.validators.ge(-1.0), attrs.validators.lt(1.0)),
                 bins: int = option(1000, attrs.validators.ge(2)), sigma: float = option(0.1, attrs.validators.gt(0))):
        super().__init__()
        if min(pos_kl_weight, neg_kl_weight, order_weight) < 0 or not sigma > 0 or bins < 2:
            raise ValueError("DDL needs weights >= 0, sigma > 0 and bins >= 2")
        self.pos_kl_weight = float(pos_kl_weight)
        self.neg_kl_weight = float(neg_kl_weight)
        self.order_weight = float(order_weight)
        self.positive_threshold = float(positive_threshold)
        self.bins = int(bins)
        self.sigma = float(sigma)

    def grid(self, like: Tensor) -> Tensor:
        """The histogram grid ``k / bins``, ``k = 0 .. bins−1``, in the dtype and on the device of ``like``."""
        return torch.arange(self.bins, dtype=like.dtype, device=like.device) / self.bins

    def _kl_sum(self, branches: list[Tensor]) -> Tensor | None:
        """``Σ_{b≥1} KL(P_0 ‖ P_b)`` with ``P_0`` detached, over the non-empty student branches."""
        teacher = branches[0]
        if teacher.numel() == 0:
            return None
        grid = self.grid(teacher)
        target = soft_histogram(teacher.detach(), grid, self.sigma)
        terms = [kl_divergence(target, soft_histogram(s, grid, self.sigma)) for s in branches[1:] if s.numel()]
        return torch.stack(terms).sum() if terms else None

    def forward(self, neg: Sequence[Tensor], pos: Sequence[Tensor]) -> DDLResult:
        """``neg[b]``: ``[n_b]`` negative-pair similarities of branch ``b``; ``pos[b]``: ``[p_b]`` positive ones."""
        if len(neg) != len(pos) or len(neg) < 2:
            raise ValueError(f"DDL needs one negative and one positive similarity tensor per branch, teacher and at "
                             f"least one student; got {len(neg)} negative and {len(pos)} positive")
        if any(t.dim() != 1 for t in [*neg, *pos]):
            raise ValueError("DDL takes 1-D similarity tensors, one per branch")
        neg = list(neg)
        pos = [p[p > self.positive_threshold] for p in pos]
        loss = neg[0].new_zeros(())
        for weight, branches in ((self.pos_kl_weight, pos), (self.neg_kl_weight, neg)):
            if weight:
                kl = self._kl_sum(branches)
                if kl is not None:
                    loss = loss + weight * kl
        neg_means = [n.mean() if n.numel() else None for n in neg]
        pos_means = [p.mean() if p.numel() else None for p in pos]
        if self.order_weight:
            order = [a - b for a in neg_means if a is not None for b in pos_means if b is not None]
            if order:
                loss = loss + self.order_weight * torch.stack(order).sum()
        if not loss.requires_grad:  # every term skipped: keep backward() working (with zero gradients)
            loss = loss + sum(t.sum() * 0.0 for t in [*neg, *pos])

        def logged(means: list[Tensor | None]) -> Tensor:
            nan = neg[0].new_tensor(float("nan"))
            return torch.stack([nan if m is None else m.detach() for m in means])

        return DDLResult(loss, logged(neg_means), logged(pos_means))

    def extra_repr(self) -> str:
        return (f"pos_kl_weight={self.pos_kl_weight}, neg_kl_weight={self.neg_kl_weight}, "
                f"order_weight={self.order_weight}, positive_threshold={self.positive_threshold}, "
                f"bins={self.bins}, sigma={self.sigma}")

"""Triplet loss on one process's embeddings, with batch-hard or batch-all mining (Hermans et al. 2017).

For anchor ``a``, a positive ``p`` (same label, ``p ≠ a``) and a negative ``n`` (another label) the triplet
loss is ``relu(d(a, p) − d(a, n) + margin)``. Which triplets are averaged is the ``mining`` option:

- ``"hard"``: per anchor, its farthest positive and its nearest negative; the mean over anchors that have at
  least one positive and one negative;
- ``"all"``: every valid triplet; the mean over those with a positive loss (0 when there is none).

Differences to TFace v0.1.0 (``torchkit/loss/triplet_loss.py``, not registered there): the masks are boolean
and built on the embeddings' device (TFace's uint8 masks live on the CPU and fail for CUDA embeddings); batch
hard skips anchors without a positive or without a negative instead of counting them; embeddings are
L2-normalised first by default (``normalize``).
"""

from __future__ import annotations

from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor

from tface.core.config import option, options
from tface.core.losses import EmbeddingLoss

__all__ = ["Triplet", "pairwise_distances"]

#: Batch-all works through the [anchors, N, N] triplet tensor in chunks of at most this many entries.
_CHUNK_ENTRIES = 1 << 24


def pairwise_distances(x: Tensor, squared: bool = False) -> Tensor:
    """Euclidean distances ``[N, N]`` between the rows of ``x`` from its Gram matrix.

    Squared distances ``|x_i|² + |x_j|² − 2 x_i·x_j`` are clamped at 0 (rounding can make them negative). The
    square root is taken only of positive entries: an entry that is 0 (identical embeddings, the diagonal)
    is 0 with gradient 0, where ``sqrt`` would give an infinite (then NaN) gradient.
    """
    gram = x @ x.t()
    sq_norm = gram.diagonal()
    sq = (sq_norm[:, None] + sq_norm[None, :] - 2.0 * gram).clamp_min(0.0)
    if squared:
        return sq
    zero = sq == 0
    return torch.where(zero, torch.zeros_like(sq), torch.sqrt(torch.where(zero, torch.ones_like(sq), sq)))


def _connected_zero(embeddings: Tensor) -> Tensor:
    """A 0 that is still part of the graph of ``embeddings``, so that ``backward()`` works (giving 0 gradients)."""
    return embeddings.sum() * 0.0


@options
class Triplet(EmbeddingLoss):
    """Triplet loss with ``margin`` on (by default L2-normalised) embeddings; ``mining`` is "hard" or "all".

    ``squared`` uses squared Euclidean distances. Labels are compared as given (any integer ids).
    """

    def __init__(self, margin: float = option(0.3, attrs.validators.ge(0)),
                 mining: Literal["hard", "all"] = "hard", normalize: bool = True, squared: bool = False):
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        if mining not in ("hard", "all"):
            raise ValueError(f'mining must be "hard" or "all", got {mining!r}')
        self.margin = float(margin)
        self.mining = mining
        self.normalize = bool(normalize)
        self.squared = bool(squared)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        if embeddings.dim() != 2 or labels.shape != embeddings.shape[:1]:
            raise ValueError(f"expected embeddings [N, D] and labels [N], got {tuple(embeddings.shape)} "
                             f"and {tuple(labels.shape)}")
        x = F.normalize(embeddings, dim=1, eps=1e-12) if self.normalize else embeddings
        dist = pairwise_distances(x, squared=self.squared)
        labels = labels.to(embeddings.device)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=embeddings.device)
        positive = same & ~eye
        negative = ~same
        if self.mining == "hard":
            loss = self._batch_hard(dist, positive, negative)
        else:
            loss = self._batch_all(dist, positive, negative)
        return _connected_zero(embeddings) if loss is None else loss

    def _batch_hard(self, dist: Tensor, positive: Tensor, negative: Tensor) -> Tensor | None:
        valid = positive.any(1) & negative.any(1)
        if not bool(valid.any()):
            return None
        dist, positive, negative = dist[valid], positive[valid], negative[valid]
        hardest_positive = dist.masked_fill(~positive, float("-inf")).amax(1)
        hardest_negative = dist.masked_fill(~negative, float("inf")).amin(1)
        return torch.relu(hardest_positive - hardest_negative + self.margin).mean()

    def _batch_all(self, dist: Tensor, positive: Tensor, negative: Tensor) -> Tensor | None:
        n = dist.shape[0]
        chunk = max(1, _CHUNK_ENTRIES // max(1, n * n))
        total = dist.new_zeros(())
        count = 0
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            d = dist[rows]
            # [a, p, n]: d(a, p) − d(a, n) + margin over the valid (a, p, n) of these anchors
            losses = d[:, :, None] - d[:, None, :] + self.margin
            valid = positive[rows, :, None] & negative[rows, None, :]
            active = valid & (losses > 0)
            total = total + losses[active].sum()
            count += int(active.sum())
        return None if count == 0 else total / count

    def extra_repr(self) -> str:
        return f"margin={self.margin}, mining={self.mining!r}, normalize={self.normalize}, squared={self.squared}"

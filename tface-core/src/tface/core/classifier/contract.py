"""The contract margin heads are written against: what a head receives and what it returns.

A head only turns cosines into logits (see :class:`HeadInput`); how centres are stored, sharded or
sampled is the classifier's business (:mod:`tface.core.classifier.local`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import attrs
import torch
from torch import Tensor, nn

__all__ = ["ReduceContext", "LocalContext", "HeadInput", "HeadOutput", "MarginHead"]


class ReduceContext:
    """Reductions over the model-parallel group. On one process every call is the identity."""

    world_size: int = 1
    rank: int = 0

    def sum(self, t: Tensor) -> Tensor:
        return t

    def max(self, t: Tensor) -> Tensor:
        return t

    def gather(self, t: Tensor) -> list[Tensor]:
        """Tensors of every rank (shapes may differ along dim 0), in rank order."""
        return [t]


LocalContext = ReduceContext


@attrs.define
class HeadInput:
    """What a head sees for one step.

    ``cos`` is ``[N, C_local]`` (or ``[N, C_local, K]`` when the head declares ``centres_per_class = K``),
    ``target_col`` the local column of each row's class or -1 when another rank holds it,
    ``target_cos`` every row's target cosine (known on every rank, no gradient), ``norms`` the embedding
    norms ``[N]`` and ``num_classes`` the global class count.
    """

    cos: Tensor
    target_col: Tensor
    target_cos: Tensor
    norms: Tensor
    num_classes: int
    ctx: ReduceContext = attrs.field(factory=ReduceContext)
    _detached: Callable[[], Tensor] | None = attrs.field(default=None, alias="detached")
    _detached_cache: Tensor | None = attrs.field(default=None, init=False)

    @property
    def local_rows(self) -> Tensor:
        """Indices of the rows whose target column lives here."""
        return torch.nonzero(self.target_col >= 0, as_tuple=True)[0]

    def local_targets(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(rows, cols, cos)`` of the target entries held here, with gradient."""
        rows = self.local_rows
        cols = self.target_col[rows]
        return rows, cols, self.cos[rows, cols]

    def with_targets(self, rows: Tensor, cols: Tensor, values: Tensor, table: Tensor | None = None) -> Tensor:
        """A copy of ``table`` (default ``cos``) with entries ``[rows, cols]`` replaced; keeps autograd."""
        base = self.cos if table is None else table
        return base.index_put((rows, cols), values.to(base.dtype))

    def cos_detached(self) -> Tensor:
        """The same cosines with the centres detached (gradient reaches embeddings only), computed on request."""
        if self._detached_cache is None:
            if self._detached is None:
                raise RuntimeError("this HeadInput was built without a detached-centre table")
            self._detached_cache = self._detached()
        return self._detached_cache


@attrs.define
class HeadOutput:
    """Logits ``[N, C_local]`` and an optional extra loss term (a scalar added to the cross-entropy)."""

    logits: Tensor
    extra_loss: Tensor | None = None


class MarginHead(nn.Module, abc.ABC):
    """Base class for margin heads: implement :meth:`forward` to map a :class:`HeadInput` to logits."""

    centres_per_class: int = 1

    @abc.abstractmethod
    def forward(self, batch: HeadInput) -> Tensor | HeadOutput:
        """Logits ``[N, C_local]`` (already scaled), or a :class:`HeadOutput` with an extra loss term."""

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

__all__ = ["ReduceContext", "LocalContext", "HeadInput", "HeadOutput", "MarginHead", "ClassifierOutput"]


class ReduceContext:
    """Reductions over the processes that share one step's softmax; on one process every call is the identity.

    Two layouts use it. **Sharded** (``[classifier] mode = "sharded"`` or ``"sampled"``): every process sees all
    N rows of the global batch and holds a slice of the classes (``rows_split = False``). **Replicated under
    DDP** (``mode = "local"`` with several processes): every process holds every class and its own rows
    (``rows_split = True``). In both, :meth:`sum`, :meth:`max` and :meth:`gather` combine the per-process pieces
    of the global ``[N, C]`` table, and :meth:`batch_mean` / :meth:`batch_size` speak about the global batch,
    so a head written against them gives the same numbers in every layout. Only :meth:`row_sum` carries a
    gradient; the others are for statistics (CurricularFace's ``t``, CIFP's threshold), outside the loss's graph.
    """

    world_size: int = 1
    rank: int = 0
    #: whether each process holds different rows of the batch (local classifier under DDP)
    rows_split: bool = False

    def sum(self, t: Tensor) -> Tensor:
        """Element-wise sum over the processes."""
        return t

    def max(self, t: Tensor) -> Tensor:
        """Element-wise maximum over the processes."""
        return t

    def gather(self, t: Tensor) -> list[Tensor]:
        """Tensors of every rank (shapes may differ along dim 0), in rank order."""
        return [t]

    def row_sum(self, partial: Tensor) -> Tensor:
        """Complete per-row sums over classes ``[N, ...]`` whose classes are spread over the processes, with gradient.

        Sharded: each process passes the sum over the classes it holds and gets the sum over all classes (an
        all-reduce whose backward reaches every process's part). Under DDP and on one process a row's classes are
        all here already, so it returns ``partial`` unchanged. E.g. CIFP's per-row penalty over false positives.
        """
        return partial

    def batch_mean(self, values: Tensor) -> Tensor:
        """Mean of a per-row quantity ``[N]`` over the global batch (a 0-d tensor, identical on every process)."""
        values = values.detach()
        if not self.rows_split:
            return values.mean()
        total = self.sum(torch.stack([values.sum(), values.new_tensor(float(values.numel()))]))
        return total[0] / total[1]

    def batch_size(self, n: int) -> int:
        """Rows of the global batch, given the ``n`` rows this process sees."""
        if not self.rows_split:
            return n
        return int(self.sum(torch.tensor([float(n)], dtype=torch.float64)).item())


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


@attrs.frozen
class ClassifierOutput:
    """What a classifier returns for one branch and step.

    ``loss``: the classification loss of the global batch (the same number on every process).
    ``correct`` / ``seen``: top-1 hits and rows among *this process's* rows, so that summing over processes
    gives the global batch's count in every layout (computed without gathering logits).
    """

    loss: Tensor
    correct: int
    seen: int

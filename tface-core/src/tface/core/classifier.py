"""The classifier that owns class centres, and the contract margin heads are written against.

A head only turns cosines into logits (see :class:`HeadInput`); how centres are stored, sharded or
sampled is this module's business. Cross-entropy is computed here too, so that a head never needs to
know whether the softmax runs over one process or many.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ReduceContext", "LocalContext", "HeadInput", "HeadOutput", "MarginHead", "Classifier"]


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


class Classifier(nn.Module):
    """Class centres ``[C·K, D]`` plus the softmax cross-entropy over them.

    Centres are L2-normalised at every forward, so their scale never matters to the head.
    """

    def __init__(self, num_classes: int, embedding_size: int, head: nn.Module, init_std: float = 0.01):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        self.head = head
        self.k = int(getattr(head, "centres_per_class", 1))
        self.weight = nn.Parameter(torch.randn(num_classes * self.k, embedding_size) * init_std)

    def _cosines(self, unit: Tensor, centres: Tensor) -> Tensor:
        cos = F.linear(unit, F.normalize(centres, dim=1, eps=1e-12)).clamp(-1.0, 1.0)
        if self.k > 1:
            cos = cos.view(cos.shape[0], self.num_classes, self.k)
        return cos

    def head_input(self, embeddings: Tensor, labels: Tensor) -> HeadInput:
        norms = embeddings.norm(dim=1)
        unit = embeddings / norms.clamp_min(1e-12).unsqueeze(1)
        cos = self._cosines(unit, self.weight)
        flat = cos if self.k == 1 else cos.max(dim=2).values
        target_cos = flat.gather(1, labels.view(-1, 1)).view(-1).detach()
        return HeadInput(
            cos=cos,
            target_col=labels,
            target_cos=target_cos,
            norms=norms,
            num_classes=self.num_classes,
            detached=lambda: self._cosines(unit, self.weight.detach()),
        )

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mean cross-entropy loss (plus the head's own term) and the margin-free cosines ``[N, C]``."""
        batch = self.head_input(embeddings, labels)
        out = self.head(batch)
        if not isinstance(out, HeadOutput):
            out = HeadOutput(out)
        logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()  # fp32 softmax under AMP
        loss = F.cross_entropy(logits, labels)
        if out.extra_loss is not None:
            loss = loss + out.extra_loss
        cos = batch.cos if self.k == 1 else batch.cos.max(dim=2).values
        return loss, cos.detach()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, centres_per_class={self.k}"


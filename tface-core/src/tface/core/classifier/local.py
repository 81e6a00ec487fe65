"""The local classifier: every class centre in this process, and the softmax cross-entropy over them.

Cross-entropy is computed here, not in the head, so that a head never needs to know whether the softmax
runs over one process or many. The sharded and sampled classifiers (:mod:`~tface.core.classifier.sharded`)
reuse this forward and change only which rows they see and which centres they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tface.core.classifier import ops
from tface.core.classifier.contract import ClassifierOutput, HeadInput, HeadOutput, ReduceContext

__all__ = ["Classifier", "draw_seed"]


def draw_seed() -> int:
    """A centre seed from torch's generator: the same on every process of a run (they share the run's seed)."""
    return int(torch.randint(0, 2**62, (1,)))


class Classifier(nn.Module):
    """Class centres ``[C·K, D]`` plus the softmax cross-entropy over them (``[classifier] mode = "local"``).

    Centres are L2-normalised at every forward, so their scale never matters to the head. Under DDP every
    process holds all centres (DDP averages their gradients) and ``ctx`` makes the head's batch statistics
    global. ``loss`` reduces the per-row nll (a :class:`~tface.core.losses.ClassificationLoss`; default: the mean).
    """

    def __init__(self, num_classes: int, embedding_size: int, head: nn.Module, init_std: float = 0.01, *,
                 loss: nn.Module | None = None, ctx: ReduceContext | None = None, seed: int | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self._setup(num_classes, embedding_size, head, init_std, loss, ctx, seed)
        self.weight = nn.Parameter(self._init(0, num_classes))

    def _setup(self, num_classes: int, embedding_size: int, head: nn.Module, init_std: float,
               loss: nn.Module | None, ctx: ReduceContext | None, seed: int | None) -> None:
        """What every layout holds besides its centres."""
        self.num_classes = num_classes
        self.embedding_size = embedding_size
        self.head = head
        self.loss = loss
        self.ctx = ctx if ctx is not None else ReduceContext()
        self.k = int(getattr(head, "centres_per_class", 1))
        self.init_std = float(init_std)
        self.seed = draw_seed() if seed is None else int(seed)

    def _init(self, start: int, stop: int) -> Tensor:
        return ops.init_centres(start, stop, self.k, self.embedding_size, self.init_std, self.seed)

    # -- what a layout decides ------------------------------------------------------------------------------

    def _rows(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, slice]:
        """The rows this process scores, their labels, and where its own rows lie among them."""
        return embeddings, labels, slice(0, labels.shape[0])

    def _centres(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """The centres to score against and each row's column among them (-1: held by another process)."""
        return self.weight, labels

    @property
    def _sharded(self) -> bool:
        """Whether classes are split over processes (every process then sees the whole global batch)."""
        return False

    # -- the forward ----------------------------------------------------------------------------------------

    def _cosines(self, unit: Tensor, centres: Tensor) -> Tensor:
        # scale the [N, C] product's columns by 1/|w| rather than normalising the [C, D] centres: one pass over
        # the centres instead of several, and no normalised copy of them kept for the backward (1.2x at 200 k)
        inv = centres.norm(dim=1).clamp_min(1e-12).reciprocal()
        cos = (F.linear(unit, centres) * inv).clamp(-1.0, 1.0)
        if self.k > 1:
            cos = cos.view(cos.shape[0], -1, self.k)
        return cos

    def _flat(self, cos: Tensor) -> Tensor:
        return cos if self.k == 1 else cos.max(dim=2).values

    def _head_input(self, embeddings: Tensor, labels: Tensor) -> tuple[HeadInput, slice]:
        rows_emb, rows_labels, own = self._rows(embeddings, labels)
        centres, target_col = self._centres(rows_labels)
        norms = rows_emb.norm(dim=1)
        unit = rows_emb / norms.clamp_min(1e-12).unsqueeze(1)
        cos = self._cosines(unit, centres)
        flat = self._flat(cos)
        local = torch.nonzero(target_col >= 0, as_tuple=True)[0]
        target_cos = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
        target_cos[local] = flat.detach()[local, target_col[local]]
        if self._sharded:
            target_cos = self.ctx.sum(target_cos)
        batch = HeadInput(cos=cos, target_col=target_col, target_cos=target_cos, norms=norms,
                          num_classes=self.num_classes, ctx=self.ctx,
                          detached=lambda: self._cosines(unit, centres.detach()))
        return batch, own

    def head_input(self, embeddings: Tensor, labels: Tensor) -> HeadInput:
        """What the head sees for these embeddings and (global) labels."""
        return self._head_input(embeddings, labels)[0]

    def forward(self, embeddings: Tensor, labels: Tensor) -> ClassifierOutput:
        """The classification loss of the batch (plus the head's own term), and top-1 over this process's rows."""
        batch, own = self._head_input(embeddings, labels)
        out = self.head(batch)
        if not isinstance(out, HeadOutput):
            out = HeadOutput(out)
        logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()  # fp32 softmax under AMP
        nll = ops.softmax_nll(logits, batch.target_col, self.ctx)
        loss = self.loss(nll) if self.loss is not None else nll.mean()
        if out.extra_loss is not None:
            # sharded: every process computes the whole term from the gathered rows; count its gradient once
            factor = 1.0 / self.ctx.world_size if self._sharded else 1.0
            loss = loss + ops.scale_grad(out.extra_loss, factor)
        hits = ops.top1(self._flat(batch.cos), batch.target_cos, self.ctx)[own]
        return ClassifierOutput(loss, int(hits.sum()), int(hits.numel()))

    # -- whole state (checkpoints, fine-tuning) -------------------------------------------------------------

    def whole_state_dict(self) -> dict[str, Any] | None:
        """The state with every class's centres, as one process would hold it (None on ranks other than 0 when
        the classifier is sharded; every rank must call it then)."""
        return self.state_dict()

    def load_whole_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any:
        """Load a :meth:`whole_state_dict` (from any layout and number of processes)."""
        return self.load_state_dict(self.shard_state(state), strict=strict)

    def shard_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """The part of a whole state this process holds: all of it here."""
        return dict(state)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, centres_per_class={self.k}"

"""Model-parallel classifiers: each process holds a contiguous range of classes (``mode = "sharded"``), and
optionally scores only a sample of them per step (``mode = "sampled"``, Partial FC).

Every process gathers the embeddings and labels of the global batch (the gather's backward returns each
process the gradient of its own rows), scores them against its own centres, and the softmax cross-entropy
is completed by all-reducing row maxima and exp-sums (:func:`~tface.core.classifier.ops.softmax_nll`); logits
are never gathered. The centres stay outside DDP: their gradient is already exact on each process.

Sampled: every step keeps each positive class of the global batch held here plus random negatives up to
``sample_rate`` of the shard. The sampled rows are copied into a small parameter (``sub``) that the optimiser
updates; its per-row state (momentum, Adam moments) is copied in from, and after the step written back to,
a whole-shard store. Unsampled centres and their optimiser state therefore do not move at all: no momentum
or weight-decay drift (insightface's Partial FC v2 indexes the full weight, so SGD still moves them).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tface.core.classifier import ops
from tface.core.classifier.contract import ReduceContext
from tface.core.classifier.local import Classifier

__all__ = ["ShardedClassifier"]


class ShardedClassifier(Classifier):
    """The classes ``[start, stop)`` of this process (:func:`~tface.core.classifier.ops.shard_range`).

    ``sample_rate`` < 1 (or ``sampled = True``) turns on Partial FC sampling; call :meth:`attach` with the
    optimiser before training. ``grad_scale`` multiplies the gradient of this process's embeddings: the world
    size by default, which cancels DDP's averaging of the backbone gradient.
    """

    def __init__(self, num_classes: int, embedding_size: int, head: nn.Module, init_std: float = 0.01, *,
                 ctx: ReduceContext | None = None, sample_rate: float = 1.0, sampled: bool | None = None,
                 loss: nn.Module | None = None, seed: int | None = None, grad_scale: float | None = None):
        nn.Module.__init__(self)
        ctx = ctx if ctx is not None else ReduceContext()
        if ctx.rows_split:
            raise ValueError("a sharded classifier needs a context whose processes see the same rows "
                             "(rows_split = False)")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate}")
        if num_classes < max(2, ctx.world_size):
            raise ValueError(f"{num_classes} classes cannot be sharded over {ctx.world_size} processes "
                             "(each needs at least one)")
        self._setup(num_classes, embedding_size, head, init_std, loss, ctx, seed)
        self.start, self.stop = ops.shard_range(num_classes, ctx.world_size, ctx.rank)
        self.sample_rate = float(sample_rate)
        self.sampled = sample_rate < 1.0 if sampled is None else bool(sampled)
        self.grad_scale = float(ctx.world_size if grad_scale is None else grad_scale)
        shard = self._init(self.start, self.stop)
        if self.sampled:
            self.register_buffer("weight", shard)
            self.sub = nn.Parameter(torch.empty(0, embedding_size))
            self._register_state_dict_hook(_drop_sub)
            #: whole-shard optimiser state per row (filled at the first optimiser step)
            self.row_state: dict[str, Tensor] = {}
            self._index: Tensor | None = None  # the classes the current ``sub`` holds
            self._optimizer: Any = None
        else:
            self.weight = nn.Parameter(shard)

    @property
    def num_local(self) -> int:
        return self.stop - self.start

    @property
    def _sharded(self) -> bool:
        return True

    @property
    def centres(self) -> Tensor:
        """The tensor holding this shard's centres (a parameter, or the sampled mode's store)."""
        return self.weight

    # -- layout ---------------------------------------------------------------------------------------------

    def _rows(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, slice]:
        if self.ctx.world_size == 1:
            return embeddings, labels, slice(0, labels.shape[0])
        assert isinstance(self.ctx, ops.GroupContext)
        sizes = self.ctx.sizes(labels.shape[0], labels.device)
        all_labels = torch.cat(self.ctx.gather(labels, sizes))
        rows = ops.gather_rows(embeddings, self.ctx, self.grad_scale, sizes)
        start = sum(sizes[:self.ctx.rank])
        return rows, all_labels, slice(start, start + sizes[self.ctx.rank])

    def _centres(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        here = (labels >= self.start) & (labels < self.stop)
        local = torch.where(here, labels - self.start, torch.full_like(labels, -1))
        if not (self.sampled and self.training and torch.is_grad_enabled()):
            return self.weight, local
        index = self._sample(local[here])
        cols = torch.full_like(labels, -1)
        cols[here] = torch.searchsorted(index, local[here])
        self._load_sub(index)
        return self.sub, cols

    # -- sampling -------------------------------------------------------------------------------------------

    def _sample(self, positives: Tensor) -> Tensor:
        """Sorted local class indices to score this step: every positive, then random negatives up to the rate."""
        positives = torch.unique(positives)
        budget = max(1, int(self.sample_rate * self.num_local))
        if positives.numel() >= budget:
            return positives
        scores = torch.rand(self.num_local, device=positives.device)
        scores[positives] = 2.0  # positives first
        return torch.topk(scores, budget, sorted=False).indices.sort().values

    def _rows_of(self, index: Tensor) -> Tensor:
        if self.k == 1:
            return index
        return (index.unsqueeze(1) * self.k + torch.arange(self.k, device=index.device)).reshape(-1)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Let the sampled rows' optimiser state live in the whole-shard store (no-op unless sampled)."""
        if not self.sampled:
            return
        self._optimizer = weakref.ref(optimizer)
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self._commit(opt))

    def _opt_state(self) -> dict[str, Any] | None:
        opt = self._optimizer() if self._optimizer is not None else None
        return opt.state[self.sub] if opt is not None else None

    def _load_sub(self, index: Tensor) -> None:
        rows = self._rows_of(index)
        self._index = rows
        self.sub.data = self.weight[rows]
        self.sub.grad = None
        state = self._opt_state()
        if state is not None:
            for key, whole in self.row_state.items():
                state[key] = whole[rows]  # indexing copies

    def _commit(self, optimizer: torch.optim.Optimizer) -> None:
        """After an optimiser step: write the sampled rows and their optimiser state back into the store."""
        rows = self._index
        if rows is None or self.sub.grad is None:
            return
        with torch.no_grad():
            self.weight[rows] = self.sub.data
            for key, value in optimizer.state[self.sub].items():
                if isinstance(value, Tensor) and value.shape == self.sub.shape:
                    if key not in self.row_state:
                        self.row_state[key] = torch.zeros_like(self.weight)
                    self.row_state[key][rows] = value
        self._index = None

    # -- whole state ----------------------------------------------------------------------------------------

    def whole_state_dict(self) -> dict[str, Any] | None:
        """Every class's centres (gathered on rank 0) and the head's state; None on other ranks."""
        weight = ops.gather_to_main(self.weight, self.ctx)
        if weight is None:
            return None
        state = self.state_dict()
        state["weight"] = weight
        return state

    def load_whole_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> Any:
        return self.load_state_dict(self.shard_state(state), strict=strict)

    def shard_state(self, state: Mapping[str, Any]) -> dict[str, Any]:
        """This process's part of a whole state: its rows of ``weight``; the rest as it is."""
        state = dict(state)
        weight = state.get("weight")
        want = (self.num_classes * self.k, self.embedding_size)
        if isinstance(weight, Tensor) and tuple(weight.shape) == want:
            state["weight"] = weight[self.start * self.k:self.stop * self.k]
        elif isinstance(weight, Tensor):
            raise ValueError(f"weight: shape {tuple(weight.shape)} does not fit {self.num_classes} classes × "
                             f"{self.k} centres of size {self.embedding_size} {want}")
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if self.sampled:  # ``sub`` is never saved (see _drop_sub)
            state_dict.setdefault(prefix + "sub", self.sub)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def row_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Tensor]:
        """This shard's per-row optimiser state (momentum, Adam moments) and the scalar entries, by name."""
        param = self.sub if self.sampled else self.weight
        state = optimizer.state.get(param, {})
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            per_row = isinstance(value, Tensor) and value.shape == param.shape and not self.sampled
            if per_row or isinstance(value, Tensor) and value.dim() == 0:  # rows, or a scalar (Adam's step)
                out[key] = value
        if self.sampled:
            out.update(self.row_state)
        return out

    def whole_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Tensor] | None:
        """:meth:`row_optimizer_state` with every class's rows (gathered on rank 0; None on other ranks)."""
        rows = self.row_optimizer_state(optimizer)
        out: dict[str, Tensor] = {}
        for key in sorted(rows):  # the same order on every rank: each gather is a collective
            value = rows[key]
            if value.dim() == 0:
                out[key] = value.clone()
                continue
            whole = ops.gather_to_main(value, self.ctx)
            if whole is not None:
                out[key] = whole
        return out if self.ctx.rank == 0 else None

    def load_whole_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Mapping[str, Tensor]) -> None:
        """Give this shard its rows of a :meth:`whole_optimizer_state` (saved under any number of processes)."""
        lo, hi = self.start * self.k, self.stop * self.k
        param = self.sub if self.sampled else self.weight
        target = optimizer.state[param]
        for key, value in state.items():
            if value.dim() == 0:
                target[key] = value.clone().to(value.device)
            elif self.sampled:
                self.row_state[key] = value[lo:hi].clone().to(self.weight.device)
            else:
                target[key] = value[lo:hi].clone().to(device=self.weight.device, dtype=self.weight.dtype)

    def extra_repr(self) -> str:
        mode = f", sampled (rate {self.sample_rate:g})" if self.sampled else ""
        return (f"num_classes={self.num_classes}, classes [{self.start}, {self.stop}) of "
                f"{self.ctx.world_size} processes, centres_per_class={self.k}{mode}")


def _drop_sub(module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    """The sampled rows are a per-step copy of ``weight``: not part of the saved state."""
    state.pop(prefix + "sub", None)

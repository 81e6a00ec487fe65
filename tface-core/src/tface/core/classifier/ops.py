"""The distributed pieces every classifier layout shares: the class split, centre initialisation, the group
context, the autograd-correct row gather, the softmax cross-entropy over split classes and top-1.

On one process each of them falls back to the plain single-process computation, so local, sharded and
sampled classifiers run the same code and differ only in which centres a process holds.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from tface.core.classifier.contract import ReduceContext

__all__ = ["class_split", "shard_range", "init_centres", "GroupContext", "gather_rows", "scale_grad",
           "softmax_nll", "top1", "gather_to_main", "INIT_BLOCK"]

#: Classes per block of :func:`init_centres`: each block has its own seed, so a shard draws only its blocks.
INIT_BLOCK = 4096


def class_split(num_classes: int, world_size: int) -> list[int]:
    """Classes per rank: ``C // W`` each, one more for the first ``C mod W`` ranks (TFace's and Partial FC's split)."""
    base, extra = divmod(num_classes, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard_range(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of the contiguous class range rank ``rank`` holds."""
    sizes = class_split(num_classes, world_size)
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


def _block_seed(seed: int, block: int) -> int:
    return (seed * 1_000_003 + block * 0x9E3779B1 + 1) % (2**63 - 1)


def init_centres(start: int, stop: int, k: int, dim: int, std: float, seed: int,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Centres of classes ``[start, stop)`` (``k`` rows each), drawn from N(0, std²).

    The values of a class depend only on ``seed`` and the class, never on how classes are split over
    processes: a sharded run starts from exactly the centres a single-process run would, and no process ever
    materialises the whole ``[C, D]`` matrix (TFace drew the full matrix on every rank).
    """
    out = torch.empty((stop - start) * k, dim, dtype=dtype)
    for block in range(start // INIT_BLOCK, (max(stop, start + 1) - 1) // INIT_BLOCK + 1):
        b0, b1 = block * INIT_BLOCK, (block + 1) * INIT_BLOCK
        lo, hi = max(b0, start), min(b1, stop)
        if lo >= hi:
            continue
        g = torch.Generator().manual_seed(_block_seed(seed, block))
        # always the whole block: torch draws a tensor's normals in an order that depends on its size
        values = torch.randn(INIT_BLOCK * k, dim, generator=g, dtype=dtype)
        out[(lo - start) * k:(hi - start) * k] = values[(lo - b0) * k:(hi - b0) * k]
    return out.mul_(std)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the group whose backward sums the gradients too (each process holds part of a replicated loss)."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:  # noqa: ANN001
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GroupContext(ReduceContext):
    """:class:`ReduceContext` over a ``torch.distributed`` process group (the default group unless given).

    ``device``: where the backend wants collective tensors (NCCL: this process's GPU); tensors elsewhere are
    moved there and back. None: where they are.
    """

    def __init__(self, rows_split: bool, group=None, device: torch.device | None = None):  # noqa: ANN001
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.rows_split = rows_split
        self.device = device

    def _comm(self, t: Tensor) -> Tensor:
        """A detached copy of ``t`` on the communication device."""
        t = t.detach()
        if self.device is not None and t.device != self.device:
            return t.to(self.device)
        return t.clone()

    def _reduce(self, t: Tensor, op) -> Tensor:  # noqa: ANN001
        out = self._comm(t)
        dist.all_reduce(out, op=op, group=self.group)
        return out.to(t.device)

    def sum(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.SUM)

    def max(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    def gather(self, t: Tensor, sizes: list[int] | None = None) -> list[Tensor]:
        """Every rank's ``t`` (any length along dim 0); ``sizes``: those lengths when already known."""
        home = t.device
        padded, sizes = self._padded(t, sizes)
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(out, padded, group=self.group)
        return [o[:n].to(home) for o, n in zip(out, sizes)]

    def gather_to_main(self, t: Tensor) -> Tensor | None:
        """Rank 0: every rank's ``t`` concatenated in rank order; other ranks: None."""
        home = t.device
        padded, sizes = self._padded(t)
        dst = dist.get_global_rank(self.group, 0) if self.group is not None else 0
        if self.rank != 0:
            dist.gather(padded, None, dst=dst, group=self.group)
            return None
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.gather(padded, out, dst=dst, group=self.group)
        return torch.cat([o[:n] for o, n in zip(out, sizes)], dim=0).to(home)

    def _padded(self, t: Tensor, sizes: list[int] | None = None) -> tuple[Tensor, list[int]]:
        """``t`` on the communication device, padded along dim 0 to the longest rank's length, and the lengths
        (collectives need equal shapes)."""
        t = self._comm(t).contiguous()
        sizes = sizes if sizes is not None else self.sizes(t.shape[0], t.device)
        padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[:t.shape[0]] = t
        return padded, sizes

    def sizes(self, n: int, device: torch.device | None = None) -> list[int]:
        """Every rank's ``n``, in rank order."""
        device = self.device if self.device is not None else device
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device), group=self.group)
        return [int(s) for s in sizes]

    def row_sum(self, partial: Tensor) -> Tensor:
        if self.rows_split:
            return partial
        return _AllReduceSum.apply(partial, self.group)


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0; the backward returns each process the summed gradient of its own rows × scale."""

    @staticmethod
    def forward(ctx, t: Tensor, group: GroupContext, scale: float, sizes: list[int]) -> Tensor:  # noqa: ANN001
        ctx.group, ctx.scale, ctx.sizes = group, scale, sizes
        return torch.cat(group.gather(t, sizes), dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group.group)
        start = sum(ctx.sizes[:ctx.group.rank])
        own = grad[start:start + ctx.sizes[ctx.group.rank]]
        return own * ctx.scale if ctx.scale != 1 else own, None, None, None


def gather_rows(t: Tensor, ctx: ReduceContext, grad_scale: float = 1.0, sizes: list[int] | None = None) -> Tensor:
    """The rows of every process, in rank order, as one tensor; gradients flow back to each process's rows.

    ``grad_scale`` multiplies the gradient a process gets back: a sharded classifier passes the world size so
    that DDP's averaging of the backbone gradients yields the gradient of the global batch's mean loss.
    ``sizes``: every rank's row count, when already known (saves one exchange).
    """
    if ctx.world_size == 1:
        return t
    assert isinstance(ctx, GroupContext)
    sizes = sizes if sizes is not None else ctx.sizes(t.shape[0], t.device)
    if not t.requires_grad:
        return torch.cat(ctx.gather(t, sizes), dim=0)
    return _GatherRows.apply(t, ctx, float(grad_scale), sizes)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, factor: float) -> Tensor:  # noqa: ANN001
        ctx.factor = factor
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        return grad * ctx.factor, None


def scale_grad(t: Tensor, factor: float) -> Tensor:
    """``t`` unchanged, its gradient times ``factor`` (a term every process computes in full counts once)."""
    return t if factor == 1 else _ScaleGrad.apply(t, factor)


class _SplitSoftmaxNLL(torch.autograd.Function):
    """Per-row ``-log softmax`` of the target over classes split across processes, never gathering logits.

    Forward: all-reduce of the row max (MAX), of the exp-sums and of the target logit (SUM). Backward (local):
    ``(softmax - onehot) · upstream``. Exactly the single-process cross-entropy's value and gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target_col: Tensor, group: ReduceContext) -> Tensor:  # noqa: ANN001
        n = logits.shape[0]
        if logits.shape[1]:
            row_max = logits.detach().max(dim=1).values
        else:
            row_max = torch.full((n,), -torch.inf, dtype=logits.dtype, device=logits.device)
        row_max = group.max(row_max)
        exp = torch.exp(logits.detach() - row_max.unsqueeze(1))
        denom = group.sum(exp.sum(dim=1))
        rows = torch.nonzero(target_col >= 0, as_tuple=True)[0]
        target = torch.zeros(n, dtype=logits.dtype, device=logits.device)
        target[rows] = logits.detach()[rows, target_col[rows]] - row_max[rows]
        target = group.sum(target)
        exp.div_(denom.unsqueeze(1))
        ctx.save_for_backward(exp, rows, target_col)
        return torch.log(denom) - target

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        prob, rows, target_col = ctx.saved_tensors
        out = prob * grad.unsqueeze(1)
        out[rows, target_col[rows]] -= grad[rows]
        return out, None, None


def softmax_nll(logits: Tensor, target_col: Tensor, ctx: ReduceContext) -> Tensor:
    """Per-row nll ``[N]`` of each row's target under the softmax over every class (held here or elsewhere)."""
    if ctx.world_size == 1 or ctx.rows_split:
        return F.cross_entropy(logits, target_col, reduction="none")
    return _SplitSoftmaxNLL.apply(logits, target_col, ctx)


def top1(flat_cos: Tensor, target_cos: Tensor, ctx: ReduceContext) -> Tensor:
    """Per row: whether its target class has the highest (margin-free) cosine over every class."""
    if flat_cos.shape[1]:
        best = flat_cos.detach().max(dim=1).values
    else:
        best = torch.full_like(target_cos, -torch.inf)
    if not ctx.rows_split:
        best = ctx.max(best)
    return target_cos >= best


def gather_to_main(t: Tensor, ctx: ReduceContext) -> Tensor | None:
    """Rank 0: the rows of every process concatenated in rank order; other ranks: None (saves their memory)."""
    if ctx.world_size == 1:
        return t
    assert isinstance(ctx, GroupContext)
    return ctx.gather_to_main(t)

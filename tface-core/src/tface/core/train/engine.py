"""The step engine: one optimisation step over one or more micro-batches.

Forward (normalise, backbone under autocast, each branch's classifier in fp32), the weighted loss sum, the
NaN/Inf policy, backward (through the fp16 loss scaler when there is one), gradient clipping, the optimiser
and schedule steps and the EMA update. Everything that changes how a step is computed lives here.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence

import attrs
import torch
from torch import nn

from tface.core.classifier import ReduceContext, ShardedClassifier
from tface.core.data.branches import MultiBatch
from tface.core.train.errors import TrainingError
from tface.core.train.marginsoftmax import TrainModule
from tface.core.train.setup import TrainingSetup

__all__ = ["StepResult", "StepEngine", "TrainModule", "train_module", "autocast", "clip_grad_norm",
           "MAX_CONSECUTIVE_SKIPS"]

#: Under ``on_nonfinite = "skip"``, this many skipped steps in a row stop the run: skipping rides over a rare
#: bad batch, but a loss that stays non-finite means the data or the settings are broken.
MAX_CONSECUTIVE_SKIPS = 10

_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@attrs.frozen
class StepResult:
    """One step's numbers: the total loss, the LR it used, per branch (loss, correct, rows, scored).

    ``correct`` counts top-1 hits among the ``scored`` rows (those a classifier scored; 0 for a branch trained
    by embedding losses only), all among this process's ``rows``.

    ``skipped``: the loss was non-finite and ``on_nonfinite = "skip"`` dropped the update (the numbers are then
    meaningless). ``grad_norm``: the gradient norm before clipping, when clipping is on.
    """

    loss: float
    lr: float
    branches: dict[str, tuple[float, int, int, int]]
    skipped: bool = False
    grad_norm: float | None = None


def autocast(setup: TrainingSetup) -> contextlib.AbstractContextManager:
    """The backbone's autocast context for ``train.precision`` (nothing for fp32)."""
    dtype = _AUTOCAST.get(setup.cfg.precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=setup.device.type, dtype=dtype)


def train_module(setup: TrainingSetup) -> nn.Module:
    """The forward of a step over ``setup``: the run's method builds it (the default: backbone, classifiers and
    embedding losses, :class:`~tface.core.train.marginsoftmax.TrainModule`)."""
    return setup.method.train_module(setup)


def clip_grad_norm(params: Sequence[torch.Tensor], shard_params: Sequence[torch.Tensor], max_norm: float,
                   ctx: ReduceContext | None) -> float:
    """Clip the gradient of the whole model to ``max_norm``; returns the norm before clipping.

    Sharded centres differ per process, so their squared norms are summed over the processes; every process
    then computes the same norm and scales alike (a per-process norm would make the backbones diverge).
    """
    if not shard_params or ctx is None:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    grads = [p.grad for p in params if p.grad is not None]
    shard = [p.grad for p in shard_params if p.grad is not None]
    device = (grads or shard)[0].device
    zero = torch.zeros((), dtype=torch.float64, device=device)
    own = sum((g.detach().double().pow(2).sum() for g in grads), zero)
    split = ctx.sum(sum((g.detach().double().pow(2).sum() for g in shard), zero).reshape(1)).reshape(())
    norm = float(torch.sqrt(own + split))
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        for g in grads + shard:
            g.mul_(coef)
    return norm


class StepEngine:
    def __init__(self, setup: TrainingSetup):
        self.setup = setup
        #: what the forward runs: the setup's (DDP-wrapped in a process group) or the plain module
        self.module = setup.train_module if setup.train_module is not None else train_module(setup)
        #: steps dropped under ``on_nonfinite = "skip"``: in total, and in a row up to now
        self.skipped = 0
        self.consecutive_skips = 0
        sharded = [c for c in setup.classifiers.values() if isinstance(c, ShardedClassifier)]
        replicated = [setup.backbone, *(c for c in setup.classifiers.values() if not isinstance(c, ShardedClassifier)),
                      *(m for m, _ in setup.embedding_losses), setup.method_modules]
        self._params = [p for m in replicated for p in m.parameters() if p.requires_grad]
        #: centres that differ per process: the gradient norm adds their squares over the processes
        self._shard_params = [p for c in sharded for p in c.parameters() if p.requires_grad]
        self._shard_ctx = sharded[0].ctx if sharded else None

    def _buffers(self) -> list[torch.Tensor]:
        """What a skipped step restores: the backbone's, the heads' and the method modules' buffers (never the centre
        stores)."""
        heads = [b for c in self.setup.classifiers.values() for b in c.head.buffers()]
        return [*self.setup.backbone.buffers(), *heads, *self.setup.method_modules.buffers()]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The backbone's autocast context for ``train.precision`` (nothing for fp32)."""
        return autocast(self.setup)

    def forward(self, batch: MultiBatch) -> tuple[torch.Tensor, dict[str, tuple[float, int, int, int]]]:
        """Weighted sum of the branch losses; per branch (loss, correct, rows, scored rows) for the logs."""
        s = self.setup
        images = s.info.normalize(batch.images).contiguous(memory_format=s.memory_format)
        total: torch.Tensor | None = None
        stats: dict[str, tuple[float, int, int, int]] = {}
        for name, (loss, correct, seen, scored) in zip(batch.names, self.module(images, batch)):
            weighted = loss * s.weights[name]
            total = weighted if total is None else total + weighted
            stats[name] = (loss.item(), correct, seen, scored)
        assert total is not None
        return total, stats

    def step(self, batches: Sequence[MultiBatch], step: int) -> StepResult:
        """Train on ``batches`` (``train.accumulate`` micro-batches) as optimiser step ``step`` (1-based).

        The gradient is the mean over the micro-batches, so k micro-batches of B give the update of one batch of
        kB (BatchNorm statistics aside). A non-finite loss stops the run, or drops the step (``on_nonfinite``).
        """
        s = self.setup
        k = len(batches)
        skip = s.cfg.on_nonfinite == "skip"
        # a skipped step must not keep the buffers its forward passes moved (BatchNorm statistics, head state)
        saved = [b.detach().clone() for b in self._buffers()] if skip else None
        s.optimizer.zero_grad(set_to_none=True)
        losses: list[float] = []
        stats: dict[str, tuple[float, int, int, int]] = {}
        for i, batch in enumerate(batches):
            batch = batch.to(s.device)
            if s.device_augment is not None:  # the on = "device" ops, seeded by (seed, step, micro-batch, rank)
                batch = attrs.evolve(batch, images=s.device_augment(batch.images, step, i, s.rank))
            loss, micro = self.forward(batch)
            if not torch.isfinite(loss):
                bad = [n for n, (v, *_) in micro.items() if not math.isfinite(v)] or list(micro)
                where = f"branch {', '.join(map(repr, bad))}" + (f", micro-batch {i + 1} of {k}" if k > 1 else "")
                return self._nonfinite(f"loss became {loss.item()} at step {step} ({where})", saved)
            with s.sync_context(i == k - 1):
                scaled = loss / k if k > 1 else loss
                (s.scaler.scale(scaled) if s.scaler is not None else scaled).backward()
            losses.append(loss.item())
            for name, (v, correct, seen, scored) in micro.items():
                old = stats.get(name, (0.0, 0, 0, 0))
                stats[name] = (old[0] + v / k, old[1] + correct, old[2] + seen, old[3] + scored)
        grad_norm = None
        if s.cfg.clip_grad_norm:
            if s.scaler is not None:
                s.scaler.unscale_(s.optimizer)
            grad_norm = clip_grad_norm(self._params, self._shard_params, s.cfg.clip_grad_norm, self._shard_ctx)
            # under fp16 an overflow is the scaler's business: it skips the update and lowers the scale
            if not math.isfinite(grad_norm) and s.scaler is None:
                return self._nonfinite(f"gradient norm became {grad_norm} at step {step} (backbone and classifiers)",
                                       saved)
        if s.scaler is not None:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        lr = s.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():
            # when the scaler skipped the very first update, PyTorch warns that the schedule steps before the
            # optimiser; an overflow step is a step like any other here (PyTorch's AMP recipe)
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
            s.scheduler.step()
        if s.ema is not None:
            s.ema.update(s.backbone)
        self.consecutive_skips = 0
        return StepResult(sum(losses) / k, lr, stats, grad_norm=grad_norm)

    def _nonfinite(self, what: str, saved: list[torch.Tensor] | None) -> StepResult:
        """Stop, or drop the step: no gradient, optimiser, schedule, EMA or BatchNorm statistics change."""
        s = self.setup
        lr = s.optimizer.param_groups[0]["lr"]
        if saved is None:
            raise TrainingError(f"{what}, lr {lr:.4g}; lower train.lr or increase train.warmup_steps "
                                '(train.on_nonfinite = "skip" drops such steps)')
        s.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, old in zip(self._buffers(), saved):
                b.copy_(old)
        self.skipped += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
            raise TrainingError(f"{what}, lr {lr:.4g}: {self.consecutive_skips} steps in a row were non-finite and "
                                "skipped; lower train.lr or check the data")
        return StepResult(math.nan, lr, {}, skipped=True)

"""The step engine: one optimisation step over a multi-branch batch.

Forward (normalise, backbone, each branch's classifier), the weighted loss sum, the NaN/Inf check, backward,
the optimiser and schedule steps. Everything that changes how a step is computed lives here.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from tface.core.data.branches import MultiBatch
from tface.core.train.errors import TrainingError
from tface.core.train.setup import TrainingSetup

__all__ = ["StepResult", "StepEngine", "TrainModule"]


@attrs.frozen
class StepResult:
    """One step's numbers: the total loss, the LR it used, per branch (loss, correct, seen)."""

    loss: float
    lr: float
    branches: dict[str, tuple[float, int, int]]


class TrainModule(nn.Module):
    """The backbone and the classifiers as one module, so one wrap (DDP) covers every parameter a step trains."""

    def __init__(self, backbone: nn.Module, classifiers: nn.ModuleDict):
        super().__init__()
        self.backbone = backbone
        self.classifiers = classifiers

    def forward(self, images: torch.Tensor, batch: MultiBatch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per branch of ``batch``: its classifier's (loss, cosine logits) on that branch's embeddings."""
        embeddings = self.backbone(images).float()
        return [self.classifiers[name](emb, labels)
                for name, emb, labels in zip(batch.names, batch.split(embeddings), batch.labels)]


class StepEngine:
    def __init__(self, setup: TrainingSetup):
        self.setup = setup
        #: what the forward runs: the setup's (DDP-wrapped in a process group) or the plain module
        self.module = (setup.train_module if setup.train_module is not None
                       else TrainModule(setup.backbone, setup.classifiers))

    def forward(self, batch: MultiBatch) -> tuple[torch.Tensor, dict[str, tuple[float, int, int]]]:
        """Weighted sum of the branch losses; per branch (loss, correct, seen) for the logs."""
        s = self.setup
        images = s.info.normalize(batch.images).contiguous(memory_format=s.memory_format)
        total: torch.Tensor | None = None
        stats: dict[str, tuple[float, int, int]] = {}
        for name, labels, (loss, cos) in zip(batch.names, batch.labels, self.module(images, batch)):
            weighted = loss * s.weights[name]
            total = weighted if total is None else total + weighted
            stats[name] = (loss.item(), int((cos.argmax(1) == labels).sum()), len(labels))
        assert total is not None
        return total, stats

    def step(self, batch: MultiBatch, step: int) -> StepResult:
        """Train on ``batch`` as step number ``step`` (1-based); a non-finite loss stops the run."""
        s = self.setup
        loss, stats = self.forward(batch.to(s.device))
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {step} (lr {s.scheduler.get_last_lr()[0]:.4g}); "
                "lower train.lr or increase train.warmup_steps"
            )
        s.optimizer.zero_grad(set_to_none=True)
        with s.sync_context(True):  # the one (last) micro-batch of the step: gradients are all-reduced here
            loss.backward()
        s.optimizer.step()
        lr = s.optimizer.param_groups[0]["lr"]
        s.scheduler.step()
        return StepResult(loss.item(), lr, stats)

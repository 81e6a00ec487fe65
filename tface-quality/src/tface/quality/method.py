"""SDD-FIQA's second stage as a training method: regress each image's pseudo quality label from its feature map.

``[method] name = "quality_regression"``. The recognition model (``[backbone]``, started from
``[backbone] checkpoint``) gets TFace's regression head on its last feature map (:class:`~tface.quality.head.
QualityHead`); both train, as TFace fine-tunes the whole model (``freeze_backbone = true`` trains the head
alone). The targets are the ``quality_list`` data's scores, carried as labels (``round(score × 1000)``,
:mod:`tface.quality.source`) and decoded here; the loss is SmoothL1 (or L1, MSE) on the raw 0–100 scale.
No classifier is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from tface.core.backbone import backbone_info, forward_features
from tface.core.config import option, options
from tface.core.data.branches import MultiBatch, is_pair_dataset
from tface.core.method import MethodContext, MethodParts, TrainingMethod
from tface.core.train.errors import TrainingError
from tface.core.train.marginsoftmax import BranchOut
from tface.quality.head import DEFAULT_MAP_SIZE, HEAD_KEY, QualityHead, attach_head

__all__ = ["LOSSES", "QualityRegression", "QualityStep", "regression_loss"]

#: ``loss`` option → the per-batch mean loss between predictions and targets (TFace's choices).
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "smooth_l1": F.smooth_l1_loss,
    "l1": F.l1_loss,
    "mse": F.mse_loss,
}


def regression_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return LOSSES[name]


@options
class QualityRegression(TrainingMethod):
    """``[method] name = "quality_regression"``: SDD-FIQA's quality regression (TFace ``quality/train.py``).

    ``loss``: ``smooth_l1`` (TFace's default, β = 1), ``l1`` or ``mse``, on 0–100 targets; ``freeze_backbone``:
    keep the recognition model fixed (evaluation mode, no gradient) and train the head only (TFace: false);
    ``map_size``: the side the feature map is pooled to before the head (7: TFace's 512×7×7 at 112 pixels);
    ``dropout``: before the head's linear layer (TFace: 0.5).
    """

    #: no classifier: a quality recipe has no [head]
    needs_head = False

    def __init__(self, loss: str = option("smooth_l1", attrs.validators.in_(tuple(LOSSES))),
                 freeze_backbone: bool = False,
                 map_size: int = option(DEFAULT_MAP_SIZE, attrs.validators.gt(0)),
                 dropout: float = option(0.5, attrs.validators.ge(0), attrs.validators.lt(1))):
        self.loss, self.freeze_backbone = loss, bool(freeze_backbone)
        self.map_size, self.dropout = int(map_size), float(dropout)

    def build(self, ctx: MethodContext) -> MethodParts:
        recipe = ctx.recipe
        problems = []
        if recipe.backbone.weights.checkpoint is None:
            problems.append("[backbone] checkpoint: the trained recognition model the quality model starts from "
                            "(SDD-FIQA fine-tunes it)")
        if ctx.info is None or ctx.info.feature_channels is None:
            problems.append(f"a backbone with a feature map (backbone {recipe.backbone.name!r} offers none; every "
                            "tface-backbones model does)")
        for i, (branch, spec) in enumerate(zip(recipe.data, ctx.specs)):
            key = "data" if len(recipe.data) == 1 and not branch.explicit else f"data[{i}]"
            if is_pair_dataset(spec.dataset) or getattr(spec.dataset, "quality_scale", None) is None:
                problems.append(f"{key}: quality scores per image (a quality_list source; {branch.source.name!r} "
                                "gives identity labels)")
            elif branch.sampler != "shuffle":
                problems.append(f'{key}.sampler = "shuffle" (the labels are scores, not identities to balance)')
        if recipe.loss:
            problems.append(f"no [[loss]] tables (the method's own loss option, now {self.loss!r}, is the loss)")
        if recipe.classifier.checkpoint is not None:
            problems.append("no [classifier] checkpoint (no classifier is built)")
        if problems:
            raise TrainingError("method quality_regression needs " + "; ".join(problems))
        assert ctx.backbone is not None and ctx.info is not None and ctx.info.feature_channels is not None
        if self.freeze_backbone:
            ctx.backbone.requires_grad_(False)  # the optimiser never sees it
        if recipe.train.compile:
            ctx.echo("note: quality_regression calls the backbone's forward_features, which train.compile does not "
                     "compile: the step runs eagerly")
        head = QualityHead(ctx.info.feature_channels, self.map_size, self.dropout)
        attach_head(ctx.backbone, head)
        return MethodParts(modules=nn.ModuleDict({HEAD_KEY: head}))

    def attach_eval(self, backbone: nn.Module, state: Mapping[str, Any]) -> None:
        """The trained head from a run checkpoint's ``method.quality``, attached to ``backbone`` (``tface eval
        --run``: the ``evrc`` protocol then needs no ``head`` option)."""
        channels = backbone_info(backbone).feature_channels
        if channels is None:
            raise ValueError("the backbone offers no feature map (feature_channels), which the quality head reads")
        if HEAD_KEY not in state:
            raise KeyError(f"no quality head (method.{HEAD_KEY}) among the method modules {sorted(state)}")
        head = QualityHead(channels, self.map_size, self.dropout)
        head.load_state_dict(state[HEAD_KEY])
        attach_head(backbone, head.eval())

    def train_module(self, setup) -> nn.Module:  # noqa: ANN001 - TrainingSetup (core's train.setup)
        from tface.core.train.engine import autocast

        head = setup.method_modules[HEAD_KEY]
        attach_head(setup.backbone, head)
        attach_head(setup.eval_backbone, head)  # the EMA copy, when on: evaluation scores with it
        scales = {s.name: int(s.dataset.quality_scale) for s in setup.loader.specs}
        return QualityStep(setup.backbone, head, regression_loss(self.loss), scales,
                           frozen=self.freeze_backbone, autocast=lambda: autocast(setup),
                           complete_graph=setup.world_size > 1)


class QualityStep(nn.Module):
    """The forward of a step: the backbone's feature map, the head's quality, the regression loss per branch.

    ``complete_graph`` (several processes, trainable backbone): the loss also gets ``0 × sum(embedding)``, so
    the layers after the feature map (unused by the quality) receive a zero gradient and DDP's reduction, which
    waits for every parameter, completes.
    """

    def __init__(self, backbone: nn.Module, head: QualityHead,
                 loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scales: dict[str, int], *,
                 frozen: bool = False,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 complete_graph: bool = False):
        super().__init__()
        self.head, self.loss, self.scales = head, loss, dict(scales)
        self.frozen, self.autocast, self.complete_graph = frozen, autocast, complete_graph and not frozen
        if frozen:
            self.__dict__["backbone"] = backbone  # not a submodule: neither train() nor DDP reaches it
        else:
            self.backbone = backbone
        #: the last step's mean prediction per branch (for tests and logging)
        self.last_mean: dict[str, float] = {}

    def forward(self, images: torch.Tensor, batch: MultiBatch) -> list[BranchOut]:
        if self.frozen:
            self.backbone.eval()  # BatchNorm statistics stay the recognition model's
            with torch.no_grad(), self.autocast():
                embeddings, features = forward_features(self.backbone, images)
        else:
            with self.autocast():
                embeddings, features = forward_features(self.backbone, images)
        quality = self.head(features.float())
        out: list[BranchOut] = []
        for name, pred, labels in zip(batch.names, batch.split(quality), batch.labels):
            target = labels.to(torch.float32) / self.scales[name]
            loss = self.loss(pred, target)
            if self.complete_graph and not out:
                loss = loss + embeddings.float().sum() * 0.0
            self.last_mean[name] = float(pred.detach().mean())
            out.append((loss, 0, len(labels), 0))
        return out

"""DDL as a training method (Huang et al., ECCV 2020; TFace ``tasks/ddl``): margin-softmax on single-image
branches plus the distribution distillation loss between an easy (teacher) and hard (student) data.

Data: single-image branches (one classifier each, as ``margin_softmax``) and as many pair branches (a pair
source such as ``tfrecord_pairs``: positive pairs, two images of one identity). The ``k``-th single-image
branch and the ``k``-th pair branch, in recipe order, are one DDL branch: its negative similarities are each
image's hardest other-identity similarity in the single-image batch, its positive ones the cosines of the
pairs. The first of each is the teacher (easy data), the others are students (hard data).

Per step (one backbone forward over every branch):
``loss = Σ_single weight_b · CE_b + weight · DDL(neg, pos)``; the DDL term is logged as the loss of every pair
branch and is not scaled by their branch weights (TFace neither; it also left the CE unweighted).

Differences to TFace v0.1.0 beyond the loss's own (:mod:`tface.methods.ddl_loss`): the hardest negatives use
the labels (TFace's ID-balanced sampler with one image per identity is not needed), and the similarities are
those of this process's rows (TFace all-gathered the features; under DDP the gradients are averaged).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import attrs
import torch
from torch import nn

from tface.core.config import option, options
from tface.core.data.branches import MultiBatch, is_pair_dataset
from tface.core.method import MethodContext, MethodParts, TrainingMethod
from tface.core.train.errors import TrainingError
from tface.core.train.marginsoftmax import BranchOut, build_classifiers
from tface.methods.ddl_loss import DDL, hardest_negatives, pair_similarities

__all__ = ["DDLMethod", "DDLStep"]

_nonneg = attrs.validators.ge(0)


@options
class DDLMethod(TrainingMethod):
    """``[method] name = "ddl"``: margin-softmax on the single-image branches plus ``weight`` × the DDL loss.

    The loss options are :class:`~tface.methods.ddl_loss.DDL`'s (TFace's defaults).
    """

    def __init__(self, weight: float = option(1.0, _nonneg),
                 pos_kl_weight: float = option(0.1, _nonneg), neg_kl_weight: float = option(0.02, _nonneg),
                 order_weight: float = option(0.5, _nonneg),
                 positive_threshold: float = option(0.0, attrs.validators.ge(-1.0), attrs.validators.lt(1.0)),
                 bins: int = option(1000, attrs.validators.ge(2)), sigma: float = option(0.1, attrs.validators.gt(0))):
        self.weight = float(weight)
        self.pos_kl_weight, self.neg_kl_weight, self.order_weight = pos_kl_weight, neg_kl_weight, order_weight
        self.positive_threshold, self.bins, self.sigma = positive_threshold, bins, sigma
        self.loss = DDL(pos_kl_weight=pos_kl_weight, neg_kl_weight=neg_kl_weight, order_weight=order_weight,
                        positive_threshold=positive_threshold, bins=bins, sigma=sigma)

    def build(self, ctx: MethodContext) -> MethodParts:
        singles = [s.name for s in ctx.specs if not is_pair_dataset(s.dataset)]
        pairs = [s.name for s in ctx.specs if is_pair_dataset(s.dataset)]
        if len(singles) < 2 or len(singles) != len(pairs):
            raise TrainingError(
                f"method ddl needs as many single-image branches as pair branches, at least 2 of each (the first "
                f"of each the easy teacher data, the others hard student data); this recipe has {len(singles)} "
                f"single-image ({', '.join(singles) or 'none'}) and {len(pairs)} pair branches "
                f"({', '.join(pairs) or 'none'}); pairs come from a pair source such as tfrecord_pairs")
        if not ctx.recipe.uses_classifier:
            raise TrainingError("method ddl trains a classifier on each single-image branch: the [[loss]] tables "
                                "need a classification loss (or none at all: softmax)")
        weights = {b.name: b.weight for b in ctx.recipe.data}
        if not sum(weights[n] for n in pairs) > 0:
            raise TrainingError("method ddl: the pair branches all have weight 0; the DDL term would vanish")
        return MethodParts(classifiers=build_classifiers(ctx.recipe, ctx.parts, ctx.specs, ctx.embedding_size,
                                                         ctx.world, skip_pairs=True))

    def train_module(self, setup) -> nn.Module:  # noqa: ANN001 - TrainingSetup (core's train.setup)
        from tface.core.train.engine import autocast

        backbone = setup.compiled if setup.compiled is not None else setup.backbone
        pair_weight = sum(w for name, w in setup.weights.items() if name not in setup.classifiers)
        return DDLStep(backbone, setup.classifiers, self.loss, self.weight / pair_weight, lambda: autocast(setup))


class DDLStep(nn.Module):
    """The forward of a DDL step: ``module(images, batch)`` → per branch ``(loss, correct, rows, scored)``.

    ``pair_scale`` is ``weight / Σ pair-branch weights``: each pair branch reports the DDL term times it, so
    the engine's weighted sum over the pair branches adds exactly ``weight · DDL``.
    """

    def __init__(self, backbone: nn.Module, classifiers: nn.ModuleDict, loss: DDL, pair_scale: float,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        super().__init__()
        self.backbone, self.classifiers, self.loss = backbone, classifiers, loss
        self.pair_scale, self.autocast = float(pair_scale), autocast
        #: the last step's per-DDL-branch mean negative and positive similarities (detached, for logging)
        self.last_means: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, images: torch.Tensor, batch: MultiBatch) -> list[BranchOut]:
        with self.autocast():
            embeddings = self.backbone(images)
        embeddings = embeddings.float()
        out: dict[str, BranchOut] = {}
        neg: list[torch.Tensor] = []
        pos: list[torch.Tensor] = []
        for i, (name, emb, labels) in enumerate(zip(batch.names, batch.split(embeddings), batch.labels)):
            if batch.is_pairs(i):
                pos.append(pair_similarities(emb[0::2], emb[1::2]))
                continue
            result = self.classifiers[name](emb, labels)
            out[name] = (result.loss, result.correct, len(labels), result.seen)
            neg.append(hardest_negatives(emb, labels))
        ddl = self.loss(neg, pos)
        self.last_means = (ddl.neg_mean, ddl.pos_mean)
        term = ddl.loss * self.pair_scale
        return [out[name] if not batch.is_pairs(i) else (term, 0, batch.sizes[i], 0)
                for i, name in enumerate(batch.names)]

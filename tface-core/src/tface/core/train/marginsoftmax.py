"""Margin-softmax training, tface's default method: a classifier (margin head + classification loss) per
data branch beside the embedding losses, all on one backbone forward.

``build_classifiers`` makes the classifiers of a run in the layout ``[classifier] mode`` asks for;
``TrainModule`` is the step's forward over the backbone, those classifiers and the embedding losses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from tface.core import recipe as recipe_mod
from tface.core.classifier import Classifier, ReduceContext, ShardedClassifier
from tface.core.classifier.ops import GroupContext
from tface.core.data.branches import BranchSpec, MultiBatch, is_pair_dataset
from tface.core.method import MethodContext, MethodParts, TrainingMethod
from tface.core.train.components import Components
from tface.core.train.errors import TrainingError

if TYPE_CHECKING:
    from tface.core.train.distributed import World
    from tface.core.train.setup import TrainingSetup

__all__ = ["BranchOut", "MarginSoftmax", "TrainModule", "build_classifiers"]


def build_classifiers(recipe: recipe_mod.Recipe, parts: Components, specs: list[BranchSpec], emb: int,
                      world: World | None, skip_pairs: bool = False) -> nn.ModuleDict:
    """One classifier per branch: class spaces of different data sets never mix (TFace: one head each).

    A branch of image pairs is refused, or left without a classifier when ``skip_pairs`` (a pair method).

    ``[classifier] mode`` decides the layout: ``local`` (every process holds every centre), ``sharded`` or
    ``sampled`` (each process holds a class range, :class:`~tface.core.classifier.ShardedClassifier`). None
    when the ``[[loss]]`` tables hold no classification loss.
    """
    if not recipe.uses_classifier:
        return nn.ModuleDict()
    assert parts.head is not None and recipe.head is not None
    heads = [parts.head] + [recipe.head.build("head") for _ in specs[1:]]
    # the classification loss, built like the heads: the recipe's instance for the first branch, new ones after
    nll = next((i for i, t in enumerate(recipe.loss) if t.takes == "nll"), None)
    losses = ([None] * len(specs) if nll is None else
              [parts.losses[nll]] + [recipe.loss[nll].component.build(f"loss[{nll}]") for _ in specs[1:]])
    cfg = recipe.classifier
    distributed = world is not None and world.distributed
    out = nn.ModuleDict()
    for i, (s, head, loss) in enumerate(zip(specs, heads, losses)):
        if is_pair_dataset(s.dataset):
            if skip_pairs:
                continue
            raise TrainingError(f"{parts.data_keys[i]} ({recipe.data[i].source.name}) yields image pairs, which "
                                "margin_softmax does not train on; a method that uses pairs (e.g. [method] "
                                'name = "ddl") takes them')
        n = int(s.dataset.num_classes)
        if n < 2:
            raise TrainingError(
                f"{parts.data_keys[i]} ({recipe.data[i].source.name}): the data set has {n} "
                f"identit{'y' if n == 1 else 'ies'}; training a classifier needs at least 2")
        if cfg.mode == "local":
            ctx = GroupContext(rows_split=True, device=world.device) if distributed else ReduceContext()
            out[s.name] = Classifier(n, emb, head, cfg.init_std, loss=loss, ctx=ctx)
            continue
        ctx = GroupContext(rows_split=False, device=world.device) if distributed else ReduceContext()
        if n < ctx.world_size:
            raise TrainingError(f"{parts.data_keys[i]}: {n} classes cannot be sharded over {ctx.world_size} "
                                'processes; use [classifier] mode = "local"')
        out[s.name] = ShardedClassifier(n, emb, head, cfg.init_std, ctx=ctx, loss=loss,
                                        sample_rate=cfg.sample_rate if cfg.mode == "sampled" else 1.0,
                                        sampled=cfg.mode == "sampled")
    return out



#: One branch's outcome of a forward: its weighted loss, top-1 hits, rows, and rows a classifier scored.
BranchOut = tuple[torch.Tensor, int, int, int]


class TrainModule(nn.Module):
    """The backbone, the replicated classifiers and the embedding losses as one module, so one wrap (DDP)
    covers every parameter whose gradient the processes average.

    Sharded classifiers are called from the forward but are not submodules: their centres differ per process
    and their gradients are already exact, so DDP must not average them.
    Only the backbone runs under ``autocast``; the classifiers (cosines, margins, softmax cross-entropy) see fp32
    embeddings and run in fp32, so a margin of a few hundredths is not lost in bf16's 8-bit mantissa.
    """

    def __init__(self, backbone: nn.Module, classifiers: nn.ModuleDict,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 embedding_losses: Sequence[tuple[nn.Module, float]] = (), classifier_weight: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.classifiers = nn.ModuleDict({n: c for n, c in classifiers.items() if not isinstance(c, ShardedClassifier)})
        self.embedding_losses = nn.ModuleList([m for m, _ in embedding_losses])
        self.loss_weights = [float(w) for _, w in embedding_losses]
        self.classifier_weight = float(classifier_weight)
        self.autocast = autocast
        # a plain dict: not registered, so DDP neither syncs nor broadcasts the shards
        self.__dict__["sharded"] = {n: c for n, c in classifiers.items() if isinstance(c, ShardedClassifier)}

    def forward(self, images: torch.Tensor, batch: MultiBatch) -> list[BranchOut]:
        """Per branch of ``batch``: (loss, correct, rows, scored) on that branch's embeddings."""
        with self.autocast():
            embeddings = self.backbone(images)
        embeddings = embeddings.float()
        out: list[BranchOut] = []
        for name, emb, labels in zip(batch.names, batch.split(embeddings), batch.labels):
            classifier = self.classifiers[name] if name in self.classifiers else self.sharded.get(name)
            loss: torch.Tensor | None = None
            correct = scored = 0
            if classifier is not None:
                result = classifier(emb, labels)
                loss = result.loss * self.classifier_weight if self.classifier_weight != 1 else result.loss
                correct, scored = result.correct, result.seen
            for module, weight in zip(self.embedding_losses, self.loss_weights):
                term = module(emb, labels) * weight
                loss = term if loss is None else loss + term
            assert loss is not None, "a recipe without a classifier has at least one embedding loss"
            out.append((loss, correct, len(labels), scored))
        return out




class MarginSoftmax(TrainingMethod):
    """The default method: per branch a classifier (the recipe's ``[head]`` and classification loss, in the
    ``[classifier]`` layout) plus the recipe's embedding losses, on one backbone forward (TFace's training)."""

    def build(self, ctx: MethodContext) -> MethodParts:
        classifiers = build_classifiers(ctx.recipe, ctx.parts, ctx.specs, ctx.embedding_size, ctx.world)
        return MethodParts(classifiers=classifiers)

    def train_module(self, setup: TrainingSetup) -> nn.Module:
        from tface.core.train.engine import autocast

        backbone = setup.compiled if setup.compiled is not None else setup.backbone
        return TrainModule(backbone, setup.classifiers, lambda: autocast(setup), setup.embedding_losses,
                           setup.classifier_weight)

"""Setup of a run: device, data branches and loader, backbone, one classifier per branch, optimiser, schedule.

Everything here happens once, before the first step; :class:`TrainingSetup` holds the result for the
step engine, the training state and the trainer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from tface.core import recipe as recipe_mod
from tface.core.backbone import BackboneInfo, backbone_info
from tface.core.classifier import Classifier
from tface.core.data.branches import BranchLoader, BranchSpec
from tface.core.train.components import Components, Compose
from tface.core.train.errors import TrainingError
from tface.core.train.optim import build_optimizer, build_scheduler

__all__ = ["TrainingSetup", "build_training", "resolve_device", "embedding_size_of"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device = {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def embedding_size_of(backbone: nn.Module) -> int:
    """The declared ``embedding_size`` (the backbone contract, :mod:`tface.core.backbone`; never probed)."""
    return backbone_info(backbone).embedding_size


@attrs.define(eq=False)
class TrainingSetup:
    """The built run: what the step engine trains and the training state saves."""

    device: torch.device
    backbone: nn.Module
    classifiers: nn.ModuleDict
    weights: dict[str, float]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: BranchLoader
    memory_format: torch.memory_format
    #: the backbone contract: embedding and input size, the mean/std the engine normalises batches with
    info: BackboneInfo
    #: evaluation files the data sources provide, per protocol name
    eval_provided: dict[str, dict[str, Path]]
    data_seconds: float
    #: more parts with a state a checkpoint saves and a resumed run restores (``state_dict`` and
    #: ``load_state_dict``), by name: e.g. the grad scaler, the EMA weights
    extra_state: dict[str, Any] = attrs.field(factory=dict)


def _branch_specs(recipe: recipe_mod.Recipe, parts: Components, echo: Callable[[str], None]) -> list[BranchSpec]:
    cfg = recipe.train
    transform = Compose(parts.augmenters) if parts.augmenters else None
    specs = []
    for i, (branch, source) in enumerate(zip(recipe.data, parts.sources)):
        try:
            dataset = source.train_dataset(transform=transform)
        except (ValueError, OSError) as exc:  # bad index, missing shard, label gaps refused, ...
            raise TrainingError(f"data branch {branch.name!r}: {exc}") from exc
        message = getattr(dataset, "label_message", None)
        if message:
            echo(f"note: {message}")
        specs.append(BranchSpec(branch.name, dataset, branch.batch(cfg), branch.weight, branch.sampler,
                                branch.images_per_identity))
        if len(dataset) < branch.batch(cfg):
            key = f"data[{i}].batch_size" if branch.batch_size is not None else "train.batch_size"
            raise TrainingError(f"{key} = {branch.batch(cfg)} but the data set of branch {branch.name!r} "
                                f"has only {len(dataset)} samples")
    return specs


def _classifiers(recipe: recipe_mod.Recipe, parts: Components, specs: list[BranchSpec], emb: int) -> nn.ModuleDict:
    """One classifier per branch: class spaces of different data sets never mix (TFace: one head each)."""
    heads = [parts.head] + [recipe.head.build("head") for _ in specs[1:]]
    for i, s in enumerate(specs):
        n = int(s.dataset.num_classes)
        if n < 2:
            raise TrainingError(
                f"{parts.data_keys[i]} ({recipe.data[i].source.name}): the data set has {n} "
                f"identit{'y' if n == 1 else 'ies'}; training a classifier needs at least 2")
    return nn.ModuleDict({s.name: Classifier(int(s.dataset.num_classes), emb, head) for s, head in zip(specs, heads)})


def build_training(recipe: recipe_mod.Recipe, parts: Components, device: torch.device,
                   echo: Callable[[str], None]) -> TrainingSetup:
    """Read (or generate) the data, then build the models, the optimiser, the schedule and the loader."""
    cfg = recipe.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    echo("preparing data ...")
    t0 = time.perf_counter()
    specs = _branch_specs(recipe, parts, echo)
    data_seconds = time.perf_counter() - t0
    backbone = parts.backbone.to(device)
    if cfg.channels_last:  # faster depthwise/1x1 convolutions on CPUs and tensor cores
        backbone = backbone.to(memory_format=torch.channels_last)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    info = backbone_info(backbone, recipe.backbone.name)
    emb = info.embedding_size
    classifiers = _classifiers(recipe, parts, specs, emb).to(device)
    optimizer = build_optimizer(cfg, [backbone, classifiers])
    scheduler = build_scheduler(cfg, optimizer)
    try:
        loader = BranchLoader(specs, num_workers=cfg.num_workers, seed=recipe.seed, pin_memory=device.type == "cuda")
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    provided: dict[str, dict[str, Path]] = {}
    for source in parts.sources:
        for proto, sets in source.eval_sets().items():
            provided.setdefault(proto, {}).update(sets)
    sizes = ", ".join(f"{s.name}: {len(s.dataset):,} images, {int(s.dataset.num_classes):,} classes" for s in specs)
    echo(f"data: {sizes} ({data_seconds:.1f}s); device: {device}; steps: {cfg.max_steps}, {len(loader)} per epoch")
    return TrainingSetup(device=device, backbone=backbone, classifiers=classifiers,
                         weights={s.name: s.weight for s in specs}, optimizer=optimizer, scheduler=scheduler,
                         loader=loader, memory_format=memory_format, info=info, eval_provided=provided,
                         data_seconds=data_seconds)

"""Setup of a run: device, data branches and loader, backbone, one classifier per branch, optimiser, schedule.

Everything here happens once, before the first step; :class:`TrainingSetup` holds the result for the
step engine, the training state and the trainer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from tface.core import recipe as recipe_mod
from tface.core.backbone import BackboneInfo, backbone_info
from tface.core.classifier import ShardedClassifier
from tface.core.data.branches import BranchLoader, BranchSpec
from tface.core.method import MethodContext, TrainingMethod
from tface.core.train.batchaugment import DeviceAugment
from tface.core.train.components import Components, Compose
from tface.core.train.ema import EMA
from tface.core.train.errors import TrainingError
from tface.core.train.finetune import load_start_weights
from tface.core.train.marginsoftmax import MarginSoftmax
from tface.core.train.optim import build_optimizer, build_scheduler

if TYPE_CHECKING:
    from tface.core.train.distributed import World

__all__ = ["TrainingSetup", "build_training", "check_precision", "optimisation_parts", "resolve_device",
           "embedding_size_of"]


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device of this process: ``auto`` is CUDA when available; in a process group (``local_rank`` given)
    a CUDA run puts each process on ``cuda:LOCAL_RANK``."""
    cuda = torch.cuda.is_available()
    if name.startswith("cuda") and not cuda:
        raise TrainingError(f"device = {name!r} but CUDA is not available on this machine")
    if name == "auto":
        name = "cuda" if cuda else "cpu"
    if local_rank is None or name == "cpu":
        return torch.device(name)
    if name != "cuda":
        raise TrainingError(f"device = {name!r}: in a distributed run each process trains on cuda:LOCAL_RANK; "
                            'use device = "cuda" (or "auto") and CUDA_VISIBLE_DEVICES to choose the GPUs')
    if local_rank >= torch.cuda.device_count():
        raise TrainingError(f"LOCAL_RANK = {local_rank} but this machine shows {torch.cuda.device_count()} "
                            "CUDA device(s); start at most one process per GPU")
    return torch.device("cuda", local_rank)


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
    #: ``[[loss]]`` terms on embeddings (module, weight), applied to every branch beside its classifier
    embedding_losses: list[tuple[nn.Module, float]] = attrs.field(factory=list)
    #: the weight of the classification loss in each branch's loss
    classifier_weight: float = 1.0
    #: this process in the run (:mod:`~tface.core.train.distributed`); 0, 1, 0 for a single process
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: the module the step engine calls for the forward (backbone + classifiers; DDP-wrapped in a process group);
    #: None: the engine builds the plain one
    train_module: nn.Module | None = None
    #: ``sync_context(last)``: a context manager around each micro-batch's backward (DDP's ``no_sync`` unless last)
    sync_context: Callable[[bool], contextlib.AbstractContextManager] = lambda last: contextlib.nullcontext()
    #: the ``[train]`` table: precision, accumulation, clipping and the NaN policy the engine follows
    cfg: recipe_mod.TrainConfig = attrs.field(factory=recipe_mod.TrainConfig)
    #: the run's training method (``[method]``): it builds the step's forward module
    method: TrainingMethod = attrs.field(factory=MarginSoftmax)
    #: what the method trains or uses beside the backbone and the classifiers (saved in checkpoints)
    method_modules: nn.ModuleDict = attrs.field(factory=nn.ModuleDict)
    #: the ``[[augment]]`` ops that run on each uint8 batch on the device (``on = "device"``), or None
    device_augment: DeviceAugment | None = None
    #: the backbone's training forward: ``torch.compile(backbone)`` under ``train.compile``, else None (the
    #: backbone itself); it shares its parameters with ``backbone``, which evaluation and checkpoints use
    compiled: nn.Module | None = None
    #: fp16's loss scaler (GPU only); None in fp32 and bf16
    scaler: torch.amp.GradScaler | None = None
    #: the moving average of the backbone's weights (``train.ema_decay``), or None
    ema: EMA | None = None

    @property
    def eval_backbone(self) -> nn.Module:
        """The weights evaluation and the exported ``backbone.pt`` use: the EMA's when it is on."""
        return self.ema.module if self.ema is not None else self.backbone


def _branch_specs(recipe: recipe_mod.Recipe, parts: Components, echo: Callable[[str], None]) -> list[BranchSpec]:
    cfg = recipe.train
    transform = Compose(parts.worker_augmenters) if parts.worker_augmenters else None
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


def _check_image_size(specs: list[BranchSpec], info: BackboneInfo, backbone: str) -> None:
    """Refuse a branch whose (augmented) images are not the backbone's input size, before any step.

    Without it the mismatch surfaces as a shape error deep inside the backbone at the first step, after the
    data was prepared and the untrained model evaluated (evaluation resizes crops; training does not). The
    sample is read under a forked generator: otherwise a random augmenter would shift the run's random numbers.
    """
    side = info.input_size
    for s in specs:
        try:
            with torch.random.fork_rng(devices=[]):  # the augmenters' draws must not move the run's generator
                image = s.dataset[0][0]
        except Exception:  # noqa: BLE001 - a bad first record is the loader's to report, with its own message
            continue
        shape = tuple(getattr(image, "shape", ()))[-2:]
        if len(shape) == 2 and shape != (side, side):
            raise TrainingError(
                f"data branch {s.name!r}: its images are {shape[0]}×{shape[1]} but backbone {backbone!r} takes "
                f"{side}×{side} inputs (backbone.input_size = {side}); make them match, e.g. set backbone.input_size "
                f"= {shape[0]} if the backbone offers it, or render the data at {side} (SynthFace: data.image_size)")


def _prepare_data(recipe: recipe_mod.Recipe, parts: Components, echo: Callable[[str], None]
                  ) -> tuple[list[BranchSpec], dict[str, dict[str, Path]]]:
    """The training data sets and the evaluation files the sources provide (generated into caches if needed)."""
    specs = _branch_specs(recipe, parts, echo)
    provided: dict[str, dict[str, Path]] = {}
    for source in parts.sources:
        for proto, sets in source.eval_sets().items():
            provided.setdefault(proto, {}).update(sets)
    return specs, provided


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run, before any data is prepared."""
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError(f'train.precision = "fp16" needs a CUDA device (this run\'s device is {device.type}); '
                            'use "bf16" on the CPU')
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError('train.precision = "bf16" but this GPU does not support bfloat16; use "fp16"')


def optimisation_parts(cfg: recipe_mod.TrainConfig, backbone: nn.Module, classifiers: nn.Module,
                       device: torch.device) -> dict[str, Any]:
    """The optimiser, schedule, compiled forward, fp16 scaler and EMA of ``[train]`` (TrainingSetup fields)."""
    optimizer = build_optimizer(cfg, [backbone, classifiers])
    return {
        "optimizer": optimizer,
        "scheduler": build_scheduler(cfg, optimizer),
        # compiled lazily, at the first step; shares the parameters, so state_dict keys stay plain
        "compiled": torch.compile(backbone) if cfg.compile else None,
        "scaler": torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None,
        "ema": EMA(backbone, cfg.ema_decay) if cfg.ema_decay else None,
    }


def build_training(recipe: recipe_mod.Recipe, parts: Components, device: torch.device,
                   echo: Callable[[str], None], world: World | None = None) -> TrainingSetup:
    """Read (or generate) the data, then build the models, the optimiser, the schedule and the loader.

    In a process group (``world``) rank 0 prepares the data first (SynthFace fills its cache) while the others
    wait, then they read it; each process's samplers take its rank-strided share.
    """
    cfg = recipe.train
    rank, world_size = (world.rank, world.world_size) if world is not None else (0, 1)
    check_precision(cfg.precision, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    echo("preparing data ...")
    t0 = time.perf_counter()
    if world is not None:
        specs, provided = world.main_first(lambda: _prepare_data(recipe, parts, echo), "preparing the data")
    else:
        specs, provided = _prepare_data(recipe, parts, echo)
    data_seconds = time.perf_counter() - t0
    backbone = parts.backbone.to(device)
    if cfg.channels_last:  # faster depthwise/1x1 convolutions on CPUs and tensor cores
        backbone = backbone.to(memory_format=torch.channels_last)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    info = backbone_info(backbone, recipe.backbone.name)
    _check_image_size(specs, info, recipe.backbone.name)
    emb = info.embedding_size
    built = parts.method.build(MethodContext(recipe, parts, specs, emb, device, world, echo, backbone=backbone,
                                             info=info))
    classifiers = built.classifiers.to(device)
    method_modules = built.modules.to(device)
    load_start_weights(recipe, backbone, classifiers, echo)  # fine-tuning: before the optimiser exists
    optimisation = optimisation_parts(cfg, backbone, nn.ModuleList([classifiers, method_modules]), device)
    for c in classifiers.values():
        if isinstance(c, ShardedClassifier):
            c.attach(optimisation["optimizer"])  # sampled: the optimiser state of the centres lives in the shard
    embedding_losses = [(m.to(device), t.weight) for m, t in zip(parts.losses, recipe.loss)
                        if t.takes == "embeddings"]
    classifier_weight = next((t.weight for t in recipe.loss if t.takes == "nll"), 1.0)
    try:
        loader = BranchLoader(specs, num_workers=cfg.num_workers, seed=recipe.seed, pin_memory=device.type == "cuda",
                              num_replicas=world_size, rank=rank)
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    sizes = ", ".join(f"{s.name}: {len(s.dataset):,} images, {int(s.dataset.num_classes):,} classes" for s in specs)
    procs = f" x {world_size} processes" if world_size > 1 else ""
    echo(f"data: {sizes} ({data_seconds:.1f}s); device: {device}{procs}; steps: {cfg.max_steps}, "
         f"{len(loader)} per epoch")
    return TrainingSetup(device=device, backbone=backbone, classifiers=classifiers,
                         weights={s.name: s.weight for s in specs}, loader=loader, memory_format=memory_format,
                         info=info, eval_provided=provided, data_seconds=data_seconds, rank=rank,
                         embedding_losses=embedding_losses, classifier_weight=classifier_weight,
                         world_size=world_size, local_rank=world.local_rank if world is not None else 0, cfg=cfg,
                         extra_state={k: optimisation[k] for k in ("scaler", "ema") if optimisation[k] is not None},
                         method=parts.method, method_modules=method_modules,
                         device_augment=(DeviceAugment(parts.device_augmenters, recipe.seed)
                                         if parts.device_augmenters else None),
                         **optimisation)

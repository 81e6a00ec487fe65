"""Build every component a recipe names and check its inputs, before any data is generated or read."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from tface.core import kinds
from tface.core import recipe as recipe_mod
from tface.core.backbone import backbone_info
from tface.core.config import ConfigError
from tface.core.data.sample import FaceSample, takes_sample
from tface.core.method import TrainingMethod
from tface.core.protocol import check_inputs as protocol_inputs
from tface.core.recipe import DEFAULT_METHOD
from tface.core.train.batchaugment import on_device, split_augmenters
from tface.core.train.finetune import check_start_weights

__all__ = ["Compose", "Components", "build_components"]


class Compose:
    """Apply augmenters in order (picklable, so DataLoader workers can use it).

    An augmenter that declares ``takes_sample = True`` (geometric ops, occluders) gets and returns a
    :class:`~tface.core.data.sample.FaceSample`: the image with its landmarks (the ArcFace template's for an
    aligned crop when the data gives none). Any other augmenter gets and returns the image alone and must not
    move pixels (photometric ops).
    """

    def __init__(self, steps: Sequence[Callable[..., Any]]):
        self.steps = list(steps)
        self._samples = any(takes_sample(s) for s in self.steps)

    @property
    def takes_landmarks(self) -> bool:
        """Whether the data set should hand over the landmarks it stores (some op moves or uses them)."""
        return self._samples

    def __call__(self, img: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        return self.sample(img, landmarks).image if self._samples else self._images(img)

    def _images(self, img: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            img = step(img)
        return img

    def sample(self, img: torch.Tensor, landmarks: torch.Tensor | None = None) -> FaceSample:
        """The augmented image with its landmarks moved along (the preview draws them)."""
        sample = FaceSample(img, landmarks) if landmarks is not None else FaceSample.aligned(img)
        for step in self.steps:
            if takes_sample(step):
                sample = step(sample)
            else:
                sample = FaceSample(step(sample.image), sample.landmarks)
        return sample


class Components:
    """Everything a recipe builds, before any data is generated or read."""

    def __init__(self, recipe: recipe_mod.Recipe):
        self.recipe = recipe
        self.data_keys = ["data" if len(recipe.data) == 1 else f"data[{i}]" for i in range(len(recipe.data))]
        built: dict[str, Any] = {}
        for kind in kinds.in_recipe():  # the recipe slots, from the one table of kinds
            value = getattr(recipe, kind.slot)
            if value is None:  # no [head]: embedding losses only
                built[kind.name] = None
                continue
            if kind.slot == "loss":
                built[kind.name] = [t.component.build(f"loss[{i}]") for i, t in enumerate(value)]
                continue
            if not kind.many:
                built[kind.name] = value.build(kind.slot)
                continue
            keys = self.data_keys if kind.slot == "data" else [f"{kind.slot}[{i}]" for i in range(len(value))]
            tables = [v.source if isinstance(v, recipe_mod.DataBranch) else v for v in value]
            built[kind.name] = [c.build(key) for c, key in zip(tables, keys)]
        self.sources: list[Any] = built["datasets"]
        self.backbone: nn.Module = built["backbones"]
        self.head: nn.Module | None = built["heads"]
        #: the built ``[[loss]]`` components, in recipe order (weights in ``recipe.loss``)
        self.losses: list[nn.Module] = built["losses"]
        #: the training method (``[method]``; margin_softmax by default)
        self.method: TrainingMethod = built["methods"]
        self.augmenters: list[Any] = built["augmenters"]
        #: the augmenters run per image in the data workers, and those run on the batch on the device (the tail)
        self.worker_augmenters, self.device_augmenters = split_augmenters(
            self.augmenters, [f"augment[{i}]" for i in range(len(self.augmenters))])
        self.protocols: list[Any] = built["protocols"]
        backbone_info(self.backbone, recipe.backbone.name)  # the contract, checked by --dry-run too

    def check_inputs(self) -> None:
        """Raise :class:`ConfigError` naming the recipe key and path of every input file that is missing.

        Asks each data source and protocol (``check_inputs()``), so a missing index, image folder or ``.bin``
        is reported by ``--dry-run`` and before a run folder exists, not minutes into a run.
        """
        problems = [f"{key}.{p}" for key, src in zip(self.data_keys, self.sources) for p in src.check_inputs()]
        problems += [f"eval[{i}].{p}" for i, proto in enumerate(self.protocols) for p in protocol_inputs(proto)]
        problems += check_start_weights(self.recipe)
        if problems:
            where = self.recipe.source
            raise ConfigError([f"{where}: {p}" if where is not None else p for p in problems])

    def describe(self) -> list[str]:
        def params(m: nn.Module) -> str:
            return f"{sum(p.numel() for p in m.parameters()):,} parameters"

        r = self.recipe
        lines = [
            f"data      {b.source.name}: {type(src).__name__}"
            + (f" (branch {b.name}, batch {b.batch(r.train)}, weight {b.weight:g}, {b.sampler} sampler)"
               if len(r.data) > 1 or b.explicit else "")
            for b, src in zip(r.data, self.sources)
        ]
        lines += [
            f"backbone  {r.backbone.name}: {type(self.backbone).__name__}, {params(self.backbone)}",
        ]
        if r.head is not None:
            lines.append(f"head      {r.head.name}: {self.head}")
        if r.uses_classifier:
            c = r.classifier
            lines.append(f"classifier {c.mode}" + (f", sample_rate {c.sample_rate:g}" if c.mode == "sampled" else ""))
        lines += [f"loss      {t.component.name}: weight {t.weight:g}" for t in r.loss]
        if r.method.name != DEFAULT_METHOD or r.method.options:
            lines.append(f"method    {r.method.name}: {self.method!r}")
        lines += [f"augment   {c.name}: {a}" + (" (on the device, per batch)" if on_device(a) else "")
                  for c, a in zip(r.augment, self.augmenters)]
        lines += [f"eval      {c.name}: {type(p).__name__}" for c, p in zip(r.eval, self.protocols)]
        return lines


def build_components(recipe: recipe_mod.Recipe) -> Components:
    return Components(recipe)

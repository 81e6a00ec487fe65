"""SCF as a training method (Li et al., CVPR 2021, "Spherical Confidence Learning"; TFace ``tasks/scf``, which
ships incomplete): learn a per-image confidence κ on a frozen, trained face model.

The backbone and the class centres come trained (``[backbone] checkpoint`` and ``[classifier] checkpoint``) and
stay frozen: evaluation mode, no gradient, not optimised. An :class:`~tface.methods.vmf.UncertaintyHead` reads
the backbone's last feature map (the backbone contract's ``forward_features``) and predicts log κ; the loss is
the KL divergence between a Dirac at the image's class centre and the vMF(μ, κ) on the sphere of radius
``radius`` (:func:`~tface.methods.vmf.vmf_nll`), averaged per branch. Only the head trains.

For evaluation the head is attached to the backbone as its confidence (:mod:`tface.core.attached`), during the run
and, from the run's ``last.pt``, in ``tface eval --run``: IJB's ``confidence = true`` pools templates with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from tface.core.attached import CONFIDENCE, attach
from tface.core.backbone import backbone_info, forward_features
from tface.core.config import option, options
from tface.core.data.branches import MultiBatch, is_pair_dataset
from tface.core.method import MethodContext, MethodParts, TrainingMethod
from tface.core.train.errors import TrainingError
from tface.core.train.marginsoftmax import BranchOut, build_classifiers
from tface.methods.vmf import UncertaintyHead, vmf_nll

__all__ = ["SCF", "SCFStep", "Kappa"]


@options
class SCF(TrainingMethod):
    """``[method] name = "scf"``: an uncertainty head on a frozen backbone, the KL(Dirac ‖ r-radius vMF) loss.

    ``radius``: the sphere's radius ``r`` (TFace: 64, the ArcFace scale); ``kappa_min``/``kappa_max``: the range
    the head's κ is kept in (see :class:`~tface.methods.vmf.UncertaintyHead`).
    """

    def __init__(self, radius: float = option(64.0, attrs.validators.gt(0)),
                 kappa_min: float = option(1.0, attrs.validators.gt(0)),
                 kappa_max: float = option(1e5, attrs.validators.gt(0))):
        if not kappa_min < kappa_max:
            raise ValueError(f"kappa_min must be below kappa_max, got {kappa_min} and {kappa_max}")
        self.radius, self.kappa_min, self.kappa_max = float(radius), float(kappa_min), float(kappa_max)

    def build(self, ctx: MethodContext) -> MethodParts:
        recipe = ctx.recipe
        problems = []
        if recipe.backbone.weights.checkpoint is None:
            problems.append("[backbone] checkpoint: the trained face model whose confidence SCF learns")
        if recipe.classifier.checkpoint is None:
            problems.append("[classifier] checkpoint: the trained class centres (a run's last.pt, or TFace's "
                            "head checkpoint)")
        if recipe.classifier.mode != "local":
            problems.append('[classifier] mode = "local": SCF reads every label\'s centre')
        if ctx.info is None or ctx.info.feature_channels is None:
            problems.append(f"a backbone with a feature map (backbone {recipe.backbone.name!r} offers none; every "
                            "tface-backbones model does)")
        if any(is_pair_dataset(s.dataset) for s in ctx.specs):
            problems.append("single-image data branches only (a pair branch has no class per image)")
        if problems:
            raise TrainingError("method scf needs " + "; ".join(problems))
        assert ctx.backbone is not None and ctx.info is not None and ctx.info.feature_channels is not None
        if int(getattr(ctx.parts.head, "centres_per_class", 1)) != 1:
            raise TrainingError("method scf needs one centre per class (the [head] has several)")
        ctx.backbone.requires_grad_(False)  # frozen: the optimiser never sees it
        classifiers = build_classifiers(recipe, ctx.parts, ctx.specs, ctx.embedding_size, ctx.world)
        classifiers.requires_grad_(False)
        head = UncertaintyHead(ctx.info.feature_channels, self.kappa_min, self.kappa_max)
        return MethodParts(classifiers=classifiers, modules=nn.ModuleDict({"uncertainty": head}))

    def train_module(self, setup) -> nn.Module:  # noqa: ANN001 - TrainingSetup (core's train.setup)
        head = setup.method_modules["uncertainty"]
        for backbone in (setup.backbone, setup.eval_backbone):  # the same module unless EMA is on
            attach(backbone, CONFIDENCE, Kappa(head))
        return SCFStep(setup.backbone, setup.classifiers, head, self.radius)

    def attach_eval(self, backbone: nn.Module, state: Mapping[str, Any]) -> None:
        """The trained head from a run checkpoint's ``method.uncertainty``, attached as ``backbone``'s confidence."""
        channels = backbone_info(backbone).feature_channels
        if channels is None:
            raise ValueError("the backbone offers no feature map (feature_channels), which the SCF head reads")
        if "uncertainty" not in state:
            raise KeyError(f"no SCF head (method.uncertainty) among the method modules {sorted(state)}")
        head = UncertaintyHead(channels, self.kappa_min, self.kappa_max)
        head.load_state_dict(state["uncertainty"])
        attach(backbone, CONFIDENCE, Kappa(head.eval()))


class Kappa(nn.Module):
    """κ = exp(head(feature map)): the SCF head as the positive per-image confidence core's contract asks for."""

    def __init__(self, head: UncertaintyHead):
        super().__init__()
        self.head = head

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.head(feature_map.float()).exp()


class SCFStep(nn.Module):
    """The forward of an SCF step: the frozen backbone's embedding and feature map, the head's κ, the loss."""

    def __init__(self, backbone: nn.Module, classifiers: nn.ModuleDict, head: UncertaintyHead, radius: float):
        super().__init__()
        self.head, self.radius = head, float(radius)
        # not submodules: frozen, so neither train() nor DDP reaches them
        self.__dict__["backbone"] = backbone
        self.__dict__["classifiers"] = classifiers
        #: the last step's mean κ per branch (for logging and tests)
        self.last_kappa: dict[str, float] = {}

    def forward(self, images: torch.Tensor, batch: MultiBatch) -> list[BranchOut]:
        self.backbone.eval()  # BatchNorm statistics stay the trained model's
        with torch.no_grad():
            embeddings, features = forward_features(self.backbone, images)
        log_kappa = self.head(features.float())
        kappa = log_kappa.exp()
        out: list[BranchOut] = []
        for name, emb, k, labels in zip(batch.names, batch.split(embeddings.float()), batch.split(kappa),
                                        batch.labels):
            centres = self.classifiers[name].weight.detach()[labels]
            loss = vmf_nll(emb, k, centres, self.radius).mean().to(emb.dtype)
            self.last_kappa[name] = float(k.detach().mean())
            out.append((loss, 0, len(labels), 0))
        return out

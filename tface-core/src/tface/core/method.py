"""Training methods (entry-point group ``tface.methods``): what one training step computes.

Hooks observe a run; a method owns its step. Given the run's data branches and backbone, it builds what it
trains or uses beside the backbone (:class:`MethodParts`: a classifier per branch, other modules such as a
teacher or an uncertainty head) and the module whose forward computes each branch's loss from a batch. It is one
module so that one DDP wrap covers every parameter the processes average. Everything in ``MethodParts`` is
saved in checkpoints and restored on resume; parameters with ``requires_grad`` are optimised with the backbone.

tface's margin-softmax training is the default method, ``margin_softmax``, registered through the same entry
points a third party uses; a recipe picks another with ``[method] name = "..."`` plus the method's options.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from tface.core.recipe import DEFAULT_METHOD

if TYPE_CHECKING:
    from tface.core.backbone import BackboneInfo
    from tface.core.data.branches import BranchSpec
    from tface.core.recipe import Recipe
    from tface.core.train.components import Components
    from tface.core.train.distributed import World
    from tface.core.train.setup import TrainingSetup

__all__ = ["DEFAULT_METHOD", "MethodContext", "MethodParts", "TrainingMethod"]



@attrs.define(eq=False)
class MethodContext:
    """What a method builds from: the recipe, its built components, the data branches, the backbone's embedding
    size, the device, the process group (None for one process) and the backbone with its contract."""

    recipe: Recipe
    parts: Components
    specs: list[BranchSpec]
    embedding_size: int
    device: torch.device
    world: World | None = None
    echo: Callable[[str], None] = lambda message: None
    #: the run's backbone, on the device (start weights not yet loaded: they load after ``build``)
    backbone: nn.Module | None = None
    #: its declared contract (sizes, normalisation, ``feature_channels``)
    info: BackboneInfo | None = None


@attrs.define(eq=False)
class MethodParts:
    """What a method trains or uses beside the backbone.

    ``classifiers``: one per data branch that has one (checkpoints hold their whole centres, also when
    sharded); ``modules``: anything else (saved under the checkpoint's ``method`` key by name; frozen ones too,
    so a resumed run needs no outside file).
    """

    classifiers: nn.ModuleDict = attrs.field(factory=nn.ModuleDict)
    modules: nn.ModuleDict = attrs.field(factory=nn.ModuleDict)


class TrainingMethod:
    """Base of training methods: :meth:`build` once per run, :meth:`train_module` for the step's forward.

    The forward module is called as ``module(images, batch)`` with the normalised images of a
    :class:`~tface.core.data.branches.MultiBatch` and returns, per branch of the batch, ``(loss, correct, rows,
    scored)``: the branch's loss tensor, top-1 hits among the ``scored`` rows, and the branch's rows here.
    """

    #: whether the method trains classifiers, so a recipe needs ``[head]``; False: the recipe must leave it out
    needs_head: bool = True

    def build(self, ctx: MethodContext) -> MethodParts:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_module(self, setup: TrainingSetup) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def attach_eval(self, backbone: nn.Module, state: Mapping[str, Any]) -> None:
        """Attach to a freshly built ``backbone`` what evaluation uses from this method (:mod:`tface.core.attached`),
        from ``state``: the run checkpoint's method modules (``checkpoint["method"]``, module name → state_dict).

        ``tface eval --run`` calls it for a run trained with this method, so protocols find the same attachments
        as during the run (SCF's confidence). The default attaches nothing.
        """

    def __repr__(self) -> str:
        config = getattr(type(self), "Config", None)
        if config is None or not attrs.has(config):
            return f"{type(self).__name__}()"
        shown = ", ".join(f"{f.name}={getattr(self, f.name, None)!r}" for f in attrs.fields(config))
        return f"{type(self).__name__}({shown})"


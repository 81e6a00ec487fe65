"""Modules a training method attaches to a backbone for evaluation: SCF's confidence, a quality head.

A protocol receives only the model. A method that learns something an evaluation can use (a per-image
confidence, a quality score) attaches it to the backbone *object* under a key; a protocol that can use it asks
for that key. The mapping is weak and outside the module, so the backbone's ``state_dict``, attributes and
checkpoints stay exactly as they are, and the entry disappears with the backbone. During ``tface run`` the method
attaches in ``train_module``; ``tface eval --run`` re-attaches from the run's checkpoint through the method's
``attach_eval`` (:class:`tface.core.method.TrainingMethod`).
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from tface.core.backbone import forward_features

__all__ = ["CONFIDENCE", "WithConfidence", "attach", "attached", "with_confidence"]

#: The key of a per-image confidence: a module mapping the backbone's feature map ``[N, C, h, w]`` (the backbone
#: contract's ``forward_features``) to a positive confidence ``[N]``, larger = more certain (SCF's κ).
CONFIDENCE = "confidence"

_ATTACHED: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module]] = weakref.WeakKeyDictionary()


def attach(backbone: nn.Module, key: str, module: nn.Module) -> None:
    """Record ``module`` as ``backbone``'s ``key`` (replacing an earlier one under that key)."""
    _ATTACHED.setdefault(backbone, {})[key] = module


def attached(model: nn.Module, key: str) -> nn.Module | None:
    """What :func:`attach` recorded for ``model`` (or for the module inside a DDP/compile/EMA wrapper), else None."""
    from tface.core.weights import unwrap_model

    for m in (model, unwrap_model(model)):
        found = _ATTACHED.get(m, {}).get(key)
        if found is not None:
            return found
    return None


class WithConfidence(nn.Module):
    """``forward(x) -> [N, D + 1]``: the backbone's embedding with the attached confidence as a last column.

    One forward pass gives both (``forward_features``), and both modules are submodules, so a feature cache
    keyed on this module's weights (IJB's) tells a confidence-aware extraction from a plain one.
    """

    def __init__(self, backbone: nn.Module, confidence: nn.Module):
        super().__init__()
        self.backbone, self.confidence = backbone, confidence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding, feature_map = forward_features(self.backbone, x)
        kappa = self.confidence(feature_map).reshape(-1, 1).to(embedding.dtype)
        if kappa.shape[0] != embedding.shape[0]:
            raise ValueError(f"the attached confidence gave {kappa.shape[0]} values for {embedding.shape[0]} images")
        return torch.cat([embedding, kappa], dim=1)


def with_confidence(model: nn.Module) -> WithConfidence | None:
    """``model`` with its attached confidence (:data:`CONFIDENCE`), or None when no method attached one."""
    head = attached(model, CONFIDENCE)
    return None if head is None else WithConfidence(model, head)

"""Architecture hints for weights that do not fit, and ``load_backbone``: build a registered backbone and load a file.

Reading and loading weights is tface-core's job (:mod:`tface.core.weights`: ``weights_only`` reads, nesting and
``module.``/``_orig_mod.`` wrappers undone, strict or reported loads). This module adds what only the zoo knows:
:func:`guess_architecture` names the family and depth of a set of state_dict keys (TFace IR/IR-SE, ResNet,
MobileFaceNet, insightface iResNet), and its ``tface_weights_hint`` hook implementation, registered under the
``tface.plugins`` entry-point group, puts that into core's mismatch errors. Kept import-light: the hook module
is imported whenever the plugin manager starts, so torch and the models load only when a hint is asked for.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tface.core.hooks import hookimpl

if TYPE_CHECKING:
    from torch import nn

__all__ = ["guess_architecture", "load_backbone", "tface_weights_hint"]

log = logging.getLogger(__name__)




def _stage_counts(keys: Iterable[str], pattern: str) -> tuple[int, ...]:
    counts: dict[int, set[int]] = {}
    for k in keys:
        m = re.match(pattern, k)
        if m:
            counts.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return tuple(len(counts[i]) for i in sorted(counts))


def guess_architecture(keys: Iterable[str]) -> str | None:
    """Name the backbone family (and depth) a set of state_dict keys belongs to, or None if unknown."""
    from tface.backbones import iresnet, irse, resnet  # local: only needed when something went wrong

    keys = set(keys)
    if "conv_6_sep.conv.weight" in keys and "output_layer.conv_6_dw.conv.weight" in keys:
        return "TFace MobileFaceNet (factory mobilefacenet)"
    if any(k.startswith("input_layer.") for k in keys) and any(k.startswith("body.") for k in keys):
        n = 1 + max((int(k.split(".")[1]) for k in keys if re.match(r"body\.\d+\.", k)), default=-1)
        se = any(".se_block." in k for k in keys)
        depth = next((d for d, u in irse.UNITS.items() if sum(u) == n and d != 101), None)
        kind = "IR_SE" if se else "IR"
        if depth is None:
            return f"TFace {kind} with {n} units (input_layer.*, body.*)"
        factory = f"irse.build_ir({depth}{', se=True' if se else ''})"
        return f"TFace {kind}_{depth} (input_layer.*, body.*; {factory})"
    if "bn_o1.weight" in keys and "layer1.0.conv3.weight" in keys:
        layers = _stage_counts(keys, r"layer(\d)\.(\d+)\.")
        depth = next((d for d, u in resnet.LAYERS.items() if u == layers), None)
        return f"TFace ResNet_{depth} (factory resnet_{depth})" if depth else f"TFace ResNet with blocks {layers}"
    if "prelu.weight" in keys and "layer1.0.prelu.weight" in keys and "conv1.weight" in keys:
        units = _stage_counts(keys, r"layer(\d)\.(\d+)\.")
        depth = next((d for d, u in iresnet.UNITS.items() if u == units), None)
        if depth is None:
            return f"insightface iResNet with units {units} (conv1.*, layer1-4.*)"
        return f"insightface arcface_torch iResNet r{depth} (conv1.*, layer1-4.*; factory iresnet_{depth})"
    return None


@hookimpl
def tface_weights_hint(keys: list[str], model: nn.Module) -> str | None:
    """Say which families the checkpoint's keys and the model's keys belong to, when they differ."""
    ckpt_arch, model_arch = guess_architecture(keys), guess_architecture(model.state_dict().keys())
    if ckpt_arch == model_arch or not (ckpt_arch or model_arch):
        return None
    return (f"the checkpoint looks like {ckpt_arch or 'an unknown architecture'}, "
            f"but the model is {model_arch or 'an unknown architecture'}")


def load_backbone(name: str, path: str | os.PathLike, *, strict: bool = True, key: str | None = None,
                  **options: Any) -> nn.Module:
    """Create backbone ``name`` through the registry (options validated by its Config) and load ``path``.

    With ``strict=False`` whatever did not load is logged as a warning; call
    :func:`tface.core.weights.load_into` directly to get the :class:`~tface.core.weights.LoadReport`.
    """
    from tface.core import registry
    from tface.core.weights import load_into

    model = registry.create("backbones", name, **options)
    report = load_into(model, path, strict=strict, key=key, what=f"backbone {name!r}")
    if not report.exact:
        log.warning("backbone %r: %s", name, report.summary())
    return model

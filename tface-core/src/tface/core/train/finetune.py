"""Start from trained weights: ``[backbone] checkpoint`` and ``[classifier] checkpoint`` (fine-tuning).

Backbone files are read by the one weights reader (:mod:`tface.core.weights`), so anything ``tface eval``
accepts works here. A classifier file is a tface run checkpoint (``last.pt``: one classifier per data branch,
matched by branch name, or the only one to the only one), one classifier's plain ``state_dict``, or TFace's
head checkpoint (``HEAD_Epoch_*_checkpoint.pth``, split files included: :mod:`~tface.core.train.tfacehead`).
Whole centres load into any ``[classifier] mode``: a sharded process takes its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from tface.core.recipe import Recipe, StartWeights
from tface.core.reference import ComponentRef
from tface.core.train.errors import TrainingError
from tface.core.train.tfacehead import is_tface_heads, tface_head_states
from tface.core.weights import WeightsError, load_into, read_file

__all__ = ["load_start_weights", "check_start_weights"]


def check_start_weights(recipe: Recipe) -> list[str]:
    """``key: problem`` for each named weights file that does not exist (checked before the run folder), also those
    of component references in the ``[method]`` options."""
    out = []
    for key, weights in (("backbone", recipe.backbone.weights), ("classifier", recipe.classifier)):
        if weights.checkpoint is not None and not weights.checkpoint.is_file():
            what = "is not a file" if weights.checkpoint.exists() else "no such file"
            out.append(f"{key}.checkpoint: {what}: {weights.checkpoint}")
    for name, value in recipe.method.options.items():  # component references among the method's options
        problem = value.missing_file() if isinstance(value, ComponentRef) else None
        if problem:
            out.append(f"method.{name}.{problem}")
    return out


def _load(model: nn.Module, source: Any, weights: StartWeights, key: str, what: str,
          echo: Callable[[str], None]) -> None:
    try:
        report = load_into(model, source, strict=weights.strict, what=what)
    except WeightsError as exc:
        hint = " (strict = false loads what fits and lists the rest)" if weights.strict else ""
        raise TrainingError(f"{key}.checkpoint: {exc}{hint}") from exc
    if report.exact:
        echo(f"{key}: started from {weights.checkpoint} ({report.loaded} tensors)")
    else:
        echo(f"{key}: started from {weights.checkpoint} with strict = false: {report.summary()}")


def _classifier_states(obj: Any, path: str, names: list[str]) -> dict[str, Mapping[str, Any]]:
    """Branch name -> that classifier's state in the file (a run checkpoint or one plain state_dict)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("classifiers"), Mapping):
        states = dict(obj["classifiers"])
        if len(states) == 1 and len(names) == 1:  # one class space each: the names need not agree
            return {names[0]: next(iter(states.values()))}
        return {n: states[n] for n in names if n in states}
    if isinstance(obj, Mapping) and len(names) == 1:
        return {names[0]: obj}
    raise TrainingError(f"classifier.checkpoint: {path} holds no 'classifiers' entry (a tface run checkpoint, "
                        f"checkpoints/last.pt) and this run has {len(names)} data branches, so a single classifier "
                        "state_dict cannot say which branch it belongs to")


def load_start_weights(recipe: Recipe, backbone: nn.Module, classifiers: nn.ModuleDict,
                       echo: Callable[[str], None]) -> None:
    """Load the recipe's start weights into the freshly built models (before the optimiser sees them)."""
    if recipe.backbone.weights.checkpoint is not None:
        _load(backbone, recipe.backbone.weights.checkpoint, recipe.backbone.weights, "backbone",
              "backbone", echo)
    weights = recipe.classifier
    if weights.checkpoint is None:
        return
    try:
        obj = read_file(weights.checkpoint)
    except WeightsError as exc:
        raise TrainingError(f"classifier.checkpoint: {exc}") from exc
    names = list(classifiers.keys())
    if is_tface_heads(obj):
        try:
            obj = {"classifiers": tface_head_states(weights.checkpoint, obj)}
        except (ValueError, OSError, WeightsError) as exc:
            raise TrainingError(f"classifier.checkpoint: {exc}") from exc
    states = _classifier_states(obj, str(weights.checkpoint), names)
    absent = [n for n in names if n not in states]
    if absent and weights.strict:
        raise TrainingError(f"classifier.checkpoint: {weights.checkpoint} has no classifier for data branch "
                            f"{', '.join(map(repr, absent))} (it has {', '.join(map(repr, states)) or 'none'}); "
                            "strict = false starts those from random centres")
    for name in names:
        if name in states:
            try:
                state = classifiers[name].shard_state(states[name])
            except ValueError as exc:
                raise TrainingError(f"classifier.checkpoint: {weights.checkpoint}, branch {name!r}: {exc}") from exc
            _load(classifiers[name], state, weights, "classifier", f"classifier of branch {name!r}", echo)
        else:
            echo(f"classifier: branch {name!r} starts from random centres ({weights.checkpoint} has none for it)")

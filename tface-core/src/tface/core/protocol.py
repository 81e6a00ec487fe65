"""The contract for evaluation protocols (entry-point group ``tface.protocols``).

A protocol receives the model and an :class:`EvalContext`, and returns a list of result dicts, one per
evaluation set. Every result has ``protocol``, ``dataset`` and ``step`` plus the protocol's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import torch
from torch import nn

__all__ = ["EvalContext", "EvalProtocol", "Result"]

Result = dict[str, Any]


@attrs.define
class EvalContext:
    """Where and what to evaluate.

    ``provided`` holds the evaluation files offered by the run's training data source, keyed by protocol
    name and then by dataset name (SynthFace offers ``{"verification": {"synthface-val": path}}``).
    """

    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))
    step: int = 0
    provided: Mapping[str, Mapping[str, Path]] = attrs.field(factory=dict)


@runtime_checkable
class EvalProtocol(Protocol):
    name: str

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> list[Result]: ...

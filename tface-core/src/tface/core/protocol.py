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

__all__ = ["EvalContext", "EvalProtocol", "Result", "check_inputs"]

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
    """What ``tface.protocols`` entries provide.

    A protocol that reads files should also define ``check_inputs() -> list[str]``: the problems with the
    files its options name, each ``"<option>: <what is wrong>"`` (cheap existence checks, no reading), so
    ``tface run --dry-run``, the start of a run and ``tface eval`` report a missing file before any model
    work. It is optional (see :func:`check_inputs`); the built-in protocols all define it.
    """

    name: str

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> list[Result]: ...


def check_inputs(protocol: Any) -> list[str]:
    """``protocol.check_inputs()`` when the protocol defines it, else ``[]`` (it will report in ``evaluate``)."""
    check = getattr(protocol, "check_inputs", None)
    return list(check()) if callable(check) else []

"""Checkpoints written atomically (temporary file, then rename) and read back with ``weights_only``."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from tface.core.fsutil import atomic_write_bytes

__all__ = ["save", "load"]


def save(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Serialise ``state`` in memory first, so a full disk or a crash never leaves half a file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing arbitrary pickled code."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)

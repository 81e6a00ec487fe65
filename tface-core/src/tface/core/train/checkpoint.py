"""Checkpoints written atomically (temporary file, fsync, rename) and read back with ``weights_only``."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from tface.core.fsutil import atomic_write_bytes

__all__ = ["dumps", "save", "load"]


def dumps(obj: Any) -> bytes:
    """``obj`` serialised in memory, so a full disk or a crash never leaves half a file behind."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save(path: str | os.PathLike, state: Any) -> Path:
    return atomic_write_bytes(path, dumps(state))


def load(path: str | os.PathLike) -> Any:
    """A checkpoint's content, on the CPU, through the one weights reader (``weights_only``; errors name the file)."""
    from tface.core.weights import read_file

    return read_file(path)

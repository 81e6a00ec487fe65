"""TFace's head checkpoints as tface classifier states (fine-tuning from a TFace run).

TFace saves ``{branch: head.state_dict()}`` with the centres as ``kernel`` ``[D, C]`` (one column per class),
CurricularFace's ``t`` beside it, a ``module.`` prefix when the head was DDP-wrapped (localfc), and, for the
model-parallel heads, one file per rank: ``HEAD_Epoch_E_Split_R_checkpoint.pth`` holding that rank's columns.
A tface classifier holds ``weight`` ``[C, D]`` (one row per class), so the kernels of every split are joined
in rank order and transposed; the result then loads into the local or any sharded layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tface.core.weights import read_file, strip_wrappers

__all__ = ["is_tface_heads", "tface_head_states", "SPLIT_FILE"]

#: The per-rank file name of TFace's distributed-FC heads.
SPLIT_FILE = re.compile(r"HEAD_Epoch_(\d+)_Split_(\d+)_checkpoint\.pth")


def _strip(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` without the ``module.`` prefix of a DDP-wrapped head (the weights reader's rule)."""
    return strip_wrappers(state)[0]


def is_tface_heads(obj: Any) -> bool:
    """Whether ``obj`` is TFace's head checkpoint: branch names mapping to states with a ``kernel``."""
    return (isinstance(obj, Mapping) and bool(obj)
            and all(isinstance(v, Mapping) and "kernel" in _strip(v) for v in obj.values()))


def _splits(path: Path) -> list[Path]:
    """Every rank's file of the split ``path`` belongs to, in rank order (``path`` alone when it is not split)."""
    m = SPLIT_FILE.fullmatch(path.name)
    if m is None:
        return [path]
    epoch = m.group(1)
    found = {}
    for other in path.parent.iterdir():
        mo = SPLIT_FILE.fullmatch(other.name)
        if mo is not None and mo.group(1) == epoch:
            found[int(mo.group(2))] = other
    missing = [r for r in range(max(found) + 1) if r not in found]
    if missing:
        raise ValueError(f"{path}: TFace's split head files of epoch {epoch} lack rank "
                         f"{', '.join(map(str, missing))} (HEAD_Epoch_{epoch}_Split_<rank>_checkpoint.pth)")
    return [found[r] for r in sorted(found)]


def tface_head_states(path: str | Path, obj: Any | None = None) -> dict[str, dict[str, Any]]:
    """Branch name -> tface classifier state (``weight`` ``[C, D]`` and the head's buffers as ``head.<name>``).

    ``obj``: the content of ``path`` when already read. A split file brings in its sibling splits.
    """
    path = Path(path)
    files = _splits(path)
    contents = [obj if f == path and obj is not None else read_file(f) for f in files]
    for f, content in zip(files, contents):
        if not is_tface_heads(content):
            raise ValueError(f"{f}: not a TFace head checkpoint ({{branch: {{'kernel': [D, C], ...}}}})")
    branches = list(contents[0])
    out = {}
    for branch in branches:
        states = []
        for f, content in zip(files, contents):
            if branch not in content:
                raise ValueError(f"{f}: has no head for branch {branch!r} (the first split has "
                                 f"{', '.join(map(repr, branches))})")
            states.append(_strip(content[branch]))
        kernels = [s["kernel"] for s in states]
        dims = {k.shape[0] for k in kernels if isinstance(k, torch.Tensor) and k.dim() == 2}
        if len(dims) != 1 or len(dims) == 1 and any(not isinstance(k, torch.Tensor) or k.dim() != 2 for k in kernels):
            raise ValueError(f"{path}: branch {branch!r}: the kernels are not [D, C_rank] matrices of one D "
                             f"(shapes {[tuple(getattr(k, 'shape', ())) for k in kernels]})")
        state: dict[str, Any] = {"weight": torch.cat(kernels, dim=1).t().contiguous()}
        # head buffers (CurricularFace's t) are the same on every rank: the first split's
        state.update({f"head.{k}": v for k, v in states[0].items() if k != "kernel"})
        out[branch] = state
    return out

"""Hand-made training records for the integration tests: identities as colour patterns, as TFRecord shards."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.io import encode_jpeg

from tface.core.data.writer import ShardWriter


def face(identity: int, k: int, side: int, hard: bool = False) -> bytes:
    """Photo ``k`` of ``identity``: its colour pattern plus noise, JPEG; hard photos are darker and noisier."""
    g = torch.Generator().manual_seed(1000 * identity + 10 * k + hard)
    base = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(identity)) * 200 + 20
    img = torch.nn.functional.interpolate(base[None], size=side, mode="bilinear")[0]
    img = img * (0.5 if hard else 1.0) + torch.randn(3, side, side, generator=g) * (40 if hard else 10)
    return encode_jpeg(img.clamp(0, 255).to(torch.uint8), quality=95).numpy().tobytes()


def write_records(root: Path, name: str, identities: int, per_id: int, side: int,
                  hard: bool = False) -> dict[tuple[int, int], tuple[str, int, int, int]]:
    """``root/name.txt`` (the index) and its shards; returns each photo's index row by (identity, k)."""
    rows = {}
    with ShardWriter(root, name) as w:
        for i in range(identities):
            for k in range(per_id):
                rows[i, k] = w.add(face(i, k, side, hard), i)
    return rows

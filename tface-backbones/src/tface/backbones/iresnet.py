"""insightface arcface_torch's iResNet (r18/r34/r50/r100/r200), laid out so its released weights load strictly.

Module names reproduce arcface_torch's ``backbones/iresnet.py`` state_dict grammar (``conv1``, ``bn1``,
``prelu``, ``layer{1-4}.{j}.{bn1,conv1,bn2,prelu,conv2,bn3,downsample.0/1}``, ``bn2``, ``fc``, ``features``),
so an arcface_torch ``backbone.pth`` (a plain state_dict) loads with ``strict=True``.

The unit is the same "improved residual" unit as TFace's IR, but the two are not checkpoint-compatible:
arcface_torch projects the shortcut of *every* stage's first unit (TFace uses a parameter-free max-pool in
stage 1), its ``features`` BN1d is affine with the scale frozen at 1 (TFace's is non-affine), and the key
names differ. Use :mod:`tface.backbones.irse` for TFace checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tface.backbones.common import check_choice, dropout_option, embedding_option, input_size_option
from tface.core.backbone import Backbone
from tface.core.config import options

__all__ = [
    "UNITS",
    "IBasicBlock",
    "IResNet",
    "IResNetConfig",
    "build_iresnet",
    "iresnet_18",
    "iresnet_34",
    "iresnet_50",
    "iresnet_100",
    "iresnet_200",
]

INPUT_SIZES: tuple[int, ...] = (112, 224)

#: Units per stage, as arcface_torch's ``iresnet{18,34,50,100,200}``.
UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}

CHANNELS: tuple[int, int, int, int] = (64, 128, 256, 512)

#: arcface_torch's BN epsilon (written out explicitly there; equal to PyTorch's default).
BN_EPS = 1e-5


class IBasicBlock(nn.Module):
    """BN → 3×3 conv → BN → PReLU → 3×3 conv (stride) → BN, plus shortcut; no activation after the add."""

    def __init__(self, in_c: int, out_c: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_c, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_c, out_c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_c, eps=BN_EPS)
        self.prelu = nn.PReLU(out_c)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_c, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_c != out_c:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_c, out_c, 1, stride, bias=False), nn.BatchNorm2d(out_c, eps=BN_EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(Backbone, nn.Module):
    """``[N,3,S,S]`` in [-1, 1] (S = 112 or 224) → ``[N,E]`` embedding (not L2-normalised).

    Every stage starts with a stride-2 unit, so the final map is S/16 (7×7 or 14×14; arcface_torch's
    ``fc_scale``). Head: ``bn2`` BN2d(512) → flatten → dropout → ``fc`` → ``features`` BN1d.
    """

    def __init__(
        self, units: Sequence[int], embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_channels = CHANNELS[-1]
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=BN_EPS)
        self.prelu = nn.PReLU(64)
        in_c = 64
        for i, (n, c) in enumerate(zip(units, CHANNELS), start=1):
            blocks = []
            for j in range(n):
                blocks.append(IBasicBlock(in_c, c, stride=2 if j == 0 else 1))
                in_c = c
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        final = input_size // 16
        self.bn2 = nn.BatchNorm2d(in_c, eps=BN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_c * final * final, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        # arcface_torch's init, so training from scratch starts where theirs does: N(0, 0.1) convs, BN 1/0,
        # PyTorch's default Linear init; the embedding BN's scale is fixed at 1 (only its shift learns).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, layer4 output [N, 512, S/16, S/16])`` from the one pass (before ``bn2``, as IR's)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        features = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(features), 1))
        return self.features(self.fc(x)), features


def build_iresnet(depth: int, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> IResNet:
    """Build arcface_torch's ``r<depth>`` (18, 34, 50, 100 or 200) with validated options."""
    if depth not in UNITS:
        raise ValueError(f"depth={depth!r} is not supported (choose from: {', '.join(map(str, UNITS))})")
    check_choice("input_size", input_size, INPUT_SIZES)
    if embedding_size <= 0:
        raise ValueError(f"embedding_size={embedding_size!r} must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    return IResNet(UNITS[depth], embedding_size, input_size, dropout)


@options
def iresnet_18(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
               dropout: float = dropout_option(0.0)) -> nn.Module:
    """arcface_torch ``r18``: 24.0 M parameters at 112/512."""
    return build_iresnet(18, embedding_size, input_size, dropout)


@options
def iresnet_34(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
               dropout: float = dropout_option(0.0)) -> nn.Module:
    """arcface_torch ``r34``: 34.1 M parameters at 112/512."""
    return build_iresnet(34, embedding_size, input_size, dropout)


@options
def iresnet_50(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
               dropout: float = dropout_option(0.0)) -> nn.Module:
    """arcface_torch ``r50``: 43.6 M parameters at 112/512."""
    return build_iresnet(50, embedding_size, input_size, dropout)


@options
def iresnet_100(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
                dropout: float = dropout_option(0.0)) -> nn.Module:
    """arcface_torch ``r100``: 65.2 M parameters at 112/512."""
    return build_iresnet(100, embedding_size, input_size, dropout)


@options
def iresnet_200(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
                dropout: float = dropout_option(0.0)) -> nn.Module:
    """arcface_torch ``r200``: 118.8 M parameters at 112/512."""
    return build_iresnet(200, embedding_size, input_size, dropout)


#: The options of :func:`iresnet_18` as a class (the name earlier releases exported; the family's other
#: factories have equal ones).
IResNetConfig = iresnet_18.Config

"""Building blocks shared by several backbones.

Module and attribute names here are part of the checkpoint format: they reproduce the state_dict key
names of TFace v0.1.0 (``conv``/``bn``/``prelu``, ``conv_6_dw``/``linear``/``bn``, ``fc1``/``fc2``), so a
TFace checkpoint loads with ``strict=True``. Rename nothing without a checkpoint converter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch
from torch import nn

from tface.core.config import option

__all__ = [
    "GDC",
    "ConvBlock",
    "LinearBlock",
    "SEModule",
    "check_choice",
    "check_head_options",
    "dropout_option",
    "embedding_option",
    "input_size_option",
    "initialize_weights",
]


# The recipe options every backbone factory takes, for its ``@options`` signature (written once here).


def embedding_option(default: int = 512) -> Any:
    """``embedding_size``: a positive width."""
    return option(default, attrs.validators.gt(0))


def input_size_option(choices: tuple[int, ...], default: int = 112) -> Any:
    """``input_size``: one of the square crop sides the architecture supports."""
    return option(default, attrs.validators.in_(choices))


def dropout_option(default: float) -> Any:
    """``dropout`` before the embedding layer: a rate in [0, 1)."""
    return option(default, attrs.validators.ge(0.0), attrs.validators.lt(1.0))


def initialize_weights(modules: Iterable[nn.Module]) -> None:
    """TFace's init: Kaiming-normal (fan_out, ReLU) for Conv2d/Linear, zero biases, affine BN at 1/0.

    Reproduced so that training from scratch starts from the same distribution as TFace.
    """
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_choice(name: str, value: int, choices: tuple[int, ...]) -> None:
    """Raise ValueError naming ``name`` and the rejected value when it is not one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(str(c) for c in choices)
        raise ValueError(f"{name}={value!r} is not supported (choose from: {allowed})")


def check_head_options(embedding_size: int, dropout: float) -> None:
    """Raise ValueError naming the option when the embedding size or the GDC dropout is out of range."""
    if embedding_size <= 0:
        raise ValueError(f"embedding_size={embedding_size!r} must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")


class LinearBlock(nn.Module):
    """Conv (no bias) → BN, without activation (TFace ``Linear_block``)."""

    def __init__(
        self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ConvBlock(LinearBlock):
    """Conv (no bias) → BN → PReLU (TFace ``Conv_block``)."""

    def __init__(
        self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1
    ) -> None:
        super().__init__(in_c, out_c, kernel, stride, padding, groups)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SEModule(nn.Module):
    """Squeeze-and-excitation gate with bias-free 1×1 convs, as in TFace's IR-SE (keys ``fc1``/``fc2``)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class GDC(nn.Module):
    """Global depthwise conv output block: S×S depthwise LinearBlock → Linear (no bias) → BN1d (no affine).

    The depthwise conv learns a spatial weighting instead of plain average pooling (MobileFaceNet paper);
    the final non-affine BN is what TFace exports as the embedding. ``spatial`` is the side of the final
    feature map (7 at 112×112 input, 14 at 224×224). ``dropout`` (an addition to TFace) acts on the
    pooled vector before the Linear; it owns no state, so the key set is the same for every value.
    """

    def __init__(self, embedding_size: int, channels: int = 512, spatial: int = 7, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_6_dw = LinearBlock(channels, channels, kernel=spatial, groups=channels)
        self.conv_6_flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.dropout(self.conv_6_flatten(self.conv_6_dw(x)))))

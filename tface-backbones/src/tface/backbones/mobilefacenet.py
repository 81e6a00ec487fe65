"""MobileFaceNet (Chen et al. 2018) laid out exactly as TFace v0.1.0, so its checkpoints load strictly.

About 1.2 M parameters at 512-d: the cheap backbone for quick experiments and mobile deployment.
"""

from __future__ import annotations

import attrs
import torch
from torch import nn

from tface.backbones.common import GDC, ConvBlock, LinearBlock, check_choice, initialize_weights
from tface.core.config import uses

__all__ = ["MobileFaceNet", "MobileFaceNetConfig", "mobilefacenet"]

INPUT_SIZES: tuple[int, ...] = (112,)


class DepthWise(nn.Module):
    """Inverted residual: 1×1 expand to ``groups`` → 3×3 depthwise (stride) → 1×1 linear projection.

    Keys ``conv``, ``conv_dw``, ``project`` match TFace's ``Depth_Wise``.
    """

    def __init__(self, in_c: int, out_c: int, groups: int, stride: int = 2, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.conv = ConvBlock(in_c, groups, kernel=1)
        self.conv_dw = ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups)
        self.project = LinearBlock(groups, out_c, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_blocks`` stride-1 residual DepthWise blocks, stored under ``model.{j}`` as in TFace."""

    def __init__(self, channels: int, num_blocks: int, groups: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            *(DepthWise(channels, channels, groups, stride=1, residual=True) for _ in range(num_blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MobileFaceNet(nn.Module):
    """``[N,3,112,112]`` in [-1, 1] → ``[N,E]`` embedding (not L2-normalised)."""

    def __init__(self, embedding_size: int = 512) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = 112
        self.conv1 = ConvBlock(3, 64, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBlock(64, 64, kernel=3, stride=1, padding=1, groups=64)
        self.conv_23 = DepthWise(64, 64, groups=128)
        self.conv_3 = Residual(64, num_blocks=4, groups=128)
        self.conv_34 = DepthWise(64, 128, groups=256)
        self.conv_4 = Residual(128, num_blocks=6, groups=256)
        self.conv_45 = DepthWise(128, 128, groups=512)
        self.conv_5 = Residual(128, num_blocks=2, groups=256)
        self.conv_6_sep = ConvBlock(128, 512, kernel=1)
        self.output_layer = GDC(embedding_size)
        initialize_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        return self.output_layer(self.conv_6_sep(x))


@attrs.define
class MobileFaceNetConfig:
    """Recipe options of :func:`mobilefacenet`; field names equal the factory's keywords."""

    embedding_size: int = attrs.field(default=512, validator=attrs.validators.gt(0))
    input_size: int = attrs.field(default=112, validator=attrs.validators.in_(INPUT_SIZES))


@uses(MobileFaceNetConfig)
def mobilefacenet(embedding_size: int = 512, input_size: int = 112) -> nn.Module:
    """Build TFace's MobileFaceNet with a configurable embedding size.

    Only 112×112 input exists: the GDC's 7×7 depthwise kernel assumes a 7×7 final map.
    """
    check_choice("input_size", input_size, INPUT_SIZES)
    if embedding_size <= 0:
        raise ValueError(f"embedding_size={embedding_size!r} must be positive")
    return MobileFaceNet(embedding_size)

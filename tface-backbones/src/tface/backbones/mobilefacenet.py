"""MobileFaceNet (Chen et al. 2018) laid out exactly as TFace v0.1.0, so its checkpoints load strictly.

About 1.2 M parameters at 512-d: the cheap backbone for quick experiments and mobile deployment.
Beyond TFace: 64×64 and 224×224 input (the GDC kernel follows the 4×4 or 14×14 final map) and an
optional dropout before the GDC Linear; neither changes the key set, so TFace checkpoints still load
strictly at 112.
"""

from __future__ import annotations

import torch
from torch import nn

from tface.backbones.common import (
    GDC,
    ConvBlock,
    LinearBlock,
    check_choice,
    check_head_options,
    dropout_option,
    embedding_option,
    initialize_weights,
    input_size_option,
)
from tface.core.backbone import Backbone
from tface.core.config import options

__all__ = ["MobileFaceNet", "MobileFaceNetConfig", "mobilefacenet"]

#: 64 is for small CPU experiments (a 4×4 final map): about 3× faster per image than 112.
INPUT_SIZES: tuple[int, ...] = (64, 112, 224)


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


class MobileFaceNet(Backbone, nn.Module):
    """``[N,3,S,S]`` in [-1, 1] (S = 64, 112 or 224) → ``[N,E]`` embedding (not L2-normalised)."""

    def __init__(self, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_channels = 512
        self.conv1 = ConvBlock(3, 64, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBlock(64, 64, kernel=3, stride=1, padding=1, groups=64)
        self.conv_23 = DepthWise(64, 64, groups=128)
        self.conv_3 = Residual(64, num_blocks=4, groups=128)
        self.conv_34 = DepthWise(64, 128, groups=256)
        self.conv_4 = Residual(128, num_blocks=6, groups=256)
        self.conv_45 = DepthWise(128, 128, groups=512)
        self.conv_5 = Residual(128, num_blocks=2, groups=256)
        self.conv_6_sep = ConvBlock(128, self.feature_channels, kernel=1)
        # Four stride-2 stages: the final map is input_size / 16 on a side (4 at 64, 7 at 112, 14 at 224).
        self.output_layer = GDC(embedding_size, spatial=input_size // 16, dropout=dropout)
        initialize_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, conv_6_sep output [N, 512, S/16, S/16])``: the map the GDC head pools, one pass."""
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        features = self.conv_6_sep(x)
        return self.output_layer(features), features


@options
def mobilefacenet(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
                  dropout: float = dropout_option(0.0)) -> nn.Module:
    """Build TFace's MobileFaceNet with a configurable embedding size, input size and GDC dropout.

    At 224 the GDC depthwise kernel is 14×14 (TFace has 112 only, whose 7×7 kernel matches its final map),
    so the count grows by 512·(14² − 7²) = 75,264. ``dropout`` defaults to TFace's (none).
    """
    check_choice("input_size", input_size, INPUT_SIZES)
    check_head_options(embedding_size, dropout)
    return MobileFaceNet(embedding_size, input_size, dropout)


#: The options of :func:`mobilefacenet` as a class (the name earlier releases exported).
MobileFaceNetConfig = mobilefacenet.Config

"""EfficientNet B0/B1, face variant laid out exactly as TFace v0.1.0 (from cavaface, after imgclsmob).

Differences from the ImageNet network, all kept for checkpoint compatibility: PReLU everywhere outside
the SE gates, a stride-1 stem (112 px faces end at 7×7 after four stride-2 stages), EfficientNet's seven
block rows merged into five stages, SE gates with bias-free ``fc1``/``fc2`` convs, a 512-wide final 1×1
block and a GDC head. Keys: ``features.init_block.conv.{conv,bn,act}``,
``features.stage{k}.unit{j}.{dw_conv,se,pw_conv}`` (stage 1) or ``.{conv1,conv2,se,conv3}``,
``features.final_block.{conv,bn,act}``, ``output.{conv_6_dw,linear,bn}``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from tface.backbones.common import (
    GDC,
    SEModule,
    check_choice,
    check_head_options,
    dropout_option,
    embedding_option,
    input_size_option,
)
from tface.core.backbone import Backbone
from tface.core.config import options

__all__ = [
    "DEPTH_FACTORS",
    "ROWS",
    "EfficientNet",
    "EfficientNetConfig",
    "efficientnet_b0",
    "efficientnet_b1",
    "stage_plan",
]

INPUT_SIZES: tuple[int, ...] = (112, 224)

#: EfficientNet-B0's seven block rows ``(out channels, repeats, kernel, expansion, stride, new stage)``.
#: A row with ``new stage`` false joins the previous stage (TFace's five-stage merge); the stride applies to
#: the first unit of a stage only, so the merged rows' own strides are 1 in the original network too.
ROWS: tuple[tuple[int, int, int, int, int, bool], ...] = (
    (16, 1, 3, 1, 1, True),
    (24, 2, 3, 6, 2, True),
    (40, 2, 5, 6, 2, True),
    (80, 3, 3, 6, 2, True),
    (112, 3, 5, 6, 1, False),
    (192, 4, 5, 6, 2, True),
    (320, 1, 3, 6, 1, False),
)
INIT_CHANNELS = 32
FINAL_CHANNELS = 512
#: An expanding unit's SE gate uses reduction ``expansion × SE_FACTOR``, i.e. squeezes to ``in / 4``.
SE_FACTOR = 4
#: Repeats multiplier per version; TFace registers only B0 and B1, whose width multiplier is 1.
DEPTH_FACTORS: dict[str, float] = {"b0": 1.0, "b1": 1.1}

#: One unit: ``(out channels, kernel, expansion, stride)``.
UnitSpec = tuple[int, int, int, int]


def stage_plan(depth_factor: float) -> list[list[UnitSpec]]:
    """The units of each of the five stages; repeats are ``ceil(repeats × depth_factor)`` as in TFace."""
    stages: list[list[UnitSpec]] = []
    for out_c, repeats, kernel, expansion, stride, new_stage in ROWS:
        units = [(out_c, kernel, expansion, 1)] * math.ceil(repeats * depth_factor)
        if new_stage:
            units[0] = (out_c, kernel, expansion, stride)
            stages.append(units)
        else:
            stages[-1].extend(units)
    return stages


class ConvBlock(nn.Module):
    """Conv (no bias) → BN → optional PReLU; TFace's EfficientNet block with keys ``conv``, ``bn``, ``act``."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.act = nn.PReLU(out_c) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.act(x) if self.act is not None else x


class DwsConvUnit(nn.Module):
    """Stage-1 unit: depthwise 3×3 (PReLU) → SE (reduction 4) → linear 1×1, residual when shape is kept."""

    def __init__(self, in_c: int, out_c: int, stride: int) -> None:
        super().__init__()
        self.residual = in_c == out_c and stride == 1
        self.dw_conv = ConvBlock(in_c, in_c, 3, stride, groups=in_c)
        self.se = SEModule(in_c, 4)
        self.pw_conv = ConvBlock(in_c, out_c, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw_conv(self.se(self.dw_conv(x)))
        return x + out if self.residual else out


class InvResUnit(nn.Module):
    """MBConv: 1×1 expand (PReLU) → depthwise k×k (stride, PReLU) → SE → linear 1×1, residual when possible."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        self.residual = in_c == out_c and stride == 1
        mid = in_c * expansion
        self.conv1 = ConvBlock(in_c, mid, 1)
        self.conv2 = ConvBlock(mid, mid, kernel, stride, groups=mid)
        self.se = SEModule(mid, expansion * SE_FACTOR)
        self.conv3 = ConvBlock(mid, out_c, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.se(self.conv2(self.conv1(x))))
        return x + out if self.residual else out


class InitBlock(nn.Module):
    """Stride-1 3×3 stem (the ImageNet stride 2 would leave 3×3 maps at 112 px); key ``conv``."""

    def __init__(self, out_c: int) -> None:
        super().__init__()
        self.conv = ConvBlock(3, out_c, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _init_weights(modules: Iterable[nn.Module]) -> None:
    """TFace's EfficientNet init: Kaiming-uniform (fan_in) convs with zero bias; everything else at torch defaults."""
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class EfficientNet(Backbone, nn.Module):
    """``[N,3,S,S]`` in [-1, 1] (S = 112 or 224) → ``[N,E]`` embedding (not L2-normalised)."""

    def __init__(
        self, depth_factor: float = 1.0, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_channels = FINAL_CHANNELS
        self.features = nn.Sequential()
        self.features.add_module("init_block", InitBlock(INIT_CHANNELS))
        in_c = INIT_CHANNELS
        for i, units in enumerate(stage_plan(depth_factor)):
            stage = nn.Sequential()
            for j, (out_c, kernel, expansion, stride) in enumerate(units):
                if i == 0:
                    unit: nn.Module = DwsConvUnit(in_c, out_c, stride)
                else:
                    unit = InvResUnit(in_c, out_c, kernel, stride, expansion)
                stage.add_module(f"unit{j + 1}", unit)
                in_c = out_c
            self.features.add_module(f"stage{i + 1}", stage)
        self.features.add_module("final_block", ConvBlock(in_c, FINAL_CHANNELS, 1))
        self.output = GDC(embedding_size, FINAL_CHANNELS, spatial=input_size // 16, dropout=dropout)
        _init_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, final_block output [N, 512, S/16, S/16])``: the map the GDC head pools, one pass."""
        features = self.features(x)
        return self.output(features), features


def _build(version: str, embedding_size: int, input_size: int, dropout: float) -> EfficientNet:
    check_choice("input_size", input_size, INPUT_SIZES)
    check_head_options(embedding_size, dropout)
    return EfficientNet(DEPTH_FACTORS[version], embedding_size, input_size, dropout)


@options
def efficientnet_b0(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
                    dropout: float = dropout_option(0.0)) -> nn.Module:
    """EfficientNet-B0 face variant (TFace ``EfficientNetB0``): 4,057,600 parameters at 112/512.

    ``dropout`` (default off; TFace accepts a rate but never applies it) acts before the GDC Linear.
    """
    return _build("b0", embedding_size, input_size, dropout)


@options
def efficientnet_b1(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
                    dropout: float = dropout_option(0.0)) -> nn.Module:
    """EfficientNet-B1 face variant (TFace ``EfficientNetB1``, depth ×1.1): 6,567,648 parameters at 112/512."""
    return _build("b1", embedding_size, input_size, dropout)


#: The options of :func:`efficientnet_b0` as a class (the name earlier releases exported; the family's other
#: factories have equal ones).
EfficientNetConfig = efficientnet_b0.Config

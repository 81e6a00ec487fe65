"""GhostNet width 1.3 (Han et al. 2020), face variant laid out exactly as TFace v0.1.0 (from cavaface).

Ghost modules make half of each expansion with a 1×1 conv and the other half with a cheap depthwise 3×3
from the first half. The face variant keeps the stem at stride 1, uses PReLU, and ends in a GDC head:
4.06 M parameters at 512-d. Module names reproduce TFace's keys (``conv_stem``, ``bn1``, ``act1``,
``blocks.i.j.{ghost1,ghost2}.{primary_conv,cheap_operation}.k``, ``conv_dw``, ``bn_dw``,
``se.conv_{reduce,expand}``, ``shortcut.k``, ``blocks.9.0.{conv,bn1,act1}``, ``output_layer.*``), so a
TFace checkpoint loads with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tface.backbones.common import (
    GDC,
    check_choice,
    check_head_options,
    dropout_option,
    embedding_option,
    initialize_weights,
    input_size_option,
)
from tface.core.backbone import Backbone
from tface.core.config import options

__all__ = ["STAGES", "GhostNet", "GhostNetConfig", "ghostnet", "make_divisible"]

INPUT_SIZES: tuple[int, ...] = (112, 224)

#: Width multiplier; TFace's GDC width (664) is only consistent with 1.3.
WIDTH = 1.3

#: Bottleneck rows ``(kernel, expansion, out channels, SE ratio, stride)`` before width scaling, grouped
#: into the nine ``blocks.i`` Sequentials TFace builds (the final 1×1 ConvBnAct is ``blocks.9``).
STAGES: tuple[tuple[tuple[int, int, int, float, int], ...], ...] = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 2),),
    ((3, 72, 24, 0.0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0.0, 2),),
    (
        (3, 200, 80, 0.0, 1),
        (3, 184, 80, 0.0, 1),
        (3, 184, 80, 0.0, 1),
        (3, 480, 112, 0.25, 1),
        (3, 672, 112, 0.25, 1),
    ),
    ((5, 672, 160, 0.25, 2),),
    (
        (5, 960, 160, 0.0, 1),
        (5, 960, 160, 0.25, 1),
        (5, 960, 160, 0.0, 1),
        (5, 512, 160, 0.25, 1),
    ),
)


def make_divisible(value: float, divisor: int) -> int:
    """Round to the nearest multiple of ``divisor`` (at least ``divisor``), never losing more than 10 %.

    This is the TF-slim MobileNet rule TFace uses for every scaled width; other rounding gives other shapes.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExcite(nn.Module):
    """SE gate with biased 1×1 convs, ReLU and a hard sigmoid (keys ``conv_reduce``, ``conv_expand``)."""

    def __init__(self, channels: int, ratio: float = 0.25, divisor: int = 4) -> None:
        super().__init__()
        reduced = make_divisible(channels * ratio, divisor)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x))))
        return x * F.hardsigmoid(gate)


class ConvBnAct(nn.Module):
    """Conv (no bias) → BN → PReLU; TFace's final 1×1 block, keys ``conv``, ``bn1``, ``act1``."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(out_c)
        self.act1 = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv(x)))


class GhostModule(nn.Module):
    """``ceil(out/2)`` channels from a 1×1 conv plus as many from a depthwise 3×3 on them, cut to ``out``.

    ``primary_conv`` and ``cheap_operation`` are ``conv, BN, PReLU`` Sequentials; without activation the
    third slot holds a stateless identity, so the keys stay at indices 0 and 1 as in TFace.
    """

    def __init__(self, in_c: int, out_c: int, act: bool = True) -> None:
        super().__init__()
        self.out_c = out_c
        init_c = math.ceil(out_c / 2)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_c, init_c, 1, 1, 0, bias=False),
            nn.BatchNorm2d(init_c),
            nn.PReLU(init_c) if act else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init_c, init_c, 3, 1, 1, groups=init_c, bias=False),
            nn.BatchNorm2d(init_c),
            nn.PReLU(init_c) if act else nn.Identity(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary_conv(x)
        out = torch.cat([primary, self.cheap_operation(primary)], dim=1)
        return out[:, : self.out_c]


class GhostBottleneck(nn.Module):
    """ghost1 (PReLU) → [depthwise k×k stride-2 conv + BN] → [SE] → ghost2 (linear), plus shortcut.

    The shortcut is the identity when shape is kept, else depthwise k×k (stride) → BN → 1×1 → BN.
    """

    def __init__(self, in_c: int, mid_c: int, out_c: int, kernel: int, stride: int, se_ratio: float) -> None:
        super().__init__()
        self.stride = stride
        self.ghost1 = GhostModule(in_c, mid_c, act=True)
        if stride > 1:
            self.conv_dw = nn.Conv2d(mid_c, mid_c, kernel, stride, (kernel - 1) // 2, groups=mid_c, bias=False)
            self.bn_dw = nn.BatchNorm2d(mid_c)
        self.se = SqueezeExcite(mid_c, se_ratio) if se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_c, out_c, act=False)
        if in_c == out_c and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_c, in_c, kernel, stride, (kernel - 1) // 2, groups=in_c, bias=False),
                nn.BatchNorm2d(in_c),
                nn.Conv2d(in_c, out_c, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_c),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.stride > 1:
            out = self.bn_dw(self.conv_dw(out))
        if self.se is not None:
            out = self.se(out)
        return self.ghost2(out) + self.shortcut(x)


class GhostNet(Backbone, nn.Module):
    """``[N,3,S,S]`` in [-1, 1] (S = 112 or 224) → ``[N,E]`` embedding (not L2-normalised)."""

    def __init__(self, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        in_c = make_divisible(16 * WIDTH, 4)
        self.conv_stem = nn.Conv2d(3, in_c, 3, 1, 1, bias=False)  # stride 1: faces are only 112 px
        self.bn1 = nn.BatchNorm2d(in_c)
        self.act1 = nn.PReLU(in_c)
        stages: list[nn.Module] = []
        for rows in STAGES:
            units = []
            for kernel, expansion, out, se_ratio, stride in rows:
                mid_c, out_c = make_divisible(expansion * WIDTH, 4), make_divisible(out * WIDTH, 4)
                units.append(GhostBottleneck(in_c, mid_c, out_c, kernel, stride, se_ratio))
                in_c = out_c
            stages.append(nn.Sequential(*units))
        final_c = make_divisible(STAGES[-1][-1][1] * WIDTH, 4)  # 664: the last row's expansion width
        stages.append(nn.Sequential(ConvBnAct(in_c, final_c, 1)))
        self.blocks = nn.Sequential(*stages)
        self.feature_channels = final_c
        # Four stride-2 stages: the final map is input_size / 16 on a side.
        self.output_layer = GDC(embedding_size, final_c, spatial=input_size // 16, dropout=dropout)
        initialize_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, blocks output [N, 664, S/16, S/16])``: the map the GDC head pools, one pass."""
        features = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        return self.output_layer(features), features


@options
def ghostnet(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
             dropout: float = dropout_option(0.0)) -> nn.Module:
    """GhostNet ×1.3 (TFace ``GhostNet``): 4,057,584 parameters at 112/512; 224 input widens the GDC kernel.

    ``dropout`` (default off, as in TFace) acts before the GDC Linear and adds no state_dict keys.
    """
    check_choice("input_size", input_size, INPUT_SIZES)
    check_head_options(embedding_size, dropout)
    return GhostNet(embedding_size, input_size, dropout)


#: The options of :func:`ghostnet` as a class (the name earlier releases exported).
GhostNetConfig = ghostnet.Config

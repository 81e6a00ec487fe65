"""FBNet-A/B/C (Wu et al. 2019) laid out exactly as TFace v0.1.0 builds them, so its checkpoints load strictly.

TFace reads the searched architectures from ``fbnet_modeldef.json`` (taken from maskrcnn-benchmark) and builds
them with width ratio 1.0, width divisor 8 and ``dw_skip_bn``/``dw_skip_relu`` on, so every depthwise conv is a
bare conv. The 1000-class ImageNet head is replaced by TFace's face head (BN → Dropout → Flatten → Linear → BN1d).

State_dict grammar reproduced here: ``first.{conv,bn}``, ``stages.xif{i}_0.{pw.{conv,bn}, dw.conv,
pwl.{conv,bn}}`` (``pw`` absent when the block does not expand, shape-preserving ``skip`` blocks have no keys)
and ``last_stages.{0,3,4}``. TFace's optional SE (``se4``) and the skip projection are never used by a/b/c and
are not built.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from tface.backbones.common import check_choice, dropout_option, embedding_option, initialize_weights, input_size_option
from tface.core.backbone import Backbone
from tface.core.config import options

__all__ = ["ARCHS", "FBNet", "FBNetConfig", "IRFBlock", "build_fbnet", "fbnet_a", "fbnet_b", "fbnet_c"]

INPUT_SIZES: tuple[int, ...] = (112, 224)

#: Output channels and stride of the 22 blocks, shared by a/b/c (each block is its own builder stage).
CHANNELS: tuple[int, ...] = (16,) + (24,) * 4 + (32,) * 4 + (64,) * 4 + (112,) * 4 + (184,) * 4 + (352,)
STRIDES: tuple[int, ...] = tuple(2 if i in (1, 5, 9, 17) else 1 for i in range(len(CHANNELS)))
STEM_CHANNELS = 16

#: Searched op of each block, as in TFace's ``fbnet_modeldef.json`` (the op name, not the table's expansion
#: column, decides the block, as in TFace).
#: ``ir_k{k}_e{t}``: inverted residual, k×k depthwise, expansion t; ``ir_k{k}_s2``: expansion 1 with
#: 2-group 1×1 convs and a channel shuffle; ``skip``: identity.
ARCHS: dict[str, tuple[str, ...]] = {
    "fbnet_a": (
        "skip",
        "ir_k3_e3", "ir_k3_e1", "skip", "skip",
        "ir_k5_e6", "ir_k3_e3", "ir_k5_e1", "ir_k3_e3",
        "ir_k5_e6", "ir_k5_e3", "ir_k5_s2", "ir_k5_e6",
        "ir_k3_e6", "ir_k5_s2", "ir_k5_e1", "ir_k3_s2",
        "ir_k5_e6", "ir_k5_e6", "ir_k5_e3", "ir_k5_e6",
        "ir_k5_e6",
    ),
    "fbnet_b": (
        "ir_k3_e1",
        "ir_k3_e6", "ir_k5_e1", "ir_k3_e1", "ir_k3_e1",
        "ir_k5_e6", "ir_k5_e3", "ir_k3_e6", "ir_k5_e6",
        "ir_k5_e6", "ir_k5_e1", "skip", "ir_k5_e3",
        "ir_k5_e6", "ir_k3_e1", "ir_k5_e1", "ir_k5_e3",
        "ir_k5_e6", "ir_k5_e1", "ir_k5_e6", "ir_k5_e6",
        "ir_k3_e6",
    ),
    "fbnet_c": (
        "ir_k3_e1",
        "ir_k3_e6", "skip", "ir_k3_e1", "ir_k3_e1",
        "ir_k5_e6", "ir_k5_e3", "ir_k5_e6", "ir_k3_e6",
        "ir_k5_e6", "ir_k5_e3", "ir_k5_e6", "ir_k5_e6",
        "ir_k5_e6", "ir_k5_e6", "ir_k5_e6", "ir_k5_e3",
        "ir_k5_e6", "ir_k5_e6", "ir_k5_e6", "ir_k5_e6",
        "ir_k3_e6",
    ),
}  # fmt: skip

_OP = re.compile(r"ir_k(?P<kernel>[35])_(?:e(?P<expansion>[136])|s(?P<groups>2))")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round up to a multiple of ``divisor`` (at least ``divisor``), as TFace's builder sizes every width."""
    return max(-(-int(value) // divisor) * divisor, divisor)


def _conv(
    in_c: int, out_c: int, kernel: int = 1, stride: int = 1, groups: int = 1, bn: bool = True, relu: bool = False
) -> nn.Sequential:
    """Bias-free conv with optional BN/ReLU under TFace's ``conv``/``bn``/``relu`` names."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2, groups=groups, bias=False)
    if bn:
        layers["bn"] = nn.BatchNorm2d(out_c)
    if relu:
        layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` channel groups so the next grouped 1×1 conv sees every input group."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(1, (self.groups, -1)).transpose(1, 2).flatten(1, 2)


class IRFBlock(nn.Module):
    """Inverted residual: [1×1 expand → BN → ReLU] → [shuffle] → k×k depthwise (bare) → 1×1 → BN [+ input].

    The expand conv exists only when the expanded width differs from the input width (TFace leaves an empty
    ``pw`` otherwise), and the residual only when stride and width allow it.
    """

    def __init__(self, in_c: int, out_c: int, expansion: int, stride: int, kernel: int = 3, groups: int = 1) -> None:
        super().__init__()
        mid = make_divisible(in_c * expansion)
        self.residual = stride == 1 and in_c == out_c
        self.pw = _conv(in_c, mid, groups=groups, relu=True) if mid != in_c else None
        self.shuffle = ChannelShuffle(groups) if groups > 1 else None
        self.dw = _conv(mid, mid, kernel, stride, groups=mid, bn=False)
        self.pwl = _conv(mid, out_c, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.pw is None else self.pw(x)
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.pwl(self.dw(y))
        return y + x if self.residual else y


def make_block(op: str, in_c: int, out_c: int, stride: int) -> nn.Module:
    """Build one block from its FBNet op name; ``skip`` must keep the shape (a/b/c never project)."""
    if op == "skip":
        if in_c != out_c or stride != 1:
            raise ValueError(f"skip block {in_c}->{out_c} stride {stride} would need a projection")
        return nn.Identity()
    match = _OP.fullmatch(op)
    if match is None:
        raise ValueError(f"unknown FBNet op {op!r}")
    kernel = int(match["kernel"])
    if match["groups"]:
        return IRFBlock(in_c, out_c, 1, stride, kernel, groups=int(match["groups"]))
    return IRFBlock(in_c, out_c, int(match["expansion"]), stride, kernel)


class FBNet(Backbone, nn.Module):
    """``[N,3,S,S]`` in [-1, 1] (S = 112 or 224) → ``[N,E]`` embedding (not L2-normalised).

    The stem has stride 1 at 112 and 2 at 224, so both sizes reach the 7×7 map the head's Linear expects.
    """

    def __init__(
        self, ops: Sequence[str], embedding_size: int = 512, input_size: int = 112, dropout: float = 0.4
    ) -> None:
        super().__init__()
        if len(ops) != len(CHANNELS):
            raise ValueError(f"expected {len(CHANNELS)} block ops, got {len(ops)}")
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.first = _conv(3, STEM_CHANNELS, 3, stride=1 if input_size == 112 else 2, relu=True)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        in_c = STEM_CHANNELS
        for i, (op, out_c, stride) in enumerate(zip(ops, CHANNELS, STRIDES)):
            blocks[f"xif{i}_0"] = make_block(op, in_c, out_c, stride)
            in_c = out_c
        self.stages = nn.Sequential(blocks)
        self.feature_channels = in_c
        self.last_stages = nn.Sequential(
            nn.BatchNorm2d(in_c),
            nn.Dropout(dropout),
            nn.Flatten(),  # reshape, not view: also accepts channels_last activations
            nn.Linear(in_c * 7 * 7, embedding_size),
            nn.BatchNorm1d(embedding_size, affine=False),
        )
        initialize_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, stages output [N, 352, 7, 7])`` at either input size, from the one pass."""
        features = self.stages(self.first(x))
        return self.last_stages(features), features


def build_fbnet(arch: str, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.4) -> FBNet:
    """Build ``fbnet_a``/``fbnet_b``/``fbnet_c`` after checking the options (ValueError names the bad one)."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not supported (choose from: {', '.join(ARCHS)})")
    check_choice("input_size", input_size, INPUT_SIZES)
    if embedding_size <= 0:
        raise ValueError(f"embedding_size={embedding_size!r} must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    return FBNet(ARCHS[arch], embedding_size, input_size, dropout)


@options
def fbnet_a(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
            dropout: float = dropout_option(0.4)) -> nn.Module:
    """FBNet-A (TFace ``fbnet_a``): 11.0 M parameters at 512-d, 8.8 M of them in the head's Linear."""
    return build_fbnet("fbnet_a", embedding_size, input_size, dropout)


@options
def fbnet_b(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
            dropout: float = dropout_option(0.4)) -> nn.Module:
    """FBNet-B (TFace ``fbnet_b``): 10.9 M parameters at 512-d."""
    return build_fbnet("fbnet_b", embedding_size, input_size, dropout)


@options
def fbnet_c(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
            dropout: float = dropout_option(0.4)) -> nn.Module:
    """FBNet-C (TFace ``fbnet_c``): 11.7 M parameters at 512-d, the widest of the three."""
    return build_fbnet("fbnet_c", embedding_size, input_size, dropout)


#: The options of :func:`fbnet_a` as a class (the name earlier releases exported; the family's other
#: factories have equal ones).
FBNetConfig = fbnet_a.Config

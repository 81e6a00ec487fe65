"""IR and IR-SE ResNets (ArcFace's "improved residual" units) laid out exactly as TFace v0.1.0.

One generic builder, :func:`build_ir`, covers every depth TFace ships (18/34/50/100/152/200, optional SE),
reproducing its state_dict grammar (``input_layer``, ``body.i.res_layer.k``, ``body.i.shortcut_layer.k``,
``res_layer.se_block.fc{1,2}``, ``output_layer.{0,3,4}``) so TFace checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tface.backbones.common import (
    SEModule,
    check_choice,
    dropout_option,
    embedding_option,
    initialize_weights,
    input_size_option,
)
from tface.core.backbone import Backbone
from tface.core.config import options

__all__ = ["IR", "UNITS", "IRConfig", "build_ir", "ir_18", "ir_34", "ir_50", "ir_101", "ir_152", "ir_200",
           "ir_se_50", "ir_se_101", "ir_se_152", "ir_se_200"]

INPUT_SIZES: tuple[int, ...] = (112, 224)

#: Units per stage. TFace calls depth 100 "IR_101"; both names are accepted.
UNITS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    101: (3, 13, 30, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}

#: Depths from which TFace switches from basic to bottleneck units (and to 4× wider stages).
BOTTLENECK_FROM = 152


class BasicUnit(nn.Module):
    """BN → 3×3 conv → BN → PReLU → 3×3 conv (stride) → BN [→ SE], plus shortcut; no activation after add."""

    def __init__(self, in_c: int, depth: int, stride: int, se: bool = False) -> None:
        super().__init__()
        self.shortcut_layer = _shortcut(in_c, depth, stride)
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_c),
            nn.Conv2d(in_c, depth, 3, 1, 1, bias=False),
            nn.BatchNorm2d(depth),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )
        if se:
            self.res_layer.add_module("se_block", SEModule(depth, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class BottleneckUnit(BasicUnit):
    """BN → 1×1 → BN → PReLU → 3×3 → BN → PReLU → 1×1 (stride, ×4 width) → BN [→ SE], plus shortcut."""

    def __init__(self, in_c: int, depth: int, stride: int, se: bool = False) -> None:
        nn.Module.__init__(self)
        mid = depth // 4
        self.shortcut_layer = _shortcut(in_c, depth, stride)
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_c),
            nn.Conv2d(in_c, mid, 1, 1, 0, bias=False),
            nn.BatchNorm2d(mid),
            nn.PReLU(mid),
            nn.Conv2d(mid, mid, 3, 1, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.PReLU(mid),
            nn.Conv2d(mid, depth, 1, stride, 0, bias=False),
            nn.BatchNorm2d(depth),
        )
        if se:
            self.res_layer.add_module("se_block", SEModule(depth, 16))


def _shortcut(in_c: int, depth: int, stride: int) -> nn.Module:
    """Parameter-free (sub)sampling when widths match, else a 1×1 projection; TFace uses MaxPool2d(1, s)."""
    if in_c == depth:
        return nn.MaxPool2d(1, stride)
    return nn.Sequential(nn.Conv2d(in_c, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))


class IR(Backbone, nn.Module):
    """``[N,3,S,S]`` in [-1, 1] (S = 112 or 224) → ``[N,E]`` embedding (not L2-normalised).

    ``forward_features`` also returns the body's output, ``[N, C, S/16, S/16]`` (C = 512, or 2048 with
    bottleneck units): the map TFace's SCF uncertainty net reads.
    """

    def __init__(
        self,
        units: Sequence[int],
        channels: Sequence[int],
        bottleneck: bool = False,
        se: bool = False,
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.4,
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_channels = channels[-1]
        unit_cls = BottleneckUnit if bottleneck else BasicUnit
        final = input_size // 16  # four stride-2 stages
        # Attribute order fixes the state_dict order TFace writes: input_layer, output_layer, body.
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)
        )
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(channels[-1]),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(channels[-1] * final * final, embedding_size),
            nn.BatchNorm1d(embedding_size, affine=False),
        )
        blocks: list[nn.Module] = []
        in_c = 64
        for n, depth in zip(units, channels):
            for j in range(n):
                blocks.append(unit_cls(in_c, depth, 2 if j == 0 else 1, se))
                in_c = depth
        self.body = nn.Sequential(*blocks)
        initialize_weights(self.modules())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, body output [N, C, S/16, S/16])``: TFace's conv map for SCF, from the one pass."""
        features = self.body(self.input_layer(x))
        return self.output_layer(features), features


def build_ir(
    depth: int, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.4, se: bool = False
) -> IR:
    """Build IR-``depth`` (IR-SE with ``se=True``) as TFace's ``IR_<depth>`` / ``IR_SE_<depth>``.

    Depths below 152 use basic units with 64/128/256/512 channels; 152 and 200 use bottleneck units
    with 256/512/1024/2048, as TFace does.
    """
    if depth not in UNITS:
        raise ValueError(f"depth={depth!r} is not supported (choose from: {', '.join(map(str, UNITS))})")
    check_choice("input_size", input_size, INPUT_SIZES)
    if embedding_size <= 0:
        raise ValueError(f"embedding_size={embedding_size!r} must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    bottleneck = depth >= BOTTLENECK_FROM
    channels = (256, 512, 1024, 2048) if bottleneck else (64, 128, 256, 512)
    return IR(UNITS[depth], channels, bottleneck, se, embedding_size, input_size, dropout)


@options
def ir_18(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
          dropout: float = dropout_option(0.4)) -> nn.Module:
    """IR-18 (TFace ``IR_18``): 24.0 M parameters at 112/512, most of them in the output Linear."""
    return build_ir(18, embedding_size, input_size, dropout)


def _factory(depth: int, se: bool, params: str) -> object:
    name = f"ir_se_{depth}" if se else f"ir_{depth}"
    tface_name = name.upper()

    def factory(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
                dropout: float = dropout_option(0.4)) -> nn.Module:
        return build_ir(depth, embedding_size, input_size, dropout, se=se)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{'IR-SE' if se else 'IR'}-{depth} (TFace ``{tface_name}``): {params} parameters at 112/512."
    return options(factory)  # after naming it: the Config is named after it


ir_34 = _factory(34, False, "34.1 M")
ir_50 = _factory(50, False, "43.6 M")
ir_101 = _factory(101, False, "65.2 M")  # TFace's IR_101 is ArcFace's IR-100: [3, 13, 30, 3] units
ir_152 = _factory(152, False, "109.6 M")
ir_200 = _factory(200, False, "114.1 M")
ir_se_50 = _factory(50, True, "43.8 M")
ir_se_101 = _factory(101, True, "65.5 M")
ir_se_152 = _factory(152, True, "116.2 M")
ir_se_200 = _factory(200, True, "121.2 M")


#: The options of :func:`ir_18` as a class (the name earlier releases exported; the family's other
#: factories have equal ones).
IRConfig = ir_18.Config

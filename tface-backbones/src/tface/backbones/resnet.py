"""TFace v0.1.0's ``ResNet_50/101/152``: torchvision-style bottleneck ResNets with a face-embedding head.

TFace's own ``model_resnet.py`` never builds (it passes ``self.modules`` uncalled to ``initialize_weights``);
this one does, with the same state_dict grammar (``conv1``, ``bn1``, ``layer{1-4}.{j}.{conv1..3,bn1..3,
downsample.0/1}``, ``bn_o1``, ``fc``, ``bn_o2``) and therefore the same parameter counts as a patched TFace
build: 40,290,880 / 59,283,008 / 74,926,656 at 112×112 and 512-d.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tface.backbones.common import check_choice, dropout_option, embedding_option, initialize_weights, input_size_option
from tface.core.backbone import Backbone
from tface.core.config import options

__all__ = ["LAYERS", "Bottleneck", "ResNet", "ResNetConfig", "build_resnet", "resnet_50", "resnet_101", "resnet_152"]

INPUT_SIZES: tuple[int, ...] = (112, 224)

#: Bottleneck blocks per stage, as torchvision and TFace.
LAYERS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

#: Final feature-map side per input size: a stride-2 stem, a stride-2 max-pool and three stride-2 stages
#: (112 → 56 → 28 → 28 → 14 → 7 → 4; 224 → … → 7).
FINAL_SIZE: dict[int, int] = {112: 4, 224: 7}


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (stride here, "ResNet v1.5") → 1×1 expand ×4, ReLU after each BN and after the add."""

    expansion = 4

    def __init__(self, in_c: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_c = planes * self.expansion
        self.conv1 = nn.Conv2d(in_c, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_c != out_c:
            self.downsample = nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride, bias=False), nn.BatchNorm2d(out_c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(Backbone, nn.Module):
    """``[N,3,S,S]`` (S = 112 or 224) → ``[N,E]`` embedding (not L2-normalised).

    Head as TFace: ``bn_o1`` BN2d(2048) → Dropout → flatten → ``fc`` → ``bn_o2`` BN1d (affine, unlike IR).
    """

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        input_size: int = 112,
        dropout: float = 0.5,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = input_size
        self.feature_channels = 512 * Bottleneck.expansion
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_c = 64
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(in_c, planes, stride=2 if (j == 0 and i > 1) else 1))
                in_c = planes * Bottleneck.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        final = FINAL_SIZE[input_size]
        self.bn_o1 = nn.BatchNorm2d(in_c)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_c * final * final, embedding_size)
        self.bn_o2 = nn.BatchNorm1d(embedding_size)
        initialize_weights(self.modules())
        if zero_init_residual:
            # Each block starts as (ReLU of) its shortcut, which eases early training of deep stacks.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(embedding, layer4 output [N, 2048, f, f])``, f = 4 at 112 and 7 at 224, from the one pass."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.dropout(self.bn_o1(features)), 1)
        return self.bn_o2(self.fc(x)), features


def build_resnet(depth: int, embedding_size: int = 512, input_size: int = 112, dropout: float = 0.5) -> ResNet:
    """Build TFace's ``ResNet_<depth>`` (50, 101 or 152) with validated options."""
    if depth not in LAYERS:
        raise ValueError(f"depth={depth!r} is not supported (choose from: {', '.join(map(str, LAYERS))})")
    check_choice("input_size", input_size, INPUT_SIZES)
    if embedding_size <= 0:
        raise ValueError(f"embedding_size={embedding_size!r} must be positive")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout={dropout!r} must be in [0, 1)")
    return ResNet(LAYERS[depth], embedding_size, input_size, dropout)


@options
def resnet_50(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
              dropout: float = dropout_option(0.5)) -> nn.Module:
    """ResNet-50 (TFace ``ResNet_50``): 40.3 M parameters at 112/512, 16.8 M of them in ``fc``."""
    return build_resnet(50, embedding_size, input_size, dropout)


@options
def resnet_101(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
               dropout: float = dropout_option(0.5)) -> nn.Module:
    """ResNet-101 (TFace ``ResNet_101``): 59.3 M parameters at 112/512."""
    return build_resnet(101, embedding_size, input_size, dropout)


@options
def resnet_152(embedding_size: int = embedding_option(), input_size: int = input_size_option(INPUT_SIZES),
               dropout: float = dropout_option(0.5)) -> nn.Module:
    """ResNet-152 (TFace ``ResNet_152``): 74.9 M parameters at 112/512."""
    return build_resnet(152, embedding_size, input_size, dropout)


#: The options of :func:`resnet_50` as a class (the name earlier releases exported; the family's other
#: factories have equal ones).
ResNetConfig = resnet_50.Config

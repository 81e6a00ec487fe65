"""Every registered tface-backbones backbone declares the core backbone contract, and the declaration is true.

The forward passes run on the ``meta`` device: shapes only, no arithmetic, so even IR-200 costs milliseconds.
"""

from __future__ import annotations

import pytest
import torch

from tface.core import registry
from tface.core.backbone import DEFAULT_MEAN, DEFAULT_STD, backbone_info

ZOO = sorted(e.name for e in registry.entries("backbones") if e.distribution == "tface-backbones")


def test_the_zoo_is_all_there() -> None:
    assert len(ZOO) == 25 and {"mobilefacenet", "ir_se_200", "iresnet_200", "resnet_152", "fbnet_c"} <= set(ZOO)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("input_size", [112, 224])
def test_declared_sizes_match_the_forward_pass(name: str, input_size: int) -> None:
    with torch.device("meta"):
        model = registry.create("backbones", name, embedding_size=96, input_size=input_size).eval()
        info = backbone_info(model, name)
        assert (info.embedding_size, info.input_size) == (96, input_size)
        assert (info.mean, info.std) == (DEFAULT_MEAN, DEFAULT_STD)  # TFace's and insightface's [-1, 1] inputs
        out = model(torch.empty(2, 3, info.input_size, info.input_size))
    assert tuple(out.shape) == (2, info.embedding_size)

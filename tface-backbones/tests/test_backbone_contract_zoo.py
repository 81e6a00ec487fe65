"""Every registered tface-backbones backbone declares the core backbone contract, and the declaration is true.

The forward passes run on the ``meta`` device: shapes only, no arithmetic, so even IR-200 costs milliseconds.
The feature-map equality runs for real on the smallest member of each architecture class, whose
``forward_features`` the larger members share.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tface.core import registry
from tface.core.backbone import DEFAULT_MEAN, DEFAULT_STD, backbone_info, forward_features

ZOO = sorted(e.name for e in registry.entries("backbones") if e.distribution == "tface-backbones")


@functools.cache
def meta_model(name: str, input_size: int) -> torch.nn.Module:
    """Built once per test session: building the deep ones, even on ``meta``, costs more than their forward."""
    with torch.device("meta"):
        return registry.create("backbones", name, embedding_size=96, input_size=input_size).eval()


def test_the_zoo_is_all_there() -> None:
    assert len(ZOO) == 25 and {"mobilefacenet", "ir_se_200", "iresnet_200", "resnet_152", "fbnet_c"} <= set(ZOO)


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("input_size", [112, 224])
def test_declared_sizes_match_the_forward_pass(name: str, input_size: int) -> None:
    model = meta_model(name, input_size)
    with torch.device("meta"):
        info = backbone_info(model, name)
        assert (info.embedding_size, info.input_size) == (96, input_size)
        assert (info.mean, info.std) == (DEFAULT_MEAN, DEFAULT_STD)  # TFace's and insightface's [-1, 1] inputs
        out = model(torch.empty(2, 3, info.input_size, info.input_size))
    assert tuple(out.shape) == (2, info.embedding_size)


#: Channels and side of the last feature map before the output layer at the default 112 input: TFace's sizes
#: (IR's 512×7×7 is what SCF's uncertainty net reads); ResNet's stem and max-pool halve twice, so it ends at 4×4.
FEATURE_MAPS: dict[str, tuple[int, int]] = {
    **{n: (512, 7) for n in ("mobilefacenet", "efficientnet_b0", "efficientnet_b1", "ir_18", "ir_34", "ir_50", "ir_101",
                             "ir_se_50", "ir_se_101", "iresnet_18", "iresnet_34", "iresnet_50", "iresnet_100",
                             "iresnet_200")},
    **{n: (2048, 7) for n in ("ir_152", "ir_200", "ir_se_152", "ir_se_200")},
    **{n: (2048, 4) for n in ("resnet_50", "resnet_101", "resnet_152")},
    **{n: (352, 7) for n in ("fbnet_a", "fbnet_b", "fbnet_c")},
    "ghostnet": (664, 7),
}


def test_every_backbone_has_a_feature_map_entry() -> None:
    assert sorted(FEATURE_MAPS) == ZOO


@pytest.mark.parametrize("name", ZOO)
def test_forward_features_is_the_forward_pass_with_its_map(name: str) -> None:
    channels, side = FEATURE_MAPS[name]
    calls: list[str] = []
    model = meta_model(name, 112)
    assert backbone_info(model, name).feature_channels == model.feature_channels == channels
    hooks = [sub.register_forward_hook(lambda m, i, o, sub_name=sub_name: calls.append(sub_name))
             for sub_name, sub in model.named_modules()]
    try:
        x = torch.empty(2, 3, 112, 112, device="meta")
        emb, fmap = forward_features(model, x, name)
        in_features = list(calls)
        calls.clear()
        out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    assert tuple(fmap.shape) == (2, channels, side, side) and tuple(emb.shape) == tuple(out.shape) == (2, 96)
    # One pass: forward runs exactly the modules forward_features runs, in order (then its own hook, ""), and
    # no top-level stage runs twice (the map is not recomputed for the embedding).
    assert calls == [*in_features, ""]
    top = [c for c in in_features if c and "." not in c]
    assert top and len(top) == len(set(top))


#: The smallest registered member of each architecture class (each class has one forward_features).
ONE_PER_CLASS: dict[str, int] = {"ir_18": 112, "resnet_50": 112, "iresnet_18": 112, "mobilefacenet": 64,
                                 "ghostnet": 112, "efficientnet_b0": 112, "fbnet_a": 112}


def test_one_per_class_covers_every_class() -> None:
    assert {type(meta_model(n, 112)) for n in ONE_PER_CLASS} == {type(meta_model(n, 112)) for n in ZOO}


@pytest.mark.parametrize("name", sorted(ONE_PER_CLASS))
def test_forward_features_embedding_equals_forward_exactly(name: str) -> None:
    torch.manual_seed(0)
    size = ONE_PER_CLASS[name]
    model = registry.create("backbones", name, embedding_size=16, input_size=size).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        emb, fmap = model.forward_features(x)
        out = model(x)
    assert torch.isfinite(out).all() and torch.equal(emb, out)
    channels, side = FEATURE_MAPS[name]
    side = side * size // 112  # MobileFaceNet at 64: 4×4
    assert tuple(fmap.shape) == (2, channels, side, side)

"""The whole zoo through the registry: TFace's and insightface's names, counts, and execution modes."""

from __future__ import annotations

import pytest
import torch

from tface.core import registry

# TFace v0.1.0 registry keys and verified parameter counts at 112×112 / 512-d (reference §2.1).
TFACE = {
    "ResNet_50": 40_290_880, "ResNet_101": 59_283_008, "ResNet_152": 74_926_656,
    "IR_18": 24_020_352, "IR_34": 34_134_080, "IR_50": 43_585_600, "IR_101": 65_150_912,
    "IR_152": 109_636_736, "IR_200": 114_138_240,
    "IR_SE_50": 43_808_320, "IR_SE_101": 65_523_136, "IR_SE_152": 116_214_912, "IR_SE_200": 121_240_704,
    "MobileFaceNet": 1_199_488, "GhostNet": 4_057_584, "EfficientNetB0": 4_057_600, "EfficientNetB1": 6_567_648,
    "fbnet_a": 11_016_864, "fbnet_b": 10_879_024, "fbnet_c": 11_697_344,
}
# insightface arcface_torch get_model() names -> published parameter counts (r18-r100: a public
# "Inference Cost" table of arcface_torch models; r200 is not published, see test_resnet_zoo.py)
INSIGHTFACE = {"r18": 24_025_600, "r34": 34_139_328, "r50": 43_590_848, "r100": 65_156_160}

ZOO = [e.name for e in registry.entries("backbones") if e.distribution == "tface-backbones"]


def n_params(name: str) -> int:
    with torch.device("meta"):
        model = registry.create("backbones", name)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TFACE))
def test_tface_names_resolve_with_tface_counts(name):
    entry = registry.resolve("backbones", name)
    assert entry.distribution == "tface-backbones" and (name == entry.name or name in entry.aliases)
    assert n_params(name) == TFACE[name]


@pytest.mark.parametrize("name", sorted(INSIGHTFACE))
def test_insightface_names_resolve_to_iresnet(name):
    assert registry.resolve("backbones", name).name == f"iresnet_{name[1:]}"
    assert n_params(name) == INSIGHTFACE[name]


def test_the_zoo_is_complete():
    want = {"mobilefacenet", "ghostnet", "efficientnet_b0", "efficientnet_b1", "fbnet_a", "fbnet_b", "fbnet_c",
            "resnet_50", "resnet_101", "resnet_152", *(f"ir_{d}" for d in (18, 34, 50, 101, 152, 200)),
            *(f"ir_se_{d}" for d in (50, 101, 152, 200)), *(f"iresnet_{d}" for d in (18, 34, 50, 100, 200))}
    assert set(ZOO) == want


def calibrated(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """BN running statistics = the statistics of ``x`` (one cumulative train-mode pass), as after training.

    Untrained nets in eval mode normalise with mean 0 / var 1 and their activations grow layer after
    layer (1e7 at IR-100 depth), which makes any numerical comparison meaningless.
    """
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(x)
    return model.eval()


@pytest.mark.parametrize("name", ZOO)
def test_every_backbone_eval_channels_last_and_bf16(name):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 112, 112)
    model = calibrated(registry.create("backbones", name, embedding_size=64), x)
    x = x[:2]
    with torch.inference_mode():
        ref = model(x)
        assert ref.shape == (2, 64) and torch.isfinite(ref).all()
        assert torch.equal(model(x), ref)  # eval mode is deterministic
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        scale = ref.abs().max()
        assert (cl - ref).abs().max() <= 1e-4 * scale
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.contiguous(memory_format=torch.channels_last))
        assert low.shape == (2, 64) and torch.isfinite(low.float()).all()

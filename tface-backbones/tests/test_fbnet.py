"""FBNet-A/B/C tests: TFace v0.1.0 checkpoint compatibility (counts, key grammar), block semantics, shapes, API."""

from __future__ import annotations

import inspect
import io

import attrs
import pytest
import torch
from torch import nn

from tface.backbones.fbnet import ChannelShuffle, IRFBlock, build_fbnet, fbnet_a, fbnet_b, fbnet_c, make_divisible
from tface.core.config import ConfigError, structure

FACTORIES = [fbnet_a, fbnet_b, fbnet_c]
IDS = ["fbnet_a", "fbnet_b", "fbnet_c"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def blocks_with_keys(model: nn.Module) -> set[int]:
    return {int(k.split(".")[1][3:].split("_")[0]) for k in model.state_dict() if k.startswith("stages.")}


@pytest.fixture(scope="module")
def model_a() -> nn.Module:
    return fbnet_a()


# --- parameter and key counts (reference §2.1) -------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "params", "keys"),
    [(fbnet_a, 11_016_864, 227), (fbnet_b, 10_879_024, 241), (fbnet_c, 11_697_344, 271)],
    ids=IDS,
)
def test_counts(factory, params: int, keys: int) -> None:
    model = factory()
    assert n_params(model) == params
    assert len(model.state_dict()) == keys


# --- key grammar (reference §2.7) --------------------------------------------------------------------


def test_stem_and_head_keys(model_a: nn.Module) -> None:
    s = shapes(model_a)
    assert s["first.conv.weight"] == (16, 3, 3, 3)
    assert s["first.bn.running_var"] == (16,)
    assert "first.conv.bias" not in s
    assert s["last_stages.0.weight"] == (352,)
    assert s["last_stages.3.weight"] == (512, 352 * 7 * 7)
    assert s["last_stages.3.bias"] == (512,)
    assert s["last_stages.4.running_mean"] == (512,)
    assert "last_stages.4.num_batches_tracked" in s
    assert "last_stages.4.weight" not in s  # BN1d is affine=False
    assert not any(k.startswith(("last_stages.1.", "last_stages.2.")) for k in s)
    assert list(dict.fromkeys(k.split(".")[0] for k in s)) == ["first", "stages", "last_stages"]


def test_expanding_block_keys(model_a: nn.Module) -> None:
    """ir_k3_e3, 16→24, stride 2: pw conv+bn, bare depthwise conv (dw_skip_bn), pwl conv+bn."""
    s = {k.removeprefix("stages.xif1_0."): v for k, v in shapes(model_a).items() if k.startswith("stages.xif1_0.")}
    assert s == {
        "pw.conv.weight": (48, 16, 1, 1),
        **{f"pw.bn.{n}": (48,) for n in ("weight", "bias", "running_mean", "running_var")},
        "pw.bn.num_batches_tracked": (),
        "dw.conv.weight": (48, 1, 3, 3),
        "pwl.conv.weight": (24, 48, 1, 1),
        **{f"pwl.bn.{n}": (24,) for n in ("weight", "bias", "running_mean", "running_var")},
        "pwl.bn.num_batches_tracked": (),
    }
    assert model_a.stages.xif1_0.dw.conv.stride == (2, 2)


def test_k5_e6_block_keys(model_a: nn.Module) -> None:
    s = shapes(model_a)
    assert s["stages.xif17_0.pw.conv.weight"] == (672, 112, 1, 1)  # expansion applies to the input width
    assert s["stages.xif17_0.dw.conv.weight"] == (672, 1, 5, 5)
    assert s["stages.xif17_0.pwl.conv.weight"] == (184, 672, 1, 1)
    assert s["stages.xif21_0.pwl.conv.weight"] == (352, 1104, 1, 1)
    assert model_a.stages.xif17_0.dw.conv.stride == (2, 2)


def test_non_expanding_block_keys(model_a: nn.Module) -> None:
    """ir_k3_e1: the expanded width equals the input width, so TFace writes no ``pw`` keys."""
    s = {k.removeprefix("stages.xif2_0."): v for k, v in shapes(model_a).items() if k.startswith("stages.xif2_0.")}
    assert s["dw.conv.weight"] == (24, 1, 3, 3)
    assert s["pwl.conv.weight"] == (24, 24, 1, 1)
    assert not any(k.startswith("pw.") for k in s)
    assert len(s) == 7


def test_shuffle_block_keys(model_a: nn.Module) -> None:
    """ir_k5_s2: expansion 1, 2-group pwl, parameter-free shuffle."""
    s = {k.removeprefix("stages.xif11_0."): v for k, v in shapes(model_a).items() if k.startswith("stages.xif11_0.")}
    assert s["dw.conv.weight"] == (64, 1, 5, 5)
    assert s["pwl.conv.weight"] == (64, 32, 1, 1)
    assert not any(k.startswith(("pw.", "shuffle.")) for k in s)
    assert model_a.stages.xif11_0.shuffle.groups == 2
    assert model_a.stages.xif16_0.dw.conv.weight.shape == (112, 1, 3, 3)  # ir_k3_s2


@pytest.mark.parametrize(("factory", "skips"), [(fbnet_a, {0, 3, 4}), (fbnet_b, {11}), (fbnet_c, {2})], ids=IDS)
def test_skip_blocks_have_no_keys(factory, skips: set[int]) -> None:
    model = factory()
    assert blocks_with_keys(model) == set(range(22)) - skips
    names = [name for name, _ in model.stages.named_children()]
    assert names == [f"xif{i}_0" for i in range(22)]
    assert all(isinstance(model.stages[i], nn.Identity) for i in skips)


# --- block semantics ---------------------------------------------------------------------------------


def test_make_divisible() -> None:
    assert make_divisible(48) == 48
    assert make_divisible(50) == 56
    assert make_divisible(3) == 8


def test_channel_shuffle_interleaves() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_residual_only_when_shape_kept() -> None:
    torch.manual_seed(0)
    block = IRFBlock(24, 24, expansion=6, stride=1).eval()
    nn.init.zeros_(block.pwl.bn.weight)  # branch outputs 0, so the block must return its input
    x = torch.randn(2, 24, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    assert not IRFBlock(24, 24, 6, stride=2).residual
    assert not IRFBlock(24, 32, 6, stride=1).residual


# --- forward ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [112, 224])
@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_output_shape(factory, size: int) -> None:
    torch.manual_seed(0)
    model = factory(embedding_size=128, input_size=size)
    assert (model.embedding_size, model.input_size) == (128, size)
    assert model.first.conv.stride == ((1, 1) if size == 112 else (2, 2))
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        for train in (True, False):
            out = model.train(train)(x)
            assert out.shape == (2, 128)
            assert torch.isfinite(out).all()


def test_channels_last_matches_contiguous(model_a: nn.Module) -> None:
    torch.manual_seed(0)
    model = model_a.eval()
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        ref = model(x)
        out = model(x.to(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_dropout_option() -> None:
    assert fbnet_b(dropout=0.1).last_stages[1].p == 0.1
    assert fbnet_b().last_stages[1].p == 0.4


def test_state_dict_roundtrip_strict() -> None:
    torch.manual_seed(0)
    src = fbnet_a(embedding_size=64)
    for module in src.modules():  # non-default running stats, as after training
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.num_batches_tracked.fill_(3)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    buf.seek(0)
    dst = fbnet_a(embedding_size=64)
    dst.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    expected = src.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in dst.state_dict().items())


# --- validation and config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_size": 96}, "input_size=96"),
        ({"input_size": 128}, "input_size=128"),
        ({"embedding_size": 0}, "embedding_size=0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
    ],
)
def test_rejects_bad_options(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fbnet_c(**kwargs)


def test_build_rejects_unknown_arch() -> None:
    with pytest.raises(ValueError, match="arch='fbnet_d'"):
        build_fbnet("fbnet_d")


@pytest.mark.parametrize("factory", FACTORIES, ids=IDS)
def test_config_matches_signature(factory) -> None:
    params = inspect.signature(factory).parameters
    fields = {f.name: f.default for f in attrs.fields(factory.Config)}
    assert fields == {name: p.default for name, p in params.items()}


def test_config_value_checks() -> None:
    with pytest.raises(ConfigError, match="input_size"):
        structure(fbnet_a.Config, {"input_size": 96})
    with pytest.raises(ConfigError, match="dropout"):
        structure(fbnet_a.Config, {"dropout": 1.5})
    cfg = structure(fbnet_a.Config, {"input_size": 224, "embedding_size": 256})
    assert (cfg.input_size, cfg.embedding_size, cfg.dropout) == (224, 256, 0.4)

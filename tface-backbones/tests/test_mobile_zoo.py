"""Mobile backbones (GhostNet ×1.3, EfficientNet B0/B1, MobileFaceNet at 224): TFace compatibility and API.

Expected numbers are the verified figures of the TFace v0.1.0 reference (§2.1) and the expected state_dicts
are built here from the reference's layer descriptions (§2.4–2.6), never from the models under test.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import attrs
import pytest
import torch
from torch import nn

from tface.backbones.efficientnet import efficientnet_b0, efficientnet_b1
from tface.backbones.ghostnet import ghostnet
from tface.backbones.mobilefacenet import mobilefacenet
from tface.core.config import ConfigError, structure

Shapes = dict[str, tuple[int, ...]]

FACTORIES: dict[str, Callable[..., nn.Module]] = {
    "mobilefacenet": mobilefacenet,
    "ghostnet": ghostnet,
    "efficientnet_b0": efficientnet_b0,
    "efficientnet_b1": efficientnet_b1,
}
NEW = ["ghostnet", "efficientnet_b0", "efficientnet_b1"]

#: Reference §2.1: (parameters, state_dict keys incl. num_batches_tracked) at 112×112, 512-d.
REFERENCE_COUNTS = {
    "mobilefacenet": (1_199_488, 331),
    "ghostnet": (4_057_584, 552),
    "efficientnet_b0": (4_057_600, 369),
    "efficientnet_b1": (6_567_648, 516),
}
#: Channels entering the GDC head: MobileFaceNet 512 (§2.4), GhostNet 664 (§2.5), EfficientNet 512 (§2.6).
GDC_CHANNELS = {"mobilefacenet": 512, "ghostnet": 664, "efficientnet_b0": 512, "efficientnet_b1": 512}
#: Reference §6.2: parameter tensors whose name contains "bn" (TFace's no-weight-decay rule).
BN_NAMED = {"mobilefacenet": 98, "ghostnet": 14, "efficientnet_b0": 100}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def batch(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: factory() for name, factory in FACTORIES.items()}


# --- expected state_dicts from the reference description ----------------------------------------------


def add_bn(sd: Shapes, prefix: str, c: int) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        sd[f"{prefix}.{name}"] = (c,)
    sd[f"{prefix}.num_batches_tracked"] = ()


def add_gdc(sd: Shapes, prefix: str, c: int, embedding: int = 512, spatial: int = 7) -> None:
    """GDC (§2.4): depthwise LinearBlock ``conv_6_dw.{conv,bn}``, bias-free ``linear``, non-affine BN1d ``bn``."""
    sd[f"{prefix}.conv_6_dw.conv.weight"] = (c, 1, spatial, spatial)
    add_bn(sd, f"{prefix}.conv_6_dw.bn", c)
    sd[f"{prefix}.linear.weight"] = (embedding, c)
    for name in ("running_mean", "running_var"):
        sd[f"{prefix}.bn.{name}"] = (embedding,)
    sd[f"{prefix}.bn.num_batches_tracked"] = ()


def round4(value: float) -> int:
    """§2.5: widths ×1.3 rounded to a multiple of 4 (nearest, halves up)."""
    return 4 * math.floor(value / 4 + 0.5)


#: §2.5 rows (k, expansion, c, SE, s), grouped into TFace's nine ``blocks.i`` Sequentials: the reference
#: lists "A and B" as two stages and "A, then B…" as one stage followed by a multi-row stage.
GHOST_STAGES = [
    [(3, 16, 16, 0, 1)],
    [(3, 48, 24, 0, 2)],
    [(3, 72, 24, 0, 1)],
    [(5, 72, 40, 0.25, 2)],
    [(5, 120, 40, 0.25, 1)],
    [(3, 240, 80, 0, 2)],
    [(3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)],
    [(5, 672, 160, 0.25, 2)],
    [(5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 512, 160, 0.25, 1)],
]


def add_ghost_module(sd: Shapes, prefix: str, in_c: int, out_c: int, act: bool) -> None:
    init = math.ceil(out_c / 2)
    sd[f"{prefix}.primary_conv.0.weight"] = (init, in_c, 1, 1)
    add_bn(sd, f"{prefix}.primary_conv.1", init)
    sd[f"{prefix}.cheap_operation.0.weight"] = (init, 1, 3, 3)
    add_bn(sd, f"{prefix}.cheap_operation.1", init)
    if act:
        sd[f"{prefix}.primary_conv.2.weight"] = (init,)
        sd[f"{prefix}.cheap_operation.2.weight"] = (init,)


def ghostnet_expected(embedding: int = 512, spatial: int = 7) -> Shapes:
    sd: Shapes = {}
    stem = round4(16 * 1.3)
    sd["conv_stem.weight"] = (stem, 3, 3, 3)
    add_bn(sd, "bn1", stem)
    sd["act1.weight"] = (stem,)
    in_c = stem
    for i, rows in enumerate(GHOST_STAGES):
        for j, (k, expansion, c, se, s) in enumerate(rows):
            p = f"blocks.{i}.{j}"
            mid, out_c = round4(expansion * 1.3), round4(c * 1.3)
            add_ghost_module(sd, f"{p}.ghost1", in_c, mid, act=True)
            if s == 2:
                sd[f"{p}.conv_dw.weight"] = (mid, 1, k, k)
                add_bn(sd, f"{p}.bn_dw", mid)
            if se:
                reduced = round4(mid * se)
                sd[f"{p}.se.conv_reduce.weight"] = (reduced, mid, 1, 1)
                sd[f"{p}.se.conv_reduce.bias"] = (reduced,)
                sd[f"{p}.se.conv_expand.weight"] = (mid, reduced, 1, 1)
                sd[f"{p}.se.conv_expand.bias"] = (mid,)
            add_ghost_module(sd, f"{p}.ghost2", mid, out_c, act=False)
            if in_c != out_c or s != 1:
                sd[f"{p}.shortcut.0.weight"] = (in_c, 1, k, k)
                add_bn(sd, f"{p}.shortcut.1", in_c)
                sd[f"{p}.shortcut.2.weight"] = (out_c, in_c, 1, 1)
                add_bn(sd, f"{p}.shortcut.3", out_c)
            in_c = out_c
    assert in_c == 208
    sd["blocks.9.0.conv.weight"] = (664, 208, 1, 1)  # "final ConvBnAct 1×1 208→664"
    add_bn(sd, "blocks.9.0.bn1", 664)
    sd["blocks.9.0.act1.weight"] = (664,)
    add_gdc(sd, "output_layer", 664, embedding, spatial)
    return sd


#: §2.6, B0: output channels and kernel sizes per stage, first-unit strides.
EFF_B0_CHANNELS = [[16], [24, 24], [40, 40], [80, 80, 80, 112, 112, 112], [192, 192, 192, 192, 320]]
EFF_B0_KERNELS = [[3], [3, 3], [5, 5], [3, 3, 3, 5, 5, 5], [5, 5, 5, 5, 3]]
EFF_STRIDES = [1, 2, 2, 2, 2]
#: The seven original EfficientNet rows (channels, kernel) and the stage each is merged into.
EFF_ROWS = [(16, 3, 1), (24, 3, 2), (40, 5, 3), (80, 3, 4), (112, 5, 4), (192, 5, 5), (320, 3, 5)]
EFF_REPEATS = {"efficientnet_b0": [1, 2, 2, 3, 3, 4, 1], "efficientnet_b1": [2, 3, 3, 4, 4, 5, 2]}  # §2.6


def eff_stages(name: str) -> list[list[tuple[int, int]]]:
    stages: list[list[tuple[int, int]]] = [[] for _ in range(5)]
    for (c, k, stage), repeats in zip(EFF_ROWS, EFF_REPEATS[name]):
        stages[stage - 1].extend([(c, k)] * repeats)
    return stages


def add_conv_block(sd: Shapes, prefix: str, weight: tuple[int, ...], act: bool) -> None:
    sd[f"{prefix}.conv.weight"] = weight
    add_bn(sd, f"{prefix}.bn", weight[0])
    if act:
        sd[f"{prefix}.act.weight"] = (weight[0],)  # TFace's ConvBlock names its PReLU ``act``


def efficientnet_expected(name: str, embedding: int = 512, spatial: int = 7) -> Shapes:
    sd: Shapes = {}
    add_conv_block(sd, "features.init_block.conv", (32, 3, 3, 3), act=True)
    in_c = 32
    for s, units in enumerate(eff_stages(name), start=1):
        for j, (c, k) in enumerate(units, start=1):
            p = f"features.stage{s}.unit{j}"
            if s == 1:  # DwsConv unit, SE reduction 4
                add_conv_block(sd, f"{p}.dw_conv", (in_c, 1, 3, 3), act=True)
                sd[f"{p}.se.fc1.weight"] = (in_c // 4, in_c, 1, 1)
                sd[f"{p}.se.fc2.weight"] = (in_c, in_c // 4, 1, 1)
                add_conv_block(sd, f"{p}.pw_conv", (c, in_c, 1, 1), act=False)
            else:  # MBConv ×6, SE reduction 24 (C_in/4 channels)
                mid = in_c * 6
                add_conv_block(sd, f"{p}.conv1", (mid, in_c, 1, 1), act=True)
                add_conv_block(sd, f"{p}.conv2", (mid, 1, k, k), act=True)
                sd[f"{p}.se.fc1.weight"] = (in_c // 4, mid, 1, 1)
                sd[f"{p}.se.fc2.weight"] = (mid, in_c // 4, 1, 1)
                add_conv_block(sd, f"{p}.conv3", (c, mid, 1, 1), act=False)
            in_c = c
    add_conv_block(sd, "features.final_block", (512, 320, 1, 1), act=True)
    add_gdc(sd, "output", 512, embedding, spatial)
    return sd


def expected(name: str, embedding: int = 512, spatial: int = 7) -> Shapes:
    if name == "ghostnet":
        return ghostnet_expected(embedding, spatial)
    return efficientnet_expected(name, embedding, spatial)


def learnable(sd: Shapes) -> int:
    """Parameters in an expected state_dict (BN running stats and counters are buffers)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(shape) for key, shape in sd.items() if not key.endswith(buffers))


def random_state(sd: Shapes, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sd.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


# --- counts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FACTORIES))
def test_reference_counts(name: str, models: dict[str, nn.Module]) -> None:
    params, keys = REFERENCE_COUNTS[name]
    assert n_params(models[name]) == params
    assert len(models[name].state_dict()) == keys


@pytest.mark.parametrize("name", NEW)
def test_expected_description_matches_reference_counts(name: str) -> None:
    """The test's own reading of §2.5/§2.6 reproduces the verified §2.1 counts, so it can serve as the oracle."""
    params, keys = REFERENCE_COUNTS[name]
    sd = expected(name)
    assert (learnable(sd), len(sd)) == (params, keys)


@pytest.mark.parametrize("name", list(BN_NAMED))
def test_bn_named_parameters_match_tface_weight_decay_rule(name: str, models: dict[str, nn.Module]) -> None:
    assert sum("bn" in n for n, _ in models[name].named_parameters()) == BN_NAMED[name]


@pytest.mark.parametrize(("name", "params"), [(n, c[0]) for n, c in REFERENCE_COUNTS.items()])
def test_224_grows_only_the_gdc_kernel(name: str, params: int) -> None:
    model = FACTORIES[name](input_size=224)
    c = GDC_CHANNELS[name]
    assert model.input_size == 224
    assert n_params(model) == params + c * (14 * 14 - 7 * 7)
    assert len(model.state_dict()) == REFERENCE_COUNTS[name][1]
    prefix = "output" if name.startswith("efficientnet") else "output_layer"
    assert model.state_dict()[f"{prefix}.conv_6_dw.conv.weight"].shape == (c, 1, 14, 14)


# --- key grammar and strict loading -------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_state_dict_equals_reference_layout(name: str, models: dict[str, nn.Module]) -> None:
    assert shapes(models[name]) == expected(name)


@pytest.mark.parametrize("name", NEW)
def test_strict_load_of_reference_layout(name: str) -> None:
    state = random_state(expected(name, embedding=128))
    model = FACTORIES[name](embedding_size=128)
    model.load_state_dict(state, strict=True)
    loaded = model.state_dict()
    stem, head = ("conv_stem", "output_layer") if name == "ghostnet" else ("features.init_block", "output")
    for key in (f"{stem}.", f"{head}.conv_6_dw.", f"{head}.linear.", f"{head}.bn."):
        assert any(k.startswith(key) for k in state), key
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_strict_load_rejects_wrong_layout() -> None:
    state = random_state(expected("efficientnet_b0"))
    state["features.init_block.conv.activ.weight"] = state.pop("features.init_block.conv.act.weight")
    with pytest.raises(RuntimeError, match="activ"):
        efficientnet_b0().load_state_dict(state, strict=True)


def test_ghostnet_block_layout(models: dict[str, nn.Module]) -> None:
    s = shapes(models["ghostnet"])
    units = sorted({tuple(map(int, k.split(".")[1:3])) for k in s if k.startswith("blocks.")})
    per_stage = [sum(1 for i, _ in units if i == stage) for stage in range(10)]
    assert per_stage == [1, 1, 1, 1, 1, 1, 5, 1, 4, 1]
    assert sum(per_stage[:9]) == 16  # 16 bottlenecks + the final ConvBnAct
    se = {k.rsplit(".se.", 1)[0] for k in s if ".se." in k}
    assert se == {"blocks.3.0", "blocks.4.0", "blocks.6.3", "blocks.6.4", "blocks.7.0", "blocks.8.1", "blocks.8.3"}
    conv_dw = {k.rsplit(".conv_dw.", 1)[0] for k in s if ".conv_dw." in k}
    assert conv_dw == {"blocks.1.0", "blocks.3.0", "blocks.5.0", "blocks.7.0"}  # the stride-2 rows
    projections = {k.rsplit(".shortcut.", 1)[0] for k in s if ".shortcut." in k}
    assert projections == {"blocks.1.0", "blocks.3.0", "blocks.5.0", "blocks.6.3", "blocks.7.0"}
    assert "blocks.0.0.ghost2.primary_conv.2.weight" not in s  # second ghost module has no activation
    assert s["blocks.0.0.ghost1.primary_conv.2.weight"] == (10,)  # expansion 16 × 1.3 = 20.8 → 20, halved
    assert s["blocks.1.0.ghost1.primary_conv.0.weight"] == (32, 20, 1, 1)  # 48 × 1.3 = 62.4 → 64, halved
    assert s["blocks.3.0.se.conv_reduce.bias"] == (24,)  # 92 / 4 = 23, rounded to a multiple of 4
    assert s["conv_stem.weight"] == (20, 3, 3, 3)
    assert s["blocks.9.0.conv.weight"] == (664, 208, 1, 1)
    assert s["output_layer.linear.weight"] == (512, 664)
    assert "output_layer.bn.weight" not in s and "output_layer.linear.bias" not in s


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b1"])
def test_efficientnet_stage_layout(name: str, models: dict[str, nn.Module]) -> None:
    s = shapes(models[name])
    units = {tuple(k.split(".")[1:3]) for k in s if k.startswith("features.stage")}
    per_stage = [sum(1 for stage, _ in units if stage == f"stage{i}") for i in range(1, 6)]
    assert per_stage == ([1, 2, 2, 6, 5] if name == "efficientnet_b0" else [2, 3, 3, 8, 7])
    tops = list(dict.fromkeys(k.split(".")[0] if k.startswith("output") else ".".join(k.split(".")[:2]) for k in s))
    stages = [f"features.stage{i}" for i in range(1, 6)]
    assert tops == ["features.init_block", *stages, "features.final_block", "output"]
    assert s["features.init_block.conv.conv.weight"] == (32, 3, 3, 3)
    assert s["features.stage1.unit1.se.fc1.weight"] == (8, 32, 1, 1)
    assert "features.stage1.unit1.pw_conv.act.weight" not in s  # projection has no activation
    assert s["features.final_block.act.weight"] == (512,)
    assert s["output.linear.weight"] == (512, 512)


def test_efficientnet_b0_matches_reference_tables(models: dict[str, nn.Module]) -> None:
    assert [[c for c, _ in stage] for stage in eff_stages("efficientnet_b0")] == EFF_B0_CHANNELS
    assert [[k for _, k in stage] for stage in eff_stages("efficientnet_b0")] == EFF_B0_KERNELS
    s = shapes(models["efficientnet_b0"])
    for i, (channels, kernels) in enumerate(zip(EFF_B0_CHANNELS, EFF_B0_KERNELS), start=1):
        for j, (c, k) in enumerate(zip(channels, kernels), start=1):
            if i == 1:
                assert s[f"features.stage{i}.unit{j}.pw_conv.conv.weight"][0] == c
            else:
                assert s[f"features.stage{i}.unit{j}.conv2.conv.weight"][2:] == (k, k)
                assert s[f"features.stage{i}.unit{j}.conv3.conv.weight"][0] == c
    assert s["features.stage4.unit6.conv3.conv.weight"] == (112, 672, 1, 1)
    assert s["features.stage4.unit6.se.fc2.weight"] == (672, 28, 1, 1)
    assert "features.stage4.unit7.conv1.conv.weight" not in s
    model = models["efficientnet_b0"]
    strides = [model.features[i][0].conv2.conv.stride[0] for i in range(2, 6)]
    assert [model.features[1][0].dw_conv.conv.stride[0], *strides] == EFF_STRIDES
    assert model.features[0].conv.conv.stride == (1, 1)  # face variant: stride-1 stem


def test_mobilefacenet_224_and_dropout_keep_tface_keys(models: dict[str, nn.Module]) -> None:
    reference = shapes(models["mobilefacenet"])
    big = shapes(mobilefacenet(input_size=224, dropout=0.2))
    assert big.keys() == reference.keys()
    assert {k for k in big if big[k] != reference[k]} == {"output_layer.conv_6_dw.conv.weight"}
    head: Shapes = {}
    add_gdc(head, "output_layer", 512)
    state = {**models["mobilefacenet"].state_dict(), **random_state(head)}
    model = mobilefacenet(dropout=0.3)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.output_layer.linear.weight, state["output_layer.linear.weight"])


def test_mobilefacenet_64_has_a_4x4_gdc_kernel_and_tface_keys(models: dict[str, nn.Module]) -> None:
    reference = shapes(models["mobilefacenet"])
    small = mobilefacenet(input_size=64)
    assert shapes(small).keys() == reference.keys()
    assert small.output_layer.conv_6_dw.conv.weight.shape == (512, 1, 4, 4)  # 64 / 16: the final map's side
    count = sum(p.numel() for p in small.parameters())
    assert count == sum(p.numel() for p in models["mobilefacenet"].parameters()) - 512 * (7 * 7 - 4 * 4)
    small.eval()
    with torch.no_grad():
        assert small(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert small.input_size == 64


# --- forward ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FACTORIES))
def test_forward_112_train_and_eval(name: str) -> None:
    torch.manual_seed(0)
    model = FACTORIES[name]()
    assert (model.embedding_size, model.input_size) == (512, 112)
    with torch.no_grad():
        assert model.train()(batch(112)).shape == (2, 512)
        out = model.eval()(batch(112))
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(FACTORIES))
def test_forward_224_train_and_eval(name: str) -> None:
    torch.manual_seed(0)
    model = FACTORIES[name](embedding_size=64, input_size=224)
    with torch.no_grad():
        assert model.train()(batch(224)).shape == (2, 64)
        out = model.eval()(batch(224, n=1))
    assert out.shape == (1, 64)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NEW)
def test_eval_deterministic_and_channels_last(name: str, models: dict[str, nn.Module]) -> None:
    model = models[name].eval()
    x = batch(112, n=1, seed=3)
    with torch.no_grad():
        first, second = model(x), model(x.clone())
        cl = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        model.to(memory_format=torch.contiguous_format)
    assert torch.equal(first, second)
    torch.testing.assert_close(cl, first, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NEW)
def test_bf16_autocast_cpu(name: str, models: dict[str, nn.Module]) -> None:
    model = models[name].eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch(112, n=1, seed=4))
    assert out.shape == (1, 512)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", NEW)
def test_embedding_size_changes_only_the_head(name: str, models: dict[str, nn.Module]) -> None:
    model = FACTORIES[name](embedding_size=128)
    c = GDC_CHANNELS[name]
    assert model.embedding_size == 128
    assert n_params(model) == REFERENCE_COUNTS[name][0] - (512 - 128) * c
    assert shapes(model) == expected(name, embedding=128)


def test_dropout_acts_before_gdc_linear_in_training_only() -> None:
    torch.manual_seed(0)
    model = mobilefacenet(dropout=0.5)
    assert len(model.state_dict()) == REFERENCE_COUNTS["mobilefacenet"][1]
    x = batch(112, n=2)
    with torch.no_grad():
        model.train()
        assert not torch.equal(model(x), model(x))
        model.eval()
        assert torch.equal(model(x), model(x))
    for name in NEW:
        head = FACTORIES[name](dropout=0.25).get_submodule("output" if name != "ghostnet" else "output_layer")
        assert head.dropout.p == 0.25


# --- init ---------------------------------------------------------------------------------------------


def test_ghostnet_tface_init(models: dict[str, nn.Module]) -> None:
    fresh = ghostnet()
    w = fresh.blocks[9][0].conv.weight  # Kaiming-normal, fan_out = 664
    assert abs(w.std().item() - math.sqrt(2 / 664)) < 0.05 * math.sqrt(2 / 664)
    se = fresh.blocks[3][0].se
    assert torch.count_nonzero(se.conv_reduce.bias) == 0 and torch.count_nonzero(se.conv_expand.bias) == 0
    assert torch.all(fresh.bn1.weight == 1) and torch.all(fresh.bn1.bias == 0)


def test_efficientnet_kaiming_uniform_convs() -> None:
    w = efficientnet_b0().features.final_block.conv.weight  # fan_in 320
    bound = math.sqrt(6 / 320)
    assert w.abs().max().item() <= bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)


# --- options and configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize(
    ("option", "value"),
    [("input_size", 96), ("input_size", 160), ("embedding_size", 0), ("dropout", -0.1), ("dropout", 1.0)],
)
def test_bad_options_raise(name: str, option: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{option}={value}"):
        FACTORIES[name](**{option: value})


@pytest.mark.parametrize("name", list(FACTORIES))
def test_config_matches_signature(name: str) -> None:
    factory = FACTORIES[name]
    params = inspect.signature(factory).parameters
    fields = {f.name: f.default for f in attrs.fields(factory.Config)}
    assert fields == {n: p.default for n, p in params.items()}
    assert fields == {"embedding_size": 512, "input_size": 112, "dropout": 0.0}


@pytest.mark.parametrize("name", NEW)
def test_config_validation_names_key(name: str) -> None:
    config = FACTORIES[name].Config
    with pytest.raises(ConfigError, match="input_size"):
        structure(config, {"input_size": 128})
    with pytest.raises(ConfigError, match="dropout"):
        structure(config, {"dropout": 1.5})
    cfg = structure(config, {"input_size": 224, "embedding_size": 256})
    assert (cfg.input_size, cfg.embedding_size, cfg.dropout) == (224, 256, 0.0)

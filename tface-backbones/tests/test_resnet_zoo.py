"""TFace ResNet and insightface iResNet: counts, key grammar, strict loads of foreign-layout state_dicts, shapes.

Expected numbers and key lists are written here from the sources, never read back from the models:
TFace's from reference tface-v0.1.0.md §2.1/§2.3; iResNet's from arcface_torch's backbones/iresnet.py
(described in ``arcface_iresnet_shapes``). Large models are built on the meta device (no memory, no init).
"""

from __future__ import annotations

import inspect

import attrs
import pytest
import torch
from torch import nn

from tface.backbones import iresnet, resnet
from tface.backbones.iresnet import iresnet_18, iresnet_50, iresnet_100, iresnet_200
from tface.backbones.resnet import resnet_50, resnet_101, resnet_152
from tface.core.config import ConfigError, structure
from tface.core.weights import load_into

Shapes = dict[str, tuple[int, ...]]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model: nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def on_meta(factory, **options) -> nn.Module:
    with torch.device("meta"):
        return factory(**options)


def bn(prefix: str, c: int) -> Shapes:
    """An affine BatchNorm's five state_dict entries."""
    return {
        f"{prefix}.weight": (c,),
        f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,),
        f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }


def random_state(spec: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes, as a trained checkpoint would hold (counters are int64)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in spec.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(1234, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g)
    return out


# --- TFace ResNet (reference §2.1, §2.3) ---------------------------------------------------------------------


def tface_resnet_shapes(layers: tuple[int, ...], embedding: int = 512, final: int = 4) -> Shapes:
    """§2.3: torchvision bottleneck (expansion 4), 7×7 stem, then bn_o1 → fc → bn_o2 (affine)."""
    s: Shapes = {"conv1.weight": (64, 3, 7, 7), **bn("bn1", 64)}
    in_c = 64
    for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512)), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            s[f"{p}.conv1.weight"] = (planes, in_c, 1, 1)
            s |= bn(f"{p}.bn1", planes)
            s[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            s |= bn(f"{p}.bn2", planes)
            s[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            s |= bn(f"{p}.bn3", planes * 4)
            if j == 0:
                s[f"{p}.downsample.0.weight"] = (planes * 4, in_c, 1, 1)
                s |= bn(f"{p}.downsample.1", planes * 4)
            in_c = planes * 4
    s |= bn("bn_o1", 2048)
    s["fc.weight"] = (embedding, 2048 * final * final)
    s["fc.bias"] = (embedding,)
    s |= bn("bn_o2", embedding)
    return s


@pytest.fixture(scope="module")
def r50() -> nn.Module:
    torch.manual_seed(0)
    return resnet_50()


@pytest.mark.parametrize(
    ("factory", "layers", "params", "keys"),
    [
        (resnet_50, (3, 4, 6, 3), 40_290_880, 330),
        (resnet_101, (3, 4, 23, 3), 59_283_008, 636),
        (resnet_152, (3, 8, 36, 3), 74_926_656, 942),
    ],
    ids=["50", "101", "152"],
)
def test_resnet_counts_and_grammar(factory, layers: tuple[int, ...], params: int, keys: int) -> None:
    model = on_meta(factory)
    expected = tface_resnet_shapes(layers)
    assert len(expected) == keys  # the grammar written above reproduces the reference's key count
    assert n_params(model) == params
    assert shapes(model) == expected
    assert list(model.state_dict()) == list(expected)  # conv1, bn1, layer1-4, bn_o1, fc, bn_o2


def test_resnet_224_grammar() -> None:
    assert shapes(on_meta(resnet_50, input_size=224, embedding_size=128)) == tface_resnet_shapes(
        (3, 4, 6, 3), embedding=128, final=7
    )


def test_resnet_zero_init_residual(r50: nn.Module) -> None:
    bn3 = {k: v for k, v in r50.state_dict().items() if k.endswith(".bn3.weight")}
    assert len(bn3) == 16
    assert all(torch.count_nonzero(v) == 0 for v in bn3.values())
    assert torch.all(r50.layer1[0].bn2.weight == 1)
    assert torch.all(r50.layer1[0].downsample[1].weight == 1)
    assert r50.bn_o2.weight is not None and torch.all(r50.bn_o2.weight == 1)


def test_resnet_dropout_option(r50: nn.Module) -> None:
    assert r50.dropout.p == 0.5  # TFace's nn.Dropout() default
    assert on_meta(resnet_50, dropout=0.2).dropout.p == 0.2


def test_resnet_forward_112_train_eval(r50: nn.Module) -> None:
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        train_out = r50.train()(x)
        eval_out = r50.eval()(x)
    assert train_out.shape == eval_out.shape == (2, 512)
    assert torch.isfinite(train_out).all() and torch.isfinite(eval_out).all()


def test_resnet_forward_224() -> None:
    torch.manual_seed(0)
    model = resnet_50(embedding_size=64, input_size=224)
    assert model.fc.in_features == 2048 * 7 * 7
    with torch.no_grad():
        assert model.train()(torch.rand(2, 3, 224, 224)).shape == (2, 64)
        assert model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 64)


def test_resnet_validation() -> None:
    with pytest.raises(ValueError, match="input_size=128"):
        resnet_50(input_size=128)
    with pytest.raises(ValueError, match="depth=34"):
        resnet.build_resnet(34)
    with pytest.raises(ConfigError, match="dropout"):
        structure(resnet_101.Config, {"dropout": 1.0})
    assert structure(resnet_152.Config, {"input_size": 224}).input_size == 224


# --- insightface arcface_torch iResNet -----------------------------------------------------------------------

# arcface_torch backbones/iresnet.py: iresnet18/34/50/100/200 use IBasicBlock with these units per stage.
ARCFACE_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 200: (6, 26, 60, 6)}


def arcface_iresnet_shapes(units: tuple[int, ...], num_features: int = 512, fc_scale: int = 7 * 7) -> Shapes:
    """arcface_torch's IResNet, written from its source description.

    conv1 3×3 3→64, bn1, prelu(64); layer1-4 of IBasicBlock (bn1(in), conv1 3×3 in→c, bn2, prelu(c),
    conv2 3×3 c→c with the stride, bn3) with 64/128/256/512 channels; every stage's first block has stride 2
    and a downsample (conv1x1 + BN); then bn2 BN2d(512), fc Linear(512·fc_scale → num_features) with bias,
    features BN1d(num_features) (affine). All BN eps 1e-5.
    """
    s: Shapes = {"conv1.weight": (64, 3, 3, 3), **bn("bn1", 64), "prelu.weight": (64,)}
    in_c = 64
    for i, (n, c) in enumerate(zip(units, (64, 128, 256, 512)), start=1):
        for j in range(n):
            p = f"layer{i}.{j}"
            s |= bn(f"{p}.bn1", in_c)
            s[f"{p}.conv1.weight"] = (c, in_c, 3, 3)
            s |= bn(f"{p}.bn2", c)
            s[f"{p}.prelu.weight"] = (c,)
            s[f"{p}.conv2.weight"] = (c, c, 3, 3)
            s |= bn(f"{p}.bn3", c)
            if j == 0:
                s[f"{p}.downsample.0.weight"] = (c, in_c, 1, 1)
                s |= bn(f"{p}.downsample.1", c)
            in_c = c
    s |= bn("bn2", 512)
    s["fc.weight"] = (num_features, 512 * fc_scale)
    s["fc.bias"] = (num_features,)
    s |= bn("features", num_features)
    return s


@pytest.fixture(scope="module")
def ir18() -> nn.Module:
    torch.manual_seed(0)
    return iresnet_18()


@pytest.mark.parametrize("depth", sorted(ARCFACE_UNITS))
def test_iresnet_key_grammar(depth: int) -> None:
    model = on_meta(getattr(iresnet, f"iresnet_{depth}"))
    expected = arcface_iresnet_shapes(ARCFACE_UNITS[depth])
    assert list(model.state_dict()) == list(expected)
    assert shapes(model) == expected


# Published counts for arcface_torch's iResNet at 112×112, 512-d, all parameters (features.weight included):
# - r18 24,025,600, r34 34,139,328, r50 43,590,848, r100 65,156,160: an "Inference Cost" benchmark table
#   (Parameters column) in a public GitHub README found through the code index (find_string "43,590,848");
# - r50 43,590,848 also in a printout of arcface_torch's iresnet50 ("Total Parameters:  43590848",
#   Dropout(p=0, inplace=True), Linear(in_features=25088, out_features=512)) in another public repository.
# No published count was found for r200; 118,833,920 is checked against the arithmetic below instead.
@pytest.mark.parametrize(
    ("factory", "params"),
    [(iresnet_18, 24_025_600), (iresnet_50, 43_590_848), (iresnet_100, 65_156_160), (iresnet.iresnet_34, 34_139_328)],
    ids=["r18", "r50", "r100", "r34"],
)
def test_iresnet_published_counts(factory, params: int) -> None:
    assert n_params(on_meta(factory)) == params


def test_iresnet_200_count_from_description() -> None:
    expected = sum(
        torch.Size(s).numel()
        for k, s in arcface_iresnet_shapes(ARCFACE_UNITS[200]).items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert expected == 118_833_920
    assert n_params(on_meta(iresnet_200)) == expected


@pytest.mark.parametrize("depth", [18, 50])
def test_iresnet_strict_load_of_arcface_layout(depth: int) -> None:
    """A state_dict with arcface_torch's names and shapes loads strictly, values and all."""
    torch.manual_seed(0)
    model = getattr(iresnet, f"iresnet_{depth}")()
    spec = arcface_iresnet_shapes(ARCFACE_UNITS[depth])
    state = random_state(spec, seed=depth)
    state["features.weight"] = torch.ones(512)  # arcface_torch keeps it at 1
    model.load_state_dict(state, strict=True)
    report = load_into(model, state)
    assert report.exact and report.loaded == len(spec)
    loaded = model.state_dict()
    for key in ("conv1.weight", "layer3.1.prelu.weight", "layer4.0.downsample.1.running_var", "fc.bias"):
        assert torch.equal(loaded[key], state[key]), key
    assert loaded["layer2.0.bn1.num_batches_tracked"].item() == 1234
    assert not model.features.weight.requires_grad


def test_iresnet_features_weight_frozen(ir18: nn.Module) -> None:
    assert not ir18.features.weight.requires_grad
    assert torch.all(ir18.features.weight == 1)
    assert ir18.features.bias.requires_grad and ir18.fc.weight.requires_grad
    trainable = sum(p.numel() for p in ir18.parameters() if p.requires_grad)
    assert trainable == 24_025_600 - 512
    out = ir18.train()(torch.rand(2, 3, 112, 112))
    out.sum().backward()
    assert ir18.features.weight.grad is None and ir18.fc.weight.grad is not None
    ir18.zero_grad(set_to_none=True)


def test_iresnet_init_and_eps(ir18: nn.Module) -> None:
    assert all(m.eps == 1e-5 for m in ir18.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    std = ir18.layer3[1].conv1.weight.std().item()  # N(0, 0.1) as arcface_torch
    assert 0.09 < std < 0.11


def test_iresnet_dropout_option(ir18: nn.Module) -> None:
    assert ir18.dropout.p == 0.0
    assert on_meta(iresnet_50, dropout=0.4).dropout.p == 0.4


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_iresnet_forward_112(ir18: nn.Module, mode: str) -> None:
    getattr(ir18, mode)()
    with torch.no_grad():
        out = ir18(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert out.shape == (2, 512)
    assert torch.isfinite(out).all()


def test_iresnet_224() -> None:
    assert shapes(on_meta(iresnet_50, input_size=224)) == arcface_iresnet_shapes(ARCFACE_UNITS[50], fc_scale=14 * 14)
    torch.manual_seed(0)
    model = iresnet_18(embedding_size=64, input_size=224).eval()
    assert model.fc.in_features == 512 * 14 * 14
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 64)


def test_iresnet_validation() -> None:
    with pytest.raises(ValueError, match="input_size=96"):
        iresnet_18(input_size=96)
    with pytest.raises(ValueError, match="depth=101"):
        iresnet.build_iresnet(101)
    with pytest.raises(ConfigError, match="embedding_size"):
        structure(iresnet_100.Config, {"embedding_size": 0})


@pytest.mark.parametrize(
    "factory",
    [resnet_50, resnet_101, resnet_152, iresnet_18, iresnet.iresnet_34, iresnet_50, iresnet_100, iresnet_200],
    ids=lambda f: f.__name__,
)
def test_config_matches_signature(factory) -> None:
    params = inspect.signature(factory).parameters
    fields = {f.name: f.default for f in attrs.fields(factory.Config)}
    assert fields == {name: p.default for name, p in params.items()}

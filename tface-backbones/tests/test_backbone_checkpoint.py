"""tface-core's weights loader on the zoo (``load_into``), ``load_backbone`` and the architecture-hint hook.

TFace state_dicts are constructed here from the reference's key grammar (tface-v0.1.0.md §2.2 IR/IR-SE,
§2.4 MobileFaceNet), not read from the models, and saved the way TFace's DDP training saves them.
"""

from __future__ import annotations

import logging
import pathlib

import pytest
import torch
from torch import nn

from tface.backbones.checkpoint import guess_architecture, load_backbone
from tface.backbones.iresnet import iresnet_18
from tface.backbones.irse import build_ir, ir_18
from tface.backbones.mobilefacenet import mobilefacenet
from tface.core.weights import WeightsError, WeightsMismatchError, load_into

Shapes = dict[str, tuple[int, ...]]


def bn(prefix: str, c: int, affine: bool = True) -> Shapes:
    s: Shapes = {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)} if affine else {}
    return s | {f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def tface_ir_shapes(units: tuple[int, ...], se: bool = False, embedding: int = 512) -> Shapes:
    """§2.2: input_layer, output_layer, then body (basic units, 64/128/256/512, projection when widths change)."""
    s: Shapes = {"input_layer.0.weight": (64, 3, 3, 3), **bn("input_layer.1", 64), "input_layer.2.weight": (64,)}
    s |= bn("output_layer.0", 512)
    s["output_layer.3.weight"] = (embedding, 512 * 7 * 7)
    s["output_layer.3.bias"] = (embedding,)
    s |= bn("output_layer.4", embedding, affine=False)
    i, in_c = 0, 64
    for n, c in zip(units, (64, 128, 256, 512)):
        for _ in range(n):
            p = f"body.{i}"
            if in_c != c:
                s[f"{p}.shortcut_layer.0.weight"] = (c, in_c, 1, 1)
                s |= bn(f"{p}.shortcut_layer.1", c)
            s |= bn(f"{p}.res_layer.0", in_c)
            s[f"{p}.res_layer.1.weight"] = (c, in_c, 3, 3)
            s |= bn(f"{p}.res_layer.2", c)
            s[f"{p}.res_layer.3.weight"] = (c,)
            s[f"{p}.res_layer.4.weight"] = (c, c, 3, 3)
            s |= bn(f"{p}.res_layer.5", c)
            if se:
                s[f"{p}.res_layer.se_block.fc1.weight"] = (c // 16, c, 1, 1)
                s[f"{p}.res_layer.se_block.fc2.weight"] = (c, c // 16, 1, 1)
            in_c, i = c, i + 1
    return s


def tface_mobilefacenet_shapes(embedding: int = 512) -> Shapes:
    """§2.4: Conv_block = conv/bn/prelu, LinearBlock = conv/bn, Depth_Wise = conv, conv_dw, project; GDC output."""

    def conv_block(p: str, cin: int, cout: int, k: int, groups: int = 1, act: bool = True) -> Shapes:
        s: Shapes = {f"{p}.conv.weight": (cout, cin // groups, k, k), **bn(f"{p}.bn", cout)}
        return s | ({f"{p}.prelu.weight": (cout,)} if act else {})

    def depth_wise(p: str, cin: int, cout: int, g: int) -> Shapes:
        return (
            conv_block(f"{p}.conv", cin, g, 1)
            | conv_block(f"{p}.conv_dw", g, g, 3, groups=g)
            | conv_block(f"{p}.project", g, cout, 1, act=False)
        )

    def residual(p: str, c: int, n: int, g: int) -> Shapes:
        s: Shapes = {}
        for j in range(n):
            s |= depth_wise(f"{p}.model.{j}", c, c, g)
        return s

    s = conv_block("conv1", 3, 64, 3) | conv_block("conv2_dw", 64, 64, 3, groups=64)
    s |= depth_wise("conv_23", 64, 64, 128) | residual("conv_3", 64, 4, 128)
    s |= depth_wise("conv_34", 64, 128, 256) | residual("conv_4", 128, 6, 256)
    s |= depth_wise("conv_45", 128, 128, 512) | residual("conv_5", 128, 2, 256)
    s |= conv_block("conv_6_sep", 128, 512, 1)
    s |= conv_block("output_layer.conv_6_dw", 512, 512, 7, groups=512, act=False)
    s["output_layer.linear.weight"] = (embedding, 512)
    return s | bn("output_layer.bn", embedding, affine=False)


def random_state(spec: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in spec.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(99, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = torch.randn(s, generator=g)
    return out


def save(obj: object, path: pathlib.Path) -> pathlib.Path:
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def ir18_state() -> dict[str, torch.Tensor]:
    return random_state(tface_ir_shapes((2, 2, 2, 2)), seed=18)


@pytest.fixture
def mfn() -> nn.Module:
    torch.manual_seed(0)
    return mobilefacenet()


@pytest.fixture(scope="module")
def mfn_state() -> dict[str, torch.Tensor]:
    return random_state(tface_mobilefacenet_shapes(), seed=1)


# --- strict loads of TFace layouts, saved with DDP's module. prefix ------------------------------------------


@pytest.mark.parametrize(
    ("build", "spec", "keys"),
    [
        (lambda: build_ir(50), lambda: tface_ir_shapes((3, 4, 14, 3)), 467),
        (lambda: build_ir(50, se=True), lambda: tface_ir_shapes((3, 4, 14, 3), se=True), 515),
        (mobilefacenet, tface_mobilefacenet_shapes, 331),
    ],
    ids=["IR_50", "IR_SE_50", "MobileFaceNet"],
)
def test_strict_load_of_tface_checkpoint(build, spec, keys: int, tmp_path: pathlib.Path) -> None:
    expected = spec()
    assert len(expected) == keys  # reference §2.1 key counts: the grammar above is complete
    state = random_state(expected)
    path = save({f"module.{k}": v for k, v in state.items()}, tmp_path / "Backbone_Epoch_24_checkpoint.pth")
    torch.manual_seed(0)
    model = build()
    report = load_into(model, path)
    assert report.exact and report.loaded == keys
    assert report.stripped == ("module.",) and report.nested_key is None
    assert report.source == str(path)
    loaded = model.state_dict()
    assert set(loaded) == set(expected)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 112, 112)).shape == (1, 512)


# --- wrappers and nesting --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wrap", "nested"),
    [
        (lambda sd: {"state_dict": sd, "epoch": 3}, "state_dict"),
        (lambda sd: {"model": sd, "optimizer": {"lr": 0.1}}, "model"),
        (lambda sd: {"backbone": sd, "classifiers": {"main": {"w": torch.zeros(2)}}, "step": 10}, "backbone"),
        (lambda sd: {"model": {"state_dict": sd, "meta": "x"}}, "model.state_dict"),
    ],
    ids=["state_dict", "model", "backbone", "model.state_dict"],
)
def test_nested_checkpoints(wrap, nested: str, mfn: nn.Module, mfn_state, tmp_path: pathlib.Path) -> None:
    path = save(wrap(mfn_state), tmp_path / "ckpt.pt")
    report = load_into(mfn, path)
    assert report.nested_key == nested and report.exact
    assert torch.equal(mfn.state_dict()["conv_6_sep.conv.weight"], mfn_state["conv_6_sep.conv.weight"])


def test_explicit_key(mfn: nn.Module, mfn_state) -> None:
    source = {"ema": mfn_state, "model": {k: torch.zeros_like(v) for k, v in mfn_state.items()}}
    report = load_into(mfn, source, key="ema")
    assert report.nested_key == "ema"
    assert torch.equal(mfn.state_dict()["conv1.conv.weight"], mfn_state["conv1.conv.weight"])
    with pytest.raises(WeightsError, match="no entry 'best'"):
        load_into(mfn, source, key="best")


@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
def test_compile_and_ddp_prefixes(prefix: str, mfn: nn.Module, mfn_state) -> None:
    report = load_into(mfn, {prefix + k: v for k, v in mfn_state.items()})
    assert report.exact
    assert set(report.stripped) == {p + "." for p in prefix.split(".") if p}
    assert torch.equal(mfn.state_dict()["conv_5.model.1.project.bn.bias"], mfn_state["conv_5.model.1.project.bn.bias"])


def test_wrapped_model(mfn: nn.Module, mfn_state) -> None:
    wrapped = nn.DataParallel(mfn)  # its own keys start with module.; the checkpoint's do not
    assert load_into(wrapped, mfn_state).exact
    assert torch.equal(mfn.state_dict()["conv1.prelu.weight"], mfn_state["conv1.prelu.weight"])


def test_missing_num_batches_tracked_is_tolerated(mfn: nn.Module, mfn_state) -> None:
    legacy = {k: v for k, v in mfn_state.items() if not k.endswith("num_batches_tracked")}
    assert load_into(mfn, legacy).exact


# --- mismatches ------------------------------------------------------------------------------------------------


def test_missing_and_unexpected_message(mfn: nn.Module, mfn_state, tmp_path: pathlib.Path) -> None:
    dropped = [k for k in mfn_state if k.startswith("conv_4.") and not k.endswith("num_batches_tracked")]
    assert len(dropped) > 10
    state = {k: v for k, v in mfn_state.items() if k not in dropped}
    state["extra.weight"] = torch.zeros(3)
    path = save(state, tmp_path / "partial.pth")
    before = {k: v.clone() for k, v in mfn.state_dict().items()}
    with pytest.raises(WeightsMismatchError) as info:
        load_into(mfn, path)
    msg = str(info.value)
    assert str(path) in msg and "MobileFaceNet" in msg
    assert f"{len(dropped)} missing: {dropped[0]}" in msg and len(msg.splitlines()) == 1
    assert f"… and {len(dropped) - 10} more" in msg
    assert dropped[10] not in msg
    assert "; 1 unexpected: extra.weight" in msg
    assert set(info.value.missing) == set(dropped) and info.value.unexpected == ("extra.weight",)
    assert isinstance(info.value, ValueError)
    for k, v in mfn.state_dict().items():  # a failed strict load leaves the model untouched
        assert torch.equal(v, before[k]), k


def test_shape_mismatch_message(mfn_state, tmp_path: pathlib.Path) -> None:
    path = save(mfn_state, tmp_path / "mfn512.pth")
    model = mobilefacenet(embedding_size=128)
    with pytest.raises(WeightsMismatchError) as info:
        load_into(model, path)
    msg = str(info.value)
    assert "does not fit MobileFaceNet: 3 of another shape:" in msg
    assert "output_layer.linear.weight (checkpoint [512, 512], model [128, 512])" in msg
    assert "output_layer.bn.running_mean (checkpoint [512], model [128])" in msg
    assert "pass embedding_size=512" in msg
    assert "missing" not in msg and "unexpected" not in msg
    assert ("output_layer.linear.weight", (512, 512), (128, 512)) in info.value.mismatched


def test_input_size_hint(ir18_state) -> None:
    with pytest.raises(WeightsMismatchError, match="another input_size") as info:
        load_into(ir_18(embedding_size=64, input_size=224), ir18_state)
    assert "output_layer.3.weight (checkpoint [512, 25088], model [64, 100352])" in str(info.value)


def test_non_strict_reports_and_loads_the_rest(mfn_state) -> None:
    state = dict(mfn_state)
    del state["conv1.conv.weight"]
    state["head.kernel"] = torch.zeros(512, 10)
    model = mobilefacenet(embedding_size=128)
    before = model.state_dict()["conv1.conv.weight"].clone()
    report = load_into(model, state, strict=False)
    assert not report.exact
    assert report.missing == ("conv1.conv.weight",)
    assert report.unexpected == ("head.kernel",)
    assert {k for k, _, _ in report.mismatched} == {
        "output_layer.linear.weight", "output_layer.bn.running_mean", "output_layer.bn.running_var"
    }
    assert report.loaded == len(mfn_state) - 1 - 3
    after = model.state_dict()
    assert torch.equal(after["conv1.conv.weight"], before)
    assert torch.equal(after["conv_6_sep.conv.weight"], mfn_state["conv_6_sep.conv.weight"])
    assert after["output_layer.linear.weight"].shape == (128, 512)


# --- architecture hints ----------------------------------------------------------------------------------------


def test_hint_tface_ir_into_iresnet(ir18_state, tmp_path: pathlib.Path) -> None:
    path = save(ir18_state, tmp_path / "ir18.pth")
    with pytest.raises(WeightsMismatchError) as info:
        load_into(iresnet_18(), path)
    msg = str(info.value)
    assert "hint: the checkpoint looks like TFace IR_18 (input_layer.*, body.*" in msg
    assert "but the model is insightface arcface_torch iResNet r18" in msg
    assert len(msg.splitlines()) == 1 and "… and 169 more" in msg  # short lists, not 179 names


def test_hint_iresnet_into_tface_ir() -> None:
    with torch.device("meta"):
        arcface = iresnet_18().state_dict()
    with pytest.raises(WeightsMismatchError, match=r"looks like insightface arcface_torch iResNet r18 .*iresnet_18"):
        load_into(ir_18(), arcface)


def test_hint_other_depth() -> None:
    ir50_keys = tface_ir_shapes((3, 4, 14, 3))
    assert guess_architecture(ir50_keys).startswith("TFace IR_50 ")
    assert guess_architecture(tface_ir_shapes((3, 4, 14, 3), se=True)).startswith("TFace IR_SE_50 ")
    assert guess_architecture(tface_mobilefacenet_shapes()).startswith("TFace MobileFaceNet")
    assert guess_architecture(["fc.weight"]) is None
    with pytest.raises(WeightsMismatchError, match="looks like TFace IR_50 .*but the model is TFace IR_18"):
        load_into(ir_18(), random_state(ir50_keys))


# --- unreadable or unusable files ------------------------------------------------------------------------------


class Pickled:
    """A custom class: torch.load(weights_only=True) refuses to rebuild it."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


def test_weights_only_refusal(mfn: nn.Module, tmp_path: pathlib.Path) -> None:
    path = save({"conv1.conv.weight": Pickled()}, tmp_path / "custom.pth")
    with pytest.raises(WeightsError) as info:
        load_into(mfn, path)
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert "weights_only=True" in msg and "Pickled" in msg
    assert not isinstance(info.value, WeightsMismatchError)


def test_non_tensor_values(mfn: nn.Module, mfn_state, tmp_path: pathlib.Path) -> None:
    path = save(dict(mfn_state, epoch=3, arch="mfn"), tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match=r"mixed\.pth: no state_dict found: non-tensor values: 'epoch' \(int\)"):
        load_into(mfn, path)


@pytest.mark.parametrize(
    ("content", "needle"),
    [(torch.zeros(3), "found Tensor"), ([torch.zeros(3)], "found list"), ({}, "it is empty")],
    ids=["tensor", "list", "empty"],
)
def test_not_a_state_dict(content: object, needle: str, mfn: nn.Module, tmp_path: pathlib.Path) -> None:
    path = save(content, tmp_path / "odd.pth")
    with pytest.raises(WeightsError, match=needle) as info:
        load_into(mfn, path)
    assert str(path) in str(info.value)


def test_corrupt_and_missing_files(mfn: nn.Module, tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(WeightsError, match="truncated.pth: not a readable PyTorch checkpoint"):
        load_into(mfn, bad)
    with pytest.raises(WeightsError, match=r"absent\.pth: no such file"):
        load_into(mfn, tmp_path / "absent.pth")


# --- load_backbone through the registry ------------------------------------------------------------------------


def test_load_backbone(tmp_path: pathlib.Path) -> None:
    state = random_state(tface_mobilefacenet_shapes(embedding=128), seed=5)
    path = save({"backbone": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "mfn128.pt")
    model = load_backbone("mobilefacenet", path, embedding_size=128)
    assert model.embedding_size == 128
    assert torch.equal(model.state_dict()["output_layer.linear.weight"], state["output_layer.linear.weight"])
    with pytest.raises(WeightsMismatchError, match="embedding_size=128"):
        load_backbone("mobilefacenet", path)


def test_load_backbone_non_strict_warns(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    state = random_state(tface_mobilefacenet_shapes(), seed=6)
    path = save(state, tmp_path / "mfn.pt")
    with caplog.at_level(logging.WARNING, logger="tface.backbones.checkpoint"):
        model = load_backbone("mobilefacenet", path, strict=False, embedding_size=256)
    assert model.embedding_size == 256
    assert "3 of another shape: output_layer.linear.weight (checkpoint [512, 512], model [256, 512])" in caplog.text


def test_hints_come_through_the_entry_point_hook(ir18_state, monkeypatch: pytest.MonkeyPatch) -> None:
    """The architecture hint reaches core's loader as a `tface.plugins` hook, not by core importing the zoo."""
    from tface.core import registry
    from tface.core.hooks import plugin_manager

    impls = plugin_manager().hook.tface_weights_hint.get_hookimpls()
    assert [i.plugin_name for i in impls] == ["tface-backbones:backbone-weights"]
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "")  # tface-core alone: the same error, without the hint
    registry.clear_cache()
    try:
        with pytest.raises(WeightsMismatchError) as info:
            load_into(iresnet_18(), ir18_state)
    finally:
        registry.clear_cache()
    assert "looks like" not in str(info.value) and "179 unexpected" in str(info.value)

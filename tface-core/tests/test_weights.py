"""``tface.core.weights``: the one reader/loader of weights files (layouts, wrappers, errors, reports, hints)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tface.core import registry
from tface.core.weights import NESTED_KEYS, WeightsError, WeightsMismatchError, load_into, read_weights


class Net(nn.Module):
    """Conv + BN + linear: parameters, buffers and a ``num_batches_tracked`` counter."""

    def __init__(self, out: int = 4, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embedding_size = out
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
        self.fc = nn.Linear(4 * 6 * 6, out)

    def forward(self, x):
        return self.fc(self.body(x))


def state(seed: int = 1, out: int = 4) -> dict[str, torch.Tensor]:
    sd = Net(out, seed).state_dict()
    sd["body.1.running_var"] = torch.rand(4) + 0.5  # not a fresh model's value
    return sd


def same(model: nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    own = model.state_dict()
    return set(own) == set(sd) and all(torch.equal(own[k], v) for k, v in sd.items())


def insert_compile_segment(key: str) -> str:
    """``body.1.weight`` → ``body._orig_mod.1.weight``: a submodule compiled on its own."""
    head, _, rest = key.partition(".")
    return f"{head}._orig_mod.{rest}"


#: Every layout the loader accepts: (name, wrap(state_dict) -> file content, expected nested key, step).
LAYOUTS = [
    ("plain", lambda sd: sd, None, None),
    ("ddp", lambda sd: {f"module.{k}": v for k, v in sd.items()}, None, None),
    ("compiled-ddp", lambda sd: {f"module._orig_mod.{k}": v for k, v in sd.items()}, None, None),
    ("ddp-compiled", lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()}, None, None),
    ("inner-compile", lambda sd: {insert_compile_segment(k): v for k, v in sd.items()}, None, None),
    ("state_dict", lambda sd: {"state_dict": sd, "epoch": 3}, "state_dict", None),
    ("model_state_dict", lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}}, "model_state_dict",
     None),
    ("net", lambda sd: {"net": {f"module.{k}": v for k, v in sd.items()}}, "net", None),
    ("last.pt", lambda sd: {"step": 7, "epoch": 1, "backbone": {f"module._orig_mod.{k}": v for k, v in sd.items()},
                            "classifiers": {"main": {"weight": torch.zeros(3, 4)}}, "optimizer": {"state": {}}},
     "backbone", 7),
    ("model+backbone", lambda sd: {"model": {"head.kernel": torch.zeros(2)}, "backbone": sd}, "backbone", None),
    ("model.state_dict", lambda sd: {"model": {"state_dict": sd, "meta": "x"}}, "model.state_dict", None),
]


@pytest.mark.parametrize(("name", "wrap", "nested", "step"), LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_every_layout_loads_strictly(name, wrap, nested, step, tmp_path: Path) -> None:
    sd = state()
    path = tmp_path / f"{name}.pt"
    torch.save(wrap(sd), path)
    model = Net()
    report = load_into(model, path)
    assert report.exact and report.loaded == len(sd) and report.source == str(path)
    assert report.nested_key == nested and report.step == step
    assert same(model, sd)


def test_nesting_keys_cover_both_former_readers() -> None:
    # tface.core.evaluate read state_dict/backbone/model; tface.backbones.checkpoint also model_state_dict/net.
    assert set(NESTED_KEYS) == {"state_dict", "model_state_dict", "model", "backbone", "net"}
    assert NESTED_KEYS.index("backbone") < NESTED_KEYS.index("model")


def test_wrapper_names_removed_only_where_they_are_wrappers() -> None:
    w = torch.zeros(1)
    assert list(read_weights({"module.a": w, "b.module.c": w}).state_dict) == ["module.a", "b.module.c"]
    got = read_weights({"module.x._orig_mod.y": w, "module.z": w})
    assert list(got.state_dict) == ["x.y", "z"] and got.stripped == ("_orig_mod.", "module.")
    assert list(read_weights({"my_orig_mod.a": w}).state_dict) == ["my_orig_mod.a"]  # a segment, not a substring


def test_explicit_key(tmp_path: Path) -> None:
    sd = state()
    source = {"ema": sd, "model": state(seed=5)}
    model = Net()
    assert load_into(model, source, key="ema").nested_key == "ema"
    assert same(model, sd)
    with pytest.raises(WeightsError, match=r"<in-memory state_dict>: no entry 'best' at the top level \(found: "
                                           r"'ema', 'model'\)"):
        load_into(model, source, key="best")


def test_wrapped_models(tmp_path: Path) -> None:
    sd = state()
    inner = Net()
    assert load_into(nn.DataParallel(inner), sd).exact and same(inner, sd)

    class Compiled(nn.Module):  # what torch.compile's OptimizedModule looks like to a state_dict
        def __init__(self, mod):
            super().__init__()
            self._orig_mod = mod

    inner = Net()
    assert load_into(Compiled(inner), {f"_orig_mod.{k}": v for k, v in sd.items()}).exact and same(inner, sd)


def test_missing_num_batches_tracked_is_no_difference() -> None:
    sd = {k: v for k, v in state().items() if not k.endswith("num_batches_tracked")}
    assert load_into(Net(), sd).exact


# --- mismatches -----------------------------------------------------------------------------------------------


def test_strict_mismatch_names_everything_and_leaves_the_model_alone(tmp_path: Path) -> None:
    sd = state(out=6)
    del sd["body.0.bias"]
    sd.update({f"extra.{i}": torch.zeros(1) for i in range(12)})
    path = tmp_path / "other.pt"
    torch.save(sd, path)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsMismatchError) as info:
        load_into(model, path, what="backbone 'net'")
    msg = str(info.value)
    assert len(msg.splitlines()) == 1
    assert msg.startswith(f"{path} does not fit backbone 'net' (Net): 1 missing: body.0.bias; 12 unexpected: "
                          "extra.0, extra.1,")
    assert "extra.9, … and 2 more; 2 of another shape: fc.weight (checkpoint [6, 144], model [4, 144]), " \
           "fc.bias (checkpoint [6], model [4])" in msg
    # The model declares embedding_size = 4 (the backbone contract): the hint says which value fits.
    assert "hint: fc.weight: the checkpoint's embedding size is 6 (model 4); pass embedding_size=6" in msg
    assert info.value.missing == ("body.0.bias",) and len(info.value.unexpected) == 12
    assert ("fc.weight", (6, 144), (4, 144)) in info.value.mismatched
    assert same(model, before)


def test_no_key_in_common_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "")  # tface-core alone: no plugin hints
    registry.clear_cache()
    with pytest.raises(WeightsMismatchError, match=r"hint: no key in common; checkpoint modules: conv1, layer1; "
                                                   r"model modules: body, fc"):
        load_into(Net(), {"conv1.weight": torch.zeros(1), "layer1.0.weight": torch.zeros(1)})
    registry.clear_cache()


def test_non_strict_loads_what_fits_and_reports_the_rest() -> None:
    sd = state(out=6)
    del sd["body.0.bias"]
    sd["head.kernel"] = torch.zeros(6, 10)
    model = Net()
    bias_before = model.state_dict()["body.0.bias"].clone()
    report = load_into(model, {"state_dict": sd, "step": 3}, strict=False)
    assert not report.exact and report.step == 3 and report.nested_key == "state_dict"
    assert report.missing == ("body.0.bias",) and report.unexpected == ("head.kernel",)
    assert report.mismatched == (("fc.weight", (6, 144), (4, 144)), ("fc.bias", (6,), (4,)))
    assert report.loaded == len(sd) - 1 - 2
    after = model.state_dict()
    assert torch.equal(after["body.0.bias"], bias_before) and torch.equal(after["body.0.weight"], sd["body.0.weight"])
    assert after["fc.weight"].shape == (4, 144)
    assert report.summary() == (
        f"loaded {report.loaded} tensors from <in-memory state_dict>; 1 missing: body.0.bias; 1 unexpected: "
        "head.kernel; 2 of another shape: fc.weight (checkpoint [6, 144], model [4, 144]), fc.bias (checkpoint [6], "
        "model [4])")


# --- files that cannot be used: the message names the file -----------------------------------------------------


class Pickled:
    """A custom class: torch.load(weights_only=True) refuses to rebuild it."""

    def __init__(self) -> None:
        self.weights = torch.zeros(2)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, r": no such file$"),
        (b"not a checkpoint", r": not a readable PyTorch checkpoint \(UnpicklingError: "),
        (b"PK\x03\x04 not really a zip", r": not a readable PyTorch checkpoint \("),
        ("truncated", r": not a readable PyTorch checkpoint \("),
        ({"fc.weight": Pickled()}, r": refused by torch.load\(weights_only=True\) \(it references "
                                   r"test_weights\.Pickled\): the file pickles Python objects"),
        (torch.zeros(3), r": expected a state_dict \(a mapping of names to tensors\), found Tensor$"),
        ({"model": [torch.zeros(3)]}, r": no state_dict found: non-tensor values: 'model' \(list\)"),
        ({}, r": no state_dict found: it is empty"),
        ({"fc.weight": torch.zeros(1), "epoch": 3}, r": no state_dict found: non-tensor values: 'epoch' \(int\)"),
        ({"state_dict": {"a": torch.zeros(1), "arch": "x"}}, r": no state_dict found under 'state_dict': "
                                                             r"non-tensor values: 'arch' \(str\)"),
    ],
    ids=["absent", "junk", "bad-zip", "truncated", "pickled-object", "tensor", "list", "empty", "mixed",
         "nested-mixed"],
)
def test_unusable_files_name_the_file(content, needle: str, tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        torch.save(state(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError) as info:
        load_into(Net(), path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and len(msg.splitlines()) == 1, msg
    assert not isinstance(info.value, WeightsMismatchError)
    import re

    assert re.search(needle, msg[len(str(path)):]), msg


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r": is not a file$"):
        read_weights(tmp_path)


# --- hints from plugins ------------------------------------------------------------------------------------------

HINTS = '''
from tface.core.hooks import hookimpl

@hookimpl
def tface_weights_hint(keys, model):
    if any(k.startswith("input_layer.") for k in keys):
        return f"the checkpoint looks like IR ({len(keys)} keys), but the model is {type(model).__name__}"
    return None
'''

RAISING_HINTS = '''
from tface.core.hooks import hookimpl

@hookimpl
def tface_weights_hint(keys):
    raise RuntimeError("hint plugin bug")
'''


def test_plugins_add_hints_through_the_hook(site, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    site("hint-plugins", {"tface.plugins": {"hints": "hintplug_ok", "buggy": "hintplug_bad"}},
         {"hintplug_ok.py": HINTS, "hintplug_bad.py": RAISING_HINTS})
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "hint-plugins")
    ir = {"input_layer.0.weight": torch.zeros(1), "body.0.weight": torch.zeros(1)}
    with pytest.raises(WeightsMismatchError) as info:
        load_into(nn.DataParallel(Net()), ir)  # the hook sees the unwrapped model
    msg = str(info.value)
    assert msg.endswith("; hint: the checkpoint looks like IR (2 keys), but the model is Net")
    assert "no key in common" not in msg  # a plugin's hint replaces the generic one
    assert "tface_weights_hint raised RuntimeError: hint plugin bug" in capsys.readouterr().err
    with pytest.raises(WeightsMismatchError) as info:  # keys the plugin does not know: no hint from it
        load_into(Net(), {"other.weight": torch.zeros(1)})
    assert "looks like" not in str(info.value) and "hint: no key in common" in str(info.value)

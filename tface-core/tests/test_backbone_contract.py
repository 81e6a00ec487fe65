"""The backbone contract (``tface.core.backbone``): declared sizes and normalisation, used instead of probing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.backbone import (
    DEFAULT_MEAN,
    Backbone,
    BackboneContractError,
    BackboneInfo,
    backbone_info,
    forward_features,
)
from tface.core.cli import cli
from tface.core.data.image import normalize
from tface.core.train.trainer import Trainer, embedding_size_of


class Declared(Backbone, nn.Module):
    def __init__(self, embedding_size=6, input_size=32, **extra):
        super().__init__()
        self.embedding_size, self.input_size = embedding_size, input_size
        for k, v in extra.items():
            setattr(self, k, v)
        self.fc = nn.Linear(3, embedding_size)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def test_declared_contract_and_defaults() -> None:
    info = backbone_info(Declared())
    assert info == BackboneInfo(embedding_size=6, input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    custom = backbone_info(Declared(mean=[0.485, 0.456, 0.406], std=(0.229, 0.224, 0.225)))
    assert custom.mean == (0.485, 0.456, 0.406) and custom.std == (0.229, 0.224, 0.225)

    class Plain(nn.Module):  # no mixin: attributes alone are the contract; mean/std default
        embedding_size = 4
        input_size = 112

    assert backbone_info(Plain()) == BackboneInfo(4, 112)
    assert backbone_info(nn.DataParallel(Declared(embedding_size=9))).embedding_size == 9  # wrappers looked through
    assert embedding_size_of(Declared(embedding_size=7)) == 7


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"embedding_size": None}, r"backbone 'mine' \(test_backbone_contract\.Declared\) does not declare "
                                   r"embedding_size \(the width of its output embedding\); a tface backbone sets "
                                   r"self\.embedding_size"),
        ({"input_size": None}, r"does not declare input_size \(the side of its square input image in pixels\)"),
        ({"embedding_size": True}, r"embedding_size must be a positive int .*got True"),
        ({"input_size": 0}, r"input_size must be a positive int .*got 0"),
        ({"input_size": "112"}, r"input_size must be a positive int .*got '112'"),
        ({"mean": (0.5, 0.5)}, r"mean must be 3 numbers \(R, G, B in \[0, 1\] pixel units\), got \(0\.5, 0\.5\)"),
        ({"mean": "rgb"}, r"mean must be 3 numbers"),
        ({"std": (0.5, 0.0, 0.5)}, r"std must be 3 positive numbers"),
    ],
    ids=["no-embedding", "no-input", "bool", "zero", "string", "two-means", "text-mean", "zero-std"],
)
def test_broken_declarations_name_the_attribute(extra, needle) -> None:
    model = Declared()
    for k, v in extra.items():
        setattr(model, k, v)
    with pytest.raises(BackboneContractError, match=needle):
        backbone_info(model, "mine")


class WithMap(Declared):
    """Offers the optional feature map: ``[N, 4, h, w]`` beside the embedding, from one pass."""

    def __init__(self, feature_channels=4, **extra):
        super().__init__(**extra)
        self.feature_channels = feature_channels
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.fc = nn.Linear(4, self.embedding_size)

    def forward(self, x):
        return self.forward_features(x)[0]

    def forward_features(self, x):
        fmap = self.conv(x)
        return self.fc(fmap.mean(dim=(2, 3))), fmap


def test_the_optional_feature_map() -> None:
    assert backbone_info(Declared()).feature_channels is None  # optional: absent is no error
    assert backbone_info(WithMap()) == BackboneInfo(6, 32, feature_channels=4)
    model, x = WithMap().eval(), torch.randn(2, 3, 8, 8)
    emb, fmap = forward_features(model, x)
    assert fmap.shape == (2, 4, 4, 4) and torch.equal(emb, model(x))
    emb, fmap = forward_features(nn.DataParallel(model), x)  # wrappers looked through, like backbone_info
    assert fmap.shape == (2, 4, 4, 4) and torch.equal(emb, model(x))


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (Declared(), r"^backbone 'mine' \(test_backbone_contract\.Declared\) offers no feature map: it has neither "
                     r"feature_channels nor a forward_features\(x\) method; a backbone that offers one sets "
                     r"self\.feature_channels"),
        (WithMap(feature_channels=None), r"^backbone 'mine' \(test_backbone_contract\.WithMap\) offers no feature "
                                         r"map: it has no feature_channels \(a forward_features method alone"),
    ],
    ids=["neither", "method-only"],
)
def test_forward_features_names_the_backbone_without_a_map(model, needle) -> None:
    with pytest.raises(BackboneContractError, match=needle):
        forward_features(model, torch.zeros(1, 3, 8, 8), "mine")


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        (WithMap(feature_channels=0), r"feature_channels must be a positive int \(the channels of the map "
                                      r"forward_features returns\), got 0"),
        (WithMap(feature_channels=True), r"feature_channels must be a positive int .*got True"),
        (WithMap(feature_channels="4"), r"feature_channels must be a positive int .*got '4'"),
        (Declared(feature_channels=4), r"backbone 'mine' \(test_backbone_contract\.Declared\) declares "
                                       r"feature_channels but has no forward_features\(x\) method"),
    ],
    ids=["zero", "bool", "string", "no-method"],
)
def test_broken_feature_map_declarations(model, needle) -> None:
    with pytest.raises(BackboneContractError, match=needle):
        backbone_info(model, "mine")
    with pytest.raises(BackboneContractError, match=needle):
        forward_features(model, torch.zeros(1, 3, 8, 8), "mine")


def test_forward_features_checks_what_it_returns() -> None:
    model = WithMap()
    model.feature_channels = 5  # declares 5, returns 4
    with pytest.raises(BackboneContractError, match=r"'mine' .*forward_features must return \(embedding \[N, D\], "
                                                    r"feature_map \[N, 5, h, w\]\), got a feature map of shape "
                                                    r"\[1, 4, 4, 4\]"):
        forward_features(model, torch.zeros(1, 3, 8, 8), "mine")
    model.feature_channels = 4
    model.forward_features = lambda x: x
    with pytest.raises(BackboneContractError, match=r"got a Tensor, not a pair"):
        forward_features(model, torch.zeros(1, 3, 8, 8), "mine")


def test_the_contract_module_imports_no_torch() -> None:
    code = "import sys, tface.core.backbone; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_normalize_default_is_the_historical_formula_and_custom_values_apply() -> None:
    x = torch.randint(0, 256, (2, 3, 7, 5), dtype=torch.uint8)
    assert torch.equal(normalize(x), x.to(torch.float32).div(127.5).sub(1.0))  # bit for bit: runs stay identical
    assert torch.equal(BackboneInfo(8, 7).normalize(x), normalize(x))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    got = BackboneInfo(8, 7, mean, std).normalize(x)
    want = (x.double() / 255 - torch.tensor(mean, dtype=torch.double).view(3, 1, 1)) / torch.tensor(
        std, dtype=torch.double).view(3, 1, 1)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), want, atol=1e-6)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert normalize(cl, mean, std).is_contiguous(memory_format=torch.channels_last)
    assert DEFAULT_MEAN == (0.5, 0.5, 0.5)


# --- the trainer uses the declaration -----------------------------------------------------------------------------

SEEN = '''
import torch
from torch import nn


class Seeing(nn.Module):
    """Records the value range of its inputs; ``declare`` controls which contract attributes it has."""

    ranges = []

    def __init__(self, embedding_size=8):
        super().__init__()
        self.embedding_size = embedding_size
        self.input_size = 16
        self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # the model wants [0, 1] inputs
        self.fc = nn.Linear(48, embedding_size)

    def forward(self, x):
        Seeing.ranges.append((float(x.min()), float(x.max())))
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


class Undeclared(nn.Module):
    """Today's third-party backbone that only says its embedding size."""

    def __init__(self, embedding_size=8):
        super().__init__()
        self.embedding_size = embedding_size
        self.fc = nn.Linear(48, embedding_size)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))
'''


@pytest.fixture
def seeing(toy_plugins, site, tmp_path: Path):
    module = f"seeing_{tmp_path.name.replace('-', '_')}"
    site("seeing-plugins", {"tface.backbones": {"seeing": f"{module}:Seeing", "undeclared": f"{module}:Undeclared"}},
         {f"{module}.py": SEEN})
    return module


def toy_recipe(tmp_path: Path, backbone: str) -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE.replace('name = "toynet"', f'name = "{backbone}"').replace("max_steps = 30",
                                                                                          "max_steps = 3"))
    return path


def test_the_trainer_feeds_the_declared_normalisation(seeing, tmp_path: Path) -> None:
    import importlib

    cls = importlib.import_module(seeing).Seeing
    cls.ranges.clear()
    Trainer(recipe.load(toy_recipe(tmp_path, "seeing")), tmp_path / "run", echo=lambda m: None).run()
    assert cls.ranges and all(lo >= 0.0 and hi <= 1.0 for lo, hi in cls.ranges)  # (x/255 - 0)/1, not [-1, 1]
    assert min(lo for lo, _ in cls.ranges) < 0.2 and max(hi for _, hi in cls.ranges) > 0.8


def test_a_backbone_without_the_contract_is_one_error_line(seeing, tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["run", str(toy_recipe(tmp_path, "undeclared")), "--output-dir",
                                   str(tmp_path / "run")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"Error: backbone 'undeclared' ({seeing}.Undeclared) does not declare input_size" in res.output
    assert not (tmp_path / "run").exists()  # checked with the other components, before the run folder
    res = CliRunner().invoke(cli, ["run", str(toy_recipe(tmp_path, "undeclared")), "--dry-run"])
    assert res.exit_code == 1 and f"Error: backbone 'undeclared' ({seeing}.Undeclared)" in res.output

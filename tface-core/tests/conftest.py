"""Shared fixtures: fake installed distributions, so core tests need no other tface distribution."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tface.core import registry


def write_dist(root: Path, name: str, entry_points: dict[str, dict[str, str]], files: dict[str, str],
               version: str = "1.0") -> Path:
    """Lay out what ``pip install`` leaves in site-packages: modules plus a ``.dist-info`` folder."""
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(textwrap.dedent(text))
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{k} = {v}" for k, v in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    return info


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """``site(name, entry_points, files)`` installs a fake distribution visible to the registry."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    registry.clear_cache()

    def install(name: str, entry_points: dict[str, dict[str, str]], files: dict[str, str] | None = None,
                version: str = "1.0") -> Path:
        info = write_dist(root, name, entry_points, files or {}, version)
        registry.clear_cache()
        return info

    yield install
    registry.clear_cache()


TOY_MODULE = '''
    import attrs
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from tface.core.backbone import Backbone
    from tface.core.classifier import MarginHead
    from tface.core.data.source import DatasetSource


    class ToyHead(MarginHead):
        @attrs.define
        class Config:
            s: float = attrs.field(default=8.0, validator=attrs.validators.gt(0))
            m: float = 0.2

        def __init__(self, s=8.0, m=0.2):
            super().__init__()
            self.s, self.m = s, m

        def forward(self, batch):
            rows, cols, t = batch.local_targets()
            return batch.with_targets(rows, cols, t - self.m) * self.s


    class ToyBackbone(Backbone, nn.Module):
        """Declares the backbone contract: 16×16 inputs (the toy data), the default mean/std."""

        @attrs.define
        class Config:
            embedding_size: int = 8

        def __init__(self, embedding_size=8):
            super().__init__()
            self.embedding_size = embedding_size
            self.input_size = 16
            self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 32),
                                     nn.BatchNorm1d(32), nn.PReLU(32), nn.Linear(32, embedding_size))

        def forward(self, x):
            return self.net(x)


    class _Blobs(Dataset):
        """Class c = a colour pattern plus noise; learnable in a few steps."""

        def __init__(self, classes, per_class, seed, transform, side=16):
            g = torch.Generator().manual_seed(seed)
            self.protos = torch.rand(classes, 3, 4, 4, generator=g) * 2 - 1
            self.noise = torch.randn(classes * per_class, 3, side, side, generator=g) * 0.3
            self.side = side
            self.num_classes = classes
            self.transform = transform

        def __len__(self):
            return len(self.noise)

        def __getitem__(self, i):
            c = i % self.num_classes
            img = torch.nn.functional.interpolate(self.protos[c:c + 1], size=self.side)[0] + self.noise[i]
            img = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # the uint8 item contract
            if self.transform is not None:
                img = self.transform(img)
            return img, c


    class ToySource(DatasetSource):
        @attrs.define
        class Config:
            classes: int = 4
            per_class: int = 16
            seed: int = 0
            side: int = 16

        def __init__(self, classes=4, per_class=16, seed=0, side=16):
            self.classes, self.per_class, self.seed, self.side = classes, per_class, seed, side

        def train_dataset(self, transform=None):
            return _Blobs(self.classes, self.per_class, self.seed, transform, self.side)


    class ToyProtocol:
        name = "toy"

        @attrs.define
        class Config:
            label: str = "toy"

        def __init__(self, label="toy"):
            self.label = label

        def evaluate(self, model, ctx):
            return [{"protocol": "toy", "dataset": self.label, "step": ctx.step, "score": 1.0}]
'''


@pytest.fixture
def toy_plugins(site: Callable[..., Path], tmp_path: Path) -> str:
    """A fake distribution ``toy-plugins`` with a head, backbone, dataset source and protocol."""
    module = f"toyplug_{tmp_path.name.replace('-', '_')}"
    site(
        "toy-plugins",
        {
            "tface.heads": {"toyhead": f"{module}:ToyHead"},
            "tface.backbones": {"toynet": f"{module}:ToyBackbone"},
            "tface.datasets": {"toydata": f"{module}:ToySource"},
            "tface.protocols": {"toyeval": f"{module}:ToyProtocol"},
        },
        {f"{module}.py": TOY_MODULE},
    )
    return module


TOY_RECIPE = """
seed = 1
device = "cpu"

[data]
name = "toydata"
classes = 4

[backbone]
name = "toynet"
embedding_size = 8

[head]
name = "toyhead"
s = 8.0

[train]
max_steps = 30
batch_size = 16
lr = 0.1
warmup_steps = 5
lr_milestones = [20]
log_every = 5

[[eval]]
name = "toyeval"
"""

"""What the tface-quality tests build on: a fake installed distribution with a tiny backbone that offers a feature
map (the isolated test session installs tface-core and tface-quality only), hand-made face images whose
brightness is their quality, and a recipe of the quality_regression method on them."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tface.core import registry

SIDE = 16  # the toy backbone's input

#: The fake distribution's module: a backbone with a 8 x 4 x 4 feature map.
TOY_MODULE = '''
    import attrs
    import torch
    from torch import nn

    from tface.core.backbone import Backbone


    class QToyNet(Backbone, nn.Module):
        """16 x 16 inputs; forward_features gives (embedding, 8 x 4 x 4 map) from one pass."""

        @attrs.define
        class Config:
            embedding_size: int = 8

        def __init__(self, embedding_size=8):
            super().__init__()
            self.embedding_size, self.input_size, self.feature_channels = embedding_size, 16, 8
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.PReLU(8),
                                      nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8))
            self.output_layer = nn.Sequential(nn.Flatten(), nn.Linear(128, embedding_size))

        def forward_features(self, x):
            fmap = self.body(x)
            return self.output_layer(fmap), fmap

        def forward(self, x):
            return self.forward_features(x)[0]
'''


def write_dist(root: Path, name: str, entry_points: dict[str, dict[str, str]], files: dict[str, str]) -> None:
    """Lay out what ``pip install`` leaves in site-packages: modules plus a ``.dist-info`` folder (as
    tface-core's test fixture ``site`` does)."""
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = []
    for group, eps in entry_points.items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in eps.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))


def install_toys(root: Path) -> Iterator[str]:
    """Install the fake distribution ``tface-quality-toys`` under ``root`` for the duration of the generator."""
    module = f"qtoys_{root.name.replace('-', '_')}"
    write_dist(root, "tface-quality-toys", {"tface.backbones": {"qtoynet": f"{module}:QToyNet"}},
               {f"{module}.py": TOY_MODULE})
    sys.path.insert(0, str(root))
    registry.clear_cache()
    try:
        yield module
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(module, None)
        registry.clear_cache()


def face(level: float, seed: int, side: int = SIDE) -> np.ndarray:
    """A uint8 ``[side, side, 3]`` image: a colour pattern around grey ``level`` (0-255) plus noise."""
    g = np.random.default_rng(seed)
    pattern = g.uniform(-30, 30, size=(4, 4, 3)).repeat(side // 4, 0).repeat(side // 4, 1)
    img = level + pattern + g.normal(0, 4, size=(side, side, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_faces(folder: Path, n: int, seed: int = 0, side: int = SIDE) -> tuple[list[Path], np.ndarray]:
    """``n`` PNG faces in ``folder``; their quality is their brightness: score = 100 * level / 255 (rounded to
    3 decimals, the precision labels carry exactly)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(seed)
    levels = g.uniform(40, 215, size=n)
    paths = []
    for i, level in enumerate(levels):
        p = folder / f"{i:03d}.png"
        Image.fromarray(face(level, seed * 1000 + i, side)).save(p)
        paths.append(p)
    return paths, np.round(levels / 255 * 100, 3)


def write_scores(path: Path, files: list[Path], scores: np.ndarray, relative_to: Path | None = None) -> Path:
    lines = [f"{f.relative_to(relative_to) if relative_to else f}\t{s:.3f}" for f, s in zip(files, scores)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def save_toynet(module: str, path: Path, seed: int = 0) -> Path:
    """A 'trained recognition model': the toy backbone's weights at ``seed``."""
    import importlib

    torch.manual_seed(seed)
    net = importlib.import_module(module).QToyNet()
    torch.save(net.state_dict(), path)
    return path


RECIPE = """
seed = 3
device = "cpu"

[data]
name = "quality_list"
list = "scores.txt"
image_size = 16

[backbone]
name = "qtoynet"
checkpoint = "toynet.pt"

[method]
name = "quality_regression"

[train]
max_steps = 6
batch_size = 8
optimizer = "adamw"
lr = 0.01
betas = [0.9, 0.99]
weight_decay = 5e-4
warmup_steps = 0
log_every = 3
threads = 1
eval_at_start = false
"""


def quality_data(root: Path, module: str, n: int = 32) -> tuple[list[Path], np.ndarray]:
    """Faces, ``scores.txt`` (relative paths) and ``toynet.pt`` in ``root``, beside which RECIPE is written."""
    files, scores = write_faces(root / "faces", n)
    write_scores(root / "scores.txt", files, scores, relative_to=root)
    save_toynet(module, root / "toynet.pt")
    (root / "recipe.toml").write_text(RECIPE, encoding="utf-8")
    return files, scores


def png(img: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_pairs_bin(path: Path, pairs: int = 40, seed: int = 0, side: int = SIDE) -> Path:
    """A verification ``.bin`` (core's writer): pair p is genuine when p is even (two photos of one pattern at
    different brightness), else two patterns."""
    from tface.core.data.binfile import write_bin

    g = np.random.default_rng(seed)
    images, issame = [], []
    for p in range(pairs):
        same = p % 2 == 0
        a, b = seed * 10_000 + 2 * p, seed * 10_000 + (2 * p if same else 2 * p + 1)
        images += [png(face(g.uniform(40, 215), a, side)), png(face(g.uniform(40, 215), b, side))]
        issame.append(same)
    return write_bin(path, images, issame)


@pytest.fixture(scope="module")
def toys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The toy backbone ``qtoynet`` registered for a test module's tests; yields the module. Test modules import
    it (``from qualitytoys import toys``): a ``conftest.py`` here would shadow tface-core's in a joint run, where
    pytest imports every tests folder's conftest under the one name ``conftest``."""
    yield from install_toys(tmp_path_factory.mktemp("qsite"))

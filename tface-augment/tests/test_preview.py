"""``tface augment preview``: the grid's layout, its originals, its determinism, its refusals and its dots."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tface.augment.preview import COLOURS, PAD, copy_seed
from tface.core import recipe as recipe_mod
from tface.core.cli import cli
from tface.core.data.sample import FaceSample
from tface.core.train.components import Compose

S = 40  # tile side of the folder tests

HEAD = """\
[data]
name = "synthface"

[backbone]
name = "mobilefacenet"

[head]
name = "arcface"
"""

PIPELINE = """
[[augment]]
name = "hflip"

[[augment]]
name = "rotate"
p = 1.0
degrees = [-20, 20]

[[augment]]
name = "color_jitter"
p = 1.0

[[augment]]
name = "random_erasing"
"""


def write_recipe(folder, augment: str = PIPELINE, name: str = "recipe.toml"):
    path = folder / name
    path.write_text(HEAD + augment, encoding="utf-8")
    return path


def write_images(folder, n: int, gray: bool = False, seed: int = 0) -> list[np.ndarray]:
    """``n`` random S x S PNGs named 00.png, 01.png, ... (three equal channels when ``gray``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        px = rng.integers(0, 256, (S, S, 1 if gray else 3), dtype=np.uint8)
        px = np.repeat(px, 3, axis=2) if gray else px
        Image.fromarray(px, "RGB").save(folder / f"{i:02d}.png")
        out.append(px)
    return out


def run(*args: str):
    return CliRunner().invoke(cli, ["augment", "preview", *map(str, args)])


def tile(grid: np.ndarray, row: int, col: int, size: int = S) -> np.ndarray:
    y, x = PAD + row * (size + PAD), PAD + col * (size + PAD)
    return grid[y:y + size, x:x + size]


def load(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        return np.asarray(im).copy()


def test_layout_originals_and_copies(tmp_path):
    """rows x (1 + K) tiles with PAD white pixels around and between; column 0 is the input, column k the
    recipe's Compose applied under copy k's seed."""
    images = write_images(tmp_path / "faces", 3)
    recipe = write_recipe(tmp_path)
    out = tmp_path / "grid.png"
    res = run(recipe, "--images", tmp_path / "faces", "--out", out, "--copies", 2, "--size", S, "--seed", 7)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: 3 rows x 3 columns" in res.output
    grid = load(out)
    assert grid.shape == (3 * (S + PAD) + PAD, 3 * (S + PAD) + PAD, 3)
    gaps = np.ones(grid.shape[:2], dtype=bool)
    for r in range(3):
        for c in range(3):
            gaps[PAD + r * (S + PAD):PAD + r * (S + PAD) + S, PAD + c * (S + PAD):PAD + c * (S + PAD) + S] = False
    assert (grid[gaps] == 255).all()
    steps = [c.build() for c in recipe_mod.load(recipe).augment]
    for r, px in enumerate(images):
        assert np.array_equal(tile(grid, r, 0), px)
        img = torch.from_numpy(px).permute(2, 0, 1).contiguous()
        for k in (1, 2):
            torch.manual_seed(copy_seed(7, r, k))
            expected = Compose(steps).sample(img.clone(), FaceSample.aligned(img).landmarks).image
            assert np.array_equal(tile(grid, r, k), expected.permute(1, 2, 0).numpy())
        assert not np.array_equal(tile(grid, r, 1), px)  # rotate and color_jitter always act


def test_same_seed_same_png_other_seed_other_copies(tmp_path):
    write_images(tmp_path / "faces", 2)
    recipe = write_recipe(tmp_path)
    common = ["--images", tmp_path / "faces", "--copies", 3, "--size", S]
    for name, seed in (("a.png", 3), ("b.png", 3), ("c.png", 4)):
        assert run(recipe, *common, "--seed", seed, "--out", tmp_path / name).exit_code == 0
    a, b, c = (load(tmp_path / n) for n in ("a.png", "b.png", "c.png"))
    assert np.array_equal(a, b)
    assert np.array_equal(tile(a, 0, 0), tile(c, 0, 0)) and np.array_equal(tile(a, 1, 0), tile(c, 1, 0))
    assert not np.array_equal(tile(a, 0, 1), tile(c, 0, 1))
    assert len({tile(a, 0, k).tobytes() for k in (1, 2, 3)}) == 3  # every copy draws on its own


def test_existing_out_is_refused_without_overwrite(tmp_path):
    write_images(tmp_path / "faces", 1)
    recipe = write_recipe(tmp_path)
    out = tmp_path / "grid.png"
    out.write_bytes(b"keep me")
    args = [recipe, "--images", tmp_path / "faces", "--out", out, "--copies", 1, "--size", S]
    res = run(*args)
    assert res.exit_code == 1
    assert f"Error: {out}: exists; pass --overwrite to replace it" in res.output
    assert out.read_bytes() == b"keep me"
    assert run(*args, "--overwrite").exit_code == 0
    assert load(out).shape == (S + 2 * PAD, 2 * (S + PAD) + PAD, 3)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".grid.png")] == []  # no temporary left


@pytest.mark.parametrize("case", ["missing recipe", "no augment", "bad augment", "no folder", "empty folder",
                                  "unreadable image"])
def test_errors_name_the_file(tmp_path, case):
    faces = tmp_path / "faces"
    write_images(faces, 2)
    recipe = write_recipe(tmp_path)
    if case == "missing recipe":
        recipe = tmp_path / "nope.toml"
        expected = f"{recipe}: cannot read recipe"
    elif case == "no augment":
        recipe = write_recipe(tmp_path, augment="", name="plain.toml")
        expected = f"{recipe}: the recipe has no [[augment]] tables"
    elif case == "bad augment":
        recipe = write_recipe(tmp_path, augment='[[augment]]\nname = "rotate"\ndegrees = [10, -10]\n', name="b.toml")
        expected = f"{recipe}: augment[0].degrees"
    elif case == "no folder":
        faces = tmp_path / "elsewhere"
        expected = f"{faces}: no such folder"
    elif case == "empty folder":
        faces = tmp_path / "empty"
        faces.mkdir()
        (faces / "notes.txt").write_text("not an image")
        expected = f"{faces}: no image files"
    else:
        (faces / "00.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        expected = f"{faces / '00.png'}: cannot decode image"
    out = tmp_path / "grid.png"
    res = run(recipe, "--images", faces, "--out", out, "--size", S)
    assert res.exit_code == 1, res.output
    assert expected in res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_synthface_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFACE_CACHE", str(tmp_path / "cache"))
    recipe = write_recipe(tmp_path)
    res = run(recipe, "--out", "grid.png", "--count", 2, "--copies", 1, "--size", 48)
    assert res.exit_code == 0, res.output
    grid = load(tmp_path / "grid.png")
    assert grid.shape == (2 * (48 + PAD) + PAD, 2 * (48 + PAD) + PAD, 3)
    assert not np.array_equal(tile(grid, 0, 0, 48), tile(grid, 1, 0, 48))  # two different faces
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png", "recipe.toml"]  # nothing cached


def red_centroid(px: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero((px[..., 0] > 200) & (px[..., 1] < 60) & (px[..., 2] < 60))
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def test_landmark_dots_only_with_landmarks_and_moved_along(tmp_path):
    """Grey inputs and a grey pipeline: any coloured pixel is a dot. The left-eye dot (red) of the copy sits
    where the rotation moved the landmark."""
    images = write_images(tmp_path / "faces", 1, gray=True)
    recipe = write_recipe(tmp_path, augment='[[augment]]\nname = "rotate"\np = 1.0\ndegrees = [30, 30]\n'
                                             "fill = 128\n")
    args = [recipe, "--images", tmp_path / "faces", "--copies", 1, "--size", S]
    assert run(*args, "--out", tmp_path / "plain.png").exit_code == 0
    assert run(*args, "--out", tmp_path / "dots.png", "--landmarks").exit_code == 0
    plain, dots = load(tmp_path / "plain.png"), load(tmp_path / "dots.png")
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()
    coloured = (dots.max(axis=2).astype(int) - dots.min(axis=2)) > 100
    assert coloured.any() and not coloured[~(dots != plain).any(axis=2)].any()
    for colour in COLOURS:  # all five dots in both tiles
        for c in (0, 1):
            assert (tile(dots, 0, c) == colour).all(axis=2).any()
    img = torch.from_numpy(images[0]).permute(2, 0, 1)
    template = FaceSample.aligned(img).landmarks
    x, y = red_centroid(tile(dots, 0, 0))
    assert math.hypot(x - template[0, 0], y - template[0, 1]) < 0.75
    a, c = math.radians(30), (S - 1) / 2  # counter-clockwise on screen about the centre
    dx, dy = float(template[0, 0]) - c, float(template[0, 1]) - c
    moved = (c + dx * math.cos(a) + dy * math.sin(a), c - dx * math.sin(a) + dy * math.cos(a))
    x, y = red_centroid(tile(dots, 0, 1))
    assert math.hypot(x - moved[0], y - moved[1]) < 0.75


def test_set_overrides_the_recipe(tmp_path):
    """--set works as in `tface run`: a recipe without [[augment]] previews the pipeline given on the line."""
    write_images(tmp_path / "faces", 1)
    recipe = write_recipe(tmp_path, augment="")
    out = tmp_path / "grid.png"
    res = run(recipe, "--images", tmp_path / "faces", "--out", out, "--copies", 1, "--size", S,
              "--set", 'augment=[{name="hflip", p=1.0}]')
    assert res.exit_code == 0, res.output
    grid = load(out)
    assert np.array_equal(tile(grid, 0, 1), tile(grid, 0, 0)[:, ::-1])
    res = run(recipe, "--images", tmp_path / "faces", "--out", out, "--overwrite", "--set", "augment=3")
    assert res.exit_code == 1 and "augment: expected an array of tables" in res.output


def test_device_ops_are_previewed_image_by_image(tmp_path):
    """``on = "device"`` ops run per image in the preview (the same formula as their batch form)."""
    write_images(tmp_path / "faces", 1)
    recipe = write_recipe(tmp_path, augment="")
    out = tmp_path / "grid.png"
    res = run(recipe, "--images", tmp_path / "faces", "--out", out, "--copies", 1, "--size", S,
              "--set", 'augment=[{name="solarize", p=1.0, threshold=[0, 0], on="device"}]')
    assert res.exit_code == 0, res.output
    grid = load(out)
    assert np.array_equal(tile(grid, 0, 1), 255 - tile(grid, 0, 0))


def test_colours_writes_a_small_palette_png_with_pure_dots(tmp_path):
    write_images(tmp_path / "faces", 2)
    recipe = write_recipe(tmp_path)
    out = tmp_path / "grid.png"
    res = run(recipe, "--images", tmp_path / "faces", "--out", out, "--size", S, "--copies", 2, "--landmarks",
              "--colours", 16)
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.mode == "P" and im.size == (3 * (S + PAD) + PAD, 2 * (S + PAD) + PAD)
        px = np.asarray(im.convert("RGB"))
    assert len(np.unique(px.reshape(-1, 3), axis=0)) <= 16
    for colour in COLOURS:
        assert (tile(px, 0, 0) == colour).all(axis=2).sum() >= 5  # every dot kept its colour


def test_preview_survives_the_plugin_set_changing():
    """The CLI registers plugin commands again when the installed plugins change (a test installs one, a
    notebook pip-installs one): `augment preview` must still be there afterwards (it once came back empty)."""
    assert "preview" in cli.get_command(None, "augment").commands
    for _ in range(2):
        cli._plugins_key = None  # as if the set of installed plugins had changed
        assert "preview" in cli.get_command(None, "augment").commands
    res = CliRunner().invoke(cli, ["augment", "preview", "--help"])
    assert res.exit_code == 0 and "--landmarks" in res.output

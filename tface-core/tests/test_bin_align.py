"""``tface data bin --landmarks``: raw photos → aligned crops in a verification ``.bin``."""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter

from tface.core.cli import cli
from tface.core.data.binfile import read_bin

#: The 112×112 ArcFace template, written out (left eye, right eye, nose, mouth corners; x y).
TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                     [70.7299, 92.2041]])


def data(*args: object):
    return CliRunner().invoke(cli, ["data", *map(str, args)])


def crop(seed: int) -> Image.Image:
    """A smooth 112×112 'face' crop, different per seed."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (112, 112), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    d.ellipse([18, 12, 94, 106], fill=tuple(int(v) for v in rng.integers(60, 256, 3)))
    for x in (38.3, 73.5):
        d.ellipse([x - 7, 45, x + 7, 58], fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
    d.rectangle([40, 87, 72, 97], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    d.polygon([(56, 60), (50, 75), (62, 75)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im.filter(ImageFilter.GaussianBlur(1.5))


def place(src: Image.Image, angle: float, scale: float, shift: tuple[float, float]) -> tuple[Image.Image, np.ndarray]:
    """Put ``src`` into a 300×260 'photo' by the similarity x' = s·R(angle)·x + shift; return it and where the
    template points landed (pixel centres at integer coordinates, as OpenCV)."""
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    fwd = np.array([[c, -s, shift[0]], [s, c, shift[1]]])
    inv = np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2]  # photo → crop: what PIL's AFFINE wants
    # PIL samples at pixel corners + 0.5; convert the centre-based inverse to its convention
    a, t = inv[:, :2], inv[:, 2]
    k = t + 0.5 - a @ np.array([0.5, 0.5])
    photo = src.transform((300, 260), Image.AFFINE, (a[0, 0], a[0, 1], k[0], a[1, 0], a[1, 1], k[1]),
                          resample=Image.BILINEAR)
    return photo, TEMPLATE @ fwd[:, :2].T + fwd[:, 2]


@pytest.fixture
def photos(tmp_path: Path):
    """An LFW tree of raw photos (2 people × 2), their crops, a pairs.txt and a pts_list."""
    root = tmp_path / "lfw"
    crops, lines = {}, []
    for n, name in enumerate(["Ann_A", "Bob_B"]):
        for k in (1, 2):
            rel = f"{name}/{name}_{k:04d}.jpg"
            src = crop(10 * n + k)
            photo, pts = place(src, angle=0.3 * (n + k) - 0.6, scale=1.2 + 0.15 * k, shift=(60.0 + 9 * k, 50.0 + 5 * n))
            (root / name).mkdir(parents=True, exist_ok=True)
            photo.save(root / rel, format="PNG")  # lossless: only the two resamplings and the JPEG crop differ
            crops[rel] = np.asarray(src).astype(int)
            lines.append(rel + " " + " ".join(f"{v:.5f}" for v in pts.ravel()) + (" 0.98" if k == 2 else ""))
    lines.append("Nobody/Nobody_0001.jpg " + " ".join(["7"] * 10))
    (tmp_path / "pts.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "pairs.txt").write_text("Ann_A 1 2\nBob_B 1 2\nAnn_A 1 Bob_B 2\nBob_B 1 Ann_A 2\n")
    return root, tmp_path / "pairs.txt", tmp_path / "pts.txt", crops


def decoded(blob: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(blob)) as im:
        assert im.format == "JPEG" and im.size == (112, 112)
        return np.asarray(im.convert("RGB")).astype(int)


def test_bin_aligns_raw_photos_back_to_the_crops(photos, tmp_path):
    root, pairs, pts, crops = photos
    out = tmp_path / "aligned.bin"
    result = data("bin", pairs, out, "--root", root, "--landmarks", pts)
    assert result.exit_code == 0, result.output
    assert "1 landmark entries matched no image" in result.output
    images, flags = read_bin(out)
    order = ["Ann_A/Ann_A_0001.jpg", "Ann_A/Ann_A_0002.jpg", "Bob_B/Bob_B_0001.jpg", "Bob_B/Bob_B_0002.jpg",
             "Ann_A/Ann_A_0001.jpg", "Bob_B/Bob_B_0002.jpg", "Bob_B/Bob_B_0001.jpg", "Ann_A/Ann_A_0002.jpg"]
    assert flags.tolist() == [True, True, False, False]
    for rel, blob in zip(order, images):
        got, want = decoded(blob), crops[rel]
        # undoing the placement gives the crop back, up to two bilinear resamplings and JPEG (measured: mean
        # 1.2-1.8, 99th percentile 8-11; landmarks one pixel off give 2.6-3.0 and 23-25)
        err = np.abs(got[6:-6, 6:-6] - want[6:-6, 6:-6])
        assert err.mean() < 2.2 and np.percentile(err, 99) < 16
    # each distinct image is aligned once: equal slots hold equal bytes
    assert images[0] == images[4] and images[3] == images[5]
    # another crop is far from this one (the comparison above can fail)
    assert np.abs(decoded(images[0]) - crops["Bob_B/Bob_B_0001.jpg"]).mean() > 10
    with out.open("rb") as f:  # the insightface loader reads it
        bins, issame = pickle.load(f, encoding="bytes")
    assert list(bins) == images and list(issame) == [True, True, False, False]


def test_bin_landmarks_by_full_path_in_a_plain_list(photos, tmp_path):
    root, _, pts, crops = photos
    full = tmp_path / "pts_full.txt"
    full.write_text("".join(f"{root / line.split()[0]} {' '.join(line.split()[1:])}\n"
                            for line in pts.read_text().splitlines()[:4]))
    lst = tmp_path / "list.txt"
    lst.write_text(f"{root / 'Ann_A/Ann_A_0001.jpg'} Bob_B/Bob_B_0002.jpg 0\n" * 10)
    out = tmp_path / "l.bin"
    result = data("bin", lst, out, "--root", root, "--format", "list", "--landmarks", full)
    assert result.exit_code == 0, result.output
    images, flags = read_bin(out)
    assert len(images) == 20 and not flags.any()
    assert np.abs(decoded(images[1])[6:-6, 6:-6] - crops["Bob_B/Bob_B_0002.jpg"][6:-6, 6:-6]).mean() < 2.0


def test_bin_missing_landmarks_name_the_image_and_keep_the_old_file(photos, tmp_path):
    root, pairs, pts, _ = photos
    kept = [line for line in pts.read_text().splitlines() if not line.startswith("Bob_B/Bob_B_0002.jpg")]
    pts.write_text("\n".join(kept) + "\n")
    out = tmp_path / "old.bin"
    out.write_bytes(b"the user's existing file")
    result = data("bin", pairs, out, "--root", root, "--landmarks", pts)
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {pairs}:2: image {root / 'Bob_B' / 'Bob_B_0002.jpg'} has no "
                                     "landmarks in the landmark list")
    assert out.read_bytes() == b"the user's existing file"


def test_bin_degenerate_landmarks_and_raw_photos_without_landmarks(photos, tmp_path):
    root, pairs, pts, _ = photos
    lines = pts.read_text().splitlines()
    lines[0] = "Ann_A/Ann_A_0001.jpg " + " ".join(["5"] * 10)
    pts.write_text("\n".join(lines) + "\n")
    result = data("bin", pairs, tmp_path / "o.bin", "--root", root, "--landmarks", pts)
    assert result.exit_code == 1
    assert f"{pairs}:1: image {root / 'Ann_A' / 'Ann_A_0001.jpg'} cannot be aligned: " in result.output
    assert "degenerate" in result.output and len(result.output.strip().splitlines()) == 1
    result = data("bin", pairs, tmp_path / "o.bin", "--root", root)
    assert result.exit_code == 1 and "is 300x260, expected 112x112" in result.output and "--landmarks" in result.output
    pts.write_text("Ann_A/Ann_A_0001.jpg 1 2 3\n")
    result = data("bin", pairs, tmp_path / "o.bin", "--root", root, "--landmarks", pts)
    assert result.exit_code == 1 and result.output.startswith(f"Error: {pts}:1: expected a path then 10 or 136")
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.bin").exists()


def test_bin_failed_write_keeps_the_old_file(photos, tmp_path, monkeypatch):
    root, pairs, pts, _ = photos
    out = tmp_path / "old.bin"
    out.write_bytes(b"the user's existing file")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    monkeypatch.setattr(os, "rename", broken_replace)
    result = data("bin", pairs, out, "--root", root, "--landmarks", pts)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {out}: cannot write: No space left on device"
    assert out.read_bytes() == b"the user's existing file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lfw", "old.bin", "pairs.txt", "pts.txt"]

"""The ``image_folder`` / ``image_list`` dataset sources: pixels, labels, bad files under both policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tface.core import registry
from tface.core.config import ConfigError
from tface.core.data.base import LabelGapError
from tface.core.data.errors import DataError
from tface.core.data.folder import ImageFileDataset, ImageFolderSource, ImageListSource


def picture(seed: int, size: int = 112) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def save(arr: np.ndarray, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def as_hwc(img: torch.Tensor) -> np.ndarray:
    assert img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3
    return img.permute(1, 2, 0).numpy()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Lossless images (PNG, BMP) so pixels compare exactly: ann 2, bob 1 (+ an empty identity)."""
    root = tmp_path / "faces"
    save(picture(1), root / "ann" / "1.png")
    save(picture(2), root / "ann" / "2.bmp")
    save(picture(3), root / "bob" / "1.PNG")
    (root / "cid").mkdir()
    return root


def test_image_folder_source_reads_pixels_and_labels(folder):
    ds = ImageFolderSource(root=folder).train_dataset()
    assert isinstance(ds, ImageFileDataset)
    assert len(ds) == 3 and ds.num_classes == 2 and ds.labels.tolist() == [0, 0, 1]
    for i, seed in enumerate((1, 2, 3)):
        img, label = ds[i]
        np.testing.assert_array_equal(as_hwc(img), picture(seed))
        assert label == [0, 0, 1][i]
    assert ds.images.empty == ("cid",)
    assert ds.where(2) == str(folder / "bob" / "1.PNG")


def test_transform_is_applied(folder):
    ds = ImageFolderSource(root=folder).train_dataset(transform=lambda t: t.flip(-1))
    img, _ = ds[0]
    np.testing.assert_array_equal(as_hwc(img), picture(1)[:, ::-1])


def test_jpeg_file_decodes_like_pillow(folder):
    path = save(picture(4), folder / "bob" / "2.jpg", "JPEG")
    ds = ImageFolderSource(root=folder).train_dataset()
    img, label = ds[3]
    assert label == 1
    with Image.open(path) as im:
        want = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(as_hwc(img).astype(int) - want).max() <= 3  # libjpeg builds may round IDCT differently


@pytest.fixture
def bad_folder(folder: Path) -> Path:
    (folder / "ann" / "3.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    save(picture(5, size=100), folder / "bob" / "2.png")
    return folder


def test_bad_files_raise_naming_the_file(bad_folder):
    ds = ImageFolderSource(root=bad_folder).train_dataset()
    assert ds.images.paths == ("ann/1.png", "ann/2.bmp", "ann/3.jpg", "bob/1.PNG", "bob/2.png")
    with pytest.raises(DataError, match=r"ann/3\.jpg: cannot decode image"):
        ds[2]
    with pytest.raises(DataError, match=r"bob/2\.png: image is 100x100, expected 112x112.*--landmarks"):
        ds[4]
    (bad_folder / "ann" / "1.png").unlink()
    with pytest.raises(DataError, match=r"ann/1\.png: cannot read"):
        ds[0]


def test_bad_files_are_skipped(bad_folder):
    ds = ImageFolderSource(root=bad_folder, on_error="skip").train_dataset()
    img, label = ds[2]  # broken -> the next good one (bob/1.PNG)
    np.testing.assert_array_equal(as_hwc(img), picture(3))
    assert label == 1 and ds.skipped == 1
    img, label = ds[4]  # wrong size, last -> wraps to the first
    np.testing.assert_array_equal(as_hwc(img), picture(1))
    assert label == 0 and ds.skipped == 2


def test_image_size_option(tmp_path):
    save(picture(1, size=64), tmp_path / "r" / "a" / "1.png")
    ds = ImageFolderSource(root=tmp_path / "r", image_size=64).train_dataset()
    assert tuple(ds[0][0].shape) == (3, 64, 64)
    with pytest.raises(DataError, match="expected 112x112"):
        ImageFolderSource(root=tmp_path / "r").train_dataset()[0]


def test_image_list_source_names_the_list_line(folder, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("ann/1.png\t0\nann/missing.png\t1\nbob/1.PNG\t1\n")
    ds = ImageListSource(list=lst, root=folder).train_dataset()
    np.testing.assert_array_equal(as_hwc(ds[2][0]), picture(3))
    with pytest.raises(DataError, match=rf"ann/missing\.png \(list {lst}:2\): cannot read"):
        ds[1]
    skip = ImageListSource(list=lst, root=folder, on_error="skip").train_dataset()
    img, label = skip[1]
    np.testing.assert_array_equal(as_hwc(img), picture(3))
    assert label == 1 and skip.skipped == 1


def test_image_list_unlabelled_resolves_against_the_list_folder(folder):
    lst = folder / "all.txt"
    lst.write_text("bob/1.PNG\nann/2.bmp\n")
    ds = ImageListSource(list=lst).train_dataset()
    assert ds.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(as_hwc(ds[1][0]), picture(2))


def test_label_gaps_policies(folder, tmp_path):
    lst = tmp_path / "gaps.txt"
    lst.write_text(f"{folder}/ann/1.png 0\n{folder}/bob/1.PNG 3\n")
    warn = ImageListSource(list=lst).train_dataset()
    assert warn.labels.tolist() == [0, 3] and warn.num_classes == 4 and "2 of them have no sample" in warn.label_message
    compact = ImageListSource(list=lst, label_gaps="compact").train_dataset()
    assert compact.labels.tolist() == [0, 1] and compact.num_classes == 2
    with pytest.raises(LabelGapError, match="label_gaps"):
        ImageListSource(list=lst, label_gaps="error").train_dataset()


def test_sources_through_the_registry(site, folder, tmp_path):
    site("img-sources", {"tface.datasets": {
        "imgfolder_t": "tface.core.data.folder:ImageFolderSource",
        "imglist_t": "tface.core.data.folder:ImageListSource",
    }})
    src = registry.create("datasets", "imgfolder_t", root=str(folder), on_error="skip")
    assert isinstance(src, ImageFolderSource) and src.root == folder and src.on_error == "skip"
    assert len(src.train_dataset()) == 3
    lst = tmp_path / "l.txt"
    lst.write_text("ann/1.png\n")
    src = registry.create("datasets", "imglist_t", list=str(lst), root=str(folder))
    assert src.train_dataset()[0][1] == 0
    with pytest.raises(ConfigError) as info:
        registry.create("datasets", "imgfolder_t", root=str(folder), on_error="ignore", label_gaps="drop",
                        image_size=0)
    text = str(info.value)
    assert "on_error" in text and "label_gaps" in text and "image_size" in text
    with pytest.raises(ConfigError, match="list: required key is missing"):
        registry.create("datasets", "imglist_t", root=str(folder))

"""``tface data pack``: read what it writes the way TFace does, check indexes, alignment, policies and the CLI."""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFilter

from tface.core.cli import cli
from tface.core.data.align import ARCFACE_TEMPLATE, align_face
from tface.core.data.imagelist import ImageSourceError, read_image_list, scan_folder
from tface.core.data.index import IndexFormatError
from tface.core.data.pack import PackError, pack
from tface.core.data.tfrecord import parse_example


def face(seed: int, size: int = 112) -> Image.Image:
    """A smooth synthetic 'face' (JPEG-friendly, different per seed)."""
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    d = ImageDraw.Draw(im)
    k = size / 112
    d.ellipse([20 * k, 15 * k, 92 * k, 105 * k], fill=tuple(int(v) for v in rng.integers(60, 256, 3)))
    for x in (38.3, 73.5):
        d.ellipse([(x - 6) * k, 46 * k, (x + 6) * k, 57 * k], fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
    d.rectangle([40 * k, 88 * k, 72 * k, 96 * k], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im.filter(ImageFilter.GaussianBlur(1.5))


def save(im: Image.Image, path: Path, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format=fmt)
    return path


def jpeg95(rgb: np.ndarray | Image.Image) -> bytes:
    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def rgb_of(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """3 identities with images (7 in all, mixed formats and extension case), one empty folder, noise."""
    root = tmp_path / "faces"
    save(face(1), root / "alice" / "1.png")
    save(face(2), root / "alice" / "2.PNG")
    save(face(3), root / "alice" / "3.jpg", "JPEG")
    save(face(4), root / "bob" / "a.JPEG", "JPEG")
    save(face(5), root / "bob" / "b.bmp")
    save(face(6), root / "carol" / "x.webp", "WEBP")
    save(face(7), root / "carol" / "sub" / "y.png")
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("not an image")
    save(face(8), root / ".hidden" / "z.png")
    save(face(9), root / "stray.png")
    (root / "alice" / "readme.txt").write_text("ignored")
    return root


EXPECTED = ["alice/1.png", "alice/2.PNG", "alice/3.jpg", "bob/a.JPEG", "bob/b.bmp", "carol/sub/y.png", "carol/x.webp"]
LABELS = [0, 0, 0, 1, 1, 2, 2]


def tface_read(out_dir: Path, index_file: Path) -> list[tuple[str, int, int, bytes, int]]:
    """Read every sample the way TFace's IndexTFRDataset does (protobuf Example, no CRC check)."""
    from tfrecord import example_pb2

    out = []
    for line in index_file.read_text().splitlines():
        name, shard, offset, label = line.split("\t")
        with open(out_dir / name / f"{name}-{int(shard):05d}.tfrecord", "rb") as f:
            f.seek(int(offset))
            head = f.read(12)
            (length,) = struct.unpack("Q", head[:8])
            payload = f.read(length)
        example = example_pb2.Example()
        example.ParseFromString(payload)
        jpeg = example.features.feature["image"].bytes_list.value[0]
        out.append((name, int(shard), int(offset), jpeg, int(label), length))
    return out


def test_scan_folder(folder):
    images = scan_folder(folder)
    assert list(images.paths) == EXPECTED
    assert images.labels.tolist() == LABELS
    assert images.classes == {0: "alice", 1: "bob", 2: "carol"}
    assert images.empty == ("empty",)
    assert images.ignored == ("alice/readme.txt", "empty/notes.txt", "stray.png")  # hidden files stay silent
    assert images.file(6) == folder / "carol" / "x.webp"
    with pytest.raises(ImageSourceError, match="not a folder"):
        scan_folder(folder / "nope")
    with pytest.raises(ImageSourceError, match="no images found"):
        scan_folder(folder / "empty")


def test_pack_folder_reads_back_in_tface(folder, tmp_path):
    out = tmp_path / "out"
    report = pack(folder, out, "faces", shard_size=3)
    assert (report.written, report.identities, report.classes) == (7, 3, 3)
    assert report.empty_identities == ("empty",) and report.skipped == ()
    assert report.shards == tuple(out / "faces" / f"faces-{s:05d}.tfrecord" for s in range(3))
    assert all(p.exists() for p in report.shards)

    rows = tface_read(out, out / "faces.txt")
    assert [r[4] for r in rows] == LABELS
    assert [r[1] for r in rows] == [0, 0, 0, 1, 1, 1, 2]
    for rel, (_, _, _, jpeg, _, _) in zip(EXPECTED, rows):
        source = rgb_of(folder / rel)
        assert jpeg == jpeg95(source), rel  # re-encoded at quality 95, nothing else done to the pixels
        decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
        assert np.abs(decoded - source).mean() < 2.0, rel
    assert (out / "faces" / "classes.tsv").read_text() == "0\talice\n1\tbob\n2\tcarol\n"


def test_pack_index_offsets_and_framing(folder, tmp_path):
    out = tmp_path / "out"
    pack(folder, out, "faces", shard_size=3)
    train = [line.split("\t") for line in (out / "faces.txt").read_text().splitlines()]
    packed = [line.split("\t") for line in (out / "faces" / "faces.index").read_text().splitlines()]
    assert [p[0] for p in packed] == EXPECTED
    assert [p[1:] for p in packed] == [t[1:3] for t in train]
    assert {t[0] for t in train} == {"faces"}
    lengths = [r[5] for r in tface_read(out, out / "faces.txt")]
    by_shard: dict[int, list[tuple[int, int]]] = {}
    for (_, shard, offset), length in zip(packed, lengths):
        by_shard.setdefault(int(shard), []).append((int(offset), length))
    for shard, recs in by_shard.items():
        expect = 0
        for offset, length in recs:
            assert offset == expect
            expect = offset + length + 16
        assert (out / "faces" / f"faces-{shard:05d}.tfrecord").stat().st_size == expect


def test_tface_dataset_reads_the_packed_index(folder, tmp_path):
    from tface.core.data.dataset import IndexedTFRecordDataset

    out = tmp_path / "out"
    pack(folder, out, "faces", shard_size=4)
    ds = IndexedTFRecordDataset(out / "faces.txt")
    assert len(ds) == 7 and ds.num_classes == 3
    img, label = ds[4]
    assert label == 1 and tuple(img.shape) == (3, 112, 112)
    want = np.asarray(Image.open(io.BytesIO(jpeg95(rgb_of(folder / EXPECTED[4])))).convert("RGB"))
    assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - want.astype(int)).max() <= 2


def photo(seed: int, angle: float, scale: float,
          shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, Image.Image]:
    """A larger 'photo' holding ``face(seed)`` rotated/scaled/moved; returns (photo, its 5 landmarks, the face)."""
    src = face(seed)
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    m = np.array([[c, -s, shift[0]], [s, c, shift[1]]])  # face -> photo
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # photo -> face, for PIL's output->input map
    ai, ti = inv[:, :2], inv[:, 2]
    k = ti + 0.5 - ai @ np.array([0.5, 0.5])
    big = src.transform((300, 280), Image.AFFINE, (ai[0, 0], ai[0, 1], k[0], ai[1, 0], ai[1, 1], k[1]),
                        resample=Image.BILINEAR)
    pts = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    return np.asarray(big), pts, src


def landmarks68(five: np.ndarray, seed: int) -> np.ndarray:
    """68 random points whose TFace 5-point reduction is ``five``."""
    p = np.random.default_rng(seed).uniform(0, 150, size=(68, 2))
    p[36] = p[39] = five[0]
    p[42] = five[1] + np.array([1.0, -2.0])
    p[45] = five[1] - np.array([1.0, -2.0])
    p[30], p[48], p[54] = five[2], five[3], five[4]
    return p


@pytest.fixture
def photos(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray, Image.Image]]]:
    """An unlabelled image list of 4 photos (2 identities) and a pts_list in 5- and 68-point formats."""
    root = tmp_path / "photos"
    made = {}
    for i, rel in enumerate(["p1/a.png", "p1/b.png", "p2/c.png", "p2/d.png"]):
        big, pts, src = photo(10 + i, angle=0.25 * (i - 1.5), scale=1.1 + 0.1 * i, shift=(70.0 + 3 * i, 60.0))
        save(Image.fromarray(big), root / rel)
        made[rel] = (big, pts, src)
    (root / "list.txt").write_text("".join(f"{rel}\n" for rel in made))
    lines = []
    for k, (rel, (_, pts, _)) in enumerate(made.items()):
        nums = pts.ravel() if k % 2 == 0 else landmarks68(pts, k).ravel()
        score = " 0.99" if k in (1, 2) else ""
        lines.append(rel + " " + " ".join(f"{v:.6f}" for v in nums) + score)
    lines.append("p9/unused.png " + " ".join(["1"] * 10))
    (root / "pts.txt").write_text("\n".join(lines) + "\n")
    return root / "list.txt", root / "pts.txt", made


def test_pack_list_with_landmarks_aligns(photos, tmp_path):
    lst, pts_file, made = photos
    out = tmp_path / "out"
    report = pack(lst, out, "aligned", image_list=True, landmarks=pts_file, extra_keys=True)
    assert (report.written, report.identities, report.unused_landmarks) == (4, 2, 1)
    rows = tface_read(out, out / "aligned.txt")
    assert [r[4] for r in rows] == [0, 0, 1, 1]
    for (rel, (big, pts, src)), row in zip(made.items(), rows):
        jpeg = row[3]
        assert jpeg == jpeg95(align_face(big, np.round(pts, 6)))
        aligned = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
        # the crop is the original face again (two bilinear resamplings + JPEG apart)
        assert np.abs(aligned[8:-8, 8:-8] - np.asarray(src).astype(int)[8:-8, 8:-8]).mean() < 2.0
        with open(out / "aligned" / "aligned-00000.tfrecord", "rb") as f:
            f.seek(row[2])
            head = f.read(12)
            ex = parse_example(f.read(struct.unpack("<Q", head[:8])[0]))
        assert ex["label"].tolist() == [row[4]]
        assert ex["path"] == [rel.encode()]
        np.testing.assert_allclose(ex["landmarks"].reshape(5, 2), ARCFACE_TEMPLATE, atol=1e-3)
    assert (out / "aligned" / "classes.tsv").read_text() == "0\tp1\n1\tp2\n"


def test_worker_count_does_not_change_a_byte(photos, tmp_path):
    lst, pts_file, _ = photos
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        pack(lst, out, "d", image_list=True, landmarks=pts_file, workers=workers, shard_size=3, extra_keys=True)
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {"d.txt", "d/d.index", "d/classes.tsv", "d/d-00000.tfrecord", "d/d-00001.tfrecord",
                               "d/tface-manifest.txt"}
    listed = [ln for ln in outputs[0]["d/tface-manifest.txt"].decode().splitlines() if not ln.startswith("#")]
    assert listed == ["classes.tsv", "d-00000.tfrecord", "d-00001.tfrecord", "d.index"]


def test_bad_images_error_and_skip(folder, tmp_path):
    (folder / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    save(face(20, size=100), folder / "carol" / "small.png")
    with pytest.raises(PackError, match=r"bob/broken\.jpg: cannot decode image"):
        pack(folder, tmp_path / "o1", "faces")
    assert not (tmp_path / "o1" / "faces.txt").exists()

    report = pack(folder, tmp_path / "o2", "faces", on_error="skip")
    assert report.written == 7
    assert [p for p, _ in report.skipped] == ["bob/broken.jpg", "carol/small.png"]
    assert "100x100, expected 112x112" in report.skipped[1][1] and "--landmarks" in report.skipped[1][1]
    packed = [line.split("\t")[0] for line in (tmp_path / "o2" / "faces" / "faces.index").read_text().splitlines()]
    assert packed == EXPECTED

    (folder / "bob" / "broken.jpg").unlink()
    with pytest.raises(PackError, match=r"carol/small\.png: image is 100x100.*--landmarks"):
        pack(folder, tmp_path / "o3", "faces")


def test_missing_landmarks_error_and_skip(photos, tmp_path):
    lst, pts_file, _ = photos
    text = pts_file.read_text().splitlines()
    pts_file.write_text("\n".join(line for line in text if not line.startswith("p2/c.png")) + "\n")
    with pytest.raises(PackError, match=r"p2/c\.png \(list .*list\.txt:3\): no landmarks"):
        pack(lst, tmp_path / "o1", "x", image_list=True, landmarks=pts_file)
    report = pack(lst, tmp_path / "o2", "x", image_list=True, landmarks=pts_file, on_error="skip")
    assert report.written == 3 and report.skipped[0][0] == "p2/c.png"
    assert [r[4] for r in tface_read(tmp_path / "o2", tmp_path / "o2" / "x.txt")] == [0, 0, 1]

    with pytest.raises(PackError, match="no image could be packed"):
        pack(lst, tmp_path / "o3", "x", image_list=True, landmarks={}, on_error="skip")


def test_existing_output_needs_overwrite(folder, tmp_path):
    out = tmp_path / "out"
    pack(folder, out, "faces", shard_size=1)
    assert len(list((out / "faces").glob("*.tfrecord"))) == 7
    with pytest.raises(PackError, match="already exists"):
        pack(folder, out, "faces")
    report = pack(folder, out, "faces", overwrite=True)
    assert sorted(p.name for p in (out / "faces").glob("*.tfrecord")) == ["faces-00000.tfrecord"]
    assert report.shards == (out / "faces" / "faces-00000.tfrecord",)
    with pytest.raises(ValueError, match="invalid record name"):
        pack(folder, out, "a/b")


def test_read_image_list_labelled(tmp_path):
    lst = tmp_path / "lists" / "train.txt"
    lst.parent.mkdir()
    lst.write_text("id1/a.jpg\t3\nid1/b.jpg 3\nmy photos/c d.jpg  0\n/abs/e.jpg\t1\n\n")
    images = read_image_list(lst)
    assert images.paths == ("id1/a.jpg", "id1/b.jpg", "my photos/c d.jpg", "/abs/e.jpg")
    assert images.labels.tolist() == [3, 3, 0, 1]
    assert images.lines == (1, 2, 3, 4)
    assert images.classes == {0: "my photos", 1: "abs", 3: "id1"}
    assert images.file(0) == tmp_path / "lists" / "id1" / "a.jpg"
    assert images.file(3) == Path("/abs/e.jpg")
    assert read_image_list(lst, root=tmp_path / "imgs").file(0) == tmp_path / "imgs" / "id1" / "a.jpg"


def test_read_image_list_unlabelled_uses_parent_folders(tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("zed/1.jpg\nann/x/2.jpg\nzed/3 4.jpg\n")
    images = read_image_list(lst)
    assert images.labels.tolist() == [1, 0, 1]
    assert images.classes == {0: "x", 1: "zed"}


@pytest.mark.parametrize("text, match", [
    ("a/1.jpg 0\na/2.jpg\n", r"l\.txt:2: line 1 has a label but this one does not"),
    ("a/1.jpg\na/2.jpg\t0\n", r"l\.txt:2: line 1 has no label but this one does"),
    ("a/1.jpg\t0\na/2.jpg\tx\n", r"l\.txt:2: label must be an integer"),
    ("a/1.jpg\t-1\n", r"l\.txt:1: negative label"),
    ("a/1.jpg\t0\nb/1.jpg\t1\na/1.jpg\t2\n", r"l\.txt:3: 'a/1\.jpg' is listed twice \(first on line 1\)"),
    ("a/1.jpg\nnoparent.jpg\n", r"l\.txt:2: 'noparent\.jpg' has no parent folder"),
    ("\n\n", r"l\.txt: the image list is empty"),
])
def test_read_image_list_errors(tmp_path, text, match):
    lst = tmp_path / "l.txt"
    lst.write_text(text)
    with pytest.raises(IndexFormatError, match=match):
        read_image_list(lst)


def test_pack_labelled_list_with_root(folder, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("bob/a.JPEG\t0\nalice/1.png\t2\nalice/2.PNG\t2\n")
    out = tmp_path / "out"
    report = pack(lst, out, "l", image_list=True, root=folder)
    assert (report.written, report.identities, report.classes) == (3, 2, 3)
    rows = tface_read(out, out / "l.txt")
    assert [r[4] for r in rows] == [0, 2, 2]
    assert rows[1][3] == jpeg95(rgb_of(folder / "alice" / "1.png"))
    assert (out / "l" / "classes.tsv").read_text() == "0\tbob\n2\talice\n"
    assert [line.split("\t")[0] for line in (out / "l" / "l.index").read_text().splitlines()] == [
        "bob/a.JPEG", "alice/1.png", "alice/2.PNG"]


def test_cli_pack(folder, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(cli, ["data", "pack", str(folder), str(out), "--name", "faces", "--workers", "1",
                              "--shard-size", "4"])
    assert res.exit_code == 0, res.output
    assert f"packed 7 images into {out / 'faces'}" in res.output
    assert "identities" in res.output and "shards" in res.output and "empty folders" in res.output
    assert "ignored files" in res.output and "alice/readme.txt, empty/notes.txt, stray.png" in res.output
    assert len(tface_read(out, out / "faces.txt")) == 7

    res = runner.invoke(cli, ["data", "pack", str(folder), str(out), "--name", "faces"])
    assert res.exit_code == 1 and "already exists" in res.output
    res = runner.invoke(cli, ["data", "pack", str(folder), str(out), "--name", "faces", "--overwrite",
                              "--workers", "1"])
    assert res.exit_code == 0, res.output

    save(face(3, size=64), folder / "bob" / "tiny.png")
    res = runner.invoke(cli, ["data", "pack", str(folder), str(tmp_path / "o2"), "--name", "f", "--workers", "1"])
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "bob/tiny.png" in lines[0]
    assert "--landmarks" in lines[0]

    res = runner.invoke(cli, ["data", "pack", str(folder), str(tmp_path / "o3"), "--name", "f", "--workers", "1",
                              "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    assert "skipped bob/tiny.png: image is 64x64" in res.output

    res = runner.invoke(cli, ["data", "pack", str(folder), str(tmp_path / "o4"), "--name", "f", "--root", str(folder)])
    assert res.exit_code == 2 and "--list" in res.output
    res = runner.invoke(cli, ["data", "pack", str(folder), str(tmp_path / "o4"), "--name", "f", "--list"])
    assert res.exit_code == 2


def test_cli_pack_list_with_landmarks_and_help(photos, tmp_path):
    lst, pts_file, _ = photos
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(cli, ["data", "pack", str(lst), str(out), "--name", "al", "--list", "--landmarks",
                              str(pts_file), "--workers", "1", "--extra-keys", "--quality", "90"])
    assert res.exit_code == 0, res.output
    assert "unused landmarks" in res.output
    rows = tface_read(out, out / "al.txt")
    assert len(rows) == 4

    bad = tmp_path / "bad_pts.txt"
    bad.write_text("p1/a.png 1 2 3\n")
    res = runner.invoke(cli, ["data", "pack", str(lst), str(tmp_path / "o2"), "--name", "al", "--list",
                              "--landmarks", str(bad)])
    assert res.exit_code == 1 and f"{bad}:1:" in res.output

    res = runner.invoke(cli, ["data", "pack", "--help"])
    assert res.exit_code == 0
    for option in ("--name", "--list", "--root", "--landmarks", "--workers", "--shard-size", "--quality",
                   "--extra-keys", "--on-error", "--overwrite"):
        assert option in res.output


def test_a_failed_pack_leaves_no_partial_output(tmp_path):
    from tface.core.data.pack import PackError, pack

    src = tmp_path / "faces"
    for ident in ("a", "b"):
        (src / ident).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (112, 112), (40 * k, 90, 200)).save(src / ident / f"{k}.jpg")
    (src / "b" / "9.jpg").write_bytes(b"not an image")
    with pytest.raises(PackError, match="9.jpg: cannot decode image"):
        pack(src, tmp_path / "out", "demo")
    assert not (tmp_path / "out" / "demo").exists() and not (tmp_path / "out" / "demo.txt").exists()
    report = pack(src, tmp_path / "out", "demo", on_error="skip")  # the rerun needs no --overwrite
    assert report.written == 4 and [p for p, _ in report.skipped] == ["b/9.jpg"]


def tree(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_a_failed_overwrite_keeps_the_old_data_set(folder, tmp_path):
    out = tmp_path / "out"
    pack(folder, out, "faces", shard_size=2)
    (out / "notes.txt").write_text("the user's")
    (out / "other.txt").write_text("another data set's index")
    before = tree(out)
    (folder / "bob" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(PackError, match=r"bob/broken\.jpg: cannot decode image"):
        pack(folder, out, "faces", overwrite=True, on_error="error")
    assert tree(out) == before  # byte for byte, and no temporary sibling left in OUT


def test_overwrite_keeps_user_files_and_drops_stale_shards(folder, tmp_path):
    out = tmp_path / "out"
    pack(folder, out, "faces", shard_size=2)
    pack(folder, out, "other", shard_size=7)
    (out / "faces" / "README").write_text("mine")
    report = pack(folder, out, "faces", shard_size=7, overwrite=True)
    assert sorted(p.name for p in (out / "faces").iterdir()) == [
        "README", "classes.tsv", "faces-00000.tfrecord", "faces.index", "tface-manifest.txt"]
    assert report.shards == (out / "faces" / "faces-00000.tfrecord",)
    assert len(tface_read(out, out / "faces.txt")) == 7 and len(tface_read(out, out / "other.txt")) == 7


def test_pack_refuses_a_user_folder_and_its_own_source(folder, tmp_path):
    (tmp_path / "out" / "faces").mkdir(parents=True)
    (tmp_path / "out" / "faces" / "mine.txt").write_text("mine")
    with pytest.raises(PackError, match=r"out/faces is not empty and is not a tface output.*--overwrite"):
        pack(folder, tmp_path / "out", "faces")
    assert tree(tmp_path / "out") == {"faces": None, "faces/mine.txt": b"mine"}
    with pytest.raises(PackError, match=r"the output folder .*faces holds the input source|is the input source"):
        pack(folder, tmp_path, "faces", overwrite=True)  # OUT/NAME is the folder being packed
    res = CliRunner().invoke(cli, ["data", "pack", str(folder), str(tmp_path / "out"), "--name", "faces"])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1

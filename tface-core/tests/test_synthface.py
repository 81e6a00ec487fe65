"""SynthFace as a data source: files, determinism across worker counts, held-out split, cache reuse."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tface.core.cli import cli
from tface.core.config import ConfigError
from tface.core.data import synthrender
from tface.core.data.binfile import read_bin
from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.image import decode_rgb
from tface.core.data.synthface import SynthFaceSource

SMALL = {"identities": 6, "images_per_identity": 3, "val_identities": 5, "val_pairs": 8}


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_generate_layout_and_content(tmp_path):
    src = SynthFaceSource(seed=3, cache_dir=tmp_path, workers=1, **SMALL)
    ds = src.train_dataset()
    folder = src.folder()
    assert folder.parent == tmp_path and folder.name == src.key
    assert sorted(p.name for p in folder.iterdir()) == ["synthface", "synthface-pairs.txt", "synthface-val.bin",
                                                       "synthface.json", "synthface.txt", "tface-manifest.txt"]
    listed = [ln for ln in (folder / "tface-manifest.txt").read_text().splitlines() if not ln.startswith("#")]
    assert listed == ["synthface-pairs.txt", "synthface-val.bin", "synthface.json", "synthface.txt",
                      "synthface/synthface-00000.tfrecord"]
    assert len(ds) == 18 and ds.num_classes == 6
    assert ds.index.labels.tolist() == [i // 3 for i in range(18)]
    img, label = ds[4]
    assert img.shape == (3, 112, 112) and label == 1
    images, issame = read_bin(src.eval_sets()["verification"]["synthface-val"])
    assert len(images) == 16 and issame.sum() == 4  # half genuine
    assert decode_rgb(images[0]).shape == (3, 112, 112)
    manifest = json.loads((folder / "synthface.json").read_text())
    assert manifest["seed"] == 3 and manifest["identities"] == 6


def test_bytes_do_not_depend_on_worker_count(tmp_path):
    one = SynthFaceSource(seed=1, cache_dir=tmp_path / "a", workers=1, **SMALL).generate()
    two = SynthFaceSource(seed=1, cache_dir=tmp_path / "b", workers=2, **SMALL).generate()
    assert digest(one.root) == digest(two.root)
    other = SynthFaceSource(seed=2, cache_dir=tmp_path / "c", workers=1, **SMALL).generate()
    assert digest(other.root) != digest(one.root)


def test_training_images_match_the_renderer(tmp_path):
    src = SynthFaceSource(seed=5, cache_dir=tmp_path, workers=1, **SMALL)
    ds = IndexedTFRecordDataset(src.generate().index)
    ident = synthrender.train_identity(5, 2)
    render = next(synthrender.train_images(5, 2, ident, 1))
    buf = io.BytesIO()
    Image.fromarray(render).save(buf, format="JPEG", quality=95)
    assert ds.read_image_bytes(6) == buf.getvalue()  # identity 2, image 0
    assert ds.read_image_bytes(7) != buf.getvalue()


def test_smaller_image_size_is_the_render_area_downsampled(tmp_path):
    src = SynthFaceSource(seed=5, cache_dir=tmp_path, workers=1, image_size=64, **SMALL)
    assert src.key.endswith("-q95-r64") and SynthFaceSource(seed=5, **SMALL).key.endswith("-q95")
    ds = src.train_dataset()
    img, label = ds[6]
    assert img.shape == (3, 64, 64) and label == 2
    render = next(synthrender.train_images(5, 2, synthrender.train_identity(5, 2), 1))
    buf = io.BytesIO()
    Image.fromarray(render).resize((64, 64), Image.Resampling.BOX).save(buf, format="JPEG", quality=95)
    assert ds.read_image_bytes(6) == buf.getvalue()  # identity 2, image 0, area-averaged from 112
    images, _ = read_bin(src.eval_sets()["verification"]["synthface-val"])
    assert {decode_rgb(b).shape for b in images} == {(3, 64, 64)}
    assert json.loads((src.folder() / "synthface.json").read_text())["image_size"] == 64


def test_cache_is_reused_and_incomplete_folders_are_replaced(tmp_path):
    src = SynthFaceSource(seed=0, cache_dir=tmp_path, workers=1, **SMALL)
    paths = src.generate()
    stamp = paths.index.stat().st_mtime_ns
    assert src.generate().index.stat().st_mtime_ns == stamp
    (paths.root / "synthface.json").unlink()  # as if a crash happened before the manifest
    assert not src.is_complete()
    src.generate()
    assert src.is_complete() and not list(tmp_path.glob(".*tmp*"))


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("tface.core.data.synthface.write_bin", boom)
    src = SynthFaceSource(seed=0, cache_dir=tmp_path, workers=1, **SMALL)
    with pytest.raises(RuntimeError, match="disk full"):
        src.generate()
    assert list(tmp_path.iterdir()) == []


def test_config_rejects_odd_pairs():
    from tface.core.config import ConfigError, structure

    with pytest.raises(ConfigError, match=r"data.val_pairs: must be a positive even number \(half genuine, "
                                          r"half impostor pairs\), got 7"):
        structure(SynthFaceSource.Config, {"val_pairs": 7}, "data")


def test_cli_synth(tmp_path):
    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "out"), "--seed", "4", "--identities", "4",
                                   "--images-per-identity", "2", "--val-identities", "3", "--val-pairs", "4",
                                   "--workers", "1"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "synthface.txt").exists() and (tmp_path / "out" / "synthface-val.bin").exists()
    assert len((tmp_path / "out" / "synthface.txt").read_text().splitlines()) == 8


def test_cli_synth_hard_nuisance_and_hard_fraction(tmp_path):
    """--nuisance hard renders the same identities with strong nuisance: the bytes are SynthFaceSource's own."""
    args = ["--seed", "4", "--identities", "2", "--images-per-identity", "1", "--val-identities", "3", "--val-pairs",
            "4", "--hard-fraction", "0", "--workers", "1"]
    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "hard"), *args, "--nuisance", "hard"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    want = SynthFaceSource(seed=4, identities=2, images_per_identity=1, val_identities=3, val_pairs=4,
                           hard_fraction=0.0, workers=1, nuisance="hard").generate(tmp_path / "ref")
    assert (tmp_path / "hard" / "synthface-val.bin").read_bytes() == want.bin.read_bytes()
    normal = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "normal"), *args], catch_exceptions=False)
    assert normal.exit_code == 0
    assert (tmp_path / "normal" / "synthface-val.bin").read_bytes() != want.bin.read_bytes()
    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "x"), "--nuisance", "extreme"])
    assert res.exit_code == 2 and "'extreme' is not one of 'normal', 'hard'" in res.output
    res = CliRunner().invoke(cli, ["data", "synth", str(tmp_path / "y"), "--hard-fraction", "1.5"])
    assert res.exit_code == 2 and "--hard-fraction" in res.output and "between 0 and 1" in res.output


# --- output folder rules and option validation -------------------------------------------------------------

TINY = ["--identities", "2", "--images-per-identity", "1", "--val-identities", "2", "--val-pairs", "2",
        "--workers", "1"]


def synth(out, *extra):
    return CliRunner().invoke(cli, ["data", "synth", str(out), *TINY, *map(str, extra)])


def tree(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def test_synth_refuses_a_folder_with_user_files(tmp_path):
    out = tmp_path / "mine"
    (out / "photos").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "photos" / "a.jpg").write_bytes(b"jpeg")
    before = tree(out)
    res = synth(out)
    assert res.exit_code == 1, res.output
    assert f"Error: {out} is not empty and is not a tface output" in res.output and "--overwrite" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["mine"]  # no temp sibling either


def test_synth_dot_is_refused(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "thesis.tex").write_text("years of work")
    monkeypatch.chdir(tmp_path / "work")
    res = synth(".")
    assert res.exit_code == 1 and f"{tmp_path / 'work'} is not empty" in res.output
    assert tree(tmp_path / "work") == {"thesis.tex": b"years of work"}


def test_synth_overwrite_replaces_only_its_own_files(tmp_path):
    out = tmp_path / "set"
    assert synth(out, "--seed", "1", "--identities", "3").exit_code == 0
    old_listed = [ln for ln in (out / "tface-manifest.txt").read_text().splitlines() if not ln.startswith("#")]
    (out / "README.md").write_text("what this set is for")
    (out / "synthface" / "extra.tfrecord").write_bytes(b"the user's own shard")
    res = synth(out, "--seed", "2")  # different parameters: refused without --overwrite
    assert res.exit_code == 1 and "already exists" in res.output and "--overwrite" in res.output
    res = synth(out, "--seed", "2", "--overwrite")
    assert res.exit_code == 0, res.output
    assert (out / "README.md").read_text() == "what this set is for"
    assert (out / "synthface" / "extra.tfrecord").read_bytes() == b"the user's own shard"
    assert json.loads((out / "synthface.json").read_text())["seed"] == 2
    assert len((out / "synthface.txt").read_text().splitlines()) == 2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        old_listed + ["README.md", "synthface/extra.tfrecord", "tface-manifest.txt"])
    res = synth(out, "--seed", "2")  # the very same set: reused, nothing written
    assert res.exit_code == 0 and "reused" in res.output


def test_an_interrupted_synth_keeps_the_old_set(tmp_path, monkeypatch):
    out = tmp_path / "set"
    SynthFaceSource(seed=1, workers=1, **SMALL).generate(out)
    (out / "mine.txt").write_text("mine")
    before = tree(out)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tface.core.data.synthface.write_bin", interrupt)
    with pytest.raises(KeyboardInterrupt):
        SynthFaceSource(seed=2, workers=1, **SMALL).generate(out, overwrite=True)
    assert tree(out) == before and [p.name for p in tmp_path.iterdir()] == ["set"]


@pytest.mark.parametrize("option, value, message", [
    ("--identities", -3, "must be >= 2 (a classifier needs at least 2 classes), got -3"),
    ("--identities", 1, "must be >= 2"),
    ("--images-per-identity", 0, "must be >= 1, got 0"),
    ("--val-identities", 1, "must be >= 2 (impostor pairs need two held-out identities), got 1"),
    ("--val-pairs", 3, "must be a positive even number (half genuine, half impostor pairs), got 3"),
    ("--val-pairs", 0, "must be a positive even number"),
    ("--seed", -1, "must be >= 0"),
    ("--workers", -2, "must be >= 0"),
    ("--image-size", 113, "must be between 16 and 112, got 113"),
    ("--image-size", 8, "must be between 16 and 112, got 8"),
])
def test_synth_options_are_checked_before_anything_is_written(tmp_path, option, value, message):
    res = synth(tmp_path / "out", option, value)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{option}': {message}" in res.output
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_recipe_api_and_cli_share_the_messages():
    from tface.core.config import ConfigError, structure

    with pytest.raises(ConfigError) as info:
        structure(SynthFaceSource.Config, {"identities": -3, "val_identities": 1}, "data")
    assert info.value.problems == ["data.identities: must be >= 2 (a classifier needs at least 2 classes), got -3",
                                   "data.val_identities: must be >= 2 (impostor pairs need two held-out identities), "
                                   "got 1"]
    with pytest.raises(ConfigError, match=r"^identities: must be >= 2 .*got -3$"):
        SynthFaceSource(identities=-3)


def test_hard_nuisance_renders_the_same_identities_harder(tmp_path):
    easy = SynthFaceSource(seed=3, cache_dir=tmp_path, workers=1, **SMALL)
    hard = SynthFaceSource(seed=3, cache_dir=tmp_path, workers=1, nuisance="hard", **SMALL)
    assert hard.key == easy.key + "-nhard" and easy.folder() != hard.folder()
    assert "nuisance" not in easy._manifest() and hard._manifest()["nuisance"] == "hard"  # old caches stay valid
    assert list(easy.eval_sets()["verification"]) == ["synthface-val"]
    assert list(hard.eval_sets()["verification"]) == ["synthface-hard-val"]
    e, h = easy.train_dataset(), hard.train_dataset()
    assert e.index.labels.tolist() == h.index.labels.tolist()  # the same identities, the same number of photos
    ident = synthrender.train_identity(3, 1)
    rng = synthrender.image_rng(3, "train", 1, 0)
    want = synthrender.render(ident, rng, nuisance=synthrender.HARD_NUISANCE)
    buf = io.BytesIO()
    Image.fromarray(want).save(buf, format="JPEG", quality=95)
    assert h.read_image_bytes(3) == buf.getvalue() != e.read_image_bytes(3)  # identity 1, photo 0
    # harder: two photos of one identity look less alike (pixel correlation, averaged over the identities)
    def alike(ds):
        def z(x):
            x = x.float().flatten()
            return (x - x.mean()) / x.std()
        return sum(float((z(ds[3 * i][0]) * z(ds[3 * i + k][0])).mean()) for i in range(6) for k in (1, 2)) / 12
    assert alike(h) < alike(e) - 0.05
    with pytest.raises(ConfigError, match="nuisance: must be one of normal, hard, got 'extreme'"):
        SynthFaceSource(nuisance="extreme")


def test_pairs_are_two_photos_of_one_identity(tmp_path):
    src = SynthFaceSource(seed=3, cache_dir=tmp_path, workers=1, pairs=True, **SMALL)
    ds = src.train_dataset()
    single = SynthFaceSource(seed=3, cache_dir=tmp_path, workers=1, **SMALL).train_dataset()
    assert src.folder() == SynthFaceSource(seed=3, cache_dir=tmp_path, **SMALL).folder()  # one set, two views
    assert len(ds) == 18 and ds.num_classes == 6  # every photo with the next of its identity
    for i in range(18):
        (a, b), label = ds[i]
        identity, k = divmod(i, 3)
        assert label == identity
        assert torch.equal(a, single[3 * identity + k][0]) and torch.equal(b, single[3 * identity + (k + 1) % 3][0])
    # a set generated before pair indexes existed gets one derived from its index
    src.paths().pairs.unlink()
    assert len(src.train_dataset()) == 18 and src.paths().pairs.is_file()


# --- designed group imbalance (``groups``) ---------------------------------------------------------------------

SHARES = [0.55, 0.25, 0.12, 0.08]


def jpeg(img, quality=95):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_ungrouped_key_and_manifest_are_unchanged():
    src = SynthFaceSource(seed=3, **SMALL)
    assert src.key == "v1-s3-i6x3-v5p8h0.5-q95"  # existing cache folders keep their names ...
    assert src._manifest() == {  # ... and stay complete
        "generator": "synthface", "version": 1, "seed": 3, "identities": 6, "images_per_identity": 3,
        "val_identities": 5, "val_pairs": 8, "hard_fraction": 0.5, "jpeg_quality": 95, "image_size": 112}
    assert src.groups is None and src.group_counts() == {} and src.group_bins() == {}
    with pytest.raises(ValueError, match="no groups .*`groups`"):
        src.group_of_label(0)


def test_groups_write_one_verification_set_per_look(tmp_path):
    small = {**SMALL, "identities": 8}
    plain = SynthFaceSource(seed=3, cache_dir=tmp_path, workers=1, **small)
    src = SynthFaceSource(seed=3, cache_dir=tmp_path, workers=2, groups=SHARES, **small)
    assert src.key == plain.key + "-g55_25_12_8" and src.folder() != plain.folder()
    percent = SynthFaceSource(seed=3, groups=[55, 25, 12, 8], **small)  # shares are normalised: one set
    assert percent.key == src.key and percent._manifest() == src._manifest()
    # 4 families · shares = 2.2, 1, 0.48, 0.32 → floors 2, 1, 0, 0; the leftover family to C (0.48): A, B, C, A
    assert [src.group_of_label(i) for i in range(8)] == ["A", "A", "B", "B", "C", "C", "A", "A"]
    manifest = {**plain._manifest(), "groups": dict(zip("ABCD", SHARES)),
                "group_identities": {"A": 4, "B": 2, "C": 2, "D": 0}}
    assert src._manifest() == manifest  # D gets no training identity here, but still its held-out set

    sets = src.eval_sets()
    folder = src.folder()
    assert sets == {"verification": {"synthface-val": folder / "synthface-val.bin"},
                    "rfw": {n: folder / f"group-{n}_test.bin" for n in "ABCD"}}
    assert list(sets["rfw"]) == ["A", "B", "C", "D"]
    assert json.loads((folder / "synthface.json").read_text()) == manifest
    listed = [ln for ln in (folder / "tface-manifest.txt").read_text().splitlines() if not ln.startswith("#")]
    assert {f"group-{n}_test.bin" for n in "ABCD"} <= set(listed)
    for n, look in zip("ABCD", synthrender.GROUP_LOOKS):
        images, issame = read_bin(sets["rfw"][n])
        assert len(images) == 16 and issame.sum() == 4  # val_pairs pairs, half genuine
        want = synthrender.verification_pairs(3, 5, 8, 0.5, start=0, stop=1, look=look)[0]
        assert images[:2] == [jpeg(want[0]), jpeg(want[1])]
    # the ungrouped held-out set is the plain set's, byte for byte (2 workers, 1 worker)
    assert sets["verification"]["synthface-val"].read_bytes() == plain.generate().bin.read_bytes()

    ds = src.train_dataset()
    assert ds.index.labels.tolist() == [i // 3 for i in range(24)]
    look_c = synthrender.GROUP_LOOKS[2]
    render = synthrender.render(synthrender.apply_look(synthrender.train_identity(3, 5), look_c),
                                synthrender.image_rng(3, "train", 5, 0))
    assert ds.read_image_bytes(15) == jpeg(render)  # identity 5 (family 2: C), photo 0
    assert ds.read_image_bytes(15) != IndexedTFRecordDataset(plain.generate().index).read_image_bytes(15)


def test_group_of_label_rejects_other_labels():
    src = SynthFaceSource(groups=[1, 1], **SMALL)
    assert [src.group_of_label(i) for i in range(6)] == ["A", "A", "B", "B", "A", "A"] and src.looks[1].name == "B"
    with pytest.raises(ValueError, match=r"label 6 is not a training label \(0 .. 5\)"):
        src.group_of_label(6)


@pytest.mark.parametrize("groups, message", [
    ([], "must list 1 to 4 training shares, one per look (A, B, C, D in order), got []"),
    ([0.2] * 5, "must list 1 to 4 training shares, one per look (A, B, C, D in order), got [0.2, 0.2, 0.2, 0.2, 0.2]"),
    ([0.5, -0.5], "every share must be a positive number (they are normalised by their sum), got [0.5, -0.5]"),
    ([0.5, 0], "every share must be a positive number (they are normalised by their sum), got [0.5, 0]"),
    ([float("nan")], "every share must be a positive number (they are normalised by their sum), got [nan]"),
])
def test_bad_groups_are_named(groups, message):
    with pytest.raises(ConfigError) as info:
        SynthFaceSource(groups=groups)
    assert info.value.problems == [f"groups: {message}"]


def test_bad_groups_in_a_recipe_are_named():
    from tface.core.config import structure

    with pytest.raises(ConfigError) as info:
        structure(SynthFaceSource.Config, {"groups": [0.5, -0.5]}, "data")
    assert info.value.problems == ["data.groups: every share must be a positive number (they are normalised by "
                                   "their sum), got [0.5, -0.5]"]
    with pytest.raises(ConfigError) as info:
        structure(SynthFaceSource.Config, {"groups": ["0.5"]}, "data")
    assert info.value.problems == ['data.groups[0]: expected float, got "0.5"']
    assert structure(SynthFaceSource.Config, {"groups": [55, 45]}, "data").groups == [55.0, 45.0]


def test_cli_synth_groups(tmp_path):
    out = tmp_path / "out"
    res = synth(out, "--groups", "0.6,0.4", "--identities", "4")
    assert res.exit_code == 0, res.output
    assert (out / "group-A_test.bin").is_file() and (out / "group-B_test.bin").is_file()
    assert not (out / "group-C_test.bin").exists()
    assert json.loads((out / "synthface.json").read_text())["group_identities"] == {"A": 2, "B": 2}
    assert "group A identities" in res.output
    for value, message in [("0.5,x", "expected comma-separated numbers like 0.55,0.25,0.12,0.08, got '0.5,x'"),
                           ("1,1,1,1,1", "must list 1 to 4 training shares")]:
        res = synth(tmp_path / "bad", "--groups", value)
        assert res.exit_code == 2 and f"Invalid value for '--groups': {message}" in res.output, res.output
        assert not (tmp_path / "bad").exists()

"""TFace's 8-column pair index (``PairIndexTFRDataset``, DDL's positive pairs): parsing, the pair dataset and
the ``tfrecord_pairs`` source, against shards written by tface's own writer."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from tface.core import registry
from tface.core.data.index import IndexFormatError, read_index, read_pair_index
from tface.core.data.pairdataset import PairTFRecordDataset
from tface.core.data.source import PairTFRecordSource
from tface.core.data.tfrecord import RecordError
from tface.core.data.writer import ShardWriter


def jpeg(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pil_decode(data: bytes) -> torch.Tensor:
    """The same bytes decoded by Pillow, independently of tface's decoder, as ``[3, H, W]``."""
    with Image.open(io.BytesIO(data)) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)


@pytest.fixture()
def shards(tmp_path):
    """Two record names, several shards each: ``{(name, i): (jpeg, (name, shard, offset, label))}``."""
    images = {}
    for name, n in (("a", 7), ("b", 5)):
        with ShardWriter(tmp_path, name, shard_size=3) as w:
            for i in range(n):
                data = jpeg(100 * (name == "b") + i)
                images[name, i] = data, w.add(data, label=i // 2)
    return tmp_path, images


PAIRS = [(("a", 0), ("a", 1)), (("a", 2), ("b", 3)), (("b", 4), ("a", 6)), (("a", 5), ("b", 0))]


def write_pairs(root, images, pairs=PAIRS, name="pairs.txt"):
    text = "".join("\t".join(str(v) for v in (*images[p][1], *images[q][1])) + "\n" for p, q in pairs)
    (root / name).write_text(text)
    return root / name


def test_read_pair_index_shares_one_files_table(shards):
    root, images = shards
    path = write_pairs(root, images)
    pairs = read_pair_index(path)
    assert len(pairs) == 4 and pairs.first.files is pairs.second.files
    assert len(pairs.files) == len(set(pairs.files)) == 5  # each shard once: a-00000..2, b-00000..1
    for k, (p, q) in enumerate(PAIRS):
        for half, key in ((pairs.first, p), (pairs.second, q)):
            name, shard, offset, label = images[key][1]
            assert half.keys[int(half.file_id[k])] == (name, shard)
            assert half.files[int(half.file_id[k])] == root / name / f"{name}-{shard:05d}.tfrecord"
            assert int(half.offsets[k]) == offset and int(half.labels[k]) == label
    assert pairs.labels.tolist() == [images[p][1][3] for p, _ in PAIRS]
    assert pairs.lines.tolist() == [1, 2, 3, 4] and pairs.num_classes == 3
    flat = pairs.images()
    assert len(flat) == 8 and flat.lines.tolist() == [1, 2, 3, 4] * 2


def test_pairs_read_back_the_written_images(shards):
    root, images = shards
    ds = PairTFRecordDataset(write_pairs(root, images))
    assert len(ds) == 4 and ds.num_classes == 3
    for k, (p, q) in enumerate(PAIRS):
        (img1, img2), label = ds[k]
        assert img1.dtype == torch.uint8 and img1.shape == (3, 16, 16)
        assert torch.equal(img1, pil_decode(images[p][0])) and torch.equal(img2, pil_decode(images[q][0]))
        assert label == images[p][1][3]
    assert ds.labels.tolist() == [images[p][1][3] for p, _ in PAIRS]
    clone = pickle.loads(pickle.dumps(ds))  # as a DataLoader worker gets it
    assert torch.equal(clone[1][0][1], pil_decode(images["b", 3][0]))


def test_transform_is_applied_to_both_images(shards):
    root, images = shards
    calls = []

    def transform(img):
        calls.append(img.shape)
        return img.flip(-1).float()

    ds = PairTFRecordDataset(write_pairs(root, images), transform=transform)
    (img1, img2), _ = ds[2]
    assert len(calls) == 2
    assert torch.equal(img1, pil_decode(images["b", 4][0]).flip(-1).float())
    assert torch.equal(img2, pil_decode(images["a", 6][0]).flip(-1).float())


def test_root_option_and_label_gaps(shards, tmp_path_factory):
    root, images = shards
    elsewhere = tmp_path_factory.mktemp("idx")
    path = write_pairs(elsewhere, images, [(("a", 0), ("b", 4)), (("a", 6), ("a", 0))])  # labels 0 and 3
    with pytest.raises(IndexFormatError, match="shard file .* is missing"):
        PairTFRecordDataset(path)  # shards are not next to the index
    ds = PairTFRecordDataset(path, root, label_gaps="compact")
    assert ds.num_classes == 2 and ds.label_space.num_classes == 4 and "renumbered" in ds.label_message


BAD_LINES = [
    ("a\t0\t0\t0\ta\t0\t0", r"p.txt:2: expected 8 tab-separated columns in a pair index .* got 7: "),
    ("a\t0\t0\t0", r"p.txt:2: expected 8 tab-separated columns in a pair index .* got 4 \(4 columns is a training "
                   r"index, one image per line: read it with read_index, the `tfrecord` source\)"),
    ("a\t0\t0\t0\ta\tx\t0\t0", r"p.txt:2: second image: shard \(column 6\) must be an integer, got 'x'"),
    ("a\t0\tzero\t0\ta\t0\t0\t0", r"p.txt:2: first image: offset \(column 3\) must be an integer, got 'zero'"),
    ("a\t0\t0\t0\ta\t0\t0\t1.5", r"p.txt:2: second image: label \(column 8\) must be an integer, got '1.5'"),
    ("a\t0\t0\t0\ta\t0\t-16\t0", r"p.txt:2: second image: negative shard, offset or label \(columns 5-8\)"),
    ("a\t0\t0\t0\t../x\t0\t0\t0", r"p.txt:2: second image: record name \(column 5\): invalid record name '../x'"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_malformed_pair_lines_name_file_line_and_column(tmp_path, line, message):
    path = tmp_path / "p.txt"
    path.write_text(f"a\t0\t0\t0\ta\t0\t0\t0\n{line}\n")
    with pytest.raises(IndexFormatError, match=message):
        read_pair_index(path)


def test_each_reader_refuses_the_other_format(tmp_path):
    plain = tmp_path / "i.txt"
    plain.write_text("a\t0\t0\t0\na\t0\t0\t0\ta\t0\t0\t0\n")
    with pytest.raises(IndexFormatError, match=r"i.txt:2: expected 4 tab-separated columns \(record_name, shard, "
                                               r"offset, label\), got 8 \(8 columns is a pair index, two images "
                                               r"per line: read it with read_pair_index, the `tfrecord_pairs`"):
        read_index(plain)
    empty = tmp_path / "e.txt"
    empty.write_text("\n \n")
    with pytest.raises(IndexFormatError, match=r"e.txt: the pair index has no pairs"):
        read_pair_index(empty)
    with pytest.raises(IndexFormatError, match=r"cannot read pair index"):
        read_pair_index(tmp_path / "nope.txt")


def test_missing_shard_and_offset_past_end_name_the_line(shards):
    root, images = shards
    path = write_pairs(root, images)
    lines = path.read_text().splitlines()
    lines.append("a\t0\t0\t0\ta\t2\t999999\t0")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(IndexFormatError, match=r"pairs.txt:5: offset 999999 points past the end of .*a-00002"):
        PairTFRecordDataset(path)
    (root / "b" / "b-00001.tfrecord").unlink()
    with pytest.raises(IndexFormatError, match=r"pairs.txt:3: shard file .*b-00001.tfrecord is missing"):
        PairTFRecordDataset(path)


def test_corrupt_record_names_file_offset_line_and_image(shards, caplog):
    root, images = shards
    path = write_pairs(root, images)
    _, shard, off, _ = images["b", 3][1]  # pair 1's second image
    shard_file = root / "b" / f"b-{shard:05d}.tfrecord"
    data = bytearray(shard_file.read_bytes())
    data[off + 20] ^= 0x5A
    shard_file.write_bytes(bytes(data))
    ds = PairTFRecordDataset(path)
    with pytest.raises(RecordError, match=rf"b-00001.tfrecord: offset {off} \(index .*pairs.txt:2\), second image: "
                                          r"payload CRC mismatch"):
        ds[1]
    assert torch.equal(ds[0][0][0], pil_decode(images["a", 0][0]))  # the others are unaffected
    skip = PairTFRecordDataset(path, on_error="skip")
    (img1, _), label = skip[1]  # replaced by the next good pair
    assert torch.equal(img1, pil_decode(images["b", 4][0])) and label == 2 and skip.skipped == 1


def test_undecodable_image_names_the_line_once(tmp_path):
    with ShardWriter(tmp_path, "c") as w:
        good = w.add(jpeg(0), 0)
        bad = w.add(jpeg(1)[:40], 1)  # a JPEG cut short
    path = tmp_path / "p.txt"
    path.write_text("\t".join(map(str, (*bad, *good))) + "\n")
    with pytest.raises(RecordError, match=rf"c-00000.tfrecord: offset {bad[2]} \(index .*p.txt:1\), first image: "
                                          r"cannot decode image") as info:
        PairTFRecordDataset(path)[0]
    assert str(info.value).count("p.txt") == 1


def test_tfrecord_pairs_source(shards, tmp_path):
    root, images = shards
    source_cls = registry.get("datasets", "tfrecord_pairs")
    assert source_cls is PairTFRecordSource
    path = write_pairs(root, images)
    source = source_cls(index=path, root=root)
    assert source.check_inputs() == []
    ds = source.train_dataset(transform=lambda img: img[:, :8])
    assert isinstance(ds, PairTFRecordDataset) and len(ds) == 4 and ds.num_classes == 3
    (img1, img2), _ = ds[3]
    assert img1.shape == img2.shape == (3, 8, 16)
    missing = source_cls(index=tmp_path / "none.txt", root=tmp_path / "gone")
    assert missing.check_inputs() == [f"index: {tmp_path / 'none.txt'} does not exist",
                                      f"root: {tmp_path / 'gone'} does not exist"]
    assert source_cls(index=path, root=path).check_inputs() == [f"root: {path} is not a folder"]

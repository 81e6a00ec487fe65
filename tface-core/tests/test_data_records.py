"""TFRecord framing, Example parsing, index files and the map-style dataset, against hand-made bytes."""

from __future__ import annotations

import io
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.image import normalize
from tface.core.data.index import IndexFormatError, read_index
from tface.core.data.tfrecord import RecordError, frame, masked_crc, parse_example, read_record_at
from tface.core.data.writer import ShardWriter


def varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def hand_example(jpeg: bytes) -> bytes:
    """The single-key Example exactly as the TFace reference spells it out, byte by byte."""
    bytes_list = b"\x0a" + varint(len(jpeg)) + jpeg
    feature = b"\x0a" + varint(len(bytes_list)) + bytes_list
    entry = b"\x0a\x05image" + b"\x12" + varint(len(feature)) + feature
    features = b"\x0a" + varint(len(entry)) + entry
    return b"\x0a" + varint(len(features)) + features


def jpeg(color: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_masked_crc_matches_reference_formula():
    import crc32c

    for data in (b"", b"abc", bytes(range(256))):
        crc = crc32c.crc32c(data)
        assert masked_crc(data) == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32


def test_frame_layout_and_read_back():
    payload = hand_example(b"xyz")
    rec = frame(payload)
    assert struct.unpack("<Q", rec[:8])[0] == len(payload) and len(rec) == len(payload) + 16
    assert read_record_at(io.BytesIO(b"pad" + rec), 3) == payload
    assert parse_example(payload) == {"image": [b"xyz"]}


def test_parse_int_and_float_features_written_by_the_tfrecord_package(tmp_path):
    from tfrecord.writer import TFRecordWriter

    path = tmp_path / "x.tfrecord"
    w = TFRecordWriter(str(path))
    w.write({"image": (b"abc", "byte"), "label": ([3, -2], "int"), "pts": ([0.5, 1.25], "float")})
    w.close()
    with open(path, "rb") as f:
        ex = parse_example(read_record_at(f, 0))
    assert ex["image"] == [b"abc"]
    assert ex["label"].tolist() == [3, -2]
    assert ex["pts"].tolist() == [0.5, 1.25]


def test_writer_offsets_index_and_tfrecord_package_interop(tmp_path):
    images = [jpeg((10 * i, 50, 200 - 10 * i)) for i in range(7)]
    with ShardWriter(tmp_path, "faces", shard_size=3) as w:
        for i, img in enumerate(images):
            w.add(img, label=i % 3)
    lines = (tmp_path / "faces.txt").read_text().splitlines()
    assert len(lines) == 7
    # offsets restart per shard and grow by len(Example) + 16
    rows = [line.split("\t") for line in lines]
    assert [r[1] for r in rows] == ["0", "0", "0", "1", "1", "1", "2"]
    assert [(tmp_path / "faces" / f"faces-{s:05d}.tfrecord").exists() for s in range(3)] == [True] * 3
    assert rows[0][2] == "0" and int(rows[1][2]) == len(hand_example(images[0])) + 16
    # every record is byte-identical to the hand encoding
    with open(tmp_path / "faces" / "faces-00000.tfrecord", "rb") as f:
        assert f.read() == b"".join(frame(hand_example(img)) for img in images[:3])
    # and the tfrecord package's own reader reads our shard
    from tfrecord.reader import tfrecord_loader

    got = [r["image"] for r in tfrecord_loader(str(tmp_path / "faces" / "faces-00001.tfrecord"), None, ["image"])]
    assert got == images[3:6]


def make_dataset(tmp_path, n=6):
    with ShardWriter(tmp_path, "ds", shard_size=4) as w:
        for i in range(n):
            w.add(jpeg((40 * i, 100, 30)), label=i // 2)
    return tmp_path / "ds.txt"


def test_dataset_read_back(tmp_path):
    ds = IndexedTFRecordDataset(make_dataset(tmp_path))
    assert len(ds) == 6 and ds.num_classes == 3
    img, label = ds[5]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8 and label == 2
    expected = np.array(Image.open(io.BytesIO(jpeg((200, 100, 30)))).convert("RGB"))
    assert torch.equal(img, torch.from_numpy(expected).permute(2, 0, 1))
    # the trainer normalises whole batches the TFace way: (x/255 - 0.5)/0.5
    norm = normalize(img[None])[0]
    assert torch.allclose(norm, torch.from_numpy((expected.astype(np.float32) / 255 - 0.5) / 0.5).permute(2, 0, 1),
                          atol=1e-6)


def test_reader_ignores_a_clashing_example_definition(tmp_path):
    """Reading must work in a process that already holds another generated Example module."""
    index = make_dataset(tmp_path)
    code = f"""
import sys
from tfrecord import example_pb2  # registers tensorflow.Example in protobuf's default pool
from tface.core.data.dataset import IndexedTFRecordDataset
ds = IndexedTFRecordDataset({str(index)!r})
assert ds[3][1] == 1
print("ok")
"""
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "ok\n"
    code2 = f"""
import sys
from tface.core.data.dataset import IndexedTFRecordDataset
IndexedTFRecordDataset({str(index)!r})[0]
assert "google.protobuf" not in sys.modules, "reading must not need protobuf"
"""
    subprocess.run([sys.executable, "-c", code2], check=True)


def corrupt(path, offset, byte=0xFF):
    data = bytearray(path.read_bytes())
    data[offset] ^= byte
    path.write_bytes(bytes(data))


def test_payload_crc_error_names_file_and_offset(tmp_path):
    index = make_dataset(tmp_path)
    shard = tmp_path / "ds" / "ds-00000.tfrecord"
    second = int(index.read_text().splitlines()[1].split("\t")[2])
    corrupt(shard, second + 40)
    ds = IndexedTFRecordDataset(index)
    ds[0]  # neighbours are fine
    with pytest.raises(RecordError, match=f"ds-00000.tfrecord: offset {second}: payload CRC mismatch"):
        ds[1]
    assert IndexedTFRecordDataset(index, verify_crc=False)[0][1] == 0


def test_wrong_offset_is_caught_by_the_length_crc(tmp_path):
    index = make_dataset(tmp_path)
    lines = index.read_text().splitlines()
    name, shard, off, lab = lines[1].split("\t")
    lines[1] = "\t".join([name, shard, str(int(off) + 5), lab])
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=f"offset {int(off) + 5}: length CRC mismatch"):
        IndexedTFRecordDataset(index)[1]


def test_truncated_shard(tmp_path):
    index = make_dataset(tmp_path)
    shard = tmp_path / "ds" / "ds-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-10])
    ds = IndexedTFRecordDataset(index)
    with pytest.raises(RecordError, match="ds-00001.tfrecord: offset .*truncated record"):
        ds[5]


def test_missing_shard_and_offset_past_end(tmp_path):
    index = make_dataset(tmp_path)
    with open(index, "a") as f:
        f.write("ds\t0\t999999\t0\n")
    with pytest.raises(IndexFormatError, match="offset 999999 points past the end of .*ds-00000.tfrecord"):
        IndexedTFRecordDataset(index)
    index.write_text("ds\t7\t0\t0\n")
    with pytest.raises(IndexFormatError, match="ds-00007.tfrecord is missing"):
        IndexedTFRecordDataset(index)


def test_index_format_errors(tmp_path):
    path = tmp_path / "i.txt"
    path.write_text("a\t0\t0\t1\nb\t0\t0\n")
    with pytest.raises(IndexFormatError, match=r"i.txt:2: expected 4 tab-separated columns"):
        read_index(path)
    path.write_text("a\t0\tzero\t1\n")
    with pytest.raises(IndexFormatError, match=r"i.txt:1: offset must be an integer, got 'zero'"):
        read_index(path)
    path.write_text("\n")
    with pytest.raises(IndexFormatError, match="no samples"):
        read_index(path)
    with pytest.raises(IndexFormatError, match="cannot read index"):
        read_index(tmp_path / "nope.txt")


def test_tface_layout_index_paths(tmp_path):
    path = tmp_path / "idx" / "train.txt"
    path.parent.mkdir()
    path.write_text("MS1M\t0\t0\t0\nMS1M\t2\t16\t1\nOther\t0\t0\t1\n")
    idx = read_index(path, root=tmp_path / "data")
    assert idx.files == (tmp_path / "data/MS1M/MS1M-00000.tfrecord", tmp_path / "data/MS1M/MS1M-00002.tfrecord",
                         tmp_path / "data/Other/Other-00000.tfrecord")
    assert idx.num_classes == 2 and idx.file_id.tolist() == [0, 1, 2]


def test_undecodable_image(tmp_path):
    with ShardWriter(tmp_path, "bad") as w:
        w.add(b"not a jpeg at all", label=0)
        w.add(jpeg((1, 2, 3)), label=1)
    ds = IndexedTFRecordDataset(tmp_path / "bad.txt")
    with pytest.raises(RecordError,
                       match=r"bad-00000.tfrecord: offset 0 \(index .*bad.txt:1\): cannot decode image: not a"):
        ds[0]


def test_dataloader_workers_read_everything(tmp_path):
    ds = IndexedTFRecordDataset(make_dataset(tmp_path, n=8))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    labels = torch.cat([lab for _, lab in loader]).tolist()
    assert labels == [0, 0, 1, 1, 2, 2, 3, 3]

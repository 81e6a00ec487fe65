"""The loader's side of bad input (issue list), the skip policy, label gaps, extra keys and multi-branch runs."""

from __future__ import annotations

import io
import json
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.data.base import LabelGapError, collate_faces
from tface.core.data.branches import BranchLoader, BranchSpec
from tface.core.data.dataset import IndexedTFRecordDataset
from tface.core.data.errors import DataError
from tface.core.data.index import IndexFormatError, read_index
from tface.core.data.tfrecord import RecordError, bytes_feature, frame, pread_record
from tface.core.data.writer import ShardWriter
from tface.core.train.trainer import Trainer, TrainingError


def jpeg(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make(tmp_path, n=12, classes=3, shard_size=5, name="ds", labels=None):
    with ShardWriter(tmp_path, name, shard_size=shard_size) as w:
        for i in range(n):
            w.add(jpeg(i), label=labels[i] if labels is not None else i % classes)
    return tmp_path / f"{name}.txt"


def rows(index_path):
    return [line.split("\t") for line in index_path.read_text().splitlines()]


def flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


# --- each bad input of the issue names the file and the offset or line -------------------------------------


def test_flipped_payload_byte(tmp_path):
    index = make(tmp_path)
    name, shard, off, _ = rows(index)[2]
    flip(tmp_path / name / f"{name}-{int(shard):05d}.tfrecord", int(off) + 20)
    ds = IndexedTFRecordDataset(index)
    with pytest.raises(RecordError, match=rf"ds-00000.tfrecord: offset {off}: payload CRC mismatch"):
        ds[2]
    assert ds[1][1] == 1 and ds[3][1] == 0  # neighbours unaffected


def test_flipped_length_byte(tmp_path):
    index = make(tmp_path)
    name, shard, off, _ = rows(index)[3]
    flip(tmp_path / name / f"{name}-{int(shard):05d}.tfrecord", int(off) + 1)  # inside the u64 length
    with pytest.raises(RecordError, match=rf"ds-00000.tfrecord: offset {off}: length CRC mismatch"):
        IndexedTFRecordDataset(index)[3]


def test_truncated_shard_names_file_and_offset(tmp_path):
    index = make(tmp_path)
    shard = tmp_path / "ds" / "ds-00002.tfrecord"
    last_off = int(rows(index)[11][2])
    shard.write_bytes(shard.read_bytes()[: last_off + 30])
    ds = IndexedTFRecordDataset(index)
    with pytest.raises(RecordError, match=rf"ds-00002.tfrecord: offset {last_off}: truncated record"):
        ds[11]


def test_offset_past_end_is_found_at_open_with_the_index_line(tmp_path):
    index = make(tmp_path)
    lines = index.read_text().splitlines()
    lines[6] = "ds\t1\t99999\t0"
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(IndexFormatError, match=r"ds.txt:7: offset 99999 points past the end of .*ds-00001.tfrecord"):
        IndexedTFRecordDataset(index)


@pytest.mark.parametrize("line, message", [
    ("ds\t0\t0", r"i.txt:2: expected 4 tab-separated columns .* got 3 \(a 3-column pack index has no labels"),
    ("ds\t0\t0\t1\textra", r"i.txt:2: expected 4 tab-separated columns .* got 5"),
    ("ds\t0\t0\tcat", r"i.txt:2: label must be an integer, got 'cat'"),
    ("ds\t0\t0\t1.5", r"i.txt:2: label must be an integer, got '1.5'"),
    ("ds\tx\t0\t1", r"i.txt:2: shard must be an integer"),
    ("ds\t0\t-16\t1", r"i.txt:2: negative shard, offset or label"),
])
def test_malformed_index_lines(tmp_path, line, message):
    path = tmp_path / "i.txt"
    path.write_text(f"ds\t0\t0\t0\n{line}\n")
    with pytest.raises(IndexFormatError, match=message):
        read_index(path)


def test_empty_index_and_missing_shard(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(IndexFormatError, match=r"empty.txt: the index has no samples"):
        IndexedTFRecordDataset(empty)
    index = make(tmp_path)
    (tmp_path / "ds" / "ds-00001.tfrecord").unlink()
    with pytest.raises(IndexFormatError, match=r"ds.txt:6: shard file .*ds-00001.tfrecord is missing \(5 samples"):
        IndexedTFRecordDataset(index)  # at open, not mid-epoch


def test_undecodable_jpeg(tmp_path):
    with ShardWriter(tmp_path, "bad") as w:
        w.add(jpeg(0), 0)
        w.add(jpeg(1)[:40], 1)  # a JPEG cut short
    ds = IndexedTFRecordDataset(tmp_path / "bad.txt")
    off = rows(tmp_path / "bad.txt")[1][2]
    with pytest.raises(RecordError, match=rf"bad-00000.tfrecord: offset {off} \(index .*bad.txt:2\): cannot decode"):
        ds[1]


# --- label spaces with gaps ---------------------------------------------------------------------------------


def test_label_gaps_warn_error_compact(tmp_path):
    index = make(tmp_path, n=6, labels=[0, 0, 2, 2, 7, 7])
    ds = IndexedTFRecordDataset(index)
    assert ds.num_classes == 8
    assert ds.label_message is not None and "5 of them have no sample (e.g. 1, 3, 4, 5, 6)" in ds.label_message
    assert "classifier gets 8 classes" in ds.label_message
    with pytest.raises(LabelGapError, match=r"ds.txt: labels span 0..7 but 5 of them have no sample"):
        IndexedTFRecordDataset(index, label_gaps="error")
    compact = IndexedTFRecordDataset(index, label_gaps="compact")
    assert compact.num_classes == 3 and [compact[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert IndexedTFRecordDataset(make(tmp_path / "ok", n=6)).label_message is None


# --- the skip policy ----------------------------------------------------------------------------------------


def test_skip_replaces_counts_and_logs(tmp_path, caplog):
    index = make(tmp_path)
    name, shard, off, _ = rows(index)[4]
    flip(tmp_path / name / f"{name}-{int(shard):05d}.tfrecord", int(off) + 30)
    ds = IndexedTFRecordDataset(index, on_error="skip")
    good = IndexedTFRecordDataset(index)
    with caplog.at_level(logging.WARNING, logger="tface.data"):
        img, label = ds[4]
    assert torch.equal(img, good[5][0]) and label == 5 % 3  # the next good sample stands in
    assert ds.skipped == 1
    assert f"ds-00000.tfrecord: offset {off}: payload CRC mismatch" in caplog.text


def test_skip_count_is_shared_by_dataloader_workers(tmp_path):
    index = make(tmp_path, n=20, shard_size=20)
    shard = tmp_path / "ds" / "ds-00000.tfrecord"
    for r in (rows(index)[3], rows(index)[11], rows(index)[17]):
        flip(shard, int(r[2]) + 25)
    ds = IndexedTFRecordDataset(index, on_error="skip")
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate_faces)
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == 20  # shapes never change
    assert ds.skipped == 3


def test_all_bad_gives_up_with_a_clear_error(tmp_path):
    with ShardWriter(tmp_path, "junk") as w:
        for i in range(3):
            w.add(b"junk", i)
    ds = IndexedTFRecordDataset(tmp_path / "junk.txt", on_error="skip")
    with pytest.raises(DataError, match="3 bad samples in a row from here"):
        ds[0]


# --- reading details ----------------------------------------------------------------------------------------


def test_extra_keys_round_trip_and_image_only_records(tmp_path):
    with ShardWriter(tmp_path, "x", extra_keys=True) as w:
        w.add(jpeg(1), 4, path="alice/001.jpg", landmarks=[1, 2, 3, 4, 5, 6, 7, 8, 9.5, 10])
        w.add(jpeg(2), 2)
    ds = IndexedTFRecordDataset(tmp_path / "x.txt")
    ex = ds.read_example(0)
    assert ex["label"].tolist() == [4] and ex["path"] == [b"alice/001.jpg"]
    assert ex["landmarks"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9.5, 10]
    assert set(ds.read_example(1)) == {"image", "label"}
    assert ds.read_image_bytes(0) == jpeg(1) and ds[1][1] == 2
    with pytest.raises(ValueError, match="10 numbers"):
        ShardWriter(tmp_path, "y", extra_keys=True).add(jpeg(1), 0, landmarks=[1, 2])


def test_pread_reads_records_larger_than_the_hint(tmp_path):
    payload = b"\x0a" + b"z" * 5000
    path = tmp_path / "r.bin"
    path.write_bytes(frame(b"small") + frame(payload))
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_record(fd, 0, size_hint=64) == b"small"
        assert pread_record(fd, 21, size_hint=64) == payload  # second read fetches the rest
        with pytest.raises(RecordError, match="offset 21: truncated record"):
            path.write_bytes(frame(b"small") + frame(payload)[:-10])
            pread_record(fd, 21, size_hint=64)
    finally:
        os.close(fd)


def varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def ld(field: int, data: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(data)) + data


def test_bytes_feature_fast_path_and_unusual_field_order():
    feature = ld(1, ld(1, b"JPEG"))
    canonical = ld(1, ld(1, ld(1, b"image") + ld(2, feature)))
    assert bytes_feature(canonical, "image") == b"JPEG" and bytes_feature(canonical, "label") is None
    # protobuf allows the map value before its key; the fast path falls back to the full parser
    reordered = ld(1, ld(1, ld(2, feature) + ld(1, b"image")))
    assert bytes_feature(reordered, "image") == b"JPEG"
    # a second key before "image", with an int64 feature
    other = ld(1, ld(1, b"label") + ld(2, ld(3, ld(1, varint(7)))))
    assert bytes_feature(ld(1, ld(1, other) + ld(1, ld(1, b"image") + ld(2, feature))), "image") == b"JPEG"
    assert struct.unpack("<Q", frame(canonical)[:8])[0] == len(canonical)


def test_collate_is_channels_last_and_exact(tmp_path):
    ds = IndexedTFRecordDataset(make(tmp_path, n=4))
    images, labels = collate_faces([ds[i] for i in range(4)])
    assert images.shape == (4, 3, 16, 16) and images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images, torch.stack([ds[i][0] for i in range(4)])) and labels.tolist() == [0, 1, 2, 0]


# --- branches and the trainer -------------------------------------------------------------------------------


def test_branch_loader_concatenates_and_loops_the_shorter_branch(tmp_path):
    a = IndexedTFRecordDataset(make(tmp_path / "a", n=12, classes=3))
    b = IndexedTFRecordDataset(make(tmp_path / "b", n=6, classes=2))
    loader = BranchLoader([BranchSpec("a", a, 4), BranchSpec("b", b, 3, weight=0.5)], seed=3)
    assert len(loader) == 3  # max(12 // 4, 6 // 3)
    seen_b = []
    for batch in loader:
        assert batch.images.shape == (7, 3, 16, 16) and batch.sizes == (4, 3) and batch.names == ("a", "b")
        ya, yb = batch.labels
        xa, xb = batch.split(batch.images)
        assert torch.equal(xa, batch.images[:4]) and torch.equal(xb, batch.images[4:])
        seen_b.append(yb)
    assert loader.branches[1].epoch == 1  # b finished a pass and started its next one
    assert sorted(torch.cat(seen_b[:2]).tolist()) == sorted(b.labels_np.tolist())


def tfrecord_recipe(tmp_path, tables: str, *overrides: str):
    text = TOY_RECIPE.replace('[data]\nname = "toydata"\nclasses = 4\n', tables)
    text = text.replace('[[eval]]\nname = "toyeval"\n', "")
    path = tmp_path / "r.toml"
    path.write_text(text)
    return recipe.load(path, list(overrides))


def test_trainer_two_branches_have_their_own_classifiers(toy_plugins, tmp_path):
    make(tmp_path / "a", n=40, classes=4, shard_size=16)
    make(tmp_path / "b", n=30, classes=3, shard_size=16)
    tables = ('[[data]]\nname = "tfrecord"\nindex = "a/ds.txt"\nbatch_size = 8\n\n'
              '[[data]]\nname = "tfrecord"\nbranch = "second"\nindex = "b/ds.txt"\nbatch_size = 6\nweight = 0.5\n'
              'sampler = "balanced"\nsampler_k = 2\n')
    r = tfrecord_recipe(tmp_path, tables, "train.max_steps=12", "train.log_every=4")
    trainer = Trainer(r, tmp_path / "run", echo=lambda m: None)
    trainer.run()
    assert {k: c.weight.shape[0] for k, c in trainer.classifiers.items()} == {"tfrecord": 4, "second": 3}
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert set(metrics[-1]["branches"]) == {"tfrecord", "second"}
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["classifiers"]) == {"tfrecord", "second"}


def test_trainer_skip_policy_reports_the_count(toy_plugins, tmp_path):
    index = make(tmp_path / "a", n=40, classes=4, shard_size=40)
    flip(tmp_path / "a" / "ds" / "ds-00000.tfrecord", int(rows(index)[7][2]) + 30)
    tables = '[data]\nname = "tfrecord"\nindex = "a/ds.txt"\non_error = "skip"\n'
    messages: list[str] = []
    out = Trainer(tfrecord_recipe(tmp_path, tables, "train.max_steps=6", "train.batch_size=20"), tmp_path / "run",
                  echo=messages.append).run()
    assert out["summary"]["skipped_samples"] == {"tfrecord": 3}  # 6 steps = 3 passes over 40 samples
    assert any("skipped bad samples: tfrecord: 3" in m for m in messages)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["summary"]["skipped_samples"] == {"tfrecord": 3}


def test_trainer_error_policy_names_step_file_and_offset(toy_plugins, tmp_path):
    index = make(tmp_path / "a", n=40, classes=4, shard_size=40)
    off = int(rows(index)[7][2])
    flip(tmp_path / "a" / "ds" / "ds-00000.tfrecord", off + 30)
    tables = '[data]\nname = "tfrecord"\nindex = "a/ds.txt"\n'
    r = tfrecord_recipe(tmp_path, tables, "train.max_steps=6", "train.batch_size=20", "train.num_workers=1")
    with pytest.raises(TrainingError, match=rf"step [12]: .*ds-00000.tfrecord: offset {off}: payload CRC mismatch"):
        Trainer(r, tmp_path / "run", echo=lambda m: None).run()


def test_trainer_refuses_label_gaps_when_asked(toy_plugins, tmp_path):
    make(tmp_path / "a", n=20, labels=[0, 5] * 10)
    tables = '[data]\nname = "tfrecord"\nindex = "a/ds.txt"\nlabel_gaps = "error"\n'
    with pytest.raises(TrainingError, match=r"data branch 'tfrecord': .*labels span 0..5 but 4 of them have no sample"):
        Trainer(tfrecord_recipe(tmp_path, tables, "train.batch_size=4"), tmp_path / "run", echo=lambda m: None).run()
    notes: list[str] = []
    tables = '[data]\nname = "tfrecord"\nindex = "a/ds.txt"\n'
    Trainer(tfrecord_recipe(tmp_path, tables, "train.batch_size=4", "train.max_steps=2"), tmp_path / "run2",
            echo=notes.append).run()
    assert any(m.startswith("note: ") and "the classifier gets 6 classes" in m for m in notes)

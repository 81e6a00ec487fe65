"""``tface data verify`` against hand-made corruptions of small shards (bytes flipped, cut, mislabelled)."""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import crc32c
import pytest
from click.testing import CliRunner
from PIL import Image

from tface.core.cli import cli
from tface.core.data.verify import find_boundary
from tface.core.data.writer import ShardWriter


def jpeg(i: int, size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (17 * i % 256, 40, 200 - 7 * i % 200)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def masked(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def record(payload: bytes) -> bytes:
    """TFRecord framing written out from the format description, independent of tface's ``frame``."""
    n = struct.pack("<Q", len(payload))
    return n + struct.pack("<I", masked(n)) + payload + struct.pack("<I", masked(payload))


def varint(n: int) -> bytes:
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def example(key: str, value: bytes) -> bytes:
    """A one-feature ``Example`` (BytesList) encoded by hand."""
    k = key.encode()
    bytes_list = b"\x0a" + varint(len(value)) + value
    feature = b"\x0a" + varint(len(bytes_list)) + bytes_list
    entry = b"\x0a" + varint(len(k)) + k + b"\x12" + varint(len(feature)) + feature
    features = b"\x0a" + varint(len(entry)) + entry
    return b"\x0a" + varint(len(features)) + features


def write_shard(path: Path, payloads: list[bytes]) -> list[int]:
    """Write records by hand; returns their offsets."""
    offsets, data = [], b""
    for p in payloads:
        offsets.append(len(data))
        data += record(p)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return offsets


def make_data(tmp_path: Path, n: int = 6, shard_size: int = 3) -> tuple[Path, list[tuple[str, int, int, int]]]:
    with ShardWriter(tmp_path, "faces", shard_size=shard_size) as w:
        for i in range(n):
            w.add(jpeg(i), label=i % 2)
    return tmp_path / "faces.txt", w.rows


def shard(tmp_path: Path, k: int) -> Path:
    return tmp_path / "faces" / f"faces-{k:05d}.tfrecord"


def flip(path: Path, at: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


def run(*args: str):
    return CliRunner().invoke(cli, ["data", "verify", *map(str, args)])


def bad_lines(result) -> list[str]:
    """The problem lines: everything before the summary (its title starts with 'verified ')."""
    lines = result.output.splitlines()
    title = next(i for i, ln in enumerate(lines) if ln.startswith("verified "))
    return lines[:title]


def test_clean_data_exits_zero_for_index_folder_and_shard(tmp_path):
    index, rows = make_data(tmp_path)
    for target in (index, tmp_path, shard(tmp_path, 1)):
        result = run(target)
        assert result.exit_code == 0, result.output
        assert bad_lines(result) == []
        assert [ln.split() for ln in result.output.splitlines()][-1] == ["bad", "0"]
    result = run(index, "--json")
    report = json.loads(result.output)
    sizes = sum(shard(tmp_path, k).stat().st_size for k in range(2))
    assert result.exit_code == 0
    assert (report["files"], report["records"], report["bytes"], report["bad"]) == (2, 6, sizes, 0)
    assert report["index_lines"] == 6 and report["problems"] == []


def test_help():
    result = CliRunner().invoke(cli, ["data", "verify", "--help"])
    assert result.exit_code == 0 and "--no-decode" in result.output and "--workers" in result.output


def test_payload_flip_is_reported_at_that_record_only(tmp_path):
    index, rows = make_data(tmp_path, n=6, shard_size=6)
    offsets = [r[2] for r in rows]
    path = shard(tmp_path, 0)
    flip(path, offsets[1] + 12 + 20)  # inside record 1's payload
    flip(path, offsets[4] + 12 + 30)  # and record 4's: proves the scan went on
    result = run(index, "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    got = [(p["offset"], p["reason"]) for p in report["problems"]]
    assert got == [(offsets[1], "payload CRC mismatch (corrupted record)"),
                   (offsets[4], "payload CRC mismatch (corrupted record)")]
    assert report["records"] == 6
    text = run(index)
    assert bad_lines(text) == [f"{path}: offset {offsets[1]}: payload CRC mismatch (corrupted record)",
                               f"{path}: offset {offsets[4]}: payload CRC mismatch (corrupted record)"]


def test_length_flip_resynchronises_on_the_next_record(tmp_path):
    index, rows = make_data(tmp_path, n=6, shard_size=6)
    offsets = [r[2] for r in rows]
    path = shard(tmp_path, 0)
    flip(path, offsets[2] + 1, 0x01)  # record 2's length
    flip(path, offsets[4] + 12 + 25)  # a later payload: must still be found
    result = run(path)
    assert result.exit_code == 1
    assert bad_lines(result) == [
        f"{path}: offset {offsets[2]}: length CRC mismatch; skipped bytes {offsets[2]}..{offsets[3]} "
        f"({offsets[3] - offsets[2]} bytes) to the next record boundary",
        f"{path}: offset {offsets[4]}: payload CRC mismatch (corrupted record)",
    ]
    # an index line pointing into the skipped bytes is named by line
    with index.open("a") as f:
        f.write(f"faces\t0\t{offsets[2] + 7}\t0\n")
    report = json.loads(run(index, "--json").output)
    assert {"file": str(index), "offset": None, "line": 7,
            "reason": f"offset {offsets[2] + 7} lies in the damaged bytes {offsets[2]}..{offsets[3]} of {path}"
            } in report["problems"]


def test_length_flip_in_the_last_record_reports_the_rest_unreadable(tmp_path):
    index, rows = make_data(tmp_path, n=3, shard_size=3)
    offsets = [r[2] for r in rows]
    path = shard(tmp_path, 0)
    size = path.stat().st_size
    flip(path, offsets[2] + 9)  # the length CRC itself
    result = run(path)
    assert bad_lines(result) == [f"{path}: offset {offsets[2]}: length CRC mismatch; no record boundary follows, "
                                 f"bytes {offsets[2]}..{size} are unreadable"]


def test_truncated_shard(tmp_path):
    index, rows = make_data(tmp_path, n=6, shard_size=3)
    offsets = [r[2] for r in rows[3:]]
    path = shard(tmp_path, 1)
    data = path.read_bytes()
    path.write_bytes(data[:offsets[2] + 40])
    result = run(index)
    assert result.exit_code == 1
    need = len(data) - offsets[2]
    assert bad_lines(result) == [f"{path}: offset {offsets[2]}: truncated record (needs {need} bytes, "
                                 "40 left in the file)"]
    path.write_bytes(data[:offsets[2] + 5])
    assert bad_lines(run(path)) == [f"{path}: offset {offsets[2]}: truncated record header (5 of 12 bytes)"]


def test_index_offset_past_the_end_and_off_boundary(tmp_path):
    index, rows = make_data(tmp_path, n=4, shard_size=4)
    path = shard(tmp_path, 0)
    size = path.stat().st_size
    with index.open("a") as f:
        f.write(f"faces\t0\t{size + 100}\t1\n")
        f.write(f"faces\t0\t{rows[1][2] + 3}\t1\n")
        f.write(f"faces\t0\t{rows[2][2]}\t0\n")  # a second line on a real boundary is fine
    result = run(index)
    assert result.exit_code == 1
    assert bad_lines(result) == [
        f"{index}:5: offset {size + 100} points past the end of {path} ({size} bytes)",
        f"{index}:6: offset {rows[1][2] + 3} is not a record boundary of {path}",
    ]


def test_missing_shard_is_named_by_index_line(tmp_path):
    index, rows = make_data(tmp_path, n=6, shard_size=3)
    shard(tmp_path, 1).unlink()
    result = run(index)
    assert result.exit_code == 1
    assert bad_lines(result) == [f"{index}:4: shard file {shard(tmp_path, 1)} is missing (3 index lines point "
                                 "into it)"]


def test_undecodable_image_and_missing_image_key(tmp_path):
    good = jpeg(1)
    path = tmp_path / "x" / "x-00000.tfrecord"
    offsets = write_shard(path, [example("image", good), example("image", good[: len(good) // 2]),
                                 example("face", good), example("image", good), b"\x0a\x05\x0a\x03\xff"])
    result = run(path, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.output)["problems"]
    assert [p["offset"] for p in problems] == [offsets[1], offsets[2], offsets[4]]
    assert problems[0]["reason"].startswith(f"cannot decode image ({len(good) // 2} bytes)")
    assert problems[1]["reason"] == "record has no 'image' feature (keys: face)"
    assert problems[2]["reason"].startswith("not a tf.train.Example")
    # without decoding, only the structural problems remain
    problems = json.loads(run(path, "--json", "--no-decode").output)["problems"]
    assert [p["offset"] for p in problems] == [offsets[2], offsets[4]]


def test_workers_give_the_same_report(tmp_path):
    index, rows = make_data(tmp_path, n=9, shard_size=3)
    flip(shard(tmp_path, 0), rows[1][2] + 30)
    flip(shard(tmp_path, 2), rows[7][2] + 2, 0x01)
    one = run(tmp_path, "--json")
    two = run(tmp_path, "--json", "--workers", "3")
    assert one.exit_code == two.exit_code == 1
    assert json.loads(one.output) == json.loads(two.output)
    assert len(json.loads(one.output)["problems"]) == 2


def test_bad_targets_are_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world\n")
    result = run(tmp_path / "notes.txt")
    assert result.exit_code != 0
    assert f"{tmp_path / 'notes.txt'}:1: expected 4 tab-separated columns" in result.output
    (tmp_path / "empty").mkdir()
    result = run(tmp_path / "empty")
    assert result.exit_code != 0 and "no *.tfrecord files" in result.output


def test_shard_without_tfrecord_suffix_is_recognised(tmp_path):
    path = tmp_path / "data.rec"
    write_shard(path, [example("image", jpeg(i)) for i in range(3)])
    result = run(path, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["records"] == 3


def test_find_boundary_matches_brute_force():
    rng = random.Random(5)
    noise = bytes(rng.randrange(256) for _ in range(3000))
    recs = [record(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))) for _ in range(4)]
    buf = noise[:500] + recs[0] + noise[500:900] + b"\x00" * 40 + recs[1] + recs[2] + noise[900:] + recs[3]

    def brute(start: int) -> int | None:
        for q in range(start, len(buf) - 11):
            if masked(buf[q:q + 8]) == struct.unpack("<I", buf[q + 8:q + 12])[0]:
                return q
        return None

    for start in [0, 1, 499, 500, 501, 950, 1500, len(buf) - 30, len(buf) - 11]:
        assert find_boundary(buf, start) == brute(start), start
    assert find_boundary(buf, len(buf) - 5) is None


@pytest.mark.parametrize("where", ["length", "payload_crc"])
def test_flips_in_each_header_field(tmp_path, where):
    index, rows = make_data(tmp_path, n=3, shard_size=3)
    offsets = [r[2] for r in rows]
    path = shard(tmp_path, 0)
    size = path.stat().st_size
    if where == "length":
        flip(path, offsets[0] + 7, 0x80)  # top length byte: an absurd length, caught by the CRC first
        expected = [f"{path}: offset 0: length CRC mismatch; skipped bytes 0..{offsets[1]} ({offsets[1]} bytes) "
                    "to the next record boundary"]
    else:
        flip(path, size - 1)  # last record's payload CRC
        expected = [f"{path}: offset {offsets[2]}: payload CRC mismatch (corrupted record)"]
    assert bad_lines(run(path)) == expected

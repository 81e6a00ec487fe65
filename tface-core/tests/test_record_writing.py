"""Writing records without protobuf: tface's Example serialiser and ShardWriter against the ``tfrecord`` package.

The reference is the ``tfrecord`` package's own writer, run in a subprocess. Under protobuf's pure-Python
backend it writes map entries in insertion order, so its output is fixed and must match ours byte for byte;
its default upb backend writes them in a per-process hash order, so there the records must hold the same
map entries (the same bytes, reordered).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tface.core.data.index import read_index
from tface.core.data.tfrecord import HEADER, parse_example, read_record_at, serialize_example
from tface.core.data.writer import ShardWriter

#: (label, landmarks, path) per record of the extra-keys shard; labels include 0 and ones needing 6 to 9 varint bytes
EXTRA_CASES = [
    (0, None, None),
    (7, [0.1, 1 / 3, 111.99999, -0.0, 1e-42, 3.4e38, 56.25, 71.5, 40.125, 92.0], None),
    (2**40, None, "id_7/img 0001.jpg"),
    (2**63 - 1, [float(i) for i in range(10)], "Zoë/李/face—1.jpg"),
    (300, [1.5] * 10, ""),
]

REFERENCE = """
import importlib.util, json, sys, types

# The package's __init__ imports torch (seconds); its writer needs only tfrecord.example_pb2, so the
# package is entered without running __init__: the writer code is the package's own, unchanged.
pkg = types.ModuleType("tfrecord")
pkg.__path__ = list(importlib.util.find_spec("tfrecord").submodule_search_locations)
sys.modules["tfrecord"] = pkg
from tfrecord.writer import TFRecordWriter
from google.protobuf.internal import api_implementation
print(api_implementation.Type())

spec = json.load(open(sys.argv[1]))
for name, records in spec.items():
    w = TFRecordWriter(sys.argv[2] + "/" + name + ".tfrecord")
    for image_hex, label, landmarks, path in records:
        datum = {"image": (bytes.fromhex(image_hex), "byte")}
        if label is not None:
            datum["label"] = (label, "int")
        if landmarks is not None:
            datum["landmarks"] = (landmarks, "float")
        if path is not None:
            datum["path"] = (path.encode("utf-8"), "byte")
        w.write(datum)
    w.close()
"""


def images(n: int) -> list[bytes]:
    """Byte strings of the lengths that matter for varints (0, 1, 127, 128, 16384) plus JPEG-like bytes."""
    rng = np.random.default_rng(0)
    sizes = [1, 127, 128, 16384, 3000, 0, 5]
    return [b"\xff\xd8\xff" + rng.integers(0, 256, sizes[i % len(sizes)], dtype=np.uint8).tobytes()
            if i % len(sizes) != 5 else b"" for i in range(n)]


def write_ours(root, plain: list[bytes], extra: list[bytes]) -> None:
    with ShardWriter(root, "plain") as w:
        for i, img in enumerate(plain):
            w.add(img, label=i)
    with ShardWriter(root, "extra", extra_keys=True) as w:
        for img, (label, landmarks, path) in zip(extra, EXTRA_CASES):
            w.add(img, label=label, landmarks=landmarks, path=path)


def write_reference(tmp_path, plain: list[bytes], extra: list[bytes], backend: str | None) -> dict[str, bytes]:
    spec = {"plain": [[img.hex(), None, None, None] for img in plain],
            "extra": [[img.hex(), *case] for img, case in zip(extra, EXTRA_CASES)]}
    out = tmp_path / f"ref-{backend or 'default'}"
    out.mkdir()
    (out / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ)
    env.pop("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", None)
    if backend is not None:
        env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = backend
    result = subprocess.run([sys.executable, "-c", REFERENCE, str(out / "spec.json"), str(out)], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert backend is None or result.stdout.strip() == backend
    return {name: (out / f"{name}.tfrecord").read_bytes() for name in spec}


def split_records(data: bytes) -> list[bytes]:
    """The payloads of a shard, walking the u64 lengths (no CRC check: that is compared byte for byte)."""
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 8], "little")
        out.append(data[pos + HEADER:pos + HEADER + n])
        pos += HEADER + n + 4
    assert pos == len(data)
    return out


def map_entries(example: bytes) -> list[bytes]:
    """The serialised map entries of an Example whose lengths fit one varint byte or more (parsed by hand)."""
    def varint(buf, pos):
        value = shift = 0
        while True:
            b = buf[pos]
            value |= (b & 0x7F) << shift
            pos += 1
            if b < 0x80:
                return value, pos
            shift += 7

    assert example[0] == 0x0A
    n, pos = varint(example, 1)
    assert pos + n == len(example)
    entries = []
    while pos < len(example):
        assert example[pos] == 0x0A
        n, start = varint(example, pos + 1)
        entries.append(example[pos:start + n])
        pos = start + n
    return entries


@pytest.fixture
def shards(tmp_path):
    plain, extra = images(7), images(len(EXTRA_CASES))[::-1]
    write_ours(tmp_path / "ours", plain, extra)
    ours = {name: (tmp_path / "ours" / name / f"{name}-00000.tfrecord").read_bytes() for name in ("plain", "extra")}
    return tmp_path, plain, extra, ours


def test_shard_writer_matches_the_tfrecord_package_byte_for_byte(shards):
    tmp_path, plain, extra, ours = shards
    reference = write_reference(tmp_path, plain, extra, "python")
    assert ours["plain"] == reference["plain"]
    assert ours["extra"] == reference["extra"]


def test_shard_writer_matches_the_default_protobuf_backend_up_to_map_order(shards):
    tmp_path, plain, extra, ours = shards
    reference = write_reference(tmp_path, plain, extra, None)
    for name in ("plain", "extra"):
        mine, theirs = split_records(ours[name]), split_records(reference[name])
        assert len(mine) == len(theirs) == (7 if name == "plain" else len(EXTRA_CASES))
        for a, b in zip(mine, theirs):
            assert len(a) == len(b)
            assert sorted(map_entries(a)) == sorted(map_entries(b))
            # ours: keys in the order image, label, landmarks, path (sorted, as deterministic protobuf does)
            keys = list(parse_example(a))
            assert keys == sorted(keys) and keys[0] == "image"


def first_bytes(value) -> bytes:
    """A bytes feature as tface's parser gives it (a list) or as the tfrecord package does (bytes)."""
    assert isinstance(value, (list, bytes)), type(value)
    return value[0] if isinstance(value, list) else value


def test_records_read_back_by_the_tfrecord_package_and_by_tface(shards):
    from tfrecord.reader import tfrecord_loader

    tmp_path, plain, extra, _ = shards
    root = tmp_path / "ours"
    got = list(tfrecord_loader(str(root / "extra" / "extra-00000.tfrecord"), None))
    assert len(got) == len(EXTRA_CASES)
    index = read_index(root / "extra.txt")
    with open(index.files[0], "rb") as f:
        for k, (img, (label, landmarks, path)) in enumerate(zip(extra, EXTRA_CASES)):
            ours = parse_example(read_record_at(f, int(index.offsets[k])))
            assert int(index.labels[k]) == label
            for ex in (got[k], ours):
                assert first_bytes(ex["image"]) == img
                assert np.asarray(ex["label"]).tolist() == [label]
                if landmarks is None:
                    assert "landmarks" not in ex
                else:
                    assert np.array_equal(np.asarray(ex["landmarks"]), np.asarray(landmarks, dtype=np.float32))
                if path is None:
                    assert "path" not in ex
                else:
                    assert first_bytes(ex["path"]).decode("utf-8") == path
    plain_got = [first_bytes(r["image"]) for r in tfrecord_loader(str(root / "plain" / "plain-00000.tfrecord"), None)]
    assert plain_got == plain


def test_serialize_example_round_trips_every_feature_kind():
    features = {
        "b": [b"", b"x" * 200, b"\x00\xff"],
        "f": np.asarray([-1.5, 0.0, np.inf, 2.0**-149], dtype=np.float32),
        "i": np.asarray([0, -1, 2**63 - 1, -(2**63), 127, 128], dtype=np.int64),
        "empty_b": [],
        "empty_f": np.zeros(0, dtype=np.float32),
        "empty_i": np.zeros(0, dtype=np.int64),
    }
    got = parse_example(serialize_example(features))
    assert list(got) == list(features)
    assert got["b"] == features["b"] and got["empty_b"] == []
    for key in ("f", "i", "empty_f", "empty_i"):
        assert got[key].dtype == features[key].dtype and np.array_equal(got[key], features[key])
    # negative int64 are ten-byte two's-complement varints, as protobuf writes them
    assert serialize_example({"i": np.asarray([-1])}).endswith(b"\x1a\x0c\x0a\x0a" + b"\xff" * 9 + b"\x01")
    assert serialize_example({}) == b"\x0a\x00"
    with pytest.raises(TypeError, match="feature 'x'"):
        serialize_example({"x": np.asarray(["a"])})
    with pytest.raises(ValueError, match="does not fit in int64"):
        serialize_example({"x": np.asarray([2**64 - 1], dtype=np.uint64)})


def test_shard_writer_rejects_labels_beyond_int64(tmp_path):
    with ShardWriter(tmp_path, "w", extra_keys=True) as w, pytest.raises(ValueError, match="fit in int64"):
        w.add(b"x", label=2**63)


CLASHING_MODULE = '''
"""A generated-style module registering another ``example.proto`` (as TFace's own example_pb2 does)."""
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.internal import builder

_fdp = descriptor_pb2.FileDescriptorProto(name="example.proto", package="tface_clash", syntax="proto3")
_msg = _fdp.message_type.add(name="Example")
_msg.field.add(name="blob", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
               label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
DESCRIPTOR = descriptor_pool.Default().AddSerializedFile(_fdp.SerializeToString())
builder.BuildTopDescriptorsAndMessages(DESCRIPTOR, "example_pb2", globals())
'''


def test_packing_works_in_a_process_that_holds_another_example_proto(tmp_path):
    (tmp_path / "example_pb2.py").write_text(CLASHING_MODULE)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import example_pb2
        assert example_pb2.Example(blob=b"q").blob == b"q"
        from tface.core.data.writer import ShardWriter
        with ShardWriter({str(tmp_path)!r}, "ds", extra_keys=True) as w:
            for i in range(3):
                w.add(bytes([i]) * 5, label=i, landmarks=[0.5] * 10, path=f"p{{i}}.jpg")
        assert "tfrecord" not in sys.modules, "writing must not import the tfrecord package"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr[-2000:]
    index = read_index(tmp_path / "ds.txt")
    with open(index.files[0], "rb") as f:
        assert [parse_example(read_record_at(f, int(o)))["image"] for o in index.offsets] == \
            [[bytes([i]) * 5] for i in range(3)]
    # and in a clean process, writing never loads protobuf at all
    clean = textwrap.dedent(f"""
        import sys
        from tface.core.data.writer import ShardWriter
        with ShardWriter({str(tmp_path)!r}, "clean", extra_keys=True) as w:
            w.add(b"x", label=1, landmarks=[1.0] * 10, path="a.jpg")
        assert "google.protobuf" not in sys.modules, sorted(m for m in sys.modules if "proto" in m)
    """)
    subprocess.run([sys.executable, "-c", clean], check=True)

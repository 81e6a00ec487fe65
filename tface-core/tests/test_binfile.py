"""Verification ``.bin`` files: round trip, Python 2 pickles, and the restricted unpickler."""

from __future__ import annotations

import _codecs
import os
import pickle
import struct

import numpy as np
import pytest

from tface.core.data.binfile import BinFormatError, read_bin, write_bin

JPEG_LIKE = [b"\xff\xd8\xff\xe0" + bytes(range(256)) * k + b"\xff\xd9" for k in (1, 2, 3, 4)]


def py2_pickle(images: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's ``pickle.dump((bins, issame), f, protocol=2)`` writes: byte strings as py2 ``str``."""
    out = bytearray(b"\x80\x02]q\x00(")  # PROTO 2, EMPTY_LIST, BINPUT, MARK
    for b in images:
        if len(b) < 256:
            out += b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING
        else:
            out += b"T" + struct.pack("<i", len(b)) + b  # BINSTRING
    out += b"e]q\x01("  # APPENDS, EMPTY_LIST, BINPUT, MARK
    out += b"".join(b"\x88" if x else b"\x89" for x in issame)  # NEWTRUE / NEWFALSE
    out += b"e\x86q\x02."  # APPENDS, TUPLE2, BINPUT, STOP
    return bytes(out)


def test_round_trip(tmp_path):
    path = write_bin(tmp_path / "pairs.bin", JPEG_LIKE, [True, False])
    images, issame = read_bin(path)
    assert images == JPEG_LIKE
    assert issame.dtype == np.bool_ and issame.tolist() == [True, False]
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.bin"]  # no temp file left behind


def test_write_rejects_length_mismatch(tmp_path):
    with pytest.raises(ValueError):
        write_bin(tmp_path / "x.bin", JPEG_LIKE[:3], [True, False])


def test_python2_pickle(tmp_path):
    path = tmp_path / "py2.bin"
    path.write_bytes(py2_pickle(JPEG_LIKE, [True, False]))
    images, issame = read_bin(path)  # non-ASCII py2 str: falls back to encoding="bytes"
    assert images == JPEG_LIKE and issame.tolist() == [True, False]

    path.write_bytes(py2_pickle([b"ab", b"cd"], [False]))  # pure ASCII py2 str loads as str first
    images, issame = read_bin(path)
    assert images == [b"ab", b"cd"] and issame.tolist() == [False]


def test_protocol2_bytes_via_codecs_encode(tmp_path):
    data = pickle.dumps((JPEG_LIKE, [True, False]), protocol=2)
    assert b"_codecs" in data  # Python 3 writes bytes as _codecs.encode(text, "latin1") here
    path = tmp_path / "p2.bin"
    path.write_bytes(data)
    images, issame = read_bin(path)
    assert images == JPEG_LIKE and issame.tolist() == [True, False]


def test_numpy_images_and_flags(tmp_path):
    arrays = [np.frombuffer(b, dtype=np.uint8).copy() for b in JPEG_LIKE]
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((arrays, np.array([True, False])), protocol=4))
    images, issame = read_bin(path)
    assert images == JPEG_LIKE and issame.tolist() == [True, False]
    path.write_bytes(pickle.dumps((JPEG_LIKE, [np.bool_(True), np.bool_(False)]), protocol=2))
    assert read_bin(path)[1].tolist() == [True, False]


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("protocol", [2, 4])
def test_forbidden_global_is_not_executed(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil(os.system, f"touch {marker}"), b"x"], [True]), protocol=protocol))
    with pytest.raises(BinFormatError, match=r"evil\.bin.*forbidden global"):
        read_bin(path)
    assert not marker.exists()

    path.write_bytes(
        pickle.dumps(([_Evil(eval, f"open({str(marker)!r}, 'w')"), b"x"], [True]), protocol=protocol)
    )
    with pytest.raises(BinFormatError, match=r"evil\.bin"):
        read_bin(path)
    assert not marker.exists()


def test_codecs_encode_only_latin1(tmp_path):
    path = tmp_path / "codec.bin"
    path.write_bytes(pickle.dumps(([_Evil(_codecs.encode, "abc", "rot13"), b"x"], [True]), protocol=2))
    with pytest.raises(BinFormatError, match=r"codec\.bin"):
        read_bin(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ((JPEG_LIKE[:3], [True, False]), "3 images for 2 pairs"),
        ((JPEG_LIKE, [1, 0]), "not a list of booleans"),
        ((JPEG_LIKE, ["yes", "no"]), "not a list of booleans"),
        ((JPEG_LIKE[:2], True), "not a list of booleans"),
        (([1, 2], [True]), "image 0 is int"),
        ((JPEG_LIKE, [True, False], "extra"), "expected a pair"),
        ({"images": JPEG_LIKE}, "expected a pair"),
    ],
)
def test_malformed_contents_name_the_file(tmp_path, payload, message):
    path = tmp_path / "malformed.bin"
    path.write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(BinFormatError, match=message) as info:
        read_bin(path)
    assert str(path) in str(info.value)


def test_unreadable_files_name_the_file(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 not a pickle at all")
    with pytest.raises(BinFormatError) as info:
        read_bin(garbage)
    assert str(garbage) in str(info.value)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(pickle.dumps((JPEG_LIKE, [True, False]), protocol=4)[:-20])
    with pytest.raises(BinFormatError, match="truncated.bin"):
        read_bin(truncated)
    with pytest.raises(BinFormatError, match="missing.bin"):
        read_bin(tmp_path / "missing.bin")

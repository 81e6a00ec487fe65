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


# --- declared sizes are bounded by the file (hand-made hostile pickles) ---------------------------------
# The C unpickler allocates a declared length (and numpy a declared shape) before reading the bytes; a tiny
# file declaring terabytes must be refused by offset, not end in MemoryError.

TB = 2**40


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_long(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def op_short_bytes(b: bytes) -> bytes:
    return b"C" + bytes([len(b)]) + b  # SHORT_BINBYTES


#: ``([<array>, b"x"], [True])``: the ops before the array and after it
#: (EMPTY_LIST MARK <array> SHORT_BINBYTES APPENDS EMPTY_LIST NEWTRUE APPEND TUPLE2 STOP)
BEFORE, AFTER = b"](", op_short_bytes(b"x") + b"e]\x88a\x86."


def array_ops(recon_shape: tuple[int, ...], state_shape: tuple[int, ...], raw: bytes,
              dtype: str = "u1") -> tuple[bytes, dict[str, int]]:
    """numpy's own pickle of an array, spelled out; returns the ops and where its REDUCE and BUILD are."""
    def shape(dims):
        return b"(" + b"".join(op_long(d) for d in dims) + b"t"  # MARK ... TUPLE

    where = {}
    ops = op_global("numpy._core.multiarray", "_reconstruct") + op_global("numpy", "ndarray")
    ops += shape(recon_shape) + op_short_bytes(b"b") + b"\x87"  # TUPLE3
    where["reconstruct"] = len(ops)
    ops += b"R"  # REDUCE
    ops += b"(K\x01" + shape(state_shape)
    ops += op_global("numpy", "dtype") + b"X" + struct.pack("<I", len(dtype)) + dtype.encode() + b"\x89\x88\x87R"
    ops += b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # the dtype's state, BUILD
    ops += b"\x89" + b"B" + struct.pack("<I", len(raw)) + raw + b"t"  # is_fortran, raw bytes, TUPLE
    where["build"] = len(ops)
    ops += b"b"  # BUILD
    return ops, where


def hostile(tmp_path, name: str, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def framed(body: bytes) -> tuple[bytes, int]:
    """Protocol 4 with one FRAME around ``body``; returns the pickle and the offset where ``body`` starts."""
    head = b"\x80\x04\x95" + struct.pack("<Q", len(body))
    return head + body, len(head)


def test_hand_made_array_pickle_loads_when_honest(tmp_path):
    before, after = BEFORE, AFTER
    ops, _ = array_ops((0,), (3,), b"xyz")
    for data in (b"\x80\x02" + before + ops + after, framed(before + ops + after)[0]):
        images, issame = read_bin(hostile(tmp_path, "honest.bin", data))
        assert images == [b"xyz", b"x"] and issame.tolist() == [True]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("bytes8", b"\x80\x04\x8e" + struct.pack("<Q", TB) + b"abcdefgh.",
         f"offset 2: BINBYTES8 declares {TB} bytes, only 9 remain in the file"),
        ("unicode8", b"\x80\x04\x8d" + struct.pack("<Q", TB) + b"abcdefgh.",
         f"offset 2: BINUNICODE8 declares {TB} bytes, only 9 remain in the file"),
        ("binbytes", b"\x80\x03B" + struct.pack("<I", 2**32 - 1) + b"ab.",
         "offset 2: BINBYTES declares 4294967295 bytes, only 3 remain in the file"),
        ("binstring", b"\x80\x02T" + struct.pack("<i", -5) + b"ab.", "offset 2: BINSTRING declares a negative length"),
        ("bytearray8", b"\x80\x05\x96" + struct.pack("<Q", TB) + b".", f"offset 2: BYTEARRAY8 declares {TB} bytes"),
        ("long4", b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b".", "offset 2: LONG4 declares 2147483647 bytes"),
        ("frame", b"\x80\x04\x95" + struct.pack("<Q", TB) + b"N.", f"offset 2: FRAME declares {TB} bytes"),
        ("memo", b"\x80\x02]r\xff\xff\xff\x7f.", "offset 3: LONG_BINPUT memo index 2147483647 exceeds the file size"),
        ("memo_text", b"\x80\x02]p99999999999\n.", "offset 3: PUT memo index b'99999999999' exceeds the file size"),
        ("bytearray_n", b"\x80\x02" + op_global("builtins", "bytearray") + op_long(TB) + b"\x85R.",
         "bytearray may only be rebuilt from bytes or a string"),
        ("no_stop", b"\x80\x02]", "offset 3: the pickle ends without its STOP opcode"),
        ("opcode", b"\x80\x02\xff.", "offset 2: unknown pickle opcode 0xff"),
    ],
)
def test_declared_lengths_beyond_the_file_are_refused(tmp_path, name, data, message):
    path = hostile(tmp_path, f"{name}.bin", data)
    with pytest.raises(BinFormatError) as info:
        read_bin(path)
    assert str(info.value).startswith(f"{path}: not a verification .bin file: ")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_numpy_shapes_beyond_the_file_are_refused_at_their_offset(tmp_path):
    before, after = BEFORE, AFTER
    # the empty array numpy builds first, declared huge
    ops, where = array_ops((TB,), (3,), b"xyz")
    path = hostile(tmp_path, "recon.bin", b"\x80\x02" + before + ops + after)
    at = 2 + len(before) + where["reconstruct"]
    with pytest.raises(BinFormatError, match=rf"recon\.bin: .*offset {at}: array of shape \({TB},\) declares {TB} "
                                             "bytes, more than the whole file"):
        read_bin(path)
    # the state set by BUILD: object arrays allocate 8 bytes per element before reading the list
    ops, where = array_ops((0,), (2**20, 2**20), b"xyz", dtype="O")
    path = hostile(tmp_path, "state.bin", b"\x80\x02" + before + ops + after)
    at = 2 + len(before) + where["build"]
    with pytest.raises(BinFormatError, match=rf"state\.bin: .*offset {at}: array of shape \(1048576, 1048576\) "
                                             f"declares {8 * TB} bytes"):
        read_bin(path)
    # the same inside a protocol-4 frame: the offset is still the file's
    data, start = framed(before + ops + after)
    path = hostile(tmp_path, "framed.bin", data)
    with pytest.raises(BinFormatError, match=rf"framed\.bin: .*offset {start + len(before) + where['build']}: "):
        read_bin(path)
    # a shape made of numpy integers (numpy.core.multiarray.scalar(dtype('<i8'), 8 bytes)) is still a shape
    dims = [(op_global("numpy._core.multiarray", "scalar") + op_global("numpy", "dtype") + b"X\x03\x00\x00\x00<i8"
             + b"\x89\x88\x87R" + op_short_bytes(struct.pack("<q", d)) + b"\x86R") for d in (2**20, 2**20)]
    ops = (op_global("numpy._core.multiarray", "_reconstruct") + op_global("numpy", "ndarray")
           + b"(" + b"".join(dims) + b"t" + op_short_bytes(b"b") + b"\x87R")
    path = hostile(tmp_path, "npints.bin", b"\x80\x02" + before + ops + after)
    with pytest.raises(BinFormatError, match=rf"npints\.bin: .*offset {2 + len(before) + len(ops) - 1}: array of "
                                             rf"shape \(1048576, 1048576\) declares {TB} bytes"):
        read_bin(path)
    # ndarray(shape, dtype) called directly
    direct = op_global("numpy", "ndarray") + b"(" + op_long(TB) + b"t" + b"X\x02\x00\x00\x00u1\x86R"
    path = hostile(tmp_path, "direct.bin", b"\x80\x02" + before + direct + after)
    at = 2 + len(before) + len(direct) - 1
    with pytest.raises(BinFormatError, match=rf"direct\.bin: .*offset {at}: array of shape \({TB},\)"):
        read_bin(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_ordinary_files_of_every_protocol_still_load(tmp_path, protocol):
    """insightface writes ``pickle.dump((bins, issame_list), f, protocol=HIGHEST)``, with bytes or arrays."""
    big = [b"\xff\xd8" + bytes(range(256)) * 300 + b"\xff\xd9", *JPEG_LIKE[:3]]  # one image larger than a frame
    path = tmp_path / f"p{protocol}.bin"
    path.write_bytes(pickle.dumps((big, [True, False]), protocol=protocol))
    images, issame = read_bin(path)
    assert images == big and issame.tolist() == [True, False]
    arrays = [np.frombuffer(b, dtype=np.uint8).copy() for b in big]
    path.write_bytes(pickle.dumps((arrays, np.array([False, True])), protocol=protocol))
    images, issame = read_bin(path)
    assert images == big and issame.tolist() == [False, True]

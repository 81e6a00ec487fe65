"""TFRecord framing and ``tf.train.Example`` codec, owned by tface.

Framing: ``u64 length (little-endian) | u32 masked CRC32C(length) | payload | u32 masked CRC32C(payload)``.
The Example parser and serialiser are hand-written (the format is a few varints), so neither reading nor
writing touches a protobuf descriptor pool: a process that already imported TensorFlow's, TFace's or the
``tfrecord`` package's generated ``Example`` module reads and writes these files just the same (importing
two generated ``example.proto`` modules into one process fails with ``KeyError: '_FLOATLIST'``).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import BinaryIO

import crc32c as _crc32c
import numpy as np

from tface.core.data.errors import DataError

__all__ = [
    "RecordError",
    "masked_crc",
    "frame",
    "read_record_at",
    "pread_record",
    "parse_example",
    "serialize_example",
    "bytes_feature",
    "HEADER",
    "FOOTER",
]

HEADER = 12  # u64 length + u32 length CRC
FOOTER = 4  # u32 payload CRC
_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RecordError(DataError):
    """A record that cannot be read: names the file and byte offset."""


def masked_crc(data: bytes) -> int:
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One framed record (what a TFRecord writer appends)."""
    length = _U64.pack(len(payload))
    return length + _U32.pack(masked_crc(length)) + payload + _U32.pack(masked_crc(payload))


def _record_length(head: bytes, offset: int, path: str, verify: bool) -> int:
    """The payload length announced by a record header (its CRC checked first: a damaged length is not read)."""
    if len(head) < HEADER:
        raise RecordError(f"{path}: offset {offset}: truncated record header ({len(head)} of {HEADER} bytes)")
    (length,) = _U64.unpack_from(head)
    if verify and masked_crc(head[:8]) != _U32.unpack_from(head, 8)[0]:
        raise RecordError(f"{path}: offset {offset}: length CRC mismatch (not a record boundary?)")
    return length


def _check_payload(payload: bytes, stored_crc: int, offset: int, path: str) -> bytes:
    if masked_crc(payload) != stored_crc:
        raise RecordError(f"{path}: offset {offset}: payload CRC mismatch (corrupted record)")
    return payload


def read_record_at(f: BinaryIO, offset: int, *, path: str = "?", verify: bool = True) -> bytes:
    """The payload of the record starting at ``offset``; raises :class:`RecordError` on any damage."""
    f.seek(offset)
    length = _record_length(f.read(HEADER), offset, path, verify)
    body = f.read(length + FOOTER)
    if len(body) < length + FOOTER:
        raise RecordError(
            f"{path}: offset {offset}: truncated record (needs {length + FOOTER} bytes, file has {len(body)})"
        )
    payload = body[:length]
    return _check_payload(payload, _U32.unpack_from(body, length)[0], offset, path) if verify else payload


def pread_record(fd: int, offset: int, *, path: str = "?", verify: bool = True,
                 size_hint: int = 65536) -> bytes:
    """Like :func:`read_record_at` on a raw file descriptor, in one ``pread`` when the record fits
    ``size_hint`` bytes (no seek, no buffering layer: the cheapest random access Python offers)."""
    buf = os.pread(fd, size_hint, offset)
    length = _record_length(buf, offset, path, verify)
    end = HEADER + length + FOOTER
    if end > len(buf):
        if len(buf) == size_hint:  # the record is larger than the hint: read the rest
            buf += os.pread(fd, end - len(buf), offset + len(buf))
        if end > len(buf):
            raise RecordError(f"{path}: offset {offset}: truncated record (needs {length + FOOTER} bytes after the "
                              f"header, file has {len(buf) - HEADER})")
    payload = buf[HEADER:HEADER + length]
    return _check_payload(payload, _U32.unpack_from(buf, HEADER + length)[0], offset, path) if verify else payload


def _varint_at(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return b, pos + 1
    result, shift = b & 0x7F, 7
    while True:
        pos += 1
        b = buf[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos + 1
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def bytes_feature(payload: bytes, key: str) -> bytes | None:
    """The first value of BytesList feature ``key`` of a serialised Example, or None when the key is absent.

    A fast path for reading the image of every training sample: it walks only the map entries and never
    builds the other features. Falls back to :func:`parse_example` for anything unusual.
    """
    want = key.encode("utf-8")
    try:
        tag, pos = _varint_at(payload, 0)
        if tag != 0x0A:
            raise ValueError
        n, pos = _varint_at(payload, pos)
        if pos + n != len(payload):
            raise ValueError
        end = pos + n
        while pos < end:  # Features: repeated map entries (field 1)
            tag, pos = _varint_at(payload, pos)
            n, pos = _varint_at(payload, pos)
            if tag != 0x0A:
                raise ValueError
            entry_end = pos + n
            tag, p = _varint_at(payload, pos)
            if tag != 0x0A:  # the value came before the key: legal, but not the layout writers produce
                raise ValueError
            klen, p = _varint_at(payload, p)
            if payload[p:p + klen] == want:
                p += klen
                tag, p = _varint_at(payload, p)  # Feature (map value, field 2)
                if tag != 0x12:
                    raise ValueError
                _, p = _varint_at(payload, p)
                tag, p = _varint_at(payload, p)  # BytesList (field 1 of Feature)
                if tag != 0x0A:
                    raise ValueError
                blen, p = _varint_at(payload, p)
                if blen == 0:  # an empty BytesList
                    raise ValueError
                tag, p = _varint_at(payload, p)  # first value
                if tag != 0x0A:
                    raise ValueError
                vlen, p = _varint_at(payload, p)
                if p + vlen > entry_end:
                    raise ValueError
                return payload[p:p + vlen]
            pos = entry_end
        return None
    except (ValueError, IndexError):
        feature = parse_example(payload).get(key)
        if feature is None:
            return None
        if not isinstance(feature, list) or not feature:
            raise ValueError(f"feature {key!r} holds no bytes") from None
        return feature[0]


# --- protobuf wire format, just enough for Example / Features / Feature / *List -----------------------


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview):
    """Yield (field number, wire type, value) where value is bytes (type 2) or int (types 0, 1, 5)."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > n:
                raise ValueError("truncated length-delimited field")
            yield number, wire, buf[pos : pos + length]
            pos += length
        elif wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 1:
            yield number, wire, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == 5:
            yield number, wire, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_feature(buf: memoryview) -> list[bytes] | np.ndarray:
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:  # BytesList
            return [bytes(v) for n, w, v in _fields(value) if n == 1 and w == 2]
        if number == 2 and wire == 2:  # FloatList (packed or not)
            floats: list[float] = []
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    floats.extend(np.frombuffer(bytes(v), dtype="<f4").tolist())
                elif n == 1 and w == 5:
                    floats.append(float(np.frombuffer(v.to_bytes(4, "little"), dtype="<f4")[0]))
            return np.asarray(floats, dtype=np.float32)
        if number == 3 and wire == 2:  # Int64List (packed or not)
            ints: list[int] = []
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    pos = 0
                    while pos < len(v):
                        x, pos = _read_varint(v, pos)
                        ints.append(_signed64(x))
                elif n == 1 and w == 0:
                    ints.append(_signed64(v))
            return np.asarray(ints, dtype=np.int64)
    return []


def parse_example(payload: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """Parse a serialised ``tf.train.Example`` into ``{key: [bytes, ...] | ndarray}``."""
    out: dict[str, list[bytes] | np.ndarray] = {}
    buf = memoryview(payload)
    for number, wire, features in _fields(buf):
        if number != 1 or wire != 2:
            continue
        for n, w, entry in _fields(features):
            if n != 1 or w != 2:
                continue
            key = None
            feature: list[bytes] | np.ndarray = []
            for en, ew, ev in _fields(entry):
                if en == 1 and ew == 2:
                    key = bytes(ev).decode("utf-8")
                elif en == 2 and ew == 2:
                    feature = _parse_feature(ev)
            if key is not None:
                out[key] = feature
    return out


_ONE_BYTE = tuple(bytes([i]) for i in range(0x80))
_LEN_TAG = (b"", b"\x0a", b"\x12", b"\x1a")  # fields 1..3, wire type 2 (length-delimited)


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2) numbered 1..3."""
    return _LEN_TAG[number] + _varint(len(data)) + data


def _serialize_feature(key: str, value: list[bytes] | tuple[bytes, ...] | np.ndarray) -> bytes:
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, (bytes, bytearray)) for v in value):
            raise TypeError(f"feature {key!r}: a list feature must hold bytes")
        return _field(1, b"".join(_field(1, bytes(v)) for v in value))  # BytesList: repeated bytes
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise TypeError(f"feature {key!r}: expected a list of bytes or a 1-D array, got {type(value).__name__}")
    if value.dtype.kind == "f":  # FloatList: packed little-endian float32
        packed = value.astype("<f4").tobytes()
        return _field(2, _field(1, packed) if packed else b"")
    if value.dtype.kind in "iu":  # Int64List: packed varints, negatives as 64-bit two's complement
        ints = value.tolist()
        if ints and (min(ints) < -(1 << 63) or max(ints) >= 1 << 63):
            raise ValueError(f"feature {key!r}: a value does not fit in int64")
        packed = b"".join(_varint(v & 0xFFFFFFFFFFFFFFFF) for v in ints)
        return _field(3, _field(1, packed) if packed else b"")
    raise TypeError(f"feature {key!r}: array dtype {value.dtype} is neither float nor integer")


def serialize_example(features: Mapping[str, list[bytes] | np.ndarray]) -> bytes:
    """A serialised ``tf.train.Example``: the inverse of :func:`parse_example`.

    ``list[bytes]`` becomes a BytesList, a float array a FloatList, an integer array an Int64List (packed,
    as protobuf's serialisers emit them). Map entries follow the mapping's order, key before value, which
    is what protobuf's Python serialiser writes for keys inserted in that order (its upb backend uses a
    per-process hash order instead: both are valid, and every reader, including the image fast path of
    :func:`bytes_feature`, accepts either).
    """
    entries = b"".join(
        _field(1, _field(1, key.encode("utf-8")) + _field(2, _serialize_feature(key, value)))
        for key, value in features.items()
    )
    return _field(1, entries)  # Example.features = Features{feature: the entries}

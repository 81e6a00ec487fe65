"""insightface/TFace verification ``.bin`` files: a pickle of ``(list of encoded images, list of bools)``.

Images ``2k`` and ``2k+1`` form pair ``k``. These files come from the internet, so they are read with a
restricted unpickler that can build only bytes, strings, lists, tuples, bools and numpy arrays, and every
size the file declares is bounded by the file's own size before anything is allocated: the opcode stream is
walked first (a 20-byte file declaring a 2^40-byte string is refused by offset instead of ending in
``MemoryError``), and array shapes are checked when an array is built.
"""

from __future__ import annotations

import bisect
import io
import math
import operator
import os
import pickle
import pickletools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tface.core.fsutil import atomic_write_bytes

__all__ = ["BinFormatError", "read_bin", "write_bin"]


class BinFormatError(ValueError):
    """A ``.bin`` file that is not a verification pair list; names the file."""


def _latin1_encode(obj: object, encoding: str = "utf-8") -> bytes:
    # Protocol 0-2 pickles of ``bytes`` call ``_codecs.encode(text, "latin1")``; allow only that.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin1 byte strings")
    return obj.encode("latin1")


_NUMPY_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles of arrays
    ("numpy._core.numeric", "_frombuffer"),
}


#: opcode byte -> (name, argument descriptor) for the pre-scan
_OPCODES = {op.code.encode("latin-1")[0]: (op.name, op.arg) for op in pickletools.opcodes}
#: opcodes whose argument is a memo index: the C unpickler grows its memo table to twice the index
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_FRAME_HEADER = 9  # FRAME opcode + u64 frame length


class _Stream:
    """The pickle bytes, optionally with the FRAME opcodes taken out (frames are optional from protocol 4
    on): unframed, the unpickler reads opcode by opcode, so its file position maps back to a file offset.
    Unframing copies the file, so it is done only to name the offset of a failure already seen."""

    def __init__(self, data: bytes, frames: list[int], *, unframe: bool):
        self.size = len(data)
        self.cuts: list[int] = []  # positions in ``self.data`` where a frame header was taken out
        self.exact = unframe or not frames
        if not frames or not unframe:
            self.data = data
            return
        view, parts, start = memoryview(data), [], 0
        for f in frames:
            parts.append(view[start:f])
            start = f + _FRAME_HEADER
            self.cuts.append(f - _FRAME_HEADER * len(self.cuts))
        parts.append(view[start:])
        self.data = b"".join(parts)

    def offset(self, pos: int) -> int:
        """The file offset of position ``pos`` of :attr:`data`."""
        return pos + _FRAME_HEADER * bisect.bisect_right(self.cuts, pos)


class _Oversized(pickle.UnpicklingError):
    """An array larger than the file, seen while reading framed data (its offset is not known yet)."""


def _scan(data: bytes) -> list[int]:
    """Walk the opcodes without building anything; returns the offsets of the FRAME opcodes.

    Every declared length (bytes, strings, longs, frames) must fit in what is left of the file, and every
    memo index must be below the file size: the C unpickler allocates those sizes before it reads.
    """
    size = len(data)
    pos = 0
    frames = []
    while pos < size:
        start = pos
        op = _OPCODES.get(data[pos])
        if op is None:
            raise pickle.UnpicklingError(f"offset {start}: unknown pickle opcode 0x{data[pos]:02x}")
        name, arg = op
        pos += 1
        if name == "STOP":
            return frames
        if arg is None:
            continue
        n = arg.n
        if n >= 0:
            if pos + n > size:
                break
            if name == "FRAME" or name in _MEMO_PUT:
                value = int.from_bytes(data[pos:pos + n], "little")
                if name == "FRAME":
                    frames.append(start)
                    if value > size - pos - n:
                        raise pickle.UnpicklingError(f"offset {start}: FRAME declares {value} bytes, "
                                                     f"only {size - pos - n} remain in the file")
                elif value > size:
                    raise pickle.UnpicklingError(f"offset {start}: {name} memo index {value} exceeds the file size")
            pos += n
        elif n == pickletools.UP_TO_NEWLINE:
            lines = 2 if arg.name == "stringnl_noescape_pair" else 1
            end = pos
            for _ in range(lines):
                end = data.find(b"\n", end) + 1
                if end == 0:
                    raise pickle.UnpicklingError(f"offset {start}: {name} argument has no end of line")
            if name == "PUT":
                text = data[pos:end - 1]
                if len(text) > 20 or (text.isdigit() and int(text) > size):
                    raise pickle.UnpicklingError(f"offset {start}: PUT memo index {text[:20]!r} exceeds the file size")
            pos = end
        else:
            width = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                     pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}[n]
            if pos + width > size:
                break
            length = int.from_bytes(data[pos:pos + width], "little", signed=n == pickletools.TAKEN_FROM_ARGUMENT4)
            pos += width
            if length < 0:
                raise pickle.UnpicklingError(f"offset {start}: {name} declares a negative length {length}")
            if length > size - pos:
                raise pickle.UnpicklingError(f"offset {start}: {name} declares {length} bytes, "
                                             f"only {size - pos} remain in the file")
            pos += length
    raise pickle.UnpicklingError(f"offset {size}: the pickle ends without its STOP opcode (truncated file?)")


def _itemsize(dtype: object) -> int:
    try:
        return max(np.dtype(dtype).itemsize, 1)
    except (TypeError, ValueError):
        return 1  # numpy itself will refuse it


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, stream: _Stream, encoding: str):
        self._file = io.BytesIO(stream.data)
        self._stream = stream
        super().__init__(self._file, encoding=encoding)
        unpickler = self

        class Array(np.ndarray):
            """ndarray whose pickle reconstruction checks the declared size first (BUILD / NEWOBJ)."""

            def __new__(cls, shape, dtype=float, *args, **kwargs):
                unpickler._check_array(shape, dtype)
                return super().__new__(cls, shape, dtype, *args, **kwargs)

            def __setstate__(self, state):
                if isinstance(state, tuple) and len(state) in (4, 5):
                    unpickler._check_array(state[-4], state[-3])
                return super().__setstate__(state)

        self._array = Array

    def _check_array(self, shape: object, dtype: object) -> None:
        """Refuse an array that would hold more bytes (or elements) than the whole file."""
        try:  # numpy takes any integer-like (numpy scalars too) as a dimension
            dims = tuple(map(operator.index, shape if isinstance(shape, (tuple, list)) else (shape,)))
        except TypeError:
            return  # not a shape: numpy refuses it without allocating
        need = math.prod(dims) * _itemsize(dtype)
        if need > self._stream.size:
            if not self._stream.exact:
                raise _Oversized
            at = self._stream.offset(self._file.tell() - 1)
            raise pickle.UnpicklingError(f"offset {at}: array of shape {tuple(dims)} declares {need} bytes, "
                                         "more than the whole file")

    def _checked(self, build, shape_arg: int | None):
        """``build`` (numpy's ``_reconstruct(subtype, shape, dtype)`` or ``scalar(dtype, data)``) with its
        declared size checked first."""
        def call(*args):
            if shape_arg is None:
                self._check_array((), args[0] if args else None)
            elif len(args) > shape_arg + 1:
                self._check_array(args[shape_arg], args[shape_arg + 1])
            return build(*args)
        return call

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _NUMPY_ALLOWED:
            if name == "ndarray":
                return self._array
            found = super().find_class(module, name)
            if name == "_reconstruct":
                return self._checked(found, 1)
            if name == "scalar":
                return self._checked(found, None)
            return found
        if (module, name) in {("builtins", "bytearray"), ("__builtin__", "bytearray")}:
            return _bytearray
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a .bin file")


def _bytearray(*args: object) -> bytearray:
    # Pickles of bytearray call ``bytearray(bytes)`` or ``bytearray(str, "latin-1")``; never ``bytearray(n)``,
    # which would allocate n bytes the file does not hold.
    if not args or not isinstance(args[0], (bytes, bytearray, str)):
        raise pickle.UnpicklingError("bytearray may only be rebuilt from bytes or a string")
    return bytearray(*args)


def _unpickle(data: bytes, frames: list[int], encoding: str) -> object:
    try:
        return _RestrictedUnpickler(_Stream(data, frames, unframe=False), encoding).load()
    except _Oversized:  # certain to fail again: unframed, the failure names its offset
        return _RestrictedUnpickler(_Stream(data, frames, unframe=True), encoding).load()


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Encoded images (``2N``) and same-identity flags (``N`` bools) from a ``.bin`` file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BinFormatError(f"{path}: cannot read verification file: {exc}") from exc
    try:
        frames = _scan(data)
        try:
            obj = _unpickle(data, frames, "ASCII")
        except UnicodeDecodeError:  # Python 2 pickles of byte strings
            obj = _unpickle(data, frames, "bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError) as exc:
        raise BinFormatError(f"{path}: not a verification .bin file: {exc}") from exc
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise BinFormatError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)):
        raise BinFormatError(f"{path}: images are {type(bins).__name__}, expected a list")
    flag_list = issame.tolist() if isinstance(issame, np.ndarray) else issame
    if not isinstance(flag_list, (list, tuple)) or not all(isinstance(x, (bool, np.bool_)) for x in flag_list):
        raise BinFormatError(f"{path}: issame is not a list of booleans")
    flags = np.asarray(flag_list, dtype=bool)
    images: list[bytes] = []
    for i, b in enumerate(bins):
        if isinstance(b, np.ndarray) and b.dtype == np.uint8:
            b = b.tobytes()
        if isinstance(b, str):  # Python 2 str decoded as latin1
            b = b.encode("latin1")
        if not isinstance(b, (bytes, bytearray)):
            raise BinFormatError(f"{path}: image {i} is {type(b).__name__}, expected encoded bytes")
        images.append(bytes(b))
    if len(images) != 2 * len(flags):
        raise BinFormatError(f"{path}: {len(images)} images for {len(flags)} pairs (expected {2 * len(flags)})")
    return images, flags


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> Path:
    """Write a ``.bin`` readable by insightface and TFace (atomically: temp file, then rename)."""
    path = Path(path)
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    payload = pickle.dumps(([bytes(b) for b in images], [bool(x) for x in issame]), protocol=4)
    return atomic_write_bytes(path, payload)

"""insightface/TFace verification ``.bin`` files: a pickle of ``(list of encoded images, list of bools)``.

Images ``2k`` and ``2k+1`` form pair ``k``. These files come from the internet, so they are read with a
restricted unpickler that can build only bytes, strings, lists, tuples, bools and numpy arrays.
"""

from __future__ import annotations

import io
import os
import pickle
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


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) in _NUMPY_ALLOWED:
            return super().find_class(module, name)
        if (module, name) in {("builtins", "bytearray"), ("__builtin__", "bytearray")}:
            return bytearray
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a .bin file")


def _unpickle(data: bytes, encoding: str) -> object:
    return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Encoded images (``2N``) and same-identity flags (``N`` bools) from a ``.bin`` file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BinFormatError(f"{path}: cannot read verification file: {exc}") from exc
    try:
        try:
            obj = _unpickle(data, "ASCII")
        except UnicodeDecodeError:  # Python 2 pickles of byte strings
            obj = _unpickle(data, "bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
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

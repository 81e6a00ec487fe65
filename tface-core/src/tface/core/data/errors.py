"""Error types of the data layer (kept import-light so every data module can share them)."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(IOError):
    """A sample that cannot be read or decoded; the message names the file and the offset or line."""

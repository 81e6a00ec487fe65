"""The one error type of the training engine: a message for the user, printed as one ``Error:`` line."""

from __future__ import annotations

__all__ = ["TrainingError"]


class TrainingError(RuntimeError):
    pass

"""What a loss plugin (``tface.losses``) receives, which decides where the trainer plugs it in.

A recipe lists its training objective as ``[[loss]]`` tables (default: one ``softmax``). Each loss is one of:

- a :class:`ClassificationLoss`: it reduces the classifier's per-sample negative log-likelihood of the target
  class (the margin softmax of ``[head]``) to a scalar. At most one per recipe; it decides whether a classifier
  is built at all. The nll comes from the classifier in any layout (local, sharded, sampled) with its gradient,
  so a classification loss never sees how the softmax was computed.
- an :class:`EmbeddingLoss`: it scores this process's embeddings and labels directly (triplet, ...), beside or
  instead of a classifier.

Other ``tface.losses`` components (e.g. DDL, which needs pair branches) are used by training methods and are
refused in ``[[loss]]`` with a message that says so.
"""

from __future__ import annotations

import abc

from torch import Tensor, nn

__all__ = ["ClassificationLoss", "EmbeddingLoss", "RECIPE_INPUTS"]

#: The ``takes`` values a ``[[loss]]`` table accepts.
RECIPE_INPUTS = ("nll", "embeddings")


class ClassificationLoss(nn.Module, abc.ABC):
    """Per-sample nll ``[N]`` of the target class under the classifier's softmax -> a scalar loss."""

    takes = "nll"

    @abc.abstractmethod
    def forward(self, nll: Tensor) -> Tensor:
        """The loss (a 0-d tensor) from ``nll`` = ``-log p(target)`` per row, with gradient."""


class EmbeddingLoss(nn.Module, abc.ABC):
    """Embeddings ``[N, D]`` (not normalised) and labels ``[N]`` of this process -> a scalar loss."""

    takes = "embeddings"

    @abc.abstractmethod
    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The loss (a 0-d tensor)."""

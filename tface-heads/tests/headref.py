"""Helpers shared by the head tests: a float64 classifier and batch, and gradient comparison."""

from __future__ import annotations

import torch

from tface.core.classifier import Classifier


def build(head, n: int = 10, d: int = 6, c: int = 7, seed: int = 0, scale: float = 1.0):
    """``(classifier, embeddings (leaf, requires grad), labels)`` in float64."""
    torch.manual_seed(seed)
    clf = Classifier(c, d, head).double()
    emb = (torch.randn(n, d, dtype=torch.float64) * scale).requires_grad_(True)
    labels = torch.randint(0, c, (n,))
    return clf, emb, labels


def stack(values: list[list[torch.Tensor]]) -> torch.Tensor:
    """A ``[N, C]`` tensor from per-element 0-d tensors (keeps their gradients)."""
    return torch.stack([torch.stack(row) for row in values])


def grads_of(out: torch.Tensor, leaves, seed: int = 5):
    """Gradients of a fixed random weighting of ``out`` with respect to ``leaves``."""
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * w).sum(), leaves, retain_graph=True, allow_unused=True)


def assert_same_grads(out: torch.Tensor, ref: torch.Tensor, leaves, atol: float = 1e-9) -> None:
    for g, r in zip(grads_of(out, leaves), grads_of(ref, leaves), strict=True):
        g = torch.zeros_like(r) if g is None else g
        r = torch.zeros_like(g) if r is None else r
        assert torch.allclose(g, r, atol=atol), (g - r).abs().max()


def loss_of(out) -> torch.Tensor:
    """The loss of a classifier's forward (a ``ClassifierOutput``)."""
    return out.loss

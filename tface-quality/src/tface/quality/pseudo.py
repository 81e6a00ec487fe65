"""SDD-FIQA quality pseudo labels (Ou et al., CVPR'21), vectorised.

An image is "good" when its similarities to images of its own identity sit far from its similarities to
images of other identities. For every image and every round, :func:`sample_round` draws a positive set (up
to ``k`` other images of the same identity) and a negative set (exactly ``k`` distinct images of other
identities); the round's score is the 1-D Wasserstein-1 distance between the two sets of cosines
(:func:`wasserstein_1d`, the same number as ``scipy.stats.wasserstein_distance``), min-max normalised to
[0, 100] over the data set; the label is the mean over rounds (:func:`pseudo_labels`).

TFace's ``gen_pseudo_labels.py`` scans the whole data set once per identity (O(N × #ids)) and draws the
negatives image by image. Here each set is drawn for all images at once with Floyd's algorithm (k steps
vectorised over the images: O(N·k) draws and O(N·k²) integer compares, no rejection loop, so it stays fast
even when a population is barely larger than ``k``), and the cosines are computed in row chunks so memory
stays bounded.

As in TFace (and scipy) the distance is unsigned: an image whose positives score *below* its negatives
also gets a large distance. With a sane recogniser such images are rare.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pseudo_labels", "round_distances", "sample_round", "wasserstein_1d"]

#: Rows sampled per block: a fixed size (not ``chunk``) so the random stream, and hence the labels, do not
#: depend on the chunk size the caller picks.
_SAMPLE_BLOCK = 65536


def wasserstein_1d(u: Tensor, v: Tensor, u_mask: Tensor | None = None, v_mask: Tensor | None = None) -> Tensor:
    """Row-wise Wasserstein-1 distance between the empirical distributions of ``u[b]`` and ``v[b]``.

    ``u`` is ``[B, n]`` (or ``[n]``), ``v`` is ``[B, m]`` (or ``[m]``); the masks (same shapes, True = a
    sample) let rows hold different numbers of samples, so one call handles a whole batch of unequal sets.
    The value is ``∫ |F_u(x) − F_v(x)| dx`` over the merged sorted samples — the formula of
    ``scipy.stats.wasserstein_distance`` for any two sizes. Computed in float64; returns ``[B]`` (or a
    0-d tensor for 1-D inputs).
    """
    squeeze = u.dim() == 1
    if squeeze:
        u, v = u[None], v[None]
        u_mask = None if u_mask is None else u_mask[None]
        v_mask = None if v_mask is None else v_mask[None]
    if u.dim() != 2 or v.dim() != 2 or u.shape[0] != v.shape[0]:
        raise ValueError(f"u {tuple(u.shape)} and v {tuple(v.shape)} must be [B, n] and [B, m]")
    um = torch.ones_like(u, dtype=torch.bool) if u_mask is None else u_mask.to(torch.bool)
    vm = torch.ones_like(v, dtype=torch.bool) if v_mask is None else v_mask.to(torch.bool)
    if um.shape != u.shape or vm.shape != v.shape:
        raise ValueError("each mask must have the shape of its samples")
    n_u = um.sum(1)
    n_v = vm.sum(1)
    if bool((n_u == 0).any()) or bool((n_v == 0).any()):
        raise ValueError("every row needs at least one sample on each side")
    x = torch.cat([u, v], 1).to(torch.float64)
    valid = torch.cat([um, vm], 1)
    from_u = torch.cat([um, torch.zeros_like(vm)], 1)
    # Padding takes the row's largest sample: it then only adds zero-width steps to the integral.
    row_max = torch.where(valid, x, torch.full_like(x, -torch.inf)).amax(1, keepdim=True)
    x = torch.where(valid, x, row_max)
    x, perm = torch.sort(x, 1)
    # Counts, not summed fractions, so each CDF is exact (as scipy's searchsorted counts).
    cu = torch.gather(from_u, 1, perm).cumsum(1, dtype=torch.int64).to(torch.float64)
    cv = torch.gather(valid & ~from_u, 1, perm).cumsum(1, dtype=torch.int64).to(torch.float64)
    gap = (cu / n_u[:, None].to(torch.float64) - cv / n_v[:, None].to(torch.float64)).abs()[:, :-1]
    out = (gap * (x[:, 1:] - x[:, :-1])).sum(1)
    return out[0] if squeeze else out


def _floyd(pop: Tensor, m: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """``[B, k]``: row b holds ``m[b]`` distinct uniform draws from ``range(pop[b])``, then ``-1`` padding.

    Floyd's algorithm, one step per column for all rows at once: at step s (bound ``j = pop − m + s``) draw
    ``t`` uniform in ``[0, j]`` and take ``j`` instead if ``t`` is already taken. Every ``m``-subset is
    equally likely; no rejection loop. Needs ``m ≤ pop``.
    """
    b = pop.shape[0]
    out = torch.full((b, k), -1, dtype=torch.int64)
    for s in range(k):
        j = pop - m + s
        t = torch.floor(torch.rand(b, generator=generator, dtype=torch.float64) * (j + 1)).to(torch.int64)
        t = torch.minimum(t, j)
        if s:
            t = torch.where((out[:, :s] == t[:, None]).any(1), j, t)
        out[:, s] = torch.where(s < m, t, -1)
    return out


class _Groups:
    """Images sorted by identity: ``order`` (sorted position → image), per image its group's start in that
    order, its group size and its rank inside the group."""

    def __init__(self, labels: Tensor) -> None:
        uniq, inv, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        self.uniq, self.counts = uniq, counts
        self.order = torch.argsort(inv, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        self.start = starts[inv]
        self.size = counts[inv]
        rank = torch.empty_like(inv)
        rank[self.order] = torch.arange(inv.numel()) - starts[inv[self.order]]
        self.rank = rank
        self.n = int(inv.numel())


def _check_labels(labels: Tensor, k: int) -> _Groups:
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if labels.numel() == 0:
        raise ValueError("no images")
    g = _Groups(labels.detach().cpu().to(torch.int64))
    lone = g.uniq[g.counts < 2]
    if lone.numel():
        shown = ", ".join(str(int(x)) for x in lone[:10]) + (", ..." if lone.numel() > 10 else "")
        raise ValueError(
            f"{lone.numel()} identit{'y has' if lone.numel() == 1 else 'ies have'} fewer than 2 images, so no "
            f"positive set: label(s) {shown}; drop them first"
        )
    short = g.uniq[g.n - g.counts < k]
    if short.numel():
        shown = ", ".join(str(int(x)) for x in short[:10]) + (", ..." if short.numel() > 10 else "")
        fewest = int(g.n - g.counts.max())
        raise ValueError(
            f"k={k} negatives need at least {k} images of other identities, but label(s) {shown} leave only "
            f"{fewest if short.numel() == 1 else 'as few as ' + str(fewest)}; lower k or add identities"
        )
    return g


def _sample_blocks(g: _Groups, k: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Per block of ``_SAMPLE_BLOCK`` images, in image order: ``(pos, neg)`` global indices, ``[b, k]`` each."""
    for lo in range(0, g.n, _SAMPLE_BLOCK):
        hi = min(lo + _SAMPLE_BLOCK, g.n)
        start, size, rank = g.start[lo:hi], g.size[lo:hi], g.rank[lo:hi]
        # Positives: a draw u over the other members of the group skips the image's own rank.
        others = size - 1
        u = _floyd(others, torch.clamp(others, max=k), k, generator)
        in_group = u + (u >= rank[:, None]).to(torch.int64)
        pos = torch.where(u >= 0, g.order[(start[:, None] + in_group).clamp(0, g.n - 1)], -1)
        # Negatives: a draw over the N − n_g images outside the group skips the group's block of positions.
        u = _floyd(g.n - size, torch.full_like(size, k), k, generator)
        neg = g.order[u + size[:, None] * (u >= start[:, None]).to(torch.int64)]
        yield pos, neg


def sample_round(labels: Tensor, *, k: int = 24, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One round's index sets: ``(pos, neg)``, ``[N, k]`` int64 each, on the CPU.

    ``pos[i]`` holds ``min(k, n_i − 1)`` distinct other images of i's identity (``n_i`` its image count), then
    ``-1``; ``neg[i]`` holds ``k`` distinct images of other identities. Both are uniform over such subsets,
    independently per image (as TFace draws them). :func:`pseudo_labels` draws its rounds with this same
    stream, so the sets of its rounds are ``sample_round`` called ``rounds`` times on
    ``torch.Generator().manual_seed(seed)``.
    """
    g = _check_labels(labels, k)
    blocks = list(_sample_blocks(g, k, generator))
    return torch.cat([b[0] for b in blocks]), torch.cat([b[1] for b in blocks])


def _distances(features: Tensor, first: int, pos: Tensor, neg: Tensor, chunk: int) -> Tensor:
    """:func:`round_distances` for the images ``first, first + 1, ...`` (the rows of ``pos``/``neg``)."""
    n = pos.shape[0]
    dev = features.device
    out = torch.empty(n, dtype=torch.float64)
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        f = features[first + lo : first + hi].unsqueeze(2)  # [c, D, 1]
        p = pos[lo:hi].to(dev)
        q = neg[lo:hi].to(dev)
        sp = torch.bmm(features[p.clamp(min=0)], f).squeeze(2)
        sn = torch.bmm(features[q], f).squeeze(2)
        out[lo:hi] = wasserstein_1d(sp, sn, u_mask=p >= 0).cpu()
    return out


def round_distances(features: Tensor, pos: Tensor, neg: Tensor, *, chunk: int = 2048) -> Tensor:
    """Wasserstein-1 distance between each image's positive and negative cosines: ``[N]`` float64.

    ``features`` must already be L2-normalised; ``pos``/``neg`` are :func:`sample_round`'s sets (``-1`` =
    no sample). Cosines are taken ``chunk`` rows at a time, so the gathered block is ``chunk × k × D``.
    """
    if pos.shape != neg.shape or pos.shape[0] != features.shape[0]:
        raise ValueError(f"pos {tuple(pos.shape)} and neg {tuple(neg.shape)} must be [N, k], N = {features.shape[0]}")
    return _distances(features, 0, pos, neg, chunk)


def pseudo_labels(
    features: Tensor,
    labels: Tensor,
    *,
    k: int = 24,
    rounds: int = 12,
    seed: int = 0,
    chunk: int = 2048,
    return_rounds: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """SDD-FIQA quality pseudo labels: ``[N]`` float64 in [0, 100], higher = better.

    ``features`` ``[N, D]`` are recognition embeddings (L2-normalised here, so raw ones are fine);
    ``labels`` ``[N]`` integer identities, each with at least 2 images. Per round (:func:`sample_round`):
    the Wasserstein-1 distance between the image's positive and negative cosines, min-max normalised to
    [0, 100] over the data set (all 0 in the degenerate case of a constant round); the label is the mean
    over ``rounds`` (TFace: k = 24, 12 rounds). Deterministic for a given ``seed`` (sampling runs on the
    CPU generator, whatever the device of ``features``). Memory: one ``chunk × k × D`` block of gathered
    features at a time. ``return_rounds`` also returns the normalised rounds, ``[rounds, N]``.
    """
    if features.dim() != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"features {tuple(features.shape)} must be [N, D] with N = len(labels) = {len(labels)}")
    if not features.dtype.is_floating_point:
        raise ValueError(f"features must be floating point, got {features.dtype}")
    if rounds < 1 or chunk < 1:
        raise ValueError(f"rounds and chunk must be >= 1, got rounds={rounds}, chunk={chunk}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features contain NaN or infinity")
    g = _check_labels(labels, k)
    feats = F.normalize(features.detach(), dim=1)
    gen = torch.Generator().manual_seed(seed)
    per_round = torch.empty(rounds, g.n, dtype=torch.float64)
    for r in range(rounds):
        wd = torch.empty(g.n, dtype=torch.float64)
        first = 0
        for pos, neg in _sample_blocks(g, k, gen):
            wd[first : first + pos.shape[0]] = _distances(feats, first, pos, neg, chunk)
            first += pos.shape[0]
        lo_v, hi_v = wd.min(), wd.max()
        span = hi_v - lo_v
        per_round[r] = (wd - lo_v) / span * 100.0 if span > 0 else torch.zeros_like(wd)
    mean = per_round.mean(0).clamp_(0.0, 100.0)
    return (mean, per_round) if return_rounds else mean

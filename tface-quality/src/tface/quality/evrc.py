"""Error-versus-reject curves (EVRC) and their area over the curve (AOC), as SDD-FIQA evaluates quality.

TFace ships no code for it (reference §10.3), so the protocol is spelled out here:

* **Threshold** — one per target FMR, fixed once on *all* impostor pairs (before anything is rejected) by
  :func:`threshold_at_fmr`: a pair is accepted iff ``score >= t``, and ``t`` is the lowest score (of any
  pair, genuine or impostor) whose acceptance keeps ``FMR <= target``; ``inf`` if none does. Equivalently a
  genuine pair is a false non-match iff its score is ``<=`` the ``(m+1)``-th highest impostor score, with
  ``m`` the largest count such that ``m / n_impostor <= target`` — the "strict" TAR@FAR read-out of
  ``tface.eval.ijb_metrics.Roc.tar_at_far``.
* **Rejection** — at ratio ``r`` the ``floor(r * M)`` lowest-quality images of the ``M`` are discarded
  (a 1e-9 guard keeps e.g. 0.29 * 100 at 29). Images are ranked by a stable sort of the quality, so among
  equal qualities the lower image index goes first. A genuine pair is kept iff both its images are.
* **FNMR** at ``r`` — the share of the kept genuine pairs whose score is below the threshold (NaN when
  none is kept). Impostor pairs only serve the threshold.
* **Grid** — ``r = 0, 0.01, ..., 0.95`` by default (step 0.01, 96 points; the paper's range is 0–0.95).
* **AOC** — SDD-FIQA (Ou et al., CVPR'21, the EVRC evaluation) defines ``AOC = 1 − ∫_a^b g(φ) dφ``, with ``g(φ)`` the
  FNMR at the ratio ``φ`` of unconsidered images and ``[a, b] = [0, 0.95]``; the authors confirm it is
  "1 − AUC(EVRC)" (github.com/Tencent/TFace/issues/44). The integral is taken with the trapezoidal rule on
  the grid, from its first to its last ratio, with no normalisation. Higher is better.
* **Relative AOC** (ours) — the same area on the curve divided by its start, ``g(φ) / g(0)``, and by the span
  ``b − a``: 0 for a quality that rejects at random (the curve stays flat), 1 for one that rejects every
  failing pair first. With a strong recogniser ``g(0)`` is small and the raw AOC is near 1 for any quality
  measure; the paper's published values (0.13–0.83 on LFW) look normalised like this, though the paper does
  not say so, so both are reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_FMRS",
    "DEFAULT_RATIOS",
    "EVRCResult",
    "area_over_curve",
    "evrc",
    "relative_area_over_curve",
    "threshold_at_fmr",
]

#: The FMR targets of the SDD-FIQA paper.
DEFAULT_FMRS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
#: Reject ratios 0, 0.01, ..., 0.95.
DEFAULT_RATIOS: np.ndarray = np.round(np.arange(96) * 0.01, 2)



def _numpy(x: Any, name: str) -> np.ndarray:
    """A 1-D numpy view of a tensor or array-like (torch tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _max_count(target: float, total: int) -> int:
    """Largest ``c`` in ``[0, total]`` with ``c / total <= target`` as a float division."""
    c = min(max(int(math.floor(target * total)), 0), total)
    while c < total and (c + 1) / total <= target:
        c += 1
    while c > 0 and c / total > target:
        c -= 1
    return c


def threshold_at_fmr(impostor_scores: Any, fmr: float, candidates: Any = None) -> float:
    """The lowest threshold ``t`` with ``FMR(t) = #{impostor >= t} / n <= fmr``, among the observed scores.

    ``candidates`` are the scores ``t`` may take (default: the impostor scores; :func:`evrc` passes all
    pair scores, so the genuine ones between two impostor values count too). ``inf`` when no candidate
    is high enough (then nothing is accepted).
    """
    imp = np.asarray(_numpy(impostor_scores, "impostor_scores"), dtype=np.float64)
    if imp.size == 0:
        raise ValueError("threshold_at_fmr needs at least one impostor score")
    if not 0.0 <= fmr <= 1.0:
        raise ValueError(f"fmr must be in [0, 1], got {fmr}")
    cand = imp if candidates is None else np.asarray(_numpy(candidates, "candidates"), dtype=np.float64)
    m = _max_count(float(fmr), imp.size)
    if m >= imp.size:
        return float(min(cand.min(), imp.min()))  # every pair may be accepted
    pivot = np.sort(imp)[imp.size - 1 - m]  # the (m+1)-th highest impostor score must be rejected
    above = cand[cand > pivot]
    return float(above.min()) if above.size else math.inf


def area_over_curve(ratios: Any, fnmr: Any) -> float:
    """SDD-FIQA's ``AOC = 1 − ∫ g(φ) dφ`` over the grid's span, trapezoidal rule (NaN if any FNMR is)."""
    x = np.asarray(_numpy(ratios, "ratios"), dtype=np.float64)
    y = np.asarray(_numpy(fnmr, "fnmr"), dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ratios {x.shape} and fnmr {y.shape} differ")
    return float(1.0 - np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def relative_area_over_curve(ratios: Any, fnmr: Any) -> float:
    """``1 − ∫ g(φ)/g(0) dφ / (b − a)`` (trapezoidal): 0 flat, 1 at once to zero; NaN when ``g(0)`` is 0 or NaN."""
    x = np.asarray(_numpy(ratios, "ratios"), dtype=np.float64)
    y = np.asarray(_numpy(fnmr, "fnmr"), dtype=np.float64)
    if not y.size or not y[0] > 0:
        return math.nan
    return float((area_over_curve(x, y / y[0]) - 1.0) / (x[-1] - x[0]) + 1.0)


@dataclass(frozen=True, eq=False)
class EVRCResult:
    """One EVRC per FMR target: ``fnmr[f, j]`` is the FNMR at ``fmrs[f]`` after rejecting ``ratios[j]``."""

    ratios: np.ndarray  #: [R] reject ratios
    fmrs: tuple[float, ...]  #: [F] target FMRs
    thresholds: np.ndarray  #: [F] score thresholds (accept iff score >= threshold)
    fnmr: np.ndarray  #: [F, R]
    aoc: np.ndarray  #: [F] area over each curve
    aoc_relative: np.ndarray  #: [F] area over each curve relative to its start (0 random, 1 perfect)
    kept_images: np.ndarray  #: [R] images left at each ratio
    kept_genuine: np.ndarray  #: [R] genuine pairs left at each ratio

    @property
    def mean_aoc(self) -> float:
        """The mean AOC over the FMR targets (the paper's "Avg." column)."""
        return float(np.mean(self.aoc))


def evrc(
    quality: Any,
    index_a: Any,
    index_b: Any,
    genuine: Any,
    scores: Any,
    *,
    fmrs: Sequence[float] = DEFAULT_FMRS,
    ratios: Any = None,
) -> EVRCResult:
    """Error-versus-reject curves of a quality measure (see the module docstring for every convention).

    ``quality`` ``[M]`` scores the images (higher = better); pair ``p`` compares images ``index_a[p]`` and
    ``index_b[p]``, is genuine iff ``genuine[p]``, and has similarity ``scores[p]`` (higher = more alike).
    Tensors or arrays. Each ratio costs one ``searchsorted``, so fine grids are cheap.
    """
    q = np.asarray(_numpy(quality, "quality"), dtype=np.float64)
    a = _numpy(index_a, "index_a")
    b = _numpy(index_b, "index_b")
    gen = _numpy(genuine, "genuine")
    s = np.asarray(_numpy(scores, "scores"), dtype=np.float64)
    if not (a.shape == b.shape == gen.shape == s.shape):
        raise ValueError(f"pair arrays differ in length: {a.shape}, {b.shape}, {gen.shape}, {s.shape}")
    if q.size == 0 or not np.all(np.isfinite(q)):
        raise ValueError("quality must be non-empty and finite")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    for name, idx in (("index_a", a), ("index_b", b)):
        if idx.size and (not np.issubdtype(idx.dtype, np.integer) or idx.min() < 0 or idx.max() >= q.size):
            raise ValueError(f"{name} must hold integer image indices in [0, {q.size})")
    if gen.dtype != np.bool_:
        if not np.all((gen == 0) | (gen == 1)):
            raise ValueError("genuine must be boolean (or 0/1)")
        gen = gen.astype(bool)
    if not gen.any() or gen.all():
        raise ValueError("evrc needs at least one genuine and one impostor pair")
    r = DEFAULT_RATIOS if ratios is None else np.asarray(_numpy(ratios, "ratios"), dtype=np.float64)
    if r.size < 2 or np.any(np.diff(r) <= 0) or r[0] < 0 or r[-1] >= 1:
        raise ValueError("ratios must be at least 2 strictly increasing values in [0, 1)")
    fmr_t = tuple(float(f) for f in fmrs)
    if not fmr_t:
        raise ValueError("fmrs must not be empty")

    rank = np.empty(q.size, dtype=np.int64)
    rank[np.argsort(q, kind="stable")] = np.arange(q.size)
    dropped = np.floor(r * q.size + 1e-9).astype(np.int64)
    # A genuine pair survives ratio r iff its worse-ranked image does: key = the lower rank of the two.
    key = np.minimum(rank[a[gen]], rank[b[gen]])
    g_scores = s[gen]
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    kept = key.size - np.searchsorted(key_sorted, dropped, side="left")

    thresholds = np.array([threshold_at_fmr(s[~gen], f, candidates=s) for f in fmr_t])
    fnmr = np.empty((len(fmr_t), r.size))
    for i, t in enumerate(thresholds):
        fail = (g_scores < t)[order]
        fail_after = np.concatenate((np.cumsum(fail[::-1])[::-1], [0]))  # failures at sorted positions >= j
        n_fail = fail_after[np.searchsorted(key_sorted, dropped, side="left")]
        with np.errstate(invalid="ignore", divide="ignore"):
            fnmr[i] = np.where(kept > 0, n_fail / np.maximum(kept, 1), np.nan)
    aoc = np.array([area_over_curve(r, row) for row in fnmr])
    aoc_relative = np.array([relative_area_over_curve(r, row) for row in fnmr])
    return EVRCResult(
        ratios=r,
        fmrs=fmr_t,
        thresholds=thresholds,
        fnmr=fnmr,
        aoc=aoc,
        aoc_relative=aoc_relative,
        kept_images=q.size - dropped,
        kept_genuine=kept,
    )

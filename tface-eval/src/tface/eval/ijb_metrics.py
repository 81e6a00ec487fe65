"""IJB-B / IJB-C evaluation math on given per-image features (pure numpy).

Reproduces insightface's ``eval_ijbc.py`` (and TFace's ``IJB_Evaluation.py``) from image features onwards:

* :func:`image_features` — the N/D/F test modes (flip sum, optional L2 normalisation, faceness weighting);
* :func:`pool_templates` — media mean, template sum, L2 normalisation, templates in ascending id order;
* :func:`score_pairs` — cosine (dot product) of the two template features of each pair, in float64;
* :func:`roc_curve` — ``sklearn.metrics.roc_curve(labels, scores)`` re-implemented, ``drop_intermediate`` included;
* :func:`tar_at_far` — the "nearest point" read-out of the scripts and a "strict" (FPR ≤ target) one;
* :func:`identification` — 1:N CMC and open-set TPIR at FPIR; :func:`combine_galleries` joins G1 and G2.

Everything is vectorised: no Python loop runs per template, per pair or per score, so an IJB-C-sized
problem (469,375 images, 23k templates, 15.6M pairs) is pooled, scored and read out in seconds. Counts are
exact integers and every rate is one IEEE division, so the ROC is bit-identical to scikit-learn's; pooled
features and scores differ from insightface's loops only by floating-point summation order (~1e-16 relative).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_FARS",
    "combine_galleries",
    "identification",
    "image_features",
    "pool_templates",
    "roc_curve",
    "score_pairs",
    "tar_at_far",
]

#: FAR targets reported by insightface's IJB scripts.
DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

# image_features converts this many rows to float64 at a time.
_FEATURE_CHUNK_ROWS = 16_384
# Pooling gathers about this many images (as float64 rows) at a time, bounding the extra memory.
_POOL_CHUNK_IMAGES = 65_536
# Scoring keeps one float64 similarity block of at most this many bytes.
_SCORE_BLOCK_BYTES = 128 << 20
# A pair block is scored by one matrix product when its rows × columns are at most this many times its
# pair count (a product element costs ~1/100 of a gathered dot product per feature dimension); otherwise
# each pair's two rows are gathered and multiplied.
_DENSE_RATIO = 128
# Pairs per chunk on the gather path.
_GATHER_CHUNK = 16_384
# Template ids up to this value are mapped to rows through a dense lookup table (else a binary search).
_LOOKUP_MAX_ID = 1 << 24


# --------------------------------------------------------------------------------------------------
# Image features and template pooling


def image_features(
    raw: np.ndarray,
    raw_flip: np.ndarray | None = None,
    faceness: np.ndarray | None = None,
    *,
    norm: bool = False,
    detector: bool = True,
    flip: bool = True,
) -> np.ndarray:
    """Per-image features for template pooling, in the N/D/F test modes of insightface's IJB scripts.

    Steps, in the scripts' order: **F** (``flip``) ``f = raw + raw_flip`` (a sum, not a concatenation), else
    ``f = raw``; **N** (``norm``) L2-normalise ``f``; **D** (``detector``) multiply ``f`` by the faceness score.
    The defaults are ``eval_ijbc.py``'s default mode: flip sum, faceness weighting, and the raw norm *kept*, so
    an image's norm acts as its quality weight in the template sum.

    Naming trap: ``norm=True`` here means *L2-normalise every image feature*, which ``ijb_evals.py`` calls N1
    — while ``eval_ijbc.py`` calls its default (norm kept, ``norm=False`` here) "N1D1F1". State the flags, not
    the N/D/F label, when reporting a number.

    Computed in float64 and rounded once to float32 (insightface keeps the faceness product in float64; the
    rounding is ≤ 6e-8 relative, far inside the 1e-6 template-feature agreement the protocol asks for). An
    all-zero image feature stays zero under ``norm`` (insightface would produce NaN).
    """
    x = np.asarray(raw)
    if x.ndim != 2:
        raise ValueError(f"raw features must be [N, D], got shape {x.shape}")
    xf = s = None
    if flip:
        if raw_flip is None:
            raise ValueError("flip=True needs raw_flip (the features of the horizontally flipped images)")
        xf = np.asarray(raw_flip)
        if xf.shape != x.shape:
            raise ValueError(f"raw_flip shape {xf.shape} differs from raw shape {x.shape}")
    if detector:
        if faceness is None:
            raise ValueError("detector=True needs the faceness scores")
        s = np.asarray(faceness, dtype=np.float64)
        if s.shape != (x.shape[0],):
            raise ValueError(f"faceness must have shape ({x.shape[0]},), got {s.shape}")
    out = np.empty(x.shape, dtype=np.float32)
    for a in range(0, x.shape[0], _FEATURE_CHUNK_ROWS):  # bounded float64 temporaries
        b = min(a + _FEATURE_CHUNK_ROWS, x.shape[0])
        f = x[a:b].astype(np.float64)
        if xf is not None:
            f += xf[a:b]
        if norm:
            n = np.sqrt(np.einsum("ij,ij->i", f, f))
            np.divide(f, n[:, None], out=f, where=n[:, None] > 0)
        if s is not None:
            f *= s[a:b, None]
        out[a:b] = f
    return out


def _segment_sums(src: np.ndarray, index: np.ndarray | None, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """float64 sums of segments ``src[index[starts[s] : starts[s] + sizes[s]]]`` (``index=None``: identity).

    ``np.add.reduceat`` along axis 0 (and ``np.add.at``) run at ~15 ns per element on [n, 512] arrays. Here
    segments are ranked by decreasing size, so the k-th elements of all segments longer than k are one
    contiguous prefix of the accumulator: one gather and one contiguous add per position k. The loop runs
    over positions within a segment (≤ the longest video / the most media in a template), never over
    segments, and each segment is summed in its own order.
    """
    by = np.argsort(-sizes, kind="stable")
    size_desc = sizes[by]
    first = starts[by]
    pick = (lambda pos: src[pos]) if index is None else (lambda pos: src[index[pos]])
    acc = pick(first).astype(np.float64)
    neg = -size_desc  # non-decreasing
    for k in range(1, int(size_desc[0]) if size_desc.size else 0):
        m = int(np.searchsorted(neg, -k, side="left"))  # segments longer than k
        acc[:m] += pick(first[:m] + k)
    out = np.empty_like(acc)
    out[by] = acc
    return out


def pool_templates(features: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Template features as insightface's ``image2template_feature``: media mean, template sum, L2 norm.

    Images are grouped by ``(template, media)`` — a media id shared by two templates forms one group in each.
    A group's feature is the mean of its images (a single image is kept as it is), a template's the sum of
    its groups, then L2-normalised (an all-zero template stays zero, as with scikit-learn's ``normalize``).

    Returns ``(template_ids, template_features)``: the unique template ids ascending (the scripts' order) and
    float64 ``[T, D]`` unit rows. One ``lexsort`` orders images by (template, media); each chunk of about
    ``_POOL_CHUNK_IMAGES`` images is then reduced by two segment sums (frames → media → template, see
    :func:`_segment_sums`), so memory stays bounded and nothing loops per template or per media.
    """
    x = np.asarray(features)
    t = np.asarray(templates)
    m = np.asarray(medias)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    n = x.shape[0]
    if t.shape != (n,) or m.shape != (n,):
        raise ValueError(f"templates {t.shape} and medias {m.shape} must both have shape ({n},)")
    if n == 0:
        return t[:0].copy(), np.zeros((0, x.shape[1]), dtype=np.float64)

    order = np.lexsort((m, t))
    ts = t[order]
    ms = m[order]
    new_t = np.empty(n, dtype=bool)
    new_t[0] = True
    np.not_equal(ts[1:], ts[:-1], out=new_t[1:])
    new_g = new_t.copy()
    new_g[1:] |= ms[1:] != ms[:-1]
    g_start = np.flatnonzero(new_g)  # image position where each (template, media) group starts
    g_size = np.diff(np.append(g_start, n))
    tg_start = np.flatnonzero(new_t[g_start])  # group index where each template starts
    template_ids = ts[g_start[tg_start]]
    n_t = tg_start.size
    t_img_start = g_start[tg_start]

    out = np.empty((n_t, x.shape[1]), dtype=np.float64)
    t0 = 0
    while t0 < n_t:
        # Templates [t0, t1) hold at most _POOL_CHUNK_IMAGES images (or one template when it alone is larger).
        t1 = int(np.searchsorted(t_img_start, t_img_start[t0] + _POOL_CHUNK_IMAGES, side="left"))
        t1 = max(t1, t0 + 1)
        i0 = int(t_img_start[t0])
        i1 = int(t_img_start[t1]) if t1 < n_t else n
        g0 = int(tg_start[t0])
        g1 = int(tg_start[t1]) if t1 < n_t else g_start.size
        sizes = g_size[g0:g1]
        media = _segment_sums(x, order[i0:i1], g_start[g0:g1] - i0, sizes)
        media /= sizes[:, None]
        out[t0:t1] = _segment_sums(media, None, tg_start[t0:t1] - g0, np.diff(np.append(tg_start[t0:t1], g1)))
        t0 = t1

    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    np.divide(out, norms[:, None], out=out, where=norms[:, None] > 0)
    return template_ids, out


# --------------------------------------------------------------------------------------------------
# Pair scores


def _template_rows(template_ids: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Row of each pair's template ids in ``template_ids``; ValueError naming the first unknown one."""
    ids = np.asarray(template_ids)
    if ids.ndim != 1:
        raise ValueError(f"template_ids must be 1-D, got shape {ids.shape}")
    sorter = np.argsort(ids, kind="stable")
    sorted_ids = ids[sorter]
    if sorted_ids.size > 1 and np.any(sorted_ids[1:] == sorted_ids[:-1]):
        dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0]
        raise ValueError(f"template id {dup} appears more than once in template_ids")
    n_t = ids.size
    integer = np.issubdtype(ids.dtype, np.integer) and np.issubdtype(pairs.dtype, np.integer)
    if integer and n_t and sorted_ids[0] >= 0 and sorted_ids[-1] < _LOOKUP_MAX_ID:
        # Dense lookup: one gather per id instead of a binary search (≈10× faster for 31M ids).
        table = np.full(int(sorted_ids[-1]) + 1, -1, dtype=np.int32)
        table[ids] = np.arange(n_t, dtype=np.int32)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= table.size):
            inside = (pairs >= 0) & (pairs < table.size)
            rows = table[np.where(inside, pairs, 0)]
            rows[~inside] = -1
        else:
            rows = table[pairs]
        bad = rows < 0
    else:
        pos = np.searchsorted(sorted_ids, pairs)
        pos_c = np.minimum(pos, max(n_t - 1, 0))
        bad = (pos >= n_t) | (sorted_ids[pos_c] != pairs) if n_t else np.ones(pairs.shape, dtype=bool)
        rows = sorter[pos_c].astype(np.int32) if n_t else np.full(pairs.shape, -1, dtype=np.int32)
    if bad.any():
        i = int(np.flatnonzero(bad.any(axis=1))[0])
        j = 0 if bad[i, 0] else 1
        raise ValueError(f"pair {i}: template id {pairs[i, j]} (column {j}) is not among the template ids")
    return rows


def score_pairs(template_ids: np.ndarray, template_features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """float64 cosine score of each pair: the dot product of its two (unit) template feature rows.

    Equal to insightface's chunked ``np.sum(f1 * f2, -1)`` up to summation order (~1e-16). Instead of gathering
    two 512-d rows per pair (8 kB of memory traffic each, 15.6M times for IJB-C), the templates of the side
    with fewer distinct ids become "rows", the other side's become "columns"; pairs are bucketed by row block
    (one stable sort of small block numbers) and each block's scores are read out of one BLAS product
    ``F[rows] @ F[columns].T`` of at most ``_SCORE_BLOCK_BYTES``. Blocks whose product would be much larger
    than their pair count (sparse pair lists) fall back to gathered dot products in chunks.
    """
    f = np.asarray(template_features, dtype=np.float64)
    p = np.asarray(pairs)
    if f.ndim != 2:
        raise ValueError(f"template_features must be [T, D], got shape {f.shape}")
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pairs must be [P, 2], got shape {p.shape}")
    if np.asarray(template_ids).shape != (f.shape[0],):
        raise ValueError(f"template_ids must have shape ({f.shape[0]},), got {np.asarray(template_ids).shape}")
    n_pairs = p.shape[0]
    scores = np.empty(n_pairs, dtype=np.float64)
    if n_pairs == 0:
        return scores
    rows = _template_rows(template_ids, p)
    n_t = f.shape[0]

    used0 = np.bincount(rows[:, 0], minlength=n_t) > 0
    used1 = np.bincount(rows[:, 1], minlength=n_t) > 0
    side = 0 if used0.sum() <= used1.sum() else 1
    r_ids = np.flatnonzero(used0 if side == 0 else used1)  # template rows on the "row" side
    c_ids = np.flatnonzero(used1 if side == 0 else used0)
    r_pos = np.full(n_t, -1, dtype=np.int32)
    r_pos[r_ids] = np.arange(r_ids.size, dtype=np.int32)
    c_pos = np.full(n_t, -1, dtype=np.int32)
    c_pos[c_ids] = np.arange(c_ids.size, dtype=np.int32)
    pr = r_pos[rows[:, side]]
    pc = c_pos[rows[:, 1 - side]]
    del rows

    fc = f[c_ids]
    block = max(1, min(r_ids.size, _SCORE_BLOCK_BYTES // (8 * max(c_ids.size, 1))))
    n_blocks = -(-r_ids.size // block)
    bucket = pr // block
    bucket = bucket.astype(np.uint8 if n_blocks <= 256 else np.uint16 if n_blocks <= 65536 else np.int64)
    order = np.argsort(bucket, kind="stable")  # radix sort for 8/16-bit keys
    bounds = np.concatenate(([0], np.cumsum(np.bincount(bucket, minlength=n_blocks))))
    del bucket
    buf = np.empty((block, c_ids.size), dtype=np.float64)  # reused: no page faults per block
    for b in range(n_blocks):
        sel = order[bounds[b] : bounds[b + 1]]
        if sel.size == 0:
            continue
        r0 = b * block
        r1 = min(r0 + block, r_ids.size)
        lr = pr[sel] - r0
        lc = pc[sel]
        if (r1 - r0) * c_ids.size <= _DENSE_RATIO * sel.size:
            sim = np.matmul(f[r_ids[r0:r1]], fc.T, out=buf[: r1 - r0])
            scores[sel] = np.take(sim.reshape(-1), lr.astype(np.int64) * c_ids.size + lc)
        else:
            fr = f[r_ids[r0:r1]]
            for k in range(0, sel.size, _GATHER_CHUNK):
                s = slice(k, k + _GATHER_CHUNK)
                scores[sel[s]] = np.einsum("ij,ij->i", fr[lr[s]], fc[lc[s]])
    return scores


# --------------------------------------------------------------------------------------------------
# ROC and TAR@FAR


def _binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(positive mask, scores)``: labels 1/True positive, 0/-1/False negative; finite scores."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-D of equal length")
    if y.dtype == np.bool_:
        pos = y
    else:
        pos = y == 1
        if not np.all(pos | (y == 0) | (y == -1)):
            raise ValueError("labels must be binary: 1 (genuine) and 0 or -1 (impostor)")
    if s.dtype == np.bool_:
        s = s.astype(np.int8)
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"scores must be real numbers, got {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (no NaN or infinity)")
    return pos, s


def _counts(pos: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fps, tps, thresholds)`` at every distinct score, thresholds **ascending**, counts of score ≥ threshold.

    One ``np.sort`` of all scores; positives are placed into the sorted order with a small binary search and
    counted per distinct value with ``bincount``, so no ``argsort`` of the full array is needed.
    """
    n = s.size
    asc = np.sort(s)
    if n > 1:
        differs = asc[1:] != asc[:-1]
        if differs.all():
            starts = np.arange(n, dtype=np.int64)
        else:
            starts = np.flatnonzero(np.concatenate(([True], differs)))
        del differs
    else:
        starts = np.arange(n, dtype=np.int64)
    thresholds = asc[starts] if starts.size != n else asc
    # Group of each positive score = index of its distinct value.
    pos_scores = s[pos]
    group = np.searchsorted(thresholds, pos_scores, side="left")
    per_group = np.bincount(group, minlength=starts.size)
    count_dtype = np.int32 if n < 2**30 else np.int64  # 2 * count must fit (2nd difference)
    # Positives with score ≥ threshold j: suffix sum of per_group from j.
    tps = np.cumsum(per_group[::-1], dtype=count_dtype)[::-1]
    del per_group
    fps = (n - starts).astype(count_dtype) - tps
    return fps, tps, thresholds


def _drop_intermediate(fps: np.ndarray, tps: np.ndarray) -> np.ndarray:
    """Indices kept by scikit-learn's ``drop_intermediate``: the ends and every corner (non-zero 2nd diff).

    The second difference is a symmetric stencil, so it can be evaluated in either threshold order.
    """
    if fps.size <= 2:
        return np.arange(fps.size)
    keep = np.empty(fps.size, dtype=bool)
    keep[0] = keep[-1] = True
    d2f = fps[2:] - 2 * fps[1:-1] + fps[:-2]  # exact: |values| ≤ 2n in the count dtype
    d2t = tps[2:] - 2 * tps[1:-1] + tps[:-2]
    np.logical_or(d2f != 0, d2t != 0, out=keep[1:-1])
    return np.flatnonzero(keep)


def _curve(
    fps: np.ndarray, tps: np.ndarray, thresholds: np.ndarray, drop_intermediate: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ROC arrays (descending thresholds, leading ``(0, 0, inf)``) from ascending counts."""
    if drop_intermediate:
        idx = _drop_intermediate(fps, tps)[::-1]
    else:
        idx = slice(None, None, -1)
    fps_d = np.concatenate(([0], fps[idx])).astype(np.float64)
    tps_d = np.concatenate(([0], tps[idx])).astype(np.float64)
    thr = np.concatenate(([np.inf], np.asarray(thresholds[idx], dtype=np.float64)))
    if fps_d[-1] <= 0:
        warnings.warn(
            "No negative samples in labels, false positive value should be meaningless", UserWarning, stacklevel=3
        )
        fpr = np.full(fps_d.shape, np.nan)
    else:
        fpr = fps_d / fps_d[-1]
    if tps_d[-1] <= 0:
        warnings.warn(
            "No positive samples in labels, true positive value should be meaningless", UserWarning, stacklevel=3
        )
        tpr = np.full(tps_d.shape, np.nan)
    else:
        tpr = tps_d / tps_d[-1]
    return fpr, tpr, thr


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=...)``, bit for bit, without scikit-learn.

    A pair is accepted iff ``score >= threshold``. Thresholds are the distinct scores, descending, as float64,
    preceded by ``inf`` (the ``(fpr, tpr) = (0, 0)`` point); ``fpr``/``tpr`` are exact integer counts divided
    by the number of negatives/positives. With ``drop_intermediate`` the points whose neighbours make both
    count sequences collinear (zero second difference) are removed, which is what scikit-learn keeps. Without
    negatives (positives) ``fpr`` (``tpr``) is all NaN with a warning, as in scikit-learn.
    """
    pos, s = _binary(labels, scores)
    if s.size == 0:
        raise ValueError("roc_curve needs at least one score")
    fps, tps, thr = _counts(pos, s)
    return _curve(fps, tps, thr, drop_intermediate)


def _max_count(target: float, total: int) -> int:
    """Largest ``c`` in ``[-1, total]`` with ``c / total <= target`` as a float64 division (-1: none)."""
    c = min(max(int(math.floor(target * total)), -1), total)
    while c < total and (c + 1) / total <= target:
        c += 1
    while c >= 0 and c / total > target:
        c -= 1
    return c


def tar_at_far(
    labels: np.ndarray,
    scores: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
    readout: str = "nearest",
) -> dict[float, dict[str, float]]:
    """TAR at each target FAR; returns ``{far: {"tar", "far_used", "threshold"}}`` (fractions, not percent).

    ``readout="nearest"`` is insightface's: on ``roc_curve(labels, scores)`` (``drop_intermediate=True``, the
    leading ``(0, 0, inf)`` point included), reverse the arrays and take the first index minimising
    ``|fpr - far|`` — so ties go to the smaller reversed index: among equal FPRs the largest TPR (lowest
    threshold), and between two points equally far below and above the target, the one above. ``far_used``
    may thus exceed ``far``.

    ``readout="strict"`` is the highest TPR whose FPR is ``<= far``: the lowest threshold (among all distinct
    scores, no points dropped) meeting that bound, or the ``(0, 0, inf)`` point when none does.

    Accepts iff ``score >= threshold``. One sort of all scores serves every target.
    """
    if readout not in ("nearest", "strict"):
        raise ValueError(f"readout must be 'nearest' or 'strict', got {readout!r}")
    pos, s = _binary(labels, scores)
    if s.size == 0:
        raise ValueError("tar_at_far needs at least one score")
    fps, tps, thr = _counts(pos, s)
    out: dict[float, dict[str, float]] = {}
    if readout == "nearest":
        fpr, tpr, thr_d = _curve(fps, tps, thr, drop_intermediate=True)
        fpr_r = fpr[::-1]
        for far in fars:
            i = fpr.size - 1 - int(np.argmin(np.abs(fpr_r - far)))
            out[far] = {"tar": float(tpr[i]), "far_used": float(fpr[i]), "threshold": float(thr_d[i])}
        return out

    n_neg = int(fps[0]) if fps.size else 0
    n_pos = int(tps[0]) if tps.size else 0
    if n_neg == 0 or n_pos == 0:
        warnings.warn("TAR@FAR needs both genuine and impostor scores; returning NaN", UserWarning, stacklevel=2)
        return {far: {"tar": math.nan, "far_used": math.nan, "threshold": math.nan} for far in fars}
    # Ascending thresholds: fps is non-increasing, so the points meeting fps <= c form a suffix; its first
    # index is the lowest qualifying threshold (highest TPR).
    neg_desc = -fps  # non-decreasing
    for far in fars:
        c = _max_count(float(far), n_neg)
        j = int(np.searchsorted(neg_desc, -c, side="left")) if c >= 0 else fps.size
        if j >= fps.size:
            out[far] = {"tar": 0.0, "far_used": 0.0, "threshold": math.inf}
        else:
            out[far] = {
                "tar": float(tps[j]) / n_pos,
                "far_used": float(fps[j]) / n_neg,
                "threshold": float(thr[j]),
            }
    return out


# --------------------------------------------------------------------------------------------------
# 1:N identification


def combine_galleries(*galleries: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``(subject_ids, features)`` galleries (IJB's G1 and G2) into one, as insightface's ``ijb_1n``.

    insightface joins G1 and G2 so that every mixed probe is mated (closed-set CMC). The NIST open-set
    protocol instead runs :func:`identification` once per gallery — probes of the other gallery's subjects
    are then the non-mated searches — and averages the two results. Subject ids must stay unique.
    """
    if not galleries:
        raise ValueError("combine_galleries needs at least one gallery")
    ids = np.concatenate([np.asarray(g[0]) for g in galleries])
    feats = np.concatenate([np.asarray(g[1]) for g in galleries], axis=0)
    if feats.shape[0] != ids.size:
        raise ValueError(f"{ids.size} subject ids but {feats.shape[0]} feature rows")
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"subject id {uniq[counts > 1][0]} appears in more than one gallery entry")
    return ids, feats


def identification(
    gallery_ids: np.ndarray,
    gallery_features: np.ndarray,
    probe_ids: np.ndarray,
    probe_features: np.ndarray,
    *,
    ranks: Sequence[int] = (1, 5, 10),
    fpirs: Sequence[float] = (0.01, 0.1),
) -> dict[str, Any]:
    """1:N search of probe templates against a gallery: CMC over mated probes and open-set TPIR at FPIR.

    Scores are dot products of the given rows (pass unit template features from :func:`pool_templates`).
    The gallery holds one entry per subject (a repeated subject id is an error). A probe is *mated* when its
    subject id is in the gallery, *non-mated* otherwise.

    * **Rank** of a mated probe = 1 + the number of other gallery entries scoring **≥** its mated score: ties
      count against the probe (so constant scores never look like perfect identification).
      ``cmc[k]`` = fraction of mated probes with rank ≤ k.
    * **Threshold at FPIR f**: ``k`` = largest count with ``k / n_nonmated <= f``; the threshold ``τ`` is the
      smallest float such that at most ``k`` non-mated probes have a top-1 score ``≥ τ`` (the float just
      above the (k+1)-th largest non-mated top-1 score; ``-inf`` when ``k = n_nonmated``). ``fpir_used`` is
      the fraction actually at or above ``τ`` (≤ f). ``ijb_evals.py`` thresholds one non-mated probe higher
      (at the ``int(n f)``-th largest, realising at most ``(k - 1) / n``).
    * **TPIR at f** = fraction of mated probes of rank 1 whose mated score is ``≥ τ``.

    Returns ``{"cmc": {k: rate}, "tpir": {f: {"tpir", "threshold", "fpir_used"}}, "n_mated", "n_nonmated",
    "mated_ranks"}``. Without mated probes the rates are NaN; without non-mated probes TPIR is NaN (the
    threshold is undefined — evaluate each gallery separately for open-set figures).
    """
    g_ids = np.asarray(gallery_ids)
    q_ids = np.asarray(probe_ids)
    g = np.asarray(gallery_features, dtype=np.float64)
    q = np.asarray(probe_features, dtype=np.float64)
    if g.ndim != 2 or q.ndim != 2 or g.shape[1] != q.shape[1]:
        raise ValueError(f"gallery {g.shape} and probe {q.shape} features must be [*, D] with the same D")
    if g_ids.shape != (g.shape[0],) or q_ids.shape != (q.shape[0],):
        raise ValueError("one subject id per gallery and per probe feature row is required")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty")
    sorter = np.argsort(g_ids, kind="stable")
    sg = g_ids[sorter]
    if sg.size > 1 and np.any(sg[1:] == sg[:-1]):
        raise ValueError(f"subject id {sg[1:][sg[1:] == sg[:-1]][0]} appears more than once in the gallery")
    pos = np.minimum(np.searchsorted(sg, q_ids), sg.size - 1)
    mated = sg[pos] == q_ids
    mate_col = np.where(mated, sorter[pos], -1)

    n_q = q.shape[0]
    mated_score = np.full(n_q, np.nan)
    rank = np.zeros(n_q, dtype=np.int64)
    top1 = np.full(n_q, np.nan)
    chunk = max(1, (64 << 20) // (8 * g.shape[0]))
    for a in range(0, n_q, chunk):
        b = min(a + chunk, n_q)
        sim = q[a:b] @ g.T
        top1[a:b] = sim.max(axis=1)
        mloc = np.flatnonzero(mated[a:b])
        if mloc.size:
            ms = sim[mloc, mate_col[a:b][mloc]]
            mated_score[a + mloc] = ms
            # Entries ≥ the mated score, the mated entry itself excluded.
            rank[a + mloc] = (sim[mloc] >= ms[:, None]).sum(axis=1)  # = 1 + others ≥ mated score
    m_rank = rank[mated]
    m_score = mated_score[mated]
    nm_top1 = top1[~mated]
    n_m, n_n = int(m_rank.size), int(nm_top1.size)

    cmc = {int(k): (float(np.mean(m_rank <= k)) if n_m else math.nan) for k in ranks}
    tpir: dict[float, dict[str, float]] = {}
    nm_desc = np.sort(nm_top1)[::-1]
    for f in fpirs:
        if n_n == 0 or n_m == 0:
            tpir[f] = {"tpir": math.nan, "threshold": math.nan, "fpir_used": math.nan}
            continue
        k = _max_count(float(f), n_n)
        tau = -math.inf if k >= n_n else float(np.nextafter(nm_desc[k], np.inf)) if k >= 0 else math.inf
        tpir[f] = {
            "tpir": float(np.mean((m_rank == 1) & (m_score >= tau))),
            "threshold": tau,
            "fpir_used": float(np.mean(nm_top1 >= tau)),
        }
    return {"cmc": cmc, "tpir": tpir, "n_mated": n_m, "n_nonmated": n_n, "mated_ranks": m_rank}

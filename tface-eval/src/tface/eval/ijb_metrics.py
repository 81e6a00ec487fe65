"""IJB-B / IJB-C evaluation math on given per-image features (pure numpy).

Reproduces insightface's ``eval_ijbc.py`` (and TFace's ``IJB_Evaluation.py``) from image features onwards:

* :func:`image_features` — the N/D/F test modes (flip sum, optional L2 normalisation, faceness weighting);
* :func:`pool_templates` — media mean, template sum, L2 normalisation, templates in ascending id order;
* :func:`score_pairs` — cosine (dot product) of the two template features of each pair, in float64;
* :class:`Roc` — the scores sorted once, read out as ``sklearn.metrics.roc_curve`` (``drop_intermediate``
  included), TAR@FAR as the scripts' "nearest point" and as a "strict" (FPR ≤ target) one, and the 1:N
  threshold; :func:`roc_curve` and :func:`tar_at_far` are one-shot shorthands, :func:`downsample_roc` thins
  a curve for plotting;
* :func:`identification` — 1:N CMC and open-set TPIR at FPIR; :func:`combine_galleries` joins G1 and G2.

Everything is vectorised: no Python loop runs per template, per pair or per score, so an IJB-C-sized
problem (469,375 images, 23k templates, 15.6M pairs) is pooled, scored and read out in seconds. Counts are
exact integers and every rate is one IEEE division, so the ROC is bit-identical to scikit-learn's; pooled
features and scores differ from insightface's loops only by floating-point summation order (~1e-16 relative).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_FARS",
    "ROC_POINTS",
    "Roc",
    "combine_galleries",
    "downsample_roc",
    "identification",
    "image_features",
    "pool_templates",
    "roc_curve",
    "score_pairs",
    "tar_at_far",
]

#: FAR targets reported by insightface's IJB scripts.
DEFAULT_FARS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: Most points kept of the ROC curve in a result (log-spaced in FPR), so reports can plot it cheaply.
ROC_POINTS = 500

# image_features converts this many rows to float64 at a time.
_FEATURE_CHUNK_ROWS = 16_384
# Pooling reduces about this many images at a time: their media accumulators (~1.4k float64 rows of 512)
# stay in cache, which makes IJB-C's pooling ~1.4× faster than with 65,536 (and bounds the extra memory).
_POOL_CHUNK_IMAGES = 8_192
# Scoring keeps one float64 similarity block of at most this many bytes.
_SCORE_BLOCK_BYTES = 128 << 20
# A pair block is scored by one matrix product when its rows × columns are at most this many times its
# pair count (a product element costs ~1/100 of a gathered dot product per feature dimension); otherwise
# each pair's two rows are gathered and multiplied.
_DENSE_RATIO = 128
# Pairs per chunk on the gather path, and when reading scores out of a block's product.
_GATHER_CHUNK = 16_384
_PAIR_CHUNK = 1 << 18
# Up to this many row blocks, each block's pairs are found by scanning all block numbers (no sort, no
# [P] index array); beyond, by one stable sort of them.
_SCAN_BLOCKS = 16
# Template ids up to this value are mapped to rows through a dense lookup table (else a binary search).
_LOOKUP_MAX_ID = 1 << 24
#: Arrays at least this long are sorted on several cores (below, a thread costs more than it saves).
_PARALLEL_SORT_MIN = 1 << 21
#: At most this many sorting threads.
_SORT_THREADS = 4


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
    kappa: np.ndarray | None = None,
    kappa_flip: np.ndarray | None = None,
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

    **Confidence** (``kappa``, and ``kappa_flip`` with ``flip``; SCF's confidence-aware pooling): every view is
    L2-normalised and weighted by its own confidence, ``f = κ·raw/‖raw‖ + κ_flip·raw_flip/‖raw_flip‖``, before
    D. The template sum then is ``Σ κ_i μ_i``, the mean direction of the product of the images' von Mises–Fisher
    densities (SCF, Li et al. 2021). ``norm`` must be off: it would erase the weights.
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
    k = kf = None
    if kappa is not None:
        if norm:
            raise ValueError("confidence weights (kappa) and norm=True exclude each other: the norm would erase them")
        k = _confidences(kappa, x.shape[0], "kappa")
        if xf is not None:
            if kappa_flip is None:
                raise ValueError("confidence weights with flip=True need kappa_flip (the mirrors' confidences)")
            kf = _confidences(kappa_flip, x.shape[0], "kappa_flip")
    out = np.empty(x.shape, dtype=np.float32)
    for a in range(0, x.shape[0], _FEATURE_CHUNK_ROWS):  # bounded float64 temporaries
        b = min(a + _FEATURE_CHUNK_ROWS, x.shape[0])
        f = x[a:b].astype(np.float64)
        if k is not None:
            f = _unit(f) * k[a:b, None]
        if xf is not None:
            f += xf[a:b] if kf is None else _unit(xf[a:b].astype(np.float64)) * kf[a:b, None]
        if norm:
            _unit(f)
        if s is not None:
            f *= s[a:b, None]
        out[a:b] = f
    return out


def _confidences(values: np.ndarray, n: int, name: str) -> np.ndarray:
    k = np.asarray(values, dtype=np.float64)
    if k.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {k.shape}")
    if not np.all(np.isfinite(k)) or np.any(k < 0):
        raise ValueError(f"{name}: confidences must be finite and >= 0")
    return k


def _unit(f: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in place (an all-zero row stays zero)."""
    n = np.sqrt(np.einsum("ij,ij->i", f, f))
    np.divide(f, n[:, None], out=f, where=n[:, None] > 0)
    return f


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
    # Chunks: templates [t0, t1) holding at most _POOL_CHUNK_IMAGES images (or one template when it alone is larger).
    chunks = []
    t0 = 0
    while t0 < n_t:
        t1 = max(int(np.searchsorted(t_img_start, t_img_start[t0] + _POOL_CHUNK_IMAGES, side="left")), t0 + 1)
        chunks.append((t0, t1))
        t0 = t1

    def pool(chunk: tuple[int, int]) -> None:
        t0, t1 = chunk
        i0 = int(t_img_start[t0])
        i1 = int(t_img_start[t1]) if t1 < n_t else n
        g0 = int(tg_start[t0])
        g1 = int(tg_start[t1]) if t1 < n_t else g_start.size
        sizes = g_size[g0:g1]
        media = _segment_sums(x, order[i0:i1], g_start[g0:g1] - i0, sizes)
        media /= sizes[:, None]
        out[t0:t1] = _segment_sums(media, None, tg_start[t0:t1] - g0, np.diff(np.append(tg_start[t0:t1], g1)))

    _run_threaded(pool, chunks)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    np.divide(out, norms[:, None], out=out, where=norms[:, None] > 0)
    return template_ids, out


# --------------------------------------------------------------------------------------------------
# Pair scores


def _pair_keys(template_ids: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Pair ids as table keys: ``(table, keys, used)``, ``table[keys[j][i]]`` the template row of ``pairs[i, j]``.

    ``used[j]`` holds the rows column ``j`` uses, ascending. Ids in ``[0, 2^24)`` are their own keys (views of
    ``pairs``, no copy), so any per-template value is one gather from a small id-indexed table and the 31M ids
    are read once, straight into what scoring needs; other ids are replaced by their row (binary search), the
    table being the identity. ValueError names the first pair with an unknown id.
    """
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
        table = np.full(int(sorted_ids[-1]) + 1, -1, dtype=np.int32)
        table[ids] = np.arange(n_t, dtype=np.int32)
        if pairs.min() >= 0 and pairs.max() < table.size:
            keys = [pairs[:, 0], pairs[:, 1]]
            used = []
            for k in keys:
                seen = np.zeros(table.size, dtype=bool)
                seen[k] = True
                used.append(table[seen])
            if all(np.all(u >= 0) for u in used):
                return table, keys, [np.sort(u) for u in used]
        inside = (pairs >= 0) & (pairs < table.size)
        bad = ~inside | (table[np.where(inside, pairs, 0)] < 0)
    else:
        pos = np.minimum(np.searchsorted(sorted_ids, pairs), max(n_t - 1, 0))
        bad = sorted_ids[pos] != pairs if n_t else np.ones(pairs.shape, dtype=bool)
        if not bad.any():
            keys = [pos[:, 0], pos[:, 1]]
            used = []
            for k in keys:
                seen = np.zeros(n_t, dtype=bool)
                seen[k] = True
                used.append(np.sort(sorter[seen]))
            return sorter.astype(np.int32), keys, used
    i = int(np.flatnonzero(bad.any(axis=1))[0])
    j = 0 if bad[i, 0] else 1
    raise ValueError(f"pair {i}: template id {pairs[i, j]} (column {j}) is not among the template ids")


def score_pairs(template_ids: np.ndarray, template_features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """float64 cosine score of each pair: the dot product of its two (unit) template feature rows.

    Equal to insightface's chunked ``np.sum(f1 * f2, -1)`` up to summation order (~1e-16). Instead of gathering
    two 512-d rows per pair (8 kB of memory traffic each, 15.6M times for IJB-C), the templates of the side
    with fewer distinct ids become "rows", the other side's become "columns", and each row block's scores are
    read out of one BLAS product ``F[rows] @ F[columns].T`` of at most ``_SCORE_BLOCK_BYTES``. Ids are mapped
    once, through small id-indexed tables (:func:`_pair_keys`), to a block number per pair; a block's pairs
    are found by scanning those numbers (a few blocks) or by one stable sort of them (many). Blocks whose
    product would be much larger than their pair count (sparse pair lists) fall back to gathered dot products.
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
    table, keys, used = _pair_keys(template_ids, p)
    side = 0 if used[0].size <= used[1].size else 1
    r_ids, c_ids = used[side], used[1 - side]
    r_key, c_key = keys[side], keys[1 - side]

    def by_key(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Key-indexed table of ``values`` given for template ``rows`` (every key a pair uses maps to one)."""
        by_row = np.zeros(f.shape[0] + 1, dtype=values.dtype)  # table's -1 (not a template) reads the spare entry
        by_row[rows] = values
        return by_row[table]

    block = max(1, min(r_ids.size, _SCORE_BLOCK_BYTES // (8 * max(c_ids.size, 1))))
    n_blocks = -(-r_ids.size // block)
    r_pos = np.arange(r_ids.size, dtype=np.int64)
    row_of = by_key(r_ids, r_pos)  # key → position among the rows
    col_of = by_key(c_ids, np.arange(c_ids.size, dtype=np.int64))
    key_type = np.uint8 if n_blocks <= 256 else np.uint16 if n_blocks <= 65536 else np.int64
    bucket = by_key(r_ids, (r_pos // block).astype(key_type))[r_key]
    order = bounds = None
    if n_blocks > _SCAN_BLOCKS:
        order = np.argsort(bucket, kind="stable")  # radix sort for 8/16-bit keys
        bounds = np.concatenate(([0], np.cumsum(np.bincount(bucket, minlength=n_blocks))))

    # A contiguous range of columns (IJB: the probe templates) is a view, not an 80 MB copy.
    fc = f[c_ids[0] : c_ids[-1] + 1] if c_ids[-1] - c_ids[0] + 1 == c_ids.size else f[c_ids]
    buf = np.empty((block, c_ids.size), dtype=np.float64)  # reused: no page faults per block

    def read(sel: np.ndarray, r0: int, sim: np.ndarray | None, fr: np.ndarray | None) -> None:
        """Scores of the pairs ``sel`` of the block starting at row ``r0``: out of its product ``sim``, or (``sim``
        None) as dot products of its rows ``fr`` with their columns."""
        lr = row_of[r_key[sel]]
        lr -= r0
        lc = col_of[c_key[sel]]
        if sim is not None:
            lr *= c_ids.size
            lr += lc
            scores[sel] = np.take(sim, lr)
        else:
            scores[sel] = np.einsum("ij,ij->i", fr[lr], fc[lc])

    for b in range(n_blocks):
        # This block's pairs, ascending: a scan costs ~1 ms per million pairs.
        sel = np.flatnonzero(bucket == b) if order is None else order[bounds[b] : bounds[b + 1]]
        if sel.size == 0:
            continue
        r0 = b * block
        r1 = min(r0 + block, r_ids.size)
        if (r1 - r0) * c_ids.size <= _DENSE_RATIO * sel.size:
            sim, fr, step = np.matmul(f[r_ids[r0:r1]], fc.T, out=buf[: r1 - r0]).reshape(-1), None, _PAIR_CHUNK
        else:
            sim, fr, step = None, f[r_ids[r0:r1]], _GATHER_CHUNK
        # chunks (the index temporaries stay in cache), on several threads: each writes its own pairs' scores
        _run_threaded(lambda k, sel=sel, r0=r0, sim=sim, fr=fr, step=step: read(sel[k : k + step], r0, sim, fr),
                      range(0, sel.size, step))
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
        if np.issubdtype(y.dtype, np.integer):  # two reductions instead of three comparisons over 15.6M labels
            binary = y.size == 0 or (y.min() >= -1 and y.max() <= 1)
        else:
            binary = np.all(pos | (y == 0) | (y == -1))
        if not binary:
            raise ValueError("labels must be binary: 1 (genuine) and 0 or -1 (impostor)")
    if s.dtype == np.bool_:
        s = s.astype(np.int8)
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise ValueError(f"scores must be real numbers, got {s.dtype}")
    if np.issubdtype(s.dtype, np.floating) and not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (no NaN or infinity)")
    return pos, s


def _max_count(target: float, total: int) -> int:
    """Largest ``c`` in ``[-1, total]`` with ``c / total <= target`` as a float64 division (-1: none)."""
    c = min(max(int(math.floor(target * total)), -1), total)
    while c < total and (c + 1) / total <= target:
        c += 1
    while c >= 0 and c / total > target:
        c -= 1
    return c


def _distinct(*parts: np.ndarray) -> np.ndarray:
    """Sorted distinct values of sorted integer arrays: one merge (timsort finds the runs), one comparison.

    numpy 2.4's ``np.unique`` hashes at ~1 µs per value: seconds for the million repeated scores of the bench.
    """
    a = np.sort(np.concatenate(parts), kind="stable")
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if a.size else a


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _run_threaded(fn: Any, items: Sequence[Any]) -> None:
    """``fn(item)`` for every item, on up to :data:`_SORT_THREADS` threads when there are several items (numpy
    releases the GIL in the gathers, sums and sorts these run)."""
    k = min(_threads(), _SORT_THREADS, len(items))
    if k < 2:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(k) as pool:
        list(pool.map(fn, items))


def _sort_in_place(a: np.ndarray) -> np.ndarray:
    """``a`` sorted in place, on up to 4 cores for large arrays: an in-place partition at the quantiles splits it
    into pieces whose values do not overlap, and each piece is sorted in its own thread (numpy releases the GIL
    while sorting). The result is the same sorted array as ``np.sort``."""
    k = min(_threads(), _SORT_THREADS)
    if k < 2 or a.size < _PARALLEL_SORT_MIN:
        a.sort()
        return a
    cuts = [a.size * i // k for i in range(1, k)]
    a.partition(cuts)
    bounds = [0, *cuts, a.size]
    _run_threaded(lambda i: a[bounds[i] : bounds[i + 1]].sort(), range(k))
    return a


class Roc:
    """The ROC of one set of scores, sorted once and then read out as often as needed.

    Every figure of an evaluation — scikit-learn's curve, both TAR@FAR read-outs, the plotted curve, the
    open-set threshold of :func:`identification` — comes from one object, so the scores are sorted once.

    A pair is accepted iff ``score >= threshold``; thresholds are the distinct scores. Besides the sorted
    scores only the sorted position of each positive's value is kept: the threshold at sorted position ``i``
    (the first of its value) accepts ``n - i`` scores, of which the positives at positions ``>= i`` — so no
    per-threshold count array is built unless the full curve is asked for.
    """

    __slots__ = ("n_neg", "n_pos", "_kept", "_pos_starts", "_sorted")

    def __init__(self, labels: np.ndarray, scores: np.ndarray, *, overwrite: bool = False) -> None:
        """``overwrite=True`` lets the ROC sort ``scores`` in place (a contiguous, writable float64 array; others are
        copied): the caller's array ends up sorted, and IJB-C saves a 125 MB copy and its page faults."""
        pos, s = _binary(labels, scores)
        if s.size == 0:
            raise ValueError("an ROC needs at least one score")
        positives = np.sort(s[pos])  # taken before an in-place sort reorders s
        owned = overwrite and s.dtype == np.float64 and s.flags.c_contiguous and s.flags.writeable
        self._sorted = _sort_in_place(s if owned else s.astype(np.float64, copy=True))
        # First sorted position of each positive's value, ascending: all the counts need of the labels.
        self._pos_starts = np.searchsorted(self._sorted, positives, side="left")
        self.n_pos = int(self._pos_starts.size)
        self.n_neg = int(s.size) - self.n_pos
        self._kept: np.ndarray | None = None

    def _counts(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(fps, tps)`` at the thresholds ``sorted[starts]``; ``starts`` ascending, each the first of its value."""
        # Positives below starts[j] are those whose position has at most j starts at or below it.
        k = np.searchsorted(starts, self._pos_starts, side="right")
        tps = np.cumsum(np.bincount(k, minlength=starts.size + 1)[: starts.size])
        np.subtract(self.n_pos, tps, out=tps)
        fps = np.subtract(self._sorted.size, starts)
        fps -= tps
        return fps, tps

    def _corners(self) -> np.ndarray:
        """Sorted positions (ascending thresholds) of the points scikit-learn's ``drop_intermediate`` keeps.

        Its rule — keep the ends and every point with a non-zero second difference of fps or tps — keeps the
        threshold of a value iff the value's step (scores equal to it, positives among them) differs from the
        step of the next lower value. Most values are one negative score each, with equal steps, so only the
        "special" values (repeated, or holding a positive) and the values just above them can be kept: a
        special value is kept unless the value below is special with the same step, and a lone value just
        above a special one always is.
        """
        if self._kept is None:
            s = self._sorted
            n = s.size
            d = np.flatnonzero(s[1:] == s[:-1])  # position i repeats at i + 1
            run = np.flatnonzero(np.concatenate(([True], d[1:] != d[:-1] + 1))) if d.size else d
            rep_start = d[run]
            rep_size = np.diff(np.append(run, d.size)) + 1
            pp = self._pos_starts
            first = np.flatnonzero(np.concatenate(([True], pp[1:] != pp[:-1]))) if pp.size else pp
            pos_start, pos_count = pp[first], np.diff(np.append(first, pp.size))
            st = _distinct(rep_start, pos_start)  # special values, by first position
            z = np.ones(st.size, dtype=np.int64)
            z[np.searchsorted(st, rep_start)] = rep_size
            q = np.zeros(st.size, dtype=np.int64)
            q[np.searchsorted(st, pos_start)] = pos_count
            above = st + z
            adjacent = above[:-1] == st[1:]  # special value k + 1 sits right above special value k
            keep_special = np.ones(st.size, dtype=bool)
            keep_special[1:] = ~(adjacent & (z[:-1] == z[1:]) & (q[:-1] == q[1:]))
            lone = above < n
            lone[:-1] &= ~adjacent
            last = int(np.searchsorted(s, s[-1], side="left"))
            self._kept = _distinct(np.array([0, last]), st[keep_special], above[lone])
        return self._kept

    def curve(self, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(fpr, tpr, thresholds)`` as ``sklearn.metrics.roc_curve(..., drop_intermediate=...)``, bit for bit.

        Thresholds descending as float64, preceded by ``inf`` (the ``(0, 0)`` point); rates are exact counts
        divided by the number of negatives/positives. Without negatives (positives) ``fpr`` (``tpr``) is all
        NaN with a warning, as in scikit-learn.
        """
        s = self._sorted
        if drop_intermediate:
            starts = self._corners()
        else:
            starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
        fps, tps = self._counts(starts)
        # Written straight into the float64 outputs (the full curve of IJB-C is 15.6M points).
        fpr, tpr, thr = (np.empty(starts.size + 1) for _ in range(3))
        fpr[0] = tpr[0] = 0.0
        thr[0] = np.inf
        thr[1:] = s[starts[::-1]]
        if self.n_neg == 0:
            warnings.warn(
                "No negative samples in labels, false positive value should be meaningless", UserWarning, stacklevel=2
            )
            fpr[:] = np.nan
        else:
            np.divide(fps[::-1], self.n_neg, out=fpr[1:])
        if self.n_pos == 0:
            warnings.warn(
                "No positive samples in labels, true positive value should be meaningless", UserWarning, stacklevel=2
            )
            tpr[:] = np.nan
        else:
            np.divide(tps[::-1], self.n_pos, out=tpr[1:])
        return fpr, tpr, thr

    def _strict(self, count: int) -> tuple[int, int, int]:
        """``(i, fps, tps)`` of the lowest threshold accepting at most ``count`` negatives (the highest TPR).

        ``i`` is its sorted position (``n``, with nothing accepted, when no threshold qualifies); every score
        below it is rejected, so ``sorted[i - 1]`` is the highest rejected score. Accepted negatives fall as
        the position rises, so a binary search over positions finds it.
        """
        s, n = self._sorted, self._sorted.size

        def counts(i: int) -> tuple[int, int]:
            fps, tps = self._counts(np.searchsorted(s, s[i : i + 1], side="left"))
            return int(fps[0]), int(tps[0])

        lo, hi = (0, n) if count >= 0 else (n, n)
        while lo < hi:
            mid = (lo + hi) // 2
            if counts(mid)[0] <= count:
                hi = mid
            else:
                lo = mid + 1
        return (lo, *counts(lo)) if lo < n else (n, 0, 0)

    def tar_at_far(
        self, fars: Sequence[float] = DEFAULT_FARS, readout: str = "nearest"
    ) -> dict[float, dict[str, float]]:
        """TAR at each target FAR: ``{far: {"tar", "far_used", "threshold"}}`` (fractions, not percent).

        ``"nearest"`` is insightface's: on :meth:`curve` (``drop_intermediate=True``, the leading
        ``(0, 0, inf)`` point included), reverse the arrays and take the first index minimising
        ``|fpr - far|`` — so ties go to the smaller reversed index: among equal FPRs the largest TPR (lowest
        threshold), and between two points equally far below and above the target, the one above.
        ``far_used`` may thus exceed ``far``.

        ``"strict"`` is the highest TPR whose FPR is ``<= far``: the lowest threshold (among all distinct
        scores, no points dropped) meeting that bound, or the ``(0, 0, inf)`` point when none does.
        """
        if readout not in ("nearest", "strict"):
            raise ValueError(f"readout must be 'nearest' or 'strict', got {readout!r}")
        out: dict[float, dict[str, float]] = {}
        if readout == "nearest":
            fpr, tpr, thr = self.curve()
            fpr_r = fpr[::-1]
            for far in fars:
                i = fpr.size - 1 - int(np.argmin(np.abs(fpr_r - far)))
                out[far] = {"tar": float(tpr[i]), "far_used": float(fpr[i]), "threshold": float(thr[i])}
            return out
        if self.n_neg == 0 or self.n_pos == 0:
            warnings.warn("TAR@FAR needs both genuine and impostor scores; returning NaN", UserWarning, stacklevel=2)
            return {far: {"tar": math.nan, "far_used": math.nan, "threshold": math.nan} for far in fars}
        for far in fars:
            i, fps, tps = self._strict(_max_count(float(far), self.n_neg))
            threshold = float(self._sorted[i]) if i < self._sorted.size else math.inf
            out[far] = {"tar": tps / self.n_pos, "far_used": fps / self.n_neg, "threshold": threshold}
        return out


def roc_curve(
    labels: np.ndarray, scores: np.ndarray, drop_intermediate: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=...)``, bit for bit, without scikit-learn.

    Shorthand for ``Roc(labels, scores).curve(drop_intermediate)``; build one :class:`Roc` instead when more
    than one figure is read from the same scores.
    """
    return Roc(labels, scores).curve(drop_intermediate)


def tar_at_far(
    labels: np.ndarray,
    scores: np.ndarray,
    fars: Sequence[float] = DEFAULT_FARS,
    readout: str = "nearest",
) -> dict[float, dict[str, float]]:
    """TAR at each target FAR, ``Roc(labels, scores).tar_at_far(fars, readout)`` (see :meth:`Roc.tar_at_far`)."""
    return Roc(labels, scores).tar_at_far(fars, readout)


def downsample_roc(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` ROC points, log-spaced in FPR, for plotting on a log axis.

    For each of ``max_points − 2`` FPR values spaced evenly in ``log(FPR)`` between the smallest positive FPR
    and the largest, the last curve point at or below it is kept (the highest TPR reached by then, so the
    step curve is never drawn above the truth); the first and last points are always kept.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.size <= max_points:
        return fpr, tpr
    positive = fpr[fpr > 0]
    if positive.size == 0:
        return fpr[[0, -1]], tpr[[0, -1]]
    grid = np.geomspace(positive[0], fpr[-1], max_points - 2)
    idx = np.searchsorted(fpr, grid, side="right") - 1
    idx = np.unique(np.concatenate(([0], idx, [fpr.size - 1])))
    return fpr[idx], tpr[idx]

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
    if not (n_n and n_m):
        tpir = {f: {"tpir": math.nan, "threshold": math.nan, "fpir_used": math.nan} for f in fpirs}
    else:
        # The threshold is the strict read-out of one ROC: rank-1 mated scores (a mated probe below rank 1
        # is never a hit) against the non-mated top-1 scores.
        hit = m_rank == 1
        labels = np.concatenate((np.ones(int(np.count_nonzero(hit)), dtype=bool), np.zeros(n_n, dtype=bool)))
        roc = Roc(labels, np.concatenate((m_score[hit], nm_top1)))
        for f in fpirs:
            k = _max_count(float(f), n_n)
            i, fps, tps = roc._strict(k)
            # τ: the float just above the highest rejected score, the (k+1)-th largest non-mated top-1 score.
            tau = math.inf if k < 0 else -math.inf if i == 0 else float(np.nextafter(roc._sorted[i - 1], np.inf))
            tpir[f] = {"tpir": tps / n_m, "threshold": tau, "fpir_used": fps / n_n}
    return {"cmc": cmc, "tpir": tpir, "n_mated": n_m, "n_nonmated": n_n, "mated_ranks": m_rank}

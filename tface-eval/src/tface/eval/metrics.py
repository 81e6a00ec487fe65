"""The insightface 10-fold verification protocol on pair distances (pure numpy).

Reproduces ``calculate_roc`` / ``calculate_val`` of insightface's ``verification.py``:

* folds are contiguous, unshuffled blocks of pair indices (scikit-learn ``KFold(n, shuffle=False)``: the
  first ``N % n`` folds hold one pair more);
* a pair is predicted "same" iff its squared distance is **strictly less than** the threshold;
* on the training folds, the **first** threshold of ``np.arange(0, 4, 0.01)`` reaching the highest
  accuracy is applied to the held-out fold; accuracy is the mean of the fold accuracies ± their
  population standard deviation;
* TPR/FPR curves are the fold-wise test-set curves averaged over folds;
* VAL@FAR: on the training folds, FAR is computed on ``np.arange(0, 4, 0.001)`` and the threshold giving
  the target FAR is found by ``scipy.interpolate.interp1d(far, thresholds, kind="slinear")`` — as scipy
  evaluated it before it started rejecting repeated ``far`` values (scipy ≥ 1.9 raises "Expect x to not
  have duplicates" there, insightface issue #2152). Threshold 0 when the training FAR never reaches the
  target.

The threshold sweep is vectorised (per-fold sorted distances + ``searchsorted``); every count is an exact
integer and every ratio is one IEEE division, so the results are bit-identical to the naive loops.

Comparisons are made in float64: float32 distances are widened exactly, as numpy ≥ 2 does for
``np.less(float32_array, np.float64(threshold))``. (numpy 1.x compared such arrays in float32 — a
distance equal to ``float32(threshold)`` could then fall on the other side. This is rare and is ignored.)

Degenerate folds, where insightface divides by zero: a TPR/FPR/VAL/FAR with an empty denominator is 0
(insightface does so for TPR/FPR and raises ``ZeroDivisionError`` for VAL/FAR).

``exact_accuracy`` is the same 10-fold protocol without the 0.01 grid: on the training folds every split of
the sorted distances is tried (a threshold between each two consecutive distinct values), so the number no
longer depends on where the grid happens to fall. It is reported beside the insightface number, never
instead of it, because published tables use the grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "ACC_THRESHOLDS",
    "FAR_TARGET",
    "VAL_THRESHOLDS",
    "exact_accuracy",
    "fold_bounds",
    "pair_distances",
    "slinear_interp",
    "split_thresholds",
    "verification_metrics",
]

#: Threshold grids of insightface's ``evaluate`` (floating-point ``arange``, representation error included).
ACC_THRESHOLDS: np.ndarray = np.arange(0, 4, 0.01)
VAL_THRESHOLDS: np.ndarray = np.arange(0, 4, 0.001)
FAR_TARGET = 1e-3


def fold_bounds(n: int, nfolds: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each test fold: ``KFold(nfolds, shuffle=False)`` over ``range(n)``."""
    if nfolds < 1:
        raise ValueError(f"nfolds must be at least 1, got {nfolds}")
    if n < nfolds:
        raise ValueError(f"{n} pairs cannot be split into {nfolds} folds")
    sizes = np.full(nfolds, n // nfolds, dtype=np.int64)
    sizes[: n % nfolds] += 1
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for size, stop in zip(sizes, stops)]


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Squared euclidean distance of rows ``2k`` and ``2k+1`` (computed in the embeddings' dtype)."""
    e1 = embeddings[0::2]
    e2 = embeddings[1::2]
    return np.sum(np.square(np.subtract(e1, e2)), 1)


def slinear_interp(x: np.ndarray, y: np.ndarray, x_new: float) -> float:
    """``interp1d(x, y, kind="slinear")(x_new)`` as scipy < 1.9 computed it, repeated ``x`` allowed.

    scipy sorted ``x`` (stable), built a degree-1 B-spline with knots ``[x0, x0, x1, …, x_last, x_last]``
    and evaluated it with de Boor's recursion. That picks the last segment ``i`` with ``x[i] <= x_new``
    (at most the last but one) and blends ``y[i]`` and ``y[i+1]``; on a zero-width segment (possible only
    when ``x_new`` equals a repeated maximum) both basis functions are 0, so the result is 0.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError("slinear interpolation needs two 1-D arrays of equal length ≥ 2")
    order = np.argsort(x, kind="stable")
    x = x[order]
    y = y[order]
    x_new = float(x_new)
    if not x[0] <= x_new <= x[-1]:
        raise ValueError(f"A value ({x_new}) is outside the interpolation range [{x[0]}, {x[-1]}].")
    i = min(int(np.searchsorted(x, x_new, side="right")) - 1, x.size - 2)
    xa, xb = x[i], x[i + 1]
    if xa == xb:
        return 0.0
    w = 1.0 / (xb - xa)
    return float(y[i] * (w * (xb - x_new)) + y[i + 1] * (w * (x_new - xa)))


def _ratio(num: np.ndarray, den: int | np.ndarray) -> np.ndarray:
    """``num / den`` elementwise, 0 where ``den`` is 0 (insightface's TPR/FPR convention)."""
    num = np.asarray(num, dtype=np.int64)
    den = np.broadcast_to(np.asarray(den, dtype=np.int64), num.shape)
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_pairs(distances: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 distances and boolean flags (the widening is exact for float32/float16)."""
    dist = np.asarray(distances)
    same = np.asarray(issame)
    if dist.ndim != 1 or same.ndim != 1 or dist.shape != same.shape:
        raise ValueError(f"distances {dist.shape} and issame {same.shape} must be 1-D of equal length")
    if same.dtype != np.bool_:
        raise ValueError(f"issame must be boolean, got {same.dtype}")
    return dist.astype(np.float64), same


def verification_metrics(
    distances: np.ndarray,
    issame: np.ndarray,
    nfolds: int = 10,
    far_target: float = FAR_TARGET,
) -> dict[str, Any]:
    """insightface's verification metrics for ``N`` pair distances and same-identity flags.

    Returns fractions (not percent): ``accuracy`` and ``accuracy_std`` (mean and population std of
    ``fold_accuracies``), ``best_thresholds`` (per fold) and ``best_threshold`` (their mean, the number
    TFace prints), ``tpr``/``fpr`` (fold-averaged curves over ``ACC_THRESHOLDS``), ``val``/``val_std``/
    ``far`` (VAL, i.e. TAR, at ``far_target``), ``val_thresholds`` (per fold).
    """
    dist, same = _check_pairs(distances, issame)
    bounds = fold_bounds(dist.size, nfolds)
    acc_thr = ACC_THRESHOLDS
    val_thr = VAL_THRESHOLDS

    # Per test fold: sorted distances of same / different pairs, and "d < t" counts on both grids.
    same_sorted, diff_sorted = [], []
    n_same = np.zeros(nfolds, dtype=np.int64)
    n_diff = np.zeros(nfolds, dtype=np.int64)
    tp = np.zeros((nfolds, acc_thr.size), dtype=np.int64)
    fp = np.zeros((nfolds, acc_thr.size), dtype=np.int64)
    fa_val = np.zeros((nfolds, val_thr.size), dtype=np.int64)
    for f, (start, stop) in enumerate(bounds):
        d, s = dist[start:stop], same[start:stop]
        ds, dd = np.sort(d[s]), np.sort(d[~s])  # NaN sorts last and is never "< t"
        same_sorted.append(ds)
        diff_sorted.append(dd)
        n_same[f], n_diff[f] = ds.size, dd.size
        tp[f] = np.searchsorted(ds, acc_thr, side="left")
        fp[f] = np.searchsorted(dd, acc_thr, side="left")
        fa_val[f] = np.searchsorted(dd, val_thr, side="left")

    def train(total: Any, fold: np.ndarray) -> np.ndarray:
        """Counts on the training folds: all folds but this one (insightface's LFold(1): the fold itself)."""
        return fold if nfolds == 1 else total - fold

    n_sizes = n_same + n_diff

    # Accuracy: best threshold on the training folds, applied to the test fold.
    tp_tr = train(tp.sum(0), tp)
    fp_tr = train(fp.sum(0), fp)
    n_diff_tr = train(n_diff.sum(), n_diff)
    n_tr = train(n_sizes.sum(), n_sizes)
    acc_train = (tp_tr + (n_diff_tr[:, None] - fp_tr)) / n_tr[:, None]
    best = np.argmax(acc_train, axis=1)  # first maximum
    rows = np.arange(nfolds)
    fold_acc = (tp[rows, best] + (n_diff - fp[rows, best])) / n_sizes
    tprs = _ratio(tp, n_same[:, None])
    fprs = _ratio(fp, n_diff[:, None])

    # VAL at the target FAR.
    far_train = _ratio(train(fa_val.sum(0), fa_val), train(n_diff.sum(), n_diff)[:, None])
    val = np.zeros(nfolds)
    far = np.zeros(nfolds)
    val_thresholds = np.zeros(nfolds)
    for f in range(nfolds):
        if np.max(far_train[f]) >= far_target:
            threshold = slinear_interp(far_train[f], val_thr, far_target)
        else:
            threshold = 0.0
        val_thresholds[f] = threshold
        ta = int(np.searchsorted(same_sorted[f], threshold, side="left"))
        fa = int(np.searchsorted(diff_sorted[f], threshold, side="left"))
        val[f] = _ratio(ta, n_same[f])
        far[f] = _ratio(fa, n_diff[f])

    return {
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "fold_accuracies": fold_acc,
        "best_thresholds": acc_thr[best],
        "best_threshold": float(np.mean(acc_thr[best])),
        "thresholds": acc_thr,
        "tpr": np.mean(tprs, 0),
        "fpr": np.mean(fprs, 0),
        "val": float(np.mean(val)),
        "val_std": float(np.std(val)),
        "far": float(np.mean(far)),
        "val_thresholds": val_thresholds,
    }


def split_thresholds(train_distances: np.ndarray) -> np.ndarray:
    """One threshold per achievable split of ``train_distances`` under "same iff d < t", ascending.

    With ``u`` the sorted distinct (non-NaN) distances: ``u[0]`` (accepts none of them), the midpoint of each
    two neighbours ``u[i]``, ``u[i+1]`` (accepts exactly the values ≤ ``u[i]``) and the next float above
    ``u[-1]`` (accepts all). A midpoint that rounds onto ``u[i]`` (neighbours one ulp apart) is replaced by
    ``u[i+1]``, which makes the same split, so every split is reached exactly once.
    """
    d = np.asarray(train_distances, dtype=np.float64)
    u = np.unique(d[~np.isnan(d)])
    if u.size == 0:
        return np.zeros(1)
    lo, hi = u[:-1], u[1:]
    mid = np.minimum(lo + (hi - lo) / 2, hi)
    mid = np.where(mid > lo, mid, hi)
    return np.concatenate(([u[0]], mid, [np.nextafter(u[-1], np.inf)]))


def exact_accuracy(distances: np.ndarray, issame: np.ndarray, nfolds: int = 10) -> dict[str, Any]:
    """The 10-fold accuracy with the threshold chosen among all splits of the sorted training distances.

    Folds and the decision rule are insightface's (contiguous ``KFold`` blocks, "same" iff ``d < t``); only
    the candidate thresholds differ: :func:`split_thresholds` of the training folds instead of the 0.01 grid.
    The first (smallest) threshold with the most correct training pairs wins. The training accuracy of every
    candidate comes from two ``searchsorted`` calls on the sorted same / different distances, so a fold costs
    ``O(n log n)``. Returns fractions: ``accuracy``, ``accuracy_std`` (population), ``fold_accuracies``,
    ``best_thresholds`` and ``best_threshold`` (their mean).
    """
    dist, same = _check_pairs(distances, issame)
    bounds = fold_bounds(dist.size, nfolds)
    fold_acc = np.zeros(nfolds)
    best = np.zeros(nfolds)
    for f, (start, stop) in enumerate(bounds):
        if nfolds == 1:  # insightface's LFold(1): the fold trains on itself
            d_train, s_train = dist, same
        else:
            d_train = np.concatenate((dist[:start], dist[stop:]))
            s_train = np.concatenate((same[:start], same[stop:]))
        cand = split_thresholds(d_train)
        same_sorted = np.sort(d_train[s_train])  # NaN sorts last and is never "< t"
        diff_sorted = np.sort(d_train[~s_train])
        correct = np.searchsorted(same_sorted, cand, side="left") + (
            diff_sorted.size - np.searchsorted(diff_sorted, cand, side="left")
        )
        t = cand[int(np.argmax(correct))]
        d_test, s_test = dist[start:stop], same[start:stop]
        fold_acc[f] = np.count_nonzero(np.less(d_test, t) == s_test) / d_test.size
        best[f] = t
    return {
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "fold_accuracies": fold_acc,
        "best_thresholds": best,
        "best_threshold": float(np.mean(best)),
    }

"""Verification protocol: metrics against a plain transcription of insightface, and the ``.bin`` pipeline."""

from __future__ import annotations

import io
import pathlib

import attrs
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tface.core.config import ConfigError, structure, validate_options
from tface.core.data.binfile import BinFormatError, write_bin
from tface.core.protocol import EvalContext, EvalProtocol
from tface.eval.metrics import (
    ACC_THRESHOLDS,
    exact_accuracy,
    fold_bounds,
    slinear_interp,
    split_thresholds,
    verification_metrics,
)
from tface.eval.verification import Verification, embed_pairs, roc_curve_points

# --------------------------------------------------------------------------------------------------
# Reference: insightface's calculate_roc / calculate_val written out with plain loops.


def ref_folds(n, nfolds):
    sizes = [n // nfolds + (1 if i < n % nfolds else 0) for i in range(nfolds)]
    out, start = [], 0
    for size in sizes:
        test = np.arange(start, start + size)
        train = np.array([i for i in range(n) if not start <= i < start + size], dtype=np.int64)
        out.append((train, test))
        start += size
    return out


def ref_accuracy(threshold, dist, same):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, same))
    fp = np.sum(np.logical_and(predict, np.logical_not(same)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(same)))
    fn = np.sum(np.logical_and(np.logical_not(predict), same))
    tpr = 0 if (tp + fn == 0) else float(tp) / float(tp + fn)
    fpr = 0 if (fp + tn == 0) else float(fp) / float(fp + tn)
    acc = float(tp + tn) / dist.size
    return tpr, fpr, acc


def ref_roc(dist, same, nfolds=10):
    thresholds = np.arange(0, 4, 0.01)
    tprs = np.zeros((nfolds, len(thresholds)))
    fprs = np.zeros((nfolds, len(thresholds)))
    accuracy = np.zeros(nfolds)
    best = np.zeros(nfolds)
    for f, (train, test) in enumerate(ref_folds(len(dist), nfolds)):
        acc_train = np.zeros(len(thresholds))
        for k, t in enumerate(thresholds):
            _, _, acc_train[k] = ref_accuracy(t, dist[train], same[train])
        b = np.argmax(acc_train)
        for k, t in enumerate(thresholds):
            tprs[f, k], fprs[f, k], _ = ref_accuracy(t, dist[test], same[test])
        _, _, accuracy[f] = ref_accuracy(thresholds[b], dist[test], same[test])
        best[f] = thresholds[b]
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, best


def old_scipy_slinear(x, y, x_new):
    """interp1d(kind="slinear") of scipy < 1.9: a k=1 B-spline with knots [x0, x, x_last] (no duplicate check)."""
    from scipy.interpolate import BSpline

    order = np.argsort(x, kind="mergesort")
    x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
    assert x[0] <= x_new <= x[-1]
    return float(BSpline.construct_fast(np.r_[x[0], x, x[-1]], np.ascontiguousarray(y), 1)(x_new))


def ref_val_far(threshold, dist, same):
    predict = np.less(dist, threshold)
    ta = np.sum(np.logical_and(predict, same))
    fa = np.sum(np.logical_and(predict, np.logical_not(same)))
    return float(ta) / float(np.sum(same)), float(fa) / float(np.sum(np.logical_not(same)))


def ref_val(dist, same, nfolds=10, far_target=1e-3):
    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(nfolds), np.zeros(nfolds)
    for f, (train, test) in enumerate(ref_folds(len(dist), nfolds)):
        far_train = np.zeros(len(thresholds))
        for k, t in enumerate(thresholds):
            _, far_train[k] = ref_val_far(t, dist[train], same[train])
        threshold = (
            old_scipy_slinear(far_train, thresholds, far_target) if far_train.max() >= far_target else 0.0
        )
        val[f], far[f] = ref_val_far(threshold, dist[test], same[test])
    return np.mean(val), np.std(val), np.mean(far)


# --------------------------------------------------------------------------------------------------
# Metrics


def _cases():
    rng = np.random.default_rng(1234)
    grid = np.arange(0, 4, 0.01)
    cases = {}
    for n in (6000, 6001, 37, 10, 11):
        same = rng.random(n) < 0.5
        cases[f"random-{n}"] = (rng.uniform(0, 4, n).astype(np.float32), same)
        d = np.where(same, rng.normal(0.9, 0.3, n), rng.normal(1.7, 0.3, n)).clip(0, 4)
        cases[f"realistic-{n}"] = (d.astype(np.float32), same)
    n = 6001
    same = rng.random(n) < 0.5
    cases["on-grid"] = (grid[rng.integers(0, 400, n)], same)  # exactly the arange values: ties at "<"
    cases["on-grid-f32"] = (grid[rng.integers(0, 400, n)].astype(np.float32), same)
    cases["decimal"] = (rng.integers(0, 400, n) / 100.0, same)  # k/100 differs from arange by rounding
    cases["few-values"] = (rng.choice([0.5, 1.0, 1.0, 1.5], n), same)  # massive ties
    cases["all-same"] = (rng.uniform(0, 2, 37), np.ones(37, bool))
    cases["all-different"] = (rng.uniform(0, 2, 37), np.zeros(37, bool))
    cases["constant"] = (np.full(101, 1.23), rng.random(101) < 0.3)
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_accuracy_matches_bruteforce(name):
    dist, same = CASES[name]
    tpr, fpr, accuracy, best = ref_roc(dist, same)
    m = verification_metrics(dist, same)
    np.testing.assert_array_equal(m["fold_accuracies"], accuracy)
    assert m["accuracy"] == np.mean(accuracy)
    assert m["accuracy_std"] == np.std(accuracy)
    np.testing.assert_array_equal(m["best_thresholds"], best)
    np.testing.assert_array_equal(m["tpr"], tpr)
    np.testing.assert_array_equal(m["fpr"], fpr)


@pytest.mark.parametrize("name", ["realistic-6001", "random-37", "on-grid", "decimal", "few-values"])
def test_val_matches_bruteforce(name):
    pytest.importorskip("scipy")
    dist, same = CASES[name]
    val, val_std, far = ref_val(dist, same)
    m = verification_metrics(dist, same)
    assert (m["val"], m["val_std"], m["far"]) == (val, val_std, far)


def test_val_tail_of_realistic_scores():
    """Separated scores where the training FAR crosses 1e-3 inside the grid (the usual LFW situation)."""
    pytest.importorskip("scipy")
    rng = np.random.default_rng(7)
    n = 6000
    same = rng.random(n) < 0.5
    dist = np.where(same, rng.normal(0.7, 0.2, n), rng.normal(1.9, 0.15, n)).clip(0, 4).astype(np.float32)
    val, val_std, far = ref_val(dist, same)
    m = verification_metrics(dist, same)
    assert (m["val"], m["val_std"], m["far"]) == (val, val_std, far)
    assert 0 < m["far"] < 0.01 and m["val"] > 0.1


def test_fold_bounds_are_kfold():
    b = fold_bounds(37, 10)
    assert [stop - start for start, stop in b] == [4] * 7 + [3] * 3
    assert b[0][0] == 0 and b[-1][1] == 37 and all(b[i][1] == b[i + 1][0] for i in range(9))
    assert [stop - start for start, stop in fold_bounds(6000, 10)] == [600] * 10
    with pytest.raises(ValueError):
        fold_bounds(9, 10)


def test_slinear_interp():
    scipy_interp = pytest.importorskip("scipy.interpolate")
    x = np.array([0.0, 0.1, 0.25, 0.5, 1.0])
    y = np.array([0.0, 1.0, 1.5, 3.0, 4.0])
    f = scipy_interp.interp1d(x, y, kind="slinear")  # strictly increasing: modern scipy agrees
    for v in (0.0, 0.05, 0.1, 0.3, 0.999, 1.0):
        assert slinear_interp(x, y, v) == float(f(v))
    # Repeated x (what insightface's FAR curves look like): old scipy semantics.
    x = np.array([0, 0, 0, 0.0005, 0.001, 0.001, 0.002, 0.002])
    y = np.arange(8) * 0.001
    assert slinear_interp(x, y, 0.0) == pytest.approx(0.002)  # last of the repeated zeros
    assert slinear_interp(x, y, 0.001) == pytest.approx(0.005)
    assert slinear_interp(x, y, 0.002) == 0.0  # zero-width last segment
    for v in (0.0, 0.0002, 0.0005, 0.001, 0.0015, 0.0019, 0.002):
        assert slinear_interp(x, y, v) == old_scipy_slinear(x, y, v)
    with pytest.raises(ValueError):
        slinear_interp(x, y, 0.003)


def test_hand_computed_separable():
    # 20 pairs, 2 per fold; even pairs same (d=0.5), odd pairs different (d=1.5).
    same = np.array([True, False] * 10)
    dist = np.where(same, 0.5, 1.5)
    m = verification_metrics(dist, same)
    assert m["accuracy"] == 1.0 and m["accuracy_std"] == 0.0
    # 0.50 < 0.50 is false, so the first perfect threshold is the next grid value.
    np.testing.assert_array_equal(m["best_thresholds"], np.full(10, np.arange(0, 4, 0.01)[51]))
    assert m["best_threshold"] == np.arange(0, 4, 0.01)[51]  # TFace's reported threshold: the fold mean
    # FAR on the train folds jumps 0 → 1 between thresholds 1.500 and 1.501; interpolating FAR = 1e-3
    # along that jump gives 1.500001, which accepts the d=1.5 impostors too (insightface's behaviour).
    np.testing.assert_allclose(m["val_thresholds"], 1.500001, rtol=0, atol=1e-12)
    assert m["val"] == 1.0 and m["far"] == 1.0


def test_hand_computed_one_error():
    same = np.array([True, False] * 10)
    dist = np.where(same, 0.5, 1.5)
    dist[0] = 3.0  # a same pair that cannot be accepted, in fold 0
    m = verification_metrics(dist, same)
    np.testing.assert_array_equal(m["fold_accuracies"], [0.5] + [1.0] * 9)
    assert m["accuracy"] == pytest.approx(0.95)
    assert m["accuracy_std"] == pytest.approx(0.15)  # population std: sqrt((0.45² + 9·0.05²)/10)


def test_metrics_validates_input():
    with pytest.raises(ValueError, match="equal length"):
        verification_metrics(np.zeros(20), np.zeros(19, bool))
    with pytest.raises(ValueError, match="boolean"):
        verification_metrics(np.zeros(20), np.zeros(20, int))
    with pytest.raises(ValueError, match="folds"):
        verification_metrics(np.zeros(5), np.zeros(5, bool))


# --------------------------------------------------------------------------------------------------
# An independent reference on a few hundred pairs: scikit-learn's KFold and plain Python loops


def sklearn_reference(dist, same):
    """insightface's accuracy written out again: KFold(10) folds, every threshold and pair in a Python loop."""
    kfold = pytest.importorskip("sklearn.model_selection").KFold
    d = [float(x) for x in dist]  # float32 → float64 is exact, so the comparisons are numpy's
    s = [bool(x) for x in same]
    thresholds = [float(t) for t in np.arange(0, 4, 0.01)]
    fold_acc, best = [], []
    for train, test in kfold(n_splits=10, shuffle=False).split(d):
        best_t, best_acc = None, -1.0
        for t in thresholds:
            acc = sum(1 for i in train if (d[i] < t) == s[i]) / len(train)
            if acc > best_acc:  # strictly greater: the first maximum wins
                best_t, best_acc = t, acc
        fold_acc.append(sum(1 for i in test if (d[i] < best_t) == s[i]) / len(test))
        best.append(best_t)
    return np.array(fold_acc), np.array(best)


def overlapping_pairs(n, seed):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    dist = np.where(same, rng.normal(1.0, 0.35, n), rng.normal(1.6, 0.35, n)).clip(0, 4).astype(np.float32)
    return dist, same


def test_accuracy_equals_sklearn_kfold_reference():
    dist, same = overlapping_pairs(300, 2024)
    fold_acc, best = sklearn_reference(dist, same)
    m = verification_metrics(dist, same)
    assert 0.6 < m["accuracy"] < 0.95  # overlapping classes: the threshold choice matters
    assert m["accuracy"] == np.mean(fold_acc)  # to the last digit
    assert m["accuracy_std"] == np.std(fold_acc)
    assert m["best_threshold"] == np.mean(best)
    np.testing.assert_array_equal(m["fold_accuracies"], fold_acc)


# --------------------------------------------------------------------------------------------------
# The exact (sorted-split) variant against a brute force over every split


def ref_exact(dist, same, nfolds=10):
    """Try every split of the sorted training distances one by one; first best split wins."""
    fold_acc, best = [], []
    for train, test in ref_folds(len(dist), nfolds):
        values = sorted({float(x) for x in dist[train] if not np.isnan(x)})
        candidates = [values[0]] + [(a + b) / 2 for a, b in zip(values, values[1:])]
        candidates.append(float(np.nextafter(values[-1], np.inf)))
        best_t, best_correct = None, -1
        for t in candidates:
            correct = int(np.count_nonzero(np.less(dist[train], t) == same[train]))
            if correct > best_correct:
                best_t, best_correct = t, correct
        fold_acc.append(np.count_nonzero(np.less(dist[test], best_t) == same[test]) / len(test))
        best.append(best_t)
    return np.array(fold_acc), np.array(best)


def _exact_cases():
    rng = np.random.default_rng(99)
    n = 300
    same = rng.random(n) < 0.5
    cases = {
        "overlapping-300": overlapping_pairs(300, 7),
        "random-301": (rng.uniform(0, 4, 301).astype(np.float32), rng.random(301) < 0.5),
        "on-grid": (np.arange(0, 4, 0.01)[rng.integers(0, 400, n)], same),  # many ties
        "few-values": (rng.choice([0.5, 1.0, 1.0, 1.5], n), same),
        "all-same": (rng.uniform(0, 2, 37), np.ones(37, bool)),
        "all-different": (rng.uniform(0, 2, 37), np.zeros(37, bool)),
        "constant": (np.full(101, 1.23), rng.random(101) < 0.3),
    }
    with_nan = rng.uniform(0, 4, 40)
    with_nan[[3, 17]] = np.nan
    cases["nan"] = (with_nan, rng.random(40) < 0.5)
    return cases


EXACT_CASES = _exact_cases()


@pytest.mark.parametrize("name", sorted(EXACT_CASES))
def test_exact_accuracy_matches_bruteforce(name):
    dist, same = EXACT_CASES[name]
    fold_acc, best = ref_exact(dist, same)
    e = exact_accuracy(dist, same)
    np.testing.assert_array_equal(e["fold_accuracies"], fold_acc)
    assert e["accuracy"] == np.mean(fold_acc) and e["accuracy_std"] == np.std(fold_acc)
    np.testing.assert_allclose(e["best_thresholds"], best, rtol=1e-15, atol=0)
    assert e["best_threshold"] == pytest.approx(np.mean(best), rel=1e-15)


def test_exact_accuracy_is_at_least_the_grid_on_training_folds():
    """Every grid threshold is one of the splits, so the exact choice is never worse on the training folds."""
    dist, same = overlapping_pairs(300, 11)
    grid = verification_metrics(dist, same)
    exact = exact_accuracy(dist, same)
    for f, (start, stop) in enumerate(fold_bounds(300, 10)):
        train = np.r_[0:start, stop:300]

        def train_correct(t, train=train):
            return np.count_nonzero(np.less(dist[train], t) == same[train])

        assert train_correct(exact["best_thresholds"][f]) >= train_correct(grid["best_thresholds"][f])


def test_split_thresholds_reach_every_split_once():
    a = 1.0
    b = float(np.nextafter(a, 2.0))  # neighbours one ulp apart: the midpoint rounds onto one of them
    d = np.array([0.5, a, b, b, 3.0])
    t = split_thresholds(d)
    assert [int(np.count_nonzero(d < x)) for x in t] == [0, 1, 2, 4, 5]
    assert np.all(np.diff(t) > 0)
    assert split_thresholds(np.array([np.nan])).shape == (1,)


def test_exact_accuracy_on_a_hand_example():
    # Same pairs at 0.305, different pairs at 0.3051: no grid threshold (0.30, 0.31) falls between them, so
    # the grid accepts all or none (50 %); the exact split is their midpoint and separates them (100 %).
    same = np.array([True, False] * 10)
    dist = np.where(same, 0.305, 0.3051)
    grid = verification_metrics(dist, same)
    exact = exact_accuracy(dist, same)
    assert grid["accuracy"] == 0.5 and exact["accuracy"] == 1.0
    np.testing.assert_allclose(exact["best_thresholds"], 0.30505, rtol=1e-12)


def test_roc_curve_points():
    fpr = np.r_[np.zeros(100), np.linspace(0, 1, 250), np.ones(50)]
    tpr = np.r_[np.zeros(100), np.sqrt(np.linspace(0, 1, 250)), np.ones(50)]
    c = roc_curve_points(fpr, tpr, max_points=40)
    assert len(c["fpr"]) == len(c["tpr"]) == 40
    assert (c["fpr"][0], c["tpr"][0], c["fpr"][-1], c["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert c["fpr"] == sorted(c["fpr"]) and all(isinstance(v, float) for v in c["fpr"] + c["tpr"])
    short = roc_curve_points(np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.0, 1.0, 1.0]))
    assert short == {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0, 1.0]}


# --------------------------------------------------------------------------------------------------
# The protocol on hand-made .bin files


class Projection(nn.Module):
    """A fixed random linear map of the flattened image, with a BatchNorm to make train/eval matter."""

    def __init__(self, dim=8, size=112):
        super().__init__()
        self.embedding_size, self.input_size = dim, size  # the backbone contract
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(3 * size * size, dim, generator=g) / size)
        self.bn = nn.BatchNorm1d(dim)
        self.seen_training: list[bool] = []

    def forward(self, x):
        self.seen_training.append(self.training)
        return self.bn(x.flatten(1) @ self.w) + 0.5


class Pooled(nn.Module):
    """Identity-preserving "model": 4×4 average-pooled pixels."""

    embedding_size = 48  # the backbone contract

    def __init__(self, input_size=112):
        super().__init__()
        self.input_size = input_size

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def encode(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def random_images(n, rng, size=112):
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def reference_embeddings(model, arrays):
    """raw(image) + raw(mirror), normalised — computed with PIL/numpy pixels, one image at a time."""
    out = []
    with torch.no_grad():
        for a in arrays:
            x = torch.from_numpy(((a.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1).copy())
            xf = torch.from_numpy(np.ascontiguousarray(x.numpy()[:, :, ::-1]))
            e = model(x[None])[0] + model(xf[None])[0]
            out.append((e / e.norm()).numpy())
    return np.stack(out)


def test_embed_pairs_flip_sum_and_xnorm():
    rng = np.random.default_rng(0)
    arrays = random_images(10, rng)
    images = [encode(a, "PNG") for a in arrays]
    model = Projection().eval()
    emb, xnorm = embed_pairs(model, images, "cpu", batch_size=3, flip=True)
    np.testing.assert_allclose(emb, reference_embeddings(model, arrays), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    with torch.no_grad():
        raw = []
        for a in arrays:
            x = torch.from_numpy(((a.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1).copy())
            raw += [model(x[None])[0], model(x.flip(-1)[None])[0]]
    assert xnorm == pytest.approx(float(torch.stack(raw).norm(dim=1).mean()), rel=1e-6)

    emb1, xnorm1 = embed_pairs(model, images, "cpu", batch_size=4, flip=False)
    with torch.no_grad():
        x = torch.from_numpy(
            np.stack([((a.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1) for a in arrays])
        )
        e = model(x)
    np.testing.assert_allclose(emb1, (e / e.norm(dim=1, keepdim=True)).numpy(), rtol=1e-5, atol=1e-5)
    assert xnorm1 == pytest.approx(float(e.norm(dim=1).mean()), rel=1e-6)


def test_embed_pairs_resizes_other_sizes():
    rng = np.random.default_rng(1)
    images = [encode(a, "PNG") for a in random_images(4, rng, size=56)]
    emb, _ = embed_pairs(Pooled(), images, "cpu", batch_size=2)
    assert emb.shape == (4, 48)


def make_identity_bin(path: pathlib.Path, n_pairs=20, seed=0) -> np.ndarray:
    """Pairs of JPEG crops: identity = a random 4×4 colour pattern; "same" pairs add small noise."""
    rng = np.random.default_rng(seed)
    same = np.array([i % 2 == 0 for i in range(n_pairs)])
    images = []
    for k in range(n_pairs):
        a = rng.integers(0, 256, (4, 4, 3))
        b = a if same[k] else rng.integers(0, 256, (4, 4, 3))
        for pattern in (a, b):
            img = np.repeat(np.repeat(pattern, 28, 0), 28, 1) + rng.integers(-4, 5, (112, 112, 3))
            images.append(encode(img.clip(0, 255).astype(np.uint8), "JPEG"))
    write_bin(path, images, same.tolist())
    return same


def test_evaluate_identity_model_is_perfect(tmp_path):
    make_identity_bin(tmp_path / "toy.bin")
    proto = Verification(bins=[tmp_path / "toy.bin"], batch_size=7)
    assert isinstance(proto, EvalProtocol)
    (r,) = proto.evaluate(Pooled(), EvalContext(step=42))
    assert r["protocol"] == "verification" and r["dataset"] == "toy" and r["step"] == 42
    assert r["accuracy"] == 100.0 and r["accuracy_std"] == 0.0
    assert r["accuracy_noflip"] == 100.0 and r["accuracy_exact"] == 100.0
    assert r["pairs"] == 20
    assert set(r) == {
        "protocol",
        "dataset",
        "step",
        "accuracy",
        "accuracy_std",
        "accuracy_noflip",
        "accuracy_exact",
        "best_threshold",
        "tar@far=1e-3",
        "xnorm",
        "pairs",
        "curves",
    }
    roc = r["curves"]["roc"]
    assert set(roc) == {"fpr", "tpr"} and len(roc["fpr"]) == len(roc["tpr"]) <= 100
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0 and roc["fpr"][-1] == 1.0


def test_evaluate_result_units_and_mode(tmp_path):
    rng = np.random.default_rng(3)
    arrays = random_images(40, rng)
    same = [bool(i % 2) for i in range(20)]
    write_bin(tmp_path / "rand.bin", [encode(a, "PNG") for a in arrays], same)
    model = Projection()
    model.train()
    model.bn.eval()  # a submodule's own mode must survive too
    model.bn.running_mean.fill_(0.1)
    (r,) = Verification(bins=[str(tmp_path / "rand.bin")], batch_size=16).evaluate(model, EvalContext())
    assert model.training and not model.bn.training
    assert model.seen_training and not any(model.seen_training)

    model.eval()
    emb = reference_embeddings(model, arrays)
    dist = np.sum(np.square(emb[0::2] - emb[1::2]), 1)
    m = verification_metrics(dist, np.array(same))
    assert r["accuracy"] == pytest.approx(100 * m["accuracy"], abs=1e-9)
    assert r["accuracy_std"] == pytest.approx(100 * m["accuracy_std"], abs=1e-9)
    assert r["tar@far=1e-3"] == pytest.approx(100 * m["val"], abs=1e-9)
    assert r["best_threshold"] == pytest.approx(m["best_threshold"], abs=1e-12)
    assert r["accuracy_exact"] == pytest.approx(100 * exact_accuracy(dist, np.array(same))["accuracy"], abs=1e-9)
    with torch.no_grad():  # no-flip: raw(image) only, from the same run
        x = torch.from_numpy(
            np.stack([((a.astype(np.float32) / 255 - 0.5) / 0.5).transpose(2, 0, 1) for a in arrays])
        )
        e = model(x)
    e = (e / e.norm(dim=1, keepdim=True)).numpy()
    m1 = verification_metrics(np.sum(np.square(e[0::2] - e[1::2]), 1), np.array(same))
    assert r["accuracy_noflip"] == pytest.approx(100 * m1["accuracy"], abs=1e-9)
    _, xnorm = embed_pairs(model, [encode(a, "PNG") for a in arrays], "cpu")
    assert r["xnorm"] == pytest.approx(xnorm, rel=1e-6)
    assert 0 <= r["accuracy"] <= 100 and r["pairs"] == 20


def test_evaluate_provided_sets(tmp_path):
    make_identity_bin(tmp_path / "a.bin", seed=1)
    make_identity_bin(tmp_path / "b.bin", seed=2)
    ctx = EvalContext(provided={"verification": {"synth-val": tmp_path / "b.bin"}})
    results = Verification(bins=[tmp_path / "a.bin"]).evaluate(Pooled(), ctx)
    assert [r["dataset"] for r in results] == ["a", "synth-val"]
    results = Verification(bins=[tmp_path / "a.bin"], use_provided=False).evaluate(Pooled(), ctx)
    assert [r["dataset"] for r in results] == ["a"]
    results = Verification().evaluate(Pooled(), ctx)
    assert [r["dataset"] for r in results] == ["synth-val"]


def test_no_sets_is_a_clear_error():
    with pytest.raises(ValueError, match="no .bin files to evaluate"):
        Verification().evaluate(Pooled(), EvalContext())
    with pytest.raises(ValueError, match="use_provided"):
        Verification(use_provided=False).evaluate(
            Pooled(), EvalContext(provided={"verification": {"x": pathlib.Path("x.bin")}})
        )


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "broken.bin"
    bad.write_bytes(b"definitely not a pickle")
    with pytest.raises(BinFormatError, match="broken.bin"):
        Verification(bins=[bad]).evaluate(Pooled(), EvalContext())
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        Verification(bins=[tmp_path / "missing.bin"]).evaluate(Pooled(), EvalContext())
    corrupt = tmp_path / "corrupt.bin"
    write_bin(corrupt, [b"\xff\xd8 not a jpeg"] * 20, [True] * 10)
    with pytest.raises(BinFormatError, match="corrupt.bin.*image 0"):
        Verification(bins=[corrupt]).evaluate(Pooled(), EvalContext())
    tiny = tmp_path / "tiny.bin"
    write_bin(tiny, [encode(a, "PNG") for a in random_images(4, np.random.default_rng(0))], [True, False])
    with pytest.raises(BinFormatError, match="tiny.bin"):
        Verification(bins=[tiny]).evaluate(Pooled(), EvalContext())


def test_config():
    cfg = structure(Verification.Config, {"bins": ["lfw.bin", "cfp_fp.bin"], "batch_size": 8}, "eval")
    assert cfg.bins == [pathlib.Path("lfw.bin"), pathlib.Path("cfp_fp.bin")]
    assert (cfg.use_provided, cfg.flip, cfg.batch_size) == (True, True, 8)
    # Field names are the constructor's keywords.
    names = [f.name for f in attrs.fields(Verification.Config)]
    assert Verification(**{n: getattr(cfg, n) for n in names}).config == cfg
    kwargs = validate_options(Verification, {"flip": False}, "protocol")
    assert Verification(**kwargs).config.flip is False

    with pytest.raises(ConfigError, match=r"eval\.bnis: unknown key; did you mean \"bins\""):
        structure(Verification.Config, {"bnis": ["x.bin"]}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.batch_size: expected int"):
        structure(Verification.Config, {"batch_size": "64"}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.flip: expected bool"):
        structure(Verification.Config, {"flip": 1}, "eval")
    with pytest.raises(ConfigError, match=r"(?i)eval\.bins\[0\]: expected path"):
        structure(Verification.Config, {"bins": [3]}, "eval")
    with pytest.raises(ConfigError, match="batch_size"):
        structure(Verification.Config, {"batch_size": 0}, "eval")


def test_protocol_accuracy_equals_an_independent_reference(tmp_path):
    """A few hundred pairs through the whole pipeline; embeddings and 10-fold accuracy recomputed here."""
    rng = np.random.default_rng(5)
    n_pairs, size = 240, 8
    same = rng.random(n_pairs) < 0.5
    arrays = []
    for k in range(n_pairs):
        a = rng.integers(0, 256, (size, size, 3)).astype(np.float64)
        w = rng.uniform(0.2, 1.0) if same[k] else 1.0  # same pairs share part of the pattern
        b = (1 - w) * a + w * rng.integers(0, 256, (size, size, 3))
        arrays += [a.round().astype(np.uint8), b.round().clip(0, 255).astype(np.uint8)]
    write_bin(tmp_path / "pairs.bin", [encode(x, "PNG") for x in arrays], same.tolist())

    def reference_distances(flip):
        emb = []
        for data in (encode(x, "PNG") for x in arrays):
            img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 127.5 - 1.0
            e = img.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1).ravel()  # 4×4 average pool
            if flip:
                m = img[:, ::-1].reshape(4, 2, 4, 2, 3).mean(axis=(1, 3)).transpose(2, 0, 1).ravel()
                e = e + m
            emb.append(e / np.linalg.norm(e))
        emb = np.array(emb)
        return np.sum((emb[0::2] - emb[1::2]) ** 2, axis=1)

    (r,) = Verification(bins=[tmp_path / "pairs.bin"], image_size=size, batch_size=50).evaluate(
        Pooled(input_size=size), EvalContext()
    )
    for key, flip in (("accuracy", True), ("accuracy_noflip", False)):
        dist = reference_distances(flip)
        # float32 in the pipeline vs float64 here: no distance may sit within rounding of a grid threshold
        assert np.min(np.abs(dist[:, None] - ACC_THRESHOLDS[None, :])) > 2e-6
        fold_acc, best = sklearn_reference(dist, same)
        assert 60 < r[key] < 100
        assert r[key] == 100.0 * np.mean(fold_acc)  # to the last digit
        if flip:
            assert r["accuracy_std"] == 100.0 * np.std(fold_acc)
            assert r["best_threshold"] == np.mean(best)
    assert r["accuracy"] != r["accuracy_noflip"]  # the flip test does change the embeddings here

    # image_size unset: the backbone's declared input_size (8 here), not a fixed 112
    (r0,) = Verification(bins=[tmp_path / "pairs.bin"], flip=False).evaluate(Pooled(input_size=size), EvalContext())
    assert r0["accuracy"] == r0["accuracy_noflip"] == r["accuracy_noflip"]


def test_check_inputs_names_missing_bins(tmp_path):
    present = tmp_path / "lfw.bin"
    present.write_bytes(b"x")
    (tmp_path / "folder.bin").mkdir()
    proto = Verification(bins=[present, tmp_path / "agedb.bin", tmp_path / "folder.bin"])
    assert proto.check_inputs() == [f"bins[1]: {tmp_path / 'agedb.bin'} does not exist",
                                    f"bins[2]: {tmp_path / 'folder.bin'} is not a file"]
    assert Verification(bins=[present]).check_inputs() == []
    assert Verification().check_inputs() == []  # provided sets may be written during a run: not checked here


class ZeroToOne(Pooled):
    """Declares (x/255 - 0)/1 inputs and records the range it is fed."""

    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)

    def __init__(self, input_size=112):
        super().__init__(input_size)
        self.ranges: list[tuple[float, float]] = []

    def forward(self, x):
        self.ranges.append((float(x.min()), float(x.max())))
        return super().forward(x)


def test_the_protocol_follows_the_backbone_contract(tmp_path):
    """Issue 10: the model's declared mean/std and input_size decide its input; a contradicting image_size is an
    error that names both sizes."""
    rng = np.random.default_rng(9)
    write_bin(tmp_path / "r.bin", [encode(a, "PNG") for a in random_images(20, rng, size=16)], [True, False] * 5)
    model = ZeroToOne(input_size=16)
    (r,) = Verification(bins=[tmp_path / "r.bin"]).evaluate(model, EvalContext())
    assert min(lo for lo, _ in model.ranges) >= 0.0 and max(hi for _, hi in model.ranges) <= 1.0
    assert max(hi for _, hi in model.ranges) > 0.9
    want = Verification(bins=[tmp_path / "r.bin"]).evaluate(Pooled(input_size=16), EvalContext())[0]["xnorm"]
    assert r["xnorm"] != want  # other inputs, other embeddings
    with pytest.raises(ValueError, match=r"verification: image_size = 112, but the backbone takes 16x16 inputs"):
        Verification(bins=[tmp_path / "r.bin"], image_size=112).evaluate(model, EvalContext())

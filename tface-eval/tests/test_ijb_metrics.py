"""IJB metrics: hand-computed expectations on tiny inputs, plain-loop references, scikit-learn's ROC."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_curve as sk_roc_curve

from tface.eval import ijb_metrics
from tface.eval.ijb_metrics import (
    Roc,
    combine_galleries,
    downsample_roc,
    identification,
    image_features,
    pool_templates,
    roc_curve,
    score_pairs,
    tar_at_far,
)

# --------------------------------------------------------------------------------------------------
# Plain-loop references (insightface's structure, written out)


def ref_pool(features, templates, medias):
    """Loop over templates, then over their medias: mean of frames, sum of medias, L2 norm."""
    ids = sorted(set(templates.tolist()))
    out = np.zeros((len(ids), features.shape[1]))
    for k, t in enumerate(ids):
        rows = [i for i in range(len(templates)) if templates[i] == t]
        total = np.zeros(features.shape[1])
        for m in sorted(set(medias[rows].tolist())):
            frames = [features[i].astype(np.float64) for i in rows if medias[i] == m]
            total += sum(frames) / len(frames)
        norm = math.sqrt(sum(v * v for v in total))
        out[k] = total / norm if norm > 0 else total
    return np.array(ids), out


def ref_scores(ids, feats, pairs):
    row = {t: i for i, t in enumerate(ids.tolist())}
    return np.array([sum(feats[row[a]] * feats[row[b]]) for a, b in pairs.tolist()])


def ref_nearest(labels, scores, far):
    """insightface: sklearn ROC, both arrays reversed, min over (|fpr - far|, index) tuples."""
    fpr, tpr, thr = sk_roc_curve(labels, scores)
    fpr, tpr, thr = fpr[::-1], tpr[::-1], thr[::-1]
    _, i = min(zip(abs(fpr - far), range(len(fpr))))
    return tpr[i], fpr[i], thr[i]


def ref_roc(labels, scores, drop_intermediate=True):
    """The ROC by counting: for every distinct score t (descending), negatives and positives with score >= t;
    with ``drop_intermediate``, the ends and every point whose neighbours are not collinear with it."""
    pos, neg = scores[labels == 1], scores[labels != 1]
    points = [(0, 0, math.inf)] + [
        (int(np.count_nonzero(neg >= t)), int(np.count_nonzero(pos >= t)), float(t))
        for t in sorted(set(scores.tolist()), reverse=True)
    ]
    if drop_intermediate:
        inner = points[1:]
        kept = [
            p
            for i, p in enumerate(inner)
            if i in (0, len(inner) - 1)
            or (inner[i - 1][0] + inner[i + 1][0] != 2 * p[0] or inner[i - 1][1] + inner[i + 1][1] != 2 * p[1])
        ]
        points = points[:1] + kept
    fps, tps, thr = (np.array(v, dtype=np.float64) for v in zip(*points))
    return fps / neg.size, tps / pos.size, thr


def ref_strict(labels, scores, far):
    """Highest TPR over every distinct threshold (accept iff score >= t) with FPR <= far."""
    pos, neg = scores[labels == 1], scores[labels != 1]
    best = (0.0, 0.0, math.inf)
    for t in sorted(set(scores.tolist()), reverse=True):
        fpr = np.count_nonzero(neg >= t) / neg.size
        tpr = np.count_nonzero(pos >= t) / pos.size
        if fpr <= far and tpr >= best[0]:
            best = (tpr, fpr, t)
    return best


# --------------------------------------------------------------------------------------------------
# image_features


RAW = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
FLIP = np.array([[0.0, 0.0], [1.0, 2.0], [0.0, 0.0]], dtype=np.float32)
FACENESS = np.array([0.5, 2.0, 1.0])


def test_image_features_default_is_flip_sum_times_faceness_norm_kept():
    f = image_features(RAW, FLIP, FACENESS)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f, [[1.5, 2.0], [4.0, 4.0], [0.0, 0.0]])


@pytest.mark.parametrize("chunk", [1, 2, 16_384])
def test_image_features_norm_normalises_after_flip_before_faceness(monkeypatch, chunk):
    monkeypatch.setattr(ijb_metrics, "_FEATURE_CHUNK_ROWS", chunk)
    f = image_features(RAW, FLIP, FACENESS, norm=True)
    # [3,4]/5 * 0.5 ; [2,2]/sqrt(8) * 2 = [sqrt2, sqrt2] ; zero stays zero
    np.testing.assert_allclose(f, [[0.3, 0.4], [math.sqrt(2), math.sqrt(2)], [0.0, 0.0]], rtol=1e-7)


def test_image_features_other_modes():
    np.testing.assert_array_equal(image_features(RAW, flip=False, detector=False), RAW)
    np.testing.assert_allclose(
        image_features(RAW, flip=False, detector=False, norm=True), [[0.6, 0.8], [1.0, 0.0], [0.0, 0.0]], rtol=1e-7
    )
    np.testing.assert_array_equal(image_features(RAW, FLIP, detector=False), [[3, 4], [2, 2], [0, 0]])
    np.testing.assert_array_equal(image_features(RAW, faceness=FACENESS, flip=False), [[1.5, 2], [2, 0], [0, 0]])


def test_image_features_missing_inputs():
    with pytest.raises(ValueError, match="raw_flip"):
        image_features(RAW, None, FACENESS)
    with pytest.raises(ValueError, match="faceness"):
        image_features(RAW, FLIP)
    with pytest.raises(ValueError, match="shape"):
        image_features(RAW, FLIP[:2], FACENESS)


@pytest.mark.parametrize("chunk", [1, 16_384])
def test_image_features_with_confidence_weight_each_unit_view(monkeypatch, chunk):
    """SCF's pooling: f = κ·raw/‖raw‖ + κ_flip·flip/‖flip‖, then the faceness; a zero view stays zero."""
    monkeypatch.setattr(ijb_metrics, "_FEATURE_CHUNK_ROWS", chunk)
    kappa, kappa_flip = np.array([10.0, 2.0, 5.0]), np.array([7.0, 3.0, 1.0])
    f = image_features(RAW, FLIP, FACENESS, kappa=kappa, kappa_flip=kappa_flip)
    # row 0: 10·[.6, .8] + 0 = [6, 8], × .5 ; row 1: 2·[1, 0] + 3·[1, 2]/√5, × 2 ; row 2: zeros
    want = [[3.0, 4.0], [2 * (2 + 3 / math.sqrt(5)), 2 * (6 / math.sqrt(5))], [0.0, 0.0]]
    np.testing.assert_allclose(f, want, rtol=1e-7)
    np.testing.assert_allclose(image_features(RAW, kappa=kappa, flip=False, detector=False),
                               [[6.0, 8.0], [2.0, 0.0], [0.0, 0.0]], rtol=1e-7)
    with pytest.raises(ValueError, match="norm"):
        image_features(RAW, FLIP, FACENESS, norm=True, kappa=kappa, kappa_flip=kappa_flip)
    with pytest.raises(ValueError, match="kappa_flip"):
        image_features(RAW, FLIP, FACENESS, kappa=kappa)
    with pytest.raises(ValueError, match=r"kappa must have shape \(3,\)"):
        image_features(RAW, FLIP, FACENESS, kappa=kappa[:2], kappa_flip=kappa_flip)
    with pytest.raises(ValueError, match="kappa_flip: confidences must be finite and >= 0"):
        image_features(RAW, FLIP, FACENESS, kappa=kappa, kappa_flip=np.array([1.0, -1.0, 1.0]))


# --------------------------------------------------------------------------------------------------
# Template pooling and pair scores on a hand-built meta set

# rows shuffled on purpose; template 2 and template 5 both use media id 10 (grouped separately)
META = [
    # template, media, feature
    (9, 8, [0.0, 5.0]),
    (5, 10, [1.0, 0.0]),
    (2, 11, [0.0, 2.0]),
    (9, 7, [4.0, 0.0]),
    (5, 10, [3.0, 0.0]),
    (2, 10, [3.0, 0.0]),
    (4, 1, [0.0, 0.0]),
    (5, 10, [2.0, 0.0]),
    (2, 11, [0.0, 4.0]),
    (9, 8, [0.0, 1.0]),
]
TPL = np.array([r[0] for r in META])
MED = np.array([r[1] for r in META])
FEAT = np.array([r[2] for r in META], dtype=np.float32)
S2 = 1 / math.sqrt(2)
# template 2: [3,0] + mean([0,2],[0,4]) = [3,3] -> [1,1]/sqrt2 ; template 4: zero stays zero
# template 5: mean of three frames [2,0] -> [1,0] ; template 9: [4,0] + mean([0,5],[0,1]) = [4,3] -> [.8,.6]
POOLED = np.array([[S2, S2], [0.0, 0.0], [1.0, 0.0], [0.8, 0.6]])


def test_pool_templates_hand_computed():
    ids, feats = pool_templates(FEAT, TPL, MED)
    np.testing.assert_array_equal(ids, [2, 4, 5, 9])
    assert feats.dtype == np.float64
    np.testing.assert_allclose(feats, POOLED, rtol=0, atol=1e-15)


def test_score_pairs_hand_computed():
    ids, feats = pool_templates(FEAT, TPL, MED)
    pairs = np.array([[2, 5], [5, 9], [2, 9], [9, 9], [4, 2], [9, 2]])
    expected = [S2, 0.8, 1.4 * S2, 1.0, 0.0, 1.4 * S2]
    np.testing.assert_allclose(score_pairs(ids, feats, pairs), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
@pytest.mark.parametrize("threads", [1, 3])
def test_pool_templates_matches_loops(monkeypatch, chunk, threads):
    """Chunks of templates, pooled one after another or on several threads, equal the loops."""
    monkeypatch.setattr(ijb_metrics, "_POOL_CHUNK_IMAGES", chunk)
    monkeypatch.setattr(ijb_metrics, "_threads", lambda: threads)
    rng = np.random.default_rng(0)
    n = 300
    templates = rng.integers(0, 40, n) * 7 + 3
    templates[:25] = 1000  # one template larger than any small chunk
    medias = rng.integers(0, 6, n)
    feats = rng.standard_normal((n, 5)).astype(np.float32)
    ids, pooled = pool_templates(feats, templates, medias)
    rids, rpooled = ref_pool(feats, templates, medias)
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_allclose(pooled, rpooled, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("dense_ratio", "block_bytes", "scan_blocks", "id_offset"),
    [
        (128, 128 << 20, 16, 0),
        (0, 128 << 20, 16, 0),
        (128, 8 * 5 * 64, 16, 0),
        (128, 8 * 5 * 64, 0, 0),
        (0, 8 * 5 * 64, 0, -(1 << 40)),
    ],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_score_pairs_matches_brute_force(monkeypatch, dense_ratio, block_bytes, scan_blocks, id_offset, threads):
    """Matrix-product and gather paths, several row blocks found by scanning or by sorting, lookup table and
    binary-search id mapping; a block's pairs read in chunks, one after another or on several threads."""
    monkeypatch.setattr(ijb_metrics, "_threads", lambda: threads)
    monkeypatch.setattr(ijb_metrics, "_PAIR_CHUNK", 37)
    monkeypatch.setattr(ijb_metrics, "_GATHER_CHUNK", 29)
    monkeypatch.setattr(ijb_metrics, "_DENSE_RATIO", dense_ratio)
    monkeypatch.setattr(ijb_metrics, "_SCORE_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(ijb_metrics, "_SCAN_BLOCKS", scan_blocks)
    rng = np.random.default_rng(1)
    n_t = 60
    ids = rng.permutation(n_t) * 3 + 11 + id_offset  # not sorted
    feats = rng.standard_normal((n_t, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    pairs = np.stack([rng.choice(ids[:50], 700), rng.choice(ids, 700)], axis=1)
    got = score_pairs(ids, feats, pairs)
    np.testing.assert_allclose(got, ref_scores(ids, feats, pairs), rtol=0, atol=1e-13)
    # the other side with fewer distinct ids
    np.testing.assert_allclose(score_pairs(ids, feats, pairs[:, ::-1]), got, rtol=0, atol=1e-13)


def test_score_pairs_unknown_template():
    ids, feats = pool_templates(FEAT, TPL, MED)
    with pytest.raises(ValueError, match=r"pair 1: template id 77 \(column 1\)"):
        score_pairs(ids, feats, np.array([[2, 5], [5, 77], [99, 2]]))
    with pytest.raises(ValueError, match=r"pair 0: template id -3 \(column 0\)"):
        score_pairs(ids, feats, np.array([[-3, 5]]))
    big = ids + (1 << 30)  # binary-search path
    with pytest.raises(ValueError, match=r"pair 2: template id 5 \(column 0\)"):
        score_pairs(big, feats, np.array([[big[0], big[1]], [big[2], big[2]], [5, big[0]]]))


# --------------------------------------------------------------------------------------------------
# ROC and TAR@FAR

# 4 genuine, 8 impostor; 0.4 is shared by a genuine and an impostor pair
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.7, 0.4, 0.85, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])


def test_roc_curve_hand_computed():
    # full curve (fps, tps): (0,1) (1,1) (1,2) (1,3) (2,3) (3,3) (4,4) (5,4) (6,4) (7,4) (8,4);
    # drop_intermediate removes (1,2), (2,3), (5,4), (6,4), (7,4)
    fpr, tpr, thr = roc_curve(LABELS, SCORES)
    np.testing.assert_array_equal(fpr, [0, 0, 1 / 8, 1 / 8, 3 / 8, 4 / 8, 1])
    np.testing.assert_array_equal(tpr, [0, 0.25, 0.25, 0.75, 0.75, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.9, 0.85, 0.7, 0.5, 0.4, 0.05])
    fpr, tpr, thr = roc_curve(LABELS == 1, SCORES, drop_intermediate=False)
    assert fpr.size == 12
    np.testing.assert_array_equal(fpr * 8, [0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_matches_sklearn(seed, drop):
    rng = np.random.default_rng(seed)
    for n in (1, 2, 3, 17, 500, 5000):
        labels = rng.integers(0, 2, n)
        if seed % 3 == 0:
            scores = rng.integers(0, 1 + n // 10, n) / 8  # heavy ties
        elif seed % 3 == 1:
            scores = rng.standard_normal(n).astype(np.float32)
        else:
            scores = np.round(rng.standard_normal(n) + labels, 1)
        if seed == 5:
            labels = np.where(labels == 1, 1, -1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # single-class draws warn in both
            expected = sk_roc_curve(labels, scores, drop_intermediate=drop)
            got = roc_curve(labels, scores, drop_intermediate=drop)
        for e, g in zip(expected, got):
            assert g.dtype == e.dtype
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("seed", range(4))
def test_roc_matches_counting_reference(seed):
    """The sparse ROC (sorted scores + positive positions, corners found from positive and repeated values)
    against plain counting — no ties, a few ties, heavy ties, and a positive tied with negatives."""
    rng = np.random.default_rng(seed)
    for n in (2, 5, 40, 400):
        labels = (rng.random(n) < 0.3).astype(int)
        labels[0], labels[-1] = 1, 0
        base = rng.standard_normal(n)
        for scores in (base, np.round(base, 1), np.round(base * 3) / 3, rng.choice(base[:3], n)):
            roc = Roc(labels, scores)
            for drop in (True, False):
                for got, want in zip(roc.curve(drop), ref_roc(labels, scores, drop)):
                    np.testing.assert_array_equal(got, want)


def test_one_roc_serves_every_readout():
    """Built once, an Roc gives what the one-shot functions give, as often as asked."""
    rng = np.random.default_rng(7)
    labels = (rng.random(2000) < 0.05).astype(int)
    scores = np.round(rng.standard_normal(2000) + 2.5 * labels, 2)
    roc = Roc(labels, scores)
    assert (roc.n_pos, roc.n_neg) == (int(labels.sum()), int((labels == 0).sum()))
    fars = (1e-3, 1e-2, 0.1)
    for _ in range(2):
        for readout in ("nearest", "strict"):
            assert roc.tar_at_far(fars, readout) == tar_at_far(labels, scores, fars, readout)
        for got, want in zip(roc.curve(), sk_roc_curve(labels, scores)):
            np.testing.assert_array_equal(got, want)
    fpr, tpr = downsample_roc(*roc.curve()[:2], max_points=20)
    assert len(fpr) <= 20 and fpr[0] == 0.0 and fpr[-1] == 1.0
    with pytest.raises(ValueError, match="at least one score"):
        Roc(np.array([], dtype=int), np.array([]))


@pytest.mark.parametrize("threads", [1, 2, 3, 8])
def test_roc_sorts_in_place_on_several_cores_with_the_same_results(monkeypatch, threads):
    """``overwrite=True`` sorts the caller's scores in place; the parallel sort (partition at quantiles, pieces
    sorted in threads) gives np.sort's array, ties across the cuts included; every read-out is unchanged."""
    monkeypatch.setattr(ijb_metrics, "_PARALLEL_SORT_MIN", 16)
    monkeypatch.setattr(ijb_metrics, "_threads", lambda: threads)
    rng = np.random.default_rng(3)
    labels = (rng.random(5000) < 0.05).astype(int)
    scores = np.round(rng.standard_normal(5000) + 2.5 * labels, 1)  # heavy ties
    want = Roc(labels, scores.copy())
    mine = scores.copy()
    roc = Roc(labels, mine, overwrite=True)
    np.testing.assert_array_equal(mine, np.sort(scores))  # the caller's array is the sorted one now
    assert roc._sorted is mine
    for got, exp in zip(roc.curve(), sk_roc_curve(labels, scores)):
        np.testing.assert_array_equal(got, exp)
    for readout in ("nearest", "strict"):
        assert roc.tar_at_far((1e-3, 1e-2, 0.1), readout) == want.tar_at_far((1e-3, 1e-2, 0.1), readout)
    # without overwrite (and for arrays it may not sort: float32, read-only) the caller's array is left alone
    for other in (scores.astype(np.float32), np.lib.stride_tricks.as_strided(scores, writeable=False)):
        before = other.copy()
        Roc(labels, other, overwrite=True)
        np.testing.assert_array_equal(other, before)
    kept = scores.copy()
    Roc(labels, kept)
    np.testing.assert_array_equal(kept, scores)


def test_roc_curve_rejects_bad_input():
    with pytest.raises(ValueError, match="binary"):
        roc_curve(np.array([0, 2]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="finite"):
        roc_curve(np.array([0, 1]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="equal length"):
        roc_curve(np.array([0, 1]), np.array([0.1]))


# far: (nearest tar, far_used, threshold), (strict tar, far_used, threshold)
HAND_READOUTS = {
    # two points at fpr 1/8 -> the larger TPR; strict: only fpr 0 qualifies
    0.1: ((0.75, 1 / 8, 0.7), (0.25, 0.0, 0.9)),
    # 1/8 and 3/8 equally near -> the one above; strict reads the dropped point (2, 3) at 0.6
    0.25: ((0.75, 3 / 8, 0.5), (0.75, 2 / 8, 0.6)),
    # exact hit on the genuine/impostor tie at 0.4
    0.5: ((1.0, 0.5, 0.4), (1.0, 0.5, 0.4)),
    # nearest point lies above the target
    0.45: ((1.0, 0.5, 0.4), (0.75, 3 / 8, 0.5)),
    0.7: ((1.0, 0.5, 0.4), (1.0, 5 / 8, 0.3)),
    # (0, 0, inf) and (0, 0.25, 0.9) both at fpr 0 -> the larger TPR
    1e-3: ((0.25, 0.0, 0.9), (0.25, 0.0, 0.9)),
}


@pytest.mark.parametrize("readout", ["nearest", "strict"])
def test_tar_at_far_hand_computed(readout):
    res = tar_at_far(LABELS, SCORES, fars=tuple(HAND_READOUTS), readout=readout)
    assert list(res) == list(HAND_READOUTS)
    for far, (nearest, strict) in HAND_READOUTS.items():
        tar, far_used, threshold = nearest if readout == "nearest" else strict
        assert res[far] == {"tar": tar, "far_used": far_used, "threshold": threshold}, far


def test_tar_at_far_strict_none_qualifies():
    labels, scores = np.array([0, 1]), np.array([0.9, 0.1])
    assert tar_at_far(labels, scores, fars=(0.1,), readout="strict")[0.1] == {
        "tar": 0.0,
        "far_used": 0.0,
        "threshold": math.inf,
    }
    assert tar_at_far(labels, scores, fars=(0.1,))[0.1] == {"tar": 0.0, "far_used": 0.0, "threshold": math.inf}
    with pytest.raises(ValueError, match="readout"):
        tar_at_far(labels, scores, readout="closest")


@pytest.mark.parametrize("seed", range(4))
def test_tar_at_far_matches_references(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    labels = (rng.random(n) < 0.1).astype(int)
    scores = np.round(rng.standard_normal(n) + 2 * labels, 2)  # many ties
    fars = (1e-4, 1e-3, 3e-3, 1e-2, 0.05, 0.1, 0.5)
    nearest = tar_at_far(labels, scores, fars)
    strict = tar_at_far(labels, scores, fars, readout="strict")
    for far in fars:
        tar, fpr, thr = ref_nearest(labels, scores, far)
        assert nearest[far] == {"tar": tar, "far_used": fpr, "threshold": thr}
        tar, fpr, thr = ref_strict(labels, scores, far)
        assert strict[far]["tar"] == tar and strict[far]["far_used"] == fpr and strict[far]["threshold"] == thr


# --------------------------------------------------------------------------------------------------
# 1:N identification

GALLERY_IDS = np.array([10, 20, 30])
GALLERY = np.eye(3)
PROBE_IDS = np.array([10, 20, 30, 10, 99, 98, 97, 96])
PROBES = np.array(
    [
        [0.9, 0.1, 0.0],  # mated, score 0.9, rank 1
        [0.6, 0.5, 0.2],  # mated, score 0.5, rank 2
        [0.3, 0.3, 0.3],  # mated, score 0.3 tied with both others -> rank 3
        [0.6, 0.0, 0.0],  # mated, score 0.6, rank 1 (ties the 2nd best non-mated top-1)
        [0.2, 0.8, 0.1],  # non-mated, top-1 0.8
        [0.4, 0.0, 0.0],  # non-mated, top-1 0.4
        [0.0, 0.0, 0.6],  # non-mated, top-1 0.6
        [0.1, 0.1, 0.1],  # non-mated, top-1 0.1
    ]
)


def test_identification_hand_computed():
    res = identification(GALLERY_IDS, GALLERY, PROBE_IDS, PROBES, ranks=(1, 2, 3, 5), fpirs=(0.1, 0.25, 0.5, 1.0))
    assert res["n_mated"] == 4 and res["n_nonmated"] == 4
    np.testing.assert_array_equal(res["mated_ranks"], [1, 2, 3, 1])
    assert res["cmc"] == {1: 0.5, 2: 0.75, 3: 1.0, 5: 1.0}
    nxt = lambda v: float(np.nextafter(v, np.inf))  # noqa: E731
    # non-mated top-1 scores, descending: 0.8, 0.6, 0.4, 0.1
    assert res["tpir"][0.1] == {"tpir": 0.25, "threshold": nxt(0.8), "fpir_used": 0.0}
    # τ just above 0.6: the mated 0.6 is rejected together with the non-mated 0.6
    assert res["tpir"][0.25] == {"tpir": 0.25, "threshold": nxt(0.6), "fpir_used": 0.25}
    assert res["tpir"][0.5] == {"tpir": 0.5, "threshold": nxt(0.4), "fpir_used": 0.5}
    assert res["tpir"][1.0] == {"tpir": 0.5, "threshold": -math.inf, "fpir_used": 1.0}


def test_identification_matches_loops():
    rng = np.random.default_rng(3)
    g_ids = rng.permutation(40) + 100
    g = rng.standard_normal((40, 8))
    q_ids = rng.integers(90, 150, 300)
    q = np.round(rng.standard_normal((300, 8)), 1)
    res = identification(g_ids, g, q_ids, q, ranks=(1, 5, 10), fpirs=(0.01, 0.1, 0.3))
    sims = q @ g.T
    mated_ranks, mated_scores, nm_top = [], [], []
    for i in range(len(q_ids)):
        if q_ids[i] in g_ids.tolist():
            j = g_ids.tolist().index(q_ids[i])
            mated_scores.append(sims[i, j])
            mated_ranks.append(1 + sum(sims[i, k] >= sims[i, j] for k in range(40) if k != j))
        else:
            nm_top.append(max(sims[i]))
    np.testing.assert_array_equal(res["mated_ranks"], mated_ranks)
    for k in (1, 5, 10):
        assert res["cmc"][k] == sum(r <= k for r in mated_ranks) / len(mated_ranks)
    for f in (0.01, 0.1, 0.3):
        tau = res["tpir"][f]["threshold"]
        fpir = sum(s >= tau for s in nm_top) / len(nm_top)
        assert fpir <= f and res["tpir"][f]["fpir_used"] == fpir
        # τ is the lowest threshold meeting the bound: any lower top-1 score would exceed it
        assert all(sum(s >= t for s in nm_top) / len(nm_top) > f for t in nm_top if t < tau)
        hits = sum(r == 1 and s >= tau for r, s in zip(mated_ranks, mated_scores))
        assert res["tpir"][f]["tpir"] == hits / len(mated_ranks)


def test_identification_without_nonmated_and_gallery_errors():
    g_ids, g = combine_galleries((GALLERY_IDS[:2], GALLERY[:2]), (GALLERY_IDS[2:], GALLERY[2:]))
    np.testing.assert_array_equal(g_ids, GALLERY_IDS)
    np.testing.assert_array_equal(g, GALLERY)
    res = identification(g_ids, g, PROBE_IDS[:4], PROBES[:4])
    assert res["cmc"][1] == 0.5 and res["n_nonmated"] == 0
    assert math.isnan(res["tpir"][0.01]["tpir"])
    with pytest.raises(ValueError, match="subject id 10"):
        combine_galleries((GALLERY_IDS, GALLERY), (GALLERY_IDS[:1], GALLERY[:1]))
    with pytest.raises(ValueError, match="subject id 20 appears more than once"):
        identification(np.array([20, 10, 20]), GALLERY, PROBE_IDS, PROBES)

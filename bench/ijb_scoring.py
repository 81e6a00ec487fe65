"""IJB-C 1:1 scoring: tface's vectorised pooling / scoring / ROC vs insightface's loop-based approach.

Synthetic, IJB-C-sized input (469,375 images, 23,124 templates with several media, some media with many
video frames, 15,658,489 pairs of which 19,557 genuine). Image features are made once with
``image_features`` (flip sum × faceness, the eval_ijbc.py default) and fed to both implementations.

tface: ``pool_templates``, ``score_pairs``, then one ``Roc`` (one sort, of the scores in place and on every core,
as the protocol does) read out as both TAR@FAR read-outs and the downsampled curve of the protocol's result.
Baseline (written here, following insightface's ``eval_ijbc.py``): a Python loop over templates and their
medias for pooling, per-pair elementwise multiply-and-sum scoring in chunks of 100,000 pairs, the nearest
read-out as a ``min`` over ``(|fpr - far|, index)`` tuples on the reversed ROC (tface's ``roc_curve``, or
scikit-learn's with ``--sklearn``), which also gives the plotted curve, and the strict read-out by scanning a
second, full ROC.

Also printed, measured in the same run: the hardware limit — one float64 Gram product of the templates
the pairs use (rows side × columns side, float32 for reference), one gather of every pair's score out of
it and one sort of the scores, each into memory touched beforehand — and tface's total against it; the
peak resident set of tface's path (VmHWM, reset before it).

    python bench/ijb_scoring.py [--scale 1.0] [--seed 0] [--sklearn]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from procmem import reset_peak, status_bytes

from tface.eval.ijb_metrics import Roc, downsample_roc, image_features, pool_templates, roc_curve, score_pairs

N_IMAGES = 469_375
N_TEMPLATES = 23_124
N_SUBJECTS = 3_531  # one enrolment template each; the other templates are probes
N_PAIRS = 15_658_489
N_GENUINE = 19_557
DIM = 512
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# --------------------------------------------------------------------------------------------------
# Synthetic IJB-C-like data


def make_meta(rng: np.random.Generator, n_images: int, n_templates: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image template and media ids: 1 + Poisson(2.5) media per template, 40 % of them videos."""
    n_media_per_t = 1 + rng.poisson(2.5, n_templates)
    n_media = int(n_media_per_t.sum())
    video = rng.random(n_media) < 0.4
    frames = np.where(video, 1 + rng.geometric(1 / 12, n_media), 1)
    if n_media > n_images:
        raise ValueError(f"{n_images} images cannot fill {n_media} media")
    # Adjust the frame counts of videos until the image total is exact.
    while (diff := n_images - int(frames.sum())) != 0:
        vids = np.flatnonzero(video if diff > 0 else frames > 1)
        pick = rng.choice(vids, min(abs(diff), vids.size), replace=False)
        frames[pick] += 1 if diff > 0 else -1
    template_ids = rng.choice(np.arange(1, 10 * n_templates), n_templates, replace=False)  # sparse, unsorted
    media_template = np.repeat(template_ids, n_media_per_t)
    media_ids = rng.permutation(n_media) + 100_000
    return np.repeat(media_template, frames), np.repeat(media_ids, frames)


def make_features(
    rng: np.random.Generator, templates: np.ndarray, template_ids: np.ndarray, subject_of: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw/flip features: subject centre + a template nuisance of random strength + image noise, random norm."""
    n_subjects = int(subject_of.max()) + 1
    centres = rng.standard_normal((n_subjects, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    nuisance = rng.standard_normal((template_ids.size, DIM), dtype=np.float32)
    nuisance *= (rng.uniform(0.6, 2.5, template_ids.size) / np.sqrt(DIM)).astype(np.float32)[:, None]
    tvec = centres[subject_of] + nuisance
    row = np.searchsorted(template_ids, templates)
    n = templates.size
    raw = np.empty((n, DIM), dtype=np.float32)
    flip = np.empty((n, DIM), dtype=np.float32)
    quality = rng.uniform(8.0, 30.0, n).astype(np.float32)
    for a in range(0, n, 65_536):
        b = min(a + 65_536, n)
        noise = rng.standard_normal((b - a, DIM), dtype=np.float32) * np.float32(1.5 / np.sqrt(DIM))
        raw[a:b] = (tvec[row[a:b]] + noise) * quality[a:b, None]
        flip[a:b] = (tvec[row[a:b]] + np.roll(noise, 7, axis=1)) * quality[a:b, None]
    faceness = np.where(rng.random(n) < 0.02, rng.uniform(0.1, 0.6, n), rng.uniform(0.95, 1.0, n))
    return raw, flip, faceness


def make_pairs(
    rng: np.random.Generator, template_ids: np.ndarray, subject_of: np.ndarray, n_enrol: int, n_pairs: int, n_gen: int
) -> tuple[np.ndarray, np.ndarray]:
    """Enrolment × probe pairs: ``n_gen`` probes with their subject's enrolment template, the rest impostors."""
    enrol = np.arange(n_enrol)
    probes = np.arange(n_enrol, template_ids.size)
    gen_probes = rng.choice(probes, n_gen, replace=False)
    gen = np.stack([subject_of[gen_probes], gen_probes], axis=1)  # enrolment template of subject s is row s
    n_imp = n_pairs - n_gen
    imp = np.stack([rng.choice(enrol, n_imp), rng.choice(probes, n_imp)], axis=1)
    while (same := np.flatnonzero(subject_of[imp[:, 0]] == subject_of[imp[:, 1]])).size:
        imp[same, 0] = rng.choice(enrol, same.size)
    rows = np.concatenate([gen, imp])
    labels = np.concatenate([np.ones(n_gen, np.int64), np.zeros(n_imp, np.int64)])
    perm = rng.permutation(n_pairs)
    return template_ids[rows[perm]], labels[perm]


# --------------------------------------------------------------------------------------------------
# Baseline: insightface's structure


def baseline_pool(features: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique_templates = np.unique(templates)
    out = np.zeros((unique_templates.size, features.shape[1]))
    for k, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats = features[ind_t].astype(np.float64)
        face_medias = medias[ind_t]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, counts):
            (ind_m,) = np.where(face_medias == u)
            media_feats.append(face_feats[ind_m] if ct == 1 else np.mean(face_feats[ind_m], 0, keepdims=True))
        out[k] = np.sum(np.array(media_feats), 0)
    return unique_templates, out / np.sqrt(np.sum(out**2, -1, keepdims=True))


def baseline_score(ids: np.ndarray, feats: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    template2id = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    template2id[ids] = np.arange(ids.size)
    score = np.zeros(pairs.shape[0])
    for a in range(0, pairs.shape[0], 100_000):
        s = slice(a, a + 100_000)
        f1 = feats[template2id[pairs[s, 0]]]
        f2 = feats[template2id[pairs[s, 1]]]
        score[s] = np.sum(f1 * f2, -1)
    return score


def baseline_nearest(labels: np.ndarray, scores: np.ndarray, roc) -> tuple[dict[float, float], tuple]:
    """insightface's read-out; the same ROC is the one it plots (downsampled as tface's result keeps it)."""
    fpr, tpr, _ = roc(labels, scores)
    curve = downsample_roc(fpr, tpr)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    out = {}
    for far in FARS:
        _, i = min(zip(abs(fpr - far), range(len(fpr))))
        out[far] = float(tpr[i])
    return out, curve


def baseline_strict(labels: np.ndarray, scores: np.ndarray, roc) -> dict[float, float]:
    fpr, tpr, _ = roc(labels, scores, drop_intermediate=False)
    return {far: float(tpr[np.flatnonzero(fpr <= far)[-1]]) for far in FARS}


def tface_readouts(labels: np.ndarray, scores: np.ndarray) -> tuple[dict, dict, tuple]:
    """What the protocol reads from one ROC: both read-outs and the downsampled curve. As in the protocol, the ROC
    sorts ``scores`` in place (the caller keeps a copy for the comparisons, outside the timing)."""
    roc = Roc(labels, scores, overwrite=True)
    fpr, tpr, _ = roc.curve()
    return roc.tar_at_far(FARS, "nearest"), roc.tar_at_far(FARS, "strict"), downsample_roc(fpr, tpr)


# --------------------------------------------------------------------------------------------------
# Hardware limit and memory


def hardware_limit(ids: np.ndarray, feats: np.ndarray, pairs: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Seconds of what any implementation does at least: the Gram product of the templates the pairs use,
    one gather of every score out of it, one sort of the scores. Outputs are allocated and touched first,
    so page faults are not counted (tface's figures include its own)."""
    rows = np.searchsorted(ids, pairs)  # bench ids are all templates
    used = [np.flatnonzero(np.bincount(rows[:, j], minlength=ids.size)) for j in (0, 1)]
    side = 0 if used[0].size <= used[1].size else 1
    r, c = used[side], used[1 - side]
    pos = np.zeros((2, ids.size), dtype=np.int64)
    pos[0, r] = np.arange(r.size)
    pos[1, c] = np.arange(c.size)
    flat = pos[0, rows[:, side]] * c.size + pos[1, rows[:, 1 - side]]
    del rows, pos
    out: dict[str, float] = {"rows": r.size, "cols": c.size}
    for dtype in (np.float32, np.float64):
        a, b = feats[r].astype(dtype), feats[c].astype(dtype)
        gram = np.ones((r.size, c.size), dtype=dtype)
        t0 = time.perf_counter()
        np.matmul(a, b.T, out=gram)
        out[f"gram {np.dtype(dtype).name}"] = time.perf_counter() - t0
    got = np.ones(flat.size)
    t0 = time.perf_counter()
    np.take(gram.reshape(-1), flat, out=got)
    out["gather"] = time.perf_counter() - t0
    del gram, flat
    assert np.allclose(got, scores, rtol=0, atol=1e-12)
    got[:] = scores
    t0 = time.perf_counter()
    got.sort()
    out["sort"] = time.perf_counter() - t0
    out["limit"] = out["gram float64"] + out["gather"] + out["sort"]
    return out


# --------------------------------------------------------------------------------------------------


def timed(stages: dict[str, float], name: str, fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    stages[name] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the IJB-C sizes (e.g. 0.05 for a quick run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sklearn", action="store_true", help="baseline ROC from sklearn.metrics.roc_curve")
    args = ap.parse_args()
    sc = args.scale
    n_images, n_templates = round(N_IMAGES * sc), round(N_TEMPLATES * sc)
    n_enrol, n_pairs = max(2, round(N_SUBJECTS * sc)), round(N_PAIRS * sc)
    n_templates = max(n_templates, n_enrol + 1)
    n_gen = max(1, min(round(N_GENUINE * sc), n_templates - n_enrol, n_pairs - 1))
    rng = np.random.default_rng(args.seed)

    t0 = time.perf_counter()
    templates, medias = make_meta(rng, n_images, n_templates)
    template_ids = np.unique(templates)
    # Templates 0..n_enrol-1 (in ascending id order) are the enrolments of subjects 0..n_enrol-1.
    subject_of = np.concatenate([np.arange(n_enrol), rng.integers(0, n_enrol, template_ids.size - n_enrol)])
    raw, flip, faceness = make_features(rng, templates, template_ids, subject_of)
    pairs, labels = make_pairs(rng, template_ids, subject_of, n_enrol, n_pairs, n_gen)
    features = image_features(raw, flip, faceness)
    del raw, flip
    n_media = np.unique(np.stack([templates, medias], 1), axis=0).shape[0]
    print(
        f"data: {n_images:,} images, {template_ids.size:,} templates, {n_media:,} (template, media) groups, "
        f"{n_pairs:,} pairs ({int(labels.sum()):,} genuine), D={DIM}  [{time.perf_counter() - t0:.1f} s to make]"
    )

    rss_before = status_bytes("VmRSS")
    peak_reset = reset_peak()
    tf: dict[str, float] = {}
    ids, tfeats = timed(tf, "pool", pool_templates, features, templates, medias)
    scores = timed(tf, "score", score_pairs, ids, tfeats, pairs)
    peak = status_bytes("VmHWM") if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    kept = scores.copy()  # not timed: the ROC sorts scores in place, the comparisons below need them unsorted
    if peak_reset and reset_peak():  # the ROC's own peak, less the copy's pages (resident throughout)
        near, strict, curve = timed(tf, "roc + read-outs", tface_readouts, labels, scores)
        peak = max(peak, status_bytes("VmHWM") - kept.nbytes)
    else:
        near, strict, curve = timed(tf, "roc + read-outs", tface_readouts, labels, scores)
    scores = kept
    limit = hardware_limit(ids, tfeats, pairs, scores)

    if args.sklearn:
        from sklearn.metrics import roc_curve as roc
    else:
        roc = roc_curve
    bl: dict[str, float] = {}
    b_ids, b_feats = timed(bl, "pool", baseline_pool, features, templates, medias)
    b_scores = timed(bl, "score", baseline_score, b_ids, b_feats, pairs)
    b_near, b_curve = timed(bl, "tar nearest", baseline_nearest, labels, b_scores, roc)
    b_strict = timed(bl, "tar strict", baseline_strict, labels, b_scores, roc)
    bl["roc + read-outs"] = bl.pop("tar nearest") + bl.pop("tar strict")

    print(f"\n{'stage':<16} {'baseline s':>11} {'tface s':>9} {'ratio':>7}")
    for name in tf:
        print(f"{name:<16} {bl[name]:11.2f} {tf[name]:9.2f} {bl[name] / max(tf[name], 1e-9):6.1f}×")
    tb, tt = sum(bl.values()), sum(tf.values())
    print(f"{'total':<16} {tb:11.2f} {tt:9.2f} {tb / tt:6.1f}×")
    print(
        f"\nhardware limit (same run): Gram {limit['rows']:,} × {limit['cols']:,} × {tfeats.shape[1]} float64 "
        f"{limit['gram float64']:.2f} s (float32 {limit['gram float32']:.2f} s) + gather of {n_pairs:,} scores "
        f"{limit['gather']:.2f} s + sort {limit['sort']:.2f} s = {limit['limit']:.2f} s; "
        f"tface total = {tt / limit['limit']:.2f}× the limit"
    )
    what = "VmHWM, reset before it" if peak_reset else "ru_maxrss: the whole process so far"
    above = (
        f", {(peak - rss_before) / 2**30:.2f} GiB above the {rss_before / 2**30:.2f} GiB held before it "
        "(the inputs: features, meta, pairs, labels)"
        if rss_before
        else ""
    )
    print(f"peak RSS of tface's path: {peak / 2**30:.2f} GiB ({what}){above}")

    assert np.array_equal(ids, b_ids)
    feat_diff = float(np.max(np.abs(tfeats - b_feats)))
    score_diff = float(np.max(np.abs(scores - b_scores)))
    print(f"\nmax |template feature diff| = {feat_diff:.2e}, max |score diff| = {score_diff:.2e}")
    print(f"\n{'FAR':>8} {'nearest tface':>14} {'baseline':>9} {'FAR used':>10} {'strict tface':>13} {'baseline':>9}")
    same = True
    for far in FARS:
        a, b = f"{near[far]['tar'] * 100:.2f}", f"{b_near[far] * 100:.2f}"
        c, d = f"{strict[far]['tar'] * 100:.2f}", f"{b_strict[far] * 100:.2f}"
        same &= a == b and c == d
        print(f"{far:8.0e} {a:>14} {b:>9} {near[far]['far_used']:10.3e} {c:>13} {d:>9}")
    print(f"\nTAR values equal to 2 decimals: {same}")
    assert same, "tface and baseline TAR@FAR differ"
    n_curve = len(curve[0])
    same_curve = n_curve == len(b_curve[0]) and all(np.array_equal(x, y) for x, y in zip(curve, b_curve))
    gap = max(float(np.max(np.abs(x - y))) for x, y in zip(curve, b_curve)) if n_curve == len(b_curve[0]) else np.inf
    print(f"downsampled ROC ({n_curve} points) equal to the baseline's: {same_curve} (max |difference| {gap:.1e})")
    assert gap <= 1e-4, "tface and baseline ROC curves differ"


if __name__ == "__main__":
    main()

"""SynthFace renderer: determinism, shapes, split disjointness, pair plan and identity signal."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from tface.core.data import synthrender as sr


def _img(identity: sr.Identity, seed: int, image: int) -> np.ndarray:
    return sr.render(identity, sr.image_rng(seed, "test", 0, image))


def test_shape_dtype_and_range():
    idn = sr.sample_identity(np.random.default_rng(0))
    img = sr.render(idn, np.random.default_rng(1))
    assert img.shape == (112, 112, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
    assert img.std() > 10  # not blank
    assert sr.render(idn, np.random.default_rng(1), size=64).shape == (64, 64, 3)


def test_same_seed_same_bytes_different_seed_different():
    a = list(sr.train_images(7, 3, sr.train_identity(7, 3), 3))
    b = list(sr.train_images(7, 3, sr.train_identity(7, 3), 3))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    c = list(sr.train_images(8, 3, sr.train_identity(8, 3), 3))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c))
    assert not np.array_equal(a[0], a[1])  # each image has its own nuisance
    assert sr.train_identity(7, 3) == sr.train_identity(7, 3)
    assert sr.train_identity(7, 3) != sr.train_identity(8, 3)


def test_identity_order_independent():
    ids = sr.train_identities(5, 6)
    assert ids[4] == sr.train_identity(5, 4)  # a worker rendering only identity 4 gets the same one


def test_streams_of_splits_are_disjoint():
    train = {tuple(sr.identity_rng(3, "train", i).integers(2**63, size=2)) for i in range(200)}
    val = {tuple(sr.identity_rng(3, "val", i).integers(2**63, size=2)) for i in range(200)}
    assert len(train) == 200 and len(val) == 200 and not train & val
    train_ids = {sr.train_identity(3, i).texture_seed for i in range(0, 60, sr.FAMILY)}
    val_ids = {sr._val_identity(3, i).texture_seed for i in range(60)}
    assert not train_ids & val_ids


@pytest.mark.parametrize("hard_fraction", [0.0, 0.3, 0.5, 1.0])
def test_pair_plan(hard_fraction):
    specs = sr.pair_specs(0, 20, 40, hard_fraction)
    assert [s.index for s in specs] == list(range(40))
    genuine = [s for s in specs if s.same]
    impostor = [s for s in specs if not s.same]
    assert len(genuine) == len(impostor) == 20
    assert all(s.a == s.b for s in genuine)
    hard = [s for s in impostor if s.b == -1]
    assert len(hard) == round(hard_fraction * 20)
    assert all(s.a != s.b and 0 <= s.a < 20 and s.b < 20 for s in impostor)
    assert not all(specs[k].same == (k % 2 == 0) for k in range(40))  # interleaved, not blocked
    with pytest.raises(ValueError):
        sr.pair_specs(0, 20, 41)


def test_verification_pairs_slices_match_whole():
    whole = sr.verification_pairs(1, 10, 8, 0.5)
    assert len(whole) == 8 and sum(s for _, _, s in whole) == 4
    part = sr.verification_pairs(1, 10, 8, 0.5, start=3, stop=6)
    for (a, b, s), (c, d, t) in zip(whole[3:6], part):
        assert np.array_equal(a, c) and np.array_equal(b, d) and s == t


def test_sibling_is_closer_than_random():
    rng = np.random.default_rng(0)
    near, far = [], []
    for _ in range(50):
        base = sr.sample_identity(rng)
        v = sr.identity_vector(base)
        near.append(np.linalg.norm(sr.identity_vector(sr.sibling(base, rng, 0.6)) - v))
        far.append(np.linalg.norm(sr.identity_vector(sr.sample_identity(rng)) - v))
    assert np.mean(near) < 0.6 * np.mean(far)
    base = sr.sample_identity(rng)
    assert sr.sibling(base, rng, 1.0) == base


def _features(img: np.ndarray) -> np.ndarray:
    # grayscale, blurred, standardised: the colour cast and brightness are nuisance
    g = Image.fromarray(img).convert("L").filter(ImageFilter.GaussianBlur(2)).resize((28, 28))
    x = np.asarray(g, dtype=np.float64).ravel()
    return (x - x.mean()) / (x.std() + 1e-6)


def test_same_identity_renders_are_more_alike():
    rng = np.random.default_rng(1)
    ids = [sr.sample_identity(rng) for _ in range(12)]
    feats = [[_features(_img(idn, 100 + i, j)) for j in range(4)] for i, idn in enumerate(ids)]
    same = [f[a] @ f[b] / f[a].size for f in feats for a in range(4) for b in range(a + 1, 4)]
    diff = [feats[i][a] @ feats[k][b] / feats[i][a].size
            for i in range(12) for k in range(i + 1, 12) for a in range(2) for b in range(2)]
    assert np.mean(same) > np.mean(diff) + 0.03

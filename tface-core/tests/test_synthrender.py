"""SynthFace renderer: determinism, shapes, split disjointness, pair plan and identity signal."""

from __future__ import annotations

import hashlib

import attrs
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


# --- golden bytes: group looks and the face scale must not move a byte of the existing sets --------------------

def _sha(img: np.ndarray) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()


#: sha256 of the raw pixels, computed before ``Identity.scale`` and the group looks existed (numpy 2.4, Pillow 13).
GOLDEN_TRAIN = {
    0: ["065f7658ecf3f8f2b8a60407cfb3794c1b4346a64acc8df68fd600d0da9eab0d",
        "f6ad03b86ff945266d54d0fe68c23e32164e76fffdf16be4a402f7d379f81739"],
    1: ["d38b02276b95b187b4772b20f07a21921af779d301f0b24c16c11e870ad2f3d4",
        "bebe17c551892a23081e0a8b520a79d2e6346d69ba77db58af05bdaa314d5699"],
    2: ["30f10fda6cf98b06c9125b79374ff9c8804340fdbf13053c5dd384a71049ecf6",
        "7f4ba31ed17e8c331d527ee93e9db87ad23d5c07910561e150b9872b12d4b3a7"],
}
#: verification_pairs(0, 10, 8, 0.5)[:4]: a genuine pair, two easy impostors, a sibling impostor.
GOLDEN_PAIRS = [
    ("c033da5bd151d239ee949a290766e6fa82c3e88fa1acd09ad90f2e426c1f03ce",
     "73b4055b23a566195649675e5c33553c9261bb9b20c6e2315551c405555bb3aa", True),
    ("3c76bf7ec16c50bfd0b7c9cdbd0c5f5f032ae5938a3c3aea6769190edbe8a89c",
     "9342d40fa5a5499612e3fac22fe4f271d0f9fc1c453b29a88181260334687b6f", False),
    ("33f7c31b6e3964fc46ae530054a8592a42ac894e3b3d7b047321903348a1dedf",
     "6007367199431bc690639cd3a8114f796d879a6bab1cc093e773891a63b6e09f", False),
    ("f668a586ef868f364d4412bdf0b7233ff34e1ac2faced49b43a65106819ef3d7",
     "50bc0c271a4418bc2355dc379a5307406e1a19b9986b847ba5a818caca1825b3", False),
]


def test_existing_streams_keep_their_bytes():
    for i, want in GOLDEN_TRAIN.items():
        assert [_sha(x) for x in sr.train_images(0, i, sr.train_identity(0, i), 2)] == want
    got = sr.verification_pairs(0, 10, 8, 0.5, start=0, stop=4)
    assert [(_sha(a), _sha(b), bool(s)) for a, b, s in got] == GOLDEN_PAIRS
    assert [s.b for s in sr.pair_specs(0, 10, 8, 0.5)[:4]] == [1, 3, 2, -1]  # the sibling path is covered
    hard = next(sr.train_images(0, 1, sr.train_identity(0, 1), 1, sr.HARD_NUISANCE))
    assert _sha(hard) == "7e478557f0a16838f8b5770c86269634def95c5713450408e6eaf443f6206dbd"
    small = sr.render(sr.train_identity(0, 0), sr.image_rng(0, "train", 0, 0), size=64)
    assert _sha(small) == "06b9db84e1b052ffed8a72188ad24d0f3b213517f1c135ffa00dfc39c95f30d5"
    assert sr.train_identity(0, 0).scale == 1.0 and sr.VERSION == 1


# --- group looks --------------------------------------------------------------------------------------------

def test_group_looks_as_specified():
    assert [(g.name, g.skin_tone, g.hair_tone, g.scale) for g in sr.GROUP_LOOKS] == [
        ("A", (0.0, 0.35), (0.3, 1.0), 1.0), ("B", (0.3, 0.6), (0.0, 0.6), 0.95),
        ("C", (0.55, 0.8), (0.0, 0.35), 0.9), ("D", (0.8, 1.0), (0.0, 0.2), 0.85)]
    with pytest.raises(ValueError, match=r"skin_tone must be a range \(lo, hi\) with 0 <= lo <= hi <= 1"):
        sr.GroupLook("X", skin_tone=(0.5, 0.2), hair_tone=(0.0, 1.0))
    with pytest.raises(ValueError, match="scale must be > 0, got 0"):
        sr.GroupLook("X", skin_tone=(0.0, 1.0), hair_tone=(0.0, 1.0), scale=0)


def test_apply_look_maps_tones_affinely_and_sets_the_scale():
    look = sr.GROUP_LOOKS[2]  # C: skin 0.55..0.8, hair 0..0.35, scale 0.9
    base = sr.train_identity(4, 0)
    values = list(base.values)
    values[list(sr.PARAMS).index("skin_tone")] = 0.4
    values[list(sr.PARAMS).index("hair_tone")] = 1.0
    ident = sr.Identity(tuple(values), base.hair_style, base.beard, base.moles, base.texture_seed, base.freckle_seed)
    out = sr.apply_look(ident, look)
    assert out.skin_tone == pytest.approx(0.55 + 0.4 * 0.25, abs=1e-15)  # 0.65
    assert out.hair_tone == pytest.approx(0.35, abs=1e-15)  # the top of the range
    assert out.scale == 0.9
    unchanged = [n for n in sr.PARAMS if n not in ("skin_tone", "hair_tone")]
    assert all(getattr(out, n) == getattr(ident, n) for n in unchanged)
    assert (out.moles, out.texture_seed, out.hair_style, out.beard) == (ident.moles, ident.texture_seed,
                                                                      ident.hair_style, ident.beard)
    assert sr.apply_look(ident, look) == out  # deterministic
    for g in sr.GROUP_LOOKS:
        for i in range(60):
            p = sr.apply_look(sr.train_identity(1, i), g)
            assert g.skin_tone[0] <= p.skin_tone <= g.skin_tone[1] and g.hair_tone[0] <= p.hair_tone <= g.hair_tone[1]
    # a sibling keeps its base's scale; the training stream with a look is the plain one put into the look
    assert sr.sibling(out, np.random.default_rng(0), 0.5).scale == 0.9
    assert sr.train_identity(3, 5, look) == sr.apply_look(sr.train_identity(3, 5), look)


def _person_mask(identity: sr.Identity, seed: int, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """Pixels that belong to the person: equal in a calm render over a black and over a white backdrop."""
    calm = sr.Nuisance(yaw=0, roll_deg=0, shift=0, scale=0, smile=0, mouth_open_p=0, blink_p=0, occluder_p=0,
                       glasses_p=0, gradient=0, brightness=(1, 1), cast=0, contrast=(1, 1), gamma=0, blur_p=0,
                       noise_max=0)
    out = []
    for value in (0.0, 255.0):
        monkeypatch.setattr(sr, "_background", lambda rng, size, v=value: np.full((size, size, 3), v, np.float32))
        out.append(sr.render(identity, np.random.default_rng(seed), nuisance=calm))
    return (out[0] == out[1]).all(axis=2)


def test_a_smaller_scale_draws_a_smaller_face(monkeypatch):
    for k in range(3):
        ident = sr.train_identity(2, k)
        big = _person_mask(ident, k, monkeypatch)
        small = _person_mask(attrs.evolve(ident, scale=0.85), k, monkeypatch)
        # a scaling about the image centre shrinks the person's area by scale² = 0.7225 (edges are anti-aliased)
        assert small.sum() / big.sum() == pytest.approx(0.85**2, abs=0.03)
        assert np.flatnonzero(big.any(axis=1)).max() >= 109  # the neck reaches (about) the bottom edge ...
        assert np.flatnonzero(small.any(axis=1)).max() < 106  # ... and no longer: 56 + 0.85 · 56 · 1.04 ≈ 105.5


def test_group_of_families_exact_counts_and_mixed_prefixes():
    got = sr.group_of_families(50, [0.55, 0.25, 0.12, 0.08])
    # 50 · shares = 27.5, 12.5, 6, 4 → floors 27, 12, 6, 4 (49); the leftover family goes to the largest
    # remainder, a tie of 0.5 between A and B → the earlier group, A
    assert [got.count(g) for g in range(4)] == [28, 12, 6, 4] and len(got) == 50
    assert sorted(set(got)) == [0, 1, 2, 3]
    assert set(got[:10]) == {0, 1, 2, 3}  # every group early on, not in blocks
    # normalised by the sum: the same plan from percentages
    assert sr.group_of_families(50, [55, 25, 12, 8]) == got
    # the tie goes to the earlier group whatever the float noise (0.55 · 50 = 27.500000000000004)
    assert [sr.group_of_families(50, [0.25, 0.55, 0.12, 0.08]).count(g) for g in range(4)] == [13, 27, 6, 4]
    assert [sr.group_of_families(10, [0.7, 0.2, 0.1]).count(g) for g in range(3)] == [7, 2, 1]
    # 7 families, thirds: 2.33 each → 2, 2, 2 plus one for the tie-broken first group
    assert [sr.group_of_families(7, [1, 1, 1]).count(g) for g in range(3)] == [3, 2, 2]
    assert sr.group_of_families(3, [1]) == [0, 0, 0] and sr.group_of_families(0, [1, 2]) == []
    # Sainte-Laguë order for 1:1: A, B, A, B ...
    assert sr.group_of_families(4, [1, 1]) == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="shares must be one or more positive numbers"):
        sr.group_of_families(4, [1, 0])
    with pytest.raises(ValueError, match="shares"):
        sr.group_of_families(4, [])


def test_grouped_pairs_use_the_groups_own_streams_and_look():
    look = sr.GROUP_LOOKS[3]
    plain = sr.pair_specs(2, 6, 8, 0.5)
    specs = sr.pair_specs(2, 6, 8, 0.5, look)
    assert specs != plain and sum(s.same for s in specs) == 4 and sum(s.b == -1 for s in specs) == 2
    pairs = sr.verification_pairs(2, 6, 8, 0.5, look=look)
    for spec, (a, b, same) in zip(specs, pairs):
        first = sr.sample_identity(sr.identity_rng(2, "val/D", spec.a))
        if spec.b == -1:
            second = sr.sibling(first, sr.identity_rng(2, "val-sibling/D", spec.index), sr.VAL_CLOSENESS)
        else:
            second = sr.sample_identity(sr.identity_rng(2, "val/D", spec.b))
        want_a = sr.render(sr.apply_look(first, look), sr.image_rng(2, "val-pairs/D", spec.index, 0))
        want_b = sr.render(sr.apply_look(second, look), sr.image_rng(2, "val-pairs/D", spec.index, 1))
        assert np.array_equal(a, want_a) and np.array_equal(b, want_b) and same == spec.same
    part = sr.verification_pairs(2, 6, 8, 0.5, start=5, stop=7, look=look)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(pairs[5:7], part))

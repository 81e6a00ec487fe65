"""Error-versus-reject curves: the threshold convention, a curve and an AOC worked out by hand, and the
behaviour of perfect and random quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tface.quality.evrc import (
    DEFAULT_RATIOS,
    area_over_curve,
    evrc,
    relative_area_over_curve,
    threshold_at_fmr,
)

# --- threshold ------------------------------------------------------------------------------------------


def test_threshold_convention_by_hand() -> None:
    imp = np.round(np.arange(1, 11) * 0.1, 1)  # 0.1 ... 1.0
    # FMR 0.2: at most 2 of 10 impostors accepted, so 0.8 (the 3rd highest) must be rejected → t = 0.9.
    assert threshold_at_fmr(imp, 0.2) == 0.9
    assert threshold_at_fmr(imp, 0.2, candidates=np.append(imp, 0.85)) == 0.85  # a genuine score in between
    assert threshold_at_fmr(imp, 0.15) == 1.0
    assert threshold_at_fmr(imp, 0.05) == math.inf  # even the top impostor is too many
    assert threshold_at_fmr(imp, 1.0) == pytest.approx(0.1)  # everything may be accepted
    # Ties: two impostors at 0.9; FMR 0.1 allows one, so both 0.9s go and the threshold is 1.0.
    assert threshold_at_fmr([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9, 0.9, 1.0], 0.1) == 1.0


def test_threshold_is_the_lowest_candidate_meeting_the_target() -> None:
    rng = np.random.default_rng(0)
    imp = np.round(rng.normal(size=500), 2)  # plenty of ties
    cand = np.concatenate([imp, np.round(rng.normal(1.0, 1.0, size=300), 2)])
    for target in (1e-1, 1e-2, 3e-3, 1e-3):
        t = threshold_at_fmr(imp, target, candidates=cand)
        ok = np.array([np.mean(imp >= c) <= target for c in cand])
        assert t == cand[ok].min()


# --- a curve by hand ------------------------------------------------------------------------------------

# Ten images; quality ranks (0 = worst): image 1→0, 3→1, 4→2, 2→3, 0→4, 5→5, 7→6, 6→7, 8→8, 9→9.
QUALITY = [5.0, 1.0, 4.0, 2.0, 3.0, 6.0, 8.0, 7.0, 9.0, 10.0]
# Genuine pairs (a, b, score); the pair dies with its worse image, whose rank is given on the right.
GENUINE = [
    (1, 6, 0.20),  # rank 0
    (3, 8, 0.45),  # rank 1
    (0, 9, 0.90),  # rank 4
    (5, 6, 0.25),  # rank 5
    (7, 8, 0.72),  # rank 6
    (8, 9, 0.95),  # rank 8
]
IMPOSTOR = [0.10, 0.15, 0.22, 0.28, 0.35, 0.40, 0.50, 0.60, 0.70, 0.75]


def _hand_made(ratios: np.ndarray) -> object:
    a = [p[0] for p in GENUINE] + [i % 10 for i in range(10)]
    b = [p[1] for p in GENUINE] + [(i + 3) % 10 for i in range(10)]
    genuine = [True] * len(GENUINE) + [False] * 10
    scores = [p[2] for p in GENUINE] + IMPOSTOR
    return evrc(QUALITY, a, b, genuine, scores, fmrs=(0.1, 0.5), ratios=ratios)


def test_curve_by_hand() -> None:
    ratios = np.round(np.arange(10) * 0.1, 1)  # drop 0, 1, ..., 9 images
    res = _hand_made(ratios)
    # FMR 0.1: 0.70 (2nd highest impostor) must go → t = 0.72, the genuine score just above (kept: >=).
    # FMR 0.5: 0.35 (6th highest) must go → t = 0.40.
    np.testing.assert_array_equal(res.thresholds, [0.72, 0.40])
    # Failing genuine pairs: t=0.72 → scores 0.20, 0.45, 0.25 (ranks 0, 1, 5); t=0.40 → 0.20, 0.25 (ranks 0, 5).
    np.testing.assert_array_equal(res.kept_genuine, [6, 5, 4, 4, 4, 3, 2, 1, 1, 0])
    np.testing.assert_array_equal(res.kept_images, [10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    want_01 = [3 / 6, 2 / 5, 1 / 4, 1 / 4, 1 / 4, 1 / 3, 0, 0, 0, math.nan]
    want_05 = [2 / 6, 1 / 5, 1 / 4, 1 / 4, 1 / 4, 1 / 3, 0, 0, 0, math.nan]
    np.testing.assert_allclose(res.fnmr, [want_01, want_05], rtol=0, atol=1e-15)
    assert np.isnan(res.aoc).all()  # no genuine pair left at the last ratio


def test_aoc_by_hand() -> None:
    ratios = np.round(np.arange(9) * 0.1, 1)  # 0 ... 0.8
    res = _hand_made(ratios)
    # Trapezoids of width 0.1 under 1/2, 2/5, 1/4, 1/4, 1/4, 1/3, 0, 0, 0 (FMR 0.1):
    area = 0.1 * ((1 / 2 + 2 / 5) + (2 / 5 + 1 / 4) + 2 * (1 / 4 + 1 / 4) + (1 / 4 + 1 / 3) + (1 / 3 + 0)) / 2
    assert area == pytest.approx(0.17333333333333)
    assert res.aoc[0] == pytest.approx(1 - area, abs=1e-12)
    # ... and under 1/3, 1/5, 1/4, 1/4, 1/4, 1/3, 0, 0, 0 (FMR 0.5):
    area = 0.1 * ((1 / 3 + 1 / 5) + (1 / 5 + 1 / 4) + 2 * (1 / 4 + 1 / 4) + (1 / 4 + 1 / 3) + (1 / 3 + 0)) / 2
    assert res.aoc[1] == pytest.approx(1 - area, abs=1e-12)
    assert res.mean_aoc == pytest.approx(float(np.mean(res.aoc)))
    assert area_over_curve([0.0, 0.5, 0.95], [0.2, 0.2, 0.2]) == pytest.approx(1 - 0.95 * 0.2)


def test_ties_in_quality_drop_the_lower_index_first() -> None:
    # Images 0 and 1 tie for the worst quality; dropping one image must drop image 0 (and its pair).
    res = evrc(
        [1.0, 1.0, 5.0, 5.0],
        [0, 1, 0],
        [2, 3, 1],
        [True, True, False],
        [0.1, 0.9, 0.5],
        fmrs=(0.5,),
        ratios=[0.0, 0.25],
    )
    np.testing.assert_array_equal(res.kept_genuine, [2, 1])
    np.testing.assert_allclose(res.fnmr[0], [0.5, 0.0])


def test_default_grid_and_tensor_inputs() -> None:
    assert DEFAULT_RATIOS.size == 96 and DEFAULT_RATIOS[0] == 0.0 and DEFAULT_RATIOS[-1] == 0.95
    res = evrc(
        torch.tensor([0.3, 0.1, 0.2, 0.9]),
        torch.tensor([0, 1, 0, 2]),
        torch.tensor([1, 2, 3, 3]),
        torch.tensor([True, True, False, False]),
        torch.tensor([0.8, 0.2, 0.3, 0.1]),
        fmrs=(0.5,),
    )
    assert res.fnmr.shape == (1, 96) and res.ratios is DEFAULT_RATIOS


# --- perfect and random quality ----------------------------------------------------------------------------


def _synthetic(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4000 images, 20% "bad"; a genuine pair fails (scores low) iff it holds a bad image."""
    rng = np.random.default_rng(seed)
    m = 4000
    bad = rng.random(m) < 0.2
    a_g = rng.integers(0, m, 6000)
    b_g = rng.integers(0, m, 6000)
    fails = bad[a_g] | bad[b_g]
    g_scores = np.where(fails, rng.uniform(-0.2, 0.1, 6000), rng.uniform(0.4, 0.9, 6000))
    a_i = rng.integers(0, m, 20000)
    b_i = rng.integers(0, m, 20000)
    i_scores = rng.normal(0.0, 0.08, 20000)
    a = np.concatenate([a_g, a_i])
    b = np.concatenate([b_g, b_i])
    genuine = np.concatenate([np.ones(6000, bool), np.zeros(20000, bool)])
    return bad, a, b, genuine, np.concatenate([g_scores, i_scores])


def test_perfect_quality_drives_fnmr_to_zero() -> None:
    bad, a, b, genuine, scores = _synthetic()
    rng = np.random.default_rng(1)
    perfect = np.where(bad, 0.0, 1.0) + 0.01 * rng.random(bad.size)  # every bad image below every good one
    res = evrc(perfect, a, b, genuine, scores, fmrs=(1e-2, 1e-3))
    first_clean = np.searchsorted(res.ratios, bad.mean() - 1e-12)  # the first ratio dropping every bad image
    for curve in res.fnmr:
        assert curve[0] > 0.3
        assert np.all(np.diff(curve) <= 1e-12)  # rejecting bad images first can only help
        assert np.all(curve[first_clean:] == 0.0)
    assert np.all(res.aoc > 0.9)


def test_random_quality_leaves_fnmr_flat() -> None:
    bad, a, b, genuine, scores = _synthetic()
    res = evrc(np.random.default_rng(2).random(bad.size), a, b, genuine, scores, fmrs=(1e-2,))
    curve = res.fnmr[0]
    half = res.ratios <= 0.5
    assert np.max(np.abs(curve[half] - curve[0])) < 0.05
    # The area is then about (1 - FNMR) of the whole span: AOC ≈ 1 − 0.95·FNMR(0).
    assert res.aoc[0] == pytest.approx(1 - 0.95 * curve[0], abs=0.06)
    perfect = evrc(np.where(bad, 0.0, 1.0), a, b, genuine, scores, fmrs=(1e-2,))
    assert perfect.aoc[0] > res.aoc[0] + 0.2
    # relative to the curve's start: about 0 for random rejection, near 1 when bad images go first
    assert abs(res.aoc_relative[0]) < 0.06
    assert perfect.aoc_relative[0] > 0.6


def test_relative_aoc_by_hand() -> None:
    ratios = [0.0, 0.5, 1.0 - 1e-9]
    # g/g(0) = 1, 0.5, 0 → trapezoids 0.5·(1 + 0.5)/2 + 0.5·(0.5 + 0)/2 = 0.5 over a span of ~1
    assert relative_area_over_curve(ratios, [0.2, 0.1, 0.0]) == pytest.approx(1 - 0.5, abs=1e-6)
    assert relative_area_over_curve([0.0, 0.95], [0.1, 0.1]) == pytest.approx(0.0)
    assert relative_area_over_curve([0.0, 0.95], [0.1, 0.0]) == pytest.approx(0.5)
    assert math.isnan(relative_area_over_curve([0.0, 0.95], [0.0, 0.0]))


# --- validation -------------------------------------------------------------------------------------------


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="genuine and one impostor"):
        evrc([1.0, 2.0], [0], [1], [True], [0.5])
    with pytest.raises(ValueError, match="image indices"):
        evrc([1.0, 2.0], [0, 2], [1, 1], [True, False], [0.5, 0.1])
    with pytest.raises(ValueError, match="strictly increasing"):
        evrc([1.0, 2.0], [0, 0], [1, 1], [True, False], [0.5, 0.1], ratios=[0.0, 0.5, 0.5])
    with pytest.raises(ValueError, match="finite"):
        evrc([1.0, math.nan], [0, 0], [1, 1], [True, False], [0.5, 0.1])

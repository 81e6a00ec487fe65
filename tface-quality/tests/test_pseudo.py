"""SDD-FIQA pseudo labels: the Wasserstein helper against scipy, the sampled sets, and the labels against a
brute-force per-image loop over the same sets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance

from tface.quality.pseudo import pseudo_labels, round_distances, sample_round, wasserstein_1d


def _toy(sizes: list[int], dim: int = 16, noise: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Identities of the given sizes (labels 100, 101, ... shuffled), features around random centres, float64."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), 100 + i, dtype=torch.int64) for i, n in enumerate(sizes)])
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    centres = F.normalize(torch.randn(len(sizes), dim, generator=g, dtype=torch.float64), dim=1)
    feats = centres[labels - 100] + noise * torch.randn(labels.numel(), dim, generator=g, dtype=torch.float64)
    return feats, labels


# --- wasserstein_1d ------------------------------------------------------------------------------------


def test_wasserstein_matches_scipy_on_unequal_sizes() -> None:
    rng = np.random.default_rng(0)
    rows, n, m = 40, 13, 24
    u = rng.normal(size=(rows, n))
    v = rng.normal(0.5, 2.0, size=(rows, m))
    u[::3, :4] = np.round(u[::3, :4])  # ties inside and across the two sets
    v[::3, :4] = np.round(v[::3, :4])
    n_u = rng.integers(1, n + 1, size=rows)
    n_v = rng.integers(1, m + 1, size=rows)
    um = np.arange(n)[None] < n_u[:, None]
    vm = np.arange(m)[None] < n_v[:, None]
    got = wasserstein_1d(torch.from_numpy(u), torch.from_numpy(v), torch.from_numpy(um), torch.from_numpy(vm))
    want = [wasserstein_distance(u[i, : n_u[i]], v[i, : n_v[i]]) for i in range(rows)]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-13)


def test_wasserstein_one_dimensional_and_masked_anywhere() -> None:
    rng = np.random.default_rng(1)
    u, v = rng.normal(size=7), rng.uniform(size=19)
    got = wasserstein_1d(torch.from_numpy(u), torch.from_numpy(v))
    assert got.dim() == 0
    assert float(got) == pytest.approx(wasserstein_distance(u, v), rel=1e-12)
    # Masked-out entries may sit anywhere and hold anything.
    um = np.array([True, False, True, True, False, True, True])
    u_bad = np.where(um, u, 1e6)
    got = wasserstein_1d(torch.from_numpy(u_bad), torch.from_numpy(v), u_mask=torch.from_numpy(um))
    assert float(got) == pytest.approx(wasserstein_distance(u[um], v), rel=1e-12)


def test_wasserstein_rejects_an_empty_row() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        wasserstein_1d(torch.zeros(2, 3), torch.zeros(2, 4), u_mask=torch.tensor([[True] * 3, [False] * 3]))


# --- sample_round ----------------------------------------------------------------------------------------


def test_sampled_sets_have_the_promised_structure() -> None:
    _, labels = _toy([2, 3, 5, 9, 10, 30, 4, 12])
    k = 8
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        pos, neg = sample_round(labels, k=k, generator=gen)
        assert pos.shape == neg.shape == (labels.numel(), k)
        for i in range(labels.numel()):
            n_id = int((labels == labels[i]).sum())
            p = pos[i]
            want = min(k, n_id - 1)
            assert bool((p[:want] >= 0).all()) and bool((p[want:] == -1).all())
            p = p[:want]
            assert bool((labels[p] == labels[i]).all())
            assert i not in p.tolist()
            assert len(set(p.tolist())) == want
            q = neg[i]
            assert bool((labels[q] != labels[i]).all())
            assert len(set(q.tolist())) == k


def test_sampling_is_uniform_enough() -> None:
    # One identity of 13 images (12 others, k = 4) and 15 outsiders in 5 identities (k = 4 drawn): every
    # candidate should come up about equally often for image 0.
    labels = torch.tensor([0] * 13 + [1, 2, 3, 4, 5] * 3)
    gen = torch.Generator().manual_seed(0)
    pos_hits = torch.zeros(28)
    neg_hits = torch.zeros(28)
    rounds = 600
    for _ in range(rounds):
        pos, neg = sample_round(labels, k=4, generator=gen)
        pos_hits[pos[0]] += 1
        neg_hits[neg[0]] += 1
    assert pos_hits[0] == 0 and bool((pos_hits[13:] == 0).all()) and bool((neg_hits[:13] == 0).all())
    # Expected 600 * 4/12 = 200 and 600 * 4/15 = 160 per candidate; allow ±5 sigma-ish.
    assert bool(((pos_hits[1:13] - 200).abs() < 60).all()), pos_hits
    assert bool(((neg_hits[13:] - 160).abs() < 55).all()), neg_hits


# --- pseudo_labels ---------------------------------------------------------------------------------------


def _brute_force(feats: torch.Tensor, labels: torch.Tensor, k: int, rounds: int, seed: int) -> np.ndarray:
    """The same labels from scratch: per image and round, scipy on the cosines of the sampled sets."""
    f = F.normalize(feats, dim=1).numpy()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(rounds):
        pos, neg = sample_round(labels, k=k, generator=gen)
        wd = np.empty(len(f))
        for i in range(len(f)):
            p = [j for j in pos[i].tolist() if j >= 0]
            wd[i] = wasserstein_distance(f[p] @ f[i], f[neg[i].numpy()] @ f[i])
        out.append((wd - wd.min()) / (wd.max() - wd.min()) * 100.0)
    return np.mean(out, axis=0)


def test_pseudo_labels_match_a_brute_force_loop() -> None:
    feats, labels = _toy([2, 3, 5, 9, 10, 30, 4, 12, 7], noise=0.5)
    got = pseudo_labels(feats, labels, k=6, rounds=4, seed=11, chunk=5)
    want = _brute_force(feats, labels, k=6, rounds=4, seed=11)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)


def test_round_distances_is_the_public_per_round_step() -> None:
    feats, labels = _toy([4, 6, 8, 5])
    f = F.normalize(feats, dim=1)
    pos, neg = sample_round(labels, k=3, generator=torch.Generator().manual_seed(0))
    wd = round_distances(f, pos, neg, chunk=4)
    i = 5
    p = pos[i][pos[i] >= 0]
    assert float(wd[i]) == pytest.approx(wasserstein_distance((f[p] @ f[i]).numpy(), (f[neg[i]] @ f[i]).numpy()))


def test_determinism_chunk_and_scale_invariance() -> None:
    feats, labels = _toy([6, 8, 10, 12, 3], noise=0.6)
    a = pseudo_labels(feats, labels, k=5, rounds=3, seed=7)
    assert torch.equal(a, pseudo_labels(feats, labels, k=5, rounds=3, seed=7))
    assert torch.allclose(a, pseudo_labels(feats, labels, k=5, rounds=3, seed=7, chunk=3), rtol=0, atol=1e-10)
    assert torch.allclose(a, pseudo_labels(3.0 * feats, labels, k=5, rounds=3, seed=7), rtol=0, atol=1e-9)
    assert not torch.allclose(a, pseudo_labels(feats, labels, k=5, rounds=3, seed=8))


def test_every_round_spans_0_to_100() -> None:
    feats, labels = _toy([6, 8, 10, 12, 3], noise=0.6)
    mean, per_round = pseudo_labels(feats.float(), labels, k=5, rounds=5, seed=1, return_rounds=True)
    assert per_round.shape == (5, labels.numel())
    assert torch.equal(per_round.amin(1), torch.zeros(5)) and torch.equal(per_round.amax(1), torch.full((5,), 100.0))
    assert torch.allclose(mean, per_round.mean(0))
    assert float(mean.min()) >= 0.0 and float(mean.max()) <= 100.0


def test_clear_images_beat_outliers() -> None:
    g = torch.Generator().manual_seed(0)
    ids, per_id, dim = 12, 10, 32
    centres = F.normalize(torch.randn(ids, dim, generator=g), dim=1)
    labels = torch.arange(ids).repeat_interleave(per_id)
    clear = torch.arange(ids * per_id) % per_id < 8  # 8 clear images and 2 outliers per identity
    noise = torch.randn(ids * per_id, dim, generator=g)
    feats = torch.where(
        clear[:, None], centres[labels] + 0.05 * noise, 0.5 * centres[labels] + 0.6 * F.normalize(noise, dim=1)
    )
    q = pseudo_labels(feats, labels, k=8, rounds=6, seed=0)
    assert float(q[clear].min()) > float(q[~clear].max())


def test_errors_name_the_offending_labels() -> None:
    feats, labels = _toy([3, 4, 5])
    labels = labels.clone()
    labels[0] = 77  # a single image of identity 77
    with pytest.raises(ValueError, match=r"fewer than 2 images.*77"):
        pseudo_labels(feats, labels, k=2)
    feats, labels = _toy([10, 3, 2])
    with pytest.raises(ValueError, match=r"k=6 negatives.*label\(s\) 100.*only 5"):
        pseudo_labels(feats, labels, k=6)
    assert pseudo_labels(feats, labels, k=5).shape == (15,)  # exactly k others suffice
    with pytest.raises(ValueError, match="integer"):
        pseudo_labels(feats, labels.double(), k=2)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        pseudo_labels(feats[:-1], labels, k=2)

"""Softmax / focal classification losses against the formulas written out per sample with the math module."""

from __future__ import annotations

import math

import pytest
import torch

from tface.core.config import ConfigError, check_options, structure, validate_options
from tface.core.losses import ClassificationLoss
from tface.heads.losses import Focal, Softmax


def sample_nll(seed: int = 0, n: int = 10, classes: int = 6) -> torch.Tensor:
    torch.manual_seed(seed)
    logits = torch.randn(n, classes, dtype=torch.float64) * 3
    labels = torch.randint(0, classes, (n,))
    return -torch.log_softmax(logits, dim=1)[torch.arange(n), labels]


def focal_ref(nll: torch.Tensor, gamma: float) -> float:
    values = [float(v) for v in nll]
    return sum((1.0 - math.exp(-v)) ** gamma * v for v in values) / len(values)


def test_softmax_is_the_mean_nll():
    nll = sample_nll()
    assert float(Softmax()(nll)) == pytest.approx(sum(float(v) for v in nll) / len(nll), rel=1e-12)


def test_softmax_equals_cross_entropy():
    torch.manual_seed(4)
    logits = torch.randn(7, 5, dtype=torch.float64)
    labels = torch.randint(0, 5, (7,))
    nll = -torch.log_softmax(logits, 1)[torch.arange(7), labels]
    assert torch.allclose(Softmax()(nll), torch.nn.functional.cross_entropy(logits, labels), atol=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.7])
def test_focal_matches_per_sample_formula(gamma):
    nll = sample_nll(seed=1)
    assert float(Focal(gamma=gamma)(nll)) == pytest.approx(focal_ref(nll, gamma), rel=1e-12)


def test_focal_gamma_zero_is_softmax():
    nll = sample_nll(seed=2).requires_grad_(True)
    a, b = Focal(gamma=0.0)(nll), Softmax()(nll)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-15)
    (ga,) = torch.autograd.grad(a, nll)
    (gb,) = torch.autograd.grad(b, nll)
    assert torch.allclose(ga, gb)


def test_focal_is_not_the_batch_mean_variant():
    # TFace v0.1.0: (1 - exp(-CE))^gamma * CE with CE the batch mean; the per-sample loss differs
    nll = sample_nll(seed=3)
    ce = float(nll.mean())
    tface = (1.0 - math.exp(-ce)) ** 2 * ce
    ours = float(Focal()(nll))
    assert ours == pytest.approx(focal_ref(nll, 2.0), rel=1e-12)
    assert abs(ours - tface) > 1e-3


def test_focal_gradient_matches_formula():
    nll = sample_nll(seed=5).requires_grad_(True)
    Focal(gamma=2.0)(nll).backward()
    for v, g in zip(nll.detach().tolist(), nll.grad.tolist()):
        q = 1.0 - math.exp(-v)  # d/dv [q^2 v] = 2 q (1 - q) v + q^2
        assert g == pytest.approx((2 * q * (1 - q) * v + q * q) / len(nll), rel=1e-10)


def test_focal_accurate_for_confident_samples():
    # p close to 1: 1 - exp(-nll) would lose all digits; -expm1(-nll) keeps them
    nll = torch.tensor([1e-10, 1e-6], dtype=torch.float64)
    ref = [(v * (1 - v / 2)) ** 2 * v for v in (1e-10, 1e-6)]
    assert float(Focal(gamma=2.0)(nll)) == pytest.approx(sum(ref) / 2, rel=1e-6)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_focal_finite_gradient_at_zero_nll(gamma, dtype):
    nll = torch.tensor([0.0, -1e-8, 0.3], dtype=dtype, requires_grad=True)
    loss = Focal(gamma=gamma)(nll)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(nll.grad).all()


def test_kinds_and_options():
    assert isinstance(Softmax(), ClassificationLoss) and Softmax.takes == "nll"
    assert isinstance(Focal(), ClassificationLoss)
    assert check_options(Softmax, kind="losses") == []
    assert check_options(Focal, kind="losses") == []
    assert Focal().gamma == 2.0


def test_bad_options_are_refused():
    with pytest.raises(ConfigError, match=r"loss\[0\]\.gamma:"):
        validate_options(Focal, {"gamma": -1.0}, "loss[0]")
    with pytest.raises(ConfigError, match='loss.gamma: expected float, got "big"'):
        structure(Focal.Config, {"gamma": "big"}, "loss")
    with pytest.raises(ConfigError, match="loss.label_smoothing: unknown key"):
        validate_options(Softmax, {"label_smoothing": 0.1}, "loss")
    with pytest.raises(ValueError, match="gamma"):
        Focal(gamma=-0.5)

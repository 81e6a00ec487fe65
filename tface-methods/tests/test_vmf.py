"""SCF's vMF pieces: log I_v against mpmath, the loss against its formula and optimum, the κ head's shape and bounds."""

from __future__ import annotations

import math

import mpmath as mp
import pytest
import torch

from tface.methods.vmf import UncertaintyHead, log_iv, vmf_nll

mp.mp.dps = 40


def logspace(lo: float, hi: float, n: int) -> list[float]:
    return [10 ** (math.log10(lo) + (math.log10(hi) - math.log10(lo)) * i / (n - 1)) for i in range(n)]


def ref_log_iv(v: float, k: float) -> mp.mpf:
    return mp.log(mp.besseli(v, mp.mpf(k), maxterms=10**6))


def ref_dlog_iv(v: float, k: float) -> mp.mpf:
    """d/dκ log I_v(κ) = I_{v+1}(κ)/I_v(κ) + v/κ (from I_v' = I_{v+1} + (v/κ) I_v)."""
    k = mp.mpf(k)
    return mp.besseli(v + 1, k, maxterms=10**6) / mp.besseli(v, k, maxterms=10**6) + v / k


def value_and_grad(v: float, kappas: list[float], dtype=torch.float64) -> tuple[list[float], list[float]]:
    k = torch.tensor(kappas, dtype=dtype, requires_grad=True)
    out = log_iv(v, k)
    (grad,) = torch.autograd.grad(out.sum(), k)
    assert out.dtype == dtype and grad.dtype == dtype and out.shape == k.shape
    return out.detach().tolist(), grad.tolist()


def max_rel(got: list[float], want: list[mp.mpf], floor: float = 0.0) -> float:
    """Largest |got - want| / max(|want|, floor): floor = 1 makes it absolute where |log I| < 1 (near I = 1)."""
    return max(float(abs(g - w) / max(abs(w), floor)) for g, w in zip(got, want))


# ---------------------------------------------------------------------------------------------- log_iv


def test_order_255_matches_mpmath_over_1_to_1e5():
    kappas = logspace(1.0, 1e5, 41)
    values, grads = value_and_grad(255.0, kappas)
    assert max_rel(values, [ref_log_iv(255, k) for k in kappas], floor=1.0) < 1e-12
    assert max_rel(grads, [ref_dlog_iv(255, k) for k in kappas]) < 1e-12


@pytest.mark.parametrize(("v", "lo", "hi", "n"), [
    (0.0, 1e-3, 1e5, 41), (0.5, 1e-3, 1e5, 41), (1.0, 1e-3, 1e5, 41), (10.0, 1e-3, 1e5, 41),
    (19.99, 1e-3, 1e5, 21), (20.0, 1e-3, 1e5, 21), (1000.0, 1e-3, 1e5, 15),
])
def test_other_orders_match_mpmath(v, lo, hi, n):
    kappas = logspace(lo, hi, n)
    values, grads = value_and_grad(v, kappas)
    assert max_rel(values, [ref_log_iv(v, k) for k in kappas], floor=1.0) < 1e-12
    assert max_rel(grads, [ref_dlog_iv(v, k) for k in kappas]) < 1e-12


@pytest.mark.parametrize("v", [0.0, 3.5, 19.5])
def test_continuous_where_the_method_changes(v):
    # below order 20 the power series serves κ <= 20 and the Debye expansion + recurrence κ > 20
    kappas = [19.9, 19.999999, 20.0, 20.000001, 20.1]
    values, grads = value_and_grad(v, kappas)
    assert max_rel(values, [ref_log_iv(v, k) for k in kappas]) < 1e-13
    assert max_rel(grads, [ref_dlog_iv(v, k) for k in kappas]) < 1e-13


def test_closed_forms_without_mpmath():
    # I_{1/2}(κ) = sqrt(2/(πκ)) sinh κ, so log I_{1/2} = ½ log(2/(πκ)) + κ + log1p(-e^{-2κ}) - log 2
    kappas = [1e-3, 0.3, 2.0, 25.0, 700.0, 9e4]
    want = [0.5 * math.log(2 / (math.pi * k)) + k + math.log1p(-math.exp(-2 * k)) - math.log(2) for k in kappas]
    values, _ = value_and_grad(0.5, kappas)
    assert max_rel(values, want, floor=1.0) < 1e-13
    # I_0(κ) = 1 + κ²/4 + κ⁴/64 + ...: the log keeps its relative accuracy as κ → 0
    values, grads = value_and_grad(0.0, [1e-6, 1e-3])
    assert values[0] == pytest.approx(0.25e-12, rel=1e-12)
    assert values[1] == pytest.approx(math.log1p(0.25e-6 + 1e-12 / 64), rel=1e-12)
    assert grads[0] == pytest.approx(0.5e-6, rel=1e-12)  # I_1/I_0 ≈ κ/2


def test_ratio_formula_agrees_with_numerical_derivative():
    # the tests' derivative reference itself, against mpmath's own differentiation
    for v, k in [(255, 40.0), (255, 3e3), (0.5, 0.01), (10, 7.0)]:
        numeric = mp.diff(lambda x, v=v: mp.log(mp.besseli(v, x)), mp.mpf(k))
        assert abs(numeric - ref_dlog_iv(v, k)) / abs(numeric) < mp.mpf(10) ** -25


def test_float32_input():
    kappas = torch.tensor(logspace(1.0, 1e5, 17), dtype=torch.float32)
    values, grads = value_and_grad(255.0, kappas.tolist(), dtype=torch.float32)
    exact = kappas.tolist()  # the float32 values, exactly
    assert max_rel(values, [ref_log_iv(255, k) for k in exact], floor=1.0) < 3e-7
    assert max_rel(grads, [ref_dlog_iv(255, k) for k in exact]) < 3e-7


def test_mixed_batch_any_shape():
    kappa = torch.tensor([[1e-3, 0.7, 19.0, 21.0], [150.0, 2e3, 5e4, 1e5]], dtype=torch.float64)
    for v in (0.0, 1.0, 255.0):
        out = log_iv(v, kappa)
        assert out.shape == (2, 4)
        single = torch.stack([log_iv(v, k) for k in kappa.flatten()]).view(2, 4)  # 0-d tensors
        assert torch.equal(out, single)
        assert max_rel(out.flatten().tolist(), [ref_log_iv(v, k) for k in kappa.flatten().tolist()], 1.0) < 1e-12


@pytest.mark.parametrize("v", [0.0, 0.5, 7.0, 255.0])
def test_gradcheck(v):
    kappa = torch.tensor([1e-3, 0.5, 3.0, 19.9, 20.1, 150.0, 2e3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda k: log_iv(v, k), (kappa,), eps=1e-7, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_refuses_kappa_outside_domain(bad):
    with pytest.raises(ValueError, match="kappa must be finite and > 0"):
        log_iv(255.0, torch.tensor([1.0, bad], dtype=torch.float64))


def test_refuses_bad_order_and_dtype():
    with pytest.raises(ValueError, match="order v must be"):
        log_iv(-0.5, torch.ones(3))
    with pytest.raises(ValueError, match="order v must be"):
        log_iv(float("nan"), torch.ones(3))
    with pytest.raises(ValueError, match="floating-point"):
        log_iv(1.0, torch.ones(3, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------- vmf_nll


def ref_nll(mu: list[float], kappa: float, centre: list[float], radius: float) -> mp.mpf:
    d = len(mu)
    dot = mp.fsum(mp.mpf(a) * mp.mpf(b) for a, b in zip(mu, centre))
    cos = dot / (mp.sqrt(mp.fsum(mp.mpf(a) ** 2 for a in mu)) * mp.sqrt(mp.fsum(mp.mpf(b) ** 2 for b in centre)))
    k, order = mp.mpf(kappa), mp.mpf(d) / 2 - 1
    return (-k * cos - order * mp.log(k) + mp.log(mp.besseli(order, k)) + mp.mpf(d) / 2 * mp.log(2 * mp.pi)
            + d * mp.log(radius))


def test_nll_matches_formula():
    g = torch.Generator().manual_seed(0)
    cases = [
        ([1.0, 2.0, 2.0], 5.0, [2.0, -1.0, 2.0], 64.0),  # cos = 4/9, order 1/2
        ([1.0, 0.0, 0.0, 0.0], 50.0, [1.0, 1.0, 1.0, 1.0], 1.0),  # cos = 1/2, order 1
        ([0.0, 3.0], 0.2, [-1.0, -1.0], 64.0),  # cos = -1/√2, order 0
        (torch.randn(512, generator=g, dtype=torch.float64).tolist(), 300.0,
         torch.randn(512, generator=g, dtype=torch.float64).tolist(), 64.0),
    ]
    for mu, kappa, centre, radius in cases:
        got = vmf_nll(torch.tensor([mu], dtype=torch.float64), torch.tensor([kappa], dtype=torch.float64),
                      torch.tensor([centre], dtype=torch.float64), radius)
        want = ref_nll(mu, kappa, centre, radius)
        assert got.shape == (1,)
        assert abs(float(got[0]) - want) / max(abs(want), 1) < 1e-12


def test_nll_batch_shapes_dtypes_and_gradients():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(6, 512, generator=g, requires_grad=True)
    centres = torch.randn(6, 512, generator=g)
    kappa = (torch.rand(6, 1, generator=g) * 1e3 + 1).requires_grad_()
    loss = vmf_nll(mu, kappa, centres, 64.0)
    assert loss.shape == (6,) and loss.dtype == torch.float32
    loss.sum().backward()
    assert mu.grad is not None and mu.grad.abs().sum() > 0
    assert kappa.grad is not None and kappa.grad.shape == (6, 1)
    rows = [ref_nll(mu[i].tolist(), float(kappa.detach()[i, 0]), centres[i].tolist(), 64.0) for i in range(6)]
    assert max_rel(loss.tolist(), rows, floor=1.0) < 1e-6
    with pytest.raises(ValueError, match="kappa must be"):
        vmf_nll(mu, kappa[:3], centres, 64.0)
    with pytest.raises(ValueError, match="one shape"):
        vmf_nll(mu, kappa, centres[:, :3], 64.0)


def test_nll_invariant_to_centre_norm():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(5, 512, generator=g, dtype=torch.float64)
    centres = torch.randn(5, 512, generator=g, dtype=torch.float64)
    kappa = torch.tensor([2.0, 40.0, 300.0, 4e3, 9e4], dtype=torch.float64)
    base = vmf_nll(mu, kappa, centres, 64.0)
    for scale in (1e-3, 1.0, 64.0 / centres.norm(dim=1, keepdim=True), 1e4):
        assert torch.allclose(vmf_nll(mu, kappa, centres * scale, 64.0), base, rtol=1e-14, atol=1e-9)
        assert torch.allclose(vmf_nll(mu * 7.0, kappa, centres * scale, 64.0), base, rtol=1e-14, atol=1e-9)


@pytest.mark.parametrize("cos", [0.5, 0.8, 0.95])
def test_nll_minimum_solves_mean_resultant_length_equation(cos):
    d = 512
    mu = torch.zeros(1, d, dtype=torch.float64)
    mu[0, 0] = 1.0
    centre = torch.zeros(1, d, dtype=torch.float64)
    centre[0, 0], centre[0, 1] = cos, math.sqrt(1 - cos * cos)

    def loss(log_kappa: torch.Tensor) -> torch.Tensor:
        return vmf_nll(mu.expand(log_kappa.numel(), d), log_kappa.exp(), centre.expand(log_kappa.numel(), d), 64.0)

    # A_d(κ) = I_{d/2}(κ) / I_{d/2-1}(κ) = cos, solved by mpmath from Banerjee et al.'s approximation
    guess = cos * (d - cos**2) / (1 - cos**2)
    root = float(mp.findroot(lambda k: mp.besseli(d // 2, k) / mp.besseli(d // 2 - 1, k) - cos, guess))

    grid = torch.linspace(0.0, math.log(1e5), 4001, dtype=torch.float64)  # steps of 0.29% in κ
    best = int(torch.argmin(loss(grid)))
    assert abs(float(grid[best].exp()) / root - 1) < 3e-3

    log_kappa = grid[best].clone().requires_grad_()
    opt = torch.optim.LBFGS([log_kappa], lr=1.0, max_iter=50, tolerance_grad=1e-14, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss(log_kappa.view(1)).sum()
        value.backward()
        return value

    opt.step(closure)
    assert float(log_kappa.detach().exp()) == pytest.approx(root, rel=1e-9)


# ---------------------------------------------------------------------------------------------- UncertaintyHead


@pytest.mark.parametrize("size", [(7, 7), (9, 9), (12, 8)])
def test_head_shape(size):
    head = UncertaintyHead(16)
    out = head(torch.randn(4, 16, *size))
    assert out.shape == (4,)
    assert bool(((out >= 0) & (out <= math.log(1e5))).all())


def test_head_pads_small_maps_and_refuses_bad_options():
    """Below 7 on a side each convolution sees the map zero-padded by one pixel: the result equals the same
    weights applied by hand with padding 1 (and a 7x7 map is not padded)."""
    torch.manual_seed(0)
    head = UncertaintyHead(8).eval()
    x = torch.randn(2, 8, 4, 4)
    y = x
    for layer in head.convs:
        y = torch.nn.functional.conv2d(y, layer.weight, padding=1) if isinstance(layer, torch.nn.Conv2d) else layer(y)
    assert y.shape == (2, 8, 1, 1)
    torch.testing.assert_close(head(x), head.bound(head.mlp(y.flatten(1)).squeeze(1)), rtol=0, atol=0)
    big = torch.randn(2, 8, 7, 7)
    z = big
    for layer in head.convs:
        z = torch.nn.functional.conv2d(z, layer.weight) if isinstance(layer, torch.nn.Conv2d) else layer(z)
    torch.testing.assert_close(head(big), head.bound(head.mlp(z.flatten(1)).squeeze(1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"expected \[N, 8, H, W\]"):
        head(torch.randn(2, 4, 7, 7))
    with pytest.raises(ValueError, match="kappa_min < kappa_max"):
        UncertaintyHead(8, kappa_min=10.0, kappa_max=1.0)
    with pytest.raises(ValueError, match="kappa_min < kappa_max"):
        UncertaintyHead(8, kappa_min=0.0)


def test_head_gradient_reaches_convolutions_through_the_loss():
    torch.manual_seed(3)
    head = UncertaintyHead(8)
    features = torch.randn(4, 8, 7, 7)
    mu, centres = torch.randn(4, 512), torch.randn(4, 512)
    vmf_nll(mu, head(features).exp(), centres, 64.0).mean().backward()
    convs = [m for m in head.convs if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 3 and all(c.bias is None and c.padding == (0, 0) for c in convs)
    for conv in convs:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert [tuple(c.weight.shape) for c in convs] == [(8, 8, 3, 3)] * 3
    assert [m.out_features for m in head.mlp if isinstance(m, torch.nn.Linear)] == [256, 128, 1]


def test_head_bounds_log_kappa_smoothly():
    head = UncertaintyHead(4, kappa_min=0.5, kappa_max=1e3)
    lo, hi = math.log(0.5), math.log(1e3)
    raw = torch.tensor([-1e6, -50.0, -5.0, lo, 2.0, 4.0, hi, 15.0, 60.0, 1e6], dtype=torch.float64,
                       requires_grad=True)
    out = head.bound(raw)
    (grad,) = torch.autograd.grad(out.sum(), raw)
    out = out.detach()
    assert bool(((out >= lo) & (out <= hi)).all())
    assert float(out[0]) == lo and float(out[-1]) == hi
    assert float(out[1]) == pytest.approx(lo, abs=1e-15) and float(out[-2]) == pytest.approx(hi, abs=1e-15)
    # ≈ identity well inside the range: lo + softplus(x - lo) - softplus(x - hi)
    for i, x in ((4, 2.0), (5, 4.0)):
        want = lo + math.log1p(math.exp(x - lo)) - math.log1p(math.exp(x - hi))
        assert float(out[i]) == pytest.approx(want, rel=1e-14)
        assert abs(float(out[i]) - x) < 0.1
    # the gradient never vanishes inside float range, so no sample gets stuck at a bound
    assert bool((grad[2:8] > 0).all()) and float(grad[4]) == pytest.approx(1.0, abs=0.1)
    # a saturated head returns the bounds exactly
    with torch.no_grad():
        for b, want in ((1e4, hi), (-1e4, lo)):
            head.mlp[-1].bias.fill_(b)
            assert torch.equal(head(torch.randn(2, 4, 7, 7)), torch.full((2,), want))

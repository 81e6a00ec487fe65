"""von Mises-Fisher pieces of SCF, Spherical Confidence Learning (Li et al., CVPR 2021).

SCF freezes a trained face model and learns, per image, a concentration κ of a von Mises-Fisher (vMF)
distribution on the sphere of radius ``r`` centred on the image's embedding direction μ. The loss is the
KL divergence between a Dirac at the image's class centre and that vMF, which up to constants is the negative
log-likelihood of the centre (:func:`vmf_nll`). Its normaliser needs ``log I_{d/2-1}(κ)`` at order 255 for
512-d features and κ up to ~1e5, where ``I_v`` itself overflows float64, hence :func:`log_iv`.

Differences to TFace v0.1.0 (``tasks/scf``):

- ``log I_v`` is computed in torch on the tensor's device (TFace called scipy's ``ive`` on the CPU every
  step) and without the ``log(ive + 1e-6)`` / ``log(κ + 1e-6)`` offsets: ``ive(255, κ) = I_255(κ) e^{-κ}`` is
  below 1e-6 for κ < ~3.7e3 (optimal cosines below ~0.93), where TFace's log I_255 is therefore mostly
  ``κ + log 1e-6`` instead;
- the cosine normalises the class centre instead of dividing by ``r`` (TFace assumed centres of norm ``r``);
- :class:`UncertaintyHead` bounds log κ to a documented range instead of ``log(1e-6 + exp(x))``.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["log_iv", "vmf_nll", "UncertaintyHead"]

# Orders >= _DEBYE_MIN_ORDER use the uniform asymptotic (Debye) expansion with terms k = 0.._DEBYE_TERMS; its
# truncation error (relative, in I_v) is about max|u_13| / v^13 <= 48 / 20^13 < 1e-15. Lower orders step down
# from order v + m >= _DEBYE_MIN_ORDER by the backward recurrence (stable for I_v), or, for κ <= _SERIES_MAX_KAPPA,
# use the power series, whose _SERIES_TERMS terms sum to < 1e-16 relative there.
_DEBYE_MIN_ORDER = 20.0
_DEBYE_TERMS = 12
_SERIES_MAX_KAPPA = 20.0
_SERIES_TERMS = 48


# ---------------------------------------------------------------------------------------------- log I_v(κ)


def _poly_mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def _poly_add(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def _poly_deriv(a: list[Fraction]) -> list[Fraction]:
    return [i * a[i] for i in range(1, len(a))] or [Fraction(0)]


def _poly_trim(a: list[Fraction]) -> list[Fraction]:
    while len(a) > 1 and a[-1] == 0:
        a = a[:-1]
    return a


@lru_cache(maxsize=1)
def _debye_polynomials() -> tuple[list[list[Fraction]], list[list[Fraction]]]:
    """Exact coefficients (by power of p) of the Debye polynomials u_k(p) and v_k(p), k = 0.._DEBYE_TERMS.

    Generated from the recurrences (DLMF 10.41.9-10.41.12) in rational arithmetic rather than typed in, so no
    coefficient can carry a typo:
    ``u_{k+1} = p²(1-p²)/2 · u_k' + 1/8 ∫_0^p (1-5t²) u_k(t) dt`` and
    ``v_k = u_k + p(p²-1) (u_{k-1}/2 + p u_{k-1}')``.
    """
    u = [[Fraction(1)]]
    for _ in range(_DEBYE_TERMS):
        uk = u[-1]
        first = _poly_mul([Fraction(0), Fraction(0), Fraction(1, 2), Fraction(0), Fraction(-1, 2)], _poly_deriv(uk))
        integrand = _poly_mul([Fraction(1), Fraction(0), Fraction(-5)], uk)
        second = [Fraction(0)] + [c / (8 * (i + 1)) for i, c in enumerate(integrand)]
        u.append(_poly_trim(_poly_add(first, second)))
    v = [[Fraction(1)]]
    for k in range(1, _DEBYE_TERMS + 1):
        inner = _poly_add([c / 2 for c in u[k - 1]], [Fraction(0)] + _poly_deriv(u[k - 1]))
        v.append(_poly_trim(_poly_add(u[k], _poly_mul([Fraction(0), Fraction(-1), Fraction(0), Fraction(1)], inner))))
    return u, v


@lru_cache(maxsize=64)
def _debye_coefficients(order: float, device: torch.device) -> Tensor:
    """``[3K+1, 2]`` float64: by power of p, the coefficients of Σ_k u_k(p)/ν^k and Σ_k v_k(p)/ν^k for ν = order.

    Cached per (order, device), so a training step copies nothing to the device.
    """
    u, v = _debye_polynomials()
    width = 3 * _DEBYE_TERMS + 1
    nu = Fraction(order)
    table = [[Fraction(0), Fraction(0)] for _ in range(width)]
    for k in range(_DEBYE_TERMS + 1):
        scale = nu ** -k
        for j, c in enumerate(u[k]):
            table[j][0] += c * scale
        for j, c in enumerate(v[k]):
            table[j][1] += c * scale
    return torch.tensor([[float(a), float(b)] for a, b in table], dtype=torch.float64, device=device)


def _debye(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """``(log I_ν(κ), I_ν'(κ)/I_ν(κ))`` for ν = order >= _DEBYE_MIN_ORDER, κ > 0 float64 (DLMF 10.41.3, 10.41.5).

    With z = κ/ν, p = 1/√(1+z²), η = √(1+z²) - asinh(1/z):
    ``I_ν(νz) ~ e^{νη} / √(2πν) · √p · Σ u_k(p)/ν^k`` and ``I_ν'(νz) ~ e^{νη} / √(2πν) / (z √p) · Σ v_k(p)/ν^k``,
    uniformly in z > 0; the log-derivative is then ``Σv / (p z Σu)``, free of the cancellation that the
    difference of two logs of size ~κ would bring.
    """
    z = kappa / order
    root = torch.hypot(torch.ones_like(z), z)  # √(1+z²) without overflow
    p = 1.0 / root
    # asinh(1/z) = log(1 + √(1+z²)) - log z; the second form avoids 1/z overflowing for tiny z
    asinh_inv = torch.where(z < 1.0, torch.log1p(root) - torch.log(z), torch.asinh(1.0 / z.clamp_min(1.0)))
    eta = root - asinh_inv
    powers = p.unsqueeze(-1) ** torch.arange(3 * _DEBYE_TERMS + 1, dtype=torch.float64, device=p.device)
    sums = powers @ _debye_coefficients(order, p.device)
    series_u, series_v = sums[..., 0], sums[..., 1]
    log_i = order * eta - 0.5 * math.log(2.0 * math.pi * order) + 0.5 * torch.log(p) + torch.log(series_u)
    return log_i, series_v / (p * z * series_u)


def _power_series(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """``(log I_v(κ), I_{v+1}(κ)/I_v(κ))`` from ``I_v(κ) = (κ/2)^v / Γ(v+1) · Σ_k (κ²/4)^k / (k! (v+1)_k)``.

    All terms are positive, so summing them loses nothing; the sum of the terms k >= 1 goes through log1p so
    that ``log I_0(κ) ≈ κ²/4`` keeps its relative accuracy as κ → 0.
    """
    quarter_sq = kappa * kappa / 4.0
    term_v = torch.ones_like(kappa)
    term_next = torch.ones_like(kappa)
    tail_v = torch.zeros_like(kappa)
    tail_next = torch.zeros_like(kappa)
    for k in range(1, _SERIES_TERMS + 1):
        term_v = term_v * quarter_sq / (k * (order + k))
        term_next = term_next * quarter_sq / (k * (order + 1.0 + k))
        tail_v = tail_v + term_v
        tail_next = tail_next + term_next
    log_i = order * torch.log(kappa / 2.0) - math.lgamma(order + 1.0) + torch.log1p(tail_v)
    ratio = kappa / (2.0 * (order + 1.0)) * (1.0 + tail_next) / (1.0 + tail_v)
    return log_i, ratio


def _recurrence(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """``(log I_v(κ), I_{v+1}(κ)/I_v(κ))`` for low orders: Debye at ν = v + m, then down by ``I_{j-1} = I_{j+1} +
    (2j/κ) I_j``.

    In ratio form ``I_{j-1}/I_j = I_{j+1}/I_j + 2j/κ``: downwards this contracts errors (I_v is the minimal
    solution upwards), each factor lies in [1, 1 + 2j/κ], and for κ >= _SERIES_MAX_KAPPA their product over
    < 21 steps stays far below float64 overflow, so one log at the end suffices.
    """
    steps = math.ceil(_DEBYE_MIN_ORDER - order)
    top = order + steps
    log_top, dlog_top = _debye(top, kappa)
    ratio = dlog_top - top / kappa  # I_{top+1}/I_top, from I_ν' = I_{ν+1} + (ν/κ) I_ν
    product = torch.ones_like(kappa)
    for i in range(steps):
        factor = ratio + 2.0 * (top - i) / kappa  # I_{j-1}/I_j with j = top - i
        product = product * factor
        ratio = 1.0 / factor
    return log_top + torch.log(product), ratio


def _log_iv_and_derivative(order: float, kappa: Tensor) -> tuple[Tensor, Tensor]:
    """float64 ``(log I_v(κ), d/dκ log I_v(κ))``, choosing the method per element."""
    if order >= _DEBYE_MIN_ORDER:
        return _debye(order, kappa)
    small = kappa <= _SERIES_MAX_KAPPA
    # each branch sees κ inside its own range, so the unused one cannot overflow
    log_s, ratio_s = _power_series(order, kappa.clamp_max(_SERIES_MAX_KAPPA))
    log_r, ratio_r = _recurrence(order, kappa.clamp_min(_SERIES_MAX_KAPPA))
    log_i = torch.where(small, log_s, log_r)
    ratio = torch.where(small, ratio_s, ratio_r)
    return log_i, ratio + order / kappa  # I_v'/I_v = I_{v+1}/I_v + v/κ


class _LogIv(torch.autograd.Function):
    """log I_v(κ) with the analytic derivative, so autograd never differentiates through series or loops."""

    @staticmethod
    def forward(ctx, kappa: Tensor, order: float) -> Tensor:  # type: ignore[override]
        log_i, dlog = _log_iv_and_derivative(order, kappa.detach().to(torch.float64))
        ctx.save_for_backward(dlog.to(kappa.dtype))
        return log_i.to(kappa.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (dlog,) = ctx.saved_tensors
        return grad * dlog, None


def log_iv(v: float, kappa: Tensor) -> Tensor:
    """``log I_v(κ)``, the log of the modified Bessel function of the first kind, elementwise, differentiable in κ.

    SCF needs it at order d/2 - 1 (255 for 512-d features) and κ up to ~1e5, where I_v overflows float64 and
    scipy's scaled ``ive`` underflows; working in logs throughout avoids both. Any order ``v >= 0`` and any
    finite ``κ > 0`` are supported. Against mpmath, for v in {0, 0.5, 1, 10, 255, 1000} over κ in [1e-3, 1e5]:
    relative error of the log below 1e-14 where |log I_v| >= 1, absolute error below 1e-14 where |log I_v| < 1
    (I_0 near κ = 0, or any order near I_v = 1, where a relative error of the log is meaningless), relative
    error of the derivative below 1e-14; the tests assert 1e-12.

    Methods, in float64 whatever κ's dtype: Debye's uniform asymptotic expansion (13 terms) for v >= 20; for
    lower orders the power series for κ <= 20 and, above, the Debye expansion at order v + m >= 20 followed by
    the backward recurrence down to v.

    The gradient is the analytic ``I_{v+1}(κ)/I_v(κ) + v/κ`` (computed alongside the value, not by finite
    differences); there is no gradient in v and no double backward. The result has κ's dtype and device.

    Raises ``ValueError`` for ``v < 0`` and for any κ that is not finite and > 0. (On an accelerator that
    check costs one host synchronisation per call.)
    """
    order = float(v)
    if not math.isfinite(order) or order < 0:
        raise ValueError(f"log_iv: order v must be a finite number >= 0, got {v!r}")
    if not torch.is_floating_point(kappa):
        raise ValueError(f"log_iv: kappa must be a floating-point tensor, got {kappa.dtype}")
    if not bool(torch.all(torch.isfinite(kappa) & (kappa > 0))):
        raise ValueError("log_iv: kappa must be finite and > 0 everywhere")
    return _LogIv.apply(kappa, order)


# --------------------------------------------------------------------------------------------------- SCF loss


def vmf_nll(mu: Tensor, kappa: Tensor, centres: Tensor, radius: float) -> Tensor:
    """SCF loss per sample ``[N]``: ``KL(Dirac at the class centre ‖ vMF_r(μ, κ))`` up to a constant.

    That is the negative log-likelihood of the centre under a vMF of mean direction μ and concentration κ on
    the sphere of radius r in d = ``mu.shape[1]`` dimensions (TFace's ``KLDiracVMF``)::

        L = -κ cos - (d/2 - 1) log κ + log I_{d/2-1}(κ) + (d/2) log 2π + d log r

    ``cos`` is the cosine between ``mu [N, d]`` and ``centres [N, d]``, both normalised here: TFace divided
    the dot product by r, which is right only if the centres have norm exactly r. A zero row gives cos = 0.
    ``d log r`` is TFace's constant (a density on the r-sphere would give (d - 1) log r); it shifts the loss,
    never its gradient. ``kappa`` is ``[N]`` or ``[N, 1]``, > 0. Minimising over κ gives
    ``I_{d/2}(κ)/I_{d/2-1}(κ) = cos``: the more a sample's embedding is off its centre, the smaller its κ.

    The terms -κ cos and log I_{d/2-1}(κ) are each of size ~κ and largely cancel, so the loss is computed in
    float64 and returned in the promoted dtype of ``mu`` and ``kappa``; gradients reach mu, kappa and centres.
    """
    if mu.dim() != 2 or centres.shape != mu.shape:
        raise ValueError(f"vmf_nll: mu and centres must be [N, d] of one shape, got {tuple(mu.shape)} "
                         f"and {tuple(centres.shape)}")
    n, d = mu.shape
    if d < 2:
        raise ValueError(f"vmf_nll: the feature dimension must be >= 2, got {d}")
    if kappa.numel() != n or kappa.dim() > 2 or (kappa.dim() == 2 and kappa.shape[1] != 1):
        raise ValueError(f"vmf_nll: kappa must be [N] or [N, 1] with N = {n}, got {tuple(kappa.shape)}")
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"vmf_nll: radius must be finite and > 0, got {radius!r}")
    out_dtype = torch.promote_types(mu.dtype, kappa.dtype)
    cos = (F.normalize(mu.to(torch.float64), dim=1) * F.normalize(centres.to(torch.float64), dim=1)).sum(1)
    k = kappa.reshape(n).to(torch.float64)
    order = d / 2.0 - 1.0
    constant = (d / 2.0) * math.log(2.0 * math.pi) + d * math.log(radius)
    loss = -k * cos - order * torch.log(k) + log_iv(order, k) + constant
    return loss.to(out_dtype)


# ---------------------------------------------------------------------------------------------- κ estimator


class UncertaintyHead(nn.Module):
    """Predicts log κ ``[N]`` from a backbone's last feature map ``[N, C, H, W]`` (TFace's UncertaintyNet_conv).

    Three 3×3 convolutions without padding or bias (C → C; ReLU after the first, BN + ReLU after the second, BN
    after the third), global average pooling, then an MLP C → 256 → 128 → 1: 7 → 5 → 3 → 1 for the usual 7×7
    map, larger maps are averaged. A map smaller than 7 on a side (a 64-px model's 4×4) is zero-padded by one pixel
    before each convolution, so its side stays as it is; the weights are the same either way.

    log κ is squashed smoothly into ``[log kappa_min, log kappa_max]`` by
    ``lo + softplus(x - lo) - softplus(x - hi)``: ≈ x inside (TFace's head returned ≈ x), the bound outside,
    derivative ``σ(x - lo) - σ(x - hi) > 0`` everywhere so no sample gets stuck at a bound; a final hard clamp
    only absorbs float rounding. The default [1, 1e5] covers what the loss asks for with d = 512: the optimum
    solves I_256(κ)/I_255(κ) = cos, i.e. κ ≈ 512·cos/(1 - cos²); κ = 1 is an essentially uniform
    vMF (cos ≈ 0.002), κ = 1e5 matches cos ≈ 0.9975, beyond training cosines; exp stays far from overflow,
    and :func:`log_iv` is accurate on all of it.
    """

    def __init__(self, in_channels: int, kappa_min: float = 1.0, kappa_max: float = 1e5) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"UncertaintyHead: in_channels must be >= 1, got {in_channels}")
        if not 0 < kappa_min < kappa_max < math.inf:
            raise ValueError(f"UncertaintyHead: need 0 < kappa_min < kappa_max < inf, got {kappa_min}, {kappa_max}")
        c = in_channels
        self.log_kappa_min = math.log(kappa_min)
        self.log_kappa_max = math.log(kappa_max)
        self.convs = nn.Sequential(
            nn.Conv2d(c, c, 3, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, bias=False),
            nn.BatchNorm2d(c),
            nn.AdaptiveAvgPool2d(1),
        )
        self.mlp = nn.Sequential(
            nn.Linear(c, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 1),
        )

    def forward(self, features: Tensor) -> Tensor:
        if features.dim() != 4 or features.shape[1] != self.convs[0].in_channels:
            raise ValueError(f"UncertaintyHead: expected [N, {self.convs[0].in_channels}, H, W], got "
                             f"{tuple(features.shape)}")
        x = features
        small = min(x.shape[2], x.shape[3]) < 7
        for layer in self.convs:
            if small and isinstance(layer, nn.Conv2d):
                x = F.pad(x, (1, 1, 1, 1))
            x = layer(x)
        return self.bound(self.mlp(x.flatten(1)).squeeze(1))

    def bound(self, raw: Tensor) -> Tensor:
        """The smooth clamp of raw outputs into ``[log kappa_min, log kappa_max]``."""
        lo, hi = self.log_kappa_min, self.log_kappa_max
        return (lo + F.softplus(raw - lo) - F.softplus(raw - hi)).clamp(lo, hi)

"""Photometric and image-quality augmenters: the common contract (a table over every registered one), values
against references written out here, and option validation."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from tface.augment import degrade, photometric
from tface.core import registry
from tface.core.config import ConfigError, check_options, structure

#: entry point name -> (class, options that make the op change the test image when applied, draws randomly)
TABLE = {
    "color_jitter": (photometric.ColorJitter, {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2},
                     True),
    "grayscale": (photometric.Grayscale, {}, False),
    "autocontrast": (photometric.AutoContrast, {"cutoff": (0.0, 10.0)}, True),
    "equalize": (photometric.Equalize, {}, False),
    "posterize": (photometric.Posterize, {"bits": (1, 7)}, True),
    "solarize": (photometric.Solarize, {"threshold": (50, 200)}, True),
    "sharpness": (photometric.Sharpness, {"factor": (0.0, 0.5)}, True),
    "blur": (degrade.GaussianBlur, {"sigma": (0.5, 3.0)}, True),
    "motion_blur": (degrade.MotionBlur, {"length": (3, 9)}, True),
    "jpeg": (degrade.JpegCompression, {"quality": (5, 60)}, True),
    "lowres": (degrade.LowResolution, {"factor": (2.0, 4.0)}, True),
    "noise": (degrade.GaussianNoise, {"sigma": (5.0, 20.0)}, True),
    "random_erasing": (degrade.RandomErasing, {"scale": (0.1, 0.3)}, True),
}
MODULES = {"tface.augment.photometric", "tface.augment.degrade"}


def image(h: int = 24, w: int = 31, seed: int = 7) -> torch.Tensor:
    """A smooth colour gradient with mild noise: every op changes it visibly."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    base = torch.stack([60 + 120 * x + 0 * y, 40 + 150 * y + 0 * x, 90 + 60 * (x * y)])
    return (base + 10 * torch.rand(3, h, w, generator=g)).round().clamp(0, 255).to(torch.uint8)


def run(op, img, seed):
    torch.manual_seed(seed)
    return op(img)


# --- the table: every registered photometric augmenter --------------------------------------------------


def test_every_registered_photometric_op_is_in_the_table():
    ours = {e.name: e for e in registry.entries("augmenters")
            if e.distribution == "tface-augment" and e.target.partition(":")[0] in MODULES}
    assert set(ours) == set(TABLE)
    for name, (cls, _, _) in TABLE.items():
        assert registry.get("augmenters", name) is cls


@pytest.mark.parametrize("name", TABLE)
def test_contract(name):
    cls, kwargs, _ = TABLE[name]
    assert check_options(cls, kind="augmenters") == []
    op = cls(p=1.0, **kwargs)
    assert repr(op).startswith(f"{cls.__name__}(p=1.0")
    for shape in [(3, 24, 31), (3, 1, 1), (3, 2, 5), (3, 7, 1), (3, 112, 112)]:
        img = image(*shape[1:])
        for src in (img, img.transpose(1, 2).contiguous().transpose(1, 2)):  # also a non-contiguous input
            out = run(op, src, 0)
            assert out.dtype == torch.uint8 and out.shape == src.shape and out.is_contiguous(), (name, shape)
            assert torch.equal(src, img)  # the input is never modified


@pytest.mark.parametrize("name", TABLE)
def test_p0_is_the_identity_and_p1_applies(name):
    cls, kwargs, _ = TABLE[name]
    img = image()
    assert cls(p=0.0, **kwargs)(img) is img
    assert not torch.equal(run(cls(p=1.0, **kwargs), img, 0), img)


@pytest.mark.parametrize("name", TABLE)
def test_deterministic_under_a_seed(name):
    cls, kwargs, random = TABLE[name]
    op, img = cls(p=1.0, **kwargs), image()
    first = run(op, img, 0)
    assert torch.equal(run(op, img, 0), first)
    if random:
        assert any(not torch.equal(run(op, img, s), first) for s in range(1, 6))


def test_probability_is_respected():
    op, img = photometric.Solarize(p=0.3, threshold=(0, 0)), image()
    torch.manual_seed(0)
    applied = sum(int(not torch.equal(op(img), img)) for _ in range(2000))
    assert 600 - 5 * 20.5 < applied < 600 + 5 * 20.5  # binomial(2000, 0.3): sd ≈ 20.5


# --- values against references written out here ---------------------------------------------------------


def test_grayscale_is_bt601_luma():
    img = torch.randint(0, 256, (3, 9, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    out = photometric.Grayscale(p=1.0)(img)
    for i in range(9):
        for j in range(13):
            r, g, b = (int(v) for v in img[:, i, j])
            luma = Fraction(299, 1000) * r + Fraction(587, 1000) * g + Fraction(114, 1000) * b
            assert out[:, i, j].tolist() == [math.floor(luma + Fraction(1, 2))] * 3


def test_color_jitter_brightness_contrast_saturation_hue():
    flat = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    for seed in range(5):
        out = run(photometric.ColorJitter(p=1.0, brightness=0.5, contrast=0, saturation=0, hue=0), flat, seed)
        v = out.unique()
        assert len(v) == 1 and 50 <= int(v) <= 150  # factor in [0.5, 1.5]
    grey = image()[:1].expand(3, -1, -1).contiguous()  # no colour: saturation and hue have nothing to change
    out = run(photometric.ColorJitter(p=1.0, brightness=0, contrast=0, saturation=0.9, hue=0.5), grey, 3)
    # torchvision's saturation blends with its own grey (weights summing to 0.9999, truncated): at most 1 level off
    assert (out.int() - grey.int()).abs().max() <= 1 and torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])
    out = run(photometric.ColorJitter(p=1.0, brightness=0, contrast=0.9, saturation=0, hue=0), flat, 3)
    assert (out.int() - 100).abs().max() <= 1  # a constant image has no contrast to change (same rounding)


def test_autocontrast():
    img = image()
    out = photometric.AutoContrast(p=1.0)(img).float()
    x = img.float()
    lo, hi = x.amin(dim=(1, 2), keepdim=True), x.amax(dim=(1, 2), keepdim=True)
    assert (out - (x - lo) * 255 / (hi - lo)).abs().max() <= 1
    # cutoff: 5% outliers at either end are clipped away, the bulk stretched to [0, 255]
    bulk = torch.randint(100, 151, (3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    bulk[:, 0, :8], bulk[:, 1, :8] = 0, 255  # 2% each
    out = photometric.AutoContrast(p=1.0, cutoff=(5.0, 5.0))(bulk).float()
    flat = bulk.reshape(3, -1).float().sort(dim=1).values
    lo, hi = flat[:, 20, None, None], flat[:, -21, None, None]  # 5% of 400 = 20 values in from each end
    ref = ((bulk.float().clamp(lo, hi) - lo) * 255 / (hi - lo))
    assert (out - ref).abs().max() <= 1


def test_equalize_spreads_a_narrow_histogram_monotonically():
    img = torch.randint(100, 111, (3, 30, 30), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    out = photometric.Equalize(p=1.0)(img)
    for c in range(3):
        x, y = img[c].flatten().float(), out[c].flatten().float()
        order = x.argsort()
        assert (y[order].diff() >= 0).all()  # brighter stays brighter
        assert int(out[c].max()) == 255 and int(out[c].max()) - int(out[c].min()) > 200


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_posterize_keeps_the_top_bits(bits):
    img = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, -1, -1).contiguous()
    out = photometric.Posterize(p=1.0, bits=(bits, bits))(img)
    ref = [(v >> (8 - bits)) << (8 - bits) for v in range(256)]
    assert out[0].flatten().tolist() == ref and torch.equal(out[1], out[0])


@pytest.mark.parametrize("threshold", [0, 77, 128, 255])
def test_solarize_inverts_from_the_threshold(threshold):
    img = torch.arange(256, dtype=torch.uint8).view(1, 16, 16).expand(3, -1, -1).contiguous()
    out = photometric.Solarize(p=1.0, threshold=(threshold, threshold))(img)
    assert out[2].flatten().tolist() == [255 - v if v >= threshold else v for v in range(256)]


def test_sharpness():
    img = image()
    assert torch.equal(photometric.Sharpness(p=1.0, factor=(1.0, 1.0))(img), img)
    flat = torch.full((3, 9, 9), 77, dtype=torch.uint8)
    assert torch.equal(photometric.Sharpness(p=1.0, factor=(0.0, 5.0))(flat), flat)
    edge = torch.zeros(3, 9, 9, dtype=torch.uint8)
    edge[:, :, 5:] = 200
    blurred = photometric.Sharpness(p=1.0, factor=(0.0, 0.0))(edge)
    assert 0 < int(blurred[0, 4, 4]) < 200 and 0 < int(blurred[0, 4, 5]) < 200


def test_blur_of_a_constant_is_constant_and_of_a_delta_is_the_kernel():
    flat = torch.full((3, 20, 17), 123, dtype=torch.uint8)
    assert torch.equal(degrade.GaussianBlur(p=1.0, sigma=(0.3, 5.0))(flat), flat)
    sigma, n = 2.0, 41
    delta = torch.zeros(3, n, n, dtype=torch.uint8)
    delta[:, n // 2, n // 2] = 255
    out = degrade.GaussianBlur(p=1.0, sigma=(sigma, sigma))(delta).double()
    r = math.ceil(3 * sigma)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g1 = torch.exp(-t**2 / (2 * sigma**2))
    ref = torch.zeros(n, n, dtype=torch.float64)
    ref[n // 2 - r:n // 2 + r + 1, n // 2 - r:n // 2 + r + 1] = 255 * torch.outer(g1, g1) / g1.sum() ** 2
    assert (out - ref).abs().max() <= 1
    assert abs(float(out[0].sum()) - 255) < 0.5 * (2 * r + 1) ** 2
    assert torch.equal(degrade.GaussianBlur(p=1.0, sigma=(0.0, 0.0))(delta), delta)


def test_motion_blur_is_a_line():
    flat = torch.full((3, 15, 12), 99, dtype=torch.uint8)
    assert torch.equal(degrade.MotionBlur(p=1.0, length=(3, 15))(flat), flat)
    delta = torch.zeros(3, 21, 21, dtype=torch.uint8)
    delta[:, 10, 10] = 255
    horizontal = degrade.MotionBlur(p=1.0, length=(5, 5), angle=(0.0, 0.0))(delta)
    ref = torch.zeros(21, 21, dtype=torch.uint8)
    ref[10, 8:13] = 51  # 255 / 5
    assert torch.equal(horizontal[0], ref)
    vertical = degrade.MotionBlur(p=1.0, length=(5, 5), angle=(90.0, 90.0))(delta)
    assert torch.equal(vertical[1], ref.T)
    diagonal = degrade.MotionBlur(p=1.0, length=(7, 7), angle=(45.0, 45.0))(delta)[0]
    ys, xs = diagonal.nonzero(as_tuple=True)
    assert ((ys - 10) == -(xs - 10)).all() and len(ys) >= 5  # up and to the right: rows grow downwards
    assert abs(int(diagonal.sum()) - 255) <= len(ys)
    assert torch.equal(degrade.MotionBlur(p=1.0, length=(1, 1))(delta), delta)


def test_jpeg_equals_encode_decode_at_the_drawn_quality():
    img = image(40, 37)

    def reference(q):
        return decode_jpeg(encode_jpeg(img, quality=q), mode=ImageReadMode.RGB)

    assert torch.equal(degrade.JpegCompression(p=1.0, quality=(23, 23))(img), reference(23))
    candidates = [reference(q) for q in (40, 41, 42)]
    seen = set()
    for seed in range(12):
        out = run(degrade.JpegCompression(p=1.0, quality=(40, 42)), img, seed)
        hits = [i for i, c in enumerate(candidates) if torch.equal(out, c)]
        assert hits
        seen.update(hits)
    assert len(seen) >= 2


@pytest.mark.parametrize("down", ["area", "bilinear", "nearest"])
@pytest.mark.parametrize("up", ["bilinear", "bicubic", "nearest"])
def test_lowres_of_a_constant_is_constant(down, up):
    flat = torch.full((3, 37, 29), 201, dtype=torch.uint8)
    assert torch.equal(degrade.LowResolution(p=1.0, factor=(1.5, 8.0), down=down, up=up)(flat), flat)


def test_lowres_averages_away_fine_detail():
    img = image()
    assert torch.equal(degrade.LowResolution(p=1.0, factor=(1.0, 1.0))(img), img)
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 255).to(torch.uint8).expand(3, -1, -1)
    out = degrade.LowResolution(p=1.0, factor=(2.0, 2.0), down="area")(checker.contiguous())
    assert out.min() >= 126 and out.max() <= 129  # every 2×2 block averages to 127.5


def test_noise_statistics():
    flat = torch.full((3, 200, 200), 128, dtype=torch.uint8)
    torch.manual_seed(0)
    diff = degrade.GaussianNoise(p=1.0, sigma=(8.0, 8.0))(flat).double() - 128
    assert abs(float(diff.mean())) < 0.1
    assert abs(float(diff.std()) - math.sqrt(64 + 1 / 12)) < 0.1  # plus the rounding's variance
    assert torch.equal(degrade.GaussianNoise(p=1.0, sigma=(0.0, 0.0))(flat), flat)
    assert int(degrade.GaussianNoise(p=1.0, sigma=(100.0, 100.0))(flat).max()) == 255  # clamped, not wrapped


@pytest.mark.parametrize("ratio", [(0.3, 3.3), (1.0, 1.0)])
def test_random_erasing_fills_one_rectangle(ratio):
    h, w, scale = 40, 50, (0.05, 0.3)
    flat = torch.full((3, h, w), 100, dtype=torch.uint8)
    op = degrade.RandomErasing(p=1.0, scale=scale, ratio=ratio, fill="constant", value=0)
    for seed in range(20):
        out = run(op, flat, seed)
        changed = (out != flat).any(0)
        ys, xs = changed.nonzero(as_tuple=True)
        top, bottom, left, right = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        eh, ew = bottom - top + 1, right - left + 1
        assert int(changed.sum()) == eh * ew  # exactly one filled rectangle
        assert (out[:, top:bottom + 1, left:right + 1] == 0).all()
        assert scale[0] <= eh * ew / (h * w) <= scale[1]
        if ratio == (1.0, 1.0):
            assert eh == ew  # TFace's Cutout: a square
    noisy = run(degrade.RandomErasing(p=1.0, scale=(0.2, 0.2), ratio=(1.0, 1.0)), flat, 0)
    assert len(noisy[noisy != 100].unique()) > 100  # random fill


def test_random_erasing_that_cannot_fit_leaves_the_image():
    flat = torch.full((3, 2, 2), 100, dtype=torch.uint8)
    op = degrade.RandomErasing(p=1.0, scale=(0.3, 0.4), fill="constant", value=0)  # 1, 2 or 4 px: none fits
    assert torch.equal(run(op, flat, 0), flat)


# --- options -----------------------------------------------------------------------------------------------

BAD = [
    ("color_jitter", "p", 1.5), ("color_jitter", "brightness", -0.1), ("color_jitter", "hue", 0.6),
    ("grayscale", "p", -1), ("autocontrast", "cutoff", [10, 5]), ("autocontrast", "cutoff", [0, 50]),
    ("equalize", "p", "often"), ("posterize", "bits", [0, 4]), ("posterize", "bits", [4, 9]),
    ("posterize", "bits", [4.5, 6]), ("solarize", "threshold", [100, 300]), ("sharpness", "factor", [2, 1]),
    ("blur", "sigma", [3, 1]), ("blur", "sigma", [1]), ("blur", "sigma", [1, 2, 3]), ("blur", "sigma", 2),
    ("motion_blur", "length", [0, 5]), ("motion_blur", "angle", [0, 400]), ("jpeg", "quality", [0, 50]),
    ("jpeg", "quality", [50, 101]), ("lowres", "factor", [0.5, 2]), ("lowres", "down", "cubic"),
    ("lowres", "up", "area"), ("noise", "sigma", [-1, 2]), ("random_erasing", "scale", [0.5, 1.5]),
    ("random_erasing", "ratio", [0, 1]), ("random_erasing", "fill", "blue"), ("random_erasing", "value", 256),
]


@pytest.mark.parametrize(("name", "key", "value"), BAD, ids=[f"{n}.{k}={v}" for n, k, v in BAD])
def test_bad_values_are_refused_naming_the_key(name, key, value):
    cls = TABLE[name][0]
    with pytest.raises(ConfigError, match=rf"^augment\.{key}(\[\d\])?: "):
        structure(cls.Config, {key: value}, "augment")
    with pytest.raises(ConfigError, match=rf"^augmenter\.{key}(\[\d\])?: "):
        registry.create("augmenters", name, **{key: value})


def test_recipe_values_are_converted_and_python_calls_are_checked_too():
    opts = structure(degrade.GaussianBlur.Config, {"p": 1, "sigma": [1, 2]})
    assert opts.p == 1.0 and opts.sigma == (1.0, 2.0)
    op = registry.create("augmenters", "jpeg", quality=[50, 50])
    assert op.quality == (50, 50) and repr(op) == "JpegCompression(p=0.5, quality=(50, 50))"
    with pytest.raises(ValueError, match="sigma must be"):
        degrade.GaussianBlur(sigma=(3.0, 1.0))
    with pytest.raises(ConfigError, match=r"augment.sigma: sigma must be \[a, b\] with 0 <= a <= b <= 50"):
        structure(degrade.GaussianBlur.Config, {"sigma": [3, 1]}, "augment")

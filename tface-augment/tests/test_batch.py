"""Batch forms (``on = "device"``): every op that has one, against per-image references written out here."""

from __future__ import annotations

import math

import pytest
import torch

from tface.augment import degrade, geometric, photometric
from tface.core import registry
from tface.core.config import ConfigError, structure
from tface.core.data.sample import FaceSample

#: entry point name -> (class, options that make the op change every image)
BATCHED = {
    "hflip": (geometric.HFlip, {}),
    "rotate": (geometric.Rotate, {"degrees": (10.0, 40.0)}),
    "shift": (geometric.Shift, {"fraction": 0.2}),
    "random_resized_crop": (geometric.RandomResizedCrop, {"scale": (0.3, 0.6)}),
    "color_jitter": (photometric.ColorJitter, {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2}),
    "grayscale": (photometric.Grayscale, {}),
    "posterize": (photometric.Posterize, {"bits": (1, 4)}),
    "solarize": (photometric.Solarize, {"threshold": (20, 60)}),
    "blur": (degrade.GaussianBlur, {"sigma": (1.0, 3.0)}),
    "noise": (degrade.GaussianNoise, {"sigma": (5.0, 20.0)}),
    "random_erasing": (degrade.RandomErasing, {"scale": (0.1, 0.3)}),
}


def batch(n: int = 6, h: int = 24, w: int = 31, seed: int = 7) -> torch.Tensor:
    """``n`` different images: colour gradients with mild noise, each with its own brightness and tint."""
    g = torch.Generator().manual_seed(seed)
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None, :]
    out = []
    for i in range(n):
        base = torch.stack([40 + 120 * x + 0 * y, 30 + 150 * y + 0 * x, 70 + 60 * (x * y)]) * (0.6 + 0.1 * (i % 6))
        out.append(base + 10 * torch.rand(3, h, w, generator=g))
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_the_table_holds_every_registered_op_with_a_batch_form():
    with_batch = {e.name for e in registry.entries("augmenters")
                  if e.distribution == "tface-augment" and e.name != "flip"
                  and callable(getattr(registry.get("augmenters", e.name), "batch", None))}
    assert with_batch == set(BATCHED)


@pytest.mark.parametrize("name", BATCHED)
def test_batch_contract(name):
    cls, kwargs = BATCHED[name]
    op = cls(p=1.0, on="device", **kwargs)
    assert op.on == "device" and "on='device'" in repr(op)
    assert registry.create("augmenters", name, on="device", **kwargs).on == "device"
    images = batch()
    for src in (images, images.transpose(2, 3).contiguous().transpose(2, 3)):  # also non-contiguous
        kept = src.clone()
        out = op.batch(src, gen())
        assert out.dtype == torch.uint8 and out.shape == src.shape
        assert torch.equal(src, kept)  # the input is never modified
        assert all(not torch.equal(out[i], src[i]) for i in range(len(src))), name  # p = 1: every image changes
    assert torch.equal(op.batch(images, gen(3)), op.batch(images, gen(3)))  # the generator alone decides
    assert not torch.equal(op.batch(images, gen(3)), op.batch(images, gen(4))) or name in ("hflip", "grayscale")


@pytest.mark.parametrize("name", BATCHED)
def test_batch_probability_leaves_the_others_alone(name):
    cls, kwargs = BATCHED[name]
    images = batch(400, 8, 9)
    assert torch.equal(cls(p=0.0, on="device", **kwargs).batch(images, gen()), images)
    out = cls(p=0.3, on="device", **kwargs).batch(images, gen())
    changed = (out != images).flatten(1).any(1)
    assert 120 - 5 * 9.2 < int(changed.sum()) < 120 + 5 * 9.2  # binomial(400, 0.3): sd ≈ 9.2


def test_bad_placement_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"^augment\.on: "):
        structure(photometric.ColorJitter.Config, {"on": "gpu"}, "augment")
    assert "on" not in {a.name for a in __import__("attrs").fields(degrade.JpegCompression.Config)}


# --- per sample: each image gets its own values, by the op's per-image formula ------------------------------


def each(op, images, fn):
    """``fn(image)`` of every image, stacked (the per-image reference)."""
    return torch.stack([fn(img) for img in images])


@pytest.mark.parametrize(("cls", "kwargs"), [
    (photometric.Grayscale, {}), (photometric.Posterize, {"bits": (3, 3)}),
    (photometric.Solarize, {"threshold": (90, 90)}), (degrade.GaussianBlur, {"sigma": (1.7, 1.7)}),
    (geometric.Rotate, {"degrees": (25.0, 25.0), "fill": 30}),
])
def test_fixed_values_give_the_per_image_result(cls, kwargs):
    op, images = cls(p=1.0, on="device", **kwargs), batch()
    if getattr(op, "takes_sample", False):
        want = each(op, images, lambda img: op(FaceSample.aligned(img)).image)
    else:
        want = each(op, images, op)
    assert torch.equal(op.batch(images, gen()), want)


def test_blur_sigma_differs_per_image_and_matches_its_own_kernel():
    """A delta in every image: each output is the 2-D Gaussian of some sigma in the range, not one sigma for all."""
    n, size = 8, 41
    delta = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    delta[:, :, size // 2, size // 2] = 255
    out = degrade.GaussianBlur(p=1.0, sigma=(0.8, 3.0), on="device").batch(delta, gen()).double()
    t = torch.arange(size, dtype=torch.float64) - size // 2

    def gaussian(sigma: float) -> torch.Tensor:  # the 2-D kernel of side 2·ceil(3σ) + 1, times 255
        g1 = torch.exp(-t**2 / (2 * sigma**2)) * (t.abs() <= math.ceil(3 * sigma))
        return 255 * torch.outer(g1, g1) / g1.sum() ** 2

    sigmas = []
    for img in out:
        # the sigma on a fine grid whose kernel fits best; the image must match it to rounding
        grid = torch.arange(0.8, 3.0005, 0.005).tolist()
        err, sigma = min((float((img[0] - gaussian(s)).abs().max()), s) for s in grid)
        assert err <= 1.0, (err, sigma)
        sigmas.append(sigma)
    assert min(sigmas) > 0.7 and max(sigmas) < 3.1 and max(sigmas) - min(sigmas) > 0.5


def test_color_jitter_contrast_blends_each_image_with_its_own_mean_grey():
    images = batch(8)
    out = photometric.ColorJitter(p=1.0, brightness=0, contrast=0.8, saturation=0, on="device").batch(images, gen())
    factors = []
    for x, y in zip(images.double(), out.double()):
        grey = (0.2989 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
        # y = f x + (1 - f) grey: f from the spread around the image's own mean grey
        f = float(((y - grey) * (x - grey)).sum() / ((x - grey) ** 2).sum())
        assert (y - (f * x + (1 - f) * grey).clamp(0, 255)).abs().max() <= 1.0
        factors.append(f)
    assert min(factors) >= 0.2 - 0.01 and max(factors) <= 1.8 + 0.01 and max(factors) - min(factors) > 0.2


def test_noise_sigma_is_drawn_per_image():
    flat = torch.full((6, 3, 60, 60), 128, dtype=torch.uint8)
    out = degrade.GaussianNoise(p=1.0, sigma=(2.0, 20.0), on="device").batch(flat, gen()).double() - 128
    stds = out.flatten(1).std(1)
    assert float(stds.min()) > 1.9 and float(stds.max()) < 20.5 and float(stds.max() - stds.min()) > 3


def test_random_erasing_fills_one_rectangle_per_image():
    h, w, scale = 40, 50, (0.05, 0.3)
    flat = torch.full((30, 3, h, w), 100, dtype=torch.uint8)
    out = degrade.RandomErasing(p=1.0, scale=scale, fill="constant", value=0, on="device").batch(flat, gen())
    boxes = set()
    for img in out:
        changed = (img != 100).any(0)
        ys, xs = changed.nonzero(as_tuple=True)
        top, bottom, left, right = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        assert int(changed.sum()) == (bottom - top + 1) * (right - left + 1)
        assert scale[0] <= (bottom - top + 1) * (right - left + 1) / (h * w) <= scale[1]
        boxes.add((top, left, bottom, right))
    assert len(boxes) > 20


def test_hflip_mirrors_the_chosen_images():
    images = batch(50)
    out = geometric.HFlip(p=0.5, on="device").batch(images, gen())
    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, images)]
    kept = [torch.equal(o, i) for o, i in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept)) and 10 < sum(flipped) < 40


def test_rotation_angle_is_drawn_per_image():
    """Each image turned by its own angle: recover it from where a bright dot lands."""
    n, size = 10, 41
    img = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    img[:, :, size // 2, size // 2 + 12] = 255  # 12 px right of the centre
    out = geometric.Rotate(p=1.0, degrees=(-40.0, 40.0), on="device").batch(img, gen()).double()[:, 0]
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angles = []
    for o in out:
        cx, cy = float((o * xs).sum() / o.sum()) - size // 2, float((o * ys).sum() / o.sum()) - size // 2
        assert abs(math.hypot(cx, cy) - 12) < 0.5
        angles.append(math.degrees(math.atan2(-cy, cx)))  # counter-clockwise on screen: y up
    assert all(-40.5 < a < 40.5 for a in angles) and max(angles) - min(angles) > 20

"""Occluders land where the landmarks say: checked on their coverage maps, at two sizes and after a rotation."""

from __future__ import annotations

import math

import pytest
import torch

from tface.augment.geometric import Rotate
from tface.augment.occlude import Frame, Glasses, Headscarf, Mask, polygon_sd
from tface.core.config import ConfigError, check_options, structure
from tface.core.data.sample import FaceSample

SEEDS = range(16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """As in a data worker: small tensors run much faster on one thread than on several."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def template(size: int, degrees: float = 0.0) -> FaceSample:
    """A random image with the ArcFace template's landmarks, turned by ``degrees`` about the centre."""
    gen = torch.Generator().manual_seed(size)
    sample = FaceSample.aligned(torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen))
    if degrees:
        a = math.radians(degrees)
        c = torch.tensor([(size - 1) / 2, (size - 1) / 2])
        turn = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        sample = FaceSample(sample.image, (sample.landmarks - c) @ turn.T + c)
    return sample


def at(alpha: torch.Tensor, point: torch.Tensor) -> float:
    x, y = (int(round(float(v))) for v in point)
    return float(alpha[y, x])


def forehead(lm: torch.Tensor) -> torch.Tensor:
    """Eye centre minus 0.8 eye distances along the face's up direction."""
    eye, ex = (lm[0] + lm[1]) / 2, lm[1] - lm[0]
    up = torch.stack([ex[1], -ex[0]]) / ex.norm()
    if float(up @ ((lm[3] + lm[4]) / 2 - eye)) > 0:
        up = -up
    return eye + 0.8 * ex.norm() * up


CASES = [(112, 0.0), (64, 0.0), (112, 20.0), (64, -20.0)]


@pytest.mark.parametrize("size,degrees", CASES)
@pytest.mark.parametrize("style", ["surgical", "cloth"])
def test_mask_covers_nose_and_mouth_not_eyes(size, degrees, style):
    sample, op = template(size, degrees), Mask(p=1.0, styles=[style])
    lm = sample.landmarks
    for seed in SEEDS:
        torch.manual_seed(seed)
        a = op.alpha(sample, op.draw())
        assert a.shape == (size, size) and float(a.min()) >= 0 and float(a.max()) <= 1
        for i in (2, 3, 4):
            assert at(a, lm[i]) > 0.9, (seed, i)
        for i in (0, 1):
            assert at(a, lm[i]) < 0.05, (seed, i)


@pytest.mark.parametrize("size,degrees", CASES)
@pytest.mark.parametrize("style", ["regular", "sunglasses"])
def test_glasses_cover_the_eyes_not_the_mouth(size, degrees, style):
    sample, op = template(size, degrees), Glasses(p=1.0, styles=[style])
    lm = sample.landmarks
    frame = Frame.of(sample)
    for seed in SEEDS:
        torch.manual_seed(seed)
        params = op.draw()
        a = op.alpha(sample, params)
        lens = torch.minimum(*[polygon_sd(frame, poly) for poly in op.lenses(params)])
        for i in (0, 1):
            assert at(lens, lm[i]) < 0, (seed, i)  # the eye centre lies inside a lens
            assert at(a, lm[i]) > (0.8 if style == "sunglasses" else 0.04), (seed, i)
        for i in (3, 4):
            assert at(a, lm[i]) < 0.05, (seed, i)


@pytest.mark.parametrize("size,degrees", CASES)
@pytest.mark.parametrize("style", ["headscarf", "headband"])
def test_headscarf_covers_the_forehead_not_the_eyes_or_nose(size, degrees, style):
    sample, op = template(size, degrees), Headscarf(p=1.0, styles=[style])
    lm = sample.landmarks
    for seed in SEEDS:
        torch.manual_seed(seed)
        a = op.alpha(sample, op.draw())
        assert at(a, forehead(lm)) > 0.9, seed
        for i in (0, 1, 2):
            assert at(a, lm[i]) < 0.05, (seed, i)


@pytest.mark.parametrize("op", [
    Mask(p=1.0, size=[0.75, 0.75], shift=0.08), Mask(p=1.0, size=[1.3, 1.3], shift=0.08),
    Glasses(p=1.0, size=[0.8, 0.8], shift=0.05, shade=[0.85, 0.85], styles=["sunglasses"]),
    Glasses(p=1.0, size=[1.15, 1.15], shift=0.05, shade=[0.85, 0.85], styles=["sunglasses"]),
    Headscarf(p=1.0, size=[0.85, 0.85]), Headscarf(p=1.0, size=[1.3, 1.3]),
])
def test_the_extremes_of_the_options_still_place_right(op):
    sample = template(64, 15.0)
    lm = sample.landmarks
    for seed in range(12):
        torch.manual_seed(seed)
        a = op.alpha(sample, op.draw())
        if isinstance(op, Mask):
            assert min(at(a, lm[i]) for i in (2, 3, 4)) > 0.9 and max(at(a, lm[i]) for i in (0, 1)) < 0.05
        elif isinstance(op, Glasses):
            assert min(at(a, lm[i]) for i in (0, 1)) > 0.8 and max(at(a, lm[i]) for i in (3, 4)) < 0.05
        else:
            assert at(a, forehead(lm)) > 0.9 and max(at(a, lm[i]) for i in (0, 1, 2)) < 0.05


@pytest.mark.parametrize("op", [Mask(p=1.0), Glasses(p=1.0), Headscarf(p=1.0)])
def test_output_is_the_blend_of_alpha_and_layer(op):
    sample = template(112)
    torch.manual_seed(5)
    params = op.draw()
    a, layer = op.render(sample, params)
    assert layer.shape == (3, 112, 112) and float(layer.min()) >= 0 and float(layer.max()) <= 255
    assert torch.equal(a, op.alpha(sample, params))
    torch.manual_seed(5)
    out = op(sample)
    assert out.image.dtype == torch.uint8 and out.image.shape == (3, 112, 112) and out.image.is_contiguous()
    want = (sample.image.float() * (1 - a) + layer * a).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(out.image, want)
    assert torch.equal(out.landmarks, sample.landmarks)
    assert torch.equal(out.image[:, a == 0], sample.image[:, a == 0])  # untouched where it does not reach


def test_far_pixels_are_unchanged():
    sample = template(112)
    for seed in range(10):
        torch.manual_seed(seed)
        out = Glasses(p=1.0)(sample).image
        for rows in (slice(0, 12), slice(100, 112)):
            for cols in (slice(0, 12), slice(100, 112)):
                assert torch.equal(out[:, rows, cols], sample.image[:, rows, cols])  # the image corners
        assert torch.equal(out[:, :25], sample.image[:, :25]) and torch.equal(out[:, 75:], sample.image[:, 75:])
        out = Mask(p=1.0)(sample).image
        assert torch.equal(out[:, :40], sample.image[:, :40])  # above the eyes
        out = Headscarf(p=1.0, styles=["headband"])(sample).image
        assert torch.equal(out[:, 60:], sample.image[:, 60:])  # below the eyes


@pytest.mark.parametrize("cls", [Mask, Glasses, Headscarf])
def test_probability_zero_is_the_identity_and_a_seed_repeats(cls):
    sample = template(64)
    assert cls(p=0.0)(sample) is sample
    op = cls(p=0.6)
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        runs.append([op(sample).image for _ in range(12)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert any(not torch.equal(a, sample.image) for a in runs[0])
    assert any(torch.equal(a, sample.image) for a in runs[0])  # p < 1: some images pass untouched
    torch.manual_seed(4)
    assert any(not torch.equal(a, b) for a, b in zip(runs[0], [op(sample).image for _ in range(12)]))


def test_a_bare_image_gets_the_template():
    img = template(112).image
    torch.manual_seed(0)
    out = Mask(p=1.0)(img)
    torch.manual_seed(0)
    assert isinstance(out, torch.Tensor) and torch.equal(out, Mask(p=1.0)(FaceSample.aligned(img)).image)


def test_it_follows_a_rotation_placed_before_it():
    sample = template(112)
    torch.manual_seed(1)
    turned = Rotate(p=1.0, degrees=[30, 30])(sample)
    op = Mask(p=1.0)
    a = op.alpha(turned, op.draw())
    assert min(at(a, turned.landmarks[i]) for i in (2, 3, 4)) > 0.9
    assert max(at(a, turned.landmarks[i]) for i in (0, 1)) < 0.05


def test_degenerate_landmarks_leave_the_image_alone():
    sample = template(64)
    flat = FaceSample(sample.image, torch.tensor([[10.0, 10.0], [20.0, 10.0], [30.0, 10.0], [40.0, 10.0],
                                                 [50.0, 10.0]]))
    nan = FaceSample(sample.image, torch.full((5, 2), float("nan")))
    for s in (flat, nan):
        assert torch.equal(Glasses(p=1.0)(s).image, sample.image)


@pytest.mark.parametrize("cls,table,key", [
    (Mask, {"size": [1.2, 0.9]}, "augment.size"),
    (Mask, {"styles": ["paper"]}, r"augment.styles\[0\]"),
    (Mask, {"styles": []}, "augment.styles"),
    (Mask, {"shift": 0.5}, "augment.shift"),
    (Mask, {"ear_loops": 2}, "augment.ear_loops"),
    (Glasses, {"shade": [0.1, 0.9]}, "augment.shade"),
    (Glasses, {"tint": [0.3]}, "augment.tint"),
    (Glasses, {"styles": ["monocle"]}, r"augment.styles\[0\]"),
    (Headscarf, {"opacity": [0.5, 1.5]}, "augment.opacity"),
    (Headscarf, {"p": -0.1}, "augment.p"),
])
def test_bad_options_are_refused_naming_the_key(cls, table, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        structure(cls.Config, table, "augment")


@pytest.mark.parametrize("cls", [Mask, Glasses, Headscarf])
def test_options_are_declared_right(cls):
    assert check_options(cls, kind="augmenters") == []
    with pytest.raises(ValueError):
        cls(size=[2.0, 1.0])

"""Geometric ops move the landmarks exactly as they move the pixels (checked with dots drawn at the landmarks)."""

from __future__ import annotations

import math

import pytest
import torch

from tface.augment.geometric import HFlip, RandomResizedCrop, Rotate, Shift, warp_affine
from tface.core.config import ConfigError, check_options, structure
from tface.core.data.sample import FaceSample
from tface.core.train.components import Compose

H, W = 96, 80
POINTS = torch.tensor([[30.0, 38.0], [52.0, 37.0], [41.0, 52.0], [32.0, 66.0], [50.0, 67.0]])


def dotted(points: torch.Tensor = POINTS) -> FaceSample:
    """A black image with a 3×3 white dot centred on each landmark (integer positions)."""
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    for x, y in points.round().long().tolist():
        img[:, y - 1:y + 2, x - 1:x + 2] = 255
    return FaceSample(img, points.clone())


def centroid_near(img: torch.Tensor, point: torch.Tensor, radius: int = 6) -> torch.Tensor:
    """The brightness-weighted centre of the pixels within ``radius`` of ``point``."""
    x0, y0 = (int(round(v)) for v in point.tolist())
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    near = ((xs - x0).abs() <= radius) & ((ys - y0).abs() <= radius)
    weight = img[0].float() * near
    assert weight.sum() > 0, f"no dot near {point.tolist()}"
    return torch.stack([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])


def analytic(points: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    m = torch.tensor(matrix, dtype=torch.float64)
    return (points.double() @ m[:, :2].T + m[:, 2]).float()


def test_hflip_mirrors_and_swaps_left_and_right():
    out = HFlip(p=1.0)(dotted())
    # the old right eye (x 52) becomes the new left eye at W - 1 - 52
    want = torch.tensor([[W - 1 - 52.0, 37.0], [W - 1 - 30.0, 38.0], [W - 1 - 41.0, 52.0], [W - 1 - 50.0, 67.0],
                         [W - 1 - 32.0, 66.0]])
    assert torch.equal(out.landmarks, want)
    for point in out.landmarks:
        assert torch.allclose(centroid_near(out.image, point), point, atol=1e-4)
    assert torch.equal(out.image, dotted().image.flip(-1))


def test_hflip_still_takes_a_bare_image():
    img = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    assert torch.equal(HFlip(p=1.0)(img), img[:, :, [3, 2, 1, 0]])


@pytest.mark.parametrize("op", [Rotate(p=1.0, degrees=[-30, 30]), Shift(p=1.0, fraction=0.15),
                                RandomResizedCrop(p=1.0, scale=[0.6, 0.9], ratio=[0.8, 1.25])])
def test_dots_land_on_the_moved_landmarks(op):
    for seed in range(5):
        torch.manual_seed(seed)
        out = op(dotted())
        for point in out.landmarks:
            assert torch.allclose(centroid_near(out.image, point), point, atol=0.35), (seed, point)


def test_rotation_is_the_analytic_turn_about_the_centre():
    torch.manual_seed(0)
    op = Rotate(p=1.0, degrees=[90, 90])
    out = op(dotted())
    cx, cy = (W - 1) / 2, (H - 1) / 2
    # counter-clockwise on screen by 90°: (x, y) -> (cx + (y - cy), cy - (x - cx))
    want = torch.stack([cx + (POINTS[:, 1] - cy), cy - (POINTS[:, 0] - cx)], dim=1)
    assert torch.allclose(out.landmarks, want, atol=1e-4)


def test_random_resized_crop_of_the_whole_image_is_the_identity():
    sample = dotted()
    out = RandomResizedCrop(p=1.0, scale=[1.0, 1.0], ratio=[1.0, 1.0])(sample)
    assert torch.equal(out.image, sample.image) and torch.allclose(out.landmarks, sample.landmarks, atol=1e-4)


def test_warp_fills_outside_and_keeps_dtype():
    img = torch.full((3, 10, 12), 100, dtype=torch.uint8)
    out = warp_affine(img, torch.tensor([[1.0, 0.0, 5.0], [0.0, 1.0, 0.0]]), fill=7)
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert (out[:, :, :5] == 7).all() and (out[:, :, 5:] == 100).all()
    shifted = analytic(torch.tensor([[1.0, 2.0]]), [[1, 0, 5], [0, 1, 0]])
    assert shifted.tolist() == [[6.0, 2.0]]


@pytest.mark.parametrize("op", [HFlip(p=0.0), Rotate(p=0.0), Shift(p=0.0), RandomResizedCrop(p=0.0)])
def test_probability_zero_is_the_identity(op):
    sample = dotted()
    assert op(sample) is sample


def test_the_same_seed_draws_the_same_transform():
    op = Rotate(p=0.7, degrees=[-40, 40])
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        outs.append([op(dotted()) for _ in range(4)])
    for a, b in zip(*outs):
        assert torch.equal(a.image, b.image) and torch.equal(a.landmarks, b.landmarks)
    torch.manual_seed(12)
    assert any(not torch.equal(a.image, op(dotted()).image) for a in outs[0])


def test_compose_passes_landmarks_through_image_ops_and_defaults_to_the_template():
    brighten = lambda img: (img.int() + 1).clamp(max=255).to(torch.uint8)  # noqa: E731 - an image-only op
    compose = Compose([HFlip(p=1.0), brighten, Shift(p=0.0)])
    img = torch.zeros(3, 112, 112, dtype=torch.uint8)
    sample = compose.sample(img)
    template = FaceSample.aligned(img).landmarks
    assert torch.allclose(sample.landmarks[0], torch.tensor([111 - template[1, 0], template[1, 1]]))
    assert (sample.image == 1).all() and torch.equal(compose(img), sample.image)
    # image-only pipelines stay on the fast path: no landmarks built
    assert torch.equal(Compose([brighten])(img), img + 1)
    # a 64×64 crop's template is the 112 one scaled
    assert torch.allclose(FaceSample.aligned(torch.zeros(3, 64, 64)).landmarks, template * 64 / 112)


@pytest.mark.parametrize("cls,table,key", [
    (Rotate, {"degrees": [10, -10]}, "augment.degrees"),
    (Rotate, {"degrees": [0, 200]}, "augment.degrees"),
    (Shift, {"fraction": 0.6}, "augment.fraction"),
    (RandomResizedCrop, {"scale": [0.0, 1.0]}, "augment.scale"),
    (RandomResizedCrop, {"ratio": [1.0]}, "augment.ratio"),
    (HFlip, {"p": 1.5}, "augment.p"),
])
def test_bad_options_are_refused_naming_the_key(cls, table, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        structure(cls.Config, table, "augment")


@pytest.mark.parametrize("cls", [HFlip, Rotate, Shift, RandomResizedCrop])
def test_options_are_declared_right(cls):
    assert check_options(cls, kind="augmenters") == []


def test_rotation_angle_follows_the_range():
    torch.manual_seed(3)
    op = Rotate(p=1.0, degrees=[-20, 20])
    for _ in range(20):
        m = op.matrix(H, W)
        angle = math.degrees(math.atan2(float(m[0, 1]), float(m[0, 0])))
        assert -20 <= angle <= 20

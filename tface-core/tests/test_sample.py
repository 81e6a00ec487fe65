"""Samples carry landmarks through the augmenter pipeline: sample ops get them, image ops never see them."""

from __future__ import annotations

import torch

from tface.core.data.align import template
from tface.core.data.sample import MIRROR, FaceSample, takes_sample
from tface.core.train.components import Compose


class Nudge:
    """A sample op: moves the landmarks right by one pixel (and the image with them)."""

    takes_sample = True

    def __call__(self, sample):
        return FaceSample(sample.image.roll(1, dims=-1), sample.landmarks + torch.tensor([1.0, 0.0]))


def invert(img):
    return 255 - img


def test_aligned_crops_get_the_arcface_template_for_their_size():
    for h, w in ((112, 112), (64, 64), (128, 96)):
        lm = FaceSample.aligned(torch.zeros(3, h, w, dtype=torch.uint8)).landmarks
        want = torch.tensor(template(112).tolist()) * torch.tensor([w / 112, h / 112])
        assert lm.dtype == torch.float32 and torch.allclose(lm, want)


def test_mirror_swaps_eyes_and_mouth_corners_and_is_its_own_inverse():
    assert [MIRROR[i] for i in MIRROR] == [0, 1, 2, 3, 4] and MIRROR[2] == 2


def test_compose_routes_samples_and_images():
    img = torch.arange(3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 8, 8)
    given = torch.tensor([[1.0, 2.0], [5.0, 2.0], [3.0, 4.0], [2.0, 6.0], [4.0, 6.0]])
    compose = Compose([Nudge(), invert, Nudge()])
    out = compose.sample(img, given)
    assert torch.equal(out.landmarks, given + torch.tensor([2.0, 0.0]))
    assert torch.equal(out.image, 255 - img.roll(2, dims=-1))
    assert torch.equal(compose(img, given), out.image)
    # without landmarks of its own a crop starts from the template
    assert torch.allclose(compose.sample(img).landmarks, FaceSample.aligned(img).landmarks + torch.tensor([2.0, 0.0]))
    assert takes_sample(Nudge()) and not takes_sample(invert)
    assert torch.equal(Compose([invert])(img), 255 - img)

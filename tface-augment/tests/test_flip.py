from __future__ import annotations

import pytest
import torch

from tface.augment.geometric import HorizontalFlip
from tface.core.config import ConfigError, structure


def test_always_and_never():
    img = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    assert torch.equal(HorizontalFlip(p=1.0)(img), img[:, :, [3, 2, 1, 0]])
    assert HorizontalFlip(p=0.0)(img) is img


def test_probability_is_respected():
    torch.manual_seed(0)
    flip = HorizontalFlip(p=0.3)
    img = torch.tensor([[[0.0, 1.0]]])
    flipped = sum(int(flip(img)[0, 0, 0] == 1.0) for _ in range(4000))
    # binomial(4000, 0.3): mean 1200, sd ≈ 29; 5 sd either side
    assert 1055 < flipped < 1345


def test_config():
    assert structure(HorizontalFlip.Config, {"p": 1}).p == 1.0
    with pytest.raises(ConfigError, match="augment.p:"):
        structure(HorizontalFlip.Config, {"p": 1.5}, "augment")

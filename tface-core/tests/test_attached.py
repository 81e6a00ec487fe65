"""What a method attaches to a backbone for evaluation: found through wrappers, gone with the backbone, and the
confidence contract (one forward pass, κ as the last column)."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from tface.core.attached import CONFIDENCE, WithConfidence, attach, attached, with_confidence
from tface.core.backbone import BackboneContractError


class Mapped(nn.Module):
    """Embedding = the per-channel means of the input; feature map = the input itself (3 channels)."""

    feature_channels = 3

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.forwards += 1
        return x.mean((2, 3)), x


class MaxOfMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.flatten(1).amax(1) * self.scale


def test_attach_is_per_object_and_found_through_a_compile_wrapper():
    a, b = Mapped(), Mapped()
    head = MaxOfMap()
    attach(a, CONFIDENCE, head)
    assert attached(a, CONFIDENCE) is head and attached(b, CONFIDENCE) is None and attached(a, "quality") is None
    wrapper = nn.Module()
    wrapper._orig_mod = a  # what torch.compile's wrapper looks like to unwrap_model
    assert attached(wrapper, CONFIDENCE) is head
    assert list(a.state_dict()) == [] and not hasattr(a, "confidence")  # the backbone itself is untouched
    other = MaxOfMap()
    attach(a, CONFIDENCE, other)  # a later attach replaces the earlier one
    assert attached(a, CONFIDENCE) is other


def test_the_mapping_does_not_keep_a_backbone_alive():
    from tface.core import attached as mod

    model = Mapped()
    attach(model, CONFIDENCE, MaxOfMap())
    before = len(mod._ATTACHED)
    del model
    gc.collect()
    assert len(mod._ATTACHED) == before - 1


def test_with_confidence_appends_kappa_from_one_forward():
    model = Mapped()
    assert with_confidence(model) is None
    attach(model, CONFIDENCE, MaxOfMap())
    net = with_confidence(model)
    assert isinstance(net, WithConfidence)
    x = torch.rand(4, 3, 5, 5)
    out = net(x)
    assert model.forwards == 1
    torch.testing.assert_close(out, torch.cat([x.mean((2, 3)), x.flatten(1).amax(1, keepdim=True)], 1),
                               rtol=0, atol=0)
    assert list(net.state_dict()) == ["confidence.scale"]  # a fingerprint of net covers the head's weights


def test_with_confidence_checks_the_contract():
    class Plain(nn.Module):
        def forward(self, x):
            return x.mean((2, 3))

    plain = Plain()
    attach(plain, CONFIDENCE, MaxOfMap())
    with pytest.raises(BackboneContractError, match="offers no feature map"):
        with_confidence(plain)(torch.rand(2, 3, 4, 4))

    class Short(nn.Module):
        def forward(self, fm):
            return fm.flatten(1).amax(1)[:1]

    model = Mapped()
    attach(model, CONFIDENCE, Short())
    with pytest.raises(ValueError, match="gave 1 values for 2 images"):
        with_confidence(model)(torch.rand(2, 3, 4, 4))

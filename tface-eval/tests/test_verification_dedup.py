"""Verification embeds each distinct image of a ``.bin`` once, and follows/sets channels-last."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tface.core.config import ConfigError, structure
from tface.core.data.binfile import BinFormatError, write_bin
from tface.core.protocol import EvalContext
from tface.eval.metrics import verification_metrics
from tface.eval.verification import Verification, distinct_slots, embed_raw, pair_set_metrics


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class ConvNet(nn.Module):
    """A small conv net with batch norm (eval mode: per-sample, independent of the batch)."""

    def __init__(self, dim: int = 16, input_size: int = 24):
        super().__init__()
        self.embedding_size, self.input_size = dim, input_size  # the backbone contract
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.PReLU(8),
                                  nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.AdaptiveAvgPool2d(2),
                                  nn.Flatten(), nn.Linear(64, dim))
        for m in self.body:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.body(x)


class Counting(nn.Module):
    """Counts the images that pass through ``inner`` and records each input's memory format."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.embedding_size, self.input_size = inner.embedding_size, inner.input_size
        self.seen = 0
        self.channels_last: list[bool] = []

    def forward(self, x):
        self.seen += x.shape[0]
        self.channels_last.append(not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last))
        return self.inner(x)


def repeated_set(n_distinct: int = 13, n_pairs: int = 40, seed: int = 0, size: int = 24):
    """``n_pairs`` pairs drawn from ``n_distinct`` images (PNG, plus one JPEG of the same pixels as image 0,
    which is a different file and so a different slot image); identity = image index // 2."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n_distinct)]
    blobs = [png(a) for a in arrays] + [jpeg(arrays[0])]
    picks = rng.integers(0, len(blobs), (n_pairs, 2))
    picks[:len(blobs), 0] = np.arange(len(blobs))  # every image is used
    images = [blobs[i] for pair in picks for i in pair]
    same = [bool(a // 2 == b // 2) for a, b in picks]
    return images, np.array(same), len(blobs)


def naive_raw(model: nn.Module, images: list[bytes], flip: bool):
    """The old path, written out: decode every slot with PIL and embed it (and its mirror) one by one."""
    model.eval()
    orig, mirror = [], []
    with torch.no_grad():
        for blob in images:
            a = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.float32)
            x = torch.from_numpy(((a / 255 - 0.5) / 0.5).transpose(2, 0, 1).copy())[None]
            orig.append(model(x)[0].numpy())
            if flip:
                mirror.append(model(x.flip(-1))[0].numpy())
    return np.stack(orig), (np.stack(mirror) if flip else None)


def test_distinct_slots():
    first, rows = distinct_slots([b"a", b"b", b"a", b"c", b"b", b"a"])
    assert first == [0, 1, 3] and rows.tolist() == [0, 1, 0, 2, 1, 0]


@pytest.mark.parametrize("flip", [True, False])
def test_repeated_images_embed_once_and_match_the_slot_by_slot_path(flip):
    images, same, n_distinct = repeated_set()
    assert len(images) == 80 and n_distinct == 14
    model = Counting(ConvNet())
    orig, mirror = embed_raw(model, images, batch_size=5, flip=flip, image_size=24)
    assert model.seen == n_distinct * (2 if flip else 1)  # the slot-by-slot path: 80 (160 with the flip)

    ref_orig, ref_mirror = naive_raw(model.inner, images, flip)
    np.testing.assert_allclose(orig, ref_orig, rtol=1e-5, atol=1e-5)
    if flip:
        np.testing.assert_allclose(mirror, ref_mirror, rtol=1e-5, atol=1e-5)
    else:
        assert mirror is None

    got = pair_set_metrics(ConvNet(), images, same, batch_size=5, flip=flip, image_size=24)
    summed = ref_orig + ref_mirror if flip else ref_orig
    unit = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    want = verification_metrics(np.sum(np.square(unit[0::2] - unit[1::2]), 1), same)
    assert got["accuracy"] == 100 * want["accuracy"] and got["accuracy_std"] == 100 * want["accuracy_std"]
    norms = np.linalg.norm(np.concatenate([ref_orig, ref_mirror]) if flip else ref_orig, axis=1)
    assert got["xnorm"] == pytest.approx(float(norms.mean()), rel=1e-5)


def test_a_corrupt_repeated_image_is_named_by_its_first_slot(tmp_path):
    images, same, _ = repeated_set(n_pairs=20)
    images[5] = images[9] = b"\x89PNG broken"
    write_bin(tmp_path / "c.bin", images, same.tolist())
    with pytest.raises(BinFormatError, match=r"c\.bin: image 5 cannot be decoded"):
        Verification(bins=[tmp_path / "c.bin"], image_size=24).evaluate(ConvNet(), EvalContext())


def test_channels_last_option_converts_for_the_pass_and_back(tmp_path):
    images, same, _ = repeated_set(seed=3)
    write_bin(tmp_path / "s.bin", images, same.tolist())
    plain = Counting(ConvNet())
    (a,) = Verification(bins=[tmp_path / "s.bin"], image_size=24).evaluate(plain, EvalContext())
    assert plain.channels_last and not any(plain.channels_last)

    converted = Counting(ConvNet())
    (b,) = Verification(bins=[tmp_path / "s.bin"], image_size=24, channels_last=True).evaluate(converted, EvalContext())
    assert converted.channels_last and all(converted.channels_last)
    conv = converted.inner.body[0].weight
    assert conv.is_contiguous()  # the model is handed back as it came
    assert b["accuracy"] == a["accuracy"] and b["xnorm"] == pytest.approx(a["xnorm"], rel=1e-5)


def test_a_channels_last_model_gets_channels_last_inputs(tmp_path):
    images, same, _ = repeated_set(seed=4)
    model = Counting(ConvNet().to(memory_format=torch.channels_last))  # as the trainer leaves it
    orig, _ = embed_raw(model, images, image_size=24)
    assert model.channels_last and all(model.channels_last)
    weight = model.inner.body[0].weight
    assert not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    ref, _ = naive_raw(ConvNet(), images, flip=False)
    np.testing.assert_allclose(orig, ref, rtol=1e-5, atol=1e-5)


def test_channels_last_option_is_validated():
    assert structure(Verification.Config, {"channels_last": True}, "eval").channels_last is True
    with pytest.raises(ConfigError, match=r"eval\.channels_last: expected bool"):
        structure(Verification.Config, {"channels_last": "yes"}, "eval")
    with pytest.raises(TypeError, match="channels_last"):
        Verification(channels_last=1)

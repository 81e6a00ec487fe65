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


# -- landmarks stored in records reach the sample ops -------------------------------------------------------------

def _jpeg(seed: int, size: int = 16) -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Record:
    """A sample op that notes the landmarks it is given."""

    takes_sample = True

    def __init__(self):
        self.seen = []

    def __call__(self, sample):
        self.seen.append(sample.landmarks.clone())
        return sample


def test_records_hand_their_landmarks_to_sample_ops(tmp_path):
    from tface.core.data.dataset import IndexedTFRecordDataset
    from tface.core.data.writer import ShardWriter

    points = [1.5, 2, 13, 2.5, 7, 8, 3, 12, 12, 12.5]
    with ShardWriter(tmp_path, "x", extra_keys=True) as w:
        w.add(_jpeg(1), 0, landmarks=points)
        w.add(_jpeg(2), 1)  # no landmarks: the template for its size
    record = Record()
    ds = IndexedTFRecordDataset(tmp_path / "x.txt", transform=Compose([record]))
    img0, _ = ds[0]
    img1, _ = ds[1]
    assert torch.equal(record.seen[0], torch.tensor(points).view(5, 2))
    assert torch.allclose(record.seen[1], FaceSample.aligned(img1).landmarks)
    assert torch.equal(img0, ds.load(0))  # the same image as the plain path reads
    # image-only pipelines never parse the landmarks
    plain = IndexedTFRecordDataset(tmp_path / "x.txt", transform=Compose([invert]))
    assert torch.equal(plain[0][0], 255 - ds.load(0))


def test_bad_record_landmarks_name_the_record(tmp_path):
    import numpy as np
    import pytest

    from tface.core.data.dataset import IndexedTFRecordDataset
    from tface.core.data.tfrecord import RecordError, frame, serialize_example

    (tmp_path / "x").mkdir()
    payload = serialize_example({"image": [_jpeg(1)], "landmarks": np.arange(8, dtype=np.float32)})
    (tmp_path / "x" / "x-00000.tfrecord").write_bytes(frame(payload))
    (tmp_path / "x.txt").write_text("x\t0\t0\t0\n")
    ds = IndexedTFRecordDataset(tmp_path / "x.txt", transform=Compose([Record()]), label_gaps="compact")
    with pytest.raises(RecordError, match=r"x-00000.tfrecord.*'landmarks' holds 8 values; expected 5 \(x, y\)"):
        ds[0]

"""The ``quality_list`` source: scores travel as labels round(score x 1000) and come back; bad lines name file:line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qualitytoys import write_faces, write_scores

from tface.core import registry
from tface.core.data.errors import DataError
from tface.core.data.index import IndexFormatError
from tface.quality.source import (
    SCORE_SCALE,
    QualityListSource,
    decode_labels,
    encode_scores,
    read_quality_list,
)


def test_the_label_encoding_round_trips():
    three_decimals = np.array([0.0, 0.001, 12.345, 55.5, 99.999, 100.0])
    labels = encode_scores(three_decimals)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 12345, 55500, 99999, 100000]
    back = decode_labels(torch.as_tensor(labels))
    assert torch.equal(back, torch.as_tensor(three_decimals, dtype=torch.float32))  # exact at 3 decimals
    rng = np.random.default_rng(0)
    any_scores = rng.uniform(0, 100, 10_000)
    err = np.abs(decode_labels(torch.as_tensor(encode_scores(any_scores))).double().numpy() - any_scores)
    assert err.max() <= 0.5 / SCORE_SCALE + 1e-5  # half a step, plus float32's rounding near 100
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        encode_scores([100.5])


def test_items_carry_the_encoded_score(tmp_path):
    files, scores = write_faces(tmp_path / "faces", 5)
    lst = write_scores(tmp_path / "q.txt", files, scores, relative_to=tmp_path)
    source = registry.get("datasets", "quality_list")(list=lst, image_size=16)
    ds = source.train_dataset()
    assert len(ds) == 5 and ds.num_classes == 0 and ds.quality_scale == SCORE_SCALE
    assert np.array_equal(ds.scores, scores)
    img, label = ds[3]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 16, 16)
    assert label == round(scores[3] * SCORE_SCALE)
    assert float(decode_labels(torch.tensor([label]))[0]) == pytest.approx(scores[3], abs=1e-6)
    assert source.check_inputs() == []
    assert QualityListSource().check_inputs() == ["list: not set: name the path<TAB>score file to train on"]
    assert QualityListSource(list=tmp_path / "nope.txt").check_inputs() == [f"list: {tmp_path / 'nope.txt'} does "
                                                                            "not exist"]


def test_tface_format_and_whitespace_lines(tmp_path):
    (tmp_path / "q.txt").write_text("/data/a b/1.jpg\t55.25\n\n/data/2.jpg 7\n", encoding="utf-8")
    images, scores = read_quality_list(tmp_path / "q.txt")
    assert images.paths == ("/data/a b/1.jpg", "/data/2.jpg") and scores.tolist() == [55.25, 7.0]
    assert images.labels.tolist() == [55250, 7000] and images.lines == (1, 3)


@pytest.mark.parametrize(("text", "line", "message"), [
    ("a.png\t1\nb.png\tgood\n", 2, "the score must be a number, got 'good'"),
    ("a.png\t1\nb.png\n", 2, "expected 'path<TAB>score'"),
    ("a.png\t101\n", 1, r"the score must lie in \[0, 100\]"),
    ("a.png\t-1\n", 1, r"the score must lie in \[0, 100\]"),
    ("a.png\tnan\n", 1, r"the score must lie in \[0, 100\]"),
    ("a.png\t1\n\na.png\t2\n", 3, r"'a.png' is listed twice \(first on line 1\)"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "q.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(IndexFormatError, match=rf"^{path}:{line}: {message}"):
        read_quality_list(path)


def test_an_empty_list_and_a_bad_image_are_named(tmp_path):
    (tmp_path / "q.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(IndexFormatError, match="the quality list is empty"):
        read_quality_list(tmp_path / "q.txt")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    (tmp_path / "q.txt").write_text("bad.png\t50\n", encoding="utf-8")
    ds = QualityListSource(list=tmp_path / "q.txt", image_size=16).train_dataset()
    with pytest.raises(DataError, match=rf"bad.png \(list {tmp_path / 'q.txt'}:1\): cannot decode image"):
        ds[0]

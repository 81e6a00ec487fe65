"""RFW protocol: per-group accuracies and the mean / std / SER summary, checked against hand computation."""

from __future__ import annotations

import io
import math
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tface.core.config import ConfigError, structure
from tface.core.data.binfile import write_bin
from tface.core.protocol import EvalContext, EvalProtocol
from tface.eval.rfw import GROUPS, RFW, rfw_summary, skewed_error_ratio

SIZE = 8  # tiny crops; the protocol is told the model input is 8×8 too

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


class ColourMean(nn.Module):
    """Embedding = mean colour in [0, 2]: red → (2, 0, 0), green → (0, 2, 0). Uniform images are flip-invariant."""

    embedding_size = 3
    input_size = SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + 1.0


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), colour, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_group(path: pathlib.Path, error_folds: set[int], same_second: tuple[int, int, int] = RED) -> None:
    """20 pairs, 2 per fold: pair 2k is "same" (red, ``same_second``), pair 2k+1 "different" (red, blue).

    In each fold of ``error_folds`` the "same" pair is red/green instead: squared distance 2, like the
    impostors, so it is rejected by any sensible threshold and costs that fold half its accuracy.
    """
    images, issame = [], []
    for fold in range(10):
        images += [png(RED), png(GREEN if fold in error_folds else same_second)]
        images += [png(RED), png(BLUE)]
        issame += [True, False]
    write_bin(path, images, issame)


@pytest.fixture
def rfw_root(tmp_path: pathlib.Path) -> pathlib.Path:
    root = tmp_path / "rfw"
    root.mkdir()
    write_group(root / "African_test.bin", {0, 5})  # 2 errors: 90 %
    write_group(root / "Asian_test.bin", {3})  # 1 error: 95 %
    write_group(root / "Caucasian_test.bin", {9})  # 1 error: 95 %
    write_group(root / "indian_test.bin", {1, 4, 8})  # lower-case file name; 3 errors: 85 %
    return root


def fold_std(errors: int) -> float:
    """Population std (percent) of ten fold accuracies of which ``errors`` are 50 % and the rest 100 %."""
    values = [50.0] * errors + [100.0] * (10 - errors)
    mean = sum(values) / 10
    return math.sqrt(sum((v - mean) ** 2 for v in values) / 10)


def test_groups_and_summary_by_hand(rfw_root):
    proto = RFW(root=rfw_root, batch_size=7, image_size=SIZE)
    assert isinstance(proto, EvalProtocol)
    results = proto.evaluate(ColourMean(), EvalContext(step=3))
    assert [r["dataset"] for r in results] == ["African", "Asian", "Caucasian", "Indian", "RFW"]
    assert all(r["protocol"] == "rfw" and r["step"] == 3 for r in results)
    expected = {"African": 2, "Asian": 1, "Caucasian": 1, "Indian": 3}
    for r in results[:4]:
        e = expected[r["dataset"]]
        assert r["accuracy"] == pytest.approx(100.0 - 5.0 * e, abs=1e-12)
        assert r["accuracy_std"] == pytest.approx(fold_std(e), abs=1e-12)
        assert r["pairs"] == 20
        assert r["xnorm"] == pytest.approx(2.0, abs=1e-6)  # every raw embedding has norm 2
    summary = results[4]
    # accuracies 90, 95, 95, 85: mean 91.25; deviations −1.25, 3.75, 3.75, −6.25 → Σ² = 68.75, ddof 1 → /3
    assert summary["mean"] == pytest.approx(91.25, abs=1e-12)
    assert summary["std"] == pytest.approx(math.sqrt(68.75 / 3), abs=1e-12)
    # errors 10, 5, 5, 15 → SER = 15 / 5
    assert summary["ser"] == pytest.approx(3.0, abs=1e-12)
    assert set(summary) == {"protocol", "dataset", "step", "mean", "std", "ser"}

    no_flip = RFW(root=rfw_root, flip=False, image_size=SIZE).evaluate(ColourMean(), EvalContext(step=3))
    assert [r["accuracy"] for r in no_flip[:4]] == [r["accuracy"] for r in results[:4]]


def test_full_insightface_grid_not_tfaces_minus_one_to_one(tmp_path):
    """Genuine pairs with cosine ≈ 0.24 (squared distance ≈ 1.5): TFace's −1…1 grid could never accept them."""
    root = tmp_path / "rfw"
    root.mkdir()
    for g in GROUPS:
        write_group(root / f"{g}_test.bin", set(), same_second=(64, 255, 0))
    results = RFW(root=root, groups=["Asian", "Indian"], image_size=SIZE).evaluate(ColourMean(), EvalContext())
    assert [r["dataset"] for r in results] == ["Asian", "Indian", "RFW"]
    assert [r["accuracy"] for r in results[:2]] == [100.0, 100.0]
    assert results[2] == {"protocol": "rfw", "dataset": "RFW", "step": 0, "mean": 100.0, "std": 0.0, "ser": 1.0}


def test_one_group_has_no_summary(rfw_root):
    results = RFW(root=rfw_root, groups=["Asian"], image_size=SIZE).evaluate(ColourMean(), EvalContext())
    assert [r["dataset"] for r in results] == ["Asian"]


def test_missing_files_are_all_named(tmp_path):
    root = tmp_path / "rfw"
    root.mkdir()
    write_group(root / "asian_test.bin", set())
    with pytest.raises(FileNotFoundError) as info:
        RFW(root=root, image_size=SIZE).evaluate(ColourMean(), EvalContext())
    message = str(info.value)
    assert "African_test.bin" in message and "Caucasian_test.bin" in message and "Indian_test.bin" in message
    assert "Asian_test.bin" not in message and str(root) in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RFW(root=tmp_path / "nowhere").evaluate(ColourMean(), EvalContext())


def test_summary_helpers():
    assert rfw_summary([95.95, 95.17, 96.78, 96.38])["mean"] == pytest.approx(96.07, abs=1e-9)  # CIFP Ours-R34
    assert rfw_summary([95.95, 95.17, 96.78, 96.38])["std"] == pytest.approx(0.69, abs=0.005)
    assert rfw_summary([90.0, 95.0])["ser"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        rfw_summary([90.0])
    assert skewed_error_ratio([100.0, 100.0]) == 1.0
    assert skewed_error_ratio([100.0, 99.0]) == math.inf


def test_config():
    cfg = structure(RFW.Config, {"root": "data/rfw", "batch_size": 32}, "eval")
    assert cfg.root == pathlib.Path("data/rfw") and cfg.groups is None and cfg.flip is True  # None: GROUPS
    cfg = structure(RFW.Config, {}, "eval")  # no root: the sets the training data provides
    assert cfg.root is None and cfg.groups is None
    assert structure(RFW.Config, {"groups": ["A", "C"]}, "eval").groups == ["A", "C"]
    with pytest.raises(ConfigError, match=r"eval\.groups: at least one group"):
        structure(RFW.Config, {"root": "x", "groups": []}, "eval")
    with pytest.raises(ConfigError, match=r"eval\.groups: groups must be distinct"):
        structure(RFW.Config, {"root": "x", "groups": ["Asian", "Asian"]}, "eval")
    with pytest.raises(ConfigError, match=r'eval\.grups: unknown key; did you mean "groups"'):
        structure(RFW.Config, {"root": "x", "grups": ["Asian"]}, "eval")


def test_check_inputs_names_the_missing_root_or_groups(tmp_path):
    assert RFW(tmp_path / "nowhere").check_inputs() == [f"root: root folder {tmp_path / 'nowhere'} does not exist"]
    write_group(tmp_path / "African_test.bin", set())
    write_group(tmp_path / "asian_test.bin", set())
    assert RFW(tmp_path, groups=["African", "Asian"]).check_inputs() == []
    assert RFW(tmp_path).check_inputs() == [
        f"root: {tmp_path} lacks Caucasian_test.bin, Indian_test.bin (the lower-case spelling is accepted too)"]
    with pytest.raises(FileNotFoundError, match=r"^rfw: .* lacks Caucasian_test.bin, Indian_test.bin"):
        RFW(tmp_path).files()


# --- without root: the per-group sets the training data provides (SynthFace with ``groups``) ----------------------

@pytest.fixture
def provided(tmp_path: pathlib.Path) -> dict[str, dict[str, pathlib.Path]]:
    """SynthFace-style sets: ``group-<NAME>_test.bin`` for looks A..D, offered as ``ctx.provided["rfw"]``."""
    errors = {"A": set(), "B": {2}, "C": {0, 7}, "D": {1, 4, 6, 9}}  # 100, 95, 90, 80 %
    for name, folds in errors.items():
        write_group(tmp_path / f"group-{name}_test.bin", folds)
    return {"verification": {"synthface-val": tmp_path / "synthface-val.bin"},
            "rfw": {name: tmp_path / f"group-{name}_test.bin" for name in errors}}


def test_provided_groups_in_their_order_with_the_summary(provided):
    proto = RFW(image_size=SIZE)
    assert proto.config.root is None and proto.check_inputs() == []  # the sets may be written during the run
    results = proto.evaluate(ColourMean(), EvalContext(step=5, provided=provided))
    assert [r["dataset"] for r in results] == ["A", "B", "C", "D", "RFW"]
    assert [r["accuracy"] for r in results[:4]] == pytest.approx([100.0, 95.0, 90.0, 80.0], abs=1e-12)
    assert [r["pairs"] for r in results[:4]] == [20] * 4
    # mean 91.25; deviations 8.75, 3.75, −1.25, −11.25 → Σ² = 76.5625 + 14.0625 + 1.5625 + 126.5625 = 218.75
    # (ddof 1 → /3); errors 0, 5, 10, 20: the smallest is 0 while others are not → SER = inf
    assert results[4]["mean"] == pytest.approx(91.25, abs=1e-12)
    assert results[4]["std"] == pytest.approx(math.sqrt(218.75 / 3), abs=1e-12)
    assert results[4]["ser"] == math.inf and results[4]["step"] == 5


def test_provided_subset_in_the_order_of_groups(provided):
    results = RFW(groups=["D", "B"], image_size=SIZE).evaluate(ColourMean(), EvalContext(provided=provided))
    assert [r["dataset"] for r in results] == ["D", "B", "RFW"]
    # accuracies 80, 95: mean 87.5, std √((7.5² + 7.5²) / 1) = 7.5·√2, errors 20, 5 → SER 4
    assert results[2]["mean"] == pytest.approx(87.5, abs=1e-12)
    assert results[2]["std"] == pytest.approx(7.5 * math.sqrt(2), abs=1e-12)
    assert results[2]["ser"] == pytest.approx(4.0, abs=1e-12)
    single = RFW(groups=["C"], image_size=SIZE).evaluate(ColourMean(), EvalContext(provided=provided))
    assert [(r["dataset"], r["accuracy"]) for r in single] == [("C", pytest.approx(90.0, abs=1e-12))]


def test_provided_errors_name_what_is_missing(provided, tmp_path):
    with pytest.raises(ValueError, match=r"^rfw: groups E, African not provided by the training data "
                                         r"\(it provides A, B, C, D\); fix `groups` or set `root`$"):
        RFW(groups=["A", "E", "African"], image_size=SIZE).evaluate(ColourMean(), EvalContext(provided=provided))
    nothing = "rfw: no groups to evaluate: set `root` .* or train on SynthFace with `groups`"
    with pytest.raises(ValueError, match=nothing):
        RFW(image_size=SIZE).evaluate(ColourMean(), EvalContext())
    with pytest.raises(ValueError, match=nothing):  # a source that offers only verification sets
        RFW(image_size=SIZE).evaluate(ColourMean(), EvalContext(provided={"verification": provided["verification"]}))
    (tmp_path / "group-C_test.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"group-C_test.bin \(group 'C'\) does not exist"):
        RFW(image_size=SIZE).evaluate(ColourMean(), EvalContext(provided=provided))


def test_root_wins_over_provided_sets(rfw_root, provided):
    results = RFW(root=rfw_root, image_size=SIZE).evaluate(ColourMean(), EvalContext(provided=provided))
    assert [r["dataset"] for r in results] == ["African", "Asian", "Caucasian", "Indian", "RFW"]


def test_synthface_groups_feed_the_protocol(tmp_path):
    """The wiring end to end: SynthFace's ``eval_sets()`` is what a run passes as ``ctx.provided``."""
    from tface.core.data.synthface import SynthFaceSource

    src = SynthFaceSource(seed=1, identities=4, images_per_identity=1, val_identities=3, val_pairs=10,
                          image_size=16, workers=1, cache_dir=tmp_path, groups=[0.7, 0.3])
    results = RFW(image_size=SIZE).evaluate(ColourMean(), EvalContext(provided=src.eval_sets()))
    assert [r["dataset"] for r in results] == ["A", "B", "RFW"]
    assert [r["pairs"] for r in results[:2]] == [10, 10]
    assert results[2]["mean"] == pytest.approx((results[0]["accuracy"] + results[1]["accuracy"]) / 2, abs=1e-12)

"""The ``evrc`` protocol: its numbers are ``evrc()`` called directly on the same qualities and cosines, in a
training run (the head the method trains) and from ``tface eval`` (the head from a file)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import qualitytoys
import torch
from click.testing import CliRunner
from qualitytoys import RECIPE, quality_data, write_pairs_bin

from tface.core import recipe, registry
from tface.core.cli import cli
from tface.core.config import validate_options
from tface.core.data.binfile import read_bin
from tface.core.data.image import decode_rgb
from tface.core.protocol import EvalContext
from tface.core.train.trainer import Trainer
from tface.quality.evrc import evrc
from tface.quality.head import QualityHead, embeddings, load_quality_head, quality_scores
from tface.quality.protocol import EVRCProtocol, fmr_label

toys = qualitytoys.toys  # the fixture (no conftest.py here: see qualitytoys.toys)

FMRS = (0.1, 0.05)  # 20 impostor pairs: 1e-2 and below would all sit above the highest impostor
RATIOS = np.round(np.arange(51) * 0.01, 2)  # max_ratio = 0.5: with 80 images no genuine pair may be left at 0.95


@pytest.fixture(scope="module")
def data(toys, tmp_path_factory):
    root = tmp_path_factory.mktemp("evrc")
    quality_data(root, toys)
    write_pairs_bin(root / "pairs.bin")
    return root


def toynet(path):
    model = registry.get("backbones", "qtoynet")()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def direct(model, head, recognizer, path):
    """EVRC computed here from the pieces: every slot scored in one batch, cosines of flip-test embeddings."""
    images, issame = read_bin(path)
    crops = [decode_rgb(b) for b in images]
    q = quality_scores(model, head, crops, batch_size=len(crops)).numpy()
    e = embeddings(recognizer, crops, batch_size=len(crops), flip=True).double()
    scores = (e[0::2] * e[1::2]).sum(1).numpy()
    idx = np.arange(len(issame)) * 2
    return evrc(q, idx, idx + 1, np.asarray(issame), scores, fmrs=FMRS, ratios=RATIOS), q


def none(x):
    return float(x) if math.isfinite(x) else None


def check_row(row, want, q):
    assert row["pairs"] == 40 and row["images"] == 80 and row["quality_mean"] == pytest.approx(q.mean(), abs=0)
    for i, f in enumerate(FMRS):
        assert row[f"aoc@fmr={fmr_label(f)}"] == none(want.aoc[i])
        assert row[f"aoc_rel@fmr={fmr_label(f)}"] == none(want.aoc_relative[i])
        assert row[f"fnmr@fmr={fmr_label(f)}"] == want.fnmr[i, 0]
        assert row["curves"]["evrc"]["fnmr"][fmr_label(f)] == [none(v) for v in want.fnmr[i]]
        assert row["curves"]["evrc"]["thresholds"][fmr_label(f)] == none(want.thresholds[i])
    assert row["aoc"] == want.mean_aoc and row["aoc_rel"] is not None
    assert row["curves"]["evrc"]["ratios"] == want.ratios.tolist()


def protocol(**table):
    return EVRCProtocol(**validate_options(EVRCProtocol, table, "evrc"))


def test_the_numbers_are_evrc_called_directly(data, tmp_path):
    torch.manual_seed(0)
    head = QualityHead(8, 7)
    torch.save(head.state_dict(), tmp_path / "head.pt")
    model, recognizer = toynet(data / "toynet.pt"), toynet(data / "toynet.pt")
    proto = protocol(bins=[str(data / "pairs.bin")],
                     recognizer={"name": "qtoynet", "checkpoint": str(data / "toynet.pt")},
                     head=str(tmp_path / "head.pt"), fmrs=list(FMRS), batch_size=80, max_ratio=0.5)
    assert proto.check_inputs() == []
    [row] = proto.evaluate(model, EvalContext(step=7))
    assert (row["protocol"], row["dataset"], row["step"]) == ("evrc", "pairs", 7)
    want, q = direct(model, head.eval(), recognizer, data / "pairs.bin")
    check_row(row, want, q)
    assert row["curves"]["evrc"]["plot"] == {"x": "ratios", "y": "fnmr", "xlabel": "ratio of unconsidered images",
                                             "ylabel": "FNMR"}


class MapEnergy(torch.nn.Module):
    """A confidence: exp(mean of the feature map), positive and different per image."""

    def forward(self, fmap):
        return fmap.float().mean((1, 2, 3)).exp()


def test_quality_from_the_attached_confidence(data):
    """quality = "confidence": each image is scored by the confidence its training method attached (SCF's κ); the
    numbers are evrc() on exp(mean feature map) computed here from the model's own forward_features."""
    from tface.core.attached import CONFIDENCE, attach

    model, recognizer = toynet(data / "toynet.pt"), toynet(data / "toynet.pt")
    table = dict(bins=[str(data / "pairs.bin")], recognizer={"name": "qtoynet", "checkpoint": str(data / "toynet.pt")},
                 fmrs=list(FMRS), batch_size=80, max_ratio=0.5, quality="confidence")
    with pytest.raises(ValueError, match=r'quality = "confidence" needs a per-image confidence attached'):
        protocol(**table).evaluate(model, EvalContext(step=1))
    attach(model, CONFIDENCE, MapEnergy())
    [row] = protocol(**table).evaluate(model, EvalContext(step=1))
    images, issame = read_bin(data / "pairs.bin")
    x = torch.stack([decode_rgb(b) for b in images]).float() / 255.0
    with torch.no_grad():
        q = model.forward_features((x - 0.5) / 0.5)[1].mean((1, 2, 3)).exp().double().numpy()
    e = embeddings(recognizer, [decode_rgb(b) for b in images], batch_size=80, flip=True).double()
    idx = np.arange(len(issame)) * 2
    want = evrc(q, idx, idx + 1, np.asarray(issame), (e[0::2] * e[1::2]).sum(1).numpy(), fmrs=FMRS, ratios=RATIOS)
    check_row(row, want, q)
    with pytest.raises(ValueError, match="drop `head`"):
        protocol(**table, head=str(data / "toynet.pt"))


def test_a_training_run_evaluates_with_the_head_it_trains(data, tmp_path):
    text = RECIPE + f'''
[[eval]]
name = "evrc"
bins = ["pairs.bin"]
recognizer = {{ name = "qtoynet", checkpoint = "toynet.pt" }}
fmrs = {list(FMRS)}
max_ratio = 0.5
batch_size = 80
'''
    (data / "eval.toml").write_text(text, encoding="utf-8")
    Trainer(recipe.load(data / "eval.toml", ["train.max_steps=3"]), tmp_path / "run", echo=lambda m: None).run()
    rows = [r for r in json.loads((tmp_path / "run" / "report.json").read_text())["results"] if r["protocol"] == "evrc"]
    assert [r["stage"] for r in rows] == ["trained"]
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    model = toynet(data / "toynet.pt")
    model.load_state_dict(torch.load(last, weights_only=True)["backbone"])
    want, q = direct(model, load_quality_head(last, 8).eval(), toynet(data / "toynet.pt"), data / "pairs.bin")
    check_row(rows[0], want, q)
    # the curves are drawn into the run folder by core's report writer, one line per FMR
    pytest.importorskip("matplotlib")
    assert (tmp_path / "run" / "evrc-evrc-pairs.png").read_bytes().startswith(b"\x89PNG")

    # tface eval on the run folder: a fresh backbone, so the head comes from the checkpoint named by `head`
    res = CliRunner().invoke(cli, ["eval", "--run", str(tmp_path / "run"), "--device", "cpu", "--output-dir",
                                   str(tmp_path / "eval"), "evrc", "--option", f'bins=["{data / "pairs.bin"}"]',
                                   "--option", f'recognizer={{name="qtoynet", checkpoint="{data / "toynet.pt"}"}}',
                                   "--option", f"fmrs={list(FMRS)}", "--option", "batch_size=80",
                                   "--option", "max_ratio=0.5",
                                   "--option", f'head="{last}"'])
    assert res.exit_code == 0, res.output
    [again] = json.loads((tmp_path / "eval" / "eval-report.json").read_text())["results"]
    assert {k: again[k] for k in rows[0] if k not in ("stage", "step")} == \
        {k: v for k, v in rows[0].items() if k not in ("stage", "step")}
    assert (tmp_path / "eval" / "evrc-evrc-pairs.png").read_bytes().startswith(b"\x89PNG")

    # without `head`: tface eval --run restores the run's head from last.pt (the method's attach_eval)
    res = CliRunner().invoke(cli, ["eval", "--run", str(tmp_path / "run"), "--device", "cpu", "--output-dir",
                                   str(tmp_path / "eval2"), "evrc", "--option", f'bins=["{data / "pairs.bin"}"]',
                                   "--option", f'recognizer={{name="qtoynet", checkpoint="{data / "toynet.pt"}"}}',
                                   "--option", f"fmrs={list(FMRS)}", "--option", "batch_size=80",
                                   "--option", "max_ratio=0.5"])
    assert res.exit_code == 0, res.output
    [third] = json.loads((tmp_path / "eval2" / "eval-report.json").read_text())["results"]
    assert {k: third[k] for k in rows[0] if k not in ("stage", "step")} == \
        {k: v for k, v in rows[0].items() if k not in ("stage", "step")}


def test_missing_inputs_and_a_missing_head_are_named(data, tmp_path):
    proto = protocol(bins=[str(tmp_path / "lfw.bin")], head=str(tmp_path / "head.pt"))
    assert proto.check_inputs() == [
        f"bins[0]: {tmp_path / 'lfw.bin'} does not exist",
        'recognizer: not set: name the recognition model, e.g. { name = "ir_50", checkpoint = "backbone.pt" }',
        f"head: {tmp_path / 'head.pt'} does not exist",
    ]
    proto = protocol(bins=[str(data / "pairs.bin")], recognizer={"name": "qtoynet"})
    with pytest.raises(ValueError, match=r"^evrc: no quality head for this model: set head = "):
        proto.evaluate(toynet(data / "toynet.pt"), EvalContext())
    res = CliRunner().invoke(cli, ["eval", "evrc", "--backbone", "qtoynet", "--checkpoint", str(data / "toynet.pt"),
                                   "--device", "cpu", "--output-dir", str(tmp_path / "e"),
                                   "--option", f'bins=["{data / "pairs.bin"}"]', "--option",
                                   f'head="{data / "toynet.pt"}"', "--option", 'recognizer={name="qtoynet"}'])
    assert res.exit_code == 1
    assert "no quality head in it (no tensors named quality.*" in res.output

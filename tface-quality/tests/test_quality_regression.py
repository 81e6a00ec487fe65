"""``[method] name = "quality_regression"`` on the toy backbone: one step's loss is the regression loss written out
here, the model learns, a stopped and resumed run equals an uninterrupted one, and what it needs is refused by
name."""

from __future__ import annotations

import json

import pytest
import qualitytoys
import torch
from qualitytoys import RECIPE, quality_data, write_faces

from tface.core import recipe
from tface.core.backbone import forward_features
from tface.core.train import checkpoint
from tface.core.train.components import build_components
from tface.core.train.engine import StepEngine
from tface.core.train.errors import TrainingError
from tface.core.train.setup import build_training
from tface.core.train.trainer import Trainer
from tface.quality.head import QualityHead

toys = qualitytoys.toys  # the fixture (no conftest.py here: see qualitytoys.toys)


@pytest.fixture(scope="module")
def data(toys, tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    files, scores = quality_data(root, toys)
    return root, scores


def setup_of(root, *sets):
    rec = recipe.load(root / "recipe.toml", list(sets))
    return build_training(rec, build_components(rec), torch.device("cpu"), echo=lambda m: None)


def written_out(loss: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    d = (pred.double() - target.double()).abs()
    if loss == "smooth_l1":  # beta = 1, PyTorch's (and TFace's) default
        return torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    return d.mean() if loss == "l1" else (d**2).mean()


@pytest.mark.parametrize("loss", ["smooth_l1", "l1", "mse"])
def test_one_step_is_the_regression_loss_written_out(data, loss):
    root, scores = data
    setup = setup_of(root, f'method.loss="{loss}"')
    head = setup.method_modules["quality"]
    assert isinstance(head, QualityHead) and dict(setup.classifiers) == {}
    trained = {id(p) for p in [*setup.backbone.parameters(), *head.parameters()]}
    assert {id(p) for g in setup.optimizer.param_groups for p in g["params"]} == trained  # TFace fine-tunes all
    batch = next(iter(setup.loader))
    setup.backbone.eval()
    head.eval()  # no dropout, BatchNorm statistics fixed: the same numbers twice
    with torch.no_grad():
        total, stats = StepEngine(setup).forward(batch)
        _, fmap = forward_features(setup.backbone, setup.info.normalize(batch.images))
        pred = head(fmap)
    target = batch.labels[0].double() / 1000
    assert all(min(abs(t - s) for s in scores) < 1e-9 for t in target.tolist())  # the file's scores come back
    want = written_out(loss, pred, target)
    assert float(total) == pytest.approx(float(want), rel=1e-6)
    assert stats["quality_list"][1:] == (0, 8, 0)  # no classifier: nothing scored


def test_the_model_learns_and_a_resumed_run_equals_an_uninterrupted_one(data, tmp_path):
    root, _ = data

    def run(out, steps, resume=False):
        rec = recipe.load(root / "recipe.toml", [f"train.max_steps={steps}"])
        Trainer(rec, out, resume=resume, echo=lambda m: None).run()
        return checkpoint.load(out / "checkpoints" / "last.pt")

    full = run(tmp_path / "full", 6)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert set(full["method"]) == {"quality"} and full["classifiers"] == {}
    start = torch.load(root / "toynet.pt", weights_only=True)
    assert not all(torch.equal(full["backbone"][k], v) for k, v in start.items())  # fine-tuned
    run(tmp_path / "half", 3)
    resumed = run(tmp_path / "half", 6, resume=True)
    assert all(torch.equal(resumed["backbone"][k], v) for k, v in full["backbone"].items())
    assert all(torch.equal(resumed["method"]["quality"][k], v) for k, v in full["method"]["quality"].items())


def test_freeze_backbone_trains_the_head_only(data, tmp_path):
    root, _ = data
    rec = recipe.load(root / "recipe.toml", ["method.freeze_backbone=true", "train.max_steps=3"])
    Trainer(rec, tmp_path / "run", echo=lambda m: None).run()
    end = checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    start = torch.load(root / "toynet.pt", weights_only=True)
    assert all(torch.equal(end["backbone"][k], v) for k, v in start.items())  # BatchNorm statistics included


def test_what_the_method_needs_is_refused_by_name(data, tmp_path):
    root, _ = data
    files, _ = write_faces(tmp_path / "ids" / "a", 4)
    write_faces(tmp_path / "ids" / "b", 4, seed=1)
    text = RECIPE.replace('name = "quality_list"\nlist = "scores.txt"', f'name = "image_folder"\nroot = '
                          f'"{tmp_path / "ids"}"').replace('checkpoint = "toynet.pt"\n', "")
    (root / "bad.toml").write_text(text, encoding="utf-8")
    rec = recipe.load(root / "bad.toml", ["train.batch_size=4"])
    with pytest.raises(TrainingError, match=r"^method quality_regression needs \[backbone\] checkpoint: .*; data: "
                                            r"quality scores per image \(a quality_list source; 'image_folder' "
                                            r"gives identity labels\)$"):
        build_training(rec, build_components(rec), torch.device("cpu"), echo=lambda m: None)

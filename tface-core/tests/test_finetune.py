"""Starting from trained weights: [backbone] checkpoint / strict and [classifier] checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.config import ConfigError
from tface.core.train import checkpoint
from tface.core.train.trainer import Trainer, TrainingError


def load(tmp_path, name, overrides=(), text=TOY_RECIPE):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return recipe.load(path, list(overrides))


@pytest.fixture
def trained(toy_plugins, tmp_path):
    run = tmp_path / "first"
    Trainer(load(tmp_path, "first", ["train.max_steps=10"]), run, echo=lambda m: None).run()
    return run


def started(rec, run_dir):
    """The trainer after its setup: the models as the first step will see them."""
    lines: list[str] = []
    t = Trainer(rec, run_dir, echo=lines.append)
    t._join()
    t._prepare()
    t._setup()
    return t, lines


def test_the_backbone_starts_from_the_file_on_a_new_data_set(trained, tmp_path):
    saved = checkpoint.load(trained / "checkpoints" / "backbone.pt")
    # another class count: only the backbone carries over, the classifier starts fresh
    rec = load(tmp_path, "second", ["data.classes=6", f'backbone.checkpoint="{trained}/checkpoints/backbone.pt"'])
    t, lines = started(rec, tmp_path / "second")
    state = t.backbone.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert t.classifiers["toydata"].weight.shape[0] == 6
    assert any(line.startswith(f"backbone: started from {trained}/checkpoints/backbone.pt (") for line in lines)
    # and it trains
    out = Trainer(rec, tmp_path / "third", echo=lambda m: None).run()
    assert out["summary"]["steps"] == 30


def test_relative_paths_resolve_against_the_recipe_and_are_saved_resolved(trained, tmp_path):
    text = TOY_RECIPE.replace('[backbone]\nname = "toynet"', '[backbone]\nname = "toynet"\ncheckpoint = '
                              '"first/checkpoints/backbone.pt"\nstrict = false')
    rec = load(tmp_path, "rel", text=text)
    assert rec.backbone.weights.checkpoint == trained / "checkpoints" / "backbone.pt"
    assert rec.backbone.weights.strict is False
    again = recipe.loads(recipe.dumps(rec))
    assert again.backbone.weights == rec.backbone.weights and again.backbone.options == rec.backbone.options


def test_the_classifier_starts_from_a_run_checkpoint(trained, tmp_path):
    last = checkpoint.load(trained / "checkpoints" / "last.pt")
    rec = load(tmp_path, "second", [f'classifier.checkpoint="{trained}/checkpoints/last.pt"'])
    t, lines = started(rec, tmp_path / "second")
    assert torch.equal(t.classifiers["toydata"].weight, last["classifiers"]["toydata"]["weight"])
    assert any(line.startswith("classifier: started from") for line in lines)
    assert "classifier" in recipe.dumps(rec)


def test_strict_refuses_a_backbone_that_does_not_fit(trained, tmp_path):
    rec = load(tmp_path, "second", ["backbone.embedding_size=12",
                                    f'backbone.checkpoint="{trained}/checkpoints/backbone.pt"'])
    with pytest.raises(TrainingError, match=r"^backbone.checkpoint: .*backbone.pt.*shape.*strict = false loads what "
                                             r"fits and lists the rest"):
        Trainer(rec, tmp_path / "second", echo=lambda m: None).run()
    status = json.loads((tmp_path / "second" / "status.json").read_text())
    assert status["status"] == "failed" and status["reason"].startswith("TrainingError: backbone.checkpoint:")


def test_not_strict_loads_what_fits_and_says_what_did_not(trained, tmp_path):
    saved = checkpoint.load(trained / "checkpoints" / "backbone.pt")
    rec = load(tmp_path, "second", ["backbone.embedding_size=12", "backbone.strict=false",
                                    f'backbone.checkpoint="{trained}/checkpoints/backbone.pt"'])
    t, lines = started(rec, tmp_path / "second")
    state = t.backbone.state_dict()
    same = [k for k in saved if saved[k].shape == state[k].shape]
    assert same and all(torch.equal(state[k], saved[k]) for k in same)
    (line,) = [x for x in lines if x.startswith("backbone: started from")]
    assert "with strict = false: loaded" in line and "shape" in line


def test_a_missing_file_is_refused_before_the_run_folder(toy_plugins, tmp_path):
    rec = load(tmp_path, "x", ['backbone.checkpoint="nowhere.pt"', 'classifier.checkpoint="gone.pt"'])
    with pytest.raises(ConfigError) as err:
        Trainer(rec, tmp_path / "run", echo=lambda m: None).run()
    assert f"backbone.checkpoint: no such file: {tmp_path / 'nowhere.pt'}" in str(err.value)
    assert f"classifier.checkpoint: no such file: {tmp_path / 'gone.pt'}" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_the_weight_keys_are_validated(toy_plugins, tmp_path):
    with pytest.raises(ConfigError, match=r"backbone.strict: expected bool"):
        load(tmp_path, "x", ['backbone.strict="yes"'])
    with pytest.raises(ConfigError, match=r"classifier.checkpont: unknown key"):
        load(tmp_path, "x", ['classifier.checkpont="a.pt"'])

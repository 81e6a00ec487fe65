from __future__ import annotations

import json
import math

import pytest
import tomllib
import torch
from torch import nn

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.hooks import hookimpl
from tface.core.train import checkpoint
from tface.core.train.optim import lr_factor, param_groups
from tface.core.train.trainer import Trainer, TrainingError


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    @hookimpl
    def tface_run_start(self, recipe, run_dir, model):
        self.calls.append(("run_start", {"run_dir": run_dir}))

    @hookimpl
    def tface_step_end(self, step, metrics):
        self.calls.append(("step_end", {"step": step, "loss": metrics["loss"]}))

    @hookimpl
    def tface_epoch_end(self, epoch, step):
        self.calls.append(("epoch_end", {"epoch": epoch, "step": step}))

    @hookimpl
    def tface_evaluation_done(self, step, results):
        self.calls.append(("evaluation_done", {"step": step, "n": len(results)}))

    @hookimpl
    def tface_checkpoint_saved(self, step, path):
        self.calls.append(("checkpoint_saved", {"step": step, "path": path}))

    @hookimpl
    def tface_run_end(self, run_dir, step, results):
        self.calls.append(("run_end", {"step": step}))


def toy_recipe(tmp_path, overrides=()):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return recipe.load(path, list(overrides))


def test_short_run_loss_falls_and_writes_the_run_folder(toy_plugins, tmp_path):
    rec = Recorder()
    run_dir = tmp_path / "run"
    out = Trainer(toy_recipe(tmp_path), run_dir, plugins=[rec], echo=lambda m: None).run()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20, 25, 30]
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]
    # 64 samples / batch 16 = 4 steps an epoch (drop_last), so 7 full epochs in 30 steps
    epochs = [c[1]["epoch"] for c in rec.calls if c[0] == "epoch_end"]
    assert epochs == list(range(1, 8))
    names = [c[0] for c in rec.calls]
    assert names[0] == "evaluation_done" and names[1] == "run_start"
    assert names.count("step_end") == 30 and names[-3:] == ["checkpoint_saved", "evaluation_done", "run_end"]
    assert tomllib.loads((run_dir / "recipe.toml").read_text())["head"]["name"] == "toyhead"
    report = json.loads((run_dir / "report.json").read_text())
    assert [(r["stage"], r["step"], r["protocol"]) for r in report["results"]] == [
        ("untrained", 0, "toy"), ("trained", 30, "toy")]
    assert report["summary"]["steps"] == 30 and out["summary"]["steps"] == 30
    assert "| untrained | toy | toy | 0 | 1.0000 |" in (run_dir / "report.md").read_text()
    assert "toy-plugins" in json.loads((run_dir / "plugins.json").read_text())
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 30 and set(state["classifiers"]) == {"toydata"} and "optimizer" in state
    backbone = checkpoint.load(run_dir / "checkpoints" / "backbone.pt")
    assert set(backbone) == set(state["backbone"])
    assert not list((run_dir / "checkpoints").glob("*.tmp"))


def test_lr_schedule_follows_warmup_and_milestones(toy_plugins, tmp_path):
    run_dir = tmp_path / "run"
    Trainer(toy_recipe(tmp_path), run_dir, echo=lambda m: None).run()
    lrs = {m["step"]: m["lr"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    # lr recorded at step k is the one used for update k (0-based k-1)
    assert lrs[5] == pytest.approx(0.1 * (0.1 + 0.9 * 4 / 5))
    assert lrs[20] == pytest.approx(0.1)
    assert lrs[25] == pytest.approx(0.01)


def test_lr_factor_formula():
    assert lr_factor(0, 10, 0.1, [20], 0.1) == pytest.approx(0.1)
    assert lr_factor(5, 10, 0.1, [20], 0.1) == pytest.approx(0.55)
    assert lr_factor(10, 10, 0.1, [20], 0.1) == 1.0
    assert lr_factor(20, 10, 0.1, [20, 30], 0.1) == pytest.approx(0.1)
    assert lr_factor(35, 0, 0.1, [20, 30], 0.5) == pytest.approx(0.25)


def test_no_weight_decay_on_norms_prelu_and_biases():
    class Odd(nn.Module):  # names chosen to fool substring matching
        def __init__(self):
            super().__init__()
            self.bn_conv = nn.Conv2d(3, 4, 3)
            self.features = nn.BatchNorm2d(4)
            self.act = nn.PReLU(4)
            self.fc = nn.Linear(4, 2)
            self.ln = nn.LayerNorm(2)

    m = Odd()
    decay, no_decay = param_groups([m], 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(m.bn_conv.weight), id(m.fc.weight)}
    assert ids(no_decay["params"]) == {id(m.bn_conv.bias), id(m.features.weight), id(m.features.bias),
                                      id(m.act.weight), id(m.fc.bias), id(m.ln.weight), id(m.ln.bias)}


def test_nan_loss_stops_with_the_step(toy_plugins, tmp_path):
    # step 1 is finite; its update with lr 1e30 destroys the weights, so step 2 is the one named
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at step 2 "):
        Trainer(toy_recipe(tmp_path, ["train.lr=1e30", "train.warmup_steps=0", "head.s=1e30"]),
                tmp_path / "run", echo=lambda m: None).run()


def test_batch_larger_than_data(toy_plugins, tmp_path):
    with pytest.raises(TrainingError,
                       match="train.batch_size = 1000 but the data set of branch 'toydata' has only 64 samples"):
        Trainer(toy_recipe(tmp_path, ["train.batch_size=1000"]), tmp_path / "run", echo=lambda m: None).run()


def test_images_of_another_size_than_the_backbone_input_are_refused_before_training(toy_plugins, tmp_path):
    rec = Recorder()
    with pytest.raises(TrainingError) as info:
        Trainer(toy_recipe(tmp_path, ["data.side=12"]), tmp_path / "run", plugins=[rec], echo=lambda m: None).run()
    message = str(info.value)
    assert "data branch 'toydata': its images are 12×12" in message
    assert "backbone 'toynet' takes 16×16 inputs (backbone.input_size = 16)" in message
    assert not [c for c in rec.calls if c[0] in ("step_end", "evaluation_done")]  # nothing ran
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "failed"


def test_misspelled_hook_is_an_error(toy_plugins, tmp_path):
    class Typo:
        @hookimpl
        def tface_step_ends(self, step):
            pass

    from tface.core.hooks import HookPluginError

    with pytest.raises(HookPluginError, match="tface_step_ends"):
        Trainer(toy_recipe(tmp_path), tmp_path / "run", plugins=[Typo()])


def test_hook_plugins_from_entry_points(site, toy_plugins, tmp_path):
    mod = f"hookplug_{tmp_path.name}"
    site("hook-dist", {"tface.plugins": {"recorder": mod}}, {f"{mod}.py": '''
        from tface.core.hooks import hookimpl
        STEPS = []

        @hookimpl
        def tface_step_end(step):
            STEPS.append(step)
    '''})
    Trainer(toy_recipe(tmp_path, ["train.max_steps=3"]), tmp_path / "run", echo=lambda m: None).run()
    import sys

    assert sys.modules[mod].STEPS == [1, 2, 3]


def test_checkpoint_is_loaded_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (math.sqrt, (4.0,))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        checkpoint.load(path)

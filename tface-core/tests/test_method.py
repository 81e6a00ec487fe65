"""``[method]`` and the ``tface.methods`` group: the default method, a plugin method with its own modules and a
frozen teacher named by a component reference (checked at load, built, saved, resumed)."""

from __future__ import annotations

import textwrap

import attrs
import pytest
import torch
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import recipe, registry
from tface.core.cli import cli
from tface.core.config import ConfigError
from tface.core.reference import BackboneRef
from tface.core.train import checkpoint
from tface.core.train import state as state_mod
from tface.core.train.components import build_components
from tface.core.train.errors import TrainingError
from tface.core.train.setup import build_training
from tface.core.train.trainer import Trainer

# A toy method: margin-softmax plus a pull of a projection of the student's embeddings towards a frozen
# teacher's (a distillation term), to exercise every part of the method contract.
DISTIL = '''
    from torch import nn

    from tface.core.config import options
    from tface.core.method import MethodParts, TrainingMethod
    from tface.core.reference import BackboneRef
    from tface.core.train.marginsoftmax import MarginSoftmax, TrainModule


    class Pull(nn.Module):
        def __init__(self, base, teacher, proj, weight):
            super().__init__()
            self.base, self.teacher, self.proj, self.weight = base, teacher, proj, weight

        def forward(self, images, batch):
            out = self.base(images, batch)
            pull = (self.proj(self.base.backbone(images)) - self.teacher(images)).pow(2).mean()
            return [(loss + self.weight * pull, *rest) for loss, *rest in out]


    @options
    class Distil(TrainingMethod):
        def __init__(self, teacher: BackboneRef, weight: float = 1.0):
            self.teacher, self.weight = teacher, weight

        def build(self, ctx):
            parts = MarginSoftmax().build(ctx)
            parts.modules["teacher"] = self.teacher.build("method.teacher", ctx.echo)
            parts.modules["proj"] = nn.Linear(ctx.embedding_size, ctx.embedding_size)
            return parts

        def train_module(self, setup):
            base = MarginSoftmax().train_module(setup)
            return Pull(base, setup.method_modules["teacher"], setup.method_modules["proj"], self.weight)
'''


@pytest.fixture
def distil(toy_plugins, site, tmp_path):
    module = f"distil_{tmp_path.name.replace('-', '_')}"
    site("toy-distil", {"tface.methods": {"distil": f"{module}:Distil"}},
         {f"{module}.py": textwrap.dedent(DISTIL)})
    return module


def write(tmp_path, text):
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def teacher_file(tmp_path, seed=3):
    """A toy backbone's weights, as a trained teacher would be saved."""
    torch.manual_seed(seed)
    net = registry.get("backbones", "toynet")(embedding_size=8)
    with torch.no_grad():
        net.net[3].running_mean.uniform_(-1, 1)  # BatchNorm statistics a frozen teacher must keep
    path = tmp_path / "teacher.pt"
    torch.save(net.state_dict(), path)
    return path, {k: v.clone() for k, v in net.state_dict().items()}


METHOD = '''
[method]
name = "distil"
weight = 0.5
teacher = { name = "toynet", embedding_size = 8, checkpoint = "teacher.pt", frozen = true }
'''


def test_the_default_method_is_margin_softmax(toy_plugins, tmp_path):
    r = recipe.load(write(tmp_path, TOY_RECIPE))
    assert r.method.name == "margin_softmax" and r.method.options == {}
    assert "[method]" not in recipe.dumps(r)  # the default is not written out
    named = recipe.load(write(tmp_path, TOY_RECIPE + '\n[method]\nname = "margin_softmax"\n'))
    assert named == r
    assert {e.name: e.distribution for e in registry.entries("methods")}["margin_softmax"] == "tface-core"  # a plugin
    parts = build_components(r)
    assert type(parts.method).__name__ == "MarginSoftmax" and not any(line.startswith("method") for line in
                                                                       parts.describe())


def test_a_method_and_its_references_are_checked_when_the_recipe_loads(distil, tmp_path):
    teacher_file(tmp_path)
    r = recipe.load(write(tmp_path, TOY_RECIPE + METHOD))
    ref = r.method.options["teacher"]
    assert isinstance(ref, BackboneRef) and ref.frozen and ref.options == {"embedding_size": 8}
    assert ref.checkpoint == (tmp_path / "teacher.pt").resolve()  # relative to the recipe's folder
    dumped = recipe.dumps(r)
    assert recipe.loads(dumped, base=tmp_path) == attrs.evolve(r, source=None)  # reads back to the same
    assert 'name = "distil"' in dumped and "frozen = true" in dumped
    bad = [
        ('name = "nope"', "method.name: unknown method 'nope'"),
        ('name = "distil"\nweight = "x"\nteacher = { name = "toynet" }', "method.weight: expected float"),
        ('name = "distil"', "method.teacher: required key is missing"),
        ('name = "distil"\nteacher = { name = "resnet_9000" }', "method.teacher.name: unknown backbone 'resnet_9000'"),
        ('name = "distil"\nteacher = { name = "toynet", embedding_size = "x" }',
         "method.teacher.embedding_size: expected int"),
        ('name = "distil"\nteacher = { name = "toynet", frozen = 1 }', "method.teacher.frozen: expected true or false"),
        ('name = "distil"\nteacher = "toynet"', "method.teacher: expected a table naming a backbone"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError) as err:
            recipe.load(write(tmp_path, TOY_RECIPE + f"\n[method]\n{table}\n"))
        assert any(f": {message}" in p for p in err.value.problems), (table, err.value.problems)


def test_a_missing_teacher_file_stops_the_run_before_the_run_folder(distil, tmp_path):
    res = CliRunner().invoke(cli, ["run", str(write(tmp_path, TOY_RECIPE + METHOD)), "--output-dir",
                                   str(tmp_path / "run")])
    assert res.exit_code != 0
    assert f"method.teacher.checkpoint: no such file: {(tmp_path / 'teacher.pt').resolve()}" in res.output
    assert not (tmp_path / "run").exists()


def test_a_plugin_method_trains_saves_and_resumes_its_modules(distil, tmp_path):
    _, teacher = teacher_file(tmp_path)
    path = write(tmp_path, TOY_RECIPE + METHOD)
    parts = build_components(recipe.load(path))
    assert "method    distil: Distil(teacher=BackboneRef(name='toynet'" in "\n".join(parts.describe())

    def run(out, steps, resume=False):
        rec = recipe.load(path, [f"train.max_steps={steps}", "train.log_every=3"])
        Trainer(rec, out, resume=resume, echo=lambda m: None).run()
        return checkpoint.load(out / "checkpoints" / "last.pt")

    full = run(tmp_path / "full", 6)
    saved = full["method"]
    assert set(saved) == {"teacher", "proj"}
    # the teacher is frozen: its weights and BatchNorm statistics are the file's after 6 training steps
    assert {k.removeprefix("module."): v for k, v in saved["teacher"].items()}.keys() == teacher.keys()
    assert all(torch.equal(saved["teacher"][f"module.{k}"], v) for k, v in teacher.items())
    # the projection is trained with the backbone: it moves from step 3 to step 6
    first = run(tmp_path / "half", 3)
    assert not all(torch.equal(first["method"]["proj"][k], saved["proj"][k]) for k in saved["proj"])
    resumed = run(tmp_path / "half", 6, resume=True)
    for part in ("backbone",):
        assert all(torch.equal(resumed[part][k], full[part][k]) for k in full[part])
    for name in saved:
        assert all(torch.equal(resumed["method"][name][k], saved[name][k]) for k in saved[name])


def test_a_checkpoint_of_another_method_is_refused_on_resume(distil, tmp_path):
    """The trainer refuses a changed recipe before this; the restore itself names the modules too."""
    teacher_file(tmp_path)
    out = tmp_path / "run"
    Trainer(recipe.load(write(tmp_path, TOY_RECIPE), ["train.max_steps=2"]), out, echo=lambda m: None).run()
    state = checkpoint.load(out / "checkpoints" / "last.pt")
    assert state["method"] == {}
    other = recipe.load(write(tmp_path, TOY_RECIPE + METHOD), ["train.max_steps=2"])
    setup = build_training(other, build_components(other), torch.device("cpu"), echo=lambda m: None)
    with pytest.raises(TrainingError, match=r"the checkpoint's method modules \(none\) are not this run's "
                                            r"\(proj, teacher\)"):
        state_mod.restore(setup, state)

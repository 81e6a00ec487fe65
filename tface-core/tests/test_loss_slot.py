"""The ``[[loss]]`` and ``[classifier]`` recipe tables: validation, dumps, and what a step computes from them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.classifier import Classifier, MarginHead
from tface.core.config import ConfigError
from tface.core.data.branches import MultiBatch
from tface.core.train.engine import TrainModule
from tface.core.train.trainer import Trainer

LOSS_MODULE = '''
import attrs
import torch
from torch import nn

from tface.core.losses import ClassificationLoss, EmbeddingLoss


class Doubled(ClassificationLoss):
    """2 × the mean nll: a classification loss whose value is easy to check."""

    def forward(self, nll):
        return 2.0 * nll.mean()


class Pull(EmbeddingLoss):
    """Mean squared distance of each embedding to its label's mean in the batch."""

    @attrs.define
    class Config:
        scale: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, embeddings, labels):
        total = embeddings.new_zeros(())
        for y in labels.unique():
            e = embeddings[labels == y]
            total = total + ((e - e.mean(0)) ** 2).sum()
        return self.scale * total / len(labels)


class Pairs(nn.Module):
    takes = "pairs"

    def forward(self, neg, pos):
        return neg.mean() - pos.mean()
'''


@pytest.fixture
def toy_losses(site, toy_plugins, tmp_path):
    module = f"toyloss_{tmp_path.name.replace('-', '_')}"
    site("toy-losses", {"tface.losses": {"doubled": f"{module}:Doubled", "pull": f"{module}:Pull",
                                         "pairs": f"{module}:Pairs"}}, {f"{module}.py": LOSS_MODULE})
    return module


def loads(extra: str = "", sets=()):
    return recipe.loads(TOY_RECIPE + extra, list(sets))


def problems(text: str, sets=()) -> str:
    with pytest.raises(ConfigError) as info:
        recipe.loads(text, list(sets))
    return str(info.value)


def test_without_loss_tables_the_classifier_softmax_is_the_objective(toy_losses):
    r = loads()
    assert r.loss == [] and r.uses_classifier and r.classifier.mode == "local"
    dumped = recipe.dumps(r)
    assert "[[loss]]" not in dumped and "[classifier]" not in dumped  # a default recipe dumps neither


def test_loss_tables_are_read_weighted_and_dumped(toy_losses):
    r = loads('\n[[loss]]\nname = "doubled"\nweight = 0.5\n\n[[loss]]\nname = "pull"\nscale = 3.0\n')
    assert [(t.component.name, t.weight, t.takes) for t in r.loss] == [("doubled", 0.5, "nll"),
                                                                         ("pull", 1.0, "embeddings")]
    assert r.loss[1].component.options == {"scale": 3.0}
    again = recipe.loads(recipe.dumps(r))
    assert [t.to_table() for t in again.loss] == [t.to_table() for t in r.loss]


@pytest.mark.parametrize("extra,message", [
    ('\n[[loss]]\nname = "doubled"\n\n[[loss]]\nname = "doubled"\n',
     "loss: 2 classification losses (doubled, doubled); a branch has one classifier, so list at most one"),
    ('\n[[loss]]\nname = "pairs"\n', "loss[0].name: loss 'pairs' takes 'pairs', not a classifier's nll or "
                                       "embeddings: a training method uses it, not [[loss]]"),
    ('\n[[loss]]\nname = "pull"\nweight = -1\n', "loss[0].weight: expected a number >= 0, got -1"),
    ('\n[[loss]]\nname = "pull"\nscale = 0\n', "loss[0].scale"),
    ('\n[[loss]]\nname = "nosuchloss"\n', "loss[0].name: unknown loss 'nosuchloss'"),
    ("loss = 3", "loss: expected an array of tables ([[loss]])"),
    ('\n[[loss]]\nname = "pull"\n', "head: the [[loss]] tables hold no classification loss"),
    ('\n[classifier]\nmode = "ring"\n', "classifier.mode"),
    ('\n[classifier]\nsample_rate = 0.5\n',
     'classifier.sample_rate: only used with mode = "sampled" (mode is "local")'),
    ('\n[classifier]\nmode = "sampled"\nsample_rate = 0\n', "classifier.sample_rate: must lie in (0, 1], got 0"),
    ('\n[classifier]\nmode = "sampled"\n', 'classifier.mode = "sampled" draws new negatives every micro-batch'),
])
def test_bad_tables_are_refused_naming_the_key(toy_losses, extra, message):
    text = extra + "\n" + TOY_RECIPE if extra == "loss = 3" else TOY_RECIPE + extra
    sets = ["train.accumulate=2"] if "draws new" in message else []
    assert message in problems(text, sets)


def test_embedding_losses_alone_need_no_head(toy_losses):
    text = TOY_RECIPE.replace('[head]\nname = "toyhead"\ns = 8.0\n', "") + '\n[[loss]]\nname = "pull"\n'
    r = recipe.loads(text)
    assert r.head is None and not r.uses_classifier
    assert "[head]" not in recipe.dumps(r)
    assert "head: required table is missing" in problems(TOY_RECIPE.replace('[head]\nname = "toyhead"\ns = 8.0\n', ""))


def test_classifier_table_modes_are_dumped(toy_losses):
    r = loads('\n[classifier]\nmode = "sampled"\nsample_rate = 0.25\ninit_std = 0.02\n')
    assert (r.classifier.mode, r.classifier.sample_rate, r.classifier.init_std) == ("sampled", 0.25, 0.02)
    again = recipe.loads(recipe.dumps(r))
    assert again.classifier == r.classifier


class _Margin(MarginHead):
    def forward(self, b):
        rows, cols, t = b.local_targets()
        return b.with_targets(rows, cols, t - 0.2) * 8


class _Pull(nn.Module):
    takes = "embeddings"

    def forward(self, embeddings, labels):
        return (embeddings ** 2).mean()


def test_a_branch_loss_is_the_weighted_sum_of_its_terms():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    classifiers = nn.ModuleDict({"a": Classifier(5, 4, _Margin(), seed=1), "b": Classifier(3, 4, _Margin(), seed=2)})
    module = TrainModule(backbone, classifiers, embedding_losses=[(_Pull(), 3.0)], classifier_weight=0.5)
    images = torch.randn(7, 3, 2, 2)
    labels = (torch.tensor([0, 4, 2, 1]), torch.tensor([2, 0, 1]))
    out = module(images, MultiBatch(images, labels, ("a", "b"), (4, 3)))
    emb = backbone(images)
    for (loss, correct, rows, scored), e, y, name in zip(out, emb.split([4, 3]), labels, "ab"):
        clf = classifiers[name]
        logits = clf.head(clf.head_input(e, y))
        want = 0.5 * torch.nn.functional.cross_entropy(logits, y) + 3.0 * (e ** 2).mean()
        assert torch.allclose(loss, want, atol=1e-6) and rows == scored == len(y)
        assert correct == int((clf.head_input(e, y).cos.argmax(1) == y).sum())


def test_a_classification_loss_from_the_recipe_replaces_the_mean(toy_losses, tmp_path):
    runs = {}
    for name, extra in (("mean", ""), ("doubled", '\n[[loss]]\nname = "doubled"\n')):
        run = tmp_path / name
        Trainer(loads(extra, ["train.max_steps=1", "train.log_every=1"]), run, echo=lambda m: None).run()
        runs[name] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the same first step (same data and weights), its loss doubled
    assert runs["doubled"][0]["loss"] == pytest.approx(2 * runs["mean"][0]["loss"], rel=1e-6)


def test_embedding_losses_train_without_a_classifier(toy_losses, tmp_path):
    text = TOY_RECIPE.replace('[head]\nname = "toyhead"\ns = 8.0\n', "") + '\n[[loss]]\nname = "pull"\n'
    run = tmp_path / "run"
    trainer = Trainer(recipe.loads(text, ["train.max_steps=10"]), run, echo=lambda m: None)
    trainer.run()
    assert len(trainer.classifiers) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [5, 10] and all("top1" not in m for m in lines)
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert json.loads((run / "status.json").read_text())["status"] == "done"


@pytest.mark.parametrize("mode", ["sharded", "sampled"])
def test_one_process_trains_in_every_mode(toy_losses, tmp_path, mode):
    extra = f'\n[classifier]\nmode = "{mode}"\n' + ("sample_rate = 0.5\n" if mode == "sampled" else "")
    run = tmp_path / mode
    trainer = Trainer(loads(extra, ["train.max_steps=6", "train.checkpoint_every=3"]), run, echo=lambda m: None)
    trainer.run()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    (name,) = state["classifiers"]
    assert state["classifiers"][name]["weight"].shape == (4, 8) and "sub" not in state["classifiers"][name]
    assert state["centres_optimizer"][name]["momentum_buffer"].shape == (4, 8)

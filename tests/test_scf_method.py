"""``[method] name = "scf"`` end to end: a MobileFaceNet trained for a few steps, then SCF on it: the backbone and
the centres stay exactly as loaded, only the uncertainty head trains, and one step's loss is the KL(Dirac ‖ vMF)
written out here with mpmath's Bessel function."""

from __future__ import annotations

import math

import mpmath
import pytest
import torch
from handmade import write_records

from tface.core import evaluate as ev
from tface.core import recipe
from tface.core.attached import CONFIDENCE, attached, with_confidence
from tface.core.backbone import backbone_info, forward_features
from tface.core.train import checkpoint
from tface.core.train.components import build_components
from tface.core.train.engine import StepEngine
from tface.core.train.errors import TrainingError
from tface.core.train.setup import build_training
from tface.core.train.trainer import Trainer
from tface.core.weights import load_into
from tface.methods.vmf import UncertaintyHead

SIDE = 112  # MobileFaceNet's map is 7 x 7 at 112 (TFace's unpadded head)

BASE = f'''
seed = 4
device = "cpu"

[data]
name = "tfrecord"
index = "faces.txt"

[backbone]
name = "mobilefacenet"
embedding_size = 32
input_size = {SIDE}

[head]
name = "arcface"
s = 16.0
m = 0.1

[train]
max_steps = 3
batch_size = 8
lr = 0.05
warmup_steps = 0
log_every = 3
threads = 1
'''

SCF = '''
[method]
name = "scf"
radius = 16.0
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Hand-made records and a (briefly) trained model: ``(root, run folder)``."""
    root = tmp_path_factory.mktemp("scf")
    write_records(root, "faces", identities=4, per_id=6, side=SIDE)
    (root / "base.toml").write_text(BASE)
    Trainer(recipe.load(root / "base.toml"), root / "base", echo=lambda m: None).run()
    return root, root / "base"


def scf_recipe(root, run, *sets):
    path = root / "scf.toml"
    path.write_text(BASE.replace('[train]', f'''[classifier]
checkpoint = "{run / 'checkpoints' / 'last.pt'}"

[train]''').replace('input_size = 112', f'''input_size = 112
checkpoint = "{run / 'checkpoints' / 'backbone.pt'}"''') + SCF)
    return recipe.load(path, ["train.optimizer=\"adamw\"", "train.lr=0.003", "train.weight_decay=0.0", *sets])


def log_iv(v, x):
    return float(mpmath.log(mpmath.besseli(v, x)))


def test_one_step_is_the_vmf_loss_written_out(trained):
    root, run = trained
    rec = scf_recipe(root, run)
    setup = build_training(rec, build_components(rec), torch.device("cpu"), echo=lambda m: None)
    assert [p for p in setup.backbone.parameters() if p.requires_grad] == []
    assert [p for p in setup.classifiers.parameters() if p.requires_grad] == []
    trained_params = {id(p) for p in setup.method_modules.parameters()}
    assert {id(p) for g in setup.optimizer.param_groups for p in g["params"]} == trained_params  # the head only
    batch = next(iter(setup.loader))
    total, _ = StepEngine(setup).forward(batch)
    kappa_of = attached(setup.eval_backbone, CONFIDENCE)  # the run's evaluations see the head as the confidence
    assert kappa_of is not None and kappa_of.head is setup.method_modules["uncertainty"]
    setup.backbone.eval()
    setup.method_modules.eval()  # BatchNorm in eval below: compare with the head in eval too
    with torch.no_grad():
        total, _ = StepEngine(setup).forward(batch)
        emb, features = forward_features(setup.backbone, setup.info.normalize(batch.images))
        kappa = setup.method_modules["uncertainty"](features).exp().double()
        centres = setup.classifiers["tfrecord"].weight[batch.labels[0]].double()
    d, r = emb.shape[1], 16.0
    want = 0.0
    for mu, k, w in zip(emb.double(), kappa.tolist(), centres):
        cos = float(mu @ w / (mu.norm() * w.norm()))
        want += (-k * cos - (d / 2 - 1) * math.log(k) + log_iv(d / 2 - 1, k) + d / 2 * math.log(2 * math.pi)
                 + d * math.log(r))
    want /= len(kappa)
    assert math.isclose(float(total), want, rel_tol=1e-6)


def test_scf_trains_only_the_head(trained, tmp_path):
    root, run = trained
    start = checkpoint.load(run / "checkpoints" / "last.pt")
    out = tmp_path / "scf"
    Trainer(scf_recipe(root, run, "train.max_steps=8", "train.log_every=4"), out, echo=lambda m: None).run()
    end = checkpoint.load(out / "checkpoints" / "last.pt")
    # the frozen model: weights and BatchNorm statistics exactly as loaded
    assert all(torch.equal(end["backbone"][k], v) for k, v in start["backbone"].items())
    assert torch.equal(end["classifiers"]["tfrecord"]["weight"], start["classifiers"]["tfrecord"]["weight"])
    assert set(end["method"]) == {"uncertainty"}
    losses = [float(line.split('"loss": ')[1].split(",")[0])
              for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and losses[1] < losses[0]  # the head learns

    # tface eval --run: a fresh backbone gets the trained head back from last.pt as its confidence
    plan = ev.plan_run(out, protocol="verification")
    model = plan.backbone.build("backbone")
    load_into(model, out / "checkpoints" / "backbone.pt")
    notes = []
    ev._attach_method(plan, model, notes.append)
    assert notes == []
    head = UncertaintyHead(backbone_info(model).feature_channels, 1.0, 1e5)
    head.load_state_dict(end["method"]["uncertainty"])
    x = torch.randn(3, 3, SIDE, SIDE)
    model.eval()
    with torch.no_grad():
        both = with_confidence(model).eval()(x)
        emb, features = forward_features(model, x)
        want = head.eval()(features).exp()
    torch.testing.assert_close(both[:, :-1], emb, rtol=0, atol=0)
    torch.testing.assert_close(both[:, -1], want, rtol=1e-6, atol=0)
    # without last.pt: a note, nothing attached, and a protocol that needs it says so by name
    (out / "checkpoints" / "last.pt").rename(out / "checkpoints" / "moved.pt")
    fresh = plan.backbone.build("backbone")
    ev._attach_method(plan, fresh, notes.append)
    assert len(notes) == 1 and "nothing attached for evaluation" in notes[0] and with_confidence(fresh) is None


def test_scf_refuses_an_untrained_model(trained, tmp_path):
    root, _ = trained
    path = root / "bare.toml"
    path.write_text(BASE + SCF)
    rec = recipe.load(path)
    with pytest.raises(TrainingError, match=r"method scf needs \[backbone\] checkpoint: .*; \[classifier\] "
                                            r"checkpoint: "):
        build_training(rec, build_components(rec), torch.device("cpu"), echo=lambda m: None)

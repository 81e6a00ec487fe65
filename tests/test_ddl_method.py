"""``[method] name = "ddl"`` end to end: single-image and pair branches from hand-written TFRecords, a
MobileFaceNet, the step's loss against the DDL formula recomputed here, training and resume."""

from __future__ import annotations

import math

import pytest
import torch
from handmade import write_records

from tface.core import recipe
from tface.core.train import checkpoint
from tface.core.train.components import build_components
from tface.core.train.engine import StepEngine
from tface.core.train.errors import TrainingError
from tface.core.train.setup import build_training
from tface.core.train.trainer import Trainer
from tface.methods.ddl_loss import hardest_negatives, pair_similarities

SIDE = 64
IDENTITIES = 6
PER_ID = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """easy.txt, hard.txt (single images) and easy_pairs.txt, hard_pairs.txt (two images of one identity)."""
    root = tmp_path_factory.mktemp("ddl")
    for part in ("easy", "hard"):
        rows = write_records(root, part, IDENTITIES, PER_ID, SIDE, hard=part == "hard")
        lines = ["\t".join(map(str, (*rows[i, k], *rows[i, (k + 1) % PER_ID]))) for i in range(IDENTITIES)
                 for k in range(PER_ID)]
        (root / f"{part}_pairs.txt").write_text("\n".join(lines) + "\n")
    return root


RECIPE = f'''
seed = 2
device = "cpu"

[[data]]
name = "tfrecord"
branch = "easy"
index = "easy.txt"

[[data]]
name = "tfrecord"
branch = "hard"
index = "hard.txt"

[[data]]
name = "tfrecord_pairs"
branch = "easy_pairs"
index = "easy_pairs.txt"
batch_size = 6

[[data]]
name = "tfrecord_pairs"
branch = "hard_pairs"
index = "hard_pairs.txt"
batch_size = 6
weight = 3.0

[backbone]
name = "mobilefacenet"
embedding_size = 16
input_size = {SIDE}

[head]
name = "arcface"
s = 8.0
m = 0.1

[method]
name = "ddl"
weight = 2.0
bins = 200

[train]
max_steps = 6
batch_size = 12
lr = 0.05
warmup_steps = 0
log_every = 3
threads = 1
'''


def load(data, *sets):
    path = data / "ddl.toml"
    path.write_text(RECIPE)
    return recipe.load(path, list(sets))


def test_one_step_is_the_classifiers_plus_the_ddl_formula(data):
    rec = load(data)
    setup = build_training(rec, build_components(rec), torch.device("cpu"), echo=lambda m: None)
    assert set(setup.classifiers) == {"easy", "hard"}  # no classifier for the pair branches
    batch = next(iter(setup.loader))
    assert batch.pairs == (False, False, True, True) and batch.sizes == (12, 12, 12, 12)
    assert [len(y) for y in batch.labels] == [12, 12, 6, 6]
    engine = StepEngine(setup)
    setup.backbone.eval()  # BatchNorm in eval: the reference below sees the same embeddings
    for c in setup.classifiers.values():
        c.eval()
    with torch.no_grad():
        total, stats = engine.forward(batch)
        emb = setup.backbone(setup.info.normalize(batch.images)).float()
        easy, hard, easy_pairs, hard_pairs = batch.split(emb)
        ce = [setup.classifiers[n](e, y).loss for n, e, y in zip(("easy", "hard"), (easy, hard), batch.labels)]
        # the DDL formula written out: KL of soft histograms (teacher = branch 0) + the order term
        grid = torch.arange(200, dtype=torch.float32) / 200

        def hist(v):
            h = torch.exp(-0.5 * ((v[:, None] - grid[None, :]) / 0.1) ** 2).sum(0)
            return h / h.sum()

        def kl(p, q):
            return (p * (torch.log(p + 1e-9) - torch.log(q + 1e-9))).sum()

        neg = [hardest_negatives(e, y) for e, y in zip((easy, hard), batch.labels[:2])]
        pos = [pair_similarities(p[0::2], p[1::2]) for p in (easy_pairs, hard_pairs)]
        pos = [p[p > 0.0] for p in pos]
        ddl = 0.1 * kl(hist(pos[0]), hist(pos[1])) + 0.02 * kl(hist(neg[0]), hist(neg[1]))
        ddl = ddl + 0.5 * sum(n.mean() - p.mean() for n in neg for p in pos)
    want = ce[0] + ce[1] + 2.0 * ddl  # branch weights 1 for the single-image branches
    assert math.isclose(float(total), float(want), rel_tol=1e-4)
    # each pair branch logs the DDL term; their weighted sum is 2 · DDL (weights 1 and 3)
    assert math.isclose(stats["easy_pairs"][0], float(2.0 * ddl / 4.0), rel_tol=1e-4)
    assert stats["easy_pairs"][1:] == (0, 12, 0) and stats["easy"][2:] == (12, 12)


def test_ddl_trains_and_resumes(data, tmp_path):
    def run(out, steps, resume=False):
        Trainer(load(data, f"train.max_steps={steps}"), out, resume=resume, echo=lambda m: None).run()
        return checkpoint.load(out / "checkpoints" / "last.pt")

    full = run(tmp_path / "full", 6)
    assert set(full["classifiers"]) == {"easy", "hard"}
    run(tmp_path / "half", 3)
    resumed = run(tmp_path / "half", 6, resume=True)
    assert all(torch.equal(resumed["backbone"][k], v) for k, v in full["backbone"].items())
    metrics = (tmp_path / "full" / "metrics.jsonl").read_text()
    assert "hard_pairs" in metrics and "easy" in metrics


@pytest.mark.parametrize(("sets", "message"), [
    (['data=[{name="tfrecord", index="easy.txt"}, {name="tfrecord_pairs", index="easy_pairs.txt"}]'],
     "method ddl needs as many single-image branches as pair branches, at least 2 of each"),
    (['method={name="margin_softmax"}'], "yields image pairs, which margin_softmax does not train on"),
])
def test_unusable_data_is_refused(data, sets, message):
    rec = load(data, *sets)
    with pytest.raises(TrainingError, match=message):
        build_training(rec, build_components(rec), torch.device("cpu"), echo=lambda m: None)

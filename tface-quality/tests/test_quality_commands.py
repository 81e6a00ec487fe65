"""``tface quality score`` (one line per image, from a run folder or from files; a bad image named) and ``tface quality
labels`` (SDD-FIQA pseudo labels of an identity folder, written for the quality_list source)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import qualitytoys
import torch
from click.testing import CliRunner
from qualitytoys import quality_data, write_faces

from tface.core import recipe, registry
from tface.core.cli import cli
from tface.core.data.image import decode_rgb
from tface.core.train.trainer import Trainer
from tface.quality.head import embeddings, load_quality_head, quality_scores
from tface.quality.pseudo import pseudo_labels
from tface.quality.source import read_quality_list

toys = qualitytoys.toys  # the fixture (no conftest.py here: see qualitytoys.toys)


@pytest.fixture(scope="module")
def run(toys, tmp_path_factory):
    root = tmp_path_factory.mktemp("cmds")
    files, _ = quality_data(root, toys)
    Trainer(recipe.load(root / "recipe.toml", ["train.max_steps=3"]), root / "run", echo=lambda m: None).run()
    return root, root / "run", files


def invoke(*args):
    return CliRunner().invoke(cli, ["quality", *map(str, args)])


def test_score_prints_one_line_per_image(run):
    root, run_dir, files = run
    last = run_dir / "checkpoints" / "last.pt"
    model = registry.get("backbones", "qtoynet")()
    model.load_state_dict(torch.load(last, weights_only=True)["backbone"])
    want = quality_scores(model, load_quality_head(last, 8), [decode_rgb(f.read_bytes()) for f in files[:5]])
    res = invoke("score", *files[:5], "--run", run_dir, "--device", "cpu", "--batch-size", 2)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(f) for f in files[:5]]
    assert [float(line.split("\t")[1]) for line in lines] == pytest.approx(want.tolist(), abs=5e-5)
    # the same model named by files: the run checkpoint holds the backbone and the head
    res2 = invoke("score", *files[:5], "--backbone", "qtoynet", "--checkpoint", last, "--device", "cpu")
    assert res2.exit_code == 0 and res2.output == res.output


def test_score_fails_clearly(run, tmp_path):
    root, run_dir, files = run
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    res = invoke("score", files[0], bad, "--run", run_dir, "--device", "cpu")
    assert res.exit_code == 1 and f"Error: {bad}: cannot decode image" in res.output
    res = invoke("score", files[0], "--backbone", "qtoynet", "--checkpoint", root / "toynet.pt", "--device", "cpu")
    assert res.exit_code == 1 and "no quality head in it" in res.output and "(give the head's file with --head)" \
        in res.output
    res = invoke("score", files[0], "--device", "cpu")
    assert res.exit_code == 1 and "--run RUN_DIR, or --backbone NAME with --checkpoint FILE" in res.output
    res = invoke("score", files[0], "--run", tmp_path, "--device", "cpu")  # a folder without a run
    assert res.exit_code == 1 and "no recipe.toml" in res.output
    res = invoke("score", files[0], "--run", root, "--device", "cpu")  # a recipe, but no checkpoint yet
    assert res.exit_code == 1 and f"{root / 'checkpoints' / 'last.pt'}: no such file" in res.output


def test_labels_writes_what_quality_list_reads(run, tmp_path):
    root, _, _ = run
    folder = tmp_path / "ids"
    for i in range(4):
        write_faces(folder / f"id{i}", 5, seed=i)
    out = tmp_path / "labels.txt"
    args = ["labels", folder, "--recognizer", "qtoynet", "--checkpoint", root / "toynet.pt", "--out", out, "--k", 3,
            "--rounds", 2, "--device", "cpu"]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert f"wrote {out}: 20 labels" in res.output
    images, scores = read_quality_list(out)
    assert images.paths == tuple(str(p) for p in sorted(folder.rglob("*.png")))
    model = registry.get("backbones", "qtoynet")()
    model.load_state_dict(torch.load(root / "toynet.pt", weights_only=True))
    feats = embeddings(model, [decode_rgb(Path(p).read_bytes()) for p in images.paths])
    want = pseudo_labels(feats, torch.arange(4).repeat_interleave(5), k=3, rounds=2, seed=0)
    assert np.allclose(scores, want.numpy(), atol=5e-7)
    res = invoke(*args)
    assert res.exit_code == 1 and f"--out {out} exists; pass --overwrite to replace it" in res.output
    assert invoke(*args, "--overwrite").exit_code == 0

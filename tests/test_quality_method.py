"""SDD-FIQA end to end with every distribution installed: the shipped ``recipes/methods/sdd_fiqa.toml`` (a real
MobileFaceNet, tface-augment's flip, a tface-heads head it does not use) fine-tunes a quality model on hand-made
faces, evaluates it with the ``evrc`` protocol, and ``tface quality score`` reads the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner
from handmade import face

from tface.core import registry
from tface.core.cli import cli
from tface.core.data.binfile import write_bin

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "methods" / "sdd_fiqa.toml"
SIDE = 64  # MobileFaceNet at 64: a 4 x 4 map, pooled to the head's 7 x 7


def test_the_sdd_fiqa_recipe_trains_evaluates_and_scores(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    lines = []
    for i in range(4):
        for k in range(4):
            p = faces / f"{i}_{k}.jpg"
            p.write_bytes(face(i, k, SIDE, hard=k % 2 == 1))
            lines.append(f"{p}\t{30.0 if k % 2 else 80.0:.3f}")  # the hard photos are the poor ones
    (tmp_path / "q.txt").write_text("\n".join(lines) + "\n")
    torch.manual_seed(0)
    net = registry.get("backbones", "mobilefacenet")(embedding_size=64, input_size=SIDE)
    torch.save(net.state_dict(), tmp_path / "mfn.pt")
    pairs = [(face(i, 0, SIDE), face(i if p % 2 == 0 else (i + 1) % 4, 1, SIDE, hard=p >= 4))
             for p, i in enumerate([0, 1, 2, 3, 0, 1, 2, 3])]
    write_bin(tmp_path / "pairs.bin", [b for pair in pairs for b in pair], [p % 2 == 0 for p in range(8)])
    out = tmp_path / "run"
    sets = [f'data.list="{tmp_path / "q.txt"}"', f"data.image_size={SIDE}", f"backbone.input_size={SIDE}",
            "backbone.embedding_size=64", f'backbone.checkpoint="{tmp_path / "mfn.pt"}"', "train.max_steps=2",
            "train.batch_size=8", "train.num_workers=0", "train.log_every=1", "train.threads=1",
            f'eval.0.bins=["{tmp_path / "pairs.bin"}"]', "eval.0.fmrs=[0.25]", "eval.0.max_ratio=0.25",
            f'eval.0.recognizer={{name="mobilefacenet", embedding_size=64, input_size={SIDE}, '
            f'checkpoint="{tmp_path / "mfn.pt"}"}}']
    args = ["run", str(RECIPE), "--device", "cpu", "--output-dir", str(out)]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    [row] = json.loads((out / "report.json").read_text())["results"]
    assert (row["protocol"], row["dataset"], row["stage"], row["pairs"]) == ("evrc", "pairs", "trained", 8)
    assert 0.0 <= row["aoc@fmr=0.25"] <= 1.0 and row["aoc"] == row["aoc@fmr=0.25"]
    assert (out / "evrc-evrc-pairs.png").read_bytes()[:4] == b"\x89PNG"  # drawn into the run folder by core
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["method"]["quality"]["quality.3.weight"].shape == (1, 512 * 49)  # 512 channels x 7 x 7
    assert not torch.equal(state["backbone"]["conv1.conv.weight"], net.state_dict()["conv1.conv.weight"])

    res = CliRunner().invoke(cli, ["quality", "score", str(faces / "0_0.jpg"), str(faces / "0_1.jpg"), "--run",
                                   str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert [line.split("\t")[0] for line in res.output.splitlines()] == [str(faces / "0_0.jpg"),
                                                                        str(faces / "0_1.jpg")]

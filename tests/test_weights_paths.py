"""One weights reader for every command: a file `tface export onnx` loads, `tface eval` loads, and back.

Before issue 10, `tface eval` (tface.core.evaluate) refused `_orig_mod.` inside keys and `model_state_dict`/`net`
nesting, and tface-backbones' loader (behind `tface export onnx` and `load_backbone`) took `model` before
`backbone`, so it refused a file holding both that `tface eval` loaded. Each file below was refused by one of them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tface.backbones.checkpoint import load_backbone
from tface.backbones.mobilefacenet import mobilefacenet
from tface.core.cli import cli
from tface.core.data.binfile import write_bin

EMB = 32
LAYOUTS = {
    "inner-compile": lambda sd: {k.replace("output_layer.", "output_layer._orig_mod."): v for k, v in sd.items()},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "epoch": 2},
    "net": lambda sd: {"net": {f"module.{k}": v for k, v in sd.items()}},
    "model+backbone": lambda sd: {"model": {"head.kernel": torch.zeros(2, 2)}, "backbone": sd, "step": 5},
}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    net = mobilefacenet(embedding_size=EMB)
    with torch.no_grad():  # not the initial values, so a load is visible
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return net.eval()


def pairs_bin(path: Path) -> Path:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(20):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    return write_bin(path, images, [i % 2 == 0 for i in range(10)])


def evaluate(ckpt: Path, bins: Path, out: Path) -> dict:
    res = CliRunner().invoke(cli, ["eval", "verification", "--backbone", "mobilefacenet", "--backbone-option",
                                   f"embedding_size={EMB}", "--checkpoint", str(ckpt), "--option", f'bins=["{bins}"]',
                                   "--option", "flip=false", "--device", "cpu", "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    (result,) = json.loads((out / "eval-report.json").read_text())["results"]
    return result


@pytest.fixture(scope="module")
def reference(model, tmp_path_factory) -> tuple[Path, dict]:
    """A small pair file and the evaluation of the plain state_dict on it."""
    tmp = tmp_path_factory.mktemp("weights-paths")
    bins = pairs_bin(tmp / "pairs.bin")
    torch.save(model.state_dict(), tmp / "plain.pt")
    return bins, evaluate(tmp / "plain.pt", bins, tmp / "eval-plain")


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_eval_and_the_backbones_loader_accept_the_same_files(layout, model, reference, tmp_path: Path) -> None:
    ckpt = tmp_path / f"{layout}.pt"
    torch.save(LAYOUTS[layout](model.state_dict()), ckpt)
    loaded = load_backbone("mobilefacenet", ckpt, embedding_size=EMB)  # the loader behind `tface export onnx`
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    if layout in ("inner-compile", "model+backbone"):  # one file each former reader refused (eval is slow on CPU)
        bins, want = reference
        got = evaluate(ckpt, bins, tmp_path / "eval")
        for key in ("accuracy", "xnorm", "best_threshold"):  # the same weights gave the same embeddings
            assert got[key] == want[key], key

"""TFace's task configs as recipes (recipes/tface/): they validate and build with every built-in component.

Their data paths are placeholders, so the test points them at a hand-made index, folder and .bin files
(``--dry-run`` checks that inputs exist, it reads none).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from tface.core.cli import cli

ROOT = Path(__file__).resolve().parents[1] / "recipes" / "tface"

# recipe file -> (backbone, head, classifier mode, max steps, milestones); TFace's epochs as steps at 8 x 64
EXPECTED = {
    "distfc_ir18_curricularface.toml": ("ir_18", "curricularface", "sharded", 295698, [113730, 204714, 272952]),
    "localfc_ir50_cosface.toml": ("ir_50", "cosface", None, 667640, [267056, 467348, 600876]),
    "cifp_ir34.toml": ("ir_34", "cifp", None, 114300, [50800, 81280, 91440]),
}


def test_every_tface_recipe_is_tested():
    assert sorted(p.name for p in ROOT.glob("*.toml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tface_recipe_dry_run(tmp_path, name):
    index = tmp_path / "index.txt"
    index.write_text("")
    (tmp_path / "tfr").mkdir()
    bins = [tmp_path / f"{n}.bin" for n in ("lfw", "cfp_fp", "agedb_30")]
    for b in bins:
        b.write_bytes(b"")
    sets = [f'data.index="{index}"', f'data.root="{tmp_path / "tfr"}"',
            "data.bins=[" + ", ".join(f'"{b}"' for b in bins) + "]"]
    args = ["run", str(ROOT / name), "--dry-run"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text, _, comps = res.output.partition("# components")
    data = tomllib.loads(text)
    backbone, head, mode, steps, milestones = EXPECTED[name]
    assert (data["backbone"]["name"], data["head"]["name"]) == (backbone, head)
    assert data.get("classifier", {}).get("mode") == mode  # a local classifier is the default: not dumped
    assert (data["train"]["max_steps"], data["train"]["lr_milestones"]) == (steps, milestones)
    assert (data["train"]["batch_size"], data["train"]["lr"], data["train"]["precision"]) == (64, 0.1, "fp16")
    assert data["head"]["s"] == 64.0 and data["seed"] == 1337
    assert f"head      {head}" in comps


def test_placeholders_are_reported_as_missing_inputs():
    res = CliRunner().invoke(cli, ["run", str(ROOT / "cifp_ir34.toml"), "--dry-run"])
    assert res.exit_code != 0
    assert "data.index: /data/TFace/index/TFR-RFW_EqualizedFace_112_shuf.txt does not exist" in res.output

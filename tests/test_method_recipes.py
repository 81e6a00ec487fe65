"""The method recipes (recipes/methods/): they validate and build with every built-in component.

Their data paths are placeholders, so the test points them at hand-made empty files (``--dry-run`` checks
that inputs exist, it reads none).
"""

from __future__ import annotations

from pathlib import Path

import tomllib
from click.testing import CliRunner

from tface.core.cli import cli

ROOT = Path(__file__).resolve().parents[1] / "recipes" / "methods"


def test_every_method_recipe_is_tested():
    assert sorted(p.name for p in ROOT.glob("*.toml")) == ["ddl.toml", "scf.toml"]


def test_ddl_recipe_dry_run(tmp_path):
    (tmp_path / "tfr").mkdir()
    sets = [f'data.{i}.root="{tmp_path / "tfr"}"' for i in range(4)]
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text("")
        sets.append(f'data.{i}.index="{tmp_path / f"{i}.txt"}"')
    (tmp_path / "backbone.pt").write_bytes(b"")
    sets.append(f'backbone.checkpoint="{tmp_path / "backbone.pt"}"')
    args = ["run", str(ROOT / "ddl.toml"), "--dry-run"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text, _, comps = res.output.partition("# components")
    data = tomllib.loads(text)
    assert [d["name"] for d in data["data"]] == ["tfrecord", "tfrecord", "tfrecord_pairs", "tfrecord_pairs"]
    assert [d["branch"] for d in data["data"]] == ["easy", "hard", "easy_pairs", "hard_pairs"]
    assert data["method"]["name"] == "ddl" and data["method"]["pos_kl_weight"] == 0.1
    assert (data["backbone"]["name"], data["head"]["name"], data["train"]["lr"]) == ("ir_50", "curricularface", 0.001)
    assert "method    ddl: DDLMethod(weight=1.0" in comps


def test_scf_recipe_dry_run(tmp_path):
    index, backbone, head = tmp_path / "i.txt", tmp_path / "b.pt", tmp_path / "h.pth"
    for f in (index, backbone, head):
        f.write_bytes(b"")
    (tmp_path / "tfr").mkdir()
    args = ["run", str(ROOT / "scf.toml"), "--dry-run", "--set", f'data.index="{index}"', "--set",
            f'data.root="{tmp_path / "tfr"}"', "--set", f'backbone.checkpoint="{backbone}"', "--set",
            f'classifier.checkpoint="{head}"']
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text, _, comps = res.output.partition("# components")
    data = tomllib.loads(text)
    assert data["method"] == {"name": "scf", "radius": 64.0, "kappa_min": 1.0, "kappa_max": 100000.0}
    assert (data["backbone"]["name"], data["train"]["lr"], data["train"]["batch_size"]) == ("ir_101", 3e-5, 128)
    assert "method    scf: SCF(radius=64.0" in comps


def test_placeholders_are_reported_as_missing_inputs():
    res = CliRunner().invoke(cli, ["run", str(ROOT / "ddl.toml"), "--dry-run"])
    assert res.exit_code != 0
    assert "data[2].index: /data/TFace/index/TFR-vggface2_pair_easy_test.txt does not exist" in res.output
    assert "backbone.checkpoint: no such file: /data/TFace/ckpt/Backbone_Epoch_24_checkpoint.pth" in res.output

"""The method recipes (recipes/methods/): they validate and build with every built-in component.

Their data paths are placeholders, so the test points them at hand-made empty files (``--dry-run`` checks
that inputs exist, it reads none).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from tface.core.cli import cli

ROOT = Path(__file__).resolve().parents[1] / "recipes" / "methods"


def dry_run(name: str, *sets: str):
    """``tface run recipes/methods/NAME --dry-run --set S ...``: the result (exit code, output)."""
    args = ["run", str(ROOT / name), "--dry-run"]
    for s in sets:
        args += ["--set", s]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_every_method_recipe_is_tested():
    assert sorted(p.name for p in ROOT.glob("*.toml")) == ["arcface_synthface.toml", "cifp_synthface.toml", "ddl.toml",
                                                           "ddl_synthface.toml", "plain_synthface.toml", "scf.toml",
                                                           "scf_synthface.toml", "sdd_fiqa.toml",
                                                           "sdd_fiqa_synthface.toml"]


def test_ddl_recipe_dry_run(tmp_path):
    (tmp_path / "tfr").mkdir()
    sets = [f'data.{i}.root="{tmp_path / "tfr"}"' for i in range(4)]
    for i in range(4):
        (tmp_path / f"{i}.txt").write_text("")
        sets.append(f'data.{i}.index="{tmp_path / f"{i}.txt"}"')
    (tmp_path / "backbone.pt").write_bytes(b"")
    sets.append(f'backbone.checkpoint="{tmp_path / "backbone.pt"}"')
    res = dry_run("ddl.toml", *sets)
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
    res = dry_run("scf.toml", f'data.index="{index}"', f'data.root="{tmp_path / "tfr"}"',
                  f'backbone.checkpoint="{backbone}"', f'classifier.checkpoint="{head}"')
    assert res.exit_code == 0, res.output
    text, _, comps = res.output.partition("# components")
    data = tomllib.loads(text)
    assert data["method"] == {"name": "scf", "radius": 64.0, "kappa_min": 1.0, "kappa_max": 100000.0}
    assert (data["backbone"]["name"], data["train"]["lr"], data["train"]["batch_size"]) == ("ir_101", 3e-5, 128)
    assert "method    scf: SCF(radius=64.0" in comps


def test_sdd_fiqa_recipe_dry_run(tmp_path):
    files = {k: tmp_path / f"{k}.x" for k in ("list", "backbone", "bin", "recognizer")}
    for f in files.values():
        f.write_bytes(b"")
    res = dry_run("sdd_fiqa.toml", f'data.list="{files["list"]}"', f'backbone.checkpoint="{files["backbone"]}"',
                  f'eval.0.bins=["{files["bin"]}"]',
                  f'eval.0.recognizer={{name="ir_50", checkpoint="{files["recognizer"]}"}}')
    assert res.exit_code == 0, res.output
    text, _, comps = res.output.partition("# components")
    data = tomllib.loads(text)
    assert data["method"] == {"name": "quality_regression", "loss": "smooth_l1", "freeze_backbone": False,
                              "map_size": 7, "dropout": 0.5}
    assert (data["data"]["name"], data["backbone"]["name"]) == ("quality_list", "mobilefacenet")
    train = data["train"]
    assert (train["optimizer"], train["lr"], train["betas"]) == ("adamw", 1e-4, [0.9, 0.99])
    assert train["weight_decay"] == 5e-4
    assert (train["batch_size"], train["lr_milestones"], train["max_steps"]) == (625, [5825, 11650], 23300)
    assert data["eval"][0]["recognizer"]["name"] == "ir_50"
    assert "method    quality_regression: QualityRegression(loss='smooth_l1'" in comps


@pytest.mark.parametrize(("name", "branches", "method"), [
    ("ddl_synthface.toml", ["easy", "hard", "easy_pairs", "hard_pairs"], "ddl"),
    ("plain_synthface.toml", ["easy", "hard"], None),
])
def test_synthface_ddl_recipes_dry_run(tmp_path, name, branches, method):
    """The DDL-on-SynthFace pair: the same data, model, schedule and steps; only the pairs and the method differ."""
    (tmp_path / "backbone.pt").write_bytes(b"")
    res = dry_run(name, f'backbone.checkpoint="{tmp_path / "backbone.pt"}"')
    assert res.exit_code == 0, res.output
    data = tomllib.loads(res.output.partition("# components")[0])
    assert [d["branch"] for d in data["data"]] == branches
    assert [d.get("nuisance", "normal") for d in data["data"]] == ["normal", "hard"] * (len(branches) // 2)
    assert [d.get("pairs", False) for d in data["data"]] == [False, False] + [True, True] * (len(branches) > 2)
    assert data.get("method", {}).get("name") == method
    assert (data["train"]["max_steps"], data["train"]["lr"]) == (300, 0.02)
    missing = CliRunner().invoke(cli, ["run", str(ROOT / name), "--dry-run"])
    assert missing.exit_code != 0 and "runs/quickstart/checkpoints/backbone.pt" in missing.output


def test_cifp_and_arcface_synthface_recipes_differ_only_in_the_head():
    """The fairness pair: grouped SynthFace, the same model, schedule and evaluations (rfw on the provided groups)."""
    out = {}
    for name in ("arcface_synthface.toml", "cifp_synthface.toml"):
        res = dry_run(name)
        assert res.exit_code == 0, res.output
        out[name] = tomllib.loads(res.output.partition("# components")[0])
    arc, cifp = out["arcface_synthface.toml"], out["cifp_synthface.toml"]
    assert arc["head"] == {"name": "arcface", "s": 16.0, "m": 0.1, "easy_margin": False}
    assert cifp["head"] == {"name": "cifp", "s": 16.0, "m": 0.1}
    assert {k: v for k, v in arc.items() if k != "head"} == {k: v for k, v in cifp.items() if k != "head"}
    assert arc["data"]["groups"] == [0.55, 0.25, 0.12, 0.08]
    assert [e["name"] for e in arc["eval"]] == ["verification", "rfw"] and "root" not in arc["eval"][1]


def test_scf_synthface_recipe_dry_run(tmp_path):
    """SCF on the quickstart's frozen model, its κ scored as a quality by evrc; the quickstart's files are named."""
    for name in ("backbone.pt", "last.pt"):
        (tmp_path / name).write_bytes(b"")
    sets = [f'backbone.checkpoint="{tmp_path / "backbone.pt"}"', f'classifier.checkpoint="{tmp_path / "last.pt"}"',
            f'eval.0.recognizer.checkpoint="{tmp_path / "backbone.pt"}"']
    res = dry_run("scf_synthface.toml", *sets)
    assert res.exit_code == 0, res.output
    data = tomllib.loads(res.output.partition("# components")[0])
    assert data["method"] == {"name": "scf", "radius": 16.0, "kappa_min": 1.0, "kappa_max": 1e5}
    assert (data["eval"][0]["name"], data["eval"][0]["quality"]) == ("evrc", "confidence")
    assert (data["backbone"]["input_size"], data["data"]["image_size"]) == (64, 64)
    missing = CliRunner().invoke(cli, ["run", str(ROOT / "scf_synthface.toml"), "--dry-run"])
    assert missing.exit_code != 0 and "runs/quickstart/checkpoints/backbone.pt" in missing.output
    assert "runs/quickstart/checkpoints/last.pt" in missing.output


def test_sdd_fiqa_synthface_recipe_dry_run(tmp_path):
    """The quality regression on the quickstart's photos and model; its evrc reads a copy of the quickstart's .bin."""
    for name in ("backbone.pt", "q.txt", "val.bin"):
        (tmp_path / name).write_bytes(b"")
    sets = [f'backbone.checkpoint="{tmp_path / "backbone.pt"}"', f'data.list="{tmp_path / "q.txt"}"',
            f'eval.0.recognizer.checkpoint="{tmp_path / "backbone.pt"}"', f'eval.0.bins=["{tmp_path / "val.bin"}"]']
    res = dry_run("sdd_fiqa_synthface.toml", *sets)
    assert res.exit_code == 0, res.output
    data = tomllib.loads(res.output.partition("# components")[0])
    assert (data["method"]["name"], data["method"]["freeze_backbone"]) == ("quality_regression", False)
    assert (data["data"]["name"], data["data"]["image_size"]) == ("quality_list", 64)
    assert data["backbone"]["input_size"] == 64
    assert (data["train"]["max_steps"], data["train"]["batch_size"]) == (300, 64)
    missing = CliRunner().invoke(cli, ["run", str(ROOT / "sdd_fiqa_synthface.toml"), "--dry-run"])
    assert missing.exit_code != 0 and "runs/synthface-quality.txt" in missing.output


def test_placeholders_are_reported_as_missing_inputs():
    res = CliRunner().invoke(cli, ["run", str(ROOT / "ddl.toml"), "--dry-run"])
    assert res.exit_code != 0
    assert "data[2].index: /data/TFace/index/TFR-vggface2_pair_easy_test.txt does not exist" in res.output
    assert "backbone.checkpoint: no such file: /data/TFace/ckpt/Backbone_Epoch_24_checkpoint.pth" in res.output

"""The quickstart recipe, shrunk to seconds, through the real CLI with every built-in component."""

from __future__ import annotations

import json
from pathlib import Path

import tomllib
from click.testing import CliRunner

from tface.core.cli import cli

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.toml"
SMALL = [
    "data.identities=12", "data.images_per_identity=6", "data.val_identities=10", "data.val_pairs=40",
    "data.workers=1", "backbone.embedding_size=32", "train.max_steps=12", "train.batch_size=16",
    "train.warmup_steps=2", "train.lr_milestones=[10]", "train.log_every=4", "eval.0.batch_size=40",
]


def test_quickstart_dry_run_builds_every_component():
    res = CliRunner().invoke(cli, ["run", str(QUICKSTART), "--dry-run"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    text, _, comps = res.output.partition("# components")
    data = tomllib.loads(text)
    assert (data["data"]["name"], data["backbone"]["name"], data["head"]["name"]) == ("synthface", "mobilefacenet",
                                                                                    "arcface")
    assert data["eval"][0]["name"] == "verification"
    assert "MobileFaceNet" in comps and "ArcFace" in comps and "Verification" in comps


def test_short_quickstart_run(tmp_path):
    out = tmp_path / "run"
    args = ["run", str(QUICKSTART), "--output-dir", str(out), "--set", f'data.cache_dir="{tmp_path / "cache"}"']
    for s in SMALL:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    stages = [(r["stage"], r["protocol"], r["dataset"], r["step"], r["pairs"]) for r in report["results"]]
    assert stages == [("untrained", "verification", "synthface-val", 0, 40),
                      ("trained", "verification", "synthface-val", 12, 40)]
    assert all(0 <= r["accuracy"] <= 100 for r in report["results"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [4, 8, 12]
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (out / "checkpoints" / "last.pt").exists() and (out / "report.md").exists()
    assert "| trained | verification | synthface-val | 12 |" in res.output
    try:  # nox installs matplotlib (the `plots` extra): then the run folder has ROC and DET curves
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib" in res.output
    else:
        for kind in ("roc", "det"):
            png = out / f"{kind}-verification-synthface-val.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the cache is reused: a second run generates nothing new
    cache = tmp_path / "cache"
    (folder,) = list(cache.iterdir())
    stamp = (folder / "synthface.txt").stat().st_mtime_ns
    again = args + ["--set", "train.max_steps=4", "--set", "train.eval_at_start=false"]
    res = CliRunner().invoke(cli, again, catch_exceptions=False)
    assert res.exit_code == 1 and "holds a tface run (done)" in res.output  # never mixed with the earlier run
    res = CliRunner().invoke(cli, again + ["--overwrite"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [4]
    assert (folder / "synthface.txt").stat().st_mtime_ns == stamp

"""A recipe with occluders in its [[augment]] tables trains: the quickstart shrunk to seconds."""

from __future__ import annotations

import json
import math

import tomllib
from click.testing import CliRunner
from test_end_to_end import QUICKSTART, SMALL

from tface.core.cli import cli

AUGMENT = 'augment=[{name="hflip"},{name="mask",p=0.5},{name="glasses",p=0.3},{name="headscarf",p=0.3}]'


def test_a_recipe_with_occluders_trains(tmp_path):
    out = tmp_path / "run"
    args = ["run", str(QUICKSTART), "--output-dir", str(out), "--set", f'data.cache_dir="{tmp_path / "cache"}"',
            "--set", AUGMENT, "--set", "train.eval_at_start=false"]
    small = [s for s in SMALL if not s.startswith(("train.max_steps", "train.lr_milestones"))]
    for s in small + ["train.max_steps=8", "train.lr_milestones=[6]"]:
        args += ["--set", s]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    recipe = tomllib.loads((out / "recipe.toml").read_text())  # the resolved recipe, every option filled in
    assert [a["name"] for a in recipe["augment"]] == ["hflip", "mask", "glasses", "headscarf"]
    assert recipe["augment"][1]["styles"] == ["surgical", "cloth"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [4, 8]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    report = json.loads((out / "report.json").read_text())
    assert [r["stage"] for r in report["results"]] == ["trained"]

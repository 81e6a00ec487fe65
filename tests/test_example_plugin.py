"""The third-party head in examples/ installs with pip and works from a recipe by name."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "tface-head-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(EXAMPLE)], check=True, capture_output=True)
    return {**os.environ, "PYTHONPATH": str(target)}


def tface(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tface.core.cli", *args], env=env, capture_output=True,
                          text=True)


def test_listed_with_its_distribution(installed):
    rows = json.loads(tface(installed, "list", "heads", "--json").stdout)
    (row,) = [r for r in rows if r["name"] == "combined"]
    assert row["distribution"] == "tface-head-example" and row["status"] == "ok"
    assert row["target"] == "tface_head_example:CombinedMargin"


def test_used_from_a_recipe_by_name(installed):
    res = tface(installed, "run", str(ROOT / "recipes" / "quickstart.toml"), "--dry-run",
                "--set", 'head={ name = "combined", s = 32.0, m2 = 0.25 }')
    assert res.returncode == 0, res.stderr
    assert 'name = "combined"' in res.stdout and "m2 = 0.25" in res.stdout and "m3 = 0.2" in res.stdout
    bad = tface(installed, "run", str(ROOT / "recipes" / "quickstart.toml"), "--dry-run",
                "--set", 'head={ name = "combined", m4 = 1.0 }')
    assert bad.returncode == 1 and 'head.m4: unknown key; did you mean "m3"?' in bad.stderr


def test_formula(installed):
    sys.path.insert(0, installed["PYTHONPATH"])
    try:
        from tface_head_example import CombinedMargin
    finally:
        sys.path.pop(0)
    from tface.core.classifier import Classifier

    torch.manual_seed(0)
    head = CombinedMargin(s=10.0, m1=0.9, m2=0.3, m3=0.1)
    clf = Classifier(4, 3, head).double()
    emb = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0])
    batch = clf.head_input(emb, labels)
    logits = head(batch)
    for i in range(5):
        for j in range(4):
            c = float(batch.cos[i, j].detach())
            want = 10.0 * (math.cos(min(0.9 * math.acos(c) + 0.3, math.pi)) - 0.1) if j == labels[i] else 10.0 * c
            assert float(logits[i, j].detach()) == pytest.approx(want, abs=1e-6)


def test_its_options_are_declared_right(installed):
    """What the plugin's own test suite would say (docs/plugins.md): Config and constructor agree."""
    sys.path.insert(0, installed["PYTHONPATH"])
    try:
        from tface_head_example import CombinedMargin
    finally:
        sys.path.pop(0)
    from tface.core.config import check_options

    assert check_options(CombinedMargin, kind="heads") == []
    assert [(f.name, f.default) for f in attrs.fields(CombinedMargin.Config)] == [
        ("s", 64.0), ("m1", 1.0), ("m2", 0.3), ("m3", 0.2)]

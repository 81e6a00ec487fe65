"""The third-party heads in examples/ install with pip, work from a recipe by name, compute what their docs
say, and give the same numbers in every classifier layout (sharded and sampled on 2 gloo processes, DDP)."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def example(installed):
    """The installed package, importable in this process and in the processes ``check_heads`` spawns (they
    start with this process's ``sys.path``)."""
    sys.path.insert(0, installed["PYTHONPATH"])
    try:
        import tface_head_example
        import tface_head_example.ramp

        yield tface_head_example
    finally:
        sys.path.remove(installed["PYTHONPATH"])


def tface(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tface.core.cli", *args], env=env, capture_output=True,
                          text=True)


def test_listed_with_its_distribution(installed):
    rows = json.loads(tface(installed, "list", "heads", "--json").stdout)
    (row,) = [r for r in rows if r["name"] == "combined"]
    assert row["distribution"] == "tface-head-example" and row["status"] == "ok"
    assert row["target"] == "tface_head_example:CombinedMargin"
    # two entry points, one target: one head, named like the class, with the other as its alias
    (ramp,) = [r for r in rows if r["target"] == "tface_head_example.ramp:RampCosFace"]
    assert ramp["name"] == "RampCosFace" and "ramp_cosface" in ramp["aliases"] and ramp["status"] == "ok"


def test_used_from_a_recipe_by_name(installed):
    res = tface(installed, "run", str(ROOT / "recipes" / "quickstart.toml"), "--dry-run",
                "--set", 'head={ name = "combined", s = 32.0, m2 = 0.25 }')
    assert res.returncode == 0, res.stderr
    assert 'name = "combined"' in res.stdout and "m2 = 0.25" in res.stdout and "m3 = 0.2" in res.stdout
    bad = tface(installed, "run", str(ROOT / "recipes" / "quickstart.toml"), "--dry-run",
                "--set", 'head={ name = "combined", m4 = 1.0 }')
    assert bad.returncode == 1 and 'head.m4: unknown key; did you mean "m3"?' in bad.stderr


def test_its_options_are_declared(example):
    from tface_head_example import CombinedMargin

    assert [(f.name, f.default) for f in attrs.fields(CombinedMargin.Config)] == [
        ("s", 64.0), ("m1", 1.0), ("m2", 0.3), ("m3", 0.2)]


def test_the_examples_own_tests_pass(installed):
    """examples/tface-head-example/tests: the test template of docs/writing-a-head.md, as a plugin author runs
    it (formulas, options, the buffer, and check_head / check_heads: every layout on 2 gloo processes)."""
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                         env=installed, capture_output=True, text=True, cwd=EXAMPLE)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "5 passed" in res.stdout


def test_the_stateful_head_is_used_from_a_sharded_recipe(installed):
    res = tface(installed, "run", str(ROOT / "recipes" / "quickstart.toml"), "--dry-run",
                "--set", 'head={ name = "ramp_cosface", s = 32.0, ring_weight = 0.01 }',
                "--set", 'classifier.mode="sharded"')
    assert res.returncode == 0, res.stderr
    assert 'name = "ramp_cosface"' in res.stdout and "ring_weight = 0.01" in res.stdout
    assert 'mode = "sharded"' in res.stdout


def test_ramp_formula_buffer_and_ring_loss(example):
    """Values written out: t moves in training mode only, from the mean target cosine; the margin is m·t on the
    target column only; the ring loss is ring_weight/2 · mean (‖x‖ − ring)²."""
    from tface_head_example.ramp import RampCosFace

    from tface.core.classifier import Classifier

    torch.manual_seed(0)
    s, m, alpha, weight, ring = 10.0, 0.4, 0.5, 0.2, 3.0
    head = RampCosFace(s=s, m=m, alpha=alpha, ring_weight=weight, ring=ring)
    clf = Classifier(4, 3, head).double()
    labels = torch.tensor([0, 1, 2, 3, 0])
    # embeddings near their class centres: target cosines well above 0, so t really moves
    emb = torch.nn.functional.normalize(clf.weight.detach()[labels], dim=1) * 4.0
    emb = emb + 0.5 * torch.randn(5, 3, dtype=torch.float64)
    assert head.t.tolist() == [0.0] and "head.t" in clf.state_dict()  # saved with the classifier

    t = 0.0
    for step in range(2):
        batch = clf.head_input(emb, labels)
        cos = batch.cos.detach()
        mean = sum(float(cos[i, labels[i]]) for i in range(5)) / 5
        assert mean > 0.5
        t = (1 - alpha) * t + alpha * min(max(mean, 0.0), 1.0)
        out = head(batch)
        assert float(head.t) == pytest.approx(t, abs=1e-12), step
        for i in range(5):
            for j in range(4):
                want = s * (float(cos[i, j]) - (m * t if j == labels[i] else 0.0))
                assert float(out.logits[i, j].detach()) == pytest.approx(want, abs=1e-9)
        norms = [float(emb[i].norm()) for i in range(5)]
        want_ring = weight / 2 * sum((n - ring) ** 2 for n in norms) / 5
        assert float(out.extra_loss.detach()) == pytest.approx(want_ring, abs=1e-12)

    head.eval()  # eval mode: t is used, never moved
    batch = clf.head_input(emb, labels)
    out = head(batch)
    assert float(head.t) == pytest.approx(t, abs=1e-12)
    want = s * (float(batch.cos[1, 1].detach()) - m * t)
    assert float(out.logits[1, 1].detach()) == pytest.approx(want, abs=1e-9)
    assert RampCosFace()(clf.head_input(emb, labels)).extra_loss is None  # ring_weight = 0: no extra term

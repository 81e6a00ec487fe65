"""``tface eval``: ad hoc and ``--run`` evaluation of saved backbones, checkpoint unwrapping, errors."""

from __future__ import annotations

import importlib
import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.cli import cli
from tface.core.train.trainer import Trainer
from tface.core.weights import WeightsError, WeightsMismatchError, load_into, read_weights

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A protocol that reads the model: the checksum of its output on a fixed input proves which weights were loaded.
PROBE_MODULE = '''
    import attrs
    import torch


    class Probe:
        name = "probe"

        @attrs.define
        class Config:
            dataset: str = "probe-set"
            missing: str = ""

        def __init__(self, dataset="probe-set", missing=""):
            self.dataset, self.missing = dataset, missing

        def evaluate(self, model, ctx):
            if self.missing:
                raise FileNotFoundError(f"{self.missing} does not exist")
            was = model.training
            model.eval()
            with torch.no_grad():
                out = model(torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16).to(ctx.device))
            model.train(was)
            return [{"protocol": "probe", "dataset": self.dataset, "step": ctx.step,
                     "checksum": float(out.double().sum()), "provided": len(ctx.provided),
                     "curves": {"roc": {"fpr": [0.0, 0.001, 0.01, 0.1, 1.0], "tpr": [0.0, 0.6, 0.8, 0.95, 1.0]}}}]
'''


@pytest.fixture
def plugins(toy_plugins, site, tmp_path) -> str:
    """The toy components plus the ``probe`` protocol; returns the toy module name."""
    module = f"probe_{tmp_path.name.replace('-', '_')}"
    site("probe-plugins", {"tface.protocols": {"probe": f"{module}:Probe"}}, {f"{module}.py": PROBE_MODULE})
    return toy_plugins


def toy_backbone(toy_module: str, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return importlib.import_module(toy_module).ToyBackbone(**options)


def checksum(model: torch.nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)).double().sum())


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_adhoc_eval_loads_a_module_prefixed_state_dict(plugins, tmp_path):
    model = toy_backbone(plugins, seed=3)
    ckpt = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, ckpt)
    out = tmp_path / "out"
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt, "--option", "dataset=lfw",
                 "--device", "cpu", "--output-dir", out, "--label", "mine")
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("| label | protocol | dataset | step | checksum |")
    assert "| mine | probe | lfw | 0 |" in res.stdout and "curves" not in res.stdout
    assert "evaluating" in res.stderr
    report = json.loads((out / "eval-report.json").read_text())
    (r,) = report["results"]
    assert r["label"] == "mine" and r["step"] == 0 and r["provided"] == 0
    assert r["checksum"] == pytest.approx(checksum(model), rel=1e-12)
    assert r["curves"]["roc"]["fpr"][1] == 0.001  # curves stay in the JSON
    assert report["summary"]["checkpoint"] == str(ckpt.resolve()) and report["summary"]["device"] == "cpu"
    assert report["summary"]["backbone"] == "toynet {embedding_size = 8}"
    md = (out / "eval-report.md").read_text()
    assert "## Results" in md and "| mine | probe | lfw | 0 |" in md and "fpr" not in md
    for name in ("roc-probe-lfw.png", "det-probe-lfw.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in md


def test_adhoc_default_output_dir_and_benchmark_section(plugins, tmp_path, monkeypatch):
    ckpt = tmp_path / "b.pt"
    torch.save(toy_backbone(plugins).state_dict(), ckpt)
    monkeypatch.chdir(tmp_path)
    res = invoke("eval", "toyeval", "--backbone", "toynet", "--checkpoint", ckpt)
    assert res.exit_code == 0, res.output
    (out,) = tmp_path.glob("eval-toyeval-*")
    report = json.loads((out / "eval-report.json").read_text())
    assert report["results"] == [{"label": "toynet", "protocol": "toy", "dataset": "toy", "step": 0, "score": 1.0}]
    assert "## Benchmark" not in (out / "eval-report.md").read_text()  # toy is no benchmark protocol


def test_checkpoint_unwrapping(tmp_path):
    w = torch.arange(6.0).reshape(2, 3)
    cases = {
        "plain": ({"net.weight": w}, None),
        "nested": ({"state_dict": {"_orig_mod.net.weight": w}}, None),
        "training": ({"step": 7, "backbone": {"module._orig_mod.net.weight": w}, "optimizer": {}}, 7),
        "model-key": ({"epoch": 1, "model": {"module.net.weight": w}}, None),
    }
    for name, (obj, step) in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        got = read_weights(tmp_path / f"{name}.pt")
        sd, found = got.state_dict, got.step
        assert list(sd) == ["net.weight"] and torch.equal(sd["net.weight"], w) and found == step, name
    # A key that merely contains "module." somewhere keeps it; a prefix not shared by every key stays too.
    torch.save({"module.a": w, "b.module.c": w}, tmp_path / "mixed.pt")
    assert list(read_weights(tmp_path / "mixed.pt").state_dict) == ["module.a", "b.module.c"]


def test_eval_accepts_every_layout_the_weights_reader_does(plugins, tmp_path):
    """The regression of issue 10: ``tface eval`` refused ``_orig_mod.`` inside keys and ``model_state_dict``/``net``
    nesting, which ``tface export onnx`` (tface-backbones' reader) accepted. Both now use tface.core.weights."""
    from test_weights import LAYOUTS

    model = toy_backbone(plugins, seed=4)
    want = checksum(model)
    for name, wrap, _, step in LAYOUTS:
        ckpt = tmp_path / f"{name}.pt"
        torch.save(wrap(model.state_dict()), ckpt)
        out = tmp_path / f"out-{name}"
        res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt, "--output-dir", out)
        assert res.exit_code == 0, (name, res.output)
        (r,) = json.loads((out / "eval-report.json").read_text())["results"]
        assert r["checksum"] == pytest.approx(want, rel=1e-12), name
        assert r["step"] == (step or 0), name


def test_checkpoint_errors_name_the_file_and_keys(plugins, tmp_path):
    model = toy_backbone(plugins)
    good = model.state_dict()
    ckpt = tmp_path / "w.pt"
    torch.save(good, ckpt)
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt,
                 "--backbone-option", "embedding_size=4")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(ckpt) in res.output and "does not fit backbone 'toynet'" in res.output
    assert "net.5.weight (checkpoint [8, 32], model [4, 32])" in res.output

    broken = dict(good)
    del broken["net.2.weight"]
    broken["extra.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(WeightsMismatchError, match=r"1 missing: net\.2\.weight; 1 unexpected: extra\.weight"):
        load_into(toy_backbone(plugins), tmp_path / "broken.pt", what="backbone 'toynet'")
    no_counter = {k: v for k, v in good.items() if not k.endswith("num_batches_tracked")}  # old checkpoints
    torch.save(no_counter, tmp_path / "old.pt")
    assert load_into(toy_backbone(plugins, seed=9), tmp_path / "old.pt").exact

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match=r"list\.pt: expected a state_dict .*found list"):
        read_weights(tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pt: not a readable PyTorch checkpoint"):
        read_weights(tmp_path / "junk.pt")
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", tmp_path / "absent.pt")
    assert res.exit_code == 1 and "absent.pt: no such file" in res.output


def test_unknown_names_and_bad_options(plugins, tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(toy_backbone(plugins).state_dict(), ckpt)
    res = invoke("eval", "toyevl", "--backbone", "toynet", "--checkpoint", ckpt)
    assert res.exit_code == 1 and 'did you mean "toyeval"' in res.output and "Traceback" not in res.output
    res = invoke("eval", "probe", "--backbone", "toynt", "--checkpoint", ckpt)
    assert res.exit_code == 1 and 'did you mean "toynet"' in res.output
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt, "--option", "dataset=3")
    assert res.exit_code == 1 and "probe.dataset: expected string, got 3" in res.output
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt, "--option", "datset=x")
    assert res.exit_code == 1 and 'probe.datset: unknown key; did you mean "dataset"' in res.output
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt, "--option", "noequals")
    assert res.exit_code == 1 and "expected KEY=VALUE" in res.output
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt, "--option", "missing=x.bin")
    assert res.exit_code == 1 and "probe: x.bin does not exist" in res.output and "Traceback" not in res.output
    res = invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", ckpt, "--device", "tpu")
    assert res.exit_code == 1 and "expected auto, cpu, cuda or cuda:N" in res.output


def test_usage_errors(plugins, tmp_path):
    assert invoke("eval").exit_code == 2
    res = invoke("eval", "probe", "--backbone", "toynet")
    assert res.exit_code == 2 and "needs --checkpoint" in res.output
    res = invoke("eval", "--run", tmp_path, "--backbone", "toynet")
    assert res.exit_code == 2 and "--run takes the backbone" in res.output
    res = invoke("eval", "--run", tmp_path, "--option", "dataset=x")
    assert res.exit_code == 2 and "--option needs a PROTOCOL" in res.output
    res = invoke("eval", "--run", tmp_path / "nowhere")
    assert res.exit_code == 1 and "does not exist" in res.output
    res = invoke("eval", "--run", tmp_path)
    assert res.exit_code == 1 and "has no recipe.toml" in res.output


@pytest.fixture
def toy_run(plugins, tmp_path) -> Path:
    """A finished two-step toy training run."""
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    rec = recipe.load(path, ["train.max_steps=2", "train.eval_at_start=false", "train.warmup_steps=0",
                             "train.lr_milestones=[]"])
    run_dir = tmp_path / "run-7"
    Trainer(rec, run_dir, echo=lambda m: None).run()
    return run_dir


def test_run_folder_uses_its_recipe_and_checkpoint(plugins, toy_run, tmp_path):
    res = invoke("eval", "--run", toy_run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    report = json.loads((toy_run / "eval" / "eval-report.json").read_text())
    assert report["results"] == [{"label": "run-7", "protocol": "toy", "dataset": "toy", "step": 2, "score": 1.0}]
    assert report["summary"]["run_dir"] == str(toy_run.resolve())
    assert report["summary"]["checkpoint"] == str((toy_run / "checkpoints" / "backbone.pt").resolve())
    assert "| run-7 | toy | toy | 2 | 1.0000 |" in res.stdout

    # A protocol named with --run replaces the recipe's [[eval]] tables; the weights are the trained ones.
    trained = toy_backbone(plugins)
    trained.load_state_dict(torch.load(toy_run / "checkpoints" / "backbone.pt", weights_only=True))
    out = tmp_path / "probe-out"
    res = invoke("eval", "--run", toy_run, "probe", "--option", "dataset=synth", "--output-dir", out,
                 "--label", "r")
    assert res.exit_code == 0, res.output
    (r,) = json.loads((out / "eval-report.json").read_text())["results"]
    assert (r["label"], r["dataset"], r["step"]) == ("r", "synth", 2)
    assert r["checksum"] == pytest.approx(checksum(trained), rel=1e-12)

    # The full training checkpoint works too and carries its own step.
    res = invoke("eval", "--run", toy_run, "--checkpoint", toy_run / "checkpoints" / "last.pt",
                 "--output-dir", tmp_path / "last")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "last" / "eval-report.json").read_text())["results"][0]["step"] == 2


def test_run_folder_without_eval_tables(plugins, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    text = TOY_RECIPE.replace('[[eval]]\nname = "toyeval"\n', "")
    (run_dir / "recipe.toml").write_text(textwrap.dedent(text))
    res = invoke("eval", "--run", run_dir)
    assert res.exit_code == 1 and "has no [[eval]] tables" in res.output


def test_checkpoint_none_evaluates_a_seeded_random_backbone(plugins, tmp_path):
    def probe(seed: str | None, out: str) -> tuple[dict, dict]:
        args = ["eval", "probe", "--backbone", "toynet", "--checkpoint", "none", "--output-dir", tmp_path / out]
        res = invoke(*args, *(["--seed", seed] if seed is not None else []))
        assert res.exit_code == 0, res.output
        report = json.loads((tmp_path / out / "eval-report.json").read_text())
        return report["results"][0], report["summary"]

    first, summary = probe(None, "a")
    again, _ = probe("0", "b")
    other, other_summary = probe("1", "c")
    assert summary["checkpoint"] == "none" and summary["seed"] == 0 and other_summary["seed"] == 1
    assert "- checkpoint: none" in (tmp_path / "a" / "eval-report.md").read_text()
    assert first["checksum"] == again["checksum"]  # same seed, same weights, same numbers
    assert first["checksum"] == pytest.approx(checksum(toy_backbone(plugins, seed=0)), rel=1e-12)
    assert other["checksum"] == pytest.approx(checksum(toy_backbone(plugins, seed=1)), rel=1e-12)
    assert other["checksum"] != first["checksum"]
    assert invoke("eval", "probe", "--backbone", "toynet", "--checkpoint", "none", "--seed", "-1").exit_code == 2


def test_checkpoint_none_with_a_run_folder(plugins, toy_run, tmp_path):
    res = invoke("eval", "--run", toy_run, "probe", "--checkpoint", "none", "--seed", "5",
                 "--output-dir", tmp_path / "base")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "base" / "eval-report.json").read_text())
    assert report["summary"]["checkpoint"] == "none" and report["results"][0]["step"] == 0
    assert report["results"][0]["checksum"] == pytest.approx(checksum(toy_backbone(plugins, seed=5)), rel=1e-12)


FILED_MODULE = '''
    import pathlib

    import attrs


    class Filed:
        """A protocol reading one file: it says when the file is missing (check_inputs)."""

        name = "filed"

        @attrs.define
        class Config:
            file: pathlib.Path = pathlib.Path("pairs.bin")

        def __init__(self, file="pairs.bin"):
            self.file = pathlib.Path(file)

        def check_inputs(self):
            return [] if self.file.is_file() else [f"file: {self.file} does not exist"]

        def evaluate(self, model, ctx):
            raise ValueError(f"filed: {self.file}: bad header")
'''


@pytest.fixture
def filed(plugins, site, tmp_path) -> str:
    """The toy components, ``probe`` and ``filed``; returns the toy module name."""
    module = f"filed_{tmp_path.name.replace('-', '_')}"
    site("filed-plugins", {"tface.protocols": {"filed": f"{module}:Filed"}}, {f"{module}.py": FILED_MODULE})
    return plugins


def test_protocol_inputs_are_checked_before_the_checkpoint_is_read(filed, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    for ckpt in (bad, tmp_path / "absent.pt"):
        res = invoke("eval", "filed", "--backbone", "toynet", "--checkpoint", ckpt,
                     "--option", f'file="{tmp_path / "lfw.bin"}"')
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.output.strip() == f"Error: filed.file: {tmp_path / 'lfw.bin'} does not exist"


def test_a_protocol_error_is_prefixed_once(filed, tmp_path):
    ckpt = tmp_path / "w.pt"
    torch.save(toy_backbone(filed).state_dict(), ckpt)
    pairs = tmp_path / "pairs.bin"
    pairs.write_bytes(b"x")
    res = invoke("eval", "filed", "--backbone", "toynet", "--checkpoint", ckpt, "--option", f'file="{pairs}"')
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1] == f"Error: filed: {pairs}: bad header"

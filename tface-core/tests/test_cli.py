from __future__ import annotations

import json

import tomllib
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import __version__
from tface.core.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.strip() == f"tface, version {__version__}"


def test_list_json_and_table(toy_plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("TFACE_CACHE", str(tmp_path / "cache"))  # remembered checks stay out of ~/.cache
    res = invoke("list", "heads", "--json")
    rows = json.loads(res.output)
    (row,) = [r for r in rows if r["name"] == "toyhead"]
    assert row == {"kind": "heads", "name": "toyhead", "aliases": ["toy-plugins:toyhead"],
                   "distribution": "toy-plugins", "version": "1.0", "target": f"{toy_plugins}:ToyHead",
                   "status": "ok"}
    table = invoke("list").output
    assert "toyhead" in table and "toydata" in table and table.splitlines()[0].split()[:2] == ["kind", "name"]
    assert json.loads(invoke("list", "heads", "--json", "--no-check").output)[0]["status"] == "unchecked"
    assert invoke("list", "head").exit_code == 2  # not a kind


def test_dry_run_prints_resolved_recipe_and_components(toy_plugins, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(TOY_RECIPE)
    res = invoke("run", str(path), "--dry-run", "--set", "head.m=0.3", "--set", "train.max_steps=5")
    assert res.exit_code == 0, res.output
    text, _, comps = res.output.partition("# components")
    data = tomllib.loads(text)
    assert data["head"] == {"name": "toyhead", "s": 8.0, "m": 0.3} and data["train"]["max_steps"] == 5
    assert "# backbone  toynet: ToyBackbone" in comps and "# eval      toyeval: ToyProtocol" in comps
    assert not (tmp_path / "runs").exists()


def test_run_errors_are_one_clear_line(toy_plugins, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(TOY_RECIPE)
    res = CliRunner().invoke(cli, ["run", str(path), "--set", "head.m=oops"])
    assert res.exit_code == 1
    assert 'head.m: expected float, got "oops"' in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["run", str(tmp_path / "missing.toml")])
    assert res.exit_code == 1 and "cannot read recipe" in res.output


def test_run_writes_to_output_dir(toy_plugins, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(TOY_RECIPE)
    out = tmp_path / "out"
    res = invoke("run", str(path), "--output-dir", str(out), "--set", "train.max_steps=4")
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= {"recipe.toml", "metrics.jsonl", "report.json", "report.md",
                                               "checkpoints", "plugins.json"}
    assert "| trained | toy | toy | 4 |" in res.output


BARE_HEADS = '''
    from torch import nn


    class NoOptions(nn.Module):
        """A head plugin without a Config and without its own __init__: it takes no options."""

        def forward(self, batch):
            return batch.cos


    class Hidden(nn.Module):
        """A head plugin without a Config whose signature hides its options."""

        def __init__(self, **options):
            super().__init__()
            if set(options) - {"s"}:
                raise TypeError(f"unexpected options {sorted(set(options) - {'s'})}")
'''


def test_head_plugin_without_config_given_an_unknown_option(toy_plugins, site, tmp_path):
    module = f"bare_{tmp_path.name.replace('-', '_')}"
    site("bare-heads", {"tface.heads": {"noopts": f"{module}:NoOptions", "hidden": f"{module}:Hidden"}},
         {f"{module}.py": BARE_HEADS})
    path = tmp_path / "r.toml"
    path.write_text(TOY_RECIPE)
    res = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--set", 'head={ name = "noopts", s = 8.0 }'])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == f"Error: {path}: head.s: unknown key (valid keys: none)"
    res = CliRunner().invoke(cli, ["run", str(path), "--dry-run", "--set", 'head={ name = "hidden", q = 1 }'])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == ("Error: head: 'hidden' cannot be built from these options: TypeError: "
                                  "unexpected options ['q']")
    assert not (tmp_path / "runs").exists()


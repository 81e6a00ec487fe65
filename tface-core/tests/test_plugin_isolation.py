"""One broken plugin must not break the others, the CLI, or `tface list`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import importlib_metadata
import pytest
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import catalog, registry
from tface.core.cli import cli

CORE_SRC = Path(__file__).resolve().parents[1] / "src"
REPO = Path(__file__).resolve().parents[2]

HEAD = '''
class Head:
    def __init__(self, s=1.0):
        self.s = s
'''

GOOD_COMMANDS = '''
import click
from tface.core.hooks import hookimpl

STEPS = []

@click.command("hello")
def hello():
    """Say hello."""
    click.echo("hello from a good plugin")

@hookimpl
def tface_register_commands(groups):
    groups["bench"].add_command(hello)

@hookimpl
def tface_step_end(step):
    STEPS.append(step)
'''

RAISING_COMMANDS = '''
import click
from tface.core.hooks import hookimpl

@click.command("partial")
def partial():
    pass

@hookimpl
def tface_register_commands(groups):
    groups["bench"].add_command(partial)
    raise ValueError("boom in the command hook")
'''

MISSPELLED_HOOK = '''
from tface.core.hooks import hookimpl

@hookimpl
def tface_step_ends(step):
    pass
'''


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def rows_of(res) -> dict[str, dict]:
    return {r["qualified"]: r for r in
            ({**r, "qualified": r["aliases"][-1]} for r in json.loads(res.stdout))}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Keep remembered `tface list` checks out of the user's cache."""
    monkeypatch.setenv("TFACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def good_commands(site, tmp_path) -> str:
    mod = f"goodcmds_{tmp_path.name}"
    site("good-cmds", {"tface.plugins": {"cmds": mod}}, {f"{mod}.py": GOOD_COMMANDS})
    return mod


def test_raising_command_hook_costs_only_its_own_commands(site, good_commands, tmp_path, cache):
    mod = f"badcmds_{tmp_path.name}"
    site("bad-cmds", {"tface.plugins": {"cmds": mod}}, {f"{mod}.py": RAISING_COMMANDS})
    site("exit-cmds", {"tface.plugins": {"cmds": f"exitcmds_{tmp_path.name}"}},
         {f"exitcmds_{tmp_path.name}.py": RAISING_COMMANDS.replace('raise ValueError("boom in the command hook")',
                                                                   "raise SystemExit(2)")})
    res = invoke("bench", "--help")
    assert res.exit_code == 0, res.output
    assert "hello" in res.stdout and "partial" not in res.stdout  # what it added before raising is dropped
    assert res.stderr.count("warning:") == 2 and "'exit-cmds:cmds' is broken" in res.stderr
    assert "'bad-cmds:cmds'" in res.stderr and "ValueError: boom in the command hook" in res.stderr
    assert invoke("bench", "hello").stdout.strip() == "hello from a good plugin"
    assert invoke("--help").exit_code == 0
    res = invoke("list", "plugins", "--json")
    assert res.exit_code == 0 and "Traceback" not in res.output
    rows = rows_of(res)
    assert rows["bad-cmds:cmds"]["status"] == (
        "broken: tface_register_commands raised ValueError: boom in the command hook")
    assert rows["exit-cmds:cmds"]["status"] == "broken: tface_register_commands raised SystemExit: 2"
    assert rows["good-cmds:cmds"]["status"] == "ok"
    assert "warning:" not in res.stderr  # once per process


def test_misspelled_hook_is_reported_and_skipped(site, toy_plugins, good_commands, tmp_path, cache):
    mod = f"typo_{tmp_path.name}"
    site("typo-dist", {"tface.plugins": {"typo": mod}}, {f"{mod}.py": MISSPELLED_HOOK})
    site("args-dist", {"tface.plugins": {"args": f"args_{tmp_path.name}"}},
         {f"args_{tmp_path.name}.py": MISSPELLED_HOOK.replace("tface_step_ends(step)", "tface_step_end(step, bogus)")})
    reason = "unknown hook 'tface_step_ends'; did you mean \"tface_step_end\"?"
    recipe = tmp_path / "r.toml"
    recipe.write_text(TOY_RECIPE)
    res = invoke("run", str(recipe), "--dry-run")  # no recipe can ask for a hook plugin: skipped, named
    assert res.exit_code == 0, res.output
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 2
    assert f"warning: hook plugin 'typo-dist:typo' is broken ({reason}); it was skipped" in warnings
    assert any("'args-dist:args' is broken" in w and "{'bogus'}" in w for w in warnings)
    res = invoke("run", str(recipe), "--output-dir", str(tmp_path / "run"), "--set", "train.max_steps=2")
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.stderr  # once per process
    assert sys.modules[good_commands].STEPS == [1, 2]  # the valid hook plugin still runs
    res = invoke("bench", "--help")
    assert res.exit_code == 0 and "hello" in res.stdout  # the other plugin's command is there
    rows = rows_of(invoke("list", "plugins", "--json"))
    assert rows["typo-dist:typo"]["status"] == f"broken: {reason}"
    assert rows["args-dist:args"]["status"].startswith("broken: Plugin 'args-dist:args' for hook 'tface_step_end'")
    assert rows["good-cmds:cmds"]["status"] == "ok"


def test_base_exceptions_at_import_are_import_failures(site, tmp_path, cache):
    n = tmp_path.name
    site("exit-dist", {"tface.heads": {"exits": f"exits_{n}:Head"}}, {f"exits_{n}.py": "import sys\nsys.exit(3)\n"})
    site("custom-dist", {"tface.heads": {"custom": f"custom_{n}:Head"}},
         {f"custom_{n}.py": "class Boom(BaseException):\n    pass\n\nraise Boom('not an Exception')\n"})
    site("genexit-dist", {"tface.heads": {"genexit": f"genexit_{n}:Head"}},
         {f"genexit_{n}.py": "raise GeneratorExit('odd')\n"})
    site("hookexit-dist", {"tface.plugins": {"hookexit": f"hookexit_{n}"}},
         {f"hookexit_{n}.py": "raise SystemExit('plugin gave up')\n"})
    site("fine-dist", {"tface.heads": {"fine": f"fine_{n}:Head"}}, {f"fine_{n}.py": HEAD})
    res = invoke("list", "--json")
    assert res.exit_code == 0, res.output
    rows = rows_of(res)
    assert rows["exit-dist:exits"]["status"] == "broken: SystemExit: 3"
    assert rows["custom-dist:custom"]["status"] == "broken: Boom: not an Exception"
    assert rows["genexit-dist:genexit"]["status"] == "broken: GeneratorExit: odd"
    assert rows["hookexit-dist:hookexit"]["status"] == "broken: SystemExit: plugin gave up"
    assert rows["fine-dist:fine"]["status"] == "ok"
    with pytest.raises(registry.PluginLoadError, match="'exit-dist'") as info:
        registry.get("heads", "exits")
    assert isinstance(info.value.__cause__, SystemExit)
    assert registry.get("heads", "fine").__name__ == "Head"


def test_keyboard_interrupt_at_import_is_not_swallowed(site, tmp_path):
    site("ctrlc-dist", {"tface.heads": {"ctrlc": f"ctrlc_{tmp_path.name}:Head"}},
         {f"ctrlc_{tmp_path.name}.py": "raise KeyboardInterrupt\n"})
    with pytest.raises(KeyboardInterrupt):
        registry.get("heads", "ctrlc")


def test_list_check_exit_status(site, tmp_path, cache):
    n = tmp_path.name
    site("fine-dist", {"tface.heads": {"fine": f"fine_{n}:Head"}}, {f"fine_{n}.py": HEAD})
    res = invoke("list", "heads", "--check", "--json")
    assert res.exit_code == 0, res.output
    assert all(set(r) == {"kind", "name", "aliases", "distribution", "version", "target", "status"}
               for r in json.loads(res.stdout))
    site("bad-dist", {"tface.heads": {"bad": f"bad_{n}:Head"}}, {f"bad_{n}.py": "import not_a_module_xyz\n"})
    res = CliRunner().invoke(cli, ["list", "heads", "--check"])
    assert res.exit_code == 1
    assert "fine" in res.stdout and "broken: ModuleNotFoundError" in res.stdout  # the table comes first
    listed = len(res.stdout.splitlines()) - 1  # the header
    assert res.stderr.strip().splitlines() == [
        f"Error: 1 of {listed} listed components are broken: heads 'bad' (bad-dist)"]
    assert invoke("list", "heads").exit_code == 0  # without --check, listing is not a verdict
    assert CliRunner().invoke(cli, ["list", "--check", "--no-check"]).exit_code == 2


def test_load_plugins_typo_warns_once(site, tmp_path, monkeypatch, capsys):
    site("dist-a", {"tface.heads": {"ha": f"a_{tmp_path.name}:Head"}}, {f"a_{tmp_path.name}.py": HEAD})
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "dist-a,tface-backbone")
    assert "ha" in registry.names("heads")
    registry.names("backbones")
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "warning: TFACE_LOAD_PLUGINS names 'tface-backbone', which matches no installed distribution; "
        "did you mean 'tface-backbones'?"]
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "dist-a")
    registry.names("heads")
    assert capsys.readouterr().err == ""


def test_catalog_agrees_with_installed_entry_points():
    for dist, kinds in catalog.DISTRIBUTIONS.items():
        found: dict[str, set[str]] = {}
        for ep in importlib_metadata.distribution(dist).entry_points:
            if ep.group.startswith("tface."):
                found.setdefault(ep.group.removeprefix("tface."), set()).add(ep.name)
        assert found == {kind: set(names) for kind, names in kinds.items()}, dist
        assert all(len(set(names)) == len(names) for names in kinds.values())


def test_install_hint_when_load_plugins_leaves_a_distribution_out(monkeypatch, tmp_path):
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "tface-heads")
    registry.clear_cache()
    try:
        res = CliRunner().invoke(cli, ["run", str(REPO / "recipes" / "quickstart.toml"), "--dry-run"])
        assert res.exit_code == 1
        assert ("unknown backbone 'mobilefacenet' (known backbones: none); 'mobilefacenet' comes with "
                "tface-backbones, which TFACE_LOAD_PLUGINS='tface-heads' leaves out: add tface-backbones to it"
                in res.output)
        with pytest.raises(registry.UnknownComponentError, match="protocols come with tface-eval, which"):
            registry.get("protocols", "my_protocol")
    finally:
        registry.clear_cache()


def _minimal_install(tmp_path: Path) -> dict[str, str]:
    """An environment holding only tface-core and tface-heads: their metadata and sources, plus the
    interpreter's own site-packages (torch, click, ...), without the other tface distributions."""
    site_dir = tmp_path / "minimal"
    site_dir.mkdir()
    for dist in ("tface-core", "tface-heads"):
        info = importlib_metadata.distribution(dist)._path
        target = site_dir / info.name
        target.mkdir()
        for name in ("METADATA", "entry_points.txt"):
            (target / name).write_text((info / name).read_text())
    import sysconfig

    base = sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_exec_prefix})
    path = [site_dir, CORE_SRC, REPO / "tface-heads" / "src", base["purelib"], base["platlib"]]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "TFACE_CACHE": str(tmp_path / "cache")}


def test_minimal_install_says_what_to_add(tmp_path):
    env = _minimal_install(tmp_path)
    env.pop("TFACE_LOAD_PLUGINS", None)
    cmd = [sys.executable, "-S", "-m", "tface.core.cli"]
    res = subprocess.run([*cmd, "list", "--no-check", "--json"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert {r["distribution"] for r in json.loads(res.stdout)} == {"tface-core", "tface-heads"}
    res = subprocess.run([*cmd, "run", str(REPO / "recipes" / "quickstart.toml"), "--dry-run"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert ("backbone.name: unknown backbone 'mobilefacenet' (known backbones: none); 'mobilefacenet' comes with "
            "tface-backbones: pip install tface-backbones") in res.stderr
    assert "'flip' comes with tface-augment: pip install tface-augment" in res.stderr
    assert "'verification' comes with tface-eval: pip install tface-eval" in res.stderr


HEAVY = ("torch", "torchvision", "numpy", "PIL", "tface.core.data.image")

PROBE = '''
import json, sys
from tface.core.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        assert exc.code in (0, None), (argv, exc.code)
print(json.dumps(sorted(m for m in HEAVY if m in sys.modules)))
'''.replace("HEAVY", repr(HEAVY))


def _heavy_imports(argvs: list[list[str]], env: dict[str, str]) -> list[str]:
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_help_and_unchecked_list_import_no_torch(tmp_path):
    env = {**os.environ, "TFACE_CACHE": str(tmp_path / "cache")}
    argvs = [["--help"], ["list", "--no-check"], ["data", "--help"], ["bench", "--help"], ["export", "--help"]]
    assert _heavy_imports(argvs, env) == []


def test_remembered_list_check_imports_nothing(tmp_path):
    """The second `tface list` reuses the first one's passed checks: no torch (the first one needed it)."""
    env = {**os.environ, "TFACE_CACHE": str(tmp_path / "cache"), "TFACE_LOAD_PLUGINS": "tface-heads"}
    assert "torch" in _heavy_imports([["list", "heads"]], env)
    assert _heavy_imports([["list", "heads"]], env) == []


def _forget(module: str) -> None:
    registry.clear_cache()
    sys.modules.pop(module, None)


def test_remembered_checks_follow_the_files(site, tmp_path, cache):
    mod = f"remember_{tmp_path.name}"
    site("mem-dist", {"tface.heads": {"memhead": f"{mod}:Head"}}, {f"{mod}.py": HEAD})

    def status() -> str:
        res = invoke("list", "heads", "--json")
        return rows_of(res)["mem-dist:memhead"]["status"]

    assert status() == "ok" and mod in sys.modules
    _forget(mod)
    assert status() == "ok" and mod not in sys.modules  # remembered: not imported again
    source = tmp_path / "site" / f"{mod}.py"
    source.write_text("raise ImportError('a dependency went away')\n")
    _forget(mod)
    assert status() == "broken: ImportError: a dependency went away"
    _forget(mod)
    assert status() == "broken: ImportError: a dependency went away"  # failures are never remembered
    source.write_text(HEAD)
    _forget(mod)
    assert status() == "ok" and mod in sys.modules
    _forget(mod)
    assert rows_of(invoke("list", "heads", "--json", "--check"))["mem-dist:memhead"]["status"] == "ok"
    assert mod in sys.modules  # --check imports again

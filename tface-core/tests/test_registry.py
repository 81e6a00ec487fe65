from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tface.core import registry

GOOD = '''
import attrs

class Head:
    @attrs.define
    class Config:
        s: float = 1.0

    def __init__(self, s=1.0):
        self.s = s
'''


def test_listing_reads_metadata_without_importing(site, tmp_path):
    mod = f"lazy_{tmp_path.name}"
    site("lazy-dist", {"tface.heads": {"lazyhead": f"{mod}:Head"}}, {f"{mod}.py": GOOD})
    assert "lazyhead" in registry.names("heads")
    (entry,) = [e for e in registry.entries("heads") if e.name == "lazyhead"]
    assert (entry.distribution, entry.version, entry.target) == ("lazy-dist", "1.0", f"{mod}:Head")
    assert mod not in sys.modules
    assert registry.get("heads", "lazyhead").__name__ == "Head"
    assert mod in sys.modules


def test_create_validates_options(site, tmp_path):
    mod = f"good_{tmp_path.name}"
    site("good-dist", {"tface.heads": {"goodhead": f"{mod}:Head"}}, {f"{mod}.py": GOOD})
    assert registry.create("heads", "goodhead", s=2).s == 2.0
    with pytest.raises(Exception, match='head.ss: unknown key; did you mean "s"'):
        registry.create("heads", "goodhead", ss=2)


def test_unknown_name_lists_known_and_closest(site, tmp_path):
    mod = f"good_{tmp_path.name}"
    site("good-dist", {"tface.heads": {"arcface2": f"{mod}:Head"}}, {f"{mod}.py": GOOD})
    with pytest.raises(registry.UnknownComponentError) as info:
        registry.get("heads", "arcfase2")
    assert 'did you mean "arcface2"' in str(info.value)
    assert "known heads:" in str(info.value) and "arcface2" in str(info.value)


def test_unknown_kind():
    with pytest.raises(registry.RegistryError, match='did you mean "heads"'):
        registry.names("head")


def test_broken_plugin_reported_and_others_keep_working(site, tmp_path):
    good, bad = f"good_{tmp_path.name}", f"bad_{tmp_path.name}"
    site("good-dist", {"tface.heads": {"fine": f"{good}:Head"}}, {f"{good}.py": GOOD})
    site("broken-dist", {"tface.heads": {"broken": f"{bad}:Head"}},
         {f"{bad}.py": "import not_a_module_that_exists_xyz\n"})
    with pytest.raises(registry.PluginLoadError) as info:
        registry.get("heads", "broken")
    msg = str(info.value)
    assert "'broken-dist'" in msg and f"{bad}:Head" in msg and "not_a_module_that_exists_xyz" in msg
    assert isinstance(info.value.__cause__, ModuleNotFoundError)
    assert registry.get("heads", "fine").__name__ == "Head"
    statuses = {e.name: registry.status(e) for e in registry.entries("heads")}
    assert statuses["fine"] == "ok"
    assert statuses["broken"].startswith("broken: ModuleNotFoundError")


def test_same_name_from_two_distributions(site, tmp_path):
    a, b = f"a_{tmp_path.name}", f"b_{tmp_path.name}"
    site("dist-a", {"tface.heads": {"twin": f"{a}:Head"}}, {f"{a}.py": GOOD})
    site("dist-b", {"tface.heads": {"twin": f"{b}:Head"}}, {f"{b}.py": GOOD.replace("1.0", "2.0")})
    with pytest.raises(registry.AmbiguousComponentError) as info:
        registry.get("heads", "twin")
    assert "'dist-a'" in str(info.value) and "'dist-b'" in str(info.value)
    assert registry.create("heads", "dist-b:twin").s == 2.0
    assert registry.create("heads", "dist_a:twin").s == 1.0  # names are compared normalised


def test_load_plugins_env_restricts(site, tmp_path, monkeypatch):
    a, b = f"a_{tmp_path.name}", f"b_{tmp_path.name}"
    site("dist-a", {"tface.heads": {"ha": f"{a}:Head"}}, {f"{a}.py": GOOD})
    site("dist-b", {"tface.heads": {"hb": f"{b}:Head"}}, {f"{b}.py": GOOD})
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "dist-a")
    registry.clear_cache()
    names = registry.names("heads")
    assert "ha" in names and "hb" not in names
    assert "synthface" in registry.names("datasets")  # the core itself always loads
    monkeypatch.setenv("TFACE_LOAD_PLUGINS", "")
    assert not {"ha", "hb"} & set(registry.names("heads"))


def test_broken_installed_dist_shows_in_tface_list(tmp_path):
    """A real ``pip install`` of a broken plugin package; ``tface list --json`` marks it broken."""
    src = tmp_path / "src"
    (src / "brokenhead_pkg").mkdir(parents=True)
    (src / "brokenhead_pkg" / "__init__.py").write_text("raise ImportError('needs a GPU library')\n")
    (src / "setup.py").write_text(textwrap.dedent("""
        from setuptools import setup
        setup(name="tface-broken-example", version="0.3", packages=["brokenhead_pkg"],
              entry_points={"tface.heads": ["brokenhead = brokenhead_pkg:Head"]})
    """))
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True, capture_output=True)
    env = {**__import__("os").environ, "PYTHONPATH": str(target), "TFACE_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "tface.core.cli", "list", "heads", "--json"], env=env,
                         check=True, capture_output=True, text=True).stdout
    rows = {r["name"]: r for r in json.loads(out)}
    row = rows["brokenhead"]
    assert row["distribution"] == "tface-broken-example" and row["version"] == "0.3"
    assert row["status"] == "broken: ImportError: needs a GPU library"
    assert row["target"] == "brokenhead_pkg:Head" and row["aliases"] == ["tface-broken-example:brokenhead"]
    assert all(r["status"] == "ok" for name, r in rows.items() if name != "brokenhead")


def test_no_namespace_init_in_core():
    src = Path(__file__).resolve().parents[1] / "src"
    assert not (src / "tface" / "__init__.py").exists()
    import tface

    assert getattr(tface, "__file__", None) is None


def test_entry_points_with_one_target_are_one_component_with_aliases(site):
    site("zoo", {"tface.backbones": {"ZZ_50": "zoomod:zz_50", "zz_50": "zoomod:zz_50", "zz_101": "zoomod:zz_100",
                                     "zz_100": "zoomod:zz_100", "ZZ_101": "zoomod:zz_100"}},
         {"zoomod.py": "def zz_50():\n    return 50\n\ndef zz_100():\n    return 100\n"})
    zoo = [e for e in registry.entries("backbones") if e.distribution == "zoo"]
    # the name is the entry called like the target's object; the others are aliases
    assert [(e.name, sorted(e.aliases)) for e in zoo] == [("zz_100", ["ZZ_101", "zz_101"]), ("zz_50", ["ZZ_50"])]
    assert registry.get("backbones", "ZZ_101")() == 100 and registry.get("backbones", "zoo:ZZ_50")() == 50
    assert "zz_50" in registry.names("backbones") and "ZZ_50" not in registry.names("backbones")
    with pytest.raises(registry.UnknownComponentError, match='did you mean "ZZ_50"'):
        registry.get("backbones", "ZZ_5O")
    from click.testing import CliRunner

    from tface.core.cli import cli

    res = CliRunner().invoke(cli, ["list", "backbones", "--json", "--no-check"])
    rows = {r["name"]: r for r in json.loads(res.output) if r["distribution"] == "zoo"}
    assert sorted(rows["zz_100"]["aliases"][:-1]) == ["ZZ_101", "zz_101"]
    assert rows["zz_100"]["aliases"][-1] == "zoo:zz_100"
    table = CliRunner().invoke(cli, ["list", "backbones", "--no-check"]).output
    assert "also" in table.splitlines()[0] and "ZZ_101" in table

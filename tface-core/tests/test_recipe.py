from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.config import ConfigError


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / "recipes" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_load_validates_and_fills_defaults(toy_plugins, tmp_path):
    r = recipe.load(write(tmp_path, TOY_RECIPE))
    assert r.head.name == "toyhead" and r.head.options == {"s": 8.0, "m": 0.2}
    assert r.data[0].source.options == {"classes": 4, "per_class": 16, "seed": 0, "side": 16}
    assert r.train.max_steps == 30 and r.train.lr_milestones == [20]
    assert [c.name for c in r.eval] == ["toyeval"]


def test_errors_name_the_key_path(toy_plugins, tmp_path):
    bad = TOY_RECIPE.replace("s = 8.0", 's = "x"').replace("max_steps = 30", "max_step = 30")
    with pytest.raises(ConfigError) as info:
        recipe.load(write(tmp_path, bad))
    text = str(info.value)
    assert 'head.s: expected float, got "x"' in text
    assert 'train.max_step: unknown key; did you mean "max_steps"?' in text
    assert str(tmp_path) in text  # the file is named


def test_unknown_component_and_key(toy_plugins, tmp_path):
    bad = TOY_RECIPE.replace('name = "toyhead"', 'name = "toyhed"').replace("embedding_size = 8", "embeding_size = 8")
    with pytest.raises(ConfigError) as info:
        recipe.load(write(tmp_path, bad))
    text = str(info.value)
    assert 'head.name: unknown head \'toyhed\'; did you mean "toyhead"?' in text
    assert 'backbone.embeding_size: unknown key; did you mean "embedding_size"?' in text


def test_missing_tables_and_top_level_typos(toy_plugins, tmp_path):
    with pytest.raises(ConfigError) as info:
        recipe.load(write(tmp_path, 'sed = 3\n[data]\nname = "toydata"\n'))
    text = str(info.value)
    assert "backbone: required table is missing" in text and "head: required table is missing" in text
    assert 'sed: unknown key; did you mean "seed"?' in text


def test_set_overrides(toy_plugins, tmp_path):
    path = write(tmp_path, TOY_RECIPE)
    r = recipe.load(path, ["head.m=0.35", "train.lr_milestones=[10, 25]", 'eval.0.label="x"', "device=cpu",
                           "train.max_steps=7"])
    assert r.head.options["m"] == 0.35
    assert r.train.lr_milestones == [10, 25] and r.train.max_steps == 7
    assert r.eval[0].options["label"] == "x"
    with pytest.raises(ConfigError, match='head.m: expected float, got "abc"'):
        recipe.load(path, ["head.m=abc"])
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        recipe.load(path, ["head.m"])
    with pytest.raises(ConfigError, match="no item 3"):
        recipe.load(path, ["eval.3.label=1"])
    with pytest.raises(ConfigError, match="not a TOML value"):
        recipe.load(path, ["head.m=[1,"])


def test_relative_paths_resolve_against_the_recipe_folder(toy_plugins, site, tmp_path):
    mod = f"pathsrc2_{tmp_path.name}"
    site("path-dist", {"tface.datasets": {"pathdata": f"{mod}:Src"}}, {f"{mod}.py": '''
        import pathlib
        import attrs

        class Src:
            @attrs.define
            class Config:
                index: pathlib.Path
                extra: list[pathlib.Path] = attrs.field(factory=list)
                label: str = "a/b"

            def __init__(self, index, extra=(), label="a/b"):
                self.index = index
    '''})
    text = TOY_RECIPE.replace('name = "toydata"\nclasses = 4',
                              'name = "pathdata"\nindex = "data/x.txt"\nextra = ["/abs/y.bin", "z.bin"]')
    text = 'output_dir = "runs/out"\n' + text
    path = write(tmp_path, text)
    r = recipe.load(path)
    folder = path.parent.resolve()
    assert r.data[0].source.options["index"] == folder / "data" / "x.txt"
    assert r.data[0].source.options["extra"] == [Path("/abs/y.bin"), folder / "z.bin"]
    assert r.data[0].source.options["label"] == "a/b"  # strings stay strings
    assert r.output_dir == folder / "runs" / "out"


def test_dump_round_trips(toy_plugins, tmp_path):
    r = recipe.load(write(tmp_path, TOY_RECIPE), ["head.m=0.25"])
    text = recipe.dumps(r)
    data = tomllib.loads(text)
    assert data["head"] == {"name": "toyhead", "s": 8.0, "m": 0.25}
    assert data["eval"] == [{"name": "toyeval", "label": "toy"}]
    again = recipe.loads(text)
    assert again.to_dict() == r.to_dict()


def test_dumps_escapes_and_special_values():
    data = {"a": 'q"uote\n', "b": float("inf"), "c": [1, 2], "t": {"x y": True}, "arr": [{"k": 1}, {"k": 2}]}
    text = recipe.dumps(data)
    assert tomllib.loads(text) == data


@pytest.mark.parametrize(("override", "message"), [
    ("seed=99999999999999999999", "seed: 99999999999999999999 is out of range (a seed must lie in 0 .. 2**63-1)"),
    ("seed=-1", "seed: -1 is out of range (a seed must lie in 0 .. 2**63-1)"),
    ("train=5", "train: expected a table, got 5"),
    ("train.lr=inf", "train.lr: expected a finite number, got inf"),
    ("train.lr=nan", "train.lr: expected a finite number, got nan"),
    ("head.s=-inf", "head.s: expected a finite number, got -inf"),
    ("train.max_steps=9223372036854775808",
     "train.max_steps: 9223372036854775808 is out of range (integers must lie in -2**63 .. 2**63-1)"),
    ("train.threads=99999999", "train.threads: 'threads' must be <= 1024: 99999999"),  # torch segfaulted
    ("train.num_workers=5000", "train.num_workers: 'num_workers' must be <= 1024: 5000"),
    ("train.lr_milestones=[10, 10]", "train.lr_milestones: lr_milestones must be increasing positive steps, "
                                     "got [10, 10]"),
])
def test_values_torch_cannot_take_are_refused_at_load(toy_plugins, tmp_path, override, message):
    path = write(tmp_path, TOY_RECIPE)
    with pytest.raises(ConfigError) as info:
        recipe.load(path, [override])
    assert info.value.problems == [f"{path}: {message}"]


def test_the_largest_seed_trains(toy_plugins, tmp_path):
    from tface.core.train.trainer import Trainer

    r = recipe.load(write(tmp_path, TOY_RECIPE), [f"seed={2**63 - 1}", "train.max_steps=2"])
    out = Trainer(r, tmp_path / "run", echo=lambda m: None).run()
    assert out["summary"]["steps"] == 2

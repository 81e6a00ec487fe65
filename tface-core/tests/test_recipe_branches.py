"""Multi-dataset branches in recipes: ``[[data]]`` tables with their own batch size, weight and sampler."""

from __future__ import annotations

import pytest
import tomllib

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.config import ConfigError

TWO = TOY_RECIPE.replace('''[data]
name = "toydata"
classes = 4
''', '''[[data]]
name = "toydata"
classes = 4
batch_size = 8
weight = 0.5

[[data]]
name = "toydata"
branch = "second"
classes = 3
sampler = "balanced"
sampler_k = 2
''')


def test_single_table_is_one_implicit_branch(toy_plugins):
    r = recipe.loads(TOY_RECIPE)
    (b,) = r.data
    assert (b.name, b.batch_size, b.weight, b.sampler, b.explicit) == ("toydata", None, 1.0, "shuffle", False)
    assert b.batch(r.train) == 16
    assert "[data]" in recipe.dumps(r) and "branch" not in recipe.dumps(r)


def test_two_branches_split_branch_keys_from_source_options(toy_plugins):
    r = recipe.loads(TWO)
    a, b = r.data
    assert (a.name, a.batch(r.train), a.weight, a.sampler) == ("toydata", 8, 0.5, "shuffle")
    assert a.source.options == {"classes": 4, "per_class": 16, "seed": 0, "side": 16}
    assert (b.name, b.batch(r.train), b.weight, b.sampler, b.images_per_identity) == ("second", 16, 1.0, "balanced", 2)
    assert b.source.options["classes"] == 3
    again = recipe.loads(recipe.dumps(r))  # the resolved recipe reloads to the same branches
    assert [(x.name, x.batch_size, x.weight, x.sampler, x.images_per_identity, x.source.options) for x in again.data] \
        == [(x.name, x.batch_size, x.weight, x.sampler, x.images_per_identity, x.source.options) for x in r.data]
    assert len(tomllib.loads(recipe.dumps(r))["data"]) == 2


def test_default_branch_names_are_made_unique(toy_plugins):
    r = recipe.loads(TWO.replace('branch = "second"\n', ""))
    assert [b.name for b in r.data] == ["toydata", "toydata-2"]


def test_branch_errors_name_the_key(toy_plugins):
    bad = TWO.replace('branch = "second"', 'branch = "toydata"').replace("weight = 0.5", "weight = -1.0")
    with pytest.raises(ConfigError) as info:
        recipe.loads(bad.replace('name = "toydata"\nclasses = 4', 'name = "toydata"\nbranch = "toydata"\nclasses = 4'))
    text = str(info.value)
    assert "data[1].branch: 'toydata' is already the name of data[0]" in text
    assert "data[0].weight" in text
    with pytest.raises(ConfigError, match=r"data\[1\].sampler_k: the batch size 16 must be a multiple of "
                                          r"sampler_k = 3"):
        recipe.loads(TWO.replace("sampler_k = 2", "sampler_k = 3"))
    with pytest.raises(ConfigError, match=r"data\[1\].sampler"):
        recipe.loads(TWO.replace('"balanced"', '"balancd"'))
    with pytest.raises(ConfigError, match=r"data: expected a table"):
        recipe.loads(TOY_RECIPE.replace('[data]\nname = "toydata"\nclasses = 4\n', "data = []\n"))
    with pytest.raises(ConfigError, match=r"data\[0\].clases: unknown key"):
        recipe.loads(TWO.replace("classes = 4", "clases = 4"))


def test_override_a_branch_key(toy_plugins):
    r = recipe.loads(TWO, ["data.1.weight=2.0", "data.0.batch_size=4"])
    assert (r.data[0].batch_size, r.data[1].weight) == (4, 2.0)

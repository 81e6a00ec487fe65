"""The one table of component kinds, and what is derived from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tface.core import catalog, kinds, recipe, registry


def test_the_table():
    assert [(k.name, k.singular, k.slot, k.many, k.group) for k in kinds.TABLE] == [
        ("backbones", "backbone", "backbone", False, "tface.backbones"),
        ("heads", "head", "head", False, "tface.heads"),
        ("losses", "loss", "loss", True, "tface.losses"),
        ("methods", "method", "method", False, "tface.methods"),
        ("augmenters", "augmenter", "augment", True, "tface.augmenters"),
        ("datasets", "dataset", "data", True, "tface.datasets"),
        ("protocols", "protocol", "eval", True, "tface.protocols"),
        ("plugins", "plugin", None, False, "tface.plugins"),
    ]
    assert tuple(k.name for k in kinds.TABLE) == kinds.NAMES
    assert [k.slot for k in kinds.in_recipe()] == ["backbone", "head", "loss", "method", "augment", "data", "eval"]
    assert kinds.singular("heads") == "head" and kinds.singular("widgets") == "widgets"
    with pytest.raises(KeyError):
        kinds.get("widgets")


def test_every_base_imports():
    import collections.abc
    import types

    from torch import nn

    from tface.core.classifier import MarginHead
    from tface.core.data.source import DatasetSource
    from tface.core.method import TrainingMethod
    from tface.core.protocol import EvalProtocol

    assert [k.base_type() for k in kinds.TABLE] == [nn.Module, MarginHead, nn.Module, TrainingMethod,
                                                     collections.abc.Callable,
                                                     DatasetSource, EvalProtocol, types.ModuleType]


def test_the_registry_and_the_recipe_derive_their_lists_from_it():
    assert registry.KINDS == kinds.NAMES
    assert recipe._COMPONENTS == {"backbone": "backbones", "head": "heads", "method": "methods"}
    assert recipe._COMPONENT_LISTS == {"augment": "augmenters", "eval": "protocols"}
    assert recipe._DATA_KIND == "datasets" and recipe._LOSS_KIND == "losses"
    top_level = {"seed", "device", "output_dir", "train", "distributed", "classifier", "data", "backbone", "head",
                 "loss", "method", "augment", "eval"}
    assert top_level == recipe._TOP_LEVEL
    assert set(kinds.NAMES) >= {kind for provided in catalog.DISTRIBUTIONS.values() for kind in provided}


def test_messages_use_the_singular_of_the_table(site, tmp_path):
    """``losses`` once read ``losse`` (the plural minus its last letter) in two of the registry's messages."""
    mod = f"twinloss_{tmp_path.name}"
    body = "class Loss:\n    def __init__(self):\n        pass\n"
    site("loss-a", {"tface.losses": {"twin": f"{mod}:Loss"}}, {f"{mod}.py": body})
    site("loss-b", {"tface.losses": {"twin": f"{mod}:Loss"}})
    with pytest.raises(registry.AmbiguousComponentError, match=r"^loss 'twin' is registered by 'loss-a' and 'loss-b'"):
        registry.get("losses", "twin")
    site("loss-c", {"tface.losses": {"broken": "no_such_module_here:Loss"}})
    with pytest.raises(registry.PluginLoadError, match=r"^loss 'broken' from distribution 'loss-c'"):
        registry.get("losses", "broken")
    with pytest.raises(registry.UnknownComponentError, match=r"^unknown loss 'x'"):
        registry.get("losses", "x")


def test_the_table_imports_nothing_heavy():
    """``tface list`` and ``tface --help`` import the registry, hence the table: no torch."""
    code = "import sys, tface.core.kinds, tface.core.registry; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_recipe_holds_each_slot_under_its_name():
    """``getattr(recipe, kind.slot)`` is that kind's component(s): what code building a recipe iterates."""
    import attrs

    fields = attrs.fields_dict(recipe.Recipe)
    assert all(k.slot in fields for k in kinds.in_recipe())
    assert {k.slot for k in kinds.in_recipe() if k.many} == {n for n, f in fields.items() if f.type and
                                                             str(f.type).startswith("list[")}

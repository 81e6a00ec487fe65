"""Every registered component declares its options in one place: its Config and its constructor agree.

Iterates the real entry points of every kind installed in the test environment (the five tface
distributions, plus any other plugin installed there) through the registry, and runs the check a plugin
author runs in their own test suite (``tface.core.config.check_options``) on each. The example head plugin
is checked by ``test_example_plugin.py``, which installs it.
"""

from __future__ import annotations

import types

import pytest
import torch

from tface.core import kinds, registry
from tface.core.config import check_options

#: Values for the options that have no default (the constructors only store paths; nothing is opened).
EXAMPLES = {
    ("datasets", "tfrecord"): {"index": "train.txt"},
    ("datasets", "tfrecord_pairs"): {"index": "pairs.txt"},
    ("datasets", "image_folder"): {"root": "faces"},
    ("datasets", "image_list"): {"list": "faces.txt"},
    ("protocols", "ijb"): {"root": "ijb"},
    ("protocols", "rfw"): {"root": "rfw"},
}

ENTRIES = [(kind.name, entry) for kind in kinds.TABLE for entry in registry.entries(kind.name)]


def test_the_zoo_is_installed():
    """The test below sees the real entry points of every tface distribution."""
    found = {(kind, e.distribution) for kind, e in ENTRIES}
    assert {("backbones", "tface-backbones"), ("heads", "tface-heads"), ("augmenters", "tface-augment"),
            ("datasets", "tface-core"), ("protocols", "tface-eval"), ("plugins", "tface-backbones")} <= found
    assert len([e for kind, e in ENTRIES if kind == "backbones"]) >= 25


@pytest.mark.parametrize(("kind", "entry"), ENTRIES, ids=[f"{k}:{e.name}" for k, e in ENTRIES])
def test_declared_options_agree_with_the_constructor(kind, entry, tmp_path, monkeypatch):
    obj = registry.get(kind, entry.qualified)
    base = kinds.get(kind).base_type()
    if base is types.ModuleType:  # hook modules: no options, nothing to build
        assert isinstance(obj, types.ModuleType) and not hasattr(obj, "Config")
        return
    monkeypatch.chdir(tmp_path)
    with torch.device("meta") if kind == "backbones" else torch.device("cpu"):  # shapes only: ir_200 is 114 M
        problems = check_options(obj, EXAMPLES.get((kind, entry.name)), kind=kind)
    assert problems == []

"""One way to declare a component's options: ``@options`` derives the Config; ``check_options`` finds drift."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import torch
from attrs.validators import ge, gt, lt

from tface.core import registry
from tface.core.classifier import MarginHead
from tface.core.config import ConfigError, check_options, option, options, structure, validate_options


@options
class Margin(MarginHead):
    def __init__(self, s: float = option(64.0, gt(0)), m: float = option(0.5, ge(0), lt(math.pi / 2)),
                 easy: bool = False, cache: Path | None = None):
        super().__init__()
        self.s, self.m, self.easy, self.cache = s, m, easy, cache

    def forward(self, batch):
        return batch.cos * self.s


@attrs.define
class HandWritten:
    """The same options written out by hand: the reference the derived class must equal."""

    s: float = attrs.field(default=64.0, validator=gt(0))
    m: float = attrs.field(default=0.5, validator=[ge(0), lt(math.pi / 2)])
    easy: bool = False
    cache: Path | None = None


def problems(cls, data, path="head"):
    with pytest.raises(ConfigError) as info:
        structure(cls, data, path)
    return info.value.problems


def test_the_config_is_derived_from_the_signature():
    assert [(f.name, f.default) for f in attrs.fields(Margin.Config)] == [
        ("s", 64.0), ("m", 0.5), ("easy", False), ("cache", None)]
    assert str(inspect.signature(Margin)) == (  # the plain defaults are back in the signature
        "(s: 'float' = 64.0, m: 'float' = 0.5, easy: 'bool' = False, cache: 'Path | None' = None)")
    head = Margin()
    assert (head.s, head.m, head.easy, head.cache) == (64.0, 0.5, False, None)


def outcome(build):
    try:
        return "built", build()
    except ConfigError as exc:
        return "refused", exc.problems


@pytest.mark.parametrize("data", [{}, {"s": 0}, {"m": 2.0, "s": -1.0}, {"m": "x"}, {"easy": 1}, {"cache": 3},
                                  {"sm": 1.0}, {"s": 1, "m": 0.2, "easy": True, "cache": "a/b"}])
def test_validation_equals_a_hand_written_config(data):
    expected = outcome(lambda: attrs.asdict(structure(HandWritten, data, "head"), recurse=False))
    assert outcome(lambda: validate_options(Margin, data, "head")) == expected


def test_the_derived_messages_read_as_before():
    assert problems(Margin.Config, {"s": 0, "m": 2.0}) == [
        "head.s: 's' must be > 0: 0.0", "head.m: 'm' must be < 1.5707963267948966: 2.0"]
    assert problems(Margin.Config, {"sm": 1.0}) == [
        'head.sm: unknown key; did you mean "s"? (valid keys: s, m, easy, cache)']


def test_a_factory_function_keyword_only_and_required_options():
    @options
    def build(root: Path, *, depth: int = option(3, gt(0)), names: Sequence[str] = ("a", "b"),
              shape: tuple[int, ...] = (1, 2)):
        return root, depth, names, shape

    assert build(Path("x")) == (Path("x"), 3, ("a", "b"), (1, 2))
    assert validate_options(build, {"root": "r"}, "backbone") == {
        "root": Path("r"), "depth": 3, "names": ["a", "b"], "shape": (1, 2)}  # an array option reads as a list
    assert problems(build.Config, {"depth": 0}, "backbone") == [
        "backbone.root: required key is missing"]
    assert problems(build.Config, {"root": "r", "depth": 0}, "backbone") == [
        "backbone.depth: 'depth' must be > 0: 0"]
    first, second = build.Config(root=Path("r")), build.Config(root=Path("r"))
    assert first.names is not second.names  # a fresh list each time, never one shared default


def test_a_mutable_default_is_refused():
    with pytest.raises(TypeError, match="the default of option 'scales' is a mutable list; use a tuple"):
        @options
        def build(scales: list[float] = [1.0]):  # noqa: B006 - the mistake under test
            return scales


def test_a_subclass_keeps_the_checks_of_an_inherited_constructor():
    @options
    class Sharper(Margin):
        pass

    assert problems(Sharper.Config, {"s": -2.0}) == ["head.s: 's' must be > 0: -2.0"]
    assert check_options(Sharper, kind="heads") == []


def test_a_class_without_its_own_constructor_has_no_options():
    @options
    class Plain(torch.nn.Module):
        pass

    assert attrs.fields(Plain.Config) == ()
    assert check_options(Plain, kind="backbones") == []


# --- the agreement check ---------------------------------------------------------------------------------


class Drifting(MarginHead):
    """A hand-written Config that has drifted from the constructor in every way the check looks for."""

    @attrs.define
    class Config:
        s: float = 32.0  # the constructor says 64
        m: float = 0.5
        scale_by: int = 1  # the constructor has no such argument
        root: str = "x"  # required in the constructor

    def __init__(self, s: float = 64.0, m: float = 0.5, margin2: float = 0.1, root: str | None = None):
        super().__init__()

    def forward(self, batch):
        return batch.cos


def test_the_check_catches_a_drifting_component():
    assert check_options(Drifting) == [
        "Drifting: option 's' has default 32.0 in Config but default 64.0 in the constructor",
        "Drifting: option 'scale_by' is in Config but the constructor does not take it",
        "Drifting: option 'root' has default 'x' in Config but default None in the constructor",
        "Drifting: the constructor takes 'margin2' but Config does not declare it (a recipe cannot set it)",
    ]


def test_the_check_catches_a_drifting_plugin_through_the_registry(site, tmp_path):
    """The same check the zoo test runs on every installed component, on a drifting one installed like a plugin."""
    mod = f"drift_{tmp_path.name}"
    site("drift-dist", {"tface.heads": {"drift": f"{mod}:Head", "fine": f"{mod}:Fine"}}, {f"{mod}.py": '''
        import attrs
        from tface.core.classifier import MarginHead
        from tface.core.config import option, options

        class Head(MarginHead):
            @attrs.define
            class Config:
                s: float = attrs.field(default=64.0, validator=attrs.validators.gt(0))
                m: float = 0.5

            def __init__(self, s=64.0, m=0.35):  # someone changed one default only
                super().__init__()

            def forward(self, batch):
                return batch.cos

        @options
        class Fine(MarginHead):
            def __init__(self, s: float = option(64.0, attrs.validators.gt(0)), m: float = 0.35):
                super().__init__()

            def forward(self, batch):
                return batch.cos
    '''})
    assert check_options(registry.get("heads", "drift"), kind="heads") == [
        "Head: option 'm' has default 0.5 in Config but default 0.35 in the constructor"]
    assert check_options(registry.get("heads", "fine"), kind="heads") == []


def test_the_check_validates_the_defaults_and_builds_from_them():
    @options
    def bad_default(p: float = option(1.5, ge(0), lt(1))):
        return p

    assert check_options(bad_default) == ["bad_default.p: 'p' must be < 1: 1.5"]

    @options
    def refuses(size: int = 7):
        raise ValueError(f"size={size} is not supported")

    assert check_options(refuses) == [
        "refuses: building it from the "
        "validated defaults failed: ValueError: size=7 is not supported"]

    @options
    def needs(root: Path, size: int = 2):
        return [root, size]

    assert check_options(needs) == [
        "needs.root: required key is "
        "missing (give it a value in example=)"]
    assert check_options(needs, {"root": "anywhere"}) == []
    assert check_options(needs, {"root": "anywhere"}, kind="backbones") == [
        "needs: builds a list, which is not "
        "a torch.nn.Module (what backbones must be)"]


def test_the_check_accepts_a_component_validated_from_its_signature_alone():
    class NoConfig(MarginHead):
        def __init__(self, s: float = 2.0):
            super().__init__()

        def forward(self, batch):
            return batch.cos

    assert check_options(NoConfig, kind="heads") == []

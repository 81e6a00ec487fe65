from __future__ import annotations

import pathlib
from typing import Literal

import attrs
import pytest

from tface.core.config import ConfigError, closest, structure, unstructure, uses, validate_options


@attrs.define
class Inner:
    depth: int = 3


@attrs.define
class Opts:
    m: float = 0.5
    name: str = "x"
    flag: bool = False
    steps: list[int] = attrs.field(factory=list)
    mode: Literal["a", "b"] = "a"
    path: pathlib.Path | None = None
    inner: Inner = attrs.field(factory=Inner)
    scale: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))


def problems(data, path="head"):
    with pytest.raises(ConfigError) as info:
        structure(Opts, data, path)
    return info.value.problems


def test_type_errors_name_the_key_path():
    assert problems({"m": "x"}) == ['head.m: expected float, got "x"']
    assert problems({"flag": 1}) == ["head.flag: expected bool, got 1"]
    assert problems({"steps": [1, "2"]}) == ['head.steps[1]: expected int, got "2"']
    assert problems({"inner": {"depth": 1.5}}) == ["head.inner.depth: expected int, got 1.5"]
    assert problems({"mode": "c"}) == ['head.mode: expected "a" or "b", got "c"']


def test_unknown_key_suggests_the_closest():
    (msg,) = problems({"mm": 0.3})
    assert msg.startswith('head.mm: unknown key; did you mean "m"?')
    assert "valid keys: m, name, flag" in msg


def test_every_problem_is_reported_at_once():
    assert len(problems({"m": "x", "flag": "y", "bogus": 1})) == 3


def test_validator_failure_names_the_key():
    (msg,) = problems({"scale": -1.0})
    assert msg.startswith("head.scale:")


def test_conversions():
    cfg = structure(Opts, {"m": 1, "path": "a/b", "steps": [1, 2]})
    assert cfg.m == 1.0 and isinstance(cfg.m, float)
    assert cfg.path == pathlib.Path("a/b")
    assert unstructure(cfg)["path"] == "a/b"
    assert "path" not in unstructure(structure(Opts, {}))


def test_required_key():
    @attrs.define
    class Needs:
        index: str

    with pytest.raises(ConfigError, match="data.index: required key is missing"):
        structure(Needs, {}, "data")


def test_validate_options_uses_config_or_signature():
    @attrs.define
    class C:
        s: float = 2.0

    @uses(C)
    def factory(s: float = 2.0):
        return s

    assert validate_options(factory, {}, "x") == {"s": 2.0}

    def plain(alpha: float = 1.0, beta: int = 2):
        return alpha

    assert validate_options(plain, {"alpha": 3.0}, "loss") == {"alpha": 3.0}
    with pytest.raises(ConfigError, match='loss.alpah: unknown key; did you mean "alpha"'):
        validate_options(plain, {"alpah": 3.0}, "loss")


def test_closest():
    assert closest("arcfce", ["arcface", "cosface"]) == "arcface"
    assert closest("zzz", ["arcface"]) is None

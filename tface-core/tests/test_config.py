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


@attrs.define
class Numbers:
    count: int = 1
    limit: int | None = None
    lr: float = 0.1
    scales: list[float] = attrs.field(factory=list)


def number_problems(data):
    with pytest.raises(ConfigError) as info:
        structure(Numbers, data, "train")
    return info.value.problems


def test_integers_outside_64_bits_are_refused():
    assert number_problems({"count": 2**63}) == [
        f"train.count: {2**63} is out of range (integers must lie in -2**63 .. 2**63-1)"]
    assert number_problems({"count": -(2**63) - 1})[0].startswith(f"train.count: {-(2**63) - 1} is out of range")
    assert number_problems({"limit": 10**20}) == [  # an optional int says the range too
        "train.limit: 100000000000000000000 is out of range (integers must lie in -2**63 .. 2**63-1)"]
    assert number_problems({"limit": "x"}) == ['train.limit: expected int or none, got "x"']
    assert structure(Numbers, {"count": 2**63 - 1, "limit": -(2**63)}).count == 2**63 - 1


def test_non_finite_floats_are_refused():
    assert number_problems({"lr": float("inf")}) == ["train.lr: expected a finite number, got inf"]
    assert number_problems({"lr": float("-inf")}) == ["train.lr: expected a finite number, got -inf"]
    assert number_problems({"lr": float("nan")}) == ["train.lr: expected a finite number, got nan"]
    assert number_problems({"scales": [1.0, float("nan")]}) == ["train.scales[1]: expected a finite number, got nan"]
    assert number_problems({"lr": 2**1100}) == [f"train.lr: expected a finite number, got {2**1100}"]


def test_a_table_replaced_by_a_scalar_is_a_config_error():
    with pytest.raises(ConfigError) as info:
        structure(Numbers, 5, "train")  # type: ignore[arg-type]
    assert info.value.problems == ["train: expected a table, got 5"]


def test_validate_options_without_config_checks_what_the_constructor_takes():
    import torch

    class NoInit(torch.nn.Module):  # nn.Module's (*args, **kwargs) refuses every keyword
        pass

    with pytest.raises(ConfigError) as info:
        validate_options(NoInit, {"s": 1.0}, "head")
    assert info.value.problems == ["head.s: unknown key (valid keys: none)"]
    assert validate_options(NoInit, {}, "head") == {}

    class Needs(torch.nn.Module):
        def __init__(self, scale: float, margin: float = 0.2):
            super().__init__()

    with pytest.raises(ConfigError) as info:
        validate_options(Needs, {"margn": 0.3}, "head")
    assert info.value.problems == ["head.scale: required key is missing",
                                   'head.margn: unknown key; did you mean "margin"? (valid keys: scale, margin)']
    assert validate_options(Needs, {"scale": 2.0}, "head") == {"scale": 2.0}

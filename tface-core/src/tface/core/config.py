"""Validate plain dicts (from TOML) into attrs config classes.

Every recipe value passes through :func:`structure`, so a wrong key or type is reported with its full
key path (``head.m: expected float, got "x"``) before anything expensive runs. Components declare their
options as an attrs class; :func:`uses` attaches one to a factory function.
"""

from __future__ import annotations

import difflib
import inspect
import math
import pathlib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

T = TypeVar("T")

__all__ = ["ConfigError", "field_problems", "structure", "unstructure", "uses", "closest", "validate_options",
           "INT_MIN", "INT_MAX"]

#: The integer range of TOML (and of torch/numpy seeds and sizes): recipe integers outside it are refused.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class ConfigError(ValueError):
    """One or more invalid recipe values; each line starts with the key path."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def closest(word: str, choices: Sequence[str]) -> str | None:
    """The most similar choice, for "did you mean" hints."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def uses(config_cls: type) -> Callable[[T], T]:
    """Attach ``config_cls`` as ``Config`` to a factory so the registry can validate its options."""

    def attach(obj: T) -> T:
        obj.Config = config_cls  # type: ignore[attr-defined]
        return obj

    return attach


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "none"
    if isinstance(tp, type):
        return "path" if issubclass(tp, pathlib.PurePath) else {"str": "string"}.get(tp.__name__, tp.__name__)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, Sequence, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"array of {_type_name(args[0])}" if args else "array"
    return str(tp)


class _Fail(Exception):
    pass


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """Convert ``value`` to ``tp`` or append a problem and raise _Fail."""

    def fail(msg: str | None = None) -> typing.NoReturn:
        problems.append(f"{path}: {msg or f'expected {_type_name(tp)}, got {_describe(value)}'}")
        raise _Fail

    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        fail()
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        trial: list[str] = []
        for arg in others:
            trial = []
            try:
                return _convert(value, arg, path, trial)
            except _Fail:
                continue
        generic = f"{path}: expected {_type_name(others[0])}, got"
        if len(others) == 1 and trial and not trial[0].startswith(generic):  # e.g. out of range: say so
            problems.extend(trial)
            raise _Fail
        fail()
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail()
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                fail(f"expected an array of {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{path}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = []
            bad = False
            for i, v in enumerate(value):
                try:
                    items.append(_convert(v, item_tp, f"{path}[{i}]", problems))
                except _Fail:
                    bad = True
            if bad:
                raise _Fail
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            fail()
        args = typing.get_args(tp)
        if len(args) == 2:
            return {k: _convert(v, args[1], f"{path}.{k}", problems) for k, v in value.items()}
        return dict(value)
    if attrs.has(tp):
        if not isinstance(value, dict):
            fail()
        return _structure(tp, value, path, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not INT_MIN <= value <= INT_MAX:  # TOML integers are 64-bit; torch and numpy take no more
                fail(f"{value} is out of range (integers must lie in -2**63 .. 2**63-1)")
            return value
        fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value) if abs(value) < 2**1024 else math.inf  # a huge TOML integer overflows a float
            if not math.isfinite(number):
                fail(f"expected a finite number, got {value}")
            return number
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if tp is pathlib.Path:
        if isinstance(value, (str, pathlib.PurePath)):
            return pathlib.Path(value)
        fail()
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    fail()


def _structure(cls: type, data: Mapping[str, Any], prefix: str, problems: list[str]) -> Any:
    attrs.resolve_types(cls)
    fields = {f.alias if f.alias else f.name: f for f in attrs.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    failed = False
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            hint = closest(key, list(fields))
            known = ", ".join(fields) or "none"
            problems.append(
                f"{path}: unknown key"
                + (f'; did you mean "{hint}"?' if hint else "")
                + f" (valid keys: {known})"
            )
            failed = True
            continue
        try:
            kwargs[key] = _convert(value, fields[key].type, path, problems)
        except _Fail:
            failed = True
    for key, field in fields.items():
        if key not in data and field.default is attrs.NOTHING:
            problems.append(f"{prefix + '.' if prefix else ''}{key}: required key is missing")
            failed = True
    if failed:
        raise _Fail
    try:
        with attrs.validators.disabled():
            obj = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        problems.append(f"{prefix or cls.__name__}: {exc}")
        raise _Fail from exc
    for key, message in field_problems(obj):
        problems.append(f"{prefix + '.' if prefix else ''}{key}: {message}")
        failed = True
    if failed:
        raise _Fail
    return obj


def field_problems(obj: Any) -> list[tuple[str, str]]:
    """``(key, message)`` for every field of the attrs instance ``obj`` whose validator fails.

    Each validator runs on its own, so every failure is reported under its own key; the recipe loader
    and command-line front ends (which name the option instead) share the messages.
    """
    out = []
    for field in attrs.fields(type(obj)):
        if field.validator is None:
            continue
        try:
            field.validator(obj, field, getattr(obj, field.name))
        except (ValueError, TypeError) as exc:
            message = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
            out.append((field.alias or field.name, message))
    return out


def structure(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build ``cls`` from ``data``, raising :class:`ConfigError` listing every bad key at once."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError([f"{path or cls.__name__}: expected a table, got {_describe(data)}"])
    try:
        return _structure(cls, data, path, problems)
    except _Fail:
        raise ConfigError(problems) from None


def unstructure(obj: Any) -> Any:
    """attrs instance → plain TOML-ready data (paths become strings, ``None`` values are dropped)."""
    if attrs.has(type(obj)):
        out = {}
        for f in attrs.fields(type(obj)):
            v = getattr(obj, f.name)
            if v is None:
                continue
            out[f.alias or f.name] = unstructure(v)
        return out
    if isinstance(obj, dict):
        return {k: unstructure(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [unstructure(v) for v in obj]
    if isinstance(obj, pathlib.PurePath):
        return str(obj)
    return obj


def _takes_no_options(cls: type) -> bool:
    """Whether ``cls`` inherits its constructor from ``object`` or ``torch.nn.Module``.

    ``nn.Module.__init__(*args, **kwargs)`` looks as if it took any keyword, but refuses every one; a
    component class without its own ``__init__`` therefore has no options.
    """
    owner = next(c for c in cls.__mro__ if "__init__" in vars(c))
    return owner is object or (owner.__name__ == "Module" and owner.__module__ == "torch.nn.modules.module")


def validate_options(obj: Any, options: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Check ``options`` against ``obj.Config`` (or, lacking one, its call signature).

    Returns the keyword arguments to call ``obj`` with, with defaults filled in.
    """
    cfg_cls = getattr(obj, "Config", None)
    if cfg_cls is not None and attrs.has(cfg_cls):
        cfg = structure(cfg_cls, options, path)
        return {(f.alias or f.name): getattr(cfg, f.name) for f in attrs.fields(cfg_cls) if f.init}
    if isinstance(obj, type) and _takes_no_options(obj):
        params: Mapping[str, inspect.Parameter] = {}
    else:
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            return dict(options)
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return dict(options)
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    problems = [f"{path}.{n}: required key is missing" for n in names
                if params[n].default is inspect.Parameter.empty and n not in options]
    for key in options:
        if key not in names:
            hint = closest(key, names)
            problems.append(
                f"{path}.{key}: unknown key"
                + (f'; did you mean "{hint}"?' if hint else "")
                + f" (valid keys: {', '.join(names) or 'none'})"
            )
    if problems:
        raise ConfigError(problems)
    return dict(options)

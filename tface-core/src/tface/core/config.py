"""Validate plain dicts (from TOML) into attrs config classes.

Every recipe value passes through :func:`structure`, so a wrong key or type is reported with its full
key path (``head.m: expected float, got "x"``) before anything expensive runs. A component declares its
options once, in its constructor's signature: :func:`options` builds the attrs ``Config`` from it
(checks go beside the defaults with :func:`option`), so defaults cannot drift between the two;
:func:`check_options` tells a plugin's test suite whether a component's ``Config`` and constructor agree.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import pathlib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from tface.core import kinds

T = TypeVar("T")

__all__ = ["ConfigError", "field_problems", "structure", "unstructure", "uses", "closest", "validate_options",
           "option", "options", "check_options", "INT_MIN", "INT_MAX"]

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
    """Attach a hand-written ``config_cls`` as ``Config`` to a factory so the registry can validate its options.

    Prefer :func:`options`, which derives the class from the signature; :func:`check_options` finds a
    hand-written ``Config`` that disagrees with the constructor.
    """

    def attach(obj: T) -> T:
        obj.Config = config_cls  # type: ignore[attr-defined]
        return obj

    return attach


@attrs.frozen
class _Option:
    """What :func:`option` puts in a signature until :func:`options` replaces it by the plain default."""

    default: Any
    validators: tuple[Callable[[Any, Any, Any], Any], ...]


def option(default: Any, *validators: Callable[[Any, Any, Any], Any]) -> Any:
    """A default with the checks its recipe values must pass, written in the constructor's signature.

    ``m: float = option(0.5, attrs.validators.ge(0))``; the validators are attrs validators (or any
    ``(instance, attribute, value)`` callable raising ``ValueError``/``TypeError``). Only a function or
    class decorated with :func:`options` may use it: the decorator puts the plain default back.
    """
    return _Option(default, validators)


_CHECKS = "__tface_option_checks__"


def _plain_defaults(function: Any) -> dict[str, tuple[Callable[[Any, Any, Any], Any], ...]]:
    """Replace :func:`option` defaults of ``function`` by their values; its validators, by option name.

    The validators are kept on the function, so a subclass that inherits a decorated ``__init__`` (and is
    decorated itself) gets the same checks.
    """
    checks = dict(getattr(function, _CHECKS, {}))
    for p in inspect.signature(function).parameters.values():
        if isinstance(p.default, _Option):
            checks[p.name] = p.default.validators
    function.__defaults__ = tuple(d.default if isinstance(d, _Option) else d for d in function.__defaults__ or ())
    if function.__kwdefaults__:
        function.__kwdefaults__ = {k: d.default if isinstance(d, _Option) else d
                                   for k, d in function.__kwdefaults__.items()}
    setattr(function, _CHECKS, checks)
    return checks


def _is_tuple_type(annotation: Any) -> bool:
    if isinstance(annotation, str):  # not resolved yet (``from __future__ import annotations``)
        return annotation.replace("typing.", "").startswith(("tuple", "Tuple"))
    return annotation is tuple or typing.get_origin(annotation) is tuple


def options(component: T) -> T:
    """Derive the attrs ``Config`` of a component class or factory function from its signature.

    Every keyword parameter (of ``__init__`` for a class) is an option: its annotation is the type recipe
    values are checked against, its default is the default, and ``option(default, *validators)`` adds
    checks. The result is what a hand-written ``Config`` would be, so :func:`validate_options` and every
    error message work unchanged, and each default is written once. Defaults must be immutable (a tuple,
    not a list): one default is shared by every call; the ``Config`` turns a tuple default into a fresh list
    (unless the option is typed ``tuple``), as a TOML array is read as a list.
    """
    name = getattr(component, "__qualname__", repr(component))
    params: list[inspect.Parameter] = []
    checks: dict[str, tuple[Callable[[Any, Any, Any], Any], ...]] = {}
    if not (isinstance(component, type) and _takes_no_options(component)):
        function = component
        if isinstance(component, type):  # the __init__ it runs, its own or inherited
            function = next(vars(c)["__init__"] for c in component.__mro__ if "__init__" in vars(c))
        if not inspect.isfunction(function):
            raise TypeError(f"@options needs a class or a plain function, got {component!r}")
        checks = _plain_defaults(function)
        params = list(inspect.signature(function).parameters.values())
        if isinstance(component, type):
            params = params[1:]  # self
    namespace: dict[str, Any] = {
        "__module__": component.__module__, "__qualname__": f"{name}.Config",
        "__doc__": f"Options of ``{name}``, derived from its signature by ``@options``."}
    annotations: dict[str, Any] = {}
    for p in params:
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        annotations[p.name] = Any if p.annotation is p.empty else p.annotation
        if p.default is p.empty:
            namespace[p.name] = attrs.field(kw_only=True)
            continue
        if isinstance(p.default, (list, dict, set)):
            raise TypeError(f"{name}: the default of option {p.name!r} is a mutable {type(p.default).__name__}; "
                            "use a tuple (or None): one default is shared by every call")
        validators = list(checks.get(p.name, ()))
        default: Any = p.default
        if isinstance(default, tuple) and not _is_tuple_type(annotations[p.name]):
            default = attrs.Factory(functools.partial(list, default))  # an array option reads as a list
        namespace[p.name] = attrs.field(default=default, kw_only=True, validator=validators or None)
    namespace["__annotations__"] = annotations
    component.Config = attrs.define(type("Config", (), namespace))  # type: ignore[attr-defined]
    return component


_REQUIRED = object()


def _same(a: Any, b: Any) -> bool:
    """Whether two defaults are one option value (a list and a tuple of equal items are: TOML has arrays)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object whose == raises is no match
        return False


def _agree(declared: Any, accepted: Any) -> bool:
    if declared is _REQUIRED or accepted is _REQUIRED:
        return declared is accepted
    return _same(declared, accepted)


def _show(value: Any) -> str:
    return "no default (required)" if value is _REQUIRED else f"default {value!r}"


def _disagreements(component: Any, name: str) -> list[str]:
    """Where a component's ``Config`` and its constructor differ in option names or defaults."""
    config = getattr(component, "Config", None)
    if config is None or not attrs.has(config):
        return []  # validated from the signature itself: nothing to disagree with
    if isinstance(component, type) and _takes_no_options(component):
        params: dict[str, inspect.Parameter] = {}
    else:
        try:
            params = dict(inspect.signature(component).parameters)
        except (TypeError, ValueError):
            return []  # not inspectable (a builtin): only building it can tell
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = {n: (_REQUIRED if p.default is p.empty else p.default) for n, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    declared: dict[str, Any] = {}
    for f in attrs.fields(config):
        if f.init:
            default = f.default
            if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                default = default.factory(None) if default.takes_self else default.factory()
            declared[f.alias or f.name] = _REQUIRED if default is attrs.NOTHING else default
    problems = []
    for key, default in declared.items():
        if key not in accepted:
            if not takes_any:
                problems.append(f"{name}: option {key!r} is in Config but the constructor does not take it")
        elif not _agree(default, accepted[key]):
            problems.append(f"{name}: option {key!r} has {_show(default)} in Config but "
                            f"{_show(accepted[key])} in the constructor")
    problems += [f"{name}: the constructor takes {key!r} but Config does not declare it (a recipe cannot set it)"
                 for key in accepted if key not in declared]
    return problems


def check_options(component: Any, example: Mapping[str, Any] | None = None, *, kind: str | None = None) -> list[str]:
    """What is wrong with how ``component`` declares its options; ``[]`` when nothing is.

    For a plugin's own test suite (``assert check_options(MyHead, kind="heads") == []``); tface runs it
    on every registered component. It checks that the ``Config`` (when there is one) and the constructor
    take the same option names with the same defaults, that the defaults pass the validators, that the
    component can be built from them and, given its ``kind``, that what it builds is that kind's base
    (``tface.core.kinds``). ``example`` gives values for options without a default (a constructor must
    not open the files its options name, so any path will do).
    """
    name = getattr(component, "__name__", repr(component))
    problems = _disagreements(component, name)
    if problems:
        return problems
    try:
        kwargs = validate_options(component, dict(example or {}), name)
    except ConfigError as exc:
        return [p + (" (give it a value in example=)" if p.endswith("required key is missing") else "")
                for p in exc.problems]
    try:
        built = component(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure is the finding
        return [f"{name}: building it from the validated defaults failed: {type(exc).__name__}: {exc}"]
    if kind is not None and not isinstance(built, kinds.get(kind).base_type()):
        problems.append(f"{name}: builds a {type(built).__qualname__}, which is not a "
                        f"{kinds.get(kind).base.replace(':', '.')} (what {kind} must be)")
    return problems


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
    hook = getattr(tp, "__tface_structure__", None)
    if hook is not None:  # a type that reads its own tables (tface.core.reference: component references)
        before = len(problems)
        out = hook(value, path, problems)
        if out is None or len(problems) > before:
            raise _Fail
        return out
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
    own = getattr(obj, "__tface_unstructure__", None)
    if own is not None:  # a type that writes its own table (the reverse of ``__tface_structure__``)
        return own()
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

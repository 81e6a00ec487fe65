"""Component registry backed by Python entry points.

Every component, built-in or third-party, is an entry point in one of the ``tface.<kind>`` groups.
Listing reads distribution metadata only; an entry point is imported the first time it is asked for,
and the result (object or failure) is cached. One broken plugin never stops the others: any exception at
import (``SystemExit`` included; only ``KeyboardInterrupt`` passes) marks that entry point broken.

Several entry points of one distribution with the same target are one component: the entry named
like the target's object in lower case (else exactly like it, else the first lower-case name) is its name,
the others are aliases (``IR_50`` for ``ir_50``, ``CurricularFace`` for ``curricularface``: TFace's spelling).
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

import attrs
import importlib_metadata

from tface.core import catalog, kinds
from tface.core.config import closest, validate_options

__all__ = [
    "KINDS",
    "Entry",
    "RegistryError",
    "UnknownComponentError",
    "AmbiguousComponentError",
    "PluginLoadError",
    "entries",
    "names",
    "get",
    "get_named",
    "create",
    "status",
    "is_loaded",
    "clear_cache",
    "warn_once",
]

#: The kind names (from :mod:`tface.core.kinds`, the one table of kinds).
KINDS: tuple[str, ...] = kinds.NAMES
CORE_DISTRIBUTION = "tface-core"
LOAD_ENV = "TFACE_LOAD_PLUGINS"


class RegistryError(LookupError):
    """Base class for registry lookups that cannot be answered."""


class UnknownComponentError(RegistryError):
    pass


class AmbiguousComponentError(RegistryError):
    pass


class PluginLoadError(RegistryError):
    """An entry point failed to import; ``__cause__`` is the original exception."""


def canonical(dist_name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", dist_name).lower()


@attrs.frozen
class Entry:
    """Metadata of one registered component (no import needed)."""

    kind: str
    name: str
    distribution: str
    version: str
    target: str
    entry_point: Any = attrs.field(repr=False, eq=False)
    aliases: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.distribution}:{self.name}"

    @property
    def all_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        hint = closest(kind, KINDS)
        raise RegistryError(
            f"unknown component kind {kind!r}"
            + (f'; did you mean "{hint}"?' if hint else "")
            + f" (kinds: {', '.join(KINDS)})"
        )
    return kind


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Print ``warning: message`` on stderr, once per process (plugin problems are found on every lookup)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _allowed() -> set[str] | None:
    raw = os.environ.get(LOAD_ENV)
    if raw is None:
        return None
    allowed = {canonical(p.strip()) for p in raw.split(",") if p.strip()}
    allowed.add(CORE_DISTRIBUTION)  # the host is always present
    _check_allowed(frozenset(allowed))
    return allowed


@functools.cache
def _installed() -> dict[str, str]:
    """Canonical name → name of every installed distribution."""
    out: dict[str, str] = {}
    for dist in importlib_metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonical(name), name)
    return out


@functools.cache
def _check_allowed(allowed: frozenset[str]) -> None:
    """Warn about ``TFACE_LOAD_PLUGINS`` names that match no installed distribution (a typo hides a plugin)."""
    installed = _installed()
    unknown = sorted(allowed - installed.keys())
    if not unknown:
        return
    hints = [h for h in (closest(u, sorted(installed)) for u in unknown) if h]
    warn_once(
        f"{LOAD_ENV} names {', '.join(repr(u) for u in unknown)}, which "
        f"{'matches' if len(unknown) == 1 else 'match'} no installed distribution"
        + (f'; did you mean {", ".join(repr(installed[h]) for h in hints)}?' if hints else "")
    )


@functools.cache
def _scan(kind: str, allowed: frozenset[str] | None) -> tuple[Entry, ...]:
    groups: dict[tuple[str, str], list[Any]] = {}  # (distribution, target) -> entry points, in file order
    meta: dict[str, tuple[str, str]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in importlib_metadata.entry_points(group=kinds.get(kind).group):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else "unknown"
        version = dist.version if dist is not None else "unknown"
        if allowed is not None and canonical(dist_name) not in allowed:
            continue
        key = (canonical(dist_name), ep.name)
        if key in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add(key)
        meta.setdefault(canonical(dist_name), (dist_name, version))
        groups.setdefault((canonical(dist_name), ep.value.replace(" ", "")), []).append(ep)
    found = []
    for (dist_key, target), eps in groups.items():
        attr = target.rpartition(":")[2].rpartition(".")[2]
        lower = sorted((ep for ep in eps if ep.name == ep.name.lower()), key=lambda ep: ep.name)
        primary = next((ep for ep in eps if ep.name == attr.lower()),
                       next((ep for ep in eps if ep.name == attr), lower[0] if lower else eps[0]))
        dist_name, version = meta[dist_key]
        aliases = tuple(ep.name for ep in eps if ep is not primary)
        found.append(Entry(kind, primary.name, dist_name, version, primary.value, primary, aliases))
    return tuple(sorted(found, key=lambda e: (e.name, canonical(e.distribution))))


def entries(kind: str | None = None) -> list[Entry]:
    """Registered components of ``kind`` (or of every kind), from metadata only."""
    kinds = KINDS if kind is None else (_check_kind(kind),)
    allowed = _allowed()
    frozen = frozenset(allowed) if allowed is not None else None
    return [e for k in kinds for e in _scan(k, frozen)]


def names(kind: str) -> list[str]:
    """Sorted unique component names of ``kind``."""
    return sorted({e.name for e in entries(kind)})


def resolve(kind: str, name: str) -> Entry:
    """The entry for ``name`` or ``"dist:name"``; raises with known names or both distributions."""
    known = entries(kind)
    if ":" in name:
        dist_part, _, short = name.rpartition(":")
        matches = [e for e in known if short in e.all_names and canonical(e.distribution) == canonical(dist_part)]
    else:
        short = name
        matches = [e for e in known if name in e.all_names]
    if not matches:
        all_names = sorted({e.name for e in known})
        hint = closest(short, sorted({n for e in known for n in e.all_names}))
        where = f" from distribution {dist_part!r}" if ":" in name else ""
        raise UnknownComponentError(
            f"unknown {kinds.singular(kind)} {name!r}{where}"
            + (f'; did you mean "{hint}"?' if hint else "")
            + f" (known {kind}: {', '.join(all_names) or 'none'})"
            + _install_hint(kind, short, known)
        )
    if len(matches) > 1:
        dists = " and ".join(repr(e.distribution) for e in matches)
        raise AmbiguousComponentError(
            f"{kinds.singular(kind)} {name!r} is registered by {dists}; "
            f"qualify it as one of: {', '.join(repr(e.qualified) for e in matches)}"
        )
    return matches[0]


def _install_hint(kind: str, name: str, known: list[Entry]) -> str:
    """For a name one of tface's own distributions provides, or a kind nothing provides: what to install."""
    dist = catalog.provider(kind, name)
    if dist is None and not known:
        dist = next(iter(catalog.providers_of(kind)), None)
    if dist is None or any(canonical(e.distribution) == dist for e in known):
        return ""
    what = f"{name!r} comes with" if catalog.provider(kind, name) else f"{kind} come with"
    allowed = _allowed()
    if dist in _installed() and allowed is not None and dist not in allowed:
        return f"; {what} {dist}, which {LOAD_ENV}={os.environ[LOAD_ENV]!r} leaves out: add {dist} to it"
    return f"; {what} {dist}: pip install {dist}"


_loaded: dict[tuple[str, str, str], Any] = {}


def _load(entry: Entry) -> Any:
    key = (entry.kind, canonical(entry.distribution), entry.name)
    if key not in _loaded:
        try:
            _loaded[key] = entry.entry_point.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit, GeneratorExit, ... inside a plugin's import: its problem
            _loaded[key] = PluginLoadError(
                f"{kinds.singular(entry.kind)} {entry.name!r} from distribution {entry.distribution!r} "
                f"(entry point {entry.name} = {entry.target!r}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            )
            _loaded[key].__cause__ = exc
    value = _loaded[key]
    if isinstance(value, PluginLoadError):
        raise value
    return value


def get(kind: str, name: str) -> Any:
    """The object behind component ``name`` (imported on first use, then cached)."""
    return _load(resolve(_check_kind(kind), name))


def get_named(kind: str, name: Any, path: str, problems: list[str]) -> Any | None:
    """:func:`get` for a table's ``name`` at key ``path`` (``backbone``, ``method.teacher``): the object, or None
    after adding the problem (not a string, or not registered) to ``problems``."""
    if not isinstance(name, str):
        problems.append(f"{path}.name: required string naming a registered {kinds.singular(kind)} "
                        f"(one of: {', '.join(names(kind)) or 'none installed'})")
        return None
    try:
        return get(kind, name)
    except RegistryError as exc:
        problems.append(f"{path}.name: {exc}")
        return None


def create(kind: str, name: str, /, **options: Any) -> Any:
    """Validate ``options`` with the component's config, then build it."""
    obj = get(kind, name)
    kwargs = validate_options(obj, options, path=kinds.singular(kind))
    return obj(**kwargs)


def is_loaded(entry: Entry) -> bool:
    """Whether this process has already imported ``entry`` (or failed to)."""
    return (entry.kind, canonical(entry.distribution), entry.name) in _loaded


def status(entry: Entry) -> str:
    """``"ok"`` or ``"broken: <reason>"``; imports the entry (this is the one listing call that does)."""
    try:
        _load(entry)
    except PluginLoadError as exc:
        cause = exc.__cause__
        return f"broken: {type(cause).__name__}: {cause}" if cause else f"broken: {exc}"
    return "ok"


def loaded_versions(kinds: Iterable[str] = KINDS) -> dict[str, str]:
    """Distribution → version for everything registered (recorded in each run folder)."""
    out: dict[str, str] = {}
    for kind in kinds:
        for e in entries(kind):
            out[e.distribution] = e.version
    return dict(sorted(out.items()))


def clear_cache() -> None:
    """Forget scanned metadata and loaded objects (after installing a plugin at run time; tests)."""
    _scan.cache_clear()
    _installed.cache_clear()
    _check_allowed.cache_clear()
    _loaded.clear()
    _warned.clear()
    importlib.invalidate_caches()

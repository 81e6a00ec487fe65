"""Import checks for ``tface list``, remembered while nothing they imported has changed.

Importing a component is the only sure way to know that it loads, and tface's own components import
torch (seconds). So a passed check is stored in ``<cache>/list-check.json`` (``fsutil.default_cache_root``)
with a fingerprint: the interpreter, ``sys.path``, the names in every ``sys.path`` folder (an install or
uninstall changes them) and the size and mtime of every module file the process had imported. While the
fingerprint holds, ``tface list`` reuses those results and imports nothing. Failures are never stored: a
broken component is imported again each time, so it always shows as broken.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tface.core import registry
from tface.core.fsutil import atomic_write_bytes, default_cache_root

__all__ = ["statuses", "store_path"]

FORMAT = 1


def store_path() -> Path:
    return default_cache_root() / "list-check.json"


def _key(e: registry.Entry) -> str:
    return "|".join((e.kind, registry.canonical(e.distribution), e.version, e.name, e.target))


def _environment() -> dict[str, Any]:
    listing = hashlib.sha256()
    for folder in sys.path:
        try:
            names = sorted(os.listdir(folder or "."))
        except OSError:
            names = []
        listing.update(json.dumps([folder, names]).encode())
    return {"format": FORMAT, "python": sys.version, "executable": sys.executable, "path": list(sys.path),
            "listing": listing.hexdigest()}


def _module_files() -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            try:
                st = os.stat(path)
            except OSError:
                continue
            out[path] = [st.st_mtime_ns, st.st_size]
    return out


def _unchanged(files: dict[str, list[int]]) -> bool:
    for path, (mtime, size) in files.items():
        try:
            st = os.stat(path)
        except OSError:
            return False
        if st.st_mtime_ns != mtime or st.st_size != size:
            return False
    return True


def _read(env: dict[str, Any]) -> tuple[set[str], dict[str, list[int]]]:
    """The remembered passes and their files, if the store exists and its fingerprint still holds."""
    try:
        store = json.loads(store_path().read_text(encoding="utf-8"))
        if store["environment"] == env and _unchanged(store["files"]):
            return set(store["ok"]), store["files"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # missing, unreadable, other format
        pass
    return set(), {}


def statuses(entries: Iterable[registry.Entry], *, remembered: bool = True) -> dict[registry.Entry, str]:
    """``"ok"`` or ``"broken: <reason>"`` for each entry; ``remembered=False`` imports every one again."""
    env = _environment()
    ok, files = _read(env)
    out: dict[registry.Entry, str] = {}
    checked: list[registry.Entry] = []
    for e in entries:
        if registry.is_loaded(e) or not remembered or _key(e) not in ok:
            out[e] = registry.status(e)  # imports it, unless this process already did
            checked.append(e)
        else:
            out[e] = "ok"
    before = set(ok)
    for e in checked:
        (ok.add if out[e] == "ok" else ok.discard)(_key(e))
    if ok != before:
        data = {"environment": env, "files": {**files, **_module_files()}, "ok": sorted(ok)}
        with contextlib.suppress(OSError):  # a read-only home only costs speed
            atomic_write_bytes(store_path(), json.dumps(data).encode())
    return out

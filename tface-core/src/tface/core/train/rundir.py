"""The run folder: created fresh (never mixed with an earlier run), marked with ``status.json``.

``status.json`` says whether a run is ``running``, ``done``, ``failed`` (with the reason) or ``interrupted``,
the step it reached, and lists every file the run wrote (``files``, relative paths). That list is the only
thing ``tface run --overwrite`` ever deletes, so a user's own files in the folder are never touched.
``tface run --resume`` reopens such a folder (:func:`reopen_run_dir`) and keeps its list.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from tface.core import __version__
from tface.core.fsutil import atomic_write_bytes

__all__ = ["STATUS_FILE", "RunDir", "RunDirError", "check_run_dir", "default_run_dir", "prepare_run_dir",
           "read_status", "reopen_run_dir"]

STATUS_FILE = "status.json"


class RunDirError(RuntimeError):
    """The run folder cannot be used as asked (holds files, is a file); one clear line."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_status(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed ``status.json`` of ``folder``; None when absent or not a status written by tface."""
    try:
        data = json.loads((Path(folder) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        return None
    return data


def _still_running(status: dict[str, Any]) -> bool:
    """Whether ``status`` says running and its process is alive on this machine (a killed run's is not)."""
    pid = status.get("pid")
    if status.get("status") != "running" or status.get("host") != socket.gethostname():
        return False
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def default_run_dir(stem: str, parent: str | os.PathLike = "runs") -> Path:
    """Create and return ``parent/<stem>-<YYYYmmdd-HHMMSS>``; two runs in the same second get ``-2``, ``-3``, ...

    The folder is created exclusively (``mkdir`` fails when it exists), so even concurrent runs never share one.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    k = 1
    while True:
        path = parent / (base if k == 1 else f"{base}-{k}")
        try:
            path.mkdir(exist_ok=False)
        except FileExistsError:
            k += 1
            continue
        _claim(path, "run folder")
        return path


def _own_files(folder: Path, status: dict[str, Any]) -> list[Path]:
    """The files ``status`` lists, kept only when they lie inside ``folder`` (a status file is user data too)."""
    root = folder.resolve()
    out = []
    for rel in status["files"]:
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute():
            continue
        path = (folder / rel)
        if root not in path.resolve().parents:
            continue
        out.append(path)
    return out


def check_run_dir(folder: str | os.PathLike, overwrite: bool = False, flag: str = "--output-dir") -> None:
    """Raise :class:`RunDirError` when :func:`prepare_run_dir` would refuse ``folder``; touches nothing.

    ``tface run --dry-run`` uses it, so a dry run that passes is not followed by a refused run.
    """
    _check(Path(folder), overwrite, flag)


def _check(folder: Path, overwrite: bool, flag: str) -> dict[str, Any] | None:
    """The earlier run's status when ``folder`` may be used (None: absent or empty), else RunDirError."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        raise RunDirError(f"{flag} {folder}: exists and is not a folder")
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    held = f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, e.g. {entries[0]}"
    status = read_status(folder)
    if status is not None and _still_running(status):
        raise RunDirError(f"{flag} {folder}: holds a run that is still running (pid {status.get('pid')} on this "
                          "machine); choose a new folder")
    if not overwrite:
        what = (f"holds a tface run ({status.get('status', 'unknown status')})" if status is not None
                else f"is not empty ({held})")
        raise RunDirError(f"{flag} {folder}: {what}; choose a new folder, or pass --overwrite to replace "
                          "the files of the earlier run")
    if status is None:
        raise RunDirError(f"{flag} {folder}: --overwrite replaces an earlier tface run only, but this folder has "
                          f"no {STATUS_FILE} listing the files tface wrote ({held}); choose a new folder or "
                          "empty this one yourself")
    return status


def prepare_run_dir(folder: str | os.PathLike, overwrite: bool = False, flag: str = "--output-dir") -> Path:
    """Make ``folder`` ready for a new run: create it, accept it empty, or refuse it.

    A folder holding anything is refused unless ``overwrite``; then the files an earlier tface run listed in
    its ``status.json`` are deleted (and the folders they leave empty) and nothing else. A non-empty folder
    without such a status was not written by tface (or by a tface that kept no list) and is refused even
    with ``overwrite``, as is a run still running. ``flag`` names where the folder came from in messages.
    """
    folder = Path(folder)
    status = _check(folder, overwrite, flag)
    if status is None:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        files = _own_files(folder, status)
        _remove_stale_temps(files)
        for path in files:
            if path.is_file() or path.is_symlink():
                path.unlink()
        for parent in sorted({p.parent for p in files}, key=lambda p: len(p.parts), reverse=True):
            if parent != folder and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        (folder / STATUS_FILE).unlink(missing_ok=True)
    _claim(folder, flag)
    return folder


def _remove_stale_temps(files: list[Path]) -> None:
    """Delete the temporary files a killed run left beside its own files (``.<name>.*.tmp``, see fsutil)."""
    for path in files:
        if path.parent.is_dir():
            for tmp in path.parent.glob(f".{path.name}.*.tmp"):
                if tmp.is_file():
                    tmp.unlink()


def reopen_run_dir(folder: str | os.PathLike, flag: str = "--resume") -> RunDir:
    """The run folder of an earlier run, to continue it: status ``running`` again, its file list kept.

    Refused (:class:`RunDirError`) when ``folder`` is missing, holds no tface run, or holds a run whose
    process is still alive. Temporary files a killed run left beside its files are deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RunDirError(f"{flag} {folder}: " + ("is not a folder" if folder.exists() else "no such folder"))
    status = read_status(folder)
    if status is None:
        raise RunDirError(f"{flag} {folder}: holds no tface run (no {STATUS_FILE} listing the files tface wrote)")
    if _still_running(status):
        raise RunDirError(f"{flag} {folder}: the run is still running (pid {status.get('pid')} on this machine)")
    _remove_stale_temps(_own_files(folder, status))
    run = RunDir(folder)
    files = [f for f in status["files"] if isinstance(f, str)]
    resumed = status.get("resumed") if isinstance(status.get("resumed"), list) else []
    # the earlier status (done, failed, ...) stays until resumed() says running
    run.status.update({k: status[k] for k in ("started", "status") if k in status})
    run.status["files"] = files if STATUS_FILE in files else [STATUS_FILE, *files]
    run.status["resumed"] = resumed
    run.status["step"] = status.get("step", 0)
    return run


def _claim(folder: Path, flag: str) -> None:
    """Create ``status.json`` exclusively: of two runs started on one folder at once, one gets it."""
    try:
        with open(folder / STATUS_FILE, "x", encoding="utf-8") as f:
            json.dump({"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
                       "files": [STATUS_FILE]}, f)
    except FileExistsError:
        raise RunDirError(f"{flag} {folder}: another run started in this folder just now; choose a new "
                          "folder") from None


class RunDir:
    """A prepared run folder: writes files through it so ``status.json`` lists each one before it exists."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.status: dict[str, Any] = {
            "status": "running",
            "started": _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "tface_version": __version__,
            "step": 0,
            "files": [STATUS_FILE],
        }

    def _save(self) -> None:
        atomic_write_bytes(self.path / STATUS_FILE, (json.dumps(self.status, indent=2) + "\n").encode())

    def start(self) -> None:
        self._save()

    def claim(self, *paths: str | os.PathLike) -> None:
        """Record files (relative to the folder, or inside it) as the run's own before they are written."""
        new = False
        for p in paths:
            p = Path(p)
            try:
                rel = p.relative_to(self.path).as_posix()
            except ValueError:  # already relative to the folder
                rel = p.as_posix()
            if rel not in self.status["files"]:
                self.status["files"].append(rel)
                new = True
        if new:
            self._save()

    def release(self, *paths: str | os.PathLike) -> None:
        """Forget files the run deleted itself (old checkpoints), so the list names only what exists."""
        rels = set()
        for p in paths:
            p = Path(p)
            try:
                rels.add(p.relative_to(self.path).as_posix())
            except ValueError:
                rels.add(p.as_posix())
        kept = [f for f in self.status["files"] if f not in rels]
        if len(kept) != len(self.status["files"]):
            self.status["files"] = kept
            self._save()

    def note(self, **fields: Any) -> None:
        """Record more about the run in ``status.json`` (e.g. the step of the newest checkpoint)."""
        self.status.update(fields)
        self._save()

    def resumed(self, step: int) -> None:
        """Record that this process continues the run from the checkpoint of ``step``."""
        self.status["resumed"] = [*self.status.get("resumed", []), {"step": int(step), "at": _now()}]
        self.status.update(status="running", step=int(step))
        for key in ("finished", "reason"):
            self.status.pop(key, None)
        self._save()

    def write_text(self, rel: str, text: str) -> Path:
        self.claim(rel)
        return atomic_write_bytes(self.path / rel, text.encode("utf-8"))

    def finish(self, status: str, step: int, reason: str | None = None) -> None:
        """``done``, ``failed`` (``reason``: one line) or ``interrupted``, with the step reached."""
        self.status.update(status=status, step=int(step), finished=_now())
        if reason is not None:
            self.status["reason"] = reason
        self._save()

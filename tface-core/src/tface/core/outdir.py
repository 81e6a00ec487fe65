"""Output folders that never lose a user's files: build aside, swap in on success, delete only our own.

Every ``tface data`` command that writes a folder goes through :class:`OutputFolder`::

    with OutputFolder(target, overwrite=overwrite) as out:
        ...write everything under out.path (and out.companion("NAME.txt"))...
    # on a clean exit the outputs are now in ``target``; on an exception nothing changed

Rules:

- Outputs are built in a temporary sibling of the target, ``.NAME.tmp-<pid>-<random>/NAME`` (inside
  an existing target when its parent is read-only); only a build that finishes is moved into place.
  A failed or interrupted build (any exception, Ctrl-C included) removes the sibling and leaves the
  target as it was. Only a killed process (``SIGKILL``,
  power loss) can leave a ``.NAME.tmp-*`` folder behind; it is never part of the output and can be
  deleted by hand.
- A target that does not exist (or is empty) is simply filled. A target holding anything is refused,
  naming it, unless ``overwrite``; the one exception is left to the caller (SynthFace reuses a
  complete identical set).
- With ``overwrite``, the files listed in the target's old manifest are deleted (then the sub-folders
  that this left empty), the new files are moved in, and nothing else is touched: files tface did not
  write stay, even inside the folder. A new file with the same name as an existing one replaces it.
- A new target is swapped in with one ``rename``. An existing one keeps its own inode (so
  ``tface data synth .`` keeps the shell's working folder valid) and receives the new files one
  ``rename`` at a time, with the names in ``last`` (a data set's "complete" marker) moved last.

Manifest (:data:`MANIFEST`, ``tface-manifest.txt`` in the output folder), version 1: UTF-8 text; lines
starting with ``#`` are comments (the first says what the file is); every other non-empty line is the
relative POSIX path of one regular file that tface wrote in this folder (no ``..``, never absolute,
never the manifest itself), sorted. While files are being moved in, the manifest lists old and new
files together, so a crash in the middle still leaves every tface file listed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from types import TracebackType

from tface.core.fsutil import atomic_write_bytes, new_dir_mode

__all__ = ["MANIFEST", "OutputExistsError", "OutputFolder", "SameFileError", "check_distinct", "read_manifest",
           "write_manifest"]

MANIFEST = "tface-manifest.txt"
_HEADER = ("# tface output manifest v1: the files tface wrote in this folder, one relative path a line.\n"
           "# --overwrite deletes only these files; anything else in the folder is left alone.\n")


class OutputExistsError(ValueError):
    """The output is in the way (not empty, or holds something tface will not replace); names it."""


class SameFileError(ValueError):
    """An output would overwrite (or sit around) one of the command's inputs."""


def _rel(line: str, where: str) -> str:
    p = PurePosixPath(line)
    if not line or p.is_absolute() or any(part in ("..", "") for part in line.split("/")) or line == MANIFEST \
            or line.startswith("#") or "\\" in line:
        raise OutputExistsError(f"{where}: {line!r} is not a relative path inside the folder; "
                                "this manifest is damaged, remove the folder's files by hand")
    return p.as_posix()


def read_manifest(folder: str | os.PathLike) -> list[str] | None:
    """The files listed in ``folder``'s manifest, or None when it has none (tface did not write it)."""
    path = Path(folder) / MANIFEST
    try:
        text = path.read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputExistsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    return [_rel(ln, f"{path}:{k}") for k, ln in enumerate(lines, 1)]


def write_manifest(folder: str | os.PathLike, files: Iterable[str]) -> Path:
    """Write ``folder``'s manifest (atomically) listing ``files`` (relative POSIX paths)."""
    names = sorted(set(files))
    for name in names:
        if "\n" in name or "\r" in name:
            raise ValueError(f"{name!r}: a file name with a line break cannot go into a manifest")
        _rel(name, str(Path(folder) / MANIFEST))
    text = _HEADER + "".join(f"{n}\n" for n in names)
    return atomic_write_bytes(Path(folder) / MANIFEST, text.encode("utf-8", "surrogateescape"))


def _files_under(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames):
            rel = (base / name).relative_to(folder).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return out


def _real(path: Path) -> Path:
    """``path`` with its folders' symlinks resolved (the last component kept as is)."""
    return Path(os.path.realpath(path.parent)) / path.name


class OutputFolder:
    """Build an output folder aside and swap it into ``target`` on success (rules: module docstring).

    ``companions`` are single files written next to the target (``pack``'s ``NAME.txt``): staged in the
    same temporary sibling, moved into place after the folder, replaced only with ``overwrite``.
    ``last`` names files of the folder to move in after all the others (a "complete" marker).
    """

    def __init__(self, target: str | os.PathLike, *, overwrite: bool = False, companions: Iterable[str] = (),
                 last: Iterable[str] = ()):
        target = Path(target)
        self.target = _real(Path(os.path.abspath(target)))
        if self.target.is_symlink() and self.target.resolve().is_dir():
            self.target = self.target.resolve()  # a link to a folder: fill the folder, keep the link
        if not self.target.name or self.target == self.target.parent:
            raise OutputExistsError(f"{target}: cannot use the filesystem root as an output folder")
        self.overwrite = overwrite
        self.companions = tuple(companions)
        self.last = tuple(last)
        self.staging: Path | None = None
        self.path = self.target  # replaced by the build folder on enter
        self._discard = False

    # --- checks ----------------------------------------------------------------------------------------

    def existing(self) -> list[str]:
        """What is in the way: entries of the target and companions that exist (empty when none)."""
        found = []
        if self.target.is_dir() and not self.target.is_symlink():
            if any(p != self.staging for p in self.target.iterdir()):
                found.append(str(self.target))
        elif self.target.exists() or self.target.is_symlink():
            raise OutputExistsError(f"{self.target} exists and is not a folder: choose another output")
        for name in self.companions:
            p = self.target.parent / name
            if p.is_dir() and not p.is_symlink():
                raise OutputExistsError(f"{p} is a folder: choose another output name")
            if p.exists() or p.is_symlink():
                found.append(str(p))
        return found

    def check(self) -> None:
        """Raise :class:`OutputExistsError` when the output is in the way and ``overwrite`` is off."""
        found = self.existing()
        if not found or self.overwrite:
            return
        where = found[0]
        if where == str(self.target) and read_manifest(self.target) is None:
            raise OutputExistsError(
                f"{where} is not empty and is not a tface output: choose a new folder, or pass --overwrite "
                "(files tface did not write are kept)")
        raise OutputExistsError(f"{where} already exists: choose a new folder or name, or pass --overwrite "
                                f"(replaces only the files tface wrote, listed in {MANIFEST})")

    # --- build -----------------------------------------------------------------------------------------

    def __enter__(self) -> OutputFolder:
        self.check()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.target.name}.tmp-{os.getpid()}-"
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=prefix, dir=self.target.parent))
        except PermissionError:
            if not self.target.is_dir():
                raise
            # a read-only parent (a mount point, /home): stage inside the existing target instead
            self.staging = Path(tempfile.mkdtemp(prefix=prefix, dir=self.target))
        self.path = self.staging / self.target.name
        self.path.mkdir()
        return self

    def companion(self, name: str) -> Path:
        """Where to write the companion file ``name`` during the build."""
        if name not in self.companions:
            raise ValueError(f"{name!r} is not a declared companion of {self.target}")
        assert self.staging is not None, "use inside the with-block"
        return self.staging / name

    def discard(self) -> None:
        """Throw the build away on exit instead of moving it into place (e.g. someone else finished it)."""
        self._discard = True

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.staging is not None
        try:
            if exc_type is None and not self._discard:
                self._commit()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)

    # --- swap ------------------------------------------------------------------------------------------

    def _commit(self) -> None:
        new = _files_under(self.path)
        self.check()  # again: something may have appeared during a long build
        if not self.target.exists():
            write_manifest(self.path, new)
            os.chmod(self.path, new_dir_mode())
            try:
                os.rename(self.path, self.target)
            except OSError:
                if not self.target.is_dir():
                    raise
                self.check()  # appeared between the check and the rename
                self._merge(new)
        else:
            self._merge(new)
        for name in self.companions:
            src = self.staging / name
            if src.exists():
                os.replace(src, self.target.parent / name)

    def _conflicts(self, new: list[str]) -> None:
        """Refuse, before touching anything, a new file whose place is a folder, a link or under a file."""
        seen: set[str] = set()
        for rel in new:
            parts = rel.split("/")
            for k in range(1, len(parts)):
                sub = "/".join(parts[:k])
                if sub in seen:
                    continue
                seen.add(sub)
                p = self.target / sub
                if p.is_symlink() or (p.exists() and not p.is_dir()):
                    raise OutputExistsError(f"{p} is in the way of tface's output (a file or link where tface "
                                            "writes a folder): move it, or choose a new folder")
            p = self.target / rel
            if p.is_dir() and not p.is_symlink():
                raise OutputExistsError(f"{p} is a folder where tface writes a file: move it, or choose a new folder")

    def _delete_listed(self, old: Iterable[str], keep: set[str]) -> None:
        """Delete the old manifest's files (not in ``keep``), then the folders that became empty."""
        root = Path(os.path.realpath(self.target))
        parents: set[Path] = set()
        for rel in old:
            if rel in keep:
                continue
            p = self.target / rel
            if Path(os.path.realpath(p.parent)) != root / PurePosixPath(rel).parent:
                continue  # a folder on the way is a link (or gone): never delete through it
            if p.is_symlink() or p.is_file():
                p.unlink()
            parents.update(q for q in PurePosixPath(rel).parents if q != PurePosixPath("."))
        for q in sorted(parents, key=lambda q: len(q.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty: someone else's files are in it
                (self.target / q).rmdir()

    def _merge(self, new: list[str]) -> None:
        old = read_manifest(self.target) or []
        self._conflicts(new)
        write_manifest(self.target, [*old, *new])  # every tface file stays listed if we stop half-way
        for rel in self.last:
            if rel in old:
                (self.target / rel).unlink(missing_ok=True)  # the folder reads as incomplete meanwhile
        self._delete_listed(old, keep=set(new))
        order = [r for r in new if r not in self.last] + [r for r in self.last if r in new]
        for rel in order:
            dest = self.target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / rel, dest)
        write_manifest(self.target, new)


def check_distinct(outputs: Mapping[str, str | os.PathLike | None],
                   inputs: Mapping[str, str | os.PathLike | None], *, folders: Iterable[str] = ()) -> None:
    """Refuse an output that is one of the inputs (or another output), by any spelling or link.

    Keys are what the user calls them (``"OUT_INDEX"``, ``"--unmatched"``); ``None`` values are ignored.
    Outputs named in ``folders`` are output folders: an input inside one is refused too (an overwrite
    could delete it after reading).
    """
    folders = set(folders)

    def norm(p: str | os.PathLike) -> Path:
        return Path(os.path.realpath(p))

    seen: dict[Path, str] = {}
    outs = {k: norm(v) for k, v in outputs.items() if v is not None}
    for key, path in outs.items():
        if path in seen:
            raise SameFileError(f"{key} and {seen[path]} are the same file ({path}): give them different paths")
        seen[path] = key
    for key, raw in inputs.items():
        if raw is None:
            continue
        path = norm(raw)
        for out_key, out in outs.items():
            same = path == out
            if not same and path.exists() and out.exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(path, out)
            if same:
                raise SameFileError(f"{out_key} {out} is the input {key}: write the output somewhere else")
            if out_key in folders and path.is_relative_to(out):
                raise SameFileError(f"{out_key} {out} holds the input {key} ({raw}): write the output "
                                    "somewhere else")

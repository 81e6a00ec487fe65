"""Output folders and atomic files: build aside, swap on success, delete only tface's own files, honour the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tface.core.fsutil import atomic_write_bytes, current_umask
from tface.core.outdir import (
    MANIFEST,
    OutputExistsError,
    OutputFolder,
    SameFileError,
    check_distinct,
    read_manifest,
)


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder``: file bytes, None for folders (hidden entries included)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def build(target: Path, files: dict[str, bytes], **kwargs) -> None:
    with OutputFolder(target, **kwargs) as out:
        for rel, data in files.items():
            (out.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (out.path / rel).write_bytes(data)


def temp_siblings(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name]


def listed(folder: Path) -> list[str]:
    return [ln for ln in (folder / MANIFEST).read_text().splitlines() if not ln.startswith("#")]


@pytest.fixture
def umask():
    """Set the umask for one test and restore it."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def test_new_folder_gets_files_and_manifest(tmp_path):
    target = tmp_path / "out"
    build(target, {"a.txt": b"A", "sub/b.bin": b"B"})
    manifest = (target / MANIFEST).read_bytes()
    assert snapshot(target) == {"a.txt": b"A", "sub": None, "sub/b.bin": b"B", MANIFEST: manifest}
    assert listed(target) == ["a.txt", "sub/b.bin"]
    assert (target / MANIFEST).read_text().startswith("# tface output manifest v1")
    assert read_manifest(target) == ["a.txt", "sub/b.bin"] and read_manifest(tmp_path) is None
    assert temp_siblings(tmp_path) == []


def test_non_empty_folder_is_refused_and_untouched(tmp_path):
    target = tmp_path / "mine"
    (target / "deep").mkdir(parents=True)
    (target / "notes.txt").write_bytes(b"keep me")
    (target / "deep" / "x.jpg").write_bytes(b"photo")
    before = snapshot(target)
    with pytest.raises(OutputExistsError, match=rf"{target} is not empty and is not a tface output: .*--overwrite"):
        build(target, {"a.txt": b"A"})
    assert snapshot(target) == before and temp_siblings(tmp_path) == []

    build(tmp_path / "tf", {"a.txt": b"A"})  # a tface output is refused too, with a different reason
    with pytest.raises(OutputExistsError, match=rf"{tmp_path / 'tf'} already exists: .*--overwrite.*{MANIFEST}"):
        build(tmp_path / "tf", {"a.txt": b"B"})
    assert (tmp_path / "tf" / "a.txt").read_bytes() == b"A"


def test_empty_folder_is_filled_in_place(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    inode = target.stat().st_ino
    build(target, {"a.txt": b"A"})
    assert target.stat().st_ino == inode and (target / "a.txt").read_bytes() == b"A"


def test_overwrite_deletes_only_listed_files(tmp_path):
    target = tmp_path / "out"
    build(target, {"keep-name.txt": b"old", "stale/one.bin": b"1", "stale/two.bin": b"2", "mixed/old.bin": b"o"})
    (target / "user.txt").write_bytes(b"user")                 # the user's files, at the top and inside
    (target / "mixed" / "user.jpg").write_bytes(b"jpg")        # a folder that tface also wrote into
    build(target, {"keep-name.txt": b"new", "fresh/f.bin": b"f"}, overwrite=True)
    assert snapshot(target) == {
        "fresh": None, "fresh/f.bin": b"f", "keep-name.txt": b"new", "mixed": None, "mixed/user.jpg": b"jpg",
        "user.txt": b"user", MANIFEST: (target / MANIFEST).read_bytes(),
    }  # stale/ became empty and went; mixed/ still holds a user file and stays
    assert listed(target) == ["fresh/f.bin", "keep-name.txt"]


def test_overwrite_of_a_foreign_folder_adds_and_deletes_nothing(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "a.txt").write_bytes(b"mine")
    (target / "b.txt").write_bytes(b"mine too")
    build(target, {"a.txt": b"tface"}, overwrite=True)  # same name: replaced, as asked
    assert (target / "b.txt").read_bytes() == b"mine too" and (target / "a.txt").read_bytes() == b"tface"
    assert listed(target) == ["a.txt"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_build_keeps_the_old_content(tmp_path, error):
    target = tmp_path / "out"
    build(target, {"a.txt": b"A", "s/b.bin": b"B"})
    (target / "user.txt").write_bytes(b"user")
    before = snapshot(target)
    with pytest.raises(type(error)), OutputFolder(target, overwrite=True) as out:
        (out.path / "a.txt").write_bytes(b"half")
        assert out.path.parent.name.startswith(".out.tmp-") and out.path.parent.parent == tmp_path
        raise error
    assert snapshot(target) == before and temp_siblings(tmp_path) == []


def test_damaged_manifest_deletes_nothing(tmp_path):
    target = tmp_path / "out"
    build(target, {"a.txt": b"A"})
    (tmp_path / "victim.txt").write_bytes(b"outside")
    (target / MANIFEST).write_text("a.txt\n../victim.txt\n")
    with pytest.raises(OutputExistsError, match=r"'\.\./victim\.txt' is not a relative path inside the folder"):
        build(target, {"b.txt": b"B"}, overwrite=True)
    assert (tmp_path / "victim.txt").read_bytes() == b"outside" and (target / "a.txt").read_bytes() == b"A"
    assert not (target / "b.txt").exists()


def test_deletion_never_goes_through_a_link(tmp_path):
    target = tmp_path / "out"
    build(target, {"sub/x.bin": b"x"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.bin").write_bytes(b"not tface's")
    (target / "sub" / "x.bin").unlink()
    (target / "sub").rmdir()
    (target / "sub").symlink_to(elsewhere)  # the listed file's folder is now a link out of the output
    with pytest.raises(OutputExistsError, match="in the way"):
        build(target, {"sub/x.bin": b"new"}, overwrite=True)
    build(target, {"y.bin": b"y"}, overwrite=True)
    assert (elsewhere / "x.bin").read_bytes() == b"not tface's" and (target / "sub").is_symlink()


def test_a_file_in_the_way_is_refused_before_any_change(tmp_path):
    target = tmp_path / "out"
    build(target, {"a.txt": b"A"})
    (target / "shards").write_bytes(b"a user file where tface needs a folder")
    before = snapshot(target)
    with pytest.raises(OutputExistsError, match=rf"{target / 'shards'} is in the way"):
        build(target, {"shards/s.bin": b"S", "a.txt": b"new"}, overwrite=True)
    assert snapshot(target) == before and temp_siblings(tmp_path) == []


def test_companion_files_and_target_spellings(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    with OutputFolder(tmp_path / "data" / "ds", companions=["ds.txt"]) as out:
        (out.path / "shard").write_bytes(b"s")
        out.companion("ds.txt").write_bytes(b"index")
    assert (tmp_path / "data" / "ds.txt").read_bytes() == b"index" and listed(tmp_path / "data" / "ds") == ["shard"]
    with pytest.raises(OutputExistsError, match=r"ds\.txt already exists"):
        OutputFolder(tmp_path / "data" / "ds2", companions=["ds.txt"]).check()  # the companion alone is enough

    monkeypatch.chdir(tmp_path / "data")  # "." means the current folder, by its real name
    with pytest.raises(OutputExistsError, match=rf"{tmp_path / 'data'} is not empty"):
        OutputFolder(".").check()
    (tmp_path / "link").symlink_to(tmp_path / "data" / "ds")  # a link to a folder: fill the folder, keep the link
    build(tmp_path / "link", {"more": b"m"}, overwrite=True)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "data" / "ds" / "more").read_bytes() == b"m"
    assert not (tmp_path / "data" / "ds" / "shard").exists()


def test_check_distinct_by_any_spelling(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    idx = tmp_path / "d" / "idx.txt"
    idx.write_text("x\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SameFileError, match=rf"OUT_INDEX {idx} is the input INDEX"):
        check_distinct({"OUT_INDEX": "d/../d/./idx.txt"}, {"INDEX": idx})
    (tmp_path / "alias.txt").symlink_to(idx)
    with pytest.raises(SameFileError, match="is the input INDEX"):
        check_distinct({"OUT_INDEX": tmp_path / "alias.txt"}, {"INDEX": "d/idx.txt"})
    os.link(idx, tmp_path / "hard.txt")
    with pytest.raises(SameFileError, match="is the input INDEX"):
        check_distinct({"OUT_INDEX": tmp_path / "hard.txt"}, {"INDEX": idx})
    with pytest.raises(SameFileError, match="OUT_DIR .* holds the input INDEX"):
        check_distinct({"OUT_DIR": tmp_path}, {"INDEX": idx}, folders=["OUT_DIR"])
    with pytest.raises(SameFileError, match="--unmatched and OUT_INDEX are the same file"):
        check_distinct({"OUT_INDEX": tmp_path / "o.txt", "--unmatched": "o.txt"}, {"INDEX": idx})
    check_distinct({"OUT_INDEX": tmp_path / "new.txt", "map": None}, {"INDEX": idx, "list": None})


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700),
                                                       (0o002, 0o664, 0o775)])
def test_atomic_files_and_output_folders_honour_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert current_umask() == mask
    path = atomic_write_bytes(tmp_path / "f.txt", b"data")
    assert stat.S_IMODE(path.stat().st_mode) == file_mode and path.read_bytes() == b"data"
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"x")  # what a normal open() gives, the reference
    assert stat.S_IMODE(plain.stat().st_mode) == file_mode
    build(tmp_path / "out", {"a": b"A"})
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "out" / MANIFEST).stat().st_mode) == file_mode
    assert os.umask(mask) == mask  # reading it did not change it


def test_atomic_write_keeps_an_existing_files_mode(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "f.txt"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write_bytes(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_bytes() == b"new"


def test_read_only_parent_stages_inside_the_target(tmp_path, monkeypatch):
    import tempfile

    target = tmp_path / "mount"
    target.mkdir()
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix="", dir=None):
        if Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkdtemp(prefix=prefix, dir=dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    with OutputFolder(target) as out:
        assert out.staging.parent == target  # inside, hidden, and not counted as "not empty"
        (out.path / "a.txt").write_bytes(b"A")
    assert snapshot(target) == {"a.txt": b"A", MANIFEST: (target / MANIFEST).read_bytes()}
    with pytest.raises(PermissionError):
        OutputFolder(tmp_path / "new").__enter__()  # a new folder needs a writable parent anyway

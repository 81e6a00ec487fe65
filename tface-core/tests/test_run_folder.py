"""``tface run``'s run folder: never mixed with an earlier run, never a user's file deleted, status.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import __version__, recipe
from tface.core.cli import cli
from tface.core.hooks import hookimpl
from tface.core.train import rundir
from tface.core.train.trainer import Trainer


def run(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def write_recipe(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(extra + TOY_RECIPE.replace("max_steps = 30", "max_steps = 3"))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_holding_a_run_is_refused_and_left_as_it_was(toy_plugins, tmp_path):
    path = write_recipe(tmp_path)
    out = tmp_path / "out"
    assert run(path, "--output-dir", out).exit_code == 0
    before = snapshot(out)
    assert {"recipe.toml", "metrics.jsonl", "status.json", "checkpoints/last.pt", "report.json"} <= set(before)
    res = run(path, "--output-dir", out, "--set", "train.max_steps=2")
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: --output-dir {out}: holds a tface run (done); choose a new folder, or "
                                  "pass --overwrite to replace the files of the earlier run")
    assert snapshot(out) == before  # recipe.toml not replaced, metrics.jsonl not truncated


def test_a_folder_holding_other_files_is_refused_even_with_overwrite(toy_plugins, tmp_path):
    path = write_recipe(tmp_path)
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "recipe.toml").write_text("my own notes")
    (out / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    before = snapshot(out)
    res = run(path, "--output-dir", out)
    assert res.exit_code == 1 and "is not empty (2 entries, e.g. recipe.toml)" in res.output
    res = run(path, "--output-dir", out, "--overwrite")
    assert res.exit_code == 1 and "--overwrite replaces an earlier tface run only" in res.output
    assert snapshot(out) == before


def test_an_empty_existing_folder_is_fine(toy_plugins, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert run(write_recipe(tmp_path), "--output-dir", out).exit_code == 0
    assert json.loads((out / "status.json").read_text())["status"] == "done"


def test_overwrite_deletes_only_the_files_the_earlier_run_listed(toy_plugins, tmp_path):
    path = write_recipe(tmp_path)
    out = tmp_path / "out"
    assert run(path, "--output-dir", out, "--set", "train.max_steps=2").exit_code == 0
    # files the user added, one listed file gone already, a listed stale plot, and entries pointing outside
    (out / "notes.txt").write_text("keep me")
    (out / "checkpoints" / "mine.pt").write_bytes(b"keep")
    (out / "stale.png").write_bytes(b"old plot")
    (tmp_path / "outside.txt").write_text("keep me too")
    status = json.loads((out / "status.json").read_text())
    status["files"] += ["stale.png", "../outside.txt", str(tmp_path / "outside.txt")]
    (out / "status.json").write_text(json.dumps(status))
    (out / "report.md").unlink()
    res = run(path, "--output-dir", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert not (out / "stale.png").exists()
    assert (out / "notes.txt").read_text() == "keep me" and (out / "checkpoints" / "mine.pt").read_bytes() == b"keep"
    assert (tmp_path / "outside.txt").read_text() == "keep me too"
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [3]  # the new run's metrics only (log_every 5, max_steps 3)
    new = json.loads((out / "status.json").read_text())
    assert new["status"] == "done" and new["step"] == 3 and "stale.png" not in new["files"]


def test_overwrite_removes_folders_the_listed_files_leave_empty(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.pt").write_bytes(b"x")
    (out / "status.json").write_text(json.dumps({"status": "failed", "files": ["status.json", "checkpoints/last.pt"]}))
    assert rundir.prepare_run_dir(out, overwrite=True) == out
    assert [p.name for p in out.iterdir()] == ["status.json"]  # claimed for the new run, checkpoints/ gone
    assert rundir.read_status(out)["status"] == "running"


def test_two_runs_never_share_a_new_folder(tmp_path):
    out = tmp_path / "a" / "b"
    rundir.prepare_run_dir(out)  # the first run claims it (status.json created exclusively)
    with pytest.raises(rundir.RunDirError, match="still running"):
        rundir.prepare_run_dir(out)
    with pytest.raises(rundir.RunDirError, match="still running"):
        rundir.prepare_run_dir(out, overwrite=True)


def test_dry_run_reports_a_folder_the_run_would_refuse(toy_plugins, tmp_path):
    path = write_recipe(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("x")
    res = run(path, "--dry-run", "--output-dir", out)
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: --output-dir {out}: is not empty (1 entry, e.g. mine.txt)")
    assert run(path, "--dry-run", "--output-dir", tmp_path / "new").exit_code == 0
    assert not (tmp_path / "new").exists()  # a dry run creates nothing
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_the_recipe_output_dir_follows_the_same_rule(toy_plugins, tmp_path):
    path = write_recipe(tmp_path, 'output_dir = "fixed"\n')
    assert run(path).exit_code == 0
    before = snapshot(tmp_path / "fixed")
    res = run(path)
    assert res.exit_code == 1 and f"output_dir {tmp_path / 'fixed'}: holds a tface run (done)" in res.output
    assert snapshot(tmp_path / "fixed") == before
    assert run(path, "--overwrite").exit_code == 0


def test_default_run_folders_never_collide(toy_plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "20260101-120000")  # every run in the same second
    path = write_recipe(tmp_path)
    for _ in range(3):
        assert run(path).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "toy-20260101-120000", "toy-20260101-120000-2", "toy-20260101-120000-3"]
    for p in (tmp_path / "runs").iterdir():
        assert json.loads((p / "status.json").read_text())["status"] == "done"


def test_status_json_of_a_finished_run(toy_plugins, tmp_path):
    out = tmp_path / "out"
    assert run(write_recipe(tmp_path), "--output-dir", out).exit_code == 0
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == 3 and "reason" not in status
    assert status["pid"] == os.getpid() and status["tface_version"] == __version__
    assert status["started"] <= status["finished"]
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(status["files"]) == written  # the manifest lists exactly what the run wrote


def test_a_failed_run_says_why_and_where(toy_plugins, tmp_path):
    out = tmp_path / "out"
    res = run(write_recipe(tmp_path), "--output-dir", out, "--set", "data.classes=1")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines()[-1] == (
        "Error: data (toydata): the data set has 1 identity; training a classifier needs at least 2")
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["step"] == 0
    assert status["reason"] == ("TrainingError: data (toydata): the data set has 1 identity; training a "
                                "classifier needs at least 2")


def test_an_interrupted_run_is_marked(toy_plugins, tmp_path):
    class StopAtTwo:
        @hookimpl
        def tface_step_end(self, step, metrics):
            if step == 2:
                raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        Trainer(recipe.load(write_recipe(tmp_path)), out, plugins=[StopAtTwo()], echo=lambda m: None).run()
    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["step"], status["reason"]) == ("interrupted", 2, "KeyboardInterrupt")


def test_a_failure_in_training_records_the_step(toy_plugins, tmp_path):
    class FailAtThree:
        @hookimpl
        def tface_step_end(self, step, metrics):
            if step == 3:
                raise RuntimeError("disk full\nsecond line")

    out = tmp_path / "out"
    path = write_recipe(tmp_path)
    with pytest.raises(RuntimeError):
        Trainer(recipe.load(path, ["train.max_steps=5"]), out, plugins=[FailAtThree()], echo=lambda m: None).run()
    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["step"], status["reason"]) == ("failed", 3, "RuntimeError: disk full")


TFRECORD_TABLE = """
[data]
name = "tfrecord"
index = "data/ds.txt"
bins = ["data/lfw.bin"]
"""


def test_missing_inputs_are_named_before_any_run_folder_exists(toy_plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = TOY_RECIPE.replace('[data]\nname = "toydata"\nclasses = 4\n', TFRECORD_TABLE)
    path = tmp_path / "r.toml"
    path.write_text(text)
    expected = [f"{path.name}: data.index: {tmp_path / 'data' / 'ds.txt'} does not exist",
                f"{path.name}: data.bins[0]: {tmp_path / 'data' / 'lfw.bin'} does not exist"]
    for args in (["--dry-run"], [], ["--output-dir", "out"]):
        res = CliRunner().invoke(cli, ["run", path.name, *args])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.output.strip().splitlines() == ["Error: " + expected[0], expected[1]]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
    # an image folder that is a file, an image list that is missing
    (tmp_path / "imgs").write_text("not a folder")
    dry = ["run", path.name, "--dry-run", "--set"]
    res = CliRunner().invoke(cli, [*dry, 'data={ name = "image_folder", root = "imgs" }'])
    assert res.exit_code == 1 and f"data.root: {tmp_path / 'imgs'} is not a folder" in res.output
    res = CliRunner().invoke(cli, [*dry, 'data={ name = "image_list", list = "l.txt" }'])
    assert res.exit_code == 1 and f"data.list: {tmp_path / 'l.txt'} does not exist" in res.output


def test_run_folder_module_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(rundir.RunDirError, match="exists and is not a folder"):
        rundir.prepare_run_dir(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"



def test_a_run_still_running_is_never_overwritten(tmp_path):
    import socket
    import subprocess
    import sys

    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.toml").write_text("live")
    live = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
            "files": ["status.json", "recipe.toml"]}
    (out / "status.json").write_text(json.dumps(live))
    with pytest.raises(rundir.RunDirError, match=r"holds a run that is still running \(pid \d+ on this machine\)"):
        rundir.prepare_run_dir(out, overwrite=True)
    assert (out / "recipe.toml").read_text() == "live"
    # a run killed without a chance to mark itself: its process is gone, so --overwrite may replace it
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / "status.json").write_text(json.dumps({**live, "pid": int(done.stdout)}))
    assert rundir.prepare_run_dir(out, overwrite=True) == out
    assert [p.name for p in out.iterdir()] == ["status.json"]

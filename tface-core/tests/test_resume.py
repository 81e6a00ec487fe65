"""Checkpoints and ``tface run --resume``: a run killed with SIGKILL anywhere (also while it writes a
checkpoint) and resumed ends bit-identical to an uninterrupted run; the files stay consistent."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.cli import cli
from tface.core.train import checkpoint
from tface.core.train.trainer import Trainer

# Two branches (different epoch lengths), a random augmenter,
# an open metrics window at each checkpoint (log_every 3 vs checkpoint_every 5), an evaluation mid-run.
RESUME_RECIPE = TOY_RECIPE.replace('''[data]
name = "toydata"
classes = 4
''', '''[[data]]
name = "toydata"
classes = 4

[[data]]
name = "toydata"
branch = "second"
classes = 3
per_class = 12
batch_size = 6
seed = 5
''').replace("max_steps = 30", "max_steps = 23").replace("log_every = 5", '''log_every = 3
eval_every = 10
checkpoint_every = 5
keep_checkpoints = 2
threads = 1''') + '''
[[augment]]
name = "flip"
p = 0.5
'''

# The trainer in a child process that SIGKILLs itself at a chosen point (test code only, no hook in tface):
# KILL=step:K      just before step K is computed
# KILL=write:N:mid while writing the N-th file under checkpoints/ (half of it in the temporary file)
# KILL=write:N:after right after the N-th file under checkpoints/ was renamed into place
CHILD = '''
import os, signal, sys
from pathlib import Path

from tface.core import fsutil, recipe
from tface.core.train import engine
from tface.core.train.trainer import Trainer

def die():
    os.kill(os.getpid(), signal.SIGKILL)

kill = os.environ.get("KILL", "")
if kill.startswith("step:"):
    at = int(kill.split(":")[1])
    step = engine.StepEngine.step
    def killing_step(self, batch, n):
        if n == at:
            die()
        return step(self, batch, n)
    engine.StepEngine.step = killing_step
elif kill.startswith("write:"):
    _, nth, when = kill.split(":")
    write, count = fsutil.atomic_write, [0]
    def killing_write(path, fn):
        if Path(path).parent.name != "checkpoints":
            return write(path, fn)
        count[0] += 1
        if count[0] != int(nth):
            return write(path, fn)
        if when == "mid":
            def half(f):
                import io
                buf = io.BytesIO()
                fn(buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                die()
            return write(path, half)
        out = write(path, fn)
        die()
    fsutil.atomic_write = killing_write

recipe_path, run_dir, mode = sys.argv[1:4]
overrides = sys.argv[4:]
rec = recipe.load(recipe_path, overrides)
Trainer(rec, run_dir, resume=mode == "resume", echo=lambda m: None).run()
'''


@pytest.fixture
def child(toy_plugins, tmp_path):
    """``child(run_dir, mode, kill, *overrides)`` runs the trainer in a subprocess; returns its exit code."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / "resume.toml"
    path.write_text(RESUME_RECIPE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}

    def run(run_dir: Path, mode: str, kill: str = "", *overrides: str) -> int:
        proc = subprocess.run([sys.executable, str(script), str(path), str(run_dir), mode, *overrides],
                              env={**env, "KILL": kill}, capture_output=True, text=True, timeout=300)
        if proc.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(proc.stderr[-3000:])
        return proc.returncode

    return run


def reference(tmp_path: Path, *overrides: str) -> Path:
    """The uninterrupted run, in this process."""
    path = tmp_path / "ref.toml"
    path.write_text(RESUME_RECIPE)
    out = tmp_path / f"ref-{len(list(tmp_path.glob('ref-*')))}"
    Trainer(recipe.load(path, list(overrides)), out, echo=lambda m: None).run()
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = (checkpoint.load(p / "checkpoints" / "last.pt") for p in (a, b))
    assert sa["step"] == sb["step"]
    for part in ("backbone",):
        assert sa[part].keys() == sb[part].keys()
        assert all(torch.equal(sa[part][k], sb[part][k]) for k in sa[part]), part
    for name in sa["classifiers"]:
        assert all(torch.equal(v, sb["classifiers"][name][k]) for k, v in sa["classifiers"][name].items()), name
    ba, bb = (checkpoint.load(p / "checkpoints" / "backbone.pt") for p in (a, b))
    assert all(torch.equal(ba[k], bb[k]) for k in ba)


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing (images/s differs between any two runs)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k != "images_per_s"} for m in lines]


def assert_consistent(run_dir: Path) -> None:
    """After any kill: backbone.pt is absent or holds exactly the backbone of the step last.pt holds."""
    ckpt = run_dir / "checkpoints"
    if not (ckpt / "last.pt").exists():
        assert not (ckpt / "backbone.pt").exists()
        return
    last = checkpoint.load(ckpt / "last.pt")
    if (ckpt / "backbone.pt").exists():
        weights = checkpoint.load(ckpt / "backbone.pt")
        assert all(torch.equal(weights[k], last["backbone"][k]) for k in last["backbone"]), "backbone.pt is stale"


@pytest.mark.parametrize("world_size", [1])
def test_killed_at_a_random_step_and_resumed_is_bit_identical(child, tmp_path, world_size):
    # world_size > 1 joins once the trainer runs under torch.distributed (the dist branch)
    kill_at = random.Random(world_size).randint(6, 22)  # after the first checkpoint (step 5)
    ref = reference(tmp_path)
    run_dir = tmp_path / "run"
    assert child(run_dir, "new", f"step:{kill_at}") == -signal.SIGKILL
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "running" and status["checkpoint_step"] == (kill_at - 1) // 5 * 5
    assert_consistent(run_dir)
    assert child(run_dir, "resume") == 0
    assert_same_weights(ref, run_dir)
    assert metrics(run_dir) == metrics(ref)  # no step line lost or doubled, the same numbers
    assert json.loads((run_dir / "report.json").read_text())["results"] == \
        json.loads((ref / "report.json").read_text())["results"]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == 23
    assert [r["step"] for r in status["resumed"]] == [(kill_at - 1) // 5 * 5]


def test_with_workers_killed_at_a_step_and_while_writing_checkpoints(child, tmp_path):
    """Loader workers reading ahead; killed at a random step, then inside and between the writes of a
    checkpoint (step file, last.pt, backbone.pt), each resumed run killed again; the files stay consistent
    and the end is bit-identical to an uninterrupted run."""
    sets = ["train.num_workers=2"]
    ref = reference(tmp_path, *sets)
    run_dir = tmp_path / "run"
    assert child(run_dir, "new", f"step:{random.Random(2).randint(11, 14)}", *sets) == -signal.SIGKILL
    # checkpoints at 5, 10, 15, 20 write step file, last.pt, backbone.pt; a resumed run first writes
    # backbone.pt again when the kill left it absent
    kills = [("write:2:after", 15, False),  # last.pt of step 15 in place, backbone.pt not yet written
             ("write:3:mid", 15, False),  # half of last.pt of step 20 written (backbone.pt deleted just before)
             ("write:2:mid", 15, True)]  # half of the step file of step 20
    for kill, step, has_backbone in kills:
        assert_consistent(run_dir)
        assert child(run_dir, "resume", kill, *sets) == -signal.SIGKILL
        assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == step
        assert (run_dir / "checkpoints" / "backbone.pt").exists() == has_backbone
        assert list((run_dir / "checkpoints").glob(".*.tmp")) != [] or kill.endswith("after")
    assert_consistent(run_dir)
    assert child(run_dir, "resume", "", *sets) == 0
    assert_same_weights(ref, run_dir)
    assert metrics(run_dir) == metrics(ref)
    left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert left == ["backbone.pt", "last.pt", "step-00000020.pt", "step-00000023.pt"]  # no temporary files
    status = json.loads((run_dir / "status.json").read_text())
    assert sorted(f for f in status["files"] if f.startswith("checkpoints/")) == [
        "checkpoints/backbone.pt", "checkpoints/last.pt", "checkpoints/step-00000020.pt",
        "checkpoints/step-00000023.pt"]

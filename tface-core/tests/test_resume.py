"""Checkpoints and ``tface run --resume``: a run killed with SIGKILL anywhere (also while it writes a
checkpoint) and resumed ends bit-identical to an uninterrupted run; the files stay consistent."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.cli import cli
from tface.core.train import checkpoint
from tface.core.train.trainer import Trainer

# Two branches (different epoch lengths), a random augmenter in the workers and two on the device,
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

[[augment]]
name = "color_jitter"
on = "device"

[[augment]]
name = "rotate"
on = "device"
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
    """``child(run_dir, mode, kill, *overrides, nproc=1)`` runs the trainer in subprocesses (``nproc`` > 1: under
    torch.distributed.run); returns "done" or "killed"."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    path = tmp_path / "resume.toml"
    path.write_text(RESUME_RECIPE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), *sys.path])}

    def run(run_dir: Path, mode: str, kill: str = "", *overrides: str, nproc: int = 1) -> str:
        launch = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                      f"--nproc-per-node={nproc}"]
        proc = subprocess.run([*launch, str(script), str(path), str(run_dir), mode, *overrides],
                              env={**env, "KILL": kill}, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0:
            return "done"
        if proc.returncode == -signal.SIGKILL or (nproc > 1 and "SIGKILL" in proc.stderr):
            return "killed"
        raise AssertionError(proc.stderr[-3000:])

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
    """metrics.jsonl without timing and memory (they differ between any two runs)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if k not in ("images_per_s", "max_rss_mb")} for m in lines]


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


@pytest.mark.parametrize("world_size", [1, 2])  # 2: two gloo processes under torch.distributed.run
def test_killed_at_a_random_step_and_resumed_is_bit_identical(child, tmp_path, world_size):
    kill_at = random.Random(world_size).randint(6, 22)  # after the first checkpoint (step 5)
    if world_size == 1:
        ref = reference(tmp_path)
    else:  # the uninterrupted run with as many processes
        ref = tmp_path / "ref"
        assert child(ref, "new", nproc=world_size) == "done"
    run_dir = tmp_path / "run"
    assert child(run_dir, "new", f"step:{kill_at}", nproc=world_size) == "killed"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "running" and status["checkpoint_step"] == (kill_at - 1) // 5 * 5
    assert_consistent(run_dir)
    assert child(run_dir, "resume", nproc=world_size) == "done"
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
    assert child(run_dir, "new", f"step:{random.Random(2).randint(11, 14)}", *sets) == "killed"
    # checkpoints at 5, 10, 15, 20 write step file, last.pt, backbone.pt; a resumed run first writes
    # backbone.pt again when the kill left it absent
    kills = [("write:2:after", 15, False),  # last.pt of step 15 in place, backbone.pt not yet written
             ("write:3:mid", 15, False),  # half of last.pt of step 20 written (backbone.pt deleted just before)
             ("write:2:mid", 15, True)]  # half of the step file of step 20
    for kill, step, has_backbone in kills:
        assert_consistent(run_dir)
        assert child(run_dir, "resume", kill, *sets) == "killed"
        assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == step
        assert (run_dir / "checkpoints" / "backbone.pt").exists() == has_backbone
        assert list((run_dir / "checkpoints").glob(".*.tmp")) != [] or kill.endswith("after")
    assert_consistent(run_dir)
    assert child(run_dir, "resume", "", *sets) == "done"
    assert_same_weights(ref, run_dir)
    assert metrics(run_dir) == metrics(ref)
    left = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert left == ["backbone.pt", "last.pt", "step-00000020.pt", "step-00000023.pt"]  # no temporary files
    status = json.loads((run_dir / "status.json").read_text())
    assert sorted(f for f in status["files"] if f.startswith("checkpoints/")) == [
        "checkpoints/backbone.pt", "checkpoints/last.pt", "checkpoints/step-00000020.pt",
        "checkpoints/step-00000023.pt"]


# -- in-process: the loader's position, refusals, export, keep-last-N ---------------------------------------

class _Random(torch.utils.data.Dataset):
    """Item i: its index, its label and a random number (an augmenter's draw)."""

    labels = [i % 5 for i in range(40)]

    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.tensor([i, int(torch.randint(0, 2**30, ()))], dtype=torch.int64).view(1, 1, 2), self.labels[i]


def _specs():
    from tface.core.data.branches import BranchSpec

    return [BranchSpec("a", _Random(), 4), BranchSpec("b", _Random(), 6, sampler="balanced", images_per_identity=2)]


def _take(it, n):
    return [(b.images.flatten().tolist(), [y.tolist() for y in b.labels]) for b in (next(it) for _ in range(n))]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_position_counts_consumed_batches_not_read_ahead(workers):
    from tface.core.data.branches import BranchLoader

    torch.manual_seed(0)
    loader = BranchLoader(_specs(), num_workers=workers, seed=3)
    per_pass = len(loader)  # a: 10 batches, b: 6 (5 identities x 8 images, 3 per batch) -> 10 a pass
    it = iter(loader)
    head = _take(it, 13 % per_pass)
    saved = loader.state_dict()
    rng = torch.get_rng_state()
    rest = _take(it, per_pass - 13 % per_pass) + _take(iter(loader), per_pass)
    # consumed, whatever the workers read ahead: a is 3 batches into its epoch 0, b 3 into epoch 0
    assert saved == {"position": 3, "branches": [{"name": "a", "epoch": 0, "batches": 3},
                                                 {"name": "b", "epoch": 0, "batches": 3}]}
    torch.manual_seed(99)  # a fresh process: other generator states until the checkpoint's are restored
    again = BranchLoader(_specs(), num_workers=workers, seed=3)
    again.load_state_dict(saved)
    torch.set_rng_state(rng)
    assert _take(iter(again), per_pass - 3) + _take(iter(again), per_pass) == rest
    assert len(head) == 3


def test_loader_state_after_a_branch_wrapped():
    from tface.core.data.branches import BranchLoader

    loader = BranchLoader(_specs(), seed=3)
    it = iter(loader)
    _take(it, 8)  # b has 6 batches an epoch: 2 into its second
    assert loader.state_dict()["branches"][1] == {"name": "b", "epoch": 1, "batches": 2}
    with pytest.raises(ValueError, match=r"the checkpoint has data branches \['x'\]"):
        loader.load_state_dict({"position": 0, "branches": [{"name": "x", "epoch": 0, "batches": 0}]})


def cli_run(*args):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


@pytest.fixture
def small_run(toy_plugins, tmp_path):
    """A finished 12-step run with checkpoints every 5 steps, 2 kept."""
    path = tmp_path / "small.toml"
    path.write_text(TOY_RECIPE.replace("max_steps = 30", "max_steps = 12") + "\n")
    out = tmp_path / "run"
    res = cli_run(path, "--output-dir", out, "--set", "train.checkpoint_every=5", "--set", "train.keep_checkpoints=2")
    assert res.exit_code == 0, res.output
    return path, out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refusals_name_the_reason_and_touch_nothing(small_run, tmp_path):
    path, out = small_run
    before = snapshot(out)
    res = cli_run("--resume", out, "--set", "head.m=0.3", "--set", "train.lr=0.05", "--set", "train.max_steps=20")
    assert res.exit_code == 1
    assert res.output.strip() == (f"Error: --resume {out}: the recipe differs from the run's in head.m (0.2 -> 0.3), "
                                  "train.lr (0.1 -> 0.05); only output_dir, train.max_steps, train.log_every, "
                                  "train.checkpoint_every, train.keep_checkpoints, train.tensorboard may change when "
                                  "resuming")
    res = cli_run("--resume", out)
    assert res.exit_code == 1 and "the run is done (step 12 of train.max_steps = 12); raise train.max_steps" \
        in res.output
    res = cli_run("--resume", out, "--set", "train.max_steps=10")
    assert res.exit_code == 1 and "train.max_steps = 10 but the checkpoint is at step 12" in res.output
    assert snapshot(out) == before
    for flag in ("--overwrite", "--dry-run"):
        res = cli_run("--resume", out, flag)
        assert res.exit_code == 2 and f"--resume continues RUN_DIR in place; drop {flag}" in res.output
    res = cli_run("--resume", tmp_path / "nowhere")
    assert res.exit_code == 1 and "holds no tface run (recipe.toml is missing)" in res.output
    res = cli_run()
    assert res.exit_code == 2 and "name a RECIPE to run, or give --resume RUN_DIR" in res.output
    # a run that stopped before its first checkpoint
    for p in (out / "checkpoints").iterdir():
        p.unlink()
    before = snapshot(out)
    res = cli_run("--resume", out, "--set", "train.max_steps=20")
    assert res.exit_code == 1 and f"--resume {out}: holds no checkpoint (checkpoints/last.pt is missing" in res.output
    assert snapshot(out) == before


def test_a_finished_run_resumed_with_more_steps_equals_a_longer_run(small_run, tmp_path):
    path, out = small_run
    res = cli_run("--resume", out, "--set", "train.max_steps=17")
    assert res.exit_code == 0, res.output
    longer = tmp_path / "longer"
    res = cli_run(path, "--output-dir", longer, "--set", "train.max_steps=17", "--set", "train.checkpoint_every=5")
    assert res.exit_code == 0, res.output
    assert_same_weights(longer, out)
    # lines up to step 12 stay (12 was the end of the shorter run: a line there), then the continuation
    steps = [m["step"] for m in metrics(out)]
    assert steps == [5, 10, 12, 15, 17]
    assert metrics(out)[3:] != [] and [m["step"] for m in metrics(longer)] == [5, 10, 15, 17]
    assert "max_steps = 17" in (out / "recipe.toml").read_text()
    report = json.loads((out / "report.json").read_text())
    assert [(r["stage"], r["step"]) for r in report["results"]] == [("untrained", 0), ("trained", 17)]


def test_keep_checkpoints_prunes_only_its_own_step_files(small_run):
    path, out = small_run
    ckpt = out / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["backbone.pt", "last.pt", "step-00000010.pt",
                                                     "step-00000012.pt"]
    assert checkpoint.load(ckpt / "step-00000010.pt")["step"] == 10
    status = json.loads((out / "status.json").read_text())
    assert "checkpoints/step-00000005.pt" not in status["files"] and status["checkpoint_step"] == 12
    (ckpt / "step-00000001.pt").write_bytes(b"mine")  # a user's file with a matching name
    res = cli_run("--resume", out, "--set", "train.max_steps=16")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ckpt.iterdir()) == ["backbone.pt", "last.pt", "step-00000001.pt",
                                                     "step-00000015.pt", "step-00000016.pt"]
    res = cli_run(path, "--output-dir", out, "--overwrite", "--set", "train.max_steps=2")
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in ckpt.iterdir()) == ["backbone.pt", "last.pt", "step-00000001.pt"]


def test_export_backbone(small_run, tmp_path):
    path, out = small_run
    dest = tmp_path / "bb.pt"
    res = CliRunner().invoke(cli, ["export", "backbone", str(out), "--out", str(dest)])
    assert res.exit_code == 0 and res.output.strip() == f"wrote {dest} (backbone of step 12)"
    weights = checkpoint.load(dest)
    last = checkpoint.load(out / "checkpoints" / "last.pt")["backbone"]
    assert weights.keys() == last.keys() and all(torch.equal(weights[k], last[k]) for k in last)
    res = CliRunner().invoke(cli, ["export", "backbone", str(out), "--out", str(dest), "--step", "10"])
    assert res.exit_code == 1 and res.output.strip() == f"Error: --out {dest}: exists; pass --overwrite to replace it"
    assert checkpoint.load(dest).keys() == last.keys()
    res = CliRunner().invoke(cli, ["export", "backbone", str(out), "--out", str(dest), "--step", "10", "--overwrite"])
    assert res.exit_code == 0 and "(backbone of step 10)" in res.output
    ten = checkpoint.load(out / "checkpoints" / "step-00000010.pt")["backbone"]
    assert all(torch.equal(checkpoint.load(dest)[k], ten[k]) for k in ten)
    res = CliRunner().invoke(cli, ["export", "backbone", str(out), "--out", str(tmp_path / "x.pt"), "--step", "5"])
    assert res.exit_code == 1 and "no checkpoint of step 5 (steps kept: 10, 12;" in res.output
    res = CliRunner().invoke(cli, ["eval", "toyeval", "--backbone", "toynet", "--checkpoint", str(dest),
                                   "--output-dir", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "eval" / "eval-report.json").is_file()


def test_metrics_after_the_checkpoint_and_a_cut_line_go(tmp_path):
    from tface.core.train.reporting import metrics_until

    lines = [json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (3, 6, 9)]
    (tmp_path / "metrics.jsonl").write_text("".join(lines) + '{"step": 12, "lo')
    metrics_until(tmp_path, 6)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(lines[:2])
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "oops\n" + lines[1])
    from tface.core.train.errors import TrainingError

    with pytest.raises(TrainingError, match="metrics.jsonl: line 2 is not JSON"):
        metrics_until(tmp_path, 6)


def test_checkpoint_keys_are_validated(tmp_path):
    from tface.core.config import ConfigError

    for key in ("checkpoint_every", "keep_checkpoints"):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            recipe.loads(TOY_RECIPE, [f"train.{key}=-1"])

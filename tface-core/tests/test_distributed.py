"""Distributed training on CPU: 2 gloo processes, started by torch's launcher or joined from torchrun's environment."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.cli import cli
from tface.core.config import ConfigError
from tface.core.hooks import hookimpl
from tface.core.train import checkpoint, distributed
from tface.core.train.reporting import MetricsWindow
from tface.core.train.setup import resolve_device
from tface.core.train.trainer import Trainer, TrainingError

#: A backbone without BatchNorm: per-process batch statistics would make 2 x B differ from 2B by design.
FLAT_MODULE = '''
    import json, os, time
    import attrs
    from torch import nn
    from tface.core.hooks import hookimpl
    from TOYMODULE import ToySource


    class LoggedSource(ToySource):
        """toydata that notes when each rank prepares it (rank 0 slowly): shows who goes first."""

        def train_dataset(self, transform=None):
            folder = os.environ.get("TFACE_TEST_HOOKS")
            if folder:
                rank = os.environ.get("RANK", "-")
                with open(os.path.join(folder, "data.log"), "a") as f:
                    f.write(f"{rank} start\\n")
                time.sleep(1.0 if rank == "0" else 0.0)
                with open(os.path.join(folder, "data.log"), "a") as f:
                    f.write(f"{rank} end\\n")
            return super().train_dataset(transform)


    class FlatBackbone(nn.Module):
        @attrs.define
        class Config:
            embedding_size: int = 8

        def __init__(self, embedding_size=8):
            super().__init__()
            self.embedding_size = embedding_size
            self.input_size = 16  # the backbone contract (the toy data's size)
            self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(48, 32), nn.PReLU(32),
                                     nn.Linear(32, embedding_size))

        def forward(self, x):
            return self.net(x)


    @hookimpl
    def tface_run_start(run_dir, rank, world_size):
        folder = os.environ.get("TFACE_TEST_HOOKS")
        if folder:
            with open(os.path.join(folder, f"run_start-{rank}.json"), "w") as f:
                json.dump({"rank": rank, "world_size": world_size, "run_dir": str(run_dir)}, f)


    @hookimpl
    def tface_step_end(step, rank):
        if os.environ.get("TFACE_TEST_SLEEP_AT") == f"{rank}:{step}":
            import time
            time.sleep(600)
        if os.environ.get("TFACE_TEST_FAIL_AT") == f"{rank}:{step}":
            from tface.core.train.errors import TrainingError
            raise TrainingError(f"planned failure of rank {rank} at step {step}")
        folder = os.environ.get("TFACE_TEST_HOOKS")
        if folder:
            with open(os.path.join(folder, f"steps-{rank}.txt"), "a") as f:
                f.write(f"{step}\\n")
'''

PROCESS_TIMEOUT = 240  # a guard against hangs, far above what the runs take


@pytest.fixture
def flat(site, toy_plugins, tmp_path):
    """The toy plugins plus a BatchNorm-free backbone ``flatnet`` and a hook plugin, importable by subprocesses."""
    module = f"flatplug_{tmp_path.name.replace('-', '_')}"
    site("flat-plugins", {"tface.backbones": {"flatnet": f"{module}:FlatBackbone"},
                          "tface.datasets": {"loggeddata": f"{module}:LoggedSource"},
                          "tface.plugins": {"flathooks": module}},
         {f"{module}.py": FLAT_MODULE.replace("TOYMODULE", toy_plugins)})
    return tmp_path / "site"


def _env(site_root: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENV_KEYS}
    env["PYTHONPATH"] = os.pathsep.join([str(site_root), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["TFACE_CACHE"] = str(tmp_path / "cache")
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env


def _write_recipe(tmp_path: Path, batch: int, steps: int, extra: str = "", backbone: str = "flatnet",
                  source: str = "toydata") -> Path:
    text = (TOY_RECIPE.replace('name = "toynet"', f'name = "{backbone}"')
            .replace('name = "toydata"', f'name = "{source}"')
            .replace("batch_size = 16", f"batch_size = {batch}").replace("max_steps = 30", f"max_steps = {steps}")
            .replace("log_every = 5", "log_every = 2"))
    path = tmp_path / f"toy-b{batch}.toml"
    path.write_text(text + extra)
    return path


def _tface(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``tface ARGS`` in a new session; on a hang, torchrun gets SIGTERM (it stops its workers), then SIGKILL."""
    proc = subprocess.Popen([sys.executable, "-m", "tface.core.cli", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"tface {' '.join(args)} hung:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    out = {f"backbone.{k}": v for k, v in state["backbone"].items()}
    for name, sd in state["classifiers"].items():
        out.update({f"classifier.{name}.{k}": v for k, v in sd.items()})
    return out


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_with_the_double_batch(flat, tmp_path):
    """2 gloo processes with batch 8 each = 1 process with batch 16 over the same samples in the same order.

    Rank r takes positions r, r+2, ... of the one global permutation, so each step the two ranks together
    see exactly the 16 samples the single process sees; DDP averages the two batch-mean gradients, which is
    the mean over 16. Only the order of float additions differs, so equality is up to float32 rounding:
    relative 1e-5 (the class centres grow to ~19, where one float32 step is 1.9e-6; the runs differ by a
    few such steps) and 1e-6 absolute for entries near 0 (the backbone differs by at most ~2.4e-7).
    """
    steps = 6  # 4 steps per epoch: crosses into the second epoch's shuffle
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    two_recipe = _write_recipe(tmp_path, 8, steps, source="loggeddata")
    two_recipe.write_text(two_recipe.read_text().replace("log_every = 2", "log_every = 2\ntensorboard = true"))
    two = _tface(["run", "--nproc-per-node", "2", str(two_recipe)],
                 _env(flat, tmp_path, TFACE_TEST_HOOKS=str(hooks)), cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    # the default folder runs/<recipe>-<time>: made once by rank 0, and the path reached rank 1
    (run2,) = list((tmp_path / "runs").iterdir())
    # rank 0 prepared the data alone; rank 1 started only once it had finished
    assert (hooks / "data.log").read_text().split("\n") == ["0 start", "0 end", "1 start", "1 end", ""]
    one_dir = tmp_path / "one"
    Trainer(recipe.load(_write_recipe(tmp_path, 16, steps, source="loggeddata")), one_dir, echo=lambda m: None).run()

    ref, got = _weights(one_dir), _weights(run2)
    assert sorted(ref) == sorted(got)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    # the metric windows are all-reduced: each line describes the global batch of 16, like the single run
    m1, m2 = _metrics(one_dir), _metrics(run2)
    assert [m["step"] for m in m2] == [m["step"] for m in m1] == [2, 4, 6]
    for a, b in zip(m1, m2):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["top1"] == pytest.approx(a["top1"], abs=1e-9)
    status = json.loads((run2 / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == steps
    # rank 0 alone writes the folder: every file in it is listed once by its status
    files = sorted(p.relative_to(run2).as_posix() for p in run2.rglob("*") if p.is_file())
    assert files == sorted(status["files"])
    assert len([f for f in files if f.startswith("tensorboard/")]) == 1  # one event file, rank 0's
    assert json.loads((run2 / "report.json").read_text())["summary"]["processes"] == 2
    # hooks ran on each rank with its rank, the world size and the shared folder
    for rank in (0, 1):
        start = json.loads((hooks / f"run_start-{rank}.json").read_text())
        assert (start["rank"], start["world_size"]) == (rank, 2)
        assert (tmp_path / start["run_dir"]).resolve() == run2.resolve()
        assert (hooks / f"steps-{rank}.txt").read_text().split() == [str(s) for s in range(1, steps + 1)]
    # rank 0 speaks for the run: the data summary is printed once
    assert two.stdout.count("preparing data ...") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_a_lost_peer_ends_the_survivor_with_a_clear_error(flat, tmp_path, how):
    """Two processes joined from torchrun's variables. Rank 1 is SIGKILLed mid-training, or stops answering (a
    hook sleeps): rank 0 fails with one clear line, within the 10 s timeout for the silent one, never hangs."""
    path = tmp_path / "long.toml"
    # toynet has BatchNorm: DDP's forward broadcasts its buffers, the backward all-reduces gradients
    path.write_text(_write_recipe(tmp_path, 8, 100_000, "\n[distributed]\ntimeout = 10\n", "toynet").read_text()
                    .replace("log_every = 2", "log_every = 1\neval_at_start = false"))
    run_dir = tmp_path / "run"
    port = str(_free_port())
    procs = []
    try:
        for rank in (0, 1):
            env = _env(flat, tmp_path, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            if how == "stalled":
                env["TFACE_TEST_SLEEP_AT"] = "1:3"
            procs.append(subprocess.Popen([sys.executable, "-m", "tface.core.cli", "run", str(path), "--output-dir",
                                           str(run_dir)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
        if how == "killed":
            deadline = time.monotonic() + PROCESS_TIMEOUT
            while not (run_dir / "metrics.jsonl").is_file() or len(_metrics(run_dir)) < 3:  # training under way
                assert procs[0].poll() is None and procs[1].poll() is None, procs[0].communicate()
                assert time.monotonic() < deadline, "training did not start"
                time.sleep(0.1)
            procs[1].send_signal(signal.SIGKILL)
        _, err = procs[0].communicate(timeout=PROCESS_TIMEOUT)
        assert procs[0].returncode == 1, err
        (line,) = [x for x in err.splitlines() if x.startswith("Error:")]
        # which collective meets the loss first, and gloo's wording of a closed socket, vary from run to run
        cause = (".*Connection (closed|reset) by peer" if how == "killed"
                 else "(Timed out waiting 10000ms|Application timeout caused pair closure)")
        assert re.fullmatch(r"Error: rank 0 of 2 lost the other processes during (step \d+|the metrics all-reduce): "
                            r"one of "
                            r"them died, failed or did not answer within \[distributed\] timeout = 10 s \(its own "
                            rf"output says why\): {cause}.*", line), line
        assert "Traceback" not in err
        status = json.loads((run_dir / "status.json").read_text())
        assert status["status"] == "failed"
        assert status["reason"] == "PeerLost: " + line.removeprefix("Error: ")
        assert status["step"] >= 3
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate()


def test_a_failing_process_stops_the_launched_run(flat, tmp_path):
    """Under the launcher, rank 1 fails at step 3: torchrun stops rank 0, whose status says failed, and the
    command ends with one line naming the processes."""
    path = _write_recipe(tmp_path, 8, 100_000, "\n[distributed]\ntimeout = 30\n")
    res = _tface(["run", "--nproc-per-node", "2", str(path), "--output-dir", str(tmp_path / "run")],
                 _env(flat, tmp_path, TFACE_TEST_FAIL_AT="1:3"), cwd=tmp_path)
    assert res.returncode == 1
    assert "Error: planned failure of rank 1 at step 3" in res.stderr
    last = res.stderr.rstrip().splitlines()[-1]
    assert re.fullmatch(r"Error: 2 of 2 processes failed: rank 0 \((exit status 1|stopped by torchrun with SIGTERM)\), "
                        r"rank 1 \(exit status 1\); their messages are above", last), last
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed"
    # rank 0 saw the closed connection first, or torchrun's SIGTERM: either way it names what happened
    assert re.match(r"PeerLost: rank 0 of 2 (lost the other processes during|stopped by SIGTERM)", status["reason"])
    assert "Traceback" not in res.stderr


def test_sync_bn_on_cpu_is_a_clear_error(monkeypatch):
    """torch's SyncBatchNorm needs CUDA; a process group on CPU says so before joining (no silent BatchNorm)."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(distributed.DistributedError) as info:
        distributed.join(recipe.DistributedConfig(sync_bn=True), "cpu")
    assert str(info.value) == ("[distributed] sync_bn = true: torch's SyncBatchNorm runs on CUDA devices only, and "
                               "this run trains on cpu; set sync_bn = false (each process then normalises its own "
                               "batch)")
    assert not torch.distributed.is_initialized()


def test_sync_bn_alone_is_a_note(toy_plugins, tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE + "\n[distributed]\nsync_bn = true\n")
    seen: list[str] = []
    Trainer(recipe.load(path, ["train.max_steps=2"]), tmp_path / "run", echo=seen.append).run()
    assert "note: [distributed] sync_bn has no effect in a single-process run" in seen


def test_hooks_get_rank_and_world_size_in_one_process(toy_plugins, tmp_path):
    calls = []

    class Ranks:
        @hookimpl
        def tface_run_start(self, rank, world_size):
            calls.append(("run_start", rank, world_size))

        @hookimpl
        def tface_checkpoint_saved(self, step, rank, world_size):
            calls.append(("checkpoint_saved", rank, world_size))

        @hookimpl
        def tface_run_end(self, rank, world_size):
            calls.append(("run_end", rank, world_size))

    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    Trainer(recipe.load(path, ["train.max_steps=2"]), tmp_path / "run", plugins=[Ranks()], echo=lambda m: None).run()
    assert calls == [("run_start", 0, 1), ("checkpoint_saved", 0, 1), ("run_end", 0, 1)]


def test_nproc_per_node_under_torchrun_is_a_usage_error(toy_plugins, tmp_path, monkeypatch):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    res = CliRunner().invoke(cli, ["run", "--nproc-per-node", "2", str(path)])
    assert res.exit_code == 2
    assert "this process was started by torchrun" in res.output


def test_partial_torchrun_environment_is_named(toy_plugins, tmp_path, monkeypatch):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    monkeypatch.setenv("RANK", "1")
    for key in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    res = CliRunner().invoke(cli, ["run", str(path), "--output-dir", str(tmp_path / "run")])
    assert res.exit_code == 1
    assert res.output.strip() == ("Error: the environment sets RANK but not WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, "
                                  "MASTER_PORT; start distributed runs with torchrun or `tface run --nproc-per-node N`")
    assert not (tmp_path / "run").exists()


def test_device_option_overrides_the_recipe(toy_plugins, tmp_path):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE.replace('device = "cpu"', 'device = "cuda:3"'))
    res = CliRunner().invoke(cli, ["run", "--device", "cpu", "--dry-run", str(path)])
    assert res.exit_code == 0, res.output
    assert 'device = "cpu"' in res.output.splitlines()
    res = CliRunner().invoke(cli, ["run", "--device", "gpu", "--dry-run", str(path)])
    assert res.exit_code == 2
    assert "Invalid value for '--device': expected one of auto, cpu, cuda or \"cuda:N\", got \"gpu\"" in res.output


def test_distributed_table_is_validated(toy_plugins):
    bad = {
        'backend="mpi"': "distributed.backend: 'backend' must be in ('auto', 'gloo', 'nccl') (got 'mpi')",
        "timeout=0": "distributed.timeout: 'timeout' must be > 0: 0.0",
        "sync_bn=1": "distributed.sync_bn: expected bool, got 1",
        "port=5": "distributed.port: unknown key (valid keys: backend, timeout, sync_bn)",
    }
    for override, problem in bad.items():
        with pytest.raises(ConfigError) as info:
            recipe.loads(TOY_RECIPE, [f"distributed.{override}"])
        assert info.value.problems == [problem]
    good = recipe.loads(TOY_RECIPE, ['distributed.backend="gloo"', "distributed.timeout=60"])
    assert (good.distributed.backend, good.distributed.timeout, good.distributed.sync_bn) == ("gloo", 60.0, False)
    assert recipe.loads(recipe.dumps(good)).distributed == good.distributed


def test_devices_of_a_process_group():
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", local_rank=1) == torch.device("cpu")
    with pytest.raises(distributed.DistributedError, match='backend = "nccl" needs CUDA devices'):
        distributed._backend("nccl", torch.device("cpu"))
    assert distributed._backend("auto", torch.device("cpu")) == "gloo"


def test_metrics_window_sums_the_processes():
    """The reduce hook receives (loss sum, steps, per branch: loss*rows, correct, rows, scored); its sums are used."""
    from tface.core.train.engine import StepResult

    other = [4.0, 1.0, 12.0, 4, 4, 4, 4.0, 0, 4, 4]  # the other rank: losses 3 (a) and 1 (b), 4 of 4 right in a
    window = MetricsWindow(["a", "b"], reduce=lambda v: [x + y for x, y in zip(v, other)])
    window.add(StepResult(2.0, 0.1, {"a": (1.0, 3, 4, 4), "b": (3.0, 1, 4, 4)}))
    record = window.record(1, 0, 0.1)
    assert record["loss"] == pytest.approx((2.0 + 4.0) / 2)
    assert record["top1"] == pytest.approx(100.0 * (3 + 1 + 4 + 0) / 16)
    assert record["branches"]["a"] == pytest.approx({"loss": (4.0 + 12.0) / 8, "top1": 100.0 * 7 / 8})
    assert record["branches"]["b"] == pytest.approx({"loss": (12.0 + 4.0) / 8, "top1": 100.0 * 1 / 8})


def test_metrics_window_without_a_classifier_reports_no_top1():
    """A branch trained by embedding losses only scores no rows: its loss is reported, top-1 is absent."""
    from tface.core.train.engine import StepResult

    window = MetricsWindow(["a", "b"])
    window.add(StepResult(2.0, 0.1, {"a": (1.0, 3, 4, 4), "b": (3.0, 0, 4, 0)}))
    record = window.record(1, 0, 0.1)
    assert record["top1"] == pytest.approx(75.0)  # over a's 4 scored rows only
    assert record["branches"]["b"] == pytest.approx({"loss": 3.0})
    window.add(StepResult(1.0, 0.1, {"a": (1.0, 0, 4, 0), "b": (1.0, 0, 4, 0)}))
    assert "top1" not in window.record(2, 0, 0.1)


def test_metrics_window_loads_a_window_saved_before_scored_rows():
    window = MetricsWindow(["a"])
    window.load_state_dict({"branches": {"a": [4.0, 3, 4]}, "total": 1.0, "steps": 1, "seconds": 0.0,
                            "skipped": 0, "grad_norms": []})
    assert window.branches["a"] == [4.0, 3, 4, 4]


def test_sigterm_in_a_process_group_becomes_a_peer_lost_error():
    """torchrun ends the other processes with SIGTERM when one fails: rank 0 must get to record why."""
    world = distributed.World(rank=0, world_size=2, backend="gloo")  # no group needed: only the signal matters
    before = signal.getsignal(signal.SIGTERM)
    lost = pytest.raises(distributed.PeerLost, match=r"^rank 0 of 2 stopped by SIGTERM \(torchrun stops every process")
    with lost, distributed.stop_on_sigterm(world):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises at the next bytecode
    with distributed.stop_on_sigterm(world) as disarm:
        disarm()  # the final status is being written: a late SIGTERM must not cut it short
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before
    with distributed.stop_on_sigterm(distributed.World()):  # a single process keeps the default
        assert signal.getsignal(signal.SIGTERM) is before


def test_only_process_group_failures_become_peer_lost():
    world = distributed.World(rank=1, world_size=2, backend="gloo")
    with pytest.raises(distributed.PeerLost) as info, world.collective("step 7"):
        raise RuntimeError("[/src/gloo/transport/tcp/pair.cc:561] Connection closed by peer [10.0.0.2]:4711. "
                           "This is typically caused by a remote worker crashing. GLHF")
    assert str(info.value) == ("rank 1 of 2 lost the other processes during step 7: one of them died, failed or did "
                               "not answer within [distributed] timeout = 1800 s (its own output says why): "
                               "Connection closed by peer [10.0.0.2]:4711")
    for exc in (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), ValueError("gloo"),
                TrainingError("loss became nan at step 7 (timeout)")):
        with pytest.raises(type(exc)) as info, world.collective("step 7"):
            raise exc
        assert info.value is exc  # passed through, not turned into PeerLost


def test_skipping_nonfinite_steps_is_refused_with_several_processes(toy_plugins, tmp_path, monkeypatch):
    """The processes would have to agree on every dropped step; until they do, "skip" is refused up front."""
    from tface.core import recipe as recipe_mod
    from tface.core.train import distributed
    from tface.core.train.trainer import Trainer, TrainingError

    path = tmp_path / "r.toml"
    path.write_text(TOY_RECIPE)
    rec = recipe_mod.load(path, ['train.on_nonfinite="skip"'])
    world = distributed.World()
    monkeypatch.setattr(type(world), "distributed", property(lambda self: True))
    monkeypatch.setattr(distributed, "join", lambda cfg, device: (world, torch.device("cpu")))
    with pytest.raises(TrainingError, match=r'train.on_nonfinite = "skip" is not supported with several processes'):
        Trainer(rec, tmp_path / "run", echo=lambda m: None).run()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["sharded", "sampled"])
def test_sharded_classifiers_on_two_processes_train_like_one_local(flat, tmp_path, mode):
    """``[classifier] mode = "sharded"`` (and ``"sampled"`` at rate 1) on 2 gloo processes with batch 8 = the local
    classifier in 1 process with batch 16: each rank holds 2 of the 4 classes, the softmax is completed across
    them, the centres stay out of DDP; the saved checkpoint holds the whole centres and their momentum."""
    steps = 6
    table = f'\n[classifier]\nmode = "{mode}"\n' + ("sample_rate = 1.0\n" if mode == "sampled" else "")
    two = _tface(["run", "--nproc-per-node", "2", str(_write_recipe(tmp_path, 8, steps, table)), "--output-dir",
                  str(tmp_path / "two")], _env(flat, tmp_path), cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    one_dir = tmp_path / "one"
    Trainer(recipe.load(_write_recipe(tmp_path, 16, steps)), one_dir, echo=lambda m: None).run()
    ref, got = _weights(one_dir), _weights(tmp_path / "two")
    assert sorted(ref) == sorted(got) and got["classifier.toydata.weight"].shape == (4, 8)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(_metrics(one_dir), _metrics(tmp_path / "two")):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["top1"] == pytest.approx(a["top1"])
    # the centres' momentum is saved whole, beside the optimiser state (which no longer holds it)
    state = checkpoint.load(tmp_path / "two" / "checkpoints" / "last.pt")
    local = checkpoint.load(one_dir / "checkpoints" / "last.pt")
    momentum = state["centres_optimizer"]["toydata"]["momentum_buffer"]
    torch.testing.assert_close(momentum, local["optimizer"]["state"][_centre_index(local)]["momentum_buffer"],
                               rtol=1e-5, atol=1e-6)
    assert len(state["optimizer"]["state"]) == len(local["optimizer"]["state"]) - 1


def _centre_index(state: dict) -> int:
    """The optimiser index of a local run's centres: the one state entry shaped like them."""
    shape = next(iter(state["classifiers"].values()))["weight"].shape
    (index,) = [i for i, s in state["optimizer"]["state"].items() if s["momentum_buffer"].shape == shape]
    return index


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_a_sharded_run_resumes_under_another_number_of_processes(flat, tmp_path, first, then):
    """Saved by 2 processes and resumed by 1, and the reverse: the whole centres and their optimiser state are
    re-split, the data continues from the same point, the run says it is not bit-identical and finishes."""
    table = '\n[classifier]\nmode = "sharded"\n'
    path = _write_recipe(tmp_path, 8, 4, table)
    run = tmp_path / "run"

    def tface(nproc: int, *args: str) -> subprocess.CompletedProcess:
        launch = ["--nproc-per-node", str(nproc)] if nproc > 1 else []
        return _tface(["run", *launch, str(path), *args], _env(flat, tmp_path), cwd=tmp_path)

    done = tface(first, "--output-dir", str(run))
    assert done.returncode == 0, done.stderr
    saved = checkpoint.load(run / "checkpoints" / "last.pt")
    assert saved["world_size"] == first and saved["classifiers"]["toydata"]["weight"].shape == (4, 8)
    resumed = tface(then, "--resume", str(run), "--set", "train.max_steps=8")
    assert resumed.returncode == 0, resumed.stderr
    assert f"saved by {first} process(es) and this run has {then}" in resumed.stdout
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == 8
    assert [m["step"] for m in _metrics(run)] == [2, 4, 6, 8]
    after = checkpoint.load(run / "checkpoints" / "last.pt")
    assert after["world_size"] == then and after["step"] == 8
    assert after["classifiers"]["toydata"]["weight"].shape == (4, 8)
    assert after["centres_optimizer"]["toydata"]["momentum_buffer"].shape == (4, 8)

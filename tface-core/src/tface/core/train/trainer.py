"""The run: build components from a recipe, evaluate, train, checkpoint, evaluate, report.

The parts live in their own modules: :mod:`~tface.core.train.components` (what the recipe names),
:mod:`~tface.core.train.setup` (data, models, optimiser, schedule), :mod:`~tface.core.train.engine` (one
step), :mod:`~tface.core.train.state` (what a checkpoint holds), :mod:`~tface.core.train.reporting` and
:mod:`~tface.core.train.rundir` (what the run folder holds). This module only sequences them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tface.core import recipe as recipe_mod
from tface.core import registry
from tface.core.data.errors import DataError
from tface.core.hooks import plugin_manager
from tface.core.protocol import EvalContext
from tface.core.report import markdown_table
from tface.core.train import distributed, rundir, state
from tface.core.train.components import Components, build_components
from tface.core.train.engine import StepEngine
from tface.core.train.errors import TrainingError
from tface.core.train.progress import Progress
from tface.core.train.reporting import MetricsWindow, append_metrics, metrics_until, write_final_reports
from tface.core.train.setup import build_training, check_precision, embedding_size_of, resolve_device
from tface.core.train.tensorboard import TensorBoardLog
from tface.core.train.tensorboard import require as require_tensorboard

__all__ = ["Components", "build_components", "Trainer", "TrainingError", "resolve_device", "embedding_size_of"]


def _worker_message(exc: BaseException) -> str:
    """The original message of an exception re-raised from a DataLoader worker (not its traceback dump)."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


def _data_errors(loader, step: Callable[[], int]):
    """Iterate ``loader``; a bad sample (``on_error = "error"``) stops the run naming the step and the record."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except DataError as exc:
            raise TrainingError(f"step {step()}: {_worker_message(exc)} (set on_error = \"skip\" in the data "
                                "table to skip bad samples; `tface data verify` lists them all)") from exc
        yield batch


class Trainer:
    """The trainer of one process: alone (CPU or one GPU), or one rank of a distributed run.

    Under torchrun (or ``tface run --nproc-per-node``) it joins the process group from the environment;
    rank 0 prepares the data first, evaluates, and writes the run folder, which the other ranks never touch.
    """

    def __init__(self, recipe: recipe_mod.Recipe, run_dir: str | Path | None = None, *, overwrite: bool = False,
                 resume: bool = False, plugins: Sequence[Any] = (), echo: Callable[[str], None] | None = None):
        """``run_dir`` defaults to the recipe's ``output_dir``, else a new ``runs/<recipe>-<time>``.

        An existing folder must be empty, or hold an earlier run and ``overwrite`` be set (see
        :func:`tface.core.train.rundir.prepare_run_dir`); nothing is created before the inputs are checked.
        With ``resume``, ``run_dir`` (required) holds an earlier run that continues from its last checkpoint;
        ``recipe`` may differ from that run's only in :data:`tface.core.train.state.RESUME_MAY_CHANGE`.
        """
        if resume and (run_dir is None or overwrite):
            raise ValueError("resume needs run_dir and excludes overwrite")
        self.recipe = recipe
        self.resume = resume
        self.resume_state: dict[str, Any] | None = None
        self.run_dir_arg = Path(run_dir) if run_dir is not None else None
        #: The run folder; for the default ``runs/<recipe>-<time>`` known only once :meth:`run` created it.
        self.run_dir: Path | None = self.run_dir_arg or recipe.output_dir
        self.overwrite = overwrite
        self.echo = echo or (lambda msg: print(msg, flush=True))
        self.pm = plugin_manager(list(plugins))
        self.cfg = recipe.train
        self.results: list[dict[str, Any]] = []
        self.step = 0
        self.world = distributed.World()
        #: rank 0 (or the single process): the one that writes the run folder and evaluates
        self.main = True
        self.tensorboard: TensorBoardLog | None = None
        self.epoch = 0
        self.saved_step: int | None = None  # the step of the newest checkpoint
        self.window: MetricsWindow | None = None  # the metrics since the last metrics.jsonl line

    # -- setup -------------------------------------------------------------------------------------
    def _join(self) -> None:
        """Seed; join the process group when started by torchrun; choose this process's device."""
        state.seed_all(self.recipe.seed)
        self.world, self.device = distributed.join(self.recipe.distributed, self.recipe.device)
        self.main = self.world.is_main
        check_precision(self.cfg.precision, self.device)
        if self.cfg.on_nonfinite == "skip" and self.world.distributed:
            raise TrainingError('train.on_nonfinite = "skip" is not supported with several processes yet (the '
                                'processes would have to agree on every skip); use "stop"')
        if not self.main:
            self.echo = lambda msg: None  # rank 0 speaks for the run

    def _prepare(self) -> None:
        """Build and check every component; only then create (or clear) the run folder."""
        self.parts = build_components(self.recipe)
        self.parts.check_inputs()
        if self.cfg.tensorboard:
            require_tensorboard()
        if self.resume:
            assert self.run_dir_arg is not None
            # rank 0 checks and reopens the folder; every rank then reads the checkpoint (its own RNG states)
            self.run_dir = Path(self.world.share(self._reopen_run_dir if self.main else None, "reopening the run"))
            if not self.main:
                self.resume_state = state.load_last(self.run_dir)
            return
        # rank 0 creates the folder (a default name holds the time) and tells the others where it is
        self.run_dir = Path(self.world.share(self._make_run_dir if self.main else None, "preparing the run folder"))
        if self.main:
            self.folder = rundir.RunDir(self.run_dir)
            self.folder.start()

    def _reopen_run_dir(self) -> str:
        assert self.run_dir_arg is not None
        self.folder = rundir.reopen_run_dir(self.run_dir_arg)
        self.resume_state = state.load_last(self.folder.path)
        state.check_resumable(self.resume_state, self.recipe, self.folder.path, self.folder.status.get("status"),
                              self.world.world_size)
        self.folder.resumed(self.resume_state["step"])
        return str(self.folder.path)

    def _make_run_dir(self) -> str:
        if self.run_dir_arg is not None:
            return str(rundir.prepare_run_dir(self.run_dir_arg, self.overwrite, "--output-dir"))
        if self.recipe.output_dir is not None:
            return str(rundir.prepare_run_dir(self.recipe.output_dir, self.overwrite, "output_dir"))
        stem = self.recipe.source.stem if self.recipe.source is not None else "run"
        return str(rundir.default_run_dir(stem))

    def _setup(self) -> None:
        self.setup = build_training(self.recipe, self.parts, self.device, self.echo, self.world)
        distributed.wrap(self.setup, self.world, self.recipe.distributed, self.echo)
        self.engine = StepEngine(self.setup)
        # the names the rest of the code base (hooks, tests, plugins) reads
        self.backbone = self.setup.backbone
        self.classifiers = self.setup.classifiers
        self.optimizer = self.setup.optimizer
        self.scheduler = self.setup.scheduler
        self.loader = self.setup.loader
        self.data_seconds = self.setup.data_seconds
        saved = self.resume_state
        if saved is not None:  # last, so nothing built afterwards draws from the restored generators
            state.restore(self.setup, saved)
            self.step = self.saved_step = int(saved["step"])
            self.epoch = int(saved["epoch"])
            self.results = list(saved["results"])
            saved_world = int(saved["world_size"])
            if saved_world != self.world.world_size:
                self.echo(f"note: the checkpoint was saved by {saved_world} process(es) and this run has "
                          f"{self.world.world_size}: the centres and their optimiser state are re-split and the data "
                          "continues from the same point, but the run is not bit-identical to an uninterrupted one")
            window = saved["metrics"][self.world.rank] if saved_world == self.world.world_size else None
            if window is not None:
                self.window = self._new_window()
                self.window.load_state_dict(window)
            if self.main:
                state.ensure_backbone(self.folder, saved)
            self.resume_state = None  # the weights live in the models now

    def _new_window(self) -> MetricsWindow:
        """The metrics since the last ``metrics.jsonl`` line, summed over all processes when there are several."""
        return MetricsWindow([s.name for s in self.loader.specs], self.device,
                             self.world.all_reduce_sum if self.world.distributed else None)

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, step: int, stage: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        ctx = EvalContext(device=self.device, step=step, provided=self.setup.eval_provided)
        for proto in self.parts.protocols:
            for r in proto.evaluate(self.setup.eval_backbone, ctx):
                results.append({"stage": stage, **r})
        if results:
            self.pm.hook.tface_evaluation_done(step=step, results=results, **self._ranks)
            self.echo(markdown_table(results).rstrip())
        self.results.extend(results)
        if self.tensorboard is not None and results:
            self.tensorboard.add_results(step, results)
        return results

    @property
    def _ranks(self) -> dict[str, int]:
        """What every hook call passes besides its own arguments."""
        return {"rank": self.world.rank, "world_size": self.world.world_size}

    # -- training ----------------------------------------------------------------------------------
    def _checkpoint(self, step: int, epoch: int) -> Path | None:
        """Every rank collects (RNG states and metric windows are per rank); rank 0 saves, the others get None."""
        assert self.window is not None
        with self.world.collective(f"checkpoint of step {step}"):
            ckpt = state.collect(self.setup, self.recipe, step, epoch, metrics=self.window.state_dict(),
                                 results=self.results)
        self.saved_step = step
        if not self.main:
            return None
        path = state.save(self.folder, ckpt, keep=self.cfg.keep_checkpoints)
        self.pm.hook.tface_checkpoint_saved(step=step, path=path, **self._ranks)
        return path

    def train(self) -> int:
        """Train from ``self.step`` (0, or a resumed checkpoint's) to ``train.max_steps``; checkpoint on the way."""
        cfg = self.cfg
        step, epoch = self.step, self.epoch
        progress = Progress(cfg.max_steps, start=step)
        self.backbone.train()
        self.classifiers.train()
        if self.window is None:  # started here, so the first line's images/s leaves out evaluation
            self.window = self._new_window()
        window = self.window
        micro: list = []  # the batches of the next step; train.accumulate of them, across epoch ends
        while step < cfg.max_steps:
            for batch in _data_errors(self.loader, lambda: step + 1):  # noqa: B023 - read when an error happens
                micro.append(batch)
                if len(micro) < cfg.accumulate:
                    continue
                with self.world.collective(f"step {step + 1}"):  # DDP's broadcasts and all-reduces
                    result = self.engine.step(micro, step + 1)
                micro = []
                if result.skipped:  # on_nonfinite = "skip": no update, so not a step; counted in the window
                    window.add(result)
                    continue
                step += 1
                self.step = step
                window.add(result)
                log = step % cfg.log_every == 0 or step == cfg.max_steps
                fields = {"loss": result.loss, "lr": result.lr}
                if log:
                    record = window.record(step, epoch, result.lr)
                    if self.main:
                        append_metrics(self.folder.path, record)
                    if self.tensorboard is not None:
                        self.tensorboard.add_metrics(record)
                    fields = {k: record[k] for k in ("loss", "top1", "lr", "images_per_s") if k in record}
                if self.main:
                    progress.update(step, fields, log)
                self.pm.hook.tface_step_end(step=step, metrics=fields, **self._ranks)
                if self.main and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                    progress.close()
                    self.evaluate(step, "train")
                    self.backbone.train()
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                    self._checkpoint(step, epoch)
                if step >= cfg.max_steps:
                    break
            else:
                epoch += 1
                self.epoch = epoch
                self.pm.hook.tface_epoch_end(epoch=epoch, step=step, **self._ranks)
        if self.main:
            progress.close()
        if self.saved_step != step:  # a resumed run that had reached max_steps has its checkpoint already
            self._checkpoint(step, epoch)
        return step

    # -- the whole run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole run; ``status.json`` in the run folder says running, then done, failed or interrupted.

        In a process group only rank 0 writes it; a peer lost on the way (died, failed, silent beyond the
        timeout) or torchrun's SIGTERM ends the run as failed with the reason, never a hang.
        """
        t_start = time.perf_counter()
        self._join()
        try:
            with distributed.stop_on_sigterm(self.world) as disarm:
                self._prepare()
                try:
                    out = self._run(t_start)
                except KeyboardInterrupt:
                    disarm()
                    self._finish("interrupted", "KeyboardInterrupt")
                    raise
                except BaseException as exc:
                    disarm()
                    text = str(exc).strip()
                    first = text.splitlines()[0] if text else ""
                    self._finish("failed", f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
                    raise
                disarm()
                self._finish("done")
                # no process leaves the group while another still talks in it (rank 0 evaluates and reports
                # after the others finish training; gloo aborts a process whose peer tears down mid-exchange)
                self.world.barrier("the end of the run")
            return out
        finally:
            self.world.close()

    def _finish(self, status: str, reason: str | None = None) -> None:
        if self.main:
            self.folder.finish(status, self.step, reason)

    def _run(self, t_start: float) -> dict[str, Any]:
        assert self.run_dir is not None
        if self.main:
            self.folder.write_text("recipe.toml", recipe_mod.dumps(self.recipe))
            self.folder.write_text("plugins.json", json.dumps(registry.loaded_versions(), indent=2) + "\n")
            if self.resume_state is not None:  # lines written after the checkpoint come again, from the same steps
                self.folder.claim("metrics.jsonl")
                metrics_until(self.run_dir, int(self.resume_state["step"]))
            else:
                self.folder.write_text("metrics.jsonl", "")
        if self.main and self.cfg.tensorboard:  # rank 0 writes the run folder
            # events after the checkpoint's step (written by a killed run) are hidden: they come again
            purge = int(self.resume_state["step"]) + 1 if self.resume_state is not None else None
            self.tensorboard = TensorBoardLog(self.folder.path, purge_step=purge)
            self.folder.claim(*self.tensorboard.files())
        try:
            return self._train_and_report(t_start)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.folder.claim(*self.tensorboard.files())

    def _train_and_report(self, t_start: float) -> dict[str, Any]:
        assert self.run_dir is not None
        resumed = self.resume_state is not None
        self._setup()
        if resumed:
            self.echo(f"resuming {self.run_dir} at step {self.step} of {self.cfg.max_steps}")
        elif self.main and self.cfg.eval_at_start and self.parts.protocols:
            self.echo("evaluating the untrained model ...")
            self.evaluate(0, "untrained")
        self.pm.hook.tface_run_start(recipe=self.recipe, run_dir=self.run_dir, model=self.backbone, **self._ranks)
        t_train = time.perf_counter()
        step = self.train()
        train_seconds = time.perf_counter() - t_train
        if not self.main:  # the other ranks are done: rank 0 evaluates and reports
            self.pm.hook.tface_run_end(run_dir=self.run_dir, step=step, results=self.results, **self._ranks)
            return {"results": self.results, "summary": {"steps": step, "train_seconds": round(train_seconds, 2),
                                                         "device": str(self.device)}}
        if self.parts.protocols:
            self.echo("evaluating the trained model ...")
            self.evaluate(step, "trained")
        summary = {
            "steps": step,
            "data_seconds": round(self.data_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "total_seconds": round(time.perf_counter() - t_start, 2),
            "device": str(self.device),
        }
        if self.world.distributed:
            summary["processes"] = self.world.world_size
            summary["backend"] = self.world.backend
        if self.engine.skipped:
            summary["skipped_steps"] = self.engine.skipped
            self.echo(f"skipped steps with a non-finite loss: {self.engine.skipped} (train.on_nonfinite = \"skip\")")
        skipped = self.loader.skipped
        if any(skipped.values()):
            summary["skipped_samples"] = skipped
            self.echo("skipped bad samples: " + ", ".join(f"{n}: {k}" for n, k in skipped.items())
                      + " (the log lists each one)")
        write_final_reports(self.folder, self.results, summary, self.echo)
        self.pm.hook.tface_run_end(run_dir=self.run_dir, step=step, results=self.results, **self._ranks)
        self.echo(f"run folder: {self.run_dir} ({summary['total_seconds']:.0f}s)")
        return {"results": self.results, "summary": summary}

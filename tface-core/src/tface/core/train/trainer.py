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
from tface.core.train import rundir, state
from tface.core.train.components import Components, build_components
from tface.core.train.engine import StepEngine
from tface.core.train.errors import TrainingError
from tface.core.train.progress import Progress
from tface.core.train.reporting import MetricsWindow, append_metrics, write_final_reports
from tface.core.train.setup import build_training, check_precision, embedding_size_of, resolve_device

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
    """Single-process trainer (CPU or one GPU). Writes everything into ``run_dir``."""

    def __init__(self, recipe: recipe_mod.Recipe, run_dir: str | Path | None = None, *, overwrite: bool = False,
                 plugins: Sequence[Any] = (), echo: Callable[[str], None] | None = None):
        """``run_dir`` defaults to the recipe's ``output_dir``, else a new ``runs/<recipe>-<time>``.

        An existing folder must be empty, or hold an earlier run and ``overwrite`` be set (see
        :func:`tface.core.train.rundir.prepare_run_dir`); nothing is created before the inputs are checked.
        """
        self.recipe = recipe
        self.run_dir_arg = Path(run_dir) if run_dir is not None else None
        #: The run folder; for the default ``runs/<recipe>-<time>`` known only once :meth:`run` created it.
        self.run_dir: Path | None = self.run_dir_arg or recipe.output_dir
        self.overwrite = overwrite
        self.echo = echo or (lambda msg: print(msg, flush=True))
        self.pm = plugin_manager(list(plugins))
        self.cfg = recipe.train
        self.results: list[dict[str, Any]] = []
        self.step = 0

    # -- setup -------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """Seed, build and check every component; only then create (or clear) the run folder."""
        state.seed_all(self.recipe.seed)
        self.device = resolve_device(self.recipe.device)
        check_precision(self.cfg.precision, self.device)
        self.parts = build_components(self.recipe)
        self.parts.check_inputs()
        if self.run_dir_arg is not None:
            self.run_dir = rundir.prepare_run_dir(self.run_dir_arg, self.overwrite, "--output-dir")
        elif self.recipe.output_dir is not None:
            self.run_dir = rundir.prepare_run_dir(self.recipe.output_dir, self.overwrite, "output_dir")
        else:
            stem = self.recipe.source.stem if self.recipe.source is not None else "run"
            self.run_dir = rundir.default_run_dir(stem)
        self.folder = rundir.RunDir(self.run_dir)
        self.folder.start()

    def _setup(self) -> None:
        self.setup = build_training(self.recipe, self.parts, self.device, self.echo)
        self.engine = StepEngine(self.setup)
        # the names the rest of the code base (hooks, tests, plugins) reads
        self.backbone = self.setup.backbone
        self.classifiers = self.setup.classifiers
        self.optimizer = self.setup.optimizer
        self.scheduler = self.setup.scheduler
        self.loader = self.setup.loader
        self.data_seconds = self.setup.data_seconds

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, step: int, stage: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        ctx = EvalContext(device=self.device, step=step, provided=self.setup.eval_provided)
        for proto in self.parts.protocols:
            for r in proto.evaluate(self.setup.eval_backbone, ctx):
                results.append({"stage": stage, **r})
        if results:
            self.pm.hook.tface_evaluation_done(step=step, results=results)
            self.echo(markdown_table(results).rstrip())
        self.results.extend(results)
        return results

    # -- training ----------------------------------------------------------------------------------
    def _checkpoint(self, step: int, epoch: int) -> Path:
        path = state.save(self.folder, state.collect(self.setup, self.recipe, step, epoch))
        self.pm.hook.tface_checkpoint_saved(step=step, path=path)
        return path

    def train(self) -> int:
        cfg = self.cfg
        progress = Progress(cfg.max_steps)
        step, epoch = 0, 0
        self.backbone.train()
        self.classifiers.train()
        window = MetricsWindow([s.name for s in self.loader.specs])
        micro: list = []  # the batches of the next step; train.accumulate of them, across epoch ends
        while step < cfg.max_steps:
            for batch in _data_errors(self.loader, lambda: step + 1):  # noqa: B023 - read when an error happens
                micro.append(batch)
                if len(micro) < cfg.accumulate:
                    continue
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
                    append_metrics(self.folder.path, record)
                    fields = {k: record[k] for k in ("loss", "top1", "lr", "images_per_s")}
                progress.update(step, fields, log)
                self.pm.hook.tface_step_end(step=step, metrics=fields)
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                    progress.close()
                    self.evaluate(step, "train")
                    self.backbone.train()
                if step >= cfg.max_steps:
                    break
            else:
                epoch += 1
                self.pm.hook.tface_epoch_end(epoch=epoch, step=step)
        progress.close()
        self._checkpoint(step, epoch)
        return step

    # -- the whole run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The whole run; ``status.json`` in the run folder says running, then done, failed or interrupted."""
        t_start = time.perf_counter()
        self._prepare()
        try:
            out = self._run(t_start)
        except KeyboardInterrupt:
            self.folder.finish("interrupted", self.step, "KeyboardInterrupt")
            raise
        except BaseException as exc:
            text = str(exc).strip()
            first = text.splitlines()[0] if text else ""
            self.folder.finish("failed", self.step, f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
            raise
        self.folder.finish("done", self.step)
        return out

    def _run(self, t_start: float) -> dict[str, Any]:
        assert self.run_dir is not None
        self.folder.write_text("recipe.toml", recipe_mod.dumps(self.recipe))
        self.folder.write_text("plugins.json", json.dumps(registry.loaded_versions(), indent=2) + "\n")
        self.folder.write_text("metrics.jsonl", "")
        self._setup()
        if self.cfg.eval_at_start and self.parts.protocols:
            self.echo("evaluating the untrained model ...")
            self.evaluate(0, "untrained")
        self.pm.hook.tface_run_start(recipe=self.recipe, run_dir=self.run_dir, model=self.backbone)
        t_train = time.perf_counter()
        step = self.train()
        train_seconds = time.perf_counter() - t_train
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
        if self.engine.skipped:
            summary["skipped_steps"] = self.engine.skipped
            self.echo(f"skipped steps with a non-finite loss: {self.engine.skipped} (train.on_nonfinite = \"skip\")")
        skipped = self.loader.skipped
        if any(skipped.values()):
            summary["skipped_samples"] = skipped
            self.echo("skipped bad samples: " + ", ".join(f"{n}: {k}" for n, k in skipped.items())
                      + " (the log lists each one)")
        write_final_reports(self.folder, self.results, summary, self.echo)
        self.pm.hook.tface_run_end(run_dir=self.run_dir, step=step, results=self.results)
        self.echo(f"run folder: {self.run_dir} ({summary['total_seconds']:.0f}s)")
        return {"results": self.results, "summary": summary}

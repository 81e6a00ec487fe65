"""The run loop: build components from a recipe, evaluate, train, checkpoint, evaluate, report."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tface.core import recipe as recipe_mod
from tface.core import registry
from tface.core.backbone import backbone_info
from tface.core.classifier import Classifier
from tface.core.config import ConfigError
from tface.core.data.branches import BranchLoader, BranchSpec, MultiBatch
from tface.core.data.errors import DataError
from tface.core.hooks import plugin_manager
from tface.core.protocol import EvalContext
from tface.core.protocol import check_inputs as protocol_inputs
from tface.core.report import markdown_table, write_plots, write_reports
from tface.core.train import checkpoint, rundir
from tface.core.train.optim import lr_factor, param_groups
from tface.core.train.progress import Progress

__all__ = ["Components", "build_components", "Trainer", "TrainingError", "resolve_device", "embedding_size_of"]


class TrainingError(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device = {name!r} but CUDA is not available on this machine")
    return torch.device(name)


def embedding_size_of(backbone: nn.Module) -> int:
    """The declared ``embedding_size`` (the backbone contract, :mod:`tface.core.backbone`; never probed)."""
    return backbone_info(backbone).embedding_size


class Compose:
    """Apply augmenters in order (picklable, so DataLoader workers can use it)."""

    def __init__(self, steps: Sequence[Callable[[torch.Tensor], torch.Tensor]]):
        self.steps = list(steps)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            img = step(img)
        return img


class Components:
    """Everything a recipe builds, before any data is generated or read."""

    def __init__(self, recipe: recipe_mod.Recipe):
        self.recipe = recipe
        self.data_keys = ["data" if len(recipe.data) == 1 else f"data[{i}]" for i in range(len(recipe.data))]
        self.sources = [b.source.build(key) for b, key in zip(recipe.data, self.data_keys)]
        self.backbone: nn.Module = recipe.backbone.build("backbone")
        self.head: nn.Module = recipe.head.build("head")
        self.augmenters = [c.build(f"augment[{i}]") for i, c in enumerate(recipe.augment)]
        self.protocols = [c.build(f"eval[{i}]") for i, c in enumerate(recipe.eval)]

    def check_inputs(self) -> None:
        """Raise :class:`ConfigError` naming the recipe key and path of every input file that is missing.

        Asks each data source and protocol (``check_inputs()``), so a missing index, image folder or ``.bin``
        is reported by ``--dry-run`` and before a run folder exists, not minutes into a run.
        """
        problems = [f"{key}.{p}" for key, src in zip(self.data_keys, self.sources) for p in src.check_inputs()]
        problems += [f"eval[{i}].{p}" for i, proto in enumerate(self.protocols) for p in protocol_inputs(proto)]
        if problems:
            where = self.recipe.source
            raise ConfigError([f"{where}: {p}" if where is not None else p for p in problems])

    def describe(self) -> list[str]:
        def params(m: nn.Module) -> str:
            return f"{sum(p.numel() for p in m.parameters()):,} parameters"

        r = self.recipe
        lines = [
            f"data      {b.source.name}: {type(src).__name__}"
            + (f" (branch {b.name}, batch {b.batch(r.train)}, weight {b.weight:g}, {b.sampler} sampler)"
               if len(r.data) > 1 or b.explicit else "")
            for b, src in zip(r.data, self.sources)
        ]
        lines += [
            f"backbone  {r.backbone.name}: {type(self.backbone).__name__}, {params(self.backbone)}",
            f"head      {r.head.name}: {self.head}",
        ]
        lines += [f"augment   {c.name}: {a}" for c, a in zip(r.augment, self.augmenters)]
        lines += [f"eval      {c.name}: {type(p).__name__}" for c, p in zip(r.eval, self.protocols)]
        return lines


def build_components(recipe: recipe_mod.Recipe) -> Components:
    return Components(recipe)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
        _seed_all(self.recipe.seed)
        self.device = resolve_device(self.recipe.device)
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
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.echo("preparing data ...")
        t0 = time.perf_counter()
        transform = Compose(self.parts.augmenters) if self.parts.augmenters else None
        specs = []
        for i, (branch, source) in enumerate(zip(self.recipe.data, self.parts.sources)):
            try:
                dataset = source.train_dataset(transform=transform)
            except (ValueError, OSError) as exc:  # bad index, missing shard, label gaps refused, ...
                raise TrainingError(f"data branch {branch.name!r}: {exc}") from exc
            message = getattr(dataset, "label_message", None)
            if message:
                self.echo(f"note: {message}")
            specs.append(BranchSpec(branch.name, dataset, branch.batch(cfg), branch.weight, branch.sampler,
                                    branch.images_per_identity))
            if len(dataset) < branch.batch(cfg):
                key = f"data[{i}].batch_size" if branch.batch_size is not None else "train.batch_size"
                raise TrainingError(f"{key} = {branch.batch(cfg)} but the data set of branch {branch.name!r} "
                                    f"has only {len(dataset)} samples")
        self.data_seconds = time.perf_counter() - t0
        self.backbone = self.parts.backbone.to(self.device)
        if cfg.channels_last:  # faster depthwise/1x1 convolutions on CPUs and tensor cores
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        emb = embedding_size_of(self.backbone)
        # One classifier per branch: class spaces of different data sets never mix (TFace: one head each).
        heads = [self.parts.head] + [self.recipe.head.build("head") for _ in specs[1:]]
        for i, s in enumerate(specs):
            n = int(s.dataset.num_classes)
            if n < 2:
                raise TrainingError(
                    f"{self.parts.data_keys[i]} ({self.recipe.data[i].source.name}): the data set has {n} "
                    f"identit{'y' if n == 1 else 'ies'}; training a classifier needs at least 2")
        self.classifiers = nn.ModuleDict({
            s.name: Classifier(int(s.dataset.num_classes), emb, head) for s, head in zip(specs, heads)
        }).to(self.device)
        self.weights = {s.name: s.weight for s in specs}
        self.optimizer = torch.optim.SGD(
            param_groups([self.backbone, self.classifiers], cfg.weight_decay),
            lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, cfg.warmup_steps, cfg.warmup_start, cfg.lr_milestones, cfg.lr_gamma),
        )
        try:
            self.loader = BranchLoader(specs, num_workers=cfg.num_workers, seed=self.recipe.seed,
                                       pin_memory=self.device.type == "cuda")
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        self.eval_ctx_provided: dict[str, dict[str, Path]] = {}
        for source in self.parts.sources:
            for proto, sets in source.eval_sets().items():
                self.eval_ctx_provided.setdefault(proto, {}).update(sets)
        sizes = ", ".join(f"{s.name}: {len(s.dataset):,} images, {int(s.dataset.num_classes):,} classes" for s in specs)
        self.echo(
            f"data: {sizes} ({self.data_seconds:.1f}s); "
            f"device: {self.device}; steps: {cfg.max_steps}, {len(self.loader)} per epoch"
        )

    # -- evaluation --------------------------------------------------------------------------------
    def evaluate(self, step: int, stage: str) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        ctx = EvalContext(device=self.device, step=step, provided=self.eval_ctx_provided)
        for proto in self.parts.protocols:
            for r in proto.evaluate(self.backbone, ctx):
                results.append({"stage": stage, **r})
        if results:
            self.pm.hook.tface_evaluation_done(step=step, results=results)
            self.echo(markdown_table(results).rstrip())
        self.results.extend(results)
        return results

    # -- training ----------------------------------------------------------------------------------
    def _checkpoint(self, step: int, epoch: int) -> Path:
        assert self.run_dir is not None
        ckpt_dir = self.run_dir / "checkpoints"
        state = {
            "step": step,
            "epoch": epoch,
            "backbone": self.backbone.state_dict(),
            "classifiers": {name: c.state_dict() for name, c in self.classifiers.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "recipe": recipe_mod.dumps(self.recipe),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": [int(x) for x in np.random.get_state()[1]]},
        }
        self.folder.claim(ckpt_dir / "last.pt", ckpt_dir / "backbone.pt")
        path = checkpoint.save(ckpt_dir / "last.pt", state)
        checkpoint.save(ckpt_dir / "backbone.pt", self.backbone.state_dict())
        self.pm.hook.tface_checkpoint_saved(step=step, path=path)
        return path

    def _write_metrics(self, record: dict[str, Any]) -> None:
        assert self.run_dir is not None
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _forward(self, batch: MultiBatch) -> tuple[torch.Tensor, dict[str, tuple[float, int, int]]]:
        """Weighted sum of the branch losses; per branch (loss, correct, seen) for the logs."""
        images = backbone_info(self.backbone).normalize(batch.images).contiguous(memory_format=self.memory_format)
        embeddings = self.backbone(images).float()
        total: torch.Tensor | None = None
        stats: dict[str, tuple[float, int, int]] = {}
        for name, emb, labels in zip(batch.names, batch.split(embeddings), batch.labels):
            loss, cos = self.classifiers[name](emb, labels)
            weighted = loss * self.weights[name]
            total = weighted if total is None else total + weighted
            stats[name] = (loss.item(), int((cos.argmax(1) == labels).sum()), len(labels))
        assert total is not None
        return total, stats

    def train(self) -> int:
        cfg = self.cfg
        progress = Progress(cfg.max_steps)
        step, epoch = 0, 0
        self.backbone.train()
        self.classifiers.train()
        names = [s.name for s in self.loader.specs]
        window = {n: [0.0, 0, 0] for n in names}  # loss * seen, correct, seen
        window_total, window_steps = 0.0, 0
        t_window = time.perf_counter()
        while step < cfg.max_steps:
            for batch in _data_errors(self.loader, lambda: step + 1):  # noqa: B023 - read when an error happens
                batch = batch.to(self.device)
                loss, stats = self._forward(batch)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss.item()} at step {step + 1} (lr {self.scheduler.get_last_lr()[0]:.4g}); "
                        "lower train.lr or increase train.warmup_steps"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                step += 1
                self.step = step
                for n, (branch_loss, correct, seen) in stats.items():
                    w = window[n]
                    w[0] += branch_loss * seen
                    w[1] += correct
                    w[2] += seen
                window_total += loss.item()
                window_steps += 1
                log = step % cfg.log_every == 0 or step == cfg.max_steps
                fields = {"loss": loss.item(), "lr": lr}
                if log:
                    now = time.perf_counter()
                    seen = sum(w[2] for w in window.values())
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "loss": window_total / window_steps,
                        "top1": 100.0 * sum(w[1] for w in window.values()) / seen,
                        "lr": lr,
                        "images_per_s": seen / max(now - t_window, 1e-9),
                    }
                    if len(names) > 1:
                        record["branches"] = {n: {"loss": w[0] / w[2], "top1": 100.0 * w[1] / w[2]}
                                              for n, w in window.items()}
                    self._write_metrics(record)
                    fields = {k: record[k] for k in ("loss", "top1", "lr", "images_per_s")}
                    window = {n: [0.0, 0, 0] for n in names}
                    window_total, window_steps, t_window = 0.0, 0, now
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
        skipped = self.loader.skipped
        if any(skipped.values()):
            summary["skipped_samples"] = skipped
            self.echo("skipped bad samples: " + ", ".join(f"{n}: {k}" for n, k in skipped.items())
                      + " (the log lists each one)")
        self.folder.claim("report.json", "report.md")
        write_reports(self.run_dir, self.results, summary)
        plots, note = write_plots(self.run_dir, self.results)  # ROC / DET PNGs when matplotlib is installed
        self.folder.claim(*plots)
        if note:
            self.echo(note)
        self.pm.hook.tface_run_end(run_dir=self.run_dir, step=step, results=self.results)
        self.echo(f"run folder: {self.run_dir} ({summary['total_seconds']:.0f}s)")
        return {"results": self.results, "summary": summary}


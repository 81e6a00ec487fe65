"""The training state: everything a checkpoint holds to continue a run exactly, and how it is saved.

A checkpoint (``checkpoints/last.pt``) is one dict: ``step``, ``epoch``, ``world_size``, the backbone, every
classifier (with its head's buffers), the optimiser, the schedule, the loader's position (batches the trainer
took, per branch, see :meth:`BranchLoader.state_dict`), the open metrics window, the evaluation results so
far, ``extra`` (any :attr:`TrainingSetup.extra_state` object: grad scaler, EMA, ...), ``rng`` (a list indexed
by rank: python, numpy, torch CPU and CUDA generators) and the resolved recipe. See docs/training.md
("Checkpoints and resume").

Writing order, so that a kill at any moment leaves something usable: ``step-<N>.pt`` (with
``keep_checkpoints``), then ``backbone.pt`` is deleted, ``last.pt`` replaced, ``backbone.pt`` written again
(every write: temporary file, fsync, rename). ``backbone.pt`` is therefore either absent or of the step
``last.pt`` holds; a resumed run writes it again when absent.
"""

from __future__ import annotations

import random
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tface.core import recipe as recipe_mod
from tface.core.classifier import ShardedClassifier
from tface.core.fsutil import atomic_write_bytes, fsync_dir
from tface.core.train import checkpoint
from tface.core.train.errors import TrainingError
from tface.core.train.rundir import RunDir
from tface.core.train.setup import TrainingSetup

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["FORMAT", "RESUME_MAY_CHANGE", "seed_all", "world_size", "rng_state", "set_rng_state", "collect",
           "restore", "rescale_loader", "save", "load_last", "check_resumable", "recipe_differences", "ensure_backbone",
           "export_backbone", "backbone_weights"]

#: Version of the checkpoint layout; a resumed run refuses another.
FORMAT = 1
#: Recipe keys a resumed run may change: they decide how long it runs and what it logs and keeps, not
#: what a step computes. Any other difference would make the continued run differ from an uninterrupted one.
RESUME_MAY_CHANGE = ("output_dir", "train.max_steps", "train.log_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.tensorboard")
LAST, BACKBONE = "last.pt", "backbone.pt"
_STEP_FILE = re.compile(r"step-(\d{8,})\.pt")


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world_size() -> int:
    """The number of training processes (1 without a process group)."""
    return _rank_world()[1]


def _rank_world(setup: TrainingSetup | None = None) -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 without a process group)."""
    if setup is not None and hasattr(setup, "world_size"):
        return int(setup.rank), int(setup.world_size)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# -- random number generators ---------------------------------------------------------------------------------

def rng_state(setup: TrainingSetup) -> dict[str, Any]:
    """This process's generators: python, numpy (whole state), torch CPU, CUDA.

    The data side needs none: DataLoader generators are seeded per pass and workers per batch
    (:mod:`tface.core.data.branches`).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def set_rng_state(setup: TrainingSetup, state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` output."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(obj: Any, world_size: int) -> list[Any]:
    """``obj`` of every rank, indexed by rank (a collective: every rank calls it)."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


# -- collect and restore ---------------------------------------------------------------------------------------

def collect(setup: TrainingSetup, recipe: recipe_mod.Recipe, step: int, epoch: int, *,
            metrics: Mapping[str, Any] | None = None, results: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The checkpoint of ``setup`` after ``step`` steps. Every rank calls it (the RNG states are gathered)."""
    _, world = _rank_world(setup)
    return {
        "format": FORMAT,
        "step": step,
        "epoch": epoch,
        "world_size": world,
        "backbone": setup.backbone.state_dict(),
        # whole centres (gathered from the shards), so a run resumes under any number of processes
        "classifiers": {name: c.whole_state_dict() for name, c in setup.classifiers.items()},
        # the method's other modules (a teacher, an uncertainty head, ...), by name
        "method": {name: m.state_dict() for name, m in setup.method_modules.items()},
        "optimizer": _optimizer_state(setup),
        "centres_optimizer": {name: c.whole_optimizer_state(setup.optimizer)
                              for name, c in setup.classifiers.items() if isinstance(c, ShardedClassifier)},
        "scheduler": setup.scheduler.state_dict(),
        "loader": setup.loader.state_dict(),
        # each rank's open metric window (its own share of the global batch), indexed by rank
        "metrics": _gather(dict(metrics) if metrics is not None else None, world),
        "results": [dict(r) for r in results],
        # other parts of the run with a state (grad scaler, EMA, ...) register in setup.extra_state
        "extra": {name: obj.state_dict() for name, obj in setup.extra_state.items()},
        "rng": _gather(rng_state(setup), world),
        "recipe": recipe_mod.dumps(recipe),
    }


def _optimizer_state(setup: TrainingSetup) -> dict[str, Any]:
    """The optimiser's state without the sharded centres' entries (those are saved whole, per classifier)."""
    out = setup.optimizer.state_dict()
    shard = {id(p) for c in setup.classifiers.values() if isinstance(c, ShardedClassifier) for p in c.parameters()}
    if not shard:
        return out
    index = 0
    drop = set()
    for group in setup.optimizer.param_groups:
        for p in group["params"]:
            if id(p) in shard:
                drop.add(index)
            index += 1
    out["state"] = {k: v for k, v in out["state"].items() if k not in drop}
    return out


def rescale_loader(loader: Mapping[str, Any], saved_world: int, world: int) -> dict[str, Any]:
    """The loader position of ``saved_world`` processes as ``world`` processes see it: the same samples of the
    pass are behind (to within one batch), each process having taken ``saved_world / world`` times the batches."""
    def scale(n: int) -> int:
        return int(n) * saved_world // world

    return {**loader, "position": scale(loader["position"]),
            "branches": [{**b, "batches": scale(b["batches"])} for b in loader["branches"]]}


def restore(setup: TrainingSetup, state: Mapping[str, Any]) -> None:
    """Load a checkpoint into a freshly built ``setup``: the next step is the one the saved run would have taken.

    Saved by another number of processes, the run continues from the same point of the data with the whole
    centres and their optimiser state re-split; it is then not bit-identical to an uninterrupted run (the global
    batch and the random streams differ), which the trainer says.
    """
    rank, world = _rank_world(setup)
    saved_world = int(state["world_size"])
    missing = sorted(set(setup.extra_state) - set(state["extra"]))
    unknown = sorted(set(state["extra"]) - set(setup.extra_state))
    if missing or unknown:
        raise TrainingError("the checkpoint's extra state does not match this run's: "
                            + "; ".join(filter(None, [missing and f"missing {', '.join(missing)}",
                                                      unknown and f"not used here {', '.join(unknown)}"])))
    setup.backbone.load_state_dict(state["backbone"])
    for name, c in setup.classifiers.items():
        try:
            c.load_whole_state_dict(state["classifiers"][name])
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(f"the checkpoint's classifier of branch {name!r} does not fit this run: "
                                f"{str(exc).strip().splitlines()[0]}") from exc
    saved_modules = state.get("method", {})
    if set(saved_modules) != set(setup.method_modules):
        raise TrainingError(f"the checkpoint's method modules ({', '.join(sorted(saved_modules)) or 'none'}) are not "
                            f"this run's ({', '.join(sorted(setup.method_modules)) or 'none'})")
    for name, module in setup.method_modules.items():
        try:
            module.load_state_dict(saved_modules[name])
        except (RuntimeError, ValueError) as exc:
            raise TrainingError(f"the checkpoint's method module {name!r} does not fit this run: "
                                f"{str(exc).strip().splitlines()[0]}") from exc
    setup.optimizer.load_state_dict(state["optimizer"])
    for name, c in setup.classifiers.items():
        if isinstance(c, ShardedClassifier):
            c.load_whole_optimizer_state(setup.optimizer, state.get("centres_optimizer", {}).get(name, {}))
    setup.scheduler.load_state_dict(state["scheduler"])
    loader = state["loader"] if saved_world == world else rescale_loader(state["loader"], saved_world, world)
    try:
        setup.loader.load_state_dict(loader)
    except ValueError as exc:
        raise TrainingError(f"the checkpoint does not fit this run's data: {exc}") from exc
    for name, obj in setup.extra_state.items():
        obj.load_state_dict(state["extra"][name])
    if rank < len(state["rng"]):  # a process the saved run did not have keeps the generators of its seed
        set_rng_state(setup, state["rng"][rank])


# -- files -----------------------------------------------------------------------------------------------------

def backbone_weights(state: Mapping[str, Any]) -> Mapping[str, Any]:
    """The backbone weights of a checkpoint that ``backbone.pt``, evaluation and export use: the EMA's when on."""
    ema = state.get("extra", {}).get("ema")
    return ema["module"] if ema is not None else state["backbone"]


def _step_files(folder: RunDir) -> list[tuple[int, Path]]:
    """The run's own ``step-<N>.pt`` files (listed in its status), oldest first."""
    own = set(folder.status["files"])
    out = []
    for rel in own:
        path = Path(rel)
        m = _STEP_FILE.fullmatch(path.name)
        if m and path.parent.as_posix() == "checkpoints":
            out.append((int(m.group(1)), folder.path / path))
    return sorted(out)


def save(folder: RunDir, state: Mapping[str, Any], keep: int = 0) -> Path:
    """Write the checkpoint (rank 0 only); returns the path of ``last.pt``. See the module doc for the order.

    With ``keep`` > 0 it is also written as ``checkpoints/step-<step>.pt`` and the run's older step files
    beyond the newest ``keep`` are deleted.
    """
    ckpt = folder.path / "checkpoints"
    last, backbone = ckpt / LAST, ckpt / BACKBONE
    data = checkpoint.dumps(dict(state))
    weights = checkpoint.dumps(backbone_weights(state))
    named = ckpt / f"step-{int(state['step']):08d}.pt"
    folder.claim(last, backbone, *([named] if keep else []))
    if keep:
        atomic_write_bytes(named, data)
    if backbone.exists():
        backbone.unlink()
        fsync_dir(ckpt)
    atomic_write_bytes(last, data)
    atomic_write_bytes(backbone, weights)
    if keep:
        old = [path for _, path in _step_files(folder)][:-keep]
        for path in old:
            path.unlink(missing_ok=True)
        folder.release(*old)
    folder.note(checkpoint_step=int(state["step"]))
    return last


def load_last(run_dir: Path, flag: str = "--resume") -> dict[str, Any]:
    """The newest checkpoint of a run folder; a clear error when there is none or it cannot be read."""
    path = run_dir / "checkpoints" / LAST
    if not path.is_file():
        raise TrainingError(f"{flag} {run_dir}: holds no checkpoint ({path.relative_to(run_dir)} is missing: the "
                            "run stopped before its first checkpoint; set train.checkpoint_every to save during "
                            "training); start it again with --overwrite")
    try:
        state = checkpoint.load(path)
    except Exception as exc:  # truncated, not a torch file, pickled objects weights_only refuses
        raise TrainingError(f"{path}: cannot be read as a checkpoint ({type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise TrainingError(f"{path}: not a resumable tface checkpoint (format {found}, expected {FORMAT}; "
                            "checkpoints of older tface versions hold too little to continue exactly)")
    return state


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value
    return out


def recipe_differences(saved: str, recipe: recipe_mod.Recipe) -> list[str]:
    """The keys (with old and new value) where ``recipe`` differs from the saved recipe text, except
    :data:`RESUME_MAY_CHANGE`."""
    old = _flatten(tomllib.loads(saved), "", {})
    new = _flatten(tomllib.loads(recipe_mod.dumps(recipe)), "", {})
    show = lambda v: "(absent)" if v is _ABSENT else recipe_mod.dumps({"v": v})[4:].strip()  # noqa: E731
    out = []
    for key in sorted(set(old) | set(new)):
        if key in RESUME_MAY_CHANGE:
            continue
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            out.append(f"{key} ({show(a)} -> {show(b)})")
    return out


_ABSENT = object()


def check_resumable(state: Mapping[str, Any], recipe: recipe_mod.Recipe, run_dir: Path, status: str | None,
                    world_size: int = 1) -> None:
    """Refuse (:class:`TrainingError`) to continue ``state`` under ``recipe``, saying why."""
    diffs = recipe_differences(state["recipe"], recipe)
    if diffs:
        raise TrainingError(f"--resume {run_dir}: the recipe differs from the run's in {', '.join(diffs)}; only "
                            f"{', '.join(RESUME_MAY_CHANGE)} may change when resuming")
    step, max_steps = int(state["step"]), recipe.train.max_steps
    if max_steps < step:
        raise TrainingError(f"--resume {run_dir}: train.max_steps = {max_steps} but the checkpoint is at step {step}")
    if status == "done" and max_steps == step:
        raise TrainingError(f"--resume {run_dir}: the run is done (step {step} of train.max_steps = {max_steps}); "
                            "raise train.max_steps to train it further (--set train.max_steps=N)")


def ensure_backbone(folder: RunDir, state: Mapping[str, Any]) -> None:
    """Write ``backbone.pt`` from ``last.pt`` when a kill during a checkpoint left it absent."""
    path = folder.path / "checkpoints" / BACKBONE
    if not path.exists():
        folder.claim(path)
        checkpoint.save(path, backbone_weights(state))


def export_backbone(run_dir: Path, out: Path, step: int | None = None, overwrite: bool = False) -> tuple[Path, int]:
    """Write the backbone ``state_dict`` of a run's last (or ``step``) checkpoint to ``out``; returns (out, step)."""
    ckpt = run_dir / "checkpoints"
    if not run_dir.is_dir():
        raise TrainingError(f"{run_dir}: no such run folder")
    if out.exists() and not overwrite:
        raise TrainingError(f"--out {out}: exists; pass --overwrite to replace it")
    if out.exists() and not out.is_file():
        raise TrainingError(f"--out {out}: exists and is not a file")
    if step is None:
        source = ckpt / LAST
        if not source.is_file():
            raise TrainingError(f"{run_dir}: holds no checkpoint (checkpoints/{LAST} is missing)")
    else:
        source = ckpt / f"step-{step:08d}.pt"
        if not source.is_file():
            steps = sorted(int(m.group(1)) for p in ckpt.glob("step-*.pt") if (m := _STEP_FILE.fullmatch(p.name)))
            last = ckpt / LAST
            if last.is_file():
                steps.append(int(checkpoint.load(last)["step"]))
            have = ", ".join(str(s) for s in sorted(set(steps))) or "none"
            raise TrainingError(f"{run_dir}: no checkpoint of step {step} (steps kept: {have}; "
                                "train.keep_checkpoints keeps more)")
    try:
        state = checkpoint.load(source)
        weights, saved_step = backbone_weights(state), int(state["step"])
    except Exception as exc:
        raise TrainingError(f"{source}: cannot be read as a tface checkpoint ({type(exc).__name__}: {exc})") from exc
    atomic_write_bytes(out, checkpoint.dumps(weights))
    return out, saved_step

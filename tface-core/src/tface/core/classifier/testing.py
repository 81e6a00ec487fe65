"""Check that a head gives the same numbers in every classifier layout: for head authors' test suites.

:func:`check_heads` trains each head for a few steps (float64, plain gradient steps on the centres, a new
batch each step) in four ways and compares them with the single-process local classifier on the same global
batch:

- ``sharded``: ``world_size`` gloo processes, each holding a class range (loss, embedding gradients, centre
  gradients and the head's buffers after every step);
- ``sampled``: the same with Partial FC sampling at rate 1 (every class scored), which must equal sharded;
- ``ddp``: local classifiers on ``world_size`` processes that each see their own rows (DDP's layout): the mean
  of their losses and centre gradients, and their buffers, must equal the single process's.

The processes are started with ``spawn``, so a head factory must be importable (a class, or a
``functools.partial`` of one). Nothing is downloaded; two processes take a few seconds to start.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["check_head", "check_heads", "LAYOUTS"]

LAYOUTS = ("sharded", "sampled", "ddp")
_LR = 0.5


def _batch(step: int, seed: int, n: int, dim: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 7919 + step)
    emb = torch.randn(n, dim, generator=g, dtype=torch.float64) * 3.0
    labels = torch.randint(0, classes, (n,), generator=g)
    labels[: min(n, classes)] = torch.randperm(classes, generator=g)[: min(n, classes)]  # several classes present
    return emb, labels


def _run(make_head: Callable[[], nn.Module], layout: str, *, rank: int, world: int, classes: int, dim: int,
         rows: int, steps: int, seed: int) -> list[dict[str, Any]]:
    """Train for ``steps`` steps in ``layout`` ("local" = one process on the global batch); per-step records."""
    from tface.core.classifier import Classifier, ReduceContext, ShardedClassifier
    from tface.core.classifier.ops import GroupContext

    torch.manual_seed(seed)
    if layout == "local":
        clf: nn.Module = Classifier(classes, dim, make_head(), seed=seed, ctx=ReduceContext())
    elif layout == "ddp":
        clf = Classifier(classes, dim, make_head(), seed=seed, ctx=GroupContext(rows_split=True))
    else:
        clf = ShardedClassifier(classes, dim, make_head(), seed=seed, ctx=GroupContext(rows_split=False),
                                sampled=layout == "sampled", sample_rate=1.0)
    clf = clf.double().train()
    out = []
    for step in range(steps):
        emb, labels = _batch(step, seed, rows * world, dim, classes)  # the global batch
        if layout != "local":
            emb, labels = emb[rank * rows:(rank + 1) * rows], labels[rank * rows:(rank + 1) * rows]
        emb = emb.clone().requires_grad_(True)
        result = clf(emb, labels)
        result.loss.backward()
        centres = clf.sub if layout == "sampled" else clf.weight
        grad = centres.grad.detach().clone()
        emb_grad = emb.grad.detach().clone()
        if layout in ("sharded", "sampled"):
            emb_grad /= clf.grad_scale  # the gather hands back world_size × the gradient (for DDP's averaging)
        buffers = {k: v.detach().clone() for k, v in clf.head.state_dict().items()}
        out.append({"loss": result.loss.detach().clone(), "emb_grad": emb_grad, "centre_grad": grad,
                    "correct": result.correct, "buffers": buffers})
        if layout == "ddp":  # what DDP does before the optimiser step: average the replicas' gradients
            step_grad = grad.clone()
            dist.all_reduce(step_grad)
            step_grad /= world
        else:
            step_grad = grad
        with torch.no_grad():  # sampled at rate 1: ``sub`` holds every row of ``weight`` in order
            clf.weight.sub_(_LR * step_grad)
        centres.grad = None
    return out


def _worker(rank: int, folder: str, world: int, heads: Mapping[str, Callable[[], nn.Module]],
            kwargs: dict[str, Any]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    try:
        results = {name: {layout: _run(make, layout, rank=rank, world=world, **kwargs) for layout in LAYOUTS}
                   for name, make in heads.items()}
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
        dist.barrier()  # nobody leaves while another still exchanges: gloo aborts a process whose peer tears down
    finally:
        dist.destroy_process_group()


def _spawn(heads: Mapping[str, Callable[[], nn.Module]], world: int, kwargs: dict[str, Any],
           timeout: float) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="tface-check-head-") as folder:
        ctx = mp.start_processes(_worker, args=(folder, world, dict(heads), kwargs), nprocs=world, join=False,
                                 start_method="spawn")
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the {world} processes did not finish within {timeout:g} s")
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return [torch.load(Path(folder, f"rank{r}.pt"), weights_only=True) for r in range(world)]


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> str | None:
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    return None if diff <= atol else f"max |difference| {diff:.3g} > {atol:g}"


def _compare(name: str, ref: list[dict[str, Any]], ranks: list[list[dict[str, Any]]], layout: str, classes: int,
             rows: int, k: int, atol: float) -> list[str]:
    from tface.core.classifier.ops import shard_range

    world = len(ranks)
    problems = []
    for step, want in enumerate(ref):
        got = [r[step] for r in ranks]
        where = f"{name}, {layout}, step {step + 1}"
        checks: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        if layout == "ddp":  # each process: the mean over its own rows; DDP averages the processes
            loss = torch.stack([g["loss"] for g in got]).mean()
            centre = torch.stack([g["centre_grad"] for g in got]).mean(0)
            emb = torch.cat([g["emb_grad"] for g in got]) / world
        else:
            loss = got[0]["loss"]
            for r, g in enumerate(got[1:], 1):
                checks.append((f"loss on rank {r}", g["loss"], loss))
            centre = torch.cat([g["centre_grad"] for g in got])
            emb = torch.cat([g["emb_grad"] for g in got])
            for r in range(world):
                lo, hi = shard_range(classes, world, r)
                if got[r]["centre_grad"].shape[0] != (hi - lo) * k:
                    problems.append(f"{where}: rank {r} holds {got[r]['centre_grad'].shape[0]} centres, "
                                    f"expected {(hi - lo) * k}")
        checks += [("loss", loss, want["loss"]), ("embedding gradient", emb, want["emb_grad"]),
                   ("centre gradient", centre, want["centre_grad"])]
        correct = sum(g["correct"] for g in got)
        if correct != want["correct"]:
            problems.append(f"{where}: top-1 hits {correct}, single process {want['correct']}")
        for r, g in enumerate(got):
            for key, value in want["buffers"].items():
                checks.append((f"buffer {key!r} on rank {r}", g["buffers"][key], value))
        for what, a, b in checks:
            problem = _close(a, b, atol)
            if problem:
                problems.append(f"{where}: {what}: {problem}")
    return problems


def check_heads(heads: Mapping[str, Callable[[], nn.Module]], *, num_classes: int = 11, embedding_size: int = 6,
                rows_per_process: int = 5, world_size: int = 2, steps: int = 3, seed: int = 0, atol: float = 1e-5,
                timeout: float = 300.0) -> None:
    """Raise ``AssertionError`` listing every difference between the layouts and the single-process local
    classifier, for each head factory in ``heads`` (see the module doc). One set of processes serves them all.
    """
    kwargs = {"classes": num_classes, "dim": embedding_size, "rows": rows_per_process, "steps": steps, "seed": seed}
    ranks = _spawn(heads, world_size, kwargs, timeout)
    problems = []
    for name, make in heads.items():
        ref = _run(make, "local", rank=0, world=world_size, **kwargs)
        k = int(getattr(make(), "centres_per_class", 1))
        for layout in LAYOUTS:
            problems += _compare(name, ref, [r[name][layout] for r in ranks], layout, num_classes,
                                 rows_per_process, k, atol)
    if problems:
        raise AssertionError("the head differs between classifier layouts:\n" + "\n".join(problems))


def check_head(make_head: Callable[[], nn.Module], **kwargs: Any) -> None:
    """:func:`check_heads` for one head factory (a class or a ``functools.partial``)."""
    name = getattr(make_head, "__name__", None) or getattr(getattr(make_head, "func", None), "__name__", "head")
    check_heads({name: make_head}, **kwargs)


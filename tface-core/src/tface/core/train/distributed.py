"""Distributed data-parallel training: the process group, torch's launcher, rank-0 work, all-reduces, the DDP wrap.

Three modes run the same code:

- one process: no process group; :class:`World` says rank 0 of 1 and every collective is a no-op;
- ``tface run --nproc-per-node N``: :func:`launch` hands the command to ``torch.distributed.run`` (what
  ``torchrun --standalone`` runs), which starts N copies of ``tface run`` on this machine;
- under ``torchrun`` (one or many nodes): :func:`join` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` and ``MASTER_PORT`` from the environment and joins the group.

A process group uses gloo on CPU and NCCL on CUDA unless ``[distributed] backend`` says otherwise. Every
collective tface issues is bounded by ``[distributed] timeout``; a peer that dies or stops answering turns
into :class:`PeerLost` (one clear line) on the others instead of a hang.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs
import torch
import torch.distributed as dist
from torch import nn

from tface.core.recipe import DistributedConfig
from tface.core.train.errors import TrainingError
from tface.core.train.setup import resolve_device

__all__ = ["DistributedError", "PeerLost", "World", "env_ranks", "join", "launch", "wrap",
           "stop_on_sigterm"]

T = TypeVar("T")

#: What torchrun sets for each process; all of them, or none, must be present.
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(TrainingError):
    """A distributed run cannot start or continue as configured (one clear line)."""


class PeerLost(DistributedError):
    """Another process of the run died, failed, or did not answer within the timeout."""


def env_ranks() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment; None when not started by a launcher."""
    present = [k for k in ENV_KEYS if k in os.environ]
    if not present:
        return None
    missing = [k for k in ENV_KEYS if k not in os.environ]
    if missing:
        raise DistributedError(f"the environment sets {', '.join(present)} but not {', '.join(missing)}; start "
                               "distributed runs with torchrun or `tface run --nproc-per-node N`")
    values = {}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        try:
            values[key] = int(os.environ[key])
        except ValueError:
            raise DistributedError(f"environment variable {key} = {os.environ[key]!r} is not an integer") from None
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistributedError(f"environment: RANK = {rank}, WORLD_SIZE = {world}, LOCAL_RANK = {local} do not "
                               "describe a process of a group (0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0)")
    return rank, world, local


def _backend(name: str, device: torch.device) -> str:
    if name == "auto":
        name = "nccl" if device.type == "cuda" else "gloo"
    if name == "nccl" and device.type != "cuda":
        raise DistributedError(f'[distributed] backend = "nccl" needs CUDA devices, but this process trains on '
                               f'{device}; use backend = "gloo" (or "auto")')
    available = dist.is_nccl_available() if name == "nccl" else dist.is_gloo_available()
    if not available:
        raise DistributedError(f"[distributed] backend = {name!r} is not available in this build of torch")
    return name


_COMM_MARKERS = ("gloo", "nccl", "processgroup", "connection", "timed out", "timeout", "socket", "peer", "store")


def _is_comm_error(exc: BaseException) -> bool:
    """Whether ``exc`` came from the process group (gloo and NCCL raise plain RuntimeErrors), not from tface."""
    if isinstance(exc, TrainingError):
        return False
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _COMM_MARKERS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cause(exc: BaseException) -> str:
    """The gist of a communication error: gloo's and NCCL's first sentence, without the source location."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", _first_line(exc))
    return text.split(". ")[0].rstrip(".")


@attrs.define(eq=False)
class World:
    """This process's place in the run: rank, world size, local rank, and the collectives tface issues.

    The default is a single process (no process group), where every collective returns at once.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: "gloo" or "nccl" once a process group is joined; None for a single process
    backend: str | None = None
    timeout: float = DistributedConfig().timeout
    #: where collective tensors live (NCCL needs them on the GPU)
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prepares data, evaluates, and writes the run folder."""
        return self.rank == 0

    @contextlib.contextmanager
    def collective(self, what: str) -> Iterator[None]:
        """Turn a failed collective (dead peer, timeout) inside the block into :class:`PeerLost` naming ``what``."""
        try:
            yield
        except PeerLost:
            raise
        except BaseException as exc:
            if not self.distributed or not _is_comm_error(exc):
                raise
            raise PeerLost(
                f"rank {self.rank} of {self.world_size} lost the other processes during {what}: one of them died, "
                f"failed or did not answer within [distributed] timeout = {self.timeout:g} s (its own output says "
                f"why): {_cause(exc)}") from exc

    def barrier(self, what: str) -> None:
        if self.distributed:
            with self.collective(what):
                dist.barrier()

    def all_reduce_sum(self, values: Sequence[float], what: str = "the metrics all-reduce") -> list[float]:
        """Element-wise sums of ``values`` over every process (float64)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        with self.collective(what):
            dist.all_reduce(t)
        return t.tolist()

    def share(self, fn: Callable[[], T] | None, what: str) -> T:
        """Rank 0 computes ``fn()`` and sends the result (or that it failed) to every rank; others return it.

        A failure on rank 0 is raised there as itself and on the other ranks as :class:`PeerLost`, so nobody
        waits for a message that never comes.
        """
        if not self.distributed:
            assert fn is not None
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            assert fn is not None
            try:
                value = fn()
            except BaseException as exc:
                box[0] = ("failed", f"{type(exc).__name__}: {_first_line(exc)}")
                with contextlib.suppress(Exception), self.collective(what):
                    dist.broadcast_object_list(box, src=0, device=self.device)
                raise
            box[0] = ("ok", value)
        with self.collective(what):
            dist.broadcast_object_list(box, src=0, device=self.device)
        outcome, value = box[0]
        if outcome != "ok":
            raise PeerLost(f"rank 0 failed while {what} ({value}); rank {self.rank} stops too")
        return value

    def main_first(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` on rank 0 first, then on the others (e.g. rank 0 fills a cache the others then read)."""
        if not self.distributed or self.is_main:
            return self.share(fn, what)
        self.share(None, what)
        return fn()

    def close(self) -> None:
        """Leave the process group (safe to call twice)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def join(cfg: DistributedConfig, device_name: str) -> tuple[World, torch.device]:
    """Join the process group the environment describes (torchrun's variables) or stay a single process.

    Returns this process's :class:`World` and training device (``cuda:LOCAL_RANK`` on CUDA).
    """
    ranks = env_ranks()
    if ranks is None:
        return World(timeout=cfg.timeout), resolve_device(device_name)
    rank, world_size, local_rank = ranks
    device = resolve_device(device_name, local_rank)
    backend = _backend(cfg.backend, device)
    if cfg.sync_bn and device.type != "cuda":
        raise DistributedError(
            f"[distributed] sync_bn = true: torch's SyncBatchNorm runs on CUDA devices only, and this run trains "
            f"on {device}; set sync_bn = false (each process then normalises its own batch)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        raise DistributedError("a process group is already initialised in this process; one run per process")
    kwargs: dict[str, Any] = {"device_id": device} if backend == "nccl" else {}
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=cfg.timeout), **kwargs)
    except Exception as exc:
        raise DistributedError(
            f"rank {rank} of {world_size} could not join the process group at {os.environ['MASTER_ADDR']}:"
            f"{os.environ['MASTER_PORT']} within [distributed] timeout = {cfg.timeout:g} s: {_first_line(exc)}"
        ) from exc
    comm_device = device if backend == "nccl" else torch.device("cpu")
    return World(rank, world_size, local_rank, backend, cfg.timeout, comm_device), device


def wrap(setup: Any, world: World, cfg: DistributedConfig, echo: Callable[[str], None]) -> None:
    """Make ``setup`` train data-parallel over ``world``: SyncBN if asked, then one DDP wrap of the forward.

    DDP averages the gradients of everything inside ``setup.train_module``: the backbone and the
    (replicated) classifiers. Parameters that must stay out of its sync (sharded classifiers) belong outside
    that module. ``setup.sync_context(last)`` skips the all-reduce for all but the last micro-batch of a step.
    The trainer runs each step inside :meth:`World.collective`, which names a lost peer (DDP's forward
    broadcasts buffers, its backward all-reduces gradients).
    ``setup.backbone`` and ``setup.classifiers`` stay the plain modules (evaluation, checkpoints, hooks).
    """
    from torch.nn.parallel import DistributedDataParallel

    from tface.core.train.engine import train_module

    if cfg.sync_bn:
        if not world.distributed:
            echo("note: [distributed] sync_bn has no effect in a single-process run")
        else:  # on CUDA: join() refused it elsewhere
            setup.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(setup.backbone)
            if setup.compiled is not None:  # compile the converted modules (the parameters are the same)
                setup.compiled = torch.compile(setup.backbone)
    if not world.distributed:
        return
    module = train_module(setup)
    ids = [setup.device.index] if setup.device.type == "cuda" else None
    with world.collective("the DDP set-up"):  # DDP checks the shapes and broadcasts rank 0's weights
        ddp = DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None)
    setup.train_module = ddp

    def sync_context(last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else ddp.no_sync()

    setup.sync_context = sync_context


@contextlib.contextmanager
def stop_on_sigterm(world: World) -> Iterator[Callable[[], None]]:
    """In a process group, turn SIGTERM into :class:`PeerLost` so rank 0 records why the run stopped.

    torchrun sends SIGTERM to every process when one of them fails (or when it is itself interrupted). Yields
    ``disarm``: called before the run writes its final status, so a late SIGTERM cannot cut that short.
    """
    armed = [world.distributed and sys.platform != "win32" and threading.current_thread() is threading.main_thread()]

    def handler(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise PeerLost(f"rank {world.rank} of {world.world_size} stopped by SIGTERM (torchrun stops every "
                           "process when one of them fails or when it is interrupted)")

    def disarm() -> None:
        armed[0] = False

    previous = signal.signal(signal.SIGTERM, handler) if armed[0] else None
    try:
        yield disarm
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def launch(nproc_per_node: int, worker_args: Sequence[str]) -> None:
    """Run ``tface <worker_args>`` in ``nproc_per_node`` local processes through ``torch.distributed.run``.

    The same as ``torchrun --standalone --nproc-per-node N --max-restarts 0 -m tface.core.cli ...``: a free
    port, one rendezvous on this machine, and when one process fails torchrun stops the others.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun.get_args_parser().parse_args([
        "--standalone", f"--nproc-per-node={nproc_per_node}", "--max-restarts=0", "--module", "tface.core.cli",
        *worker_args])
    try:
        torchrun.run(args)
    except SignalException as exc:  # torchrun itself was interrupted; it stopped the processes the same way
        if exc.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise DistributedError(f"torchrun received {exc.sigval.name} and stopped every process") from None
    except ChildFailedError as exc:
        parts = []
        for rank, failure in sorted(exc.failures.items()):
            code = failure.exitcode
            if code == -signal.SIGTERM:
                how = "stopped by torchrun with SIGTERM"
            else:
                how = f"signal {failure.signal_name()}" if code < 0 else f"exit status {code}"
            parts.append(f"rank {rank} ({how})")
        raise DistributedError(f"{len(parts)} of {nproc_per_node} processes failed: {', '.join(parts)}; "
                               "their messages are above") from None

"""What a run reports: the metric window behind each ``metrics.jsonl`` line, and the final reports."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tface.core.fsutil import atomic_write_bytes
from tface.core.report import write_plots, write_reports
from tface.core.train.engine import StepResult
from tface.core.train.errors import TrainingError
from tface.core.train.rundir import RunDir

__all__ = ["MetricsWindow", "append_metrics", "metrics_until", "write_final_reports", "memory_mb"]


def memory_mb(device: torch.device | None = None) -> dict[str, float]:
    """Peak memory so far: the process's resident set (``max_rss_mb``) and, on CUDA, the most allocated."""
    out: dict[str, float] = {}
    try:
        import resource
    except ImportError:  # Windows
        pass
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["max_rss_mb"] = round(peak / 2**20 if sys.platform == "darwin" else peak / 2**10, 1)
    if device is not None and device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class MetricsWindow:
    """Losses and top-1 accumulated since the last log line, per branch and in total.

    ``reduce`` sums a list of numbers over the processes of a distributed run (every process calls
    :meth:`record` at the same steps), so the record describes the global batch, not one process's share;
    the peak memory is this process's (rank 0's in ``metrics.jsonl``).
    """

    def __init__(self, names: Sequence[str], device: torch.device | None = None,
                 reduce: Callable[[list[float]], list[float]] | None = None):
        self.names = list(names)
        self.device = device
        self.reduce = reduce
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.branches = {n: [0.0, 0, 0, 0] for n in self.names}  # loss * rows, correct, rows, scored rows
        self.total, self.steps, self.t0 = 0.0, 0, now
        self.skipped, self.grad_norms = 0, []

    def add(self, result: StepResult) -> None:
        if result.skipped:  # its numbers are non-finite; only the count is reported
            self.skipped += 1
            return
        if result.grad_norm is not None:
            self.grad_norms.append(result.grad_norm)
        for n, (branch_loss, correct, seen, scored) in result.branches.items():
            w = self.branches[n]
            w[0] += branch_loss * seen
            w[1] += correct
            w[2] += seen
            w[3] += scored
        self.total += result.loss
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        """The open window (a checkpoint between two log lines), with the seconds it has run so far."""
        return {"branches": {n: list(w) for n, w in self.branches.items()}, "total": self.total,
                "steps": self.steps, "seconds": time.perf_counter() - self.t0, "skipped": self.skipped,
                "grad_norms": list(self.grad_norms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved window: the next line covers the steps before and after the restart."""
        # windows saved before scored rows were counted have three numbers: every row was scored then
        self.branches = {n: [float(w[0]), int(w[1]), int(w[2]), int(w[3] if len(w) > 3 else w[2])]
                         for n, w in state["branches"].items()}
        self.total, self.steps = float(state["total"]), int(state["steps"])
        self.t0 = time.perf_counter() - float(state["seconds"])
        self.skipped, self.grad_norms = int(state["skipped"]), [float(g) for g in state["grad_norms"]]

    def record(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """The ``metrics.jsonl`` line for the window ending at ``step``; starts a new window."""
        flat = [self.total, float(self.steps), *(float(v) for n in self.names for v in self.branches[n])]
        if self.reduce is not None:
            flat = self.reduce(flat)
        now = time.perf_counter()
        total, steps = flat[0], flat[1]
        branches = {n: flat[2 + 4 * i: 6 + 4 * i] for i, n in enumerate(self.names)}
        seen = sum(w[2] for w in branches.values())
        scored = sum(w[3] for w in branches.values())
        record: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "loss": total / steps,
            # top-1 of the classifiers over the rows they scored; absent when no branch has a classifier
            **({"top1": 100.0 * sum(w[1] for w in branches.values()) / scored} if scored else {}),
            "lr": lr,
            "images_per_s": seen / max(now - self.t0, 1e-9),
            **memory_mb(self.device),
        }
        if self.grad_norms:  # the mean norm before clipping
            record["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
        if self.skipped:  # steps dropped under on_nonfinite = "skip" since the last line
            record["skipped_steps"] = self.skipped
        if len(self.names) > 1:
            record["branches"] = {n: {"loss": w[0] / w[2], **({"top1": 100.0 * w[1] / w[3]} if w[3] else {})}
                                  for n, w in branches.items()}
        self._reset(now)
        return record


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def metrics_until(run_dir: Path, step: int) -> None:
    """Keep the ``metrics.jsonl`` lines up to ``step`` (a resumed run writes the later ones again).

    Lines a killed run wrote after its last checkpoint go, and so does a last line cut short by the kill.
    """
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:  # cut short by the kill
                break
            raise TrainingError(f"{path}: line {i + 1} is not JSON; cannot continue the metrics of this run") from None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step:
            break
        kept.append(line if line.endswith("\n") else line + "\n")
    atomic_write_bytes(path, "".join(kept).encode("utf-8"))


def write_final_reports(folder: RunDir, results: list[dict[str, Any]], summary: dict[str, Any],
                        echo: Callable[[str], None]) -> None:
    """``report.json``, ``report.md`` and the ROC/DET plots (when matplotlib is installed)."""
    folder.claim("report.json", "report.md")
    write_reports(folder.path, results, summary)
    plots, note = write_plots(folder.path, results)
    folder.claim(*plots)
    if note:
        echo(note)

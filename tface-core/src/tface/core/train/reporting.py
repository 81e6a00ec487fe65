"""What a run reports: the metric window behind each ``metrics.jsonl`` line, and the final reports."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tface.core.report import write_plots, write_reports
from tface.core.train.engine import StepResult
from tface.core.train.rundir import RunDir

__all__ = ["MetricsWindow", "append_metrics", "write_final_reports"]


class MetricsWindow:
    """Losses and top-1 accumulated since the last log line, per branch and in total."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.branches = {n: [0.0, 0, 0] for n in self.names}  # loss * seen, correct, seen
        self.total, self.steps, self.t0 = 0.0, 0, now
        self.skipped, self.grad_norms = 0, []

    def add(self, result: StepResult) -> None:
        if result.skipped:  # its numbers are non-finite; only the count is reported
            self.skipped += 1
            return
        if result.grad_norm is not None:
            self.grad_norms.append(result.grad_norm)
        for n, (branch_loss, correct, seen) in result.branches.items():
            w = self.branches[n]
            w[0] += branch_loss * seen
            w[1] += correct
            w[2] += seen
        self.total += result.loss
        self.steps += 1

    def record(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """The ``metrics.jsonl`` line for the window ending at ``step``; starts a new window."""
        now = time.perf_counter()
        seen = sum(w[2] for w in self.branches.values())
        record: dict[str, Any] = {
            "step": step,
            "epoch": epoch,
            "loss": self.total / self.steps,
            "top1": 100.0 * sum(w[1] for w in self.branches.values()) / seen,
            "lr": lr,
            "images_per_s": seen / max(now - self.t0, 1e-9),
        }
        if self.grad_norms:  # the mean norm before clipping
            record["grad_norm"] = sum(self.grad_norms) / len(self.grad_norms)
        if self.skipped:  # steps dropped under on_nonfinite = "skip" since the last line
            record["skipped_steps"] = self.skipped
        if len(self.names) > 1:
            record["branches"] = {n: {"loss": w[0] / w[2], "top1": 100.0 * w[1] / w[2]}
                                  for n, w in self.branches.items()}
        self._reset(now)
        return record


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def write_final_reports(folder: RunDir, results: list[dict[str, Any]], summary: dict[str, Any],
                        echo: Callable[[str], None]) -> None:
    """``report.json``, ``report.md`` and the ROC/DET plots (when matplotlib is installed)."""
    folder.claim("report.json", "report.md")
    write_reports(folder.path, results, summary)
    plots, note = write_plots(folder.path, results)
    folder.claim(*plots)
    if note:
        echo(note)

"""TensorBoard event files of a run (``train.tensorboard = true``; needs the ``tensorboard`` extra).

Every ``metrics.jsonl`` line becomes scalars under ``train/`` and every evaluation result under
``eval/<protocol>/<dataset>/``, so TensorBoard shows the same numbers the run folder holds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tface.core.report import metric_columns
from tface.core.train.errors import TrainingError

__all__ = ["TensorBoardLog", "available", "require", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'tface-core[tensorboard]'"
#: the run folder's sub-folder for event files
FOLDER = "tensorboard"


def available() -> bool:
    """Whether ``torch.utils.tensorboard`` can work (it needs the ``tensorboard`` package)."""
    return importlib.util.find_spec("tensorboard") is not None


def require() -> None:
    if not available():
        raise TrainingError(f"train.tensorboard = true needs the tensorboard package: {INSTALL_HINT} "
                            "(or set train.tensorboard = false)")


def _scalars(prefix: str, record: dict[str, Any]) -> Iterable[tuple[str, float]]:
    for key, value in record.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            yield f"{prefix}{key}", float(value)
        elif isinstance(value, dict):
            yield from _scalars(f"{prefix}{key}/", value)


class TensorBoardLog:
    """One ``SummaryWriter`` in ``<run folder>/tensorboard``."""

    def __init__(self, run_dir: Path):
        require()
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run_dir) / FOLDER
        self.writer = SummaryWriter(log_dir=str(self.dir))

    def files(self) -> list[Path]:
        """The event files written so far (for the run folder's list of own files)."""
        return sorted(p for p in self.dir.iterdir() if p.is_file())

    def add_metrics(self, record: dict[str, Any]) -> None:
        """A ``metrics.jsonl`` record: every number under ``train/`` (branches as ``train/branches/<name>/``)."""
        step = int(record["step"])
        for tag, value in _scalars("train/", {k: v for k, v in record.items() if k not in ("step", "epoch")}):
            self.writer.add_scalar(tag, value, step)

    def add_results(self, step: int, results: Sequence[dict[str, Any]]) -> None:
        """Evaluation results: every numeric metric column of the report table, per (protocol, dataset)."""
        columns = metric_columns(results)
        for r in results:
            words = [r.get("protocol"), r.get("dataset")] + [r[c] for c in columns if isinstance(r.get(c), str)]
            name = "/".join(str(w) for w in words if w is not None)
            for col in columns:
                value = r.get(col)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"eval/{name}/{col}", float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()

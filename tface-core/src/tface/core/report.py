"""Evaluation reports: ``report.json`` (machine-readable) and ``report.md`` (a Markdown table)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tface.core.fsutil import atomic_write_bytes

__all__ = ["markdown_table", "write_reports", "metric_columns"]

_KEYS = ("protocol", "dataset", "step")


def metric_columns(results: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in results:
        for k in r:
            if k not in _KEYS and k not in cols and k != "stage":
                cols.append(k)
    return cols


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return "" if v is None else str(v)


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per result; columns ``stage, protocol, dataset, step`` and then every metric."""
    if not results:
        return "_No evaluation results._\n"
    cols = ["stage", *_KEYS, *metric_columns(results)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in results:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_reports(run_dir: str | os.PathLike, results: Sequence[dict[str, Any]],
                  summary: dict[str, Any]) -> tuple[Path, Path]:
    run_dir = Path(run_dir)
    payload = {"results": list(results), "summary": summary}
    js = atomic_write_bytes(run_dir / "report.json", (json.dumps(payload, indent=2) + "\n").encode())
    md_text = "# tface run report\n\n" + markdown_table(results)
    if summary:
        md_text += "\n" + "\n".join(f"- {k}: {_fmt(v)}" for k, v in summary.items()) + "\n"
    md = atomic_write_bytes(run_dir / "report.md", md_text.encode())
    return js, md

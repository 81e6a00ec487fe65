"""``tface compare RUN_DIR...``: several runs' final results in one report (a method against its baseline).

Each run folder's ``report.json`` (written by ``tface run``) gives its results; the evaluation at the last step
is kept and every row is labelled with the run (its folder name, or ``--label``). The report holds TFace's
benchmark table, a per-group table for RFW-style protocols (each group's accuracy, then mean, std and SER, as
fairness papers print them), one results table per protocol, and the ROC / DET (and declared) plots with one
line per run on shared axes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tface.core.fsutil import atomic_write_bytes
from tface.core.outdir import OutputFolder
from tface.core.report import _fmt, benchmark_table, markdown_table, write_plots

__all__ = ["CompareError", "final_results", "group_table", "compare_markdown", "write_comparison"]

#: Protocols whose results are per-group rows plus a summary row (``dataset`` = this name): group, mean, std, SER.
GROUP_SUMMARIES: dict[str, str] = {"rfw": "RFW"}


class CompareError(ValueError):
    """A run folder that cannot be compared (no report, unreadable, no results); names the file."""


def final_results(run_dir: str | os.PathLike, label: str | None = None) -> list[dict[str, Any]]:
    """The results of ``run_dir``'s last evaluated step, each with ``label`` (default: the folder's name)."""
    path = Path(run_dir) / "report.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{path} does not exist: is {run_dir} a finished tface run folder?") from None
    except (OSError, ValueError) as exc:
        raise CompareError(f"{path}: not readable as JSON ({exc})") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise CompareError(f"{path}: no 'results' list")
    steps = [r.get("step") for r in results if isinstance(r.get("step"), int)]
    if not steps:
        raise CompareError(f"{path}: the run has no evaluation results (no [[eval]] tables?)")
    last = max(steps)
    name = label or Path(run_dir).resolve().name
    return [{"label": name, **{k: v for k, v in r.items() if k != "label"}} for r in results if r.get("step") == last]


def group_table(results: Sequence[dict[str, Any]], protocol: str = "rfw") -> str:
    """One row per run: each group's ``accuracy``, then ``mean``, ``std`` and ``ser`` of the summary row.

    ``""`` when no result of ``protocol`` has a summary row.
    """
    summary_name = GROUP_SUMMARIES.get(protocol, protocol.upper())
    rows: dict[str, dict[str, Any]] = {}
    groups: list[str] = []
    for r in results:
        if r.get("protocol") != protocol:
            continue
        row = rows.setdefault(str(r.get("label") or r.get("stage") or "model"), {})
        if r.get("dataset") == summary_name:
            row.update({k: r.get(k) for k in ("mean", "std", "ser")})
        elif isinstance(r.get("accuracy"), (int, float)):
            group = str(r["dataset"])
            if group not in groups:
                groups.append(group)
            row[group] = r["accuracy"]
    if not any("mean" in row for row in rows.values()):
        return ""
    head = [*groups, "mean", "std", "SER"]
    lines = ["| run | " + " | ".join(head) + " |", "|---|" + "|".join("---" for _ in head) + "|"]
    for name, row in rows.items():
        cells = [_fmt(row.get(k)) if row.get(k) is not None else "—" for k in [*groups, "mean", "std", "ser"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare_markdown(results: Sequence[dict[str, Any]], runs: Sequence[str]) -> str:
    """The comparison as Markdown: runs, benchmark table, per-group tables, one results table per protocol."""
    out = ["# tface comparison", "", "Runs (the evaluation at each run's last step):", ""]
    out += [f"- `{r}`" for r in runs]
    bench = benchmark_table(results)
    if bench:
        out += ["", "## Benchmark", "", bench.rstrip()]
    for protocol in GROUP_SUMMARIES:
        table = group_table(results, protocol)
        if table:
            out += ["", f"## {protocol}: per group (accuracy %), mean, std, SER", "", table.rstrip()]
    for protocol in dict.fromkeys(str(r.get("protocol")) for r in results):
        rows = sorted((r for r in results if str(r.get("protocol")) == protocol),
                      key=lambda r: str(r.get("dataset")))
        out += ["", f"## {protocol}", "", markdown_table(rows).rstrip()]
    return "\n".join(out) + "\n"


def write_comparison(out_dir: str | os.PathLike, results: Sequence[dict[str, Any]], runs: Sequence[str], *,
                     overwrite: bool = False) -> tuple[list[Path], str | None]:
    """``compare.md``, ``compare.json`` and the plots into ``out_dir``, built aside and swapped in
    (:class:`~tface.core.outdir.OutputFolder`: a non-empty folder tface did not write is refused)."""
    with OutputFolder(out_dir, overwrite=overwrite) as folder:
        atomic_write_bytes(folder.path / "compare.md", compare_markdown(results, runs).encode())
        payload = {"runs": list(runs), "results": list(results)}
        atomic_write_bytes(folder.path / "compare.json", (json.dumps(payload, indent=1) + "\n").encode())
        plots, note = write_plots(folder.path, results)
    final = Path(out_dir)
    return [final / "compare.md", final / "compare.json", *(final / p.name for p in plots)], note

"""Evaluation reports: ``report.json`` (machine-readable), ``report.md`` (Markdown tables) and plots.

Results are plain dicts (``protocol``, ``dataset``, ``step`` plus metrics). Scalars go into the Markdown
tables; nested values (a result's ``curves``) only into the JSON, where tools can read them, and into the
ROC / DET plots drawn by :func:`write_plots` when matplotlib is installed (the ``plots`` extra).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tface.core.fsutil import atomic_write_bytes

__all__ = [
    "BENCHMARK_METRICS",
    "DATASET_TITLES",
    "benchmark_table",
    "markdown_table",
    "metric_columns",
    "write_plots",
    "write_reports",
]

_KEYS = ("protocol", "dataset", "step")
#: Row labels: who produced the result (``tface eval --label``) and when (the trainer's stage).
_LEAD = ("label", "stage")

#: The metric each protocol contributes to :func:`benchmark_table` (TFace's README: accuracy in % for
#: the ``.bin`` sets, TAR at FAR = 1e-4 for IJB-B/C; the RFW column is the mean over the four groups).
BENCHMARK_METRICS: dict[str, str] = {"verification": "accuracy", "ijb": "tar@far=1e-4", "rfw": "mean"}

#: Column titles as TFace's README spells them, keyed by lower-case dataset name (``-`` read as ``_``);
#: this is also the column order. Other datasets keep their name and follow in order of appearance.
DATASET_TITLES: dict[str, str] = {
    "lfw": "LFW",
    "cfp_fp": "CFP-FP",
    "cplfw": "CPLFW",
    "agedb_30": "AgeDB",
    "agedb": "AgeDB",
    "calfw": "CALFW",
    "cfp_ff": "CFP-FF",
    "vgg2_fp": "VGG2-FP",
    "ijbb": "IJB-B",
    "ijb_b": "IJB-B",
    "ijbc": "IJB-C",
    "ijb_c": "IJB-C",
    "rfw": "RFW",
}


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def metric_columns(results: Sequence[dict[str, Any]]) -> list[str]:
    """Metric names in order of first appearance; nested values (``curves``) are left to the JSON."""
    cols: list[str] = []
    for r in results:
        for k, v in r.items():
            if k not in _KEYS and k not in _LEAD and k not in cols and _is_scalar(v):
                cols.append(k)
    return cols


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.3g}"
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"
    return "" if v is None else str(v)


def markdown_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per result; columns ``label`` and ``stage`` (where any result has them), ``protocol,
    dataset, step`` and then every scalar metric."""
    if not results:
        return "_No evaluation results._\n"
    lead = [k for k in _LEAD if any(k in r for r in results)]
    cols = [*lead, *_KEYS, *metric_columns(results)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in results:
        lines.append("| " + " | ".join(_fmt(r.get(c)) if _is_scalar(r.get(c)) else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _json_bytes(payload: Any) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()


def write_reports(run_dir: str | os.PathLike, results: Sequence[dict[str, Any]],
                  summary: dict[str, Any]) -> tuple[Path, Path]:
    """``report.json`` (everything, curves included) and ``report.md`` (the table and the summary)."""
    run_dir = Path(run_dir)
    payload = {"results": list(results), "summary": summary}
    js = atomic_write_bytes(run_dir / "report.json", _json_bytes(payload))
    md_text = "# tface run report\n\n" + markdown_table(results)
    if summary:
        md_text += "\n" + "\n".join(f"- {k}: {_fmt(v)}" for k, v in summary.items()) + "\n"
    md = atomic_write_bytes(run_dir / "report.md", md_text.encode())
    return js, md


# --- the benchmark table ---------------------------------------------------------------------------------


def _title(dataset: str) -> str:
    return DATASET_TITLES.get(dataset.lower().replace("-", "_"), dataset)


def _row_key(r: Mapping[str, Any]) -> str:
    return str(r.get("label") or r.get("stage") or "model")


def benchmark_table(results: Sequence[dict[str, Any]],
                    metric_per_protocol: Mapping[str, str] | None = None) -> str:
    """TFace's README table: one row per model (``label``, else ``stage``), one column per dataset.

    Each protocol contributes one metric (``metric_per_protocol``, default :data:`BENCHMARK_METRICS`:
    verification → ``accuracy``, IJB → ``tar@far=1e-4``, RFW → ``mean``); results of other protocols, or
    without that metric (RFW's per-group rows), are left out. A model evaluated at several steps gets one row
    per step (``"label @ step"``); a repeated (row, dataset) keeps the last value. Values have two decimals,
    as in TFace's table; a missing cell is ``—``. Returns ``""`` when no result qualifies.
    """
    metrics = BENCHMARK_METRICS if metric_per_protocol is None else metric_per_protocol
    chosen = [r for r in results if r.get("protocol") in metrics and _is_number(r.get(metrics[r["protocol"]]))]
    if not chosen:
        return ""
    steps: dict[str, list[Any]] = {}
    for r in chosen:
        steps.setdefault(_row_key(r), [])
        if r.get("step") not in steps[_row_key(r)]:
            steps[_row_key(r)].append(r.get("step"))
    rows: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for r in chosen:
        key = _row_key(r)
        row = f"{key} @ {r.get('step')}" if len(steps[key]) > 1 else key
        title = _title(str(r.get("dataset")))
        if title not in columns:
            columns.append(title)
        rows.setdefault(row, {})[title] = float(r[metrics[r["protocol"]]])
    order = list(dict.fromkeys(DATASET_TITLES.values()))
    seen = {c: i for i, c in enumerate(columns)}
    columns.sort(key=lambda c: (order.index(c), 0) if c in order else (len(order), seen[c]))
    lines = ["| Model | " + " | ".join(columns) + " |", "|---|" + "|".join("---" for _ in columns) + "|"]
    for row, values in rows.items():
        cells = [f"{values[c]:.2f}" if c in values else "—" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# --- ROC / DET plots --------------------------------------------------------------------------------------

#: The note :func:`write_plots` returns when matplotlib cannot be imported.
NO_MATPLOTLIB = "plots skipped: matplotlib is not installed (pip install 'tface-core[plots]')"


def _load_matplotlib() -> tuple[Any, Any] | None:
    """``(Figure, FigureCanvasAgg)``, or None without matplotlib.

    The object-oriented API with the Agg canvas never touches pyplot's global backend, so plotting works
    on a machine without a display and leaves an interactive session's backend alone.
    """
    try:
        import matplotlib  # noqa: F401 - a missing package fails here, before the submodules
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "set"


def _curve(r: Mapping[str, Any]) -> tuple[list[float], list[float]] | None:
    roc = r.get("curves", {}).get("roc") if isinstance(r.get("curves"), Mapping) else None
    if not isinstance(roc, Mapping):
        return None
    fpr, tpr = roc.get("fpr"), roc.get("tpr")
    if not isinstance(fpr, Sequence) or not isinstance(tpr, Sequence) or len(fpr) != len(tpr) or not fpr:
        return None
    return [float(v) for v in fpr], [float(v) for v in tpr]


def _save_png(fig: Any, canvas_cls: Any, path: Path) -> Path:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def write_plots(run_dir: str | os.PathLike, results: Sequence[dict[str, Any]]) -> tuple[list[Path], str | None]:
    """Draw ``roc-<protocol>-<dataset>.png`` and ``det-<protocol>-<dataset>.png`` into ``run_dir``.

    Every result with ``"curves": {"roc": {"fpr": [...], "tpr": [...]}}`` is one line, labelled with its
    ``label``/``stage``, ``mode`` (if any) and step; results of one (protocol, dataset) share a figure, so an
    untrained and a trained model, or two checkpoints, are compared on the same axes. ROC: TPR over FPR on a
    log axis; DET: FNMR (1 − TPR) over FMR (FPR), both log. Points a log axis cannot show (zeros) are dropped.

    Returns the PNG paths and a note: ``None``, or a one-line reason when nothing could be drawn because
    matplotlib is missing (then nothing is written and nothing is raised).
    """
    groups: dict[tuple[str, str], list[tuple[str, list[float], list[float]]]] = {}
    for r in results:
        curve = _curve(r)
        if curve is None:
            continue
        name = _row_key(r) + (f" {r['mode']}" if isinstance(r.get("mode"), str) else "")  # e.g. IJB's modes
        if r.get("step") is not None:
            name += f" (step {r.get('step')})"
        groups.setdefault((str(r.get("protocol")), str(r.get("dataset"))), []).append((name, *curve))
    if not groups:
        return [], None
    mpl = _load_matplotlib()
    if mpl is None:
        return [], NO_MATPLOTLIB
    figure_cls, canvas_cls = mpl
    run_dir = Path(run_dir)
    written: list[Path] = []
    for (protocol, dataset), curves in groups.items():
        stem = f"{_slug(protocol)}-{_slug(dataset)}"
        for kind in ("roc", "det"):
            fig = figure_cls(figsize=(5.0, 4.0), dpi=100)
            ax = fig.add_subplot()
            drawn = 0
            for name, fpr, tpr in curves:
                if kind == "roc":
                    pts = [(f, t) for f, t in zip(fpr, tpr) if f > 0 and math.isfinite(f) and math.isfinite(t)]
                else:
                    pts = [(f, 1.0 - t) for f, t in zip(fpr, tpr) if f > 0 and 1.0 - t > 0]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, ys, label=name, linewidth=1.5, marker="." if len(pts) < 3 else None)
                drawn += 1
            if not drawn:
                continue
            ax.set_xscale("log")
            if kind == "roc":
                ax.set_xlabel("false positive rate (FPR)")
                ax.set_ylabel("true positive rate (TPR)")
                ax.set_title(f"ROC — {protocol} {dataset}")
            else:
                ax.set_yscale("log")
                ax.set_xlabel("false match rate (FMR)")
                ax.set_ylabel("false non-match rate (FNMR)")
                ax.set_title(f"DET — {protocol} {dataset}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
            fig.tight_layout()
            written.append(_save_png(fig, canvas_cls, run_dir / f"{kind}-{stem}.png"))
    return written, None

"""Evaluation reports: ``report.json`` (machine-readable), ``report.md`` (Markdown tables) and plots.

Results are plain dicts (``protocol``, ``dataset``, ``step`` plus metrics). Scalars go into the Markdown
tables; nested values (a result's ``curves``) only into the JSON, where tools can read them, and into the
plots drawn by :func:`write_plots` when matplotlib is installed (the ``plots`` extra): ROC / DET from
``curves.roc``, and any curve that declares its axes (``curves.<kind>.plot``), such as a plugin's.
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

import attrs

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


# --- plots: ROC / DET and declared curves ---------------------------------------------------------------

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


@attrs.define
class _Figure:
    """One PNG: its lines (label, xs, ys) and axes; ROC, DET and every declared curve are drawn the same way."""

    stem: str
    title: str
    xlabel: str
    ylabel: str
    xscale: str = "linear"
    yscale: str = "linear"
    lines: list[tuple[str, list[float], list[float]]] = attrs.field(factory=list)


def _number(v: Any) -> float | None:
    """A finite float, or None for a gap (None, NaN, a non-number)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _declared(curve: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Any], dict[str, list[Any]]] | None:
    """``(plot spec, xs, {series: ys})`` of a curve that declares a ``plot``, or None when it does not or is
    malformed (a report is never lost to a plugin's odd curve; the JSON keeps it whatever its shape)."""
    spec = curve.get("plot")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("x"), str) or not isinstance(spec.get("y"), str):
        return None
    xs, ys = curve.get(spec["x"]), curve.get(spec["y"])
    if not isinstance(xs, Sequence) or isinstance(xs, str):
        return None
    series = dict(ys) if isinstance(ys, Mapping) else {"": ys}
    if not series or any(not isinstance(v, Sequence) or isinstance(v, str) or len(v) != len(xs)
                         for v in series.values()):
        return None
    return spec, list(xs), {str(k): list(v) for k, v in series.items()}


def _figures(results: Sequence[dict[str, Any]]) -> list[_Figure]:
    """Every figure the results call for, lines from several results of one (protocol, dataset) together."""
    figures: dict[tuple[str, str, str], _Figure] = {}

    def figure(kind: str, protocol: str, dataset: str, **axes: str) -> _Figure:
        key = (kind, protocol, dataset)
        if key not in figures:
            figures[key] = _Figure(f"{_slug(kind)}-{_slug(protocol)}-{_slug(dataset)}", **axes)
        return figures[key]

    for r in results:
        name = _row_key(r) + (f" {r['mode']}" if isinstance(r.get("mode"), str) else "")  # e.g. IJB's modes
        if r.get("step") is not None:
            name += f" (step {r.get('step')})"
        protocol, dataset = str(r.get("protocol")), str(r.get("dataset"))
        roc = _curve(r)
        if roc is not None:
            fpr, tpr = roc
            figure("roc", protocol, dataset, title=f"ROC — {protocol} {dataset}", xlabel="false positive rate (FPR)",
                   ylabel="true positive rate (TPR)", xscale="log").lines.append((name, fpr, tpr))
            figure("det", protocol, dataset, title=f"DET — {protocol} {dataset}", xlabel="false match rate (FMR)",
                   ylabel="false non-match rate (FNMR)", xscale="log",
                   yscale="log").lines.append((name, fpr, [1.0 - t for t in tpr]))
        curves = r.get("curves")
        for kind, curve in (curves.items() if isinstance(curves, Mapping) else ()):
            declared = _declared(curve) if isinstance(curve, Mapping) and kind != "roc" else None
            if declared is None:
                continue
            spec, xs, series = declared
            fig = figure(str(kind), protocol, dataset, title=str(spec.get("title") or f"{kind} — {protocol} {dataset}"),
                         xlabel=str(spec.get("xlabel", spec["x"])), ylabel=str(spec.get("ylabel", spec["y"])),
                         xscale="log" if spec.get("xscale") == "log" else "linear",
                         yscale="log" if spec.get("yscale") == "log" else "linear")
            for label, ys in series.items():
                fig.lines.append((" · ".join(t for t in (name, label) if t), xs, ys))
    return list(figures.values())


def _save_png(fig: Any, canvas_cls: Any, path: Path) -> Path:
    canvas_cls(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def _draw(spec: _Figure, figure_cls: Any, canvas_cls: Any, folder: Path) -> Path | None:
    fig = figure_cls(figsize=(5.0, 4.0), dpi=100)
    ax = fig.add_subplot()
    drawn = 0
    for label, xs, ys in spec.lines:
        pts = [(x, y) for x, y in ((_number(a), _number(b)) for a, b in zip(xs, ys)) if x is not None and y is not None
               and (spec.xscale != "log" or x > 0) and (spec.yscale != "log" or y > 0)]
        if not pts:
            continue
        px, py = zip(*pts)
        ax.plot(px, py, label=label, linewidth=1.5, marker="." if len(pts) < 3 else None)
        drawn += 1
    if not drawn:
        return None
    ax.set_xscale(spec.xscale)
    ax.set_yscale(spec.yscale)
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    ax.set_title(spec.title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save_png(fig, canvas_cls, folder / f"{spec.stem}.png")


def write_plots(run_dir: str | os.PathLike, results: Sequence[dict[str, Any]]) -> tuple[list[Path], str | None]:
    """Draw the results' curves into ``run_dir``: ``<kind>-<protocol>-<dataset>.png``.

    * ``"curves": {"roc": {"fpr": [...], "tpr": [...]}}`` gives ``roc-…`` (TPR over FPR, log x) and ``det-…``
      (FNMR = 1 − TPR over FMR, both log).
    * Any other curve that declares how to draw it, ``"plot": {"x": KEY, "y": KEY}`` naming two of its own
      entries, gives ``<kind>-…``: ``curve[x]`` is the x values, ``curve[y]`` one list of y values or a dict
      ``series name → list`` (one line each). Optional ``xlabel``, ``ylabel``, ``title``, ``xscale`` and
      ``yscale`` (``"log"``). This is how a plugin protocol (tface-quality's ``evrc``) gets its plots into the
      run folder without knowing where that is. ``None`` values are gaps.

    Results of one (protocol, dataset) share each figure, one line per result (and series), labelled with
    its ``label``/``stage``, ``mode`` (if any) and step, so an untrained and a trained model, or two
    checkpoints, are compared on the same axes. Points a log axis cannot show (zeros) are dropped.

    Returns the PNG paths and a note: ``None``, or a one-line reason when nothing could be drawn because
    matplotlib is missing (then nothing is written and nothing is raised).
    """
    figures = _figures(results)
    if not figures:
        return [], None
    mpl = _load_matplotlib()
    if mpl is None:
        return [], NO_MATPLOTLIB
    figure_cls, canvas_cls = mpl
    folder = Path(run_dir)
    return [p for spec in figures if (p := _draw(spec, figure_cls, canvas_cls, folder)) is not None], None

"""Reports: Markdown tables without curves, TFace's benchmark table, ROC/DET plots with and without matplotlib."""

from __future__ import annotations

import json
import sys

import pytest

from tface.core import report
from tface.core.report import NO_MATPLOTLIB, benchmark_table, markdown_table, write_plots, write_reports

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def roc(fpr, tpr):
    return {"roc": {"fpr": list(fpr), "tpr": list(tpr)}}


FPR = [0.0, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0]
TPR = [0.0, 0.5, 0.8, 0.9, 0.97, 0.995, 1.0]


def test_markdown_table_keeps_curves_out_and_the_trainer_layout():
    results = [
        {"stage": "trained", "protocol": "verification", "dataset": "lfw", "step": 30, "accuracy": 99.5,
         "curves": roc(FPR, TPR), "pairs": 6000},
    ]
    assert markdown_table(results) == (
        "| stage | protocol | dataset | step | accuracy | pairs |\n"
        "|---|---|---|---|---|---|\n"
        "| trained | verification | lfw | 30 | 99.5000 | 6000 |\n"
    )
    labelled = [{"label": "ir50", "protocol": "toy", "dataset": "t", "step": 0, "score": 1.0}]
    assert markdown_table(labelled).splitlines()[0] == "| label | protocol | dataset | step | score |"
    assert markdown_table([]) == "_No evaluation results._\n"


def test_write_reports_keeps_curves_in_json_only(tmp_path):
    results = [{"stage": "trained", "protocol": "verification", "dataset": "lfw", "step": 3, "accuracy": 90.0,
                "curves": roc(FPR, TPR)}]
    js, md = write_reports(tmp_path, results, {"steps": 3})
    assert json.loads(js.read_text())["results"][0]["curves"]["roc"]["tpr"] == TPR
    text = md.read_text()
    assert "curves" not in text and "fpr" not in text
    assert "| trained | verification | lfw | 3 | 90.0000 |" in text and "- steps: 3" in text


def results_for_two_models():
    rows = []
    for label, acc in (("IR_50 ArcFace", 99.8), ("MobileFaceNet ArcFace", 99.52)):
        rows += [
            {"label": label, "protocol": "verification", "dataset": "cfp_fp", "step": 0, "accuracy": acc - 2},
            {"label": label, "protocol": "verification", "dataset": "lfw", "step": 0, "accuracy": acc},
            {"label": label, "protocol": "verification", "dataset": "synth-val", "step": 0, "accuracy": 80.0},
            {"label": label, "protocol": "rfw", "dataset": "African", "step": 0, "accuracy": 93.0},
            {"label": label, "protocol": "rfw", "dataset": "RFW", "step": 0, "mean": 94.645, "std": 1.1},
            {"label": label, "protocol": "toy", "dataset": "t", "step": 0, "score": 1.0},
        ]
    rows.append({"label": "IR_50 ArcFace", "protocol": "ijb", "dataset": "IJBC", "step": 0,
                 "tar@far=1e-4": 95.16, "tar@far=1e-5": 90.0})
    return rows


def test_benchmark_table_has_tfaces_shape():
    assert benchmark_table(results_for_two_models()) == (
        "| Model | LFW | CFP-FP | IJB-C | RFW | synth-val |\n"
        "|---|---|---|---|---|---|\n"
        "| IR_50 ArcFace | 99.80 | 97.80 | 95.16 | 94.64 | 80.00 |\n"
        "| MobileFaceNet ArcFace | 99.52 | 97.52 | — | 94.64 | 80.00 |\n"
    )


def test_benchmark_table_metric_choice_rows_per_step_and_empty():
    only_ijb = benchmark_table(results_for_two_models(), metric_per_protocol={"ijb": "tar@far=1e-5"})
    assert only_ijb == "| Model | IJB-C |\n|---|---|\n| IR_50 ArcFace | 90.00 |\n"
    trainer = [
        {"stage": "untrained", "protocol": "verification", "dataset": "lfw", "step": 0, "accuracy": 50.0},
        {"stage": "train", "protocol": "verification", "dataset": "lfw", "step": 100, "accuracy": 80.0},
        {"stage": "train", "protocol": "verification", "dataset": "lfw", "step": 200, "accuracy": 85.0},
        {"stage": "trained", "protocol": "verification", "dataset": "lfw", "step": 300, "accuracy": 90.125},
    ]
    assert benchmark_table(trainer).splitlines()[2:] == [
        "| untrained | 50.00 |", "| train @ 100 | 80.00 |", "| train @ 200 | 85.00 |", "| trained | 90.12 |"]
    assert benchmark_table([{"protocol": "toy", "dataset": "t", "step": 0, "score": 1.0}]) == ""
    assert benchmark_table([]) == ""


def test_write_plots_draws_roc_and_det_per_set(tmp_path):
    pytest.importorskip("matplotlib")
    results = [
        {"stage": "untrained", "protocol": "verification", "dataset": "lfw", "step": 0,
         "curves": roc([0.0, 0.2, 0.6, 1.0], [0.0, 0.3, 0.7, 1.0])},
        {"stage": "trained", "protocol": "verification", "dataset": "lfw", "step": 30, "curves": roc(FPR, TPR)},
        {"stage": "trained", "protocol": "verification", "dataset": "agedb 30/x", "step": 30,
         "curves": roc(FPR, TPR)},
        {"stage": "trained", "protocol": "toy", "dataset": "t", "step": 30, "score": 1.0},
    ]
    paths, note = write_plots(tmp_path, results)
    assert note is None
    assert sorted(p.name for p in paths) == [
        "det-verification-agedb_30_x.png", "det-verification-lfw.png",
        "roc-verification-agedb_30_x.png", "roc-verification-lfw.png",
    ]
    for p in paths:
        assert p.parent == tmp_path and p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 1000
    assert not list(tmp_path.glob("*.tmp"))
    assert write_plots(tmp_path / "none", [{"protocol": "toy", "dataset": "t", "step": 0}]) == ([], None)


def test_write_plots_draws_declared_curves_one_figure_per_kind_and_set(tmp_path):
    """A plugin's curve with a ``plot`` spec becomes ``<kind>-<protocol>-<dataset>.png``; the lines of two models
    share one figure; a malformed spec or a curve without one draws nothing and breaks nothing."""
    pytest.importorskip("matplotlib")

    def evrc(fnmr_a, fnmr_b):
        return {"evrc": {"ratios": [0.0, 0.5, 0.9], "fnmr": {"1e-2": fnmr_a, "1e-3": fnmr_b},
                         "plot": {"x": "ratios", "y": "fnmr", "xlabel": "ratio", "ylabel": "FNMR", "yscale": "log"}}}

    results = [
        {"stage": "untrained", "protocol": "evrc", "dataset": "val", "step": 0, "curves": evrc([0.5, 0.4, None],
                                                                                                 [0.6, 0.5, 0.0])},
        {"stage": "trained", "protocol": "evrc", "dataset": "val", "step": 9, "curves": evrc([0.2, 0.1, 0.05],
                                                                                              [0.3, 0.2, 0.1])},
        {"protocol": "toy", "dataset": "a", "step": 0,
         "curves": {"odd": {"x": [1, 2], "plot": {"x": "x", "y": "nope"}}}},
        {"protocol": "toy", "dataset": "b", "step": 0, "curves": {"odd": {"x": [1, 2], "y": [1], "plot": {"x": "x",
                                                                                                          "y": "y"}}}},
        {"protocol": "toy", "dataset": "c", "step": 0, "curves": {"plain": {"x": [1, 2], "y": [3, 4]}}},
        {"protocol": "toy", "dataset": "d", "step": 0, "curves": {"line": {"x": [1, 2], "y": [3, 4],
                                                                           "plot": {"x": "x", "y": "y"}}}},
    ]
    figures = report._figures(results)
    by_stem = {f.stem: f for f in figures}
    assert sorted(by_stem) == ["evrc-evrc-val", "line-toy-d"]
    fig = by_stem["evrc-evrc-val"]
    assert (fig.xlabel, fig.ylabel, fig.xscale, fig.yscale) == ("ratio", "FNMR", "linear", "log")
    assert [label for label, _, _ in fig.lines] == [
        "untrained (step 0) · 1e-2", "untrained (step 0) · 1e-3", "trained (step 9) · 1e-2", "trained (step 9) · 1e-3"]
    assert fig.lines[0][2] == [0.5, 0.4, None]
    assert by_stem["line-toy-d"].lines == [("model (step 0)", [1, 2], [3, 4])]
    paths, note = write_plots(tmp_path, results)
    assert note is None
    assert sorted(p.name for p in paths) == ["evrc-evrc-val.png", "line-toy-d.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_write_plots_without_matplotlib_is_a_note(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # "import matplotlib" now raises ImportError
    assert report._load_matplotlib() is None
    results = [{"protocol": "verification", "dataset": "lfw", "step": 0, "curves": roc(FPR, TPR)}]
    assert write_plots(tmp_path, results) == ([], NO_MATPLOTLIB)
    assert list(tmp_path.iterdir()) == []
    assert "tface-core[plots]" in NO_MATPLOTLIB

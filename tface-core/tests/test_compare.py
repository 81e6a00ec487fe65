"""``tface compare``: two runs' last evaluations in one report, RFW-style per-group rows pivoted into one line per
run, and the output folder's safety rules."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tface.core.cli import cli
from tface.core.compare import compare_markdown, final_results, group_table


def rfw_rows(step: int, accs: list[float], mean: float, std: float, ser: float) -> list[dict]:
    rows = [{"stage": "trained", "protocol": "rfw", "dataset": g, "step": step, "accuracy": a, "pairs": 100}
            for g, a in zip("ABCD", accs)]
    return rows + [{"stage": "trained", "protocol": "rfw", "dataset": "RFW", "step": step, "mean": mean, "std": std,
                    "ser": ser}]


def write_run(folder, results):
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"results": results, "summary": {}}))
    return folder


@pytest.fixture
def runs(tmp_path):
    roc = {"roc": {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.8, 1.0]}}
    early = [{"stage": "untrained", "protocol": "verification", "dataset": "synthface-val", "step": 0,
              "accuracy": 55.0, "curves": roc}]
    arc = write_run(tmp_path / "arcface", early + rfw_rows(800, [95.0, 92.0, 90.0, 85.0], 90.5, 4.2, 3.0) + [
        {"stage": "trained", "protocol": "verification", "dataset": "synthface-val", "step": 800, "accuracy": 93.25,
         "curves": roc}])
    cifp = write_run(tmp_path / "cifp", early + rfw_rows(800, [95.5, 93.0, 91.0, 88.0], 91.875, 3.1, 2.67) + [
        {"stage": "trained", "protocol": "verification", "dataset": "synthface-val", "step": 800, "accuracy": 93.5,
         "curves": roc}])
    return arc, cifp


def test_final_results_keep_the_last_step_and_label_the_run(runs):
    arc, _ = runs
    rows = final_results(arc)
    assert {r["step"] for r in rows} == {800} and len(rows) == 6
    assert {r["label"] for r in rows} == {"arcface"}
    assert {r["label"] for r in final_results(arc, "ArcFace m=0.1")} == {"ArcFace m=0.1"}


def test_group_table_pivots_groups_with_mean_std_ser(runs):
    rows = [r for d in runs for r in final_results(d)]
    assert group_table(rows) == (
        "| run | A | B | C | D | mean | std | SER |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| arcface | 95.0000 | 92.0000 | 90.0000 | 85.0000 | 90.5000 | 4.2000 | 3.0000 |\n"
        "| cifp | 95.5000 | 93.0000 | 91.0000 | 88.0000 | 91.8750 | 3.1000 | 2.6700 |\n")
    assert group_table([r for r in rows if r["dataset"] != "RFW"]) == ""  # no summary row: no table


def test_cli_prints_and_writes_one_report(runs, tmp_path):
    arc, cifp = runs
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["compare", str(arc), str(cifp), "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "compare.md").read_text()
    assert md == compare_markdown([*final_results(arc), *final_results(cifp)], [str(arc), str(cifp)])
    assert "| arcface | 90.50 | 93.25 |" in md and "| cifp | 91.88 | 93.50 |" in md  # benchmark: RFW mean, val
    assert "## rfw: per group" in md and "| cifp | 95.5000 |" in md
    assert md.strip() in res.output
    data = json.loads((out / "compare.json").read_text())
    assert data["runs"] == [str(arc), str(cifp)] and len(data["results"]) == 12
    pytest.importorskip("matplotlib")
    assert (out / "roc-verification-synthface-val.png").read_bytes()[:4] == b"\x89PNG"
    # a second comparison into the same folder is refused unless --overwrite, which replaces only its files
    (out / "mine.txt").write_text("keep")
    res = CliRunner().invoke(cli, ["compare", str(arc), str(cifp), "--output-dir", str(out)])
    assert res.exit_code != 0 and str(out) in res.output
    res = CliRunner().invoke(cli, ["compare", str(arc), "--label", "A", "--output-dir", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "mine.txt").read_text() == "keep" and "| A |" in (out / "compare.md").read_text()


def test_cli_errors_name_the_problem(runs, tmp_path):
    arc, cifp = runs
    res = CliRunner().invoke(cli, ["compare", str(arc), str(tmp_path / "nope")])
    assert res.exit_code != 0 and "nope/report.json does not exist" in res.output
    res = CliRunner().invoke(cli, ["compare", str(arc), str(cifp), "--label", "x"])
    assert res.exit_code != 0 and "one per RUN_DIR (2), got 1" in res.output
    res = CliRunner().invoke(cli, ["compare", str(arc), str(arc)])
    assert res.exit_code != 0 and "share a row name" in res.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text("{")
    res = CliRunner().invoke(cli, ["compare", str(tmp_path / "bad")])
    assert res.exit_code != 0 and "not readable as JSON" in res.output
    write_run(tmp_path / "empty", [])
    res = CliRunner().invoke(cli, ["compare", str(tmp_path / "empty")])
    assert res.exit_code != 0 and "no evaluation results" in res.output

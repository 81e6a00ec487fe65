"""TensorBoard event files: the same numbers as metrics.jsonl and report.json, listed as the run's own files."""

from __future__ import annotations

import json

import pytest

from conftest import TOY_RECIPE
from tface.core import recipe
from tface.core.train import rundir
from tface.core.train import tensorboard as tb_mod
from tface.core.train.trainer import Trainer, TrainingError


def toy_recipe(tmp_path, overrides=()):
    path = tmp_path / "toy.toml"
    path.write_text(TOY_RECIPE)
    return recipe.load(path, list(overrides))


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_event_files_hold_the_metrics_and_the_evaluations(toy_plugins, tmp_path):
    run_dir = tmp_path / "run"
    Trainer(toy_recipe(tmp_path, ["train.tensorboard=true"]), run_dir, echo=lambda m: None).run()
    scalars = _scalars(run_dir / "tensorboard")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "top1", "lr", "images_per_s", "max_rss_mb"):
        got = scalars[f"train/{key}"]
        assert [s for s, _ in got] == [m["step"] for m in metrics]
        assert [v for _, v in got] == pytest.approx([m[key] for m in metrics], rel=1e-6)  # stored as float32
    report = json.loads((run_dir / "report.json").read_text())
    assert scalars["eval/toy/toy/score"] == [(r["step"], pytest.approx(r["score"])) for r in report["results"]]
    # every event file is the run's own: --overwrite deletes it, and the emptied folder
    listed = json.loads((run_dir / "status.json").read_text())["files"]
    events = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / "tensorboard").iterdir())
    assert events and set(events) <= set(listed)
    rundir.prepare_run_dir(run_dir, overwrite=True)
    assert not (run_dir / "tensorboard").exists()


def test_off_by_default(toy_plugins, tmp_path):
    run_dir = tmp_path / "run"
    Trainer(toy_recipe(tmp_path, ["train.max_steps=5"]), run_dir, echo=lambda m: None).run()
    assert not (run_dir / "tensorboard").exists()


def test_missing_extra_is_a_clear_error_before_the_run_folder(toy_plugins, tmp_path, monkeypatch):
    monkeypatch.setattr(tb_mod, "available", lambda: False)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"train.tensorboard = true needs the tensorboard package: "
                                            r"pip install 'tface-core\[tensorboard\]'"):
        Trainer(toy_recipe(tmp_path, ["train.tensorboard=true"]), run_dir, echo=lambda m: None).run()
    assert not run_dir.exists()


def test_metrics_report_peak_memory(toy_plugins, tmp_path):
    import resource

    run_dir = tmp_path / "run"
    Trainer(toy_recipe(tmp_path, ["train.max_steps=10"]), run_dir, echo=lambda m: None).run()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    peaks = [json.loads(line)["max_rss_mb"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert peaks == sorted(peaks)  # a peak never falls
    assert peaks[0] > 50 and peaks[-1] <= after + 0.1  # torch alone is more than 50 MiB

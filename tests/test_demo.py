"""``plaindet demo`` end to end, at a size that runs in seconds: every stage runs and leaves its files."""

from __future__ import annotations

import json

import plaindet
from plaindet.demo import DemoSettings, run_demo


def test_demo_runs_every_stage_and_writes_its_outputs(tmp_path):
    settings = DemoSettings(train_images=16, val_images=4, test_images=6, epochs=1, batch_size=4, samples_to_draw=2)
    assert run_demo(tmp_path, seed=3, settings=settings) == 0

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_images"] == 6
    assert 0.0 <= summary["AP"] <= 1.0 and summary["wall_time_s"] > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(metrics["AP"] - summary["AP"]) < 1e-12
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
    assert len(list((tmp_path / "predictions").glob("*.png"))) == 2
    # The COCO -> YOLO -> COCO round trip ran on the demo's own folders.
    assert (tmp_path / "data" / "shapes-yolo").is_dir() and (tmp_path / "data" / "shapes-coco").is_dir()
    # The trained model is a standalone checkpoint with the dataset's classes.
    model = plaindet.load(tmp_path / "run" / "best.safetensors")
    assert model.config.class_names == ["circle", "square", "triangle"]
    assert model.config.image_size == settings.eval_size  # predicts at the size the demo evaluated


def test_demo_can_be_run_twice_into_the_same_folder(tmp_path):
    # The conversion step refuses to overwrite user folders; the demo clears its own before converting.
    settings = DemoSettings(train_images=8, val_images=4, test_images=4, epochs=1, batch_size=4, samples_to_draw=1)
    assert run_demo(tmp_path, settings=settings) == 0
    assert run_demo(tmp_path, settings=settings) == 0

"""``plaindet demo`` end to end, at a size that runs in seconds: every stage runs, leaves its files,
and the training it runs learns."""

from __future__ import annotations

import csv
import json

import torch

import plaindet
from plaindet.data import load_dataset
from plaindet.demo import DemoSettings, run_demo
from plaindet.detections import predict_dataset
from plaindet.engine.evaluate import evaluate_coco

# The demo's recipe at toy size: 128 px inputs (windows of 8 patches tile the 8 x 8 grid), 8 training
# images seen 20 times (40 steps, still inside the 100 warmup steps, hence the high peak rate).
# A randomly initialized ViT does not generalize in 40 steps (test-split AP50 stays under 0.02, as
# does an untrained model's), so the test asks what such a run can show: the loss falls and the
# saved model fits the images it was trained on (AP50 on them measured 0.54 to 0.69 over seeds
# 0 to 3 on a Xeon in bf16, 0.23 to 0.63 on an AVX2 EPYC in fp32, seed 3 the lowest on both; an
# untrained model's is at most 0.003). About 15 s on a 2-core CPU.
TOY = DemoSettings(
    train_images=8, val_images=2, test_images=6, epochs=20, batch_size=4, image_size=128, window_size=8, eval_size=128, lr=2e-2, samples_to_draw=2
)


def _ap50(model, dataset) -> float:
    return evaluate_coco(dataset, predict_dataset(model, dataset)).stats["AP50"]


def test_demo_runs_every_stage_writes_its_outputs_and_learns(tmp_path):
    assert run_demo(tmp_path, seed=3, settings=TOY) == 0

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_images"] == 6
    assert 0.0 <= summary["AP"] <= 1.0 and summary["wall_time_s"] > 0
    assert 0.0 <= summary["data_wait"] < 1.0  # the share of the training steps' time spent waiting for batches
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert abs(metrics["AP"] - summary["AP"]) < 1e-12
    assert len(list((tmp_path / "samples").glob("*.png"))) == 2
    assert len(list((tmp_path / "predictions").glob("*.png"))) == 2
    # The COCO -> YOLO -> COCO round trip ran on the demo's own folders.
    assert (tmp_path / "data" / "shapes-yolo").is_dir() and (tmp_path / "data" / "shapes-coco").is_dir()
    # The trained model is a standalone checkpoint with the dataset's classes.
    model = plaindet.load(tmp_path / "run" / "best.safetensors")
    assert model.config.class_names == ["circle", "square", "triangle"]
    assert model.config.image_size == TOY.eval_size  # predicts at the size the demo evaluated
    assert model.config.backbone.window_size == TOY.window_size

    # It learned: the loss of the last quarter of the steps is well below the first quarter's
    # (measured 0.60 to 0.64 of it over seeds 0 to 3) ...
    with open(tmp_path / "run" / "steps.csv", newline="") as f:
        losses = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses) == TOY.epochs * TOY.train_images // TOY.batch_size
    quarter = len(losses) // 4
    assert sum(losses[-quarter:]) < 0.8 * sum(losses[:quarter]), losses
    # ... and the saved model finds the objects of its training images, which a model with the
    # same config and random weights does not.
    train_split = load_dataset(tmp_path / "data" / "shapes", split="train")
    torch.manual_seed(3)
    untrained = model.config.build().eval()
    assert _ap50(untrained, train_split) < 0.02
    assert _ap50(model, train_split) > 0.15


def test_demo_can_be_run_twice_into_the_same_folder(tmp_path):
    # The conversion step refuses to overwrite user folders; the demo clears its own before converting.
    settings = DemoSettings(train_images=8, val_images=4, test_images=4, epochs=1, batch_size=4, samples_to_draw=1)
    assert run_demo(tmp_path, settings=settings) == 0
    assert run_demo(tmp_path, settings=settings) == 0

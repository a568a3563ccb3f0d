"""The command line: train -> predict -> eval on a tiny dataset, ``models``, and bad input (exit code 2)."""

from __future__ import annotations

import csv
import json
import logging
import re

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

import plaindet
from plaindet.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging():
    # The CLI configures logging for its process; keep that from leaking into other tests.
    root, ours = logging.getLogger(), logging.getLogger("plaindet")
    handlers, level = list(root.handlers), ours.level
    yield
    root.handlers[:] = handlers
    ours.setLevel(level)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 2, ``error: ...`` on stderr naming every fragment, and no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "predict", "eval", "models", "data", "demo"):
        assert re.search(rf"^\W*{command}\s", result.output, re.MULTILINE), command


HELP_COMMANDS = [["train"], ["distill"], ["predict"], ["eval"], ["export"], ["benchmark"], ["demo"], ["data", "check"], ["data", "convert"], ["data", "show"], ["data", "audit"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_help_at_80_columns_shows_whole_option_names_defaults_and_descriptions(command):
    from typer.main import get_command

    click_command = get_command(app)
    for name in command:
        click_command = click_command.commands[name]
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.output
    assert max(len(line) for line in text.splitlines()) <= 80 and "\u2026" not in text, text  # nothing cut
    options = text[text.index("Options:") :]
    assert "<list[" not in text and "<bool>" not in options and "[default: (" not in options, options
    words = " ".join(text.split())
    for param in click_command.params:
        if param.param_type_name != "option":
            continue
        assert param.help, f"{param.opts} has no description"
        for opt in [*param.opts, *param.secondary_opts]:
            assert re.search(rf"(^|[\s/,]){re.escape(opt)}([\s/,=]|$)", text, re.MULTILINE), (opt, text)
    if command == ["train"]:
        for help_text, default in [("Passes over the training split.", 12), ("Peak learning rate (AdamW).", 0.001),
                                   ("Global batch (split over torchrun processes).", 8), ("Long side of the training images.", 640)]:  # fmt: skip
            assert f"{help_text} [default: {default}]" in words, words
        assert "--set KEY=VALUE" in text


def test_models_lists_every_model_with_its_size():
    result = invoke("models")
    assert result.exit_code == 0, result.output
    for name in plaindet.list_models():
        assert re.search(rf"{name}\W+\d+\.\dM", result.output), name
    size_b = float(re.search(r"plaindet-b\W+(\d+\.\d)M", result.output)[1])
    assert 80 < size_b < 100
    # GFLOPs at 640 and at the default size, as count_flops counts them
    from plaindet.models.factory import count_flops, model_config

    for name in ("plaindet-t", "detr-r18"):
        row = re.search(rf"{name}\W+[\d.]+M\W+([\d.]+)\W+(\d+)\W+([\d.]+)", result.output)
        config = model_config(name)
        assert float(row[1]) == pytest.approx(count_flops(config, 640) / 1e9, abs=0.05)
        assert int(row[2]) == config.image_size
        assert float(row[3]) == pytest.approx(count_flops(config, config.image_size) / 1e9, abs=0.05)


def test_train_writes_a_loadable_run_with_the_options_given(trained_run):
    assert {"best.safetensors", "last.safetensors", "config.yaml", "metrics.jsonl", "metrics.csv", "steps.jsonl", "plots"} <= {p.name for p in trained_run.iterdir()}
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())
    train_config = saved["train"]
    assert (train_config["epochs"], train_config["batch_size"], train_config["image_size"], train_config["lr"]) == (15, 4, 128, 4e-3)
    assert (train_config["amp"], train_config["seed"], train_config["train_split"], train_config["val_split"]) == ("off", 1, "valid", "valid")
    assert train_config["weight_decay"] == 0.05  # not given: TrainConfig's default
    # --set takes YAML values, mappings included, and they reach the model.
    assert train_config["model_overrides"] == {"backbone": {"depth": 4, "window_size": 8}, "neck_channels": 64}
    assert train_config["augment"] == {"crop": 0.0, "zoom_out": 0.0, "jitter": 0.0, "hflip": 0.0}
    assert (saved["model"]["backbone"]["depth"], saved["model"]["neck_channels"]) == (4, 64)
    model = plaindet.load(trained_run / "best.safetensors")
    assert model.config.class_names == ["circle", "square", "triangle"] and model.config.image_size == 128
    assert (model.config.backbone.depth, model.config.backbone.window_size) == (4, 8)


def test_train_options_reach_train_config(monkeypatch, tmp_path):
    import plaindet.engine.train

    seen = []
    monkeypatch.setattr(plaindet.engine.train, "train", seen.append)
    result = invoke(
        "train", "--model", "plaindet-s", "--data", "shapes", "--epochs", 3, "--out", tmp_path, "--batch-size", 2,
        "--lr", 0.01, "--image-size", 320, "--lora-rank", 8, "--lora-targets", "both", "--backbone-weights",
        "openai/clip-vit-base-patch16", "--amp", "fp16", "--workers", 2, "--seed", 7, "--train-split", "tr",
        "--val-split", "va",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (cfg,) = seen
    assert (cfg.model, cfg.data, cfg.epochs, cfg.out, cfg.batch_size, cfg.lr, cfg.image_size) == (
        "plaindet-s", "shapes", 3, str(tmp_path), 2, 0.01, 320
    )  # fmt: skip
    assert (cfg.lora_rank, cfg.lora_targets, cfg.backbone_weights) == (8, "both", "openai/clip-vit-base-patch16")
    assert (cfg.amp, cfg.workers, cfg.seed, cfg.train_split, cfg.val_split) == ("fp16", 2, 7, "tr", "va")


def test_train_logs_progress_at_info(tiny_shapes, tmp_path, caplog):
    result = invoke(
        "train", "--data", tiny_shapes, "--val-split", "valid", "--epochs", 1, "--batch-size", 8,
        "--image-size", 32, "--amp", "off", "--out", tmp_path / "run",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert any(r.levelno == logging.INFO and "parameters" in r.getMessage() for r in caplog.records)


def test_predict_writes_drawn_images_and_coco_results(trained_run, tiny_shapes, tmp_path):
    valid = tiny_shapes / "valid"
    images = sorted(valid.glob("*.jpg"))
    out = tmp_path / "pred"
    weights = trained_run / "best.safetensors"
    # A folder, then one of its images again: ids follow this order, the repeated name gets its id
    # appended. One image per batch, so each result is computed exactly as model.predict(image) is.
    result = invoke(
        "predict", valid, images[2], "--weights", weights, "--out", out, "--threshold", 0.0, "--image-size", 64,
        "--batch-size", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    entries = json.loads((out / "images.json").read_text())
    assert [e["id"] for e in entries] == list(range(9))
    assert [e["file_name"] for e in entries] == [str(p) for p in images + [images[2]]]
    assert all((e["width"], e["height"]) == (320, 320) for e in entries)
    drawn = sorted(p.name for p in out.glob("*.jpg"))  # JPEG inputs are drawn as JPEG
    assert drawn == sorted([f"{p.stem}.jpg" for p in images] + [f"{images[2].stem}_8.jpg"])
    assert [e["drawn"] for e in entries] == [f"{p.stem}.jpg" for p in images] + [f"{images[2].stem}_8.jpg"]
    assert Image.open(out / drawn[0]).size == (320, 320) and Image.open(out / drawn[0]).format == "JPEG"

    results = json.loads((out / "predictions.json").read_text())
    model = plaindet.load(weights)
    assert len(results) == 9 * model.config.max_detections  # threshold 0: every top-k detection
    assert {r["category_id"] for r in results} <= {1, 2, 3}  # the dataset's ids, not class indices
    by_image = {i: [r for r in results if r["image_id"] == i] for i in range(9)}
    reference = model.predict(images[0], threshold=0.0, image_size=64)
    xywh = np.concatenate([reference.boxes[:, :2], reference.boxes[:, 2:] - reference.boxes[:, :2]], axis=1)
    np.testing.assert_allclose([r["bbox"] for r in by_image[0]], xywh, atol=0.01)
    np.testing.assert_allclose([r["score"] for r in by_image[0]], reference.scores, atol=1e-5)
    assert [r["category_id"] for r in by_image[0]] == [model.config.category_ids[k] for k in reference.labels]
    assert by_image[8] == [dict(r, image_id=8) for r in by_image[2]]


def test_predict_threshold_filters(trained_run, tiny_shapes, tmp_path):
    image = sorted((tiny_shapes / "valid").glob("*.jpg"))[0]
    result = invoke("predict", image, "--weights", trained_run / "last.safetensors", "--out", tmp_path, "--threshold", 1.0)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "predictions.json").read_text()) == []
    assert (tmp_path / f"{image.stem}.jpg").is_file()


def test_eval_with_weights_equals_eval_of_its_predictions(trained_run, tiny_shapes, tmp_path):
    weights = trained_run / "best.safetensors"
    result = invoke(
        "eval", "--weights", weights, "--data", tiny_shapes, "--split", "valid", "--batch-size", 4,
        "--output", tmp_path / "metrics.json", "--save-predictions", tmp_path / "predictions.json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "COCO box metrics" in result.stdout and "predictions on 8 images" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75", "AR100", "per_class"} <= set(metrics)
    assert metrics["num_images"] == 8 and metrics["num_predictions"] == 8 * 100

    again = invoke(
        "eval", "--predictions", tmp_path / "predictions.json", "--data", tiny_shapes, "--split", "valid",
        "--output", tmp_path / "again.json",
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text()) == metrics
    # The model has learned the images it was fitted to (a model that learned nothing scores ~0.001) ...
    assert metrics["AP"] > 0.3 and metrics["AP50"] > 0.5, metrics
    # ... and training's own evaluation of these weights (fp32, at the model's size, through the same
    # prediction path) measured exactly what `plaindet eval --weights` does.
    with open(trained_run / "metrics.csv", newline="") as f:
        record = list(csv.DictReader(f))[-1]
    assert record["epoch"] == "15"
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        if record[key] == "":  # undefined (no ground truth of that size): null in the JSON
            assert metrics[key] is None, key
        else:
            assert metrics[key] == pytest.approx(float(record[key]), abs=1e-9), key


# ------------------------------------------------------------------------------------------------
# Bad input: exit code 2 and a one-line reason, never a traceback


def test_train_bad_input(tmp_path):
    assert_user_error(invoke("train", "--data", tmp_path / "nowhere", "--epochs", 1, "--out", tmp_path / "r"), "nowhere")
    assert_user_error(invoke("train", "--model", "plaindet-x", "--data", "shapes"), "did you mean 'plaindet-t'")
    assert_user_error(invoke("train", "--data", "shapes", "--amp", "fp8"), "amp")
    assert_user_error(invoke("train", "--data", "shapes", "--lora-targets", "head"), "lora_targets")


def test_train_bad_backbone_weights(tiny_shapes, tmp_path):
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"not weights")
    result = invoke(
        "train", "--data", tiny_shapes, "--val-split", "valid", "--backbone-weights", weights,
        "--epochs", 1, "--image-size", 32, "--out", tmp_path / "run",
    )  # fmt: skip
    assert_user_error(result, "clip.safetensors")


def test_predict_bad_input(trained_run, tmp_path):
    weights = trained_run / "last.safetensors"
    image = tmp_path / "ok.png"
    Image.new("RGB", (40, 30)).save(image)
    bad_weights = tmp_path / "bad.safetensors"
    bad_weights.write_bytes(weights.read_bytes()[:1000])
    assert_user_error(invoke("predict", image, "--weights", bad_weights, "--out", tmp_path / "o"), str(bad_weights))
    assert_user_error(invoke("predict", image, "--weights", tmp_path / "none.safetensors", "--out", tmp_path / "o"), "none.safetensors")
    assert_user_error(invoke("predict", tmp_path / "missing.jpg", "--weights", weights, "--out", tmp_path / "o"), "missing.jpg")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(invoke("predict", empty, "--weights", weights, "--out", tmp_path / "o"), "without images")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert_user_error(invoke("predict", broken, "--weights", weights, "--out", tmp_path / "o"), "broken.jpg")


def test_eval_bad_input(trained_run, tiny_shapes, tmp_path, make_coco):
    weights = trained_run / "last.safetensors"
    assert_user_error(invoke("eval", "--data", tiny_shapes, "--split", "valid"), "--weights", "--predictions")
    assert_user_error(
        invoke("eval", "--data", tiny_shapes, "--weights", weights, "--predictions", tmp_path / "p.json"), "not both"
    )
    two_classes = make_coco(
        [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0, "area": 100}],
        [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    )
    assert_user_error(invoke("eval", "--data", two_classes, "--weights", weights), "3 classes", "2")
    assert_user_error(invoke("eval", "--data", tmp_path / "nowhere", "--weights", weights), "nowhere")

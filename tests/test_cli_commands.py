"""The commands and options tests/test_cli.py leaves out: training options (save, resume, limits,
--set, --config), SIGINT, distill, data convert/show/check, export options, ONNX weights in predict
and eval, benchmark, and one way of reporting a user error for every command."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch
import yaml
from typer.main import get_command

import plaindet
from plaindet.cli import app
from plaindet.data import load_dataset
from plaindet.detections import predict_dataset
from plaindet.engine.logs import TIMING_KEYS
from plaindet.engine.train_state import TrainState
from plaindet.models.factory import count_flops, count_parameters, model_config
from plaindet.weights import read_safetensors

from test_cli import _restore_logging, assert_user_error, invoke  # noqa: F401 (an autouse fixture)

# A 2-block plaindet-t at 64 px: four optimizer steps an epoch on the 16 training images, in well under a second.
SMALL_RUN = ("--batch-size", 4, "--image-size", 64, "--amp", "off", "--warmup-steps", 2, "--set", "model_overrides={neck_channels: 32, backbone: {depth: 2}}")


def small_train(tiny_shapes, out, *options):
    return invoke("train", "--data", tiny_shapes, "--val-split", "valid", *SMALL_RUN, "--out", out, *options)


def _steps(run) -> list[dict]:
    """The run's step rows without their wall-clock timings (:data:`~plaindet.engine.logs.TIMING_KEYS`)."""
    rows = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _epochs(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _model_weights(path) -> dict[str, torch.Tensor]:
    state, _ = read_safetensors(path)
    return {k: v for k, v in state.items() if k.startswith(("model.", "optim."))}


# ----------------------------------------------------------------------------------------------------------------------
# train: checkpoints, resume, limits, --set, --config


def test_train_save_every_keeps_epoch_checkpoints_and_resume_path_continues_one(tiny_shapes, tmp_path):
    full = tmp_path / "full"
    result = small_train(tiny_shapes, full, "--epochs", 2, "--eval-every", 0, "--save-every", 1)
    assert result.exit_code == 0, result.output
    assert TrainState(full / "epoch_0001.safetensors").progress["step"] == 4
    assert TrainState(full / "epoch_0002.safetensors").progress["step"] == 8

    # --resume with a checkpoint path (not 'auto'), into another folder: settings come from the
    # checkpoint, so no --data is needed, and the run ends where the uninterrupted one did.
    resumed = tmp_path / "resumed"
    result = invoke("train", "--resume", full / "epoch_0001.safetensors", "--out", resumed)
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in _steps(resumed)] == [5, 6, 7, 8]
    assert _steps(resumed) == _steps(full)[4:]
    a, b = _model_weights(full / "last.safetensors"), _model_weights(resumed / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed / "epoch_0002.safetensors").is_file()  # --save-every came with the checkpoint's settings


def test_train_max_steps_and_time_limit_stop_early_then_evaluate_and_save(tiny_shapes, tmp_path):
    result = small_train(tiny_shapes, tmp_path / "steps", "--epochs", 5, "--max-steps", 3)
    assert result.exit_code == 0, result.output
    assert len(_steps(tmp_path / "steps")) == 3
    assert TrainState(tmp_path / "steps" / "last.safetensors").progress["step"] == 3
    (record,) = _epochs(tmp_path / "steps")  # the cut-short epoch is still evaluated
    assert record["step"] == 3 and "AP" in record

    # A limit of 6 ms is over after the first step (each takes far longer).
    result = small_train(tiny_shapes, tmp_path / "time", "--epochs", 5, "--time-limit", 0.0001)
    assert result.exit_code == 0, result.output
    assert len(_steps(tmp_path / "time")) == 1
    (record,) = _epochs(tmp_path / "time")
    assert record["step"] == 1 and "AP" in record
    assert (tmp_path / "time" / "best.safetensors").is_file()


def test_train_set_and_config_layer_over_the_options(trained_run, monkeypatch, tmp_path):
    import plaindet.engine.train

    seen = []
    monkeypatch.setattr(plaindet.engine.train, "train", seen.append)
    result = invoke(
        "train", "--data", "shapes", "--lr", 0.01, "--set", "lr=0.002", "--set", "scales=[64, 96]",
        "--set", "augment={hflip: 0.0}", "--set", "ema_decay=0", "--out", tmp_path,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cfg = seen.pop()
    assert (cfg.lr, cfg.scales, cfg.augment, cfg.ema_decay) == (0.002, [64, 96], {"hflip": 0.0}, 0.0)  # --set wins

    # A run's config.yaml repeats that run; options given replace its settings, --set replaces both.
    result = invoke("train", "--config", trained_run / "config.yaml", "--epochs", 2, "--out", tmp_path / "again", "--set", "seed=5")
    assert result.exit_code == 0, result.output
    cfg = seen.pop()
    saved = yaml.safe_load((trained_run / "config.yaml").read_text())["train"]
    assert (cfg.epochs, cfg.out, cfg.seed) == (2, str(tmp_path / "again"), 5)
    assert {k: v for k, v in plaindet.config.to_dict(cfg).items() if k not in ("epochs", "out", "seed")} == {
        k: v for k, v in saved.items() if k not in ("epochs", "out", "seed")
    }

    assert_user_error(invoke("train", "--data", "shapes", "--set", "lr"), "--set takes key=value")
    assert_user_error(invoke("train", "--data", "shapes", "--set", "scales=[64"), "not valid YAML")
    assert_user_error(invoke("train", "--data", "shapes", "--set", "lr=fast"), "lr", "fast")
    assert_user_error(invoke("train", "--data", "shapes", "--set", "epoch=3"), "did you mean 'epochs'")
    assert not seen


def test_sigint_saves_exits_130_and_resume_auto_continues(tiny_shapes, tmp_path):
    """The real signal path, in a child process: SIGINT after the first logged step saves
    last.safetensors and exits with 128 + 2; ``--resume auto`` then continues from that step."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "plaindet", "train", "--data", str(tiny_shapes), "--val-split", "valid", "--epochs", "40"]
    cmd += ["--eval-every", "0", "--out", str(out), *map(str, SMALL_RUN)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    steps_csv = out / "steps.csv"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and not (steps_csv.is_file() and len(steps_csv.read_text().splitlines()) >= 2):
        time.sleep(0.1)  # the header and one step
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted: SIGINT" in output and "Traceback" not in output
    done = TrainState(out / "last.safetensors").progress["step"]
    assert 1 <= done < 40 * 4 and len(_steps(out)) == done

    result = invoke("train", "--out", out, "--resume", "auto", "--max-steps", done + 2)
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in _steps(out)] == list(range(1, done + 3))
    assert TrainState(out / "last.safetensors").progress["step"] == done + 2


# ----------------------------------------------------------------------------------------------------------------------
# distill


def test_distill_command_trains_a_student_on_the_teachers_labels(trained_run, tiny_shapes, tmp_path):
    student = tmp_path / "student"
    result = invoke(
        "distill", "--teacher", trained_run / "best.safetensors", "--model", "plaindet-t", "--data", tiny_shapes,
        "--val-split", "valid", "--unlabeled-from-train", 6, "--threshold", 0.3, "--mode", "union", "--epochs", 1,
        *SMALL_RUN, "--out", student,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert re.search(rf"student written to {re.escape(str(student))}; best AP \d\.\d{{3}}  AP50 \d\.\d{{3}}", result.stdout), result.stdout
    assert len(_steps(student)) == 4
    # The student is the model asked for (2 blocks), not a copy of the teacher (4 blocks).
    model = plaindet.load(student / "best.safetensors")
    assert model.config.backbone.depth == 2 and model.config.class_names == ["circle", "square", "triangle"]


def test_distill_command_bad_input(trained_run, tiny_shapes, tmp_path, make_coco):
    teacher = trained_run / "best.safetensors"
    common = ("--data", tiny_shapes, "--val-split", "valid", "--epochs", 1, *SMALL_RUN, "--out", tmp_path / "s")
    assert_user_error(invoke("distill", *common), "needs a teacher")
    assert_user_error(invoke("distill", "--teacher", tmp_path / "none.safetensors", *common), "none.safetensors")
    assert_user_error(invoke("distill", "--teacher", teacher, "--unlabeled", tmp_path / "nowhere", *common), "nowhere", "no such folder")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke("distill", "--teacher", teacher, "--unlabeled", tmp_path / "empty", *common), "empty", "no images")
    assert_user_error(invoke("distill", "--teacher", teacher, "--mode", "soft", *common), "mode")
    two_classes = make_coco(
        [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "iscrowd": 0, "area": 100}],
        [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    )
    result = invoke("distill", "--teacher", teacher, "--data", two_classes, "--epochs", 1, *SMALL_RUN, "--out", tmp_path / "s")
    assert_user_error(result, "teacher's classes", "circle", "cat")
    assert not (tmp_path / "s").exists()  # nothing trained, no run folder


# ----------------------------------------------------------------------------------------------------------------------
# data convert, show, check


def test_data_convert_and_show(tiny_shapes, tmp_path):
    result = invoke("data", "convert", tiny_shapes, "--to", "yolo", tmp_path / "yolo")
    assert result.exit_code == 0, result.output
    assert "train: 16 images" in result.stdout and "val (from valid): 8 images" in result.stdout
    names = yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())["names"]
    assert names == {0: "circle", 1: "square", 2: "triangle"}
    assert len(list((tmp_path / "yolo" / "labels" / "val").glob("*.txt"))) == 8
    converted, original = load_dataset(tmp_path / "yolo", split="val"), load_dataset(tiny_shapes, split="valid")
    assert sum(len(s.boxes) for s in converted) == sum(len(s.boxes) for s in original)
    # Converting into a folder that is not empty is refused.
    assert_user_error(invoke("data", "convert", tiny_shapes, "--to", "yolo", tmp_path / "yolo"), str(tmp_path / "yolo"))
    assert_user_error(invoke("data", "convert", tmp_path / "nowhere", "--to", "coco", tmp_path / "c"), "nowhere")
    assert not (tmp_path / "c").exists()

    result = invoke("data", "show", tmp_path / "yolo", "--out", tmp_path / "show", "--n", 3, "--split", "val", "--seed", 1)
    assert result.exit_code == 0, result.output
    drawn = sorted(p.name for p in (tmp_path / "show").iterdir())
    assert len(drawn) == 4 and "grid.png" in drawn and sum(n.endswith(".jpg") for n in drawn) == 3
    assert_user_error(invoke("data", "show", tmp_path / "nowhere", "--out", tmp_path / "s2"), "nowhere")
    assert_user_error(invoke("data", "show", tmp_path / "yolo", "--out", tmp_path / "s3", "--split", "nosuch"), "nosuch")


def test_data_check_shapes_resolves_the_builtin_set(tmp_path, monkeypatch):
    import plaindet.data.formats
    from plaindet.data.shapes import ensure_shapes

    builtin = ensure_shapes(tmp_path / "builtin", train=4, val=2, test=2)  # the default set has 2,400 images
    calls = []
    monkeypatch.setattr(plaindet.data.formats, "builtin_shapes", lambda **kw: calls.append(kw) or builtin)
    monkeypatch.chdir(tmp_path)  # no file or folder named 'shapes' here

    valid = load_dataset("shapes", split="valid")
    assert len(valid) == 2 and all(builtin in s.image_path.parents for s in valid)
    result = invoke("data", "check", "shapes")
    assert result.exit_code == 0, result.output
    assert re.search(r"splits train, valid, test", result.stdout) and "no errors found" in result.stdout
    assert calls and all(kw == {} for kw in calls)  # the default set: builtin_shapes() with its defaults


# ----------------------------------------------------------------------------------------------------------------------
# export options, and ONNX weights in predict and eval


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory):
    """The trained model exported by ``plaindet export`` with a dynamic batch and opset 18, at its own 128 px."""
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    result = invoke("export", "--weights", trained_run / "best.safetensors", "--out", out, "--dynamic-batch", "--opset", 18)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stdout and "input images uint8 (B, 3, 128, 128)" in result.stdout
    return out


def test_export_dynamic_batch_and_opset(trained_run, onnx_model, tiny_shapes):
    proto = onnx.load(onnx_model)
    assert {o.domain: o.version for o in proto.opset_import}[""] == 18
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 128, 128]
    detector = plaindet.OnnxDetector(onnx_model, threads=1)
    assert detector.batch_size is None and detector.image_size == 128
    images = sorted((tiny_shapes / "valid").glob("*.jpg"))[:3]
    got = detector.predict(images, threshold=0.3, batch_size=3)  # one batch of 3
    expected = plaindet.load(trained_run / "best.safetensors").predict(images, threshold=0.3)
    assert sum(len(d) for d in expected) > 0
    for g, e in zip(got, expected):
        assert len(g) == len(e)
        np.testing.assert_allclose(g.boxes, e.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, e.scores, atol=1e-5)


def test_export_int8_dynamic_writes_next_to_the_weights(trained_run, tmp_path):
    weights = tmp_path / "w.safetensors"
    shutil.copyfile(trained_run / "best.safetensors", weights)
    result = invoke("export", "--weights", weights, "--image-size", 64, "--quantize", "int8-dynamic")
    assert result.exit_code == 0, result.output
    out = tmp_path / "w-int8-dynamic.onnx"
    assert f"wrote {out}" in result.stdout and "int8-dynamic changes the numbers by design" in result.stdout
    proto = onnx.load(out)
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "int8-dynamic"
    assert sum(n.op_type == "MatMulInteger" for n in proto.graph.node) == 4 * 4  # qkv, proj, fc1, fc2 of 4 blocks
    detector = plaindet.OnnxDetector(out)
    assert (detector.batch_size, detector.input_size) == (1, (64, 64))  # a fixed batch by default
    assert len(detector.predict(np.zeros((50, 60, 3), np.uint8), threshold=0.0)) == detector.max_detections


def test_predict_dataset_with_an_onnx_detector_equals_the_pytorch_model(trained_run, onnx_model, tiny_shapes):
    dataset = load_dataset(tiny_shapes, split="valid")
    ours = predict_dataset(plaindet.load(trained_run / "best.safetensors"), dataset)
    theirs = predict_dataset(plaindet.OnnxDetector(onnx_model, threads=1), dataset)
    assert len(ours) == len(theirs) == 8 * 100
    assert [(r["image_id"], r["category_id"]) for r in theirs] == [(r["image_id"], r["category_id"]) for r in ours]
    np.testing.assert_allclose([r["bbox"] for r in theirs], [r["bbox"] for r in ours], atol=1e-3)  # pixels of 320
    np.testing.assert_allclose([r["score"] for r in theirs], [r["score"] for r in ours], atol=1e-5)


def test_eval_with_onnx_weights_measures_what_the_pytorch_model_does(trained_run, onnx_model, tiny_shapes, tmp_path):
    common = ("--data", tiny_shapes, "--split", "valid", "--batch-size", 4)
    result = invoke("eval", "--weights", trained_run / "best.safetensors", "--device", "cpu", *common, "--output", tmp_path / "pt.json")
    assert result.exit_code == 0, result.output
    result = invoke("eval", "--weights", onnx_model, *common, "--output", tmp_path / "onnx.json")
    assert result.exit_code == 0, result.output
    assert "predictions on 8 images" in result.stdout
    pt, ours = (json.loads((tmp_path / name).read_text()) for name in ("pt.json", "onnx.json"))
    assert ours["num_predictions"] == 8 * 100 and ours["AP"] > 0.3
    for key in ("AP", "AP50", "AP75", "AR100"):
        assert ours[key] == pytest.approx(pt[key], abs=1e-6), key


def test_predict_with_onnx_weights_writes_what_the_pytorch_model_does(trained_run, onnx_model, tiny_shapes, tmp_path):
    valid = tiny_shapes / "valid"
    for name, weights in (("pt", trained_run / "best.safetensors"), ("onnx", onnx_model)):
        result = invoke("predict", valid, "--weights", weights, "--out", tmp_path / name, "--threshold", 0.3)
        assert result.exit_code == 0, result.output
    pt, ours = (json.loads((tmp_path / name / "predictions.json").read_text()) for name in ("pt", "onnx"))
    assert len(ours) == len(pt) > 0
    assert [(r["image_id"], r["category_id"]) for r in ours] == [(r["image_id"], r["category_id"]) for r in pt]
    np.testing.assert_allclose([r["bbox"] for r in ours], [r["bbox"] for r in pt], atol=1e-3)
    assert json.loads((tmp_path / "onnx" / "images.json").read_text()) == json.loads((tmp_path / "pt" / "images.json").read_text())
    assert len(list((tmp_path / "onnx").glob("*.jpg"))) == 8


def test_predict_runs_the_batch_size_given(trained_run, tiny_shapes, tmp_path):
    from plaindet.detections import predict_to_folder

    model = plaindet.load(trained_run / "best.safetensors")
    batches = []
    model.register_forward_hook(lambda module, inputs, output: batches.append(len(inputs[0])))
    images = sorted((tiny_shapes / "valid").glob("*.jpg"))
    assert predict_to_folder(model, [*images, *images[:4]], tmp_path, threshold=0.3, batch_size=12)[1] == 12
    assert batches == [12]


# ----------------------------------------------------------------------------------------------------------------------
# benchmark


BACKENDS = [("pytorch", "fp32"), ("pytorch", "bf16"), ("onnxruntime", "fp32"), ("onnxruntime", "int8-dynamic"), ("onnxruntime", "int8-static")]


def test_benchmark_command_measures_every_backend_in_its_own_process(tmp_path):
    keep = tmp_path / "onnx"
    result = invoke("benchmark", "--model", "plaindet-t", "--size", 64, "--runs", 1, "--warmup", 0, "--threads", 1, "--keep-onnx", keep, "--bf16", "on")
    assert result.exit_code == 0, result.output
    assert "measuring plaindet-t ort int8-static" in result.stderr  # progress on stderr, the table on stdout
    title, peak_line, header, *lines, legend = result.stdout.strip().splitlines()
    assert legend.startswith("size MB: onnxruntime rows the .onnx file on disk; pytorch rows the model's weights in memory")
    assert title == "batch 1, 64x64, 1 threads; each row measured in a fresh process"
    peaks = dict(re.findall(r"(fp32|bf16) ([0-9.]+) GFLOP/s", peak_line))
    assert peak_line.startswith("matmul peak in this run:") and set(peaks) == {"fp32", "bf16"}
    assert header.split() == [
        "model", "backend", "precision", "size", "MB", "median", "ms", "p90", "ms", "img/s", "peak", "RSS", "MB", "vs", "first",
        "GFLOPs", "GFLOP/s", "of", "peak", "note",
    ]  # fmt: skip
    rows = [line.split(maxsplit=12) for line in lines]
    assert [(r[0], r[1], r[2]) for r in rows] == [("plaindet-t", *b) for b in BACKENDS]
    size, median, p90, per_s, rss, gflops, achieved = ({b: float(r[i]) for b, r in zip(BACKENDS, rows)} for i in (3, 4, 5, 6, 7, 9, 10))
    assert all(p90[b] == median[b] for b in BACKENDS)  # one run: its median is its p90
    for b in BACKENDS:  # one image per median, which is printed rounded to the ms
        assert 1000 / (median[b] + 0.5) - 0.01 <= per_s[b] <= (1000 / (median[b] - 0.5) if median[b] >= 1 else np.inf) + 0.01, b
        # every row carries the PyTorch model's FLOPs (an ONNX file runs the same graph) and its share of the peak
        assert gflops[b] == pytest.approx(count_flops(model_config("plaindet-t"), 64) / 1e9, abs=0.06), b
        assert achieved[b] == pytest.approx(gflops[b] / (median[b] / 1000), rel=0.6, abs=0.2), b
        share = rows[BACKENDS.index(b)][11]
        if b[1] in peaks:  # int8 has no matmul peak measured: no share
            # From the printed figures, within their rounding: the share to 1%, GFLOP/s to 0.1 (a large
            # error beside an emulated bf16 peak of about 1 GFLOP/s) and the peak to 3 digits.
            peak = float(peaks[b[1]])
            rounding = 0.5 + 100 * 0.05 / peak + 0.01 * 100 * (achieved[b] + 0.05) / peak
            assert abs(float(share.rstrip("%")) - 100 * achieved[b] / peak) <= rounding, (b, share, achieved[b], peak)
        else:
            assert share == "-", b
    assert all(50 < rss[b] < 4000 for b in BACKENDS)  # a whole Python process, in MB
    assert rows[0][8] == "1.00x"
    # Sizes: the weights in memory for PyTorch (the same at either precision), the files for ONNX Runtime.
    weights_mb = 4 * count_parameters(model_config("plaindet-t")) / 2**20  # float32
    assert size[("pytorch", "fp32")] == size[("pytorch", "bf16")] == pytest.approx(weights_mb, rel=0.05)
    for name in ("fp32", "int8-dynamic", "int8-static"):
        assert size[("onnxruntime", name)] == pytest.approx((keep / f"{name}.onnx").stat().st_size / 2**20, abs=0.06)
    assert size[("onnxruntime", "int8-dynamic")] < 0.5 * size[("onnxruntime", "fp32")]
    assert rows[4][12].endswith("random calibration: speed only")


@pytest.mark.parametrize(("bf16", "native", "expected"), [("auto", False, ["fp32"]), ("auto", True, ["fp32", "bf16"]), ("on", False, ["fp32", "bf16"]), ("off", True, ["fp32"])])
def test_benchmark_measures_bf16_only_where_the_cpu_has_it_unless_asked(bf16, native, expected):
    """On a CPU without native bf16 one plaindet-s bf16 row took minutes (emulated products): by
    default those rows are left out, and the log says why."""
    from plaindet.export.benchmark import torch_precisions

    said = []
    assert torch_precisions(bf16, native, said.append) == expected
    assert bool(said) == (bf16 == "auto" and not native)
    assert all("no native bf16" in line and "--bf16 on" in line for line in said)


def test_benchmark_refuses_an_unknown_bf16_setting():
    from plaindet.export.benchmark import torch_precisions

    result = invoke("benchmark", "--model", "plaindet-t", "--bf16", "sometimes")
    assert result.exit_code == 2 and "--bf16 must be auto, on or off" in result.output
    with pytest.raises(ValueError, match="bf16 must be"):
        torch_precisions("sometimes", True, print)


def test_benchmark_table_compares_other_models_at_the_same_precision():
    from plaindet.export.benchmark import BenchmarkRow, format_table

    rows = [
        BenchmarkRow("plaindet-t", "pytorch", "fp32", [0.010, 0.020, 0.030], 2, 300.0, 20.0),
        BenchmarkRow("plaindet-t", "pytorch", "bf16", [0.005], 2, 310.0, 20.0),
        BenchmarkRow("detr-r50", "pytorch", "fp32", [0.080], 2, 600.0, 160.0, "transformers, random init"),
    ]
    lines = format_table(rows, size=64, threads=2).splitlines()
    assert lines[0] == "batch 2, 64x64, 2 threads; each row measured in a fresh process"
    first = lines[2].split()
    assert first[3:9] == ["20.0", "20", "30", "100.00", "300", "1.00x"]  # median 20 ms, p90 30 ms, 2 images / 20 ms
    assert lines[4].split()[3:9] == ["160.0", "80", "80", "25.00", "600", "4.00x"]
    assert lines[5] == ""
    assert lines[7].split() == ["detr-r50", "fp32", "4.00x", "2.00x", "8.00x"]  # latency, peak RSS, size vs plaindet-t fp32
    assert lines[8].startswith("size MB: ")


def test_benchmark_table_of_a_checkpoint_names_it_and_keeps_its_columns(tmp_path):
    """--weights: the model column holds the model's name and the title line the file with its size
    on disk; a name longer than the column widens it for every row instead of shifting one."""
    from plaindet.export.benchmark import BenchmarkRow, format_table

    weights = tmp_path / "best.safetensors"
    weights.write_bytes(b"x" * 2**20)
    long = "plaindet-t-with-a-long-name"
    rows = [BenchmarkRow(long, "pytorch", "fp32", [0.010], 1, 300.0, 20.0), BenchmarkRow(long, "onnxruntime", "int8-static", [0.005], 1, 310.0, 7.0)]
    lines = format_table(rows, size=64, threads=2, weights=weights).splitlines()
    assert lines[1] == f"weights: {weights} (1.0 MB on disk), model {long}"
    assert lines[2].index("backend") == lines[3].index("pytorch") == lines[4].index("onnxruntime") == len(long) + 1
    assert lines[2].index("size MB") + len("size MB") == lines[3].index("20.0") + len("20.0") == lines[4].index(" 7.0") + len(" 7.0")


# ----------------------------------------------------------------------------------------------------------------------
# One way of reporting a user error, for every command


USER_ERRORS = {
    "train": (["train", "--model", "plaindet-x", "--data", "shapes"], "error: unknown model 'plaindet-x'; did you mean 'plaindet-t'?"),
    "distill": (["distill", "--model", "plaindet-x", "--teacher", "t.safetensors", "--data", "shapes"], "error: unknown model 'plaindet-x'; did you mean 'plaindet-t'?"),
    "benchmark": (["benchmark", "--model", "plaindet-x"], "error: unknown model 'plaindet-x'; did you mean 'plaindet-t'?"),
    "predict": (["predict", "{tmp}/a.jpg", "--weights", "{tmp}/none.safetensors", "--out", "{tmp}/o"], "error: {tmp}/none.safetensors"),
    "eval": (["eval", "--data", "{tmp}/nowhere", "--predictions", "{tmp}/p.json"], "error: {tmp}/nowhere: no such file or folder"),
    "export": (["export", "--weights", "{tmp}/none.safetensors"], "error: {tmp}/none.safetensors"),
    "demo": (["demo", "--out", "{tmp}/a.jpg"], "error: {tmp}/a.jpg: not a folder"),
    "data check": (["data", "check", "{tmp}/nowhere"], "error: {tmp}/nowhere: no such file or folder"),
    "data convert": (["data", "convert", "{tmp}/nowhere", "--to", "yolo", "{tmp}/y"], "error: {tmp}/nowhere: no such file or folder"),
    "data show": (["data", "show", "{tmp}/nowhere", "--out", "{tmp}/s"], "error: {tmp}/nowhere: no such file or folder"),
    "data audit": (["data", "audit", "--data", "{tmp}/nowhere", "--predictions", "{tmp}/p.json", "--out", "{tmp}/r"], "error: {tmp}/nowhere: no such file or folder"),
    "serve": (["serve", "--weights", "{tmp}/none.safetensors"], "error: --weights '{tmp}/none.safetensors': {tmp}/none.safetensors does not exist"),
}
NO_USER_INPUT = {"models"}  # takes no argument that could be wrong


def test_every_command_has_a_user_error_case():
    group = get_command(app)
    commands = {name for name, cmd in group.commands.items() if not hasattr(cmd, "commands")}
    commands |= {f"{name} {sub}" for name, cmd in group.commands.items() for sub in getattr(cmd, "commands", {})}
    assert commands == set(USER_ERRORS) | NO_USER_INPUT


@pytest.mark.parametrize("command", sorted(USER_ERRORS))
def test_every_command_reports_a_user_error_one_way(command, tmp_path, make_image):
    make_image(tmp_path / "a.jpg")
    args, message = USER_ERRORS[command]
    result = invoke(*(a.format(tmp=tmp_path) for a in args))
    assert_user_error(result)
    assert result.stderr.startswith(message.format(tmp=tmp_path)), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # one line

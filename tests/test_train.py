"""The training loop: what a run writes, its schedule and parameter groups, and that training learns."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import time

import numpy as np
import pytest
import torch
import yaml

import plaindet
from plaindet.data import load_dataset
from plaindet.engine.train import PRETRAINED_BACKBONE_LR_MULT, lr_factor, param_groups, train
from plaindet.engine.train_config import TrainConfig
from plaindet.errors import CheckpointError
from plaindet.ops.boxes import box_iou
from plaindet.weights import read_safetensors


def test_one_epoch_writes_a_complete_run(tmp_path, tiny_shapes, capsys):
    out = tmp_path / "run"
    epochs = []
    cfg = TrainConfig(
        model="plaindet-t",
        data=str(tiny_shapes),
        val_split="valid",
        out=str(out),
        epochs=1,
        batch_size=4,
        image_size=64,
        amp="off",
        warmup_steps=2,
    )
    best = train(cfg, on_epoch=epochs.append)

    assert sorted(p.name for p in out.iterdir()) == [
        "best.safetensors", "config.yaml", "last.safetensors", "metrics.csv", "metrics.jsonl", "plots", "steps.csv", "steps.jsonl",
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["loss.png", "lr.png", "val_ap.png"]
    printed = capsys.readouterr().out
    assert re.search(r"^epoch 1/1  loss \d+\.\d{4}  AP \d\.\d{3}  AP50 \d\.\d{3}", printed, re.MULTILINE), printed

    run_config = yaml.safe_load((out / "config.yaml").read_text())
    assert run_config["plaindet_version"] == plaindet.__version__ and run_config["seed"] == 0
    assert run_config["train"]["model"] == "plaindet-t" and run_config["train"]["epochs"] == 1
    assert run_config["model"]["class_names"] == ["circle", "square", "triangle"]
    assert run_config["model"]["category_ids"] == [1, 2, 3]  # the dataset's own ids
    assert run_config["model"]["image_size"] == 64

    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["epoch"] == 1 and record["step"] == 4  # 16 images, batches of 4
    assert np.isfinite(record["loss"]) and 0.0 <= record["AP"] <= 1.0
    assert epochs == [record] and best["epoch"] == 1
    # Every step's wall time and its wait for batches; the epoch's share of waiting.
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["data_s"] <= r["step_s"] for r in steps)
    assert record["data_wait"] == pytest.approx(sum(r["data_s"] for r in steps) / sum(r["step_s"] for r in steps), abs=1e-4)

    for name in ("best.safetensors", "last.safetensors"):
        model = plaindet.load(out / name)
        assert model.config.class_names == ["circle", "square", "triangle"]
        assert model.config.image_size == 64

    # best is the deployable file: the evaluated (EMA) weights and the config, as model.save writes
    # them, not a training state; last (the same epoch here) resumes and loads to the same weights.
    best_state, best_meta = read_safetensors(out / "best.safetensors")
    assert best_meta["format"] == "plaindet-detector" and "train_state" not in best_meta
    assert json.loads(best_meta["metrics"])["AP"] == record["AP"]
    deployed = plaindet.load(out / "last.safetensors").state_dict()
    assert best_state.keys() == deployed.keys() and all(torch.equal(best_state[k], deployed[k]) for k in deployed)
    assert (out / "best.safetensors").stat().st_size < 0.3 * (out / "last.safetensors").stat().st_size
    with pytest.raises(CheckpointError, match="--resume needs last.safetensors"):
        train(dataclasses.replace(cfg, resume=str(out / "best.safetensors"), epochs=2))
    val = load_dataset(tiny_shapes, split="valid")
    detections = model.predict(val.samples[0].image_path, threshold=0.0)
    assert len(detections) == model.config.max_detections


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="amp"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="lora_targets"):
        TrainConfig(lora_targets="head")


def test_amp_auto_uses_bf16_only_where_the_device_multiplies_it_natively(monkeypatch):
    """On a CPU without AVX512-BF16 or AMX, bf16 is emulated (1-15 GFLOP/s against fp32's 120-180
    on a 2-core AVX2 EPYC), so ``auto`` trains in fp32 there and in bf16 where the CPU has it; a GPU
    without bf16 gets fp16. Explicit settings are taken as given."""
    from plaindet.engine import train as engine

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert engine.amp_dtype("auto", cpu) is None
    assert engine.amp_dtype("bf16", cpu) is torch.bfloat16 and engine.amp_dtype("off", cpu) is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert engine.amp_dtype("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert engine.amp_dtype("auto", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert engine.amp_dtype("auto", cuda) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        engine.amp_dtype("fp16", cpu)
    assert TrainConfig().amp == "auto"


def test_amp_auto_says_what_it_chose(tmp_path, tiny_shapes, caplog):
    with caplog.at_level("INFO", logger="plaindet"):
        train(_small(tiny_shapes, tmp_path / "run", epochs=1, amp="auto", eval_every=0, max_steps=1))
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert ("amp auto: bf16 autocast" if native else "amp auto: fp32 (this CPU has no native bf16") in caplog.text


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    total, warmup, floor = 100, 10, 0.05
    factors = [lr_factor(s, total, warmup, floor) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.1) and factors[warmup - 1] == pytest.approx(1.0)
    assert factors[warmup] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[warmup:], factors[warmup + 1 :]))
    assert factors[total] == pytest.approx(floor)


def test_param_groups_skip_decay_on_vectors_and_embeddings_and_frozen_weights():
    model = plaindet.create_model("plaindet-t", num_classes=3)
    cfg = TrainConfig(weight_decay=0.1, backbone_lr_mult=0.5)
    groups = param_groups(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert "backbone.pos_embed" not in decayed and "backbone.cls_token" not in decayed
    assert not any(n.endswith("bias") for n in decayed)
    assert "backbone.patch_embed.proj.weight" in decayed and "head.cls_out.weight" in decayed
    for g in groups:
        in_backbone = {names[id(p)].startswith("backbone.") for p in g["params"]}
        assert in_backbone == {g["lr_mult"] == 0.5}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    model.set_backbone_trainable(False)
    grouped = {names[id(p)] for g in param_groups(model, cfg) for p in g["params"]}
    assert grouped and not any(n.startswith("backbone.") for n in grouped)


def test_backbone_rate_unset_follows_the_weights_it_starts_from(tmp_path):
    # From random weights each family's own multiplier; from trained weights (a file, or a detector
    # through init) DETR's 0.1; set explicitly, what was set.
    def backbone_mults(model, cfg):
        return {g["lr_mult"] for g in param_groups(model, cfg) if g["name"].startswith("backbone")}

    vit, resnet = plaindet.create_model("plaindet-t", num_classes=3), plaindet.create_model("detr-r18", num_classes=3)
    assert backbone_mults(vit, TrainConfig()) == {0.1}
    assert backbone_mults(resnet, TrainConfig()) == {10.0}
    for started in ({"backbone_weights": str(tmp_path / "weights.safetensors")}, {"init": str(tmp_path / "run")}):
        assert backbone_mults(resnet, TrainConfig(**started)) == {PRETRAINED_BACKBONE_LR_MULT}
    assert backbone_mults(resnet, TrainConfig(backbone_lr_mult=1.0)) == {1.0}


@pytest.mark.slow
def test_trained_model_finds_objects_without_duplicates(tmp_path):
    """The one-to-one head needs no NMS: a trained model's confident predictions hold no duplicates.

    plaindet-t from scratch can't generalize in a CPU minute, so it is trained to fit 8 images and
    checked on those same images. That is enough for this property: duplicates come from the
    assignment (a one-to-many assignment, or a head that isn't the one-to-one one, would put several
    confident boxes on every object it has learned), not from generalization.
    """
    from plaindet.data.shapes import ensure_shapes

    root = ensure_shapes(tmp_path / "shapes", train=8, val=1)
    cfg = TrainConfig(
        model="plaindet-t",
        data=str(root),
        val_split="train",
        out=str(tmp_path / "run"),
        epochs=40,
        batch_size=4,
        image_size=128,
        lr=2e-3,
        warmup_steps=10,
        amp="off",
        eval_every=40,
        augment={"crop": 0.0, "zoom_out": 0.0, "jitter": 0.0, "hflip": 0.0},
    )
    best = train(cfg)
    assert best["AP50"] > 0.8, best

    model = plaindet.load(tmp_path / "run" / "last.safetensors")
    data = load_dataset(root, split="train")
    threshold = 0.3
    found = total = 0
    for sample, det in zip(data.samples, model.predict([s.image_path for s in data.samples], threshold=threshold)):
        boxes = torch.from_numpy(det.boxes)
        iou = box_iou(boxes, boxes)
        same_class = torch.from_numpy(det.labels[:, None] == det.labels[None, :])
        duplicate = (iou > 0.7) & same_class & ~torch.eye(len(det), dtype=torch.bool)
        assert not duplicate.any(), f"{sample.image_path.name}: same-class duplicates {det.boxes[duplicate.any(1).numpy()]}"
        total += len(sample.boxes)
        if len(det):
            gt_iou = box_iou(torch.from_numpy(sample.boxes), boxes)
            same = torch.from_numpy(sample.labels[:, None] == det.labels[None, :])
            found += int(((gt_iou > 0.5) & same).any(1).sum())
    # Not vacuous: most objects are found above the threshold.
    assert found >= 0.8 * total, f"found {found} of {total} objects"


def _small(tiny_shapes, out, **kw) -> TrainConfig:
    """A 2-block plaindet-t at 64 px: four batches of 4 an epoch on the 16 training images."""
    options = dict(data=str(tiny_shapes), val_split="valid", out=str(out), epochs=1, batch_size=4, image_size=64, amp="off", warmup_steps=2,
                   model_overrides={"neck_channels": 32, "backbone": {"depth": 2}})  # fmt: skip
    return TrainConfig(**{**options, **kw})


def test_output_that_is_not_a_terminal_gets_plain_progress_lines(tmp_path, tiny_shapes, capsys):
    train(_small(tiny_shapes, tmp_path / "run", epochs=2, log_every=2, eval_every=0))
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out  # no bar redraws in a log file
    lines = [line for line in captured.err.splitlines() if line.startswith("epoch ")]
    assert [re.match(r"epoch (\d)/2  batch (\d)/4  loss \d+\.\d{3}  lr \S+  \(\d+s, \d+\.\d\d s/batch\)$", line).groups() for line in lines] == [
        ("1", "2"), ("1", "4"), ("2", "2"), ("2", "4"),
    ], captured.err  # fmt: skip
    assert len(re.findall(r"^epoch \d/2  loss", captured.out, re.MULTILINE)) == 2  # one summary line an epoch


def _lrs(run) -> list[float]:
    return [json.loads(line)["lr"] for line in (run / "steps.jsonl").read_text().splitlines()]


def test_a_run_cut_short_says_why_and_its_schedule_ends_where_it_stops(tmp_path, tiny_shapes, capsys):
    out = tmp_path / "steps"
    train(_small(tiny_shapes, out, epochs=5, max_steps=6, eval_every=0))
    printed = capsys.readouterr().out
    assert re.search(r"^epoch 2/5  loss \S+  \(\d+s\)  stopped: max_steps 6 reached at step 6 after batch 2 of 4$", printed, re.MULTILINE), printed
    assert _lrs(out) == pytest.approx([1e-3 * lr_factor(s, 6, 2, 0.05) for s in range(6)])  # the schedule spans the 6 steps, not 5 epochs


def _clock_of_one_second_per_step(monkeypatch) -> list[float]:
    """Make the engine's clock advance exactly 1 s per optimizer step and not otherwise; returns the
    clock (``clock[0]``, seconds) so a test can move it by hand."""
    import types

    import plaindet.engine.train as engine

    clock = [1000.0]
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(time=lambda: clock[0]))
    step = engine._Run.optimizer_step

    def timed_step(run, *args):
        step(run, *args)
        clock[0] += 1.0

    monkeypatch.setattr(engine._Run, "optimizer_step", timed_step)
    return clock


def test_a_time_limit_fits_the_schedule_from_the_first_steps_speed(tmp_path, tiny_shapes, capsys, caplog, monkeypatch):
    """A clock that advances 1 s per optimizer step, and none otherwise: a 0.5 minute limit then
    fits 30 steps, which the first 10 steps' speed tells; the run stops after the step that passes it."""
    clock = _clock_of_one_second_per_step(monkeypatch)
    out = tmp_path / "time"
    with caplog.at_level("INFO", logger="plaindet"):
        train(_small(tiny_shapes, out, epochs=20, time_limit=0.5, eval_every=0, warmup_steps=2))
    assert "time limit 0.5 min: about 30 steps fit at 1.00 s/step (measured over steps 2-11); the learning-rate schedule ends at step 30" in caplog.text
    printed = capsys.readouterr().out
    assert re.search(r"^epoch 8/20  loss \S+  \(31s\)  stopped: time limit of 0.5 min reached at step 31 after batch 3 of 4$", printed, re.MULTILINE), printed
    lrs = _lrs(out)
    assert len(lrs) == 31
    assert lrs[10] == pytest.approx(1e-3 * lr_factor(10, 80, 2, 0.05))  # before the estimate: the 20 epochs' schedule
    assert lrs[11:] == pytest.approx([1e-3 * lr_factor(s, 30, 2, 0.05) for s in range(11, 31)]) and lrs[30] == pytest.approx(1e-3 * 0.05)


def test_validation_in_bf16_training_predicts_exactly_what_eval_of_best_does(tmp_path, tiny_shapes, monkeypatch):
    """Training under bf16 autocast validates in fp32 through predict: every image's every detection
    (boxes, scores, classes) equals what ``plaindet eval --weights best.safetensors`` computes, so
    the two APs are one number (compared per detection, not as APs near 0)."""
    import plaindet.engine.evaluate as evaluate_module
    from plaindet.detections import predict_dataset
    from plaindet.engine.evaluate import evaluate

    seen = []
    real = evaluate_module.evaluate_coco
    monkeypatch.setattr(evaluate_module, "evaluate_coco", lambda dataset, results: seen.append(results) or real(dataset, results))
    out = tmp_path / "run"
    best = train(_small(tiny_shapes, out, epochs=1, amp="bf16"))
    (during,) = seen
    after = evaluate(tiny_shapes, "valid", weights=out / "best.safetensors", batch_size=4)
    assert after.results == during and len(during) == 8 * 100
    assert after.metrics.stats["AP"] == best["AP"]
    assert during == predict_dataset(plaindet.load(out / "last.safetensors"), load_dataset(tiny_shapes, split="valid"), batch_size=4)


def test_a_resumed_run_numbers_epochs_as_its_bar_does_and_its_time_adds_up(tmp_path, tiny_shapes, capsys, caplog, monkeypatch):
    """A clock that advances 1 s per optimizer step: the resumed run's epoch 2 ends 8 s into the run
    (4 steps before the resume, 4 after), not 4 s; the resume message says epoch 2 as the bar does."""
    clock = _clock_of_one_second_per_step(monkeypatch)
    out = tmp_path / "run"
    train(_small(tiny_shapes, out, epochs=1, eval_every=0, log_every=4))
    clock[0] += 100.0  # time between the two processes is not training time
    with caplog.at_level("INFO", logger="plaindet"):
        train(_small(tiny_shapes, out, epochs=2, eval_every=0, log_every=4, resume="auto"))
    assert f"resuming {out / 'last.safetensors'}: start of epoch 2/2, step 4" in caplog.text
    err = capsys.readouterr().err
    assert re.findall(r"^(epoch \d/\d)  batch 4/4", err, re.MULTILINE) == ["epoch 1/1", "epoch 2/2"]
    with open(out / "metrics.csv", newline="") as f:
        assert [(row["epoch"], row["time"]) for row in csv.DictReader(f)] == [("1", "4.0"), ("2", "8.0")]


def test_a_time_limit_passed_during_evaluation_ends_the_run_there(tmp_path, tiny_shapes, capsys, monkeypatch):
    """Steps take 1 s and the evaluation 100 s of a fake clock: a 0.5 minute limit is passed by the
    first evaluation, so the run ends with that epoch instead of taking a step more and evaluating again."""
    import types

    import plaindet.engine.train as engine

    clock = [1000.0]
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(time=lambda: clock[0]))
    step, evaluate = engine._Run.optimizer_step, engine._Run._evaluate

    def timed_step(run, *args):
        step(run, *args)
        clock[0] += 1.0

    def timed_evaluate(run):
        clock[0] += 100.0
        return evaluate(run)

    monkeypatch.setattr(engine._Run, "optimizer_step", timed_step)
    monkeypatch.setattr(engine._Run, "_evaluate", timed_evaluate)
    out = tmp_path / "run"
    train(_small(tiny_shapes, out, epochs=5, time_limit=0.5))
    assert re.search(r"^epoch 1/5  loss \S+  AP .*\(104s\)  stopped: time limit of 0.5 min reached at step 4$", capsys.readouterr().out, re.MULTILINE)
    assert len(_lrs(out)) == 4


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "steps.jsonl").read_text().splitlines()]


def test_compiled_training_matches_eager(tmp_path, tiny_shapes):
    # The same steps through torch.compile: the same losses up to the compiler's rounding.
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(_small(tiny_shapes, eager, max_steps=3, eval_every=0))
    train(_small(tiny_shapes, compiled, max_steps=3, eval_every=0, compile=True))
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)
    a, b = plaindet.load(eager / "last.safetensors").state_dict(), plaindet.load(compiled / "last.safetensors").state_dict()
    assert a.keys() == b.keys()  # the compiled wrapper leaves the saved names alone
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_a_compiler_that_fails_leaves_an_eager_run(tmp_path, tiny_shapes, monkeypatch, caplog):
    def no_compiler(module, **kw):
        def call(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", no_compiler)
    eager, fallback = tmp_path / "eager", tmp_path / "fallback"
    train(_small(tiny_shapes, eager, max_steps=3, eval_every=0))
    with caplog.at_level("WARNING", logger="plaindet"):
        train(_small(tiny_shapes, fallback, max_steps=3, eval_every=0, compile=True))
    assert _losses(fallback) == _losses(eager)  # exactly the eager run
    warnings = [r.getMessage() for r in caplog.records if "compile" in r.getMessage()]
    assert warnings == ["compile: torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ compiler found); training continues eagerly"]


def test_a_slow_loader_is_measured_and_named_in_a_warning(tmp_path, tiny_shapes, monkeypatch, caplog):
    from plaindet.data import transforms

    item = transforms.TransformedDataset.__getitem__

    def slow_item(self, i):
        time.sleep(0.1)  # a loader slower than the model: 0.4 s per batch of 4
        return item(self, i)

    monkeypatch.setattr(transforms.TransformedDataset, "__getitem__", slow_item)
    cfg = TrainConfig(model="plaindet-t", data=str(tiny_shapes), val_split="valid", out=str(tmp_path / "run"), epochs=1, batch_size=4, image_size=64, amp="off", eval_every=0)
    records = []
    with caplog.at_level("WARNING", logger="plaindet"):
        train(cfg, on_epoch=records.append)

    (record,) = records
    steps = [json.loads(line) for line in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert all(r["data_s"] >= 0.4 for r in steps)
    assert record["data_wait"] > 0.1
    assert "waited for data" in caplog.text and "workers=0" in caplog.text and "--workers" in caplog.text


def test_data_wait_share_counts_only_timed_steps():
    from plaindet.engine.logs import data_wait_share

    rows = [{"step": 1, "step_s": 2.0, "data_s": 0.5}, {"step": 2, "step_s": 2.0, "data_s": 0.0}, {"step": 3, "loss": 1.0}]
    assert data_wait_share(rows) == pytest.approx(0.125)
    assert data_wait_share([{"step": 1, "loss": 1.0}]) is None  # a run logged before steps were timed
    assert data_wait_share([]) is None

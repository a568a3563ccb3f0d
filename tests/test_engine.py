"""The training engine's promises: exact resume, crash safety, fault handling, logs and config repeat."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import plaindet
from plaindet.weights import read_safetensors
from plaindet.engine import train as train_mod
from plaindet.engine.logs import TIMING_KEYS
from plaindet.engine.train_state import TrainState
from plaindet.engine.train import lr_factor, param_groups, train
from plaindet.engine.train_config import TrainConfig
from plaindet.errors import TrainingDiverged, TrainingInterrupted


def _cfg(tiny_shapes, out, **kw) -> TrainConfig:
    base = dict(
        model="plaindet-t",
        data=str(tiny_shapes),
        val_split="valid",
        out=str(out),
        epochs=2,
        batch_size=4,
        image_size=64,
        amp="off",
        warmup_steps=2,
        model_overrides={"neck_channels": 32, "backbone": {"depth": 2}},
    )
    base.update(kw)
    return TrainConfig(**base)


def _steps(out: Path) -> list[dict]:
    """The run's step rows without their wall-clock timings (:data:`~plaindet.engine.logs.TIMING_KEYS`)."""
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state, _ = read_safetensors(path)
    return {k: v for k, v in state.items() if k.startswith(("model.", "ema.", "optim."))}


class _StopAfter:
    """Stands in for the signal handler: reports SIGTERM from the ``n``-th check on."""

    def __init__(self, n: int) -> None:
        self.n, self.checks = n, 0

    @property
    def signum(self):
        self.checks += 1
        return signal.SIGTERM if self.checks >= self.n else None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("stop_at", [3, 6])  # mid-epoch, and right after an epoch's last step
def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(tiny_shapes, tmp_path, monkeypatch, stop_at, measured):
    ref = tmp_path / "ref"
    train(_cfg(tiny_shapes, ref, augment={"crop": 0.5, "hflip": 0.5}))  # augmentation draws randomness too

    cut = tmp_path / "cut"
    monkeypatch.setattr(train_mod, "_StopSignals", lambda: _StopAfter(stop_at))
    with pytest.raises(TrainingInterrupted, match="SIGTERM"):
        train(_cfg(tiny_shapes, cut, augment={"crop": 0.5, "hflip": 0.5}))
    monkeypatch.undo()
    assert len(_steps(cut)) == stop_at
    assert TrainState(cut / "last.safetensors").progress["step"] == stop_at
    # Resume with only the run folder: the settings come from the checkpoint.
    train(TrainConfig(out=str(cut), resume="auto"))

    assert _steps(cut) == _steps(ref)  # per-step losses, learning rates and gradient norms
    a, b = _weights(ref / "last.safetensors"), _weights(cut / "last.safetensors")
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    what = "mid-epoch" if stop_at == 3 else "at an epoch's end"
    measured(f"interrupted {what} and resumed vs uninterrupted: tensors that differ bitwise", f"{len(differ)} of {len(a)}")
    assert differ == []
    assert [json.loads(x)["epoch"] for x in (cut / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_checkpoint_is_loadable_and_holds_ema_and_raw_weights(tiny_shapes, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_shapes, out, epochs=1, ema_decay=0.9))
    ckpt = TrainState(out / "last.safetensors")
    assert ckpt.progress == {"epoch": 1, "batch": 0, "step": 4, "best": ckpt.progress["best"], "bad_steps": 0, "schedule_steps": 4, "elapsed": ckpt.progress["elapsed"]}
    assert any(k.startswith("ema.") for k in ckpt.tensors) and any(k.startswith("optim.") for k in ckpt.tensors)
    model = plaindet.load(out / "last.safetensors")  # the deployable view: EMA weights
    ema = ckpt.inference_weights()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema[k]), k
    raw = {k[len("model.") :]: v for k, v in ckpt.tensors.items() if k.startswith("model.")}
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if k in ema)
    model.save(tmp_path / "plain.safetensors")
    with pytest.raises(plaindet.errors.CheckpointError, match="not a training checkpoint"):
        TrainState(tmp_path / "plain.safetensors")


def test_nan_loss_skips_the_step_and_repeated_nans_stop_the_run(tiny_shapes, tmp_path, monkeypatch, caplog):
    calls = {"n": 0}
    real = plaindet.models.one_to_one.OneToOneCriterion.forward

    def flaky(self, outputs, targets, num_boxes=None):
        calls["n"] += 1
        losses = real(self, outputs, targets, num_boxes)
        if calls["n"] == 2:  # one bad step
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(plaindet.models.one_to_one.OneToOneCriterion, "forward", flaky)
    out = tmp_path / "run"
    train(_cfg(tiny_shapes, out, epochs=1))
    steps = _steps(out)
    assert [r["skipped"] for r in steps] == [False, True, False, False]
    assert "non-finite loss or gradient, step skipped" in caplog.text

    def always_nan(self, outputs, targets, num_boxes=None):
        losses = real(self, outputs, targets, num_boxes)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    before = _weights(out / "last.safetensors")
    monkeypatch.setattr(plaindet.models.one_to_one.OneToOneCriterion, "forward", always_nan)
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row"):
        train(_cfg(tiny_shapes, out, epochs=3, max_bad_steps=3, resume="auto"))
    after = _weights(out / "last.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the last good checkpoint is kept


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tiny_shapes, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    train(_cfg(tiny_shapes, out, epochs=1))
    before = (out / "last.safetensors").read_bytes()

    import safetensors.torch

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="could not be written"):
        train(_cfg(tiny_shapes, out, epochs=2, resume="auto"))
    assert "No space left on device" in caplog.text and "the previous last.safetensors is intact" in caplog.text
    assert (out / "last.safetensors").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    TrainState(out / "last.safetensors")


def test_run_files_get_the_mode_the_umask_gives_not_owner_only(tiny_shapes, tmp_path):
    """Checkpoints, config.yaml and the logs are written atomically (temporary file, rename) and still
    get 0666 less the umask, like the plots: a group-readable run folder stays group-readable."""
    out = tmp_path / "run"
    previous = os.umask(0o027)
    try:
        train(_cfg(tiny_shapes, out, epochs=1))
    finally:
        os.umask(previous)
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert {"best.safetensors", "last.safetensors", "config.yaml", "metrics.csv", "steps.csv", "steps.jsonl"} <= modes.keys()
    assert set(modes.values()) == {0o640}, modes


def test_param_groups_by_part_and_step_schedule():
    model = plaindet.create_model("plaindet-t", num_classes=3)
    cfg = TrainConfig(backbone_lr_mult=0.1, neck_lr_mult=0.5, head_lr_mult=2.0)
    names = {id(p): n for n, p in model.named_parameters()}
    for g in param_groups(model, cfg):
        parts = {names[id(p)].split(".")[0] for p in g["params"]}
        expected = {"backbone": 0.1, "neck": 0.5, "head": 2.0, "aux_head": 2.0}
        assert {expected[p] for p in parts} == {g["lr_mult"]}, (g["name"], parts)
    f = [lr_factor(s, 100, 10, 0.0, "step", (50, 80), 0.1) for s in range(100)]
    assert f[9] == 1.0 and f[49] == 1.0 and f[50] == pytest.approx(0.1) and f[80] == pytest.approx(0.01)


def test_accumulation_takes_one_optimizer_step_per_window(tiny_shapes, tmp_path):
    """Two batches of 4 accumulated make the step one batch of 8 makes: the same losses, gradient
    norms and weights, up to float rounding (measured: losses and norms to 1e-7 relative, weights
    to 1.3e-6 after 4 steps at lr 1e-3).

    Exact only when every batch holds as many objects: each batch's loss is divided by its own
    object count, so a window's mean equals the whole batch's loss only with equal counts (with
    the dataset's 1 to 6 objects per image the weights differ by ~4e-3). Every image here keeps one
    box, and crop and zoom-out (which may drop boxes) are off; flips and color jitter stay on: both
    runs draw the same per-sample augmentation, and the same images fill each window."""
    import copy

    from plaindet.data import load_dataset
    from plaindet.data.sample import Sample

    full = load_dataset(tiny_shapes, split="train")
    one_box = copy.copy(full)
    one_box.samples = [Sample(s.image_path, s.width, s.height, s.boxes[:1], s.labels[:1], s.image_id) for s in full.samples]
    datasets = (one_box, load_dataset(tiny_shapes, split="valid"))
    common = dict(epochs=2, eval_every=0, ema_decay=0, lr=1e-3, augment={"crop": 0.0, "zoom_out": 0.0})
    a = train(_cfg(tiny_shapes, tmp_path / "a", batch_size=8, **common), datasets=datasets)
    b = train(_cfg(tiny_shapes, tmp_path / "b", batch_size=4, accumulate=2, **common), datasets=datasets)
    assert a["step"] == b["step"] == 4

    steps_a, steps_b = _steps(tmp_path / "a"), _steps(tmp_path / "b")
    assert len(steps_a) == len(steps_b) == 4
    for row_a, row_b in zip(steps_a, steps_b):
        assert row_a.keys() == row_b.keys()
        for key in row_a:
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-5), (row_a["step"], key)
    assert steps_a[-1]["loss"] < steps_a[0]["loss"]  # the steps did something

    weights_a, weights_b = _weights(tmp_path / "a" / "last.safetensors"), _weights(tmp_path / "b" / "last.safetensors")
    model_keys = [k for k in weights_a if k.startswith("model.")]
    assert model_keys and weights_a.keys() == weights_b.keys()
    worst = max(float((weights_a[k] - weights_b[k]).abs().max()) for k in model_keys)
    assert worst < 1e-4, worst  # a tenth of one step's size (lr 1e-3)


def test_run_config_repeats_the_run(tiny_shapes, tmp_path):
    from typer.testing import CliRunner

    from plaindet.cli import app

    out = tmp_path / "run"
    train(_cfg(tiny_shapes, out, epochs=1, eval_every=0))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["resume"] == "" and saved["seed"] == 0
    result = CliRunner().invoke(app, ["train", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    a, b = _weights(out / "last.safetensors"), _weights(tmp_path / "again" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    bad = CliRunner().invoke(app, ["train", "--config", str(out / "config.yaml"), "--set", "epoch=3"])
    assert bad.exit_code == 2 and "did you mean 'epochs'" in bad.output


def test_sigterm_saves_and_exits_then_resume_auto_finishes(tiny_shapes, tmp_path):
    """The real signal path, in a child process: SIGTERM mid-run saves last.safetensors and exits 143."""
    out = tmp_path / "run"
    cfg = _cfg(tiny_shapes, out, epochs=40, eval_every=0)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(plaindet.config.to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "plaindet", "train", "--config", str(cfg_file)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while proc.poll() is None and not ((out / "steps.jsonl").is_file() and _steps(out)) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "interrupted: SIGTERM" in output and "Traceback" not in output
    done = TrainState(out / "last.safetensors").progress["step"]
    assert 1 <= done < 40 * 4 and len(_steps(out)) == done


def test_tensorboard_events_are_written(tiny_shapes, tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is part of the dev install")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(_cfg(tiny_shapes, out, epochs=1, tensorboard=True))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "val/AP"} <= set(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


def _clipped(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the image, and which of them keep at least 1 px per side (what the student gets)."""
    boxes = np.clip(boxes, 0, [width, height] * 2)
    return boxes, (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)


def test_distill_labels_unlabeled_images_with_the_teacher_and_trains_the_student(tiny_shapes, tmp_path, monkeypatch):
    from plaindet.data import load_dataset
    from plaindet.engine.distill import DistillConfig, distill

    teacher_dir = tmp_path / "teacher"
    train(_cfg(tiny_shapes, teacher_dir, epochs=1, eval_every=0))
    teacher = plaindet.load(teacher_dir / "last.safetensors")
    train_set = load_dataset(tiny_shapes, split="train")
    unlabeled = [s.image_path for s in train_set.samples[10:]]
    expected = teacher.predict(unlabeled, threshold=0.0)
    # A threshold that keeps about a tenth of the teacher's boxes: the student must get exactly those.
    threshold = float(np.quantile(np.concatenate([d.scores for d in expected]), 0.9))

    # distill() hands the student's training set to the engine: record it on the way.
    seen = []

    def recording_train(cfg, on_epoch=None, *, datasets=None):
        seen.append(datasets)
        return train(cfg, on_epoch, datasets=datasets)

    monkeypatch.setattr(train_mod, "train", recording_train)
    student = tmp_path / "student"
    dcfg = DistillConfig(teacher=str(teacher_dir / "last.safetensors"), unlabeled_from_train=6, threshold=threshold, mode="union")
    best = distill(_cfg(tiny_shapes, student, epochs=1), dcfg)
    ((mixed, _),) = seen

    # The 10 labeled images keep their ground truth first; the 6 unlabeled get the teacher's boxes
    # above the threshold, and nothing else.
    assert len(mixed) == len(train_set)
    for s, orig in zip(mixed.samples[:10], train_set.samples[:10]):
        np.testing.assert_array_equal(s.boxes[: len(orig.boxes)], orig.boxes)
        np.testing.assert_array_equal(s.labels[: len(orig.labels)], orig.labels)
    kept = 0
    for s, det in zip(mixed.samples[10:], expected):
        above = det.scores >= threshold
        boxes, keep = _clipped(det.boxes[above], s.width, s.height)
        np.testing.assert_allclose(s.boxes, boxes[keep], atol=1e-4)
        np.testing.assert_array_equal(s.labels, det.labels[above][keep])
        kept += len(s.boxes)
    assert 0 < kept < sum(len(d) for d in expected) / 2  # the threshold did filter

    # The student trained on them: four logged steps, and weights that moved (its EMA, which
    # lags the raw weights, differs from them only if they changed).
    assert best["step"] == 4 and (student / "best.safetensors").is_file()
    steps = _steps(student)
    assert len(steps) == 4 and all(np.isfinite(r["loss"]) and not r["skipped"] for r in steps)
    ckpt = TrainState(student / "last.safetensors")
    raw = {k[len("model.") :]: v for k, v in ckpt.tensors.items() if k.startswith("model.")}
    ema = ckpt.inference_weights()
    moved = [k for k in raw if raw[k].is_floating_point() and not torch.equal(raw[k], ema[k])]
    assert len(moved) > 0.9 * sum(v.is_floating_point() for v in raw.values())
    with pytest.raises(ValueError, match="mode"):
        DistillConfig(mode="soft")


class _ScriptedTeacher:
    """A stand-in teacher with the interface distillation uses (``config.class_names`` and
    ``predict``), predicting per image: a copy of its first ground-truth box moved by 1 px (score
    0.9), an 8 x 8 box at the top-left corner (0.8; a ground-truth box is at least 16 px a side,
    so they overlap by IoU 0.25 at most), a box reaching past the bottom-right corner (0.7, clipped
    to 5 x 5 px), a box below the threshold (0.1) and one left under 1 px wide by clipping (0.6)."""

    def __init__(self, dataset) -> None:
        from types import SimpleNamespace

        self.config = SimpleNamespace(class_names=list(dataset.class_names))
        self.samples = {s.image_path: s for s in dataset.samples}

    def predictions(self, sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, h = sample.width, sample.height
        boxes = np.array(
            [sample.boxes[0] + 1, [0, 0, 8, 8], [w - 5, h - 5, w + 20, h + 20], [10, 10, 60, 60], [w - 0.5, 0, w + 9, 20]], np.float32
        )
        return boxes, np.array([0.9, 0.8, 0.7, 0.1, 0.6], np.float32), np.array([sample.labels[0], 1, 2, 0, 1])

    def predict(self, images, threshold=0.3, image_size=None, batch_size=8):
        from plaindet.detections import Detections

        out = []
        for path in images:
            boxes, scores, labels = self.predictions(self.samples[Path(path)])
            keep = scores >= threshold
            out.append(Detections(boxes[keep], scores[keep], labels[keep], [self.config.class_names[k] for k in labels[keep]]))
        return out


def test_distill_union_keeps_the_labels_and_adds_only_teacher_boxes_that_overlap_none(tiny_shapes):
    from plaindet.data import load_dataset
    from plaindet.engine.distill import DistillConfig, distill_datasets

    train_set = load_dataset(tiny_shapes, split="train")
    teacher = _ScriptedTeacher(train_set)
    labeled, unlabeled = train_set.samples[:12], train_set.samples[12:]

    def targets(mode: str):
        dcfg = DistillConfig(unlabeled_from_train=4, threshold=0.35, mode=mode, union_iou=0.5)
        mixed = distill_datasets(dcfg, train_set, teacher)
        assert [s.image_path for s in mixed.samples] == [s.image_path for s in train_set.samples]
        return mixed.samples

    def teacher_boxes(sample, rows):
        boxes, scores, labels = teacher.predictions(sample)
        clipped, _ = _clipped(boxes, sample.width, sample.height)
        return clipped[rows], labels[rows]

    for mode in ("union", "teacher", "labels"):
        for s, orig in zip(targets(mode)[:12], labeled):
            if mode == "union":  # the labels, then the corner boxes; not the moved copy of a label
                extra, extra_labels = teacher_boxes(orig, [1, 2])
                boxes, labels = np.concatenate([orig.boxes, extra]), np.concatenate([orig.labels, extra_labels])
                np.testing.assert_array_equal(s.iscrowd, np.concatenate([orig.iscrowd, [False, False]]))
            elif mode == "teacher":  # every teacher box above the threshold that survives clipping
                boxes, labels = teacher_boxes(orig, [0, 1, 2])
            else:
                boxes, labels = orig.boxes, orig.labels
            np.testing.assert_allclose(s.boxes, boxes, atol=1e-6, err_msg=mode)
            np.testing.assert_array_equal(s.labels, labels, err_msg=mode)
    # Unlabeled images have no label to overlap: the teacher's boxes above the threshold, whatever the mode.
    for s, orig in zip(targets("union")[12:], unlabeled):
        boxes, labels = teacher_boxes(orig, [0, 1, 2])
        np.testing.assert_allclose(s.boxes, boxes, atol=1e-6)
        np.testing.assert_array_equal(s.labels, labels)

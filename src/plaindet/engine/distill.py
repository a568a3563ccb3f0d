"""Distillation: a smaller student learns from a trained teacher's predictions.

The teacher labels images once (its detections above ``threshold`` become boxes), and the student
trains on those labels with the ordinary engine, so every registered model can be a teacher or a
student and every engine feature (resume, DDP, logs) applies. Two sources of images:

- labeled training images: ``mode="union"`` keeps the ground truth and adds the teacher's confident
  boxes that overlap no ground-truth box (objects the labels missed); ``"teacher"`` uses the
  teacher's boxes alone; ``"labels"`` the ground truth alone.
- unlabeled images (``unlabeled``: a folder, or the training split with its labels dropped via
  ``unlabeled_from_train``): the teacher's boxes are their only targets. This is where a teacher
  helps most: it turns images nobody labeled into training data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plaindet.config import setting
from plaindet.errors import ConfigError, DatasetError, NotFound

log = logging.getLogger("plaindet")


@dataclass
class DistillConfig:
    """How the teacher labels images (see the module docstring); the student's settings are a
    :class:`~plaindet.engine.train.TrainConfig`."""

    teacher: str = setting("", help="A trained model (.safetensors) whose predictions the student learns.")
    unlabeled: str = setting("", help="A folder of unlabeled images the teacher labels.")
    unlabeled_from_train: int = setting(0, help="Treat the last N training images as unlabeled.")
    threshold: float = setting(0.35, help="Teacher score that makes a box a target.")
    mode: str = setting("union", help="Labeled images: union (labels + teacher's extra boxes), teacher or labels.")
    union_iou: float = setting(0.5, help="union: a teacher box overlapping a label by more than this IoU is not added.")
    teacher_image_size: int = setting(0, help="Long side the teacher predicts at (0: the teacher's own).")

    def __post_init__(self) -> None:
        if self.mode not in ("union", "teacher", "labels"):
            raise ConfigError(f"mode must be union, teacher or labels, got {self.mode!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")


def pseudo_label(teacher, images: list[Path], threshold: float, image_size: int | None = None, batch_size: int = 8):
    """The teacher's detections above ``threshold`` for each image: a list of ``(boxes, labels)``
    (``float32 (N, 4)`` xyxy original pixels, clipped to the image, boxes under 1 px dropped;
    ``int64 (N,)``)."""
    from plaindet.data.images import image_size as read_size

    from tqdm.auto import tqdm

    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="teacher labels", leave=False, dynamic_ncols=True, disable=None):  # None: off without a terminal
        chunk = images[start : start + batch_size]
        for path, det in zip(chunk, teacher.predict(chunk, threshold=threshold, image_size=image_size)):
            w, h = read_size(path)
            boxes = np.clip(det.boxes.astype(np.float32), 0, [w, h, w, h]).astype(np.float32)
            keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
            out.append((boxes[keep], det.labels[keep].astype(np.int64)))
    return out


def distill_datasets(dcfg: DistillConfig, train_set, teacher):
    """The student's training set: ``train_set`` relabeled per ``dcfg.mode``, plus teacher-labeled
    unlabeled images. Returns a new :class:`~plaindet.data.DetectionDataset`."""
    import copy

    from plaindet.data.images import IMAGE_SUFFIXES, image_size
    from plaindet.data.sample import Sample
    from plaindet.ops.boxes import box_iou

    if list(teacher.config.class_names) != list(train_set.class_names):
        raise ConfigError(f"the teacher's classes {teacher.config.class_names} differ from the dataset's {train_set.class_names}")
    size = dcfg.teacher_image_size or None
    labeled = list(train_set.samples)
    unlabeled: list[Path] = []
    if dcfg.unlabeled_from_train:
        # The tail of the training split stands in for unlabeled images (for experiments).
        n = min(dcfg.unlabeled_from_train, len(labeled))
        unlabeled = [s.image_path for s in labeled[len(labeled) - n :]]
        labeled = labeled[: len(labeled) - n]
    if dcfg.unlabeled:
        folder = Path(dcfg.unlabeled)
        if not folder.is_dir():
            raise NotFound(f"{folder}: no such folder of unlabeled images")
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        unlabeled += found

    samples: list[Sample] = []
    n_teacher = 0
    if dcfg.mode == "labels":
        samples = [copy.copy(s) for s in labeled]
    elif labeled:
        import torch

        for s, (boxes, labels) in zip(labeled, pseudo_label(teacher, [s.image_path for s in labeled], dcfg.threshold, size)):
            if dcfg.mode == "union" and len(s.boxes) and len(boxes):
                new = box_iou(torch.from_numpy(boxes), torch.from_numpy(s.boxes)).max(dim=1).values.numpy() < dcfg.union_iou
                boxes, labels = boxes[new], labels[new]
            n_teacher += len(boxes)
            if dcfg.mode == "union":
                boxes, labels = np.concatenate([s.boxes, boxes]), np.concatenate([s.labels, labels])
                crowd = np.concatenate([s.iscrowd, np.zeros(len(boxes) - len(s.boxes), dtype=bool)])
            else:
                crowd = None
            samples.append(Sample(s.image_path, s.width, s.height, boxes, labels, s.image_id, iscrowd=crowd))
    next_id = max((s.image_id for s in train_set.samples), default=0) + 1
    for i, (path, (boxes, labels)) in enumerate(zip(unlabeled, pseudo_label(teacher, unlabeled, dcfg.threshold, size) if unlabeled else [])):
        w, h = image_size(path)
        n_teacher += len(boxes)
        samples.append(Sample(path, w, h, boxes, labels, next_id + i))
    log.info("distill: %d labeled + %d unlabeled images; %d boxes from the teacher (threshold %.2f, mode %s)", len(labeled), len(unlabeled), n_teacher, dcfg.threshold, dcfg.mode)
    out = copy.copy(train_set)
    out.samples = samples
    return out


def distill(cfg, dcfg: DistillConfig, on_epoch=None) -> dict:
    """Train ``cfg.model`` (the student) on the teacher's labels; returns the best epoch's metrics."""
    from plaindet.engine.train import load_splits, train
    from plaindet.models.factory import load_model

    if not dcfg.teacher:
        raise ConfigError("distillation needs a teacher checkpoint (--teacher)")
    teacher = load_model(dcfg.teacher)
    train_set, val_set = load_splits(cfg)
    student_set = distill_datasets(dcfg, train_set, teacher)
    del teacher
    return train(cfg, on_epoch, datasets=(student_set, val_set))

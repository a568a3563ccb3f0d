"""The built-in synthetic dataset: colored shapes on textured backgrounds.

Every image is a pure function of ``(seed, split, index)``, so any number of images can be made
reproducibly on any machine, with no download. Each image is ``size x size`` (320 by default) and
holds 1 to 6 objects of three classes, ``circle``, ``square`` and ``triangle``: the class is the
shape, the color is random. Object sides are 16 to 120 px (the long side log-uniform), with aspect
ratios from 1:2 to 2:1 (so circles are ellipses and squares rectangles), drawn axis-aligned so the labeled box is the
shape's exact extent. Objects may overlap; a new object is never placed where it would hide more than
half of an earlier one, so every label stays visible.

The dataset is written to disk in the Roboflow COCO layout (``ROOT/train/_annotations.coco.json``
next to its JPEG images, likewise ``valid`` and ``test``) and read back with :func:`plaindet.data.load_dataset`
like any user dataset, so the demo exercises the same code paths as real data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

CLASS_NAMES = ("circle", "square", "triangle")
BUILTIN_NAME = "shapes"  # what users pass as the dataset path to get this set
MIN_SIZE, MAX_SIZE = 16, 120
_SPLIT_SALT = {"train": 0, "valid": 1, "val": 1, "test": 2}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: smooth color blobs, a faint grating and pixel noise."""
    coarse = rng.uniform(0, 255, size=(rng.integers(3, 9), rng.integers(3, 9), 3)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
    grating = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    img += (rng.uniform(5, 30) * grating)[..., None]
    img += rng.normal(0, rng.uniform(2, 12), size=img.shape).astype(np.float32)
    return img


def _box_size(rng: np.random.Generator) -> tuple[float, float]:
    # Log-uniform long side so small objects are as common as large ones.
    long_side = float(np.exp(rng.uniform(np.log(MIN_SIZE), np.log(MAX_SIZE))))
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))  # width / height
    if aspect >= 1:
        w, h = long_side, long_side / aspect
    else:
        w, h = long_side * aspect, long_side
    # Both sides stay within [MIN_SIZE, MAX_SIZE]: a sliver thinner than one patch is not a fair object.
    return max(w, MIN_SIZE), max(h, MIN_SIZE)


def _hides_earlier(box: np.ndarray, earlier: list[np.ndarray], limit: float = 0.5) -> bool:
    for e in earlier:
        iw = min(box[2], e[2]) - max(box[0], e[0])
        ih = min(box[3], e[3]) - max(box[1], e[1])
        if iw > 0 and ih > 0 and iw * ih > limit * (e[2] - e[0]) * (e[3] - e[1]):
            return True
    return False


def _draw(img: np.ndarray, cls: int, box: np.ndarray, color: tuple[float, ...], rng: np.random.Generator) -> None:
    # cv2 draws with integer coordinates in 1/16 px (shift=4) so shapes match float boxes closely.
    s = 16
    x1, y1, x2, y2 = box
    if cls == 0:
        center = (int(round((x1 + x2) / 2 * s)), int(round((y1 + y2) / 2 * s)))
        axes = (int(round((x2 - x1) / 2 * s)), int(round((y2 - y1) / 2 * s)))
        cv2.ellipse(img, center, axes, 0, 0, 360, color, -1, cv2.LINE_AA, shift=4)
    elif cls == 1:
        pts = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        cv2.fillPoly(img, [np.round(pts * s).astype(np.int32)], color, cv2.LINE_AA, shift=4)
    else:
        apex = x1 + rng.uniform(0, 1) * (x2 - x1)
        pts = np.array([[x1, y2], [x2, y2], [apex, y1]])
        if rng.uniform() < 0.5:  # upside down as often as upright
            pts = np.array([[x1, y1], [x2, y1], [apex, y2]])
        cv2.fillPoly(img, [np.round(pts * s).astype(np.int32)], color, cv2.LINE_AA, shift=4)


def render(index: int, seed: int = 0, split: str = "train", size: int = 320) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make image ``index`` of a split.

    Returns:
        image: ``uint8`` ``(size, size, 3)`` RGB.
        boxes: ``float32`` ``(N, 4)`` absolute ``xyxy`` pixels, ``1 <= N <= 6``.
        labels: ``int64`` ``(N,)`` indices into :data:`CLASS_NAMES`.
    """
    rng = np.random.default_rng([seed, _SPLIT_SALT.get(split, 3), index])
    img = _background(rng, size)
    n = int(rng.integers(1, 7))
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(n):
        for _attempt in range(20):
            w, h = _box_size(rng)
            x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            box = np.array([x1, y1, x1 + w, y1 + h])
            if not _hides_earlier(box, boxes):
                break
        else:
            continue
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        # A color that stands out from the background under the box, so every object is visible.
        patch = img[int(y1) : int(np.ceil(y1 + h)), int(x1) : int(np.ceil(x1 + w))].reshape(-1, 3).mean(0)
        for _attempt in range(10):
            color = rng.uniform(0, 255, size=3)
            if np.abs(color - patch).sum() > 150:
                break
        _draw(img, cls, box, tuple(float(c) for c in color), rng)
        boxes.append(box)
        labels.append(cls)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def write_shapes(root: str | Path, num_images: int, *, split: str = "train", seed: int = 0, size: int = 320) -> Path:
    """Write ``num_images`` shapes images of ``split`` under ``ROOT/SPLIT/`` in the Roboflow COCO layout.

    Returns the annotation file. Files are written to a temporary name and renamed, so an
    interrupted run never leaves a half-written annotation file that would later be trusted.
    """
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, boxes, labels = render(i, seed=seed, split=split, size=size)
        name = f"{split}_{i:06d}.jpg"
        cv2.imwrite(str(folder / name), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for box, label in zip(boxes.tolist(), labels.tolist()):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(CLASS_NAMES)]
    coco = {
        "info": {"description": f"plaindet shapes, seed {seed}, {split}", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    ann_file = folder / "_annotations.coco.json"
    tmp = ann_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(coco))
    os.replace(tmp, ann_file)
    return ann_file


def ensure_shapes(root: str | Path, *, train: int = 1000, val: int = 200, test: int = 0, seed: int = 0, size: int = 320) -> Path:
    """Make sure ``ROOT`` holds the shapes dataset with these settings, writing it if needed.

    Splits ``train``, ``valid`` (for choosing settings and checkpoints) and, when ``test > 0``,
    ``test`` (for reporting: a figure is never measured on the images its settings were chosen on).
    A small stamp file records the settings, so a folder made with other settings is rewritten
    rather than silently reused. Returns ``ROOT``, readable by :func:`plaindet.data.load_dataset`.
    """
    root = Path(root)
    stamp = root / "shapes.json"
    counts = {"train": train, "valid": val, "test": test}
    settings = {**counts, "seed": seed, "size": size, "version": 2}
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == settings:
                return root
        except json.JSONDecodeError:
            pass
    for split, n in counts.items():
        if n > 0:
            write_shapes(root, n, split=split, seed=seed, size=size)
    stamp.write_text(json.dumps(settings))
    return root


def builtin_shapes(*, train: int = 2000, val: int = 200, test: int = 200, seed: int = 0, folder: str | Path | None = None) -> Path:
    """The folder of the built-in dataset (``--data shapes``), written on first use.

    By default it lives in ``~/.cache/plaindet/shapes-s{seed}-{train}-{val}-{test}``, so every
    command that names ``shapes`` with the same settings reads the same images.
    """
    if folder is None:
        folder = Path.home() / ".cache" / "plaindet" / f"shapes-s{seed}-{train}-{val}-{test}"
    return ensure_shapes(folder, train=train, val=val, test=test, seed=seed)

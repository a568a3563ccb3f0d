"""The built-in synthetic dataset: colored shapes on textured backgrounds.

Every image is a pure function of ``(seed, split, index)``, so any number of images can be made
reproducibly on any machine, with no download. Each image is ``size x size`` (320 by default) and
holds 1 to 6 objects; the class is the shape, the color is random. The default classes are
:data:`CLASS_NAMES` (``circle``, ``square``, ``triangle``); any of :data:`SHAPE_KINDS` may be chosen
instead (``classes=``, or ``--data shapes:classes=star,cross,ring`` on the command line; see
:func:`parse_builtin`), so a source task and a target task with disjoint classes exist. Object sides
are 16 to 120 px (the long side log-uniform), with aspect ratios from 1:2 to 2:1 (so circles are
ellipses and squares rectangles), drawn axis-aligned so the labeled box is the shape's exact extent. Objects may overlap; a new object is never placed where it would hide more than
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

from plaindet.errors import DatasetError

CLASS_NAMES = ("circle", "square", "triangle")  # the default classes, in this order
# Every kind that can be drawn. The first three are the original set; images made with the default
# classes are byte-identical to those of earlier versions (the random draws are the same).
SHAPE_KINDS = (*CLASS_NAMES, "star", "cross", "ring", "hexagon", "diamond")
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


# Polygons in the unit square, touching all four sides, so scaled to a box their extent is the box.
def _unit_star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    angles = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    pts = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    return (pts - pts.min(0)) / (pts.max(0) - pts.min(0))


_UNIT_POLYGONS = {
    "star": _unit_star(),
    "hexagon": np.array([[0.25, 0], [0.75, 0], [1, 0.5], [0.75, 1], [0.25, 1], [0, 0.5]], dtype=np.float64),
    "diamond": np.array([[0.5, 0], [1, 0.5], [0.5, 1], [0, 0.5]], dtype=np.float64),
}


def _fill(img: np.ndarray, pts: np.ndarray, color: tuple[float, ...]) -> None:
    # cv2 draws with integer coordinates in 1/16 px (shift=4) so shapes match float boxes closely.
    cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], color, cv2.LINE_AA, shift=4)


def _draw(img: np.ndarray, kind: str, box: np.ndarray, color: tuple[float, ...], rng: np.random.Generator) -> None:
    """Draw one shape of ``kind`` filling ``box`` (``xyxy`` float pixels) exactly; ``rng`` picks its variant
    (a triangle's apex, which way up, a cross's arm width, a ring's thickness)."""
    s = 16
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if kind == "circle":
        center = (int(round((x1 + x2) / 2 * s)), int(round((y1 + y2) / 2 * s)))
        axes = (int(round((x2 - x1) / 2 * s)), int(round((y2 - y1) / 2 * s)))
        cv2.ellipse(img, center, axes, 0, 0, 360, color, -1, cv2.LINE_AA, shift=4)
    elif kind == "square":  # the corners themselves, not a scaled unit square: the same pixels as ever
        _fill(img, np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]), color)
    elif kind == "triangle":
        apex = x1 + rng.uniform(0, 1) * (x2 - x1)
        pts = np.array([[x1, y2], [x2, y2], [apex, y1]])
        if rng.uniform() < 0.5:  # upside down as often as upright
            pts = np.array([[x1, y1], [x2, y1], [apex, y2]])
        _fill(img, pts, color)
    elif kind in _UNIT_POLYGONS:
        unit = _UNIT_POLYGONS[kind]
        if kind == "star" and rng.uniform() < 0.5:  # pointing down as often as up
            unit = unit * [1, -1] + [0, 1]
        _fill(img, np.array([x1, y1]) + unit * [w, h], color)
    elif kind == "cross":
        # A plus sign: a horizontal and a vertical bar, each arm a third to a half of the side wide.
        t = rng.uniform(0.3, 0.5)
        _fill(img, np.array([[x1, y1 + h * (1 - t) / 2], [x2, y1 + h * (1 - t) / 2], [x2, y1 + h * (1 + t) / 2], [x1, y1 + h * (1 + t) / 2]]), color)
        _fill(img, np.array([[x1 + w * (1 - t) / 2, y1], [x1 + w * (1 + t) / 2, y1], [x1 + w * (1 + t) / 2, y2], [x1 + w * (1 - t) / 2, y2]]), color)
    elif kind == "ring":
        # An elliptical annulus: cv2 centres the stroke on the ellipse, so its axes are shrunk by half
        # the stroke to keep the outer edge on the box. The hole shows the background through.
        thickness = max(2.0, rng.uniform(0.15, 0.3) * min(w, h))
        center = (int(round((x1 + x2) / 2 * s)), int(round((y1 + y2) / 2 * s)))
        axes = (int(round((w - thickness) / 2 * s)), int(round((h - thickness) / 2 * s)))
        cv2.ellipse(img, center, axes, 0, 0, 360, color, int(round(thickness)), cv2.LINE_AA, shift=4)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; valid: {', '.join(SHAPE_KINDS)}")


def check_classes(classes) -> tuple[str, ...]:
    """``classes`` (names of :data:`SHAPE_KINDS`, in label order) as a tuple. A
    :class:`~plaindet.errors.DatasetError` lists the valid names for an unknown one, and refuses
    duplicates and an empty list."""
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPE_KINDS]
    if unknown:
        raise DatasetError(f"unknown shape class(es) {', '.join(map(repr, unknown))}; valid: {', '.join(SHAPE_KINDS)}")
    if not classes or len(set(classes)) != len(classes):
        raise DatasetError(f"shape classes must be one or more distinct names of {', '.join(SHAPE_KINDS)}, got {list(classes)}")
    return classes


def parse_builtin(spec: str | os.PathLike) -> dict | None:
    """The options of a built-in dataset name, or ``None`` when ``spec`` doesn't name the built-in set.

    ``"shapes"`` gives ``{}``; ``"shapes:classes=star,cross,ring"`` gives ``{"classes": ("star",
    "cross", "ring")}``. Options are ``key=value`` pairs separated by ``;``; the only key is ``classes``
    (comma-separated names of :data:`SHAPE_KINDS`, in label order). Anything else is a
    :class:`~plaindet.errors.DatasetError` saying what is accepted.
    """
    text = str(spec)
    if text == BUILTIN_NAME:
        return {}
    if not text.startswith(BUILTIN_NAME + ":"):
        return None
    options: dict = {}
    for item in filter(None, text[len(BUILTIN_NAME) + 1 :].split(";")):
        key, sep, value = item.partition("=")
        if not sep or key.strip() != "classes":
            raise DatasetError(f"{text!r}: the built-in set takes 'shapes:classes=NAME,NAME,...' (valid names: {', '.join(SHAPE_KINDS)}); got {item!r}")
        options["classes"] = check_classes(c.strip() for c in value.split(",") if c.strip())
    return options


def render(index: int, seed: int = 0, split: str = "train", size: int = 320, classes: tuple[str, ...] = CLASS_NAMES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Make image ``index`` of a split, with objects of ``classes`` (names of :data:`SHAPE_KINDS`).

    Returns:
        image: ``uint8`` ``(size, size, 3)`` RGB.
        boxes: ``float32`` ``(N, 4)`` absolute ``xyxy`` pixels, ``1 <= N <= 6``.
        labels: ``int64`` ``(N,)`` indices into ``classes``.
    """
    classes = check_classes(classes)
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
        cls = int(rng.integers(0, len(classes)))
        # A color that stands out from the background under the box, so every object is visible.
        patch = img[int(y1) : int(np.ceil(y1 + h)), int(x1) : int(np.ceil(x1 + w))].reshape(-1, 3).mean(0)
        for _attempt in range(10):
            color = rng.uniform(0, 255, size=3)
            if np.abs(color - patch).sum() > 150:
                break
        _draw(img, classes[cls], box, tuple(float(c) for c in color), rng)
        boxes.append(box)
        labels.append(cls)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def write_shapes(root: str | Path, num_images: int, *, split: str = "train", seed: int = 0, size: int = 320, classes: tuple[str, ...] = CLASS_NAMES) -> Path:
    """Write ``num_images`` shapes images of ``split`` under ``ROOT/SPLIT/`` in the Roboflow COCO layout.

    Returns the annotation file. Files are written to a temporary name and renamed, so an
    interrupted run never leaves a half-written annotation file that would later be trusted.
    """
    folder = Path(root) / split
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, boxes, labels = render(i, seed=seed, split=split, size=size, classes=classes)
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
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(check_classes(classes))]
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


def ensure_shapes(
    root: str | Path, *, train: int = 1000, val: int = 200, test: int = 0, seed: int = 0, size: int = 320, classes: tuple[str, ...] = CLASS_NAMES
) -> Path:
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
    classes = check_classes(classes)
    if classes != CLASS_NAMES:  # only then: folders written before classes were selectable stay valid
        settings["classes"] = list(classes)
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == settings:
                return root
        except json.JSONDecodeError:
            pass
    for split, n in counts.items():
        if n > 0:
            write_shapes(root, n, split=split, seed=seed, size=size, classes=classes)
    stamp.write_text(json.dumps(settings))
    return root


def builtin_shapes(
    *, train: int = 2000, val: int = 200, test: int = 200, seed: int = 0, folder: str | Path | None = None, classes: tuple[str, ...] = CLASS_NAMES
) -> Path:
    """The folder of the built-in dataset (``--data shapes``, or ``shapes:classes=...``), written on first use.

    By default it lives in ``~/.cache/plaindet/shapes-s{seed}-{train}-{val}-{test}`` (with
    ``-{class}-{class}...`` appended for other classes than the default), so every command that names
    ``shapes`` with the same settings reads the same images.
    """
    classes = check_classes(classes)
    if folder is None:
        suffix = "" if classes == CLASS_NAMES else "-" + "-".join(classes)
        folder = Path.home() / ".cache" / "plaindet" / f"shapes-s{seed}-{train}-{val}-{test}{suffix}"
    return ensure_shapes(folder, train=train, val=val, test=test, seed=seed, classes=classes)

"""COCO JSON: reading into :class:`~plaindet.data.sample.DetectionDataset`, and writing it back.

Where the annotation files are (:func:`find_coco_files`)
--------------------------------------------------------
``path`` may be one ``.json`` file (one split, named after the file: ``instances_val2017.json`` ->
``"val2017"``, ``train/_annotations.coco.json`` -> ``"train"``), or a folder holding
``_annotations.coco.json`` itself, Roboflow's ``train/``, ``valid/``, ``test/`` folders each holding
one, ``annotations/*.json``, or ``*.json``. When a folder holds ``instances_*.json`` files, only those
are read (COCO's ``captions_*`` and ``person_keypoints_*`` files are not detection splits).

Where the images are
--------------------
``file_name`` is absolute, or relative to the first of these folders where the file exists (``D`` is
the JSON's folder, ``S`` the split name):
``D`` (Roboflow: images next to the JSON), ``D/../images/S`` (what ``plaindet data convert`` writes),
``D/../S`` (COCO: ``annotations/`` next to ``val2017/``), ``D/../images``, ``D/..``, ``D/images``.

What is kept
------------
Image ids, category ids (``dataset.category_ids``; contiguous classes follow sorted category id, and
categories without any annotation are kept as classes), ``iscrowd`` and ``area`` (``Sample.areas``,
which decides small/medium/large in COCO metrics). ``bbox`` is ``[x, y, width, height]`` in absolute
pixels. Annotation ids are not kept: evaluation numbers annotations itself, so duplicate annotation
ids are only a warning.

Errors
------
A file that is not valid JSON, lacks ``images``, ``annotations`` or ``categories``, repeats an image
id or a category id, or is larger than :data:`MAX_JSON_BYTES` raises :class:`DatasetError` (the
dataset is ambiguous or unreadable). Everything local to one image or annotation is reported in
``dataset.report`` and that image or annotation is skipped: ``missing_image``, ``unreadable_image``,
``malformed_image_entry``, ``malformed_annotation``, ``unknown_image_id``, ``bad_class_id``,
``degenerate_box``; ``box_clipped``, ``size_mismatch`` and ``duplicate_annotation_id`` are warnings.
"""

from __future__ import annotations

import gc
import json
import os
from collections import Counter
from contextlib import contextmanager
from itertools import chain
from pathlib import Path

import numpy as np

from plaindet.data.images import ImageReadError, image_size
from plaindet.data.rules import CLIP_TOLERANCE, BoxBuilder, image_problem, is_file, is_number, match_split, split_order
from plaindet.data.sample import DetectionDataset, LoadReport, Sample
from plaindet.errors import DatasetError

# Generous: COCO's own instances_train2017.json is 450 MB. Larger files are usually not annotations.
MAX_JSON_BYTES = 2 << 30

ROBOFLOW_FILE = "_annotations.coco.json"


def find_coco_files(path: str | Path) -> dict[str, Path]:
    """``{split name: annotation file}`` for a COCO ``.json`` file or folder (empty when none)."""
    path = Path(path)
    if path.is_file():
        return {_split_name(path): path} if path.suffix.lower() == ".json" else {}
    if not path.is_dir():
        return {}
    if (path / ROBOFLOW_FILE).is_file():
        return {_split_name(path / ROBOFLOW_FILE): path / ROBOFLOW_FILE}
    roboflow = {sub.name: sub / ROBOFLOW_FILE for sub in sorted(path.iterdir()) if (sub / ROBOFLOW_FILE).is_file()}
    if roboflow:
        return roboflow
    for folder in (path / "annotations", path):
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file())
            instances = [p for p in files if p.name.startswith("instances_")]
            if instances or files:
                return {_split_name(p): p for p in instances or files}
    return {}


def _split_name(file: Path) -> str:
    if file.name == ROBOFLOW_FILE:
        return file.parent.name
    stem = file.stem
    return stem[len("instances_") :] if stem.startswith("instances_") else stem


def list_coco_splits(path: str | Path) -> list[str]:
    """The split names of a COCO dataset (see :func:`find_coco_files`), train first."""
    return sorted(find_coco_files(path), key=split_order)


def read_coco_json(file: str | Path) -> dict:
    """Parse a COCO annotation file, checking its size and top-level shape.

    Raises :class:`DatasetError` naming the file (and line and column for a JSON syntax error).
    """
    file = Path(file)
    size = file.stat().st_size
    if size > MAX_JSON_BYTES:
        raise DatasetError(
            f"{file}: {size / 2**30:.1f} GiB is larger than the {MAX_JSON_BYTES / 2**30:.0f} GiB limit for "
            "an annotation file; is this really a COCO annotation file?"
        )
    data = _fast_json(file)
    try:
        if data is None:
            with open(file, encoding="utf-8-sig") as f:  # tolerate a byte-order mark
                data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{file}: line {e.lineno}, column {e.colno}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{file}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except ValueError as e:  # a number of more than 4,300 digits (Python's int-conversion limit)
        raise DatasetError(f"{file}: not a COCO annotation file ({e})") from None
    except RecursionError:
        raise DatasetError(f"{file}: JSON nested too deeply to be a COCO annotation file") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{file}: a COCO file is a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{file}: no {key!r} list; is this a COCO detection file?")
        if not isinstance(data[key], list):
            raise DatasetError(f"{file}: {key!r} must be a list, not {type(data[key]).__name__}")
    return data


def _fast_json(file: Path) -> object | None:
    """The file parsed by orjson (1.7x json's speed on COCO files), or ``None`` when orjson is not
    installed or refuses the file: NaN or Infinity, a byte-order mark, a lone surrogate, nesting
    past 1,024 levels and syntax errors are then parsed (or refused, with the line and column) by
    the standard library as before. Integers past 64 bits come back as floats, which the checks of
    ids and boxes report as they report any float id."""
    try:
        import orjson
    except ImportError:
        return None
    try:
        return orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError:
        return None


def _categories(data: dict, file: Path) -> tuple[list[int], list[str]]:
    """Category ids in increasing order and their names; duplicate or malformed ids are fatal."""
    names: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool):
            raise DatasetError(f"{file}: categories[{i}] needs an integer 'id' (got {cat!r:.80})")
        cid, name = cat["id"], str(cat.get("name", cat["id"]))
        if cid in names:
            raise DatasetError(f"{file}: category id {cid} appears twice ({names[cid]!r} and {name!r})")
        names[cid] = name
    if not names:
        raise DatasetError(f"{file}: the 'categories' list is empty")
    ids = sorted(names)
    return ids, [names[c] for c in ids]


def _image_roots(file: Path, split: str) -> list[Path]:
    here = file.parent
    roots = [
        here,
        here.parent / "images" / split,
        here.parent / split,
        here.parent / "images",
        here.parent,
        here / "images",
    ]
    return list(dict.fromkeys(roots))  # Roboflow's split folder is both here and here.parent / split


def load_coco(path: str | Path, split: str = "train", *, check_images: bool = True) -> DetectionDataset:
    """Read one split of a COCO dataset (see the module docstring for the rules).

    Args:
        path: a COCO ``.json`` file or a folder holding them. A single file (or a folder holding
            ``_annotations.coco.json`` itself) is one split, so ``split`` is not used for it.
        split: split name or alias (``"val"`` finds ``valid`` and ``val2017``).
        check_images: read each image's header (size, readability); ``False`` trusts the JSON's
            ``width`` and ``height`` and only checks that each file exists.
    """
    path = Path(path)
    files = find_coco_files(path)
    if not files:
        raise DatasetError(f"{path}: no COCO annotation file found")
    if path.is_file() or (path / ROBOFLOW_FILE).is_file():
        (split, file), = files.items()
    else:
        split = match_split(split, list(files), path)
        file = files[split]
    with _collector_paused():
        return _load_coco_file(file, split, check_images)


@contextmanager
def _collector_paused():
    """Python's cyclic garbage collector paused while a file's millions of objects are made (JSON
    values, then arrays): none is in a cycle, and the collector's passes over them cost more than
    building them (a 120k-image file: 8.1 s instead of 13.8 s)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_coco_file(file: Path, split: str, check_images: bool) -> DetectionDataset:
    data = read_coco_json(file)
    report = LoadReport()
    category_ids, class_names = _categories(data, file)
    class_of = {cid: k for k, cid in enumerate(category_ids)}

    builders, paths = _read_images(data, file, split, report, check_images)
    samples = _columnar_samples(data, file, builders, paths, class_of, report)
    if samples is None:  # some entry is not plainly typed: check them one by one
        _read_annotations(data, file, builders, class_of, report)
        samples = [b.sample(paths[image_id], image_id) for image_id, b in builders.items() if b is not None]
    return DetectionDataset(
        samples, class_names, category_ids, root=file, split=split, report=report, format="coco"
    )


def _read_images(
    data: dict, file: Path, split: str, report: LoadReport, check_images: bool
) -> tuple[dict[int, BoxBuilder | None], dict[int, Path]]:
    """One :class:`BoxBuilder` per image id (``None`` for an image that was skipped), and its path."""
    builders: dict[int, BoxBuilder | None] = {}
    paths: dict[int, Path] = {}
    names: dict[int, str] = {}
    roots = _image_roots(file, split)
    listings: dict[Path, set[str]] = {}
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or isinstance(img.get("id"), bool):
            report.add("error", "malformed_image_entry", file, where, f"needs an integer 'id'; got {img!r:.100}")
            continue
        image_id, file_name = img["id"], img.get("file_name")
        where = f"image id {image_id}"
        if image_id in names:
            raise DatasetError(
                f"{file}: image id {image_id} is used twice ({names[image_id]!r} and {file_name!r}); "
                "annotations cannot be assigned to an image"
            )
        names[image_id] = str(file_name)
        builders[image_id] = None  # known id, so its annotations are not reported as unknown
        if not isinstance(file_name, str) or not file_name:
            report.add("error", "malformed_image_entry", file, where, f"needs a 'file_name'; got {file_name!r}")
            continue
        image_path = _find_image(file_name, roots, listings)
        if image_path is None:
            tried = ", ".join(str(r) for r in roots)
            report.add("error", "missing_image", file, where, f"image file {file_name!r} not found (looked in {tried})")
            continue
        size = _image_size(img, image_path, file, where, report, check_images)
        if size is None:
            continue
        paths[image_id] = image_path
        builders[image_id] = BoxBuilder(size[0], size[1], report, file)
    return builders, paths


def _find_image(file_name: str, roots: list[Path], listings: dict[Path, set[str]] | None = None) -> Path | None:
    """The image file ``file_name`` names, looked for in ``roots``; a plain name (no folder part) is
    looked up in ``listings``, each root's regular files listed once (a listing per root, filled as
    roots are tried), instead of one ``stat`` per image."""
    name = file_name.replace("\\", "/")  # exports made on Windows may use backslashes
    if listings is not None and "/" not in name and name not in (".", ".."):
        for i, root in enumerate(roots):
            if root not in listings:
                listings[root] = _regular_files(root)
            if name in listings[root]:
                roots.insert(0, roots.pop(i))
                return root / name
        return None
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate if is_file(candidate) else None
    for i, root in enumerate(roots):
        if is_file(root / candidate):
            # Images of one split almost always share a folder: try this one first from now on.
            roots.insert(0, roots.pop(i))
            return root / candidate
    return None


def _regular_files(folder: Path) -> set[str]:
    """Names of the regular files in ``folder`` (following links), empty when it cannot be listed."""
    names = set()
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.is_file():
                        names.add(entry.name)
                except OSError:
                    pass
    except (OSError, ValueError):
        pass
    return names


def _image_size(
    img: dict, image_path: Path, file: Path, where: str, report: LoadReport, check_images: bool
) -> tuple[int, int] | None:
    """The image's displayed size, or ``None`` (reported) when it cannot be used."""
    w, h = img.get("width"), img.get("height")
    stored = (w, h) if is_number(w) and is_number(h) and w > 0 and h > 0 else None
    if stored is not None and not check_images:
        return int(w), int(h)
    try:
        actual = image_size(image_path)
    except ImageReadError as e:
        reason = image_problem(e, image_path)
        report.add("error", "unreadable_image", image_path, "", f"{reason} ({where} in {file.name}); image skipped")
        return None
    if stored is not None and (int(w), int(h)) != actual:
        report.add(
            "warning", "size_mismatch", file, where,
            f"JSON says {int(w)}x{int(h)} but {image_path.name} is {actual[0]}x{actual[1]} as displayed "
            "(after EXIF orientation); using the image's size",
        )
    return actual


def _columnar_samples(
    data: dict, file: Path, builders: dict[int, BoxBuilder | None], paths: dict[int, Path], class_of: dict[int, int], report: LoadReport
) -> list[Sample] | None:
    """The samples of a file whose annotations are all plainly typed, checked as arrays; ``None``
    when some entry is not (then :func:`_read_annotations` checks them one by one).

    Plainly typed: every annotation a dict with integer ``image_id`` and ``category_id``, a ``bbox``
    list of 4 finite ints or floats, ``area`` absent or a finite number >= 0, ``iscrowd`` absent, 0
    or 1, and no annotation id used twice. The result, reports included and in the same order, is
    what :func:`_read_annotations` gives (a test holds the two paths equal): the box rules run on all
    boxes at once, and the few annotations that need a report (unknown image or class, a box clipped
    or dropped) go through the one-by-one checks, in file order, for their messages.
    """
    anns = data["annotations"]
    if not set(map(type, anns)) <= {dict}:
        return None
    try:
        image_ids = [a["image_id"] for a in anns]
        category_ids = [a["category_id"] for a in anns]
        bboxes = [a["bbox"] for a in anns]
    except KeyError:
        return None
    areas = [a.get("area") for a in anns]
    crowds = [a.get("iscrowd", 0) for a in anns]
    ann_ids = [i for i in (a.get("id") for a in anns) if isinstance(i, (int, str))]
    plain = (
        set(map(type, image_ids)) <= {int} and set(map(type, category_ids)) <= {int}
        and set(map(type, bboxes)) <= {list} and set(map(len, bboxes)) <= {4}
        and set(map(type, chain.from_iterable(bboxes))) <= {int, float}
        and set(map(type, areas)) <= {int, float, type(None)}
        and set(map(type, crowds)) <= {int, bool} and set(crowds) <= {0, 1}
        and len(set(ann_ids)) == len(ann_ids)
    )  # fmt: skip
    if not plain:
        return None
    given = np.array([a is not None for a in areas], dtype=bool)
    try:
        xywh = np.array(bboxes, dtype=np.float64).reshape(-1, 4)
        area = np.array([np.nan if a is None else a for a in areas], dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        return None
    if not (np.isfinite(xywh).all() and np.isfinite(area[given]).all() and (area[given] >= 0).all()):
        return None

    order_of = {image_id: k for k, image_id in enumerate(builders)}
    kept_images = [(image_id, b) for image_id, b in builders.items()]
    image = np.array([order_of.get(i, -1) for i in image_ids], dtype=np.int64)
    label = np.array([class_of.get(c, -1) for c in category_ids], dtype=np.int64)
    skipped = np.array([b is None for _, b in kept_images] + [True], dtype=bool)  # [-1]: unknown image
    width = np.array([b.width if b is not None else 0 for _, b in kept_images] + [0], dtype=np.float64)[image]
    height = np.array([b.height if b is not None else 0 for _, b in kept_images] + [0], dtype=np.float64)[image]

    x1, y1 = xywh[:, 0], xywh[:, 1]
    x2, y2 = x1 + xywh[:, 2], y1 + xywh[:, 3]
    clipped = np.stack(
        [np.minimum(np.maximum(x1, 0.0), width), np.minimum(np.maximum(y1, 0.0), height),
         np.minimum(np.maximum(x2, 0.0), width), np.minimum(np.maximum(y2, 0.0), height)], axis=1,
    ).astype(np.float32)  # fmt: skip
    degenerate = (x2 <= x1) | (y2 <= y1) | ~(clipped[:, 2] > clipped[:, 0]) | ~(clipped[:, 3] > clipped[:, 1])
    overhang = np.max(np.stack([-x1, -y1, x2 - width, y2 - height]), axis=0) > CLIP_TOLERANCE
    live = (image >= 0) & (label >= 0) & ~skipped[image]
    reported = (image < 0) | ((image >= 0) & (label < 0)) | (live & (degenerate | overhang))
    for i in np.flatnonzero(reported).tolist():
        _check_annotation(i, anns[i], file, builders, class_of, report, Counter())

    rows = np.flatnonzero(live & ~degenerate)
    rows = rows[np.argsort(image[rows], kind="stable")]
    boxes, labels, crowd = clipped[rows], label[rows], np.array(crowds, dtype=bool).reshape(-1)[rows]
    box_area = (boxes[:, 2] - boxes[:, 0]).astype(np.float64) * (boxes[:, 3] - boxes[:, 1])
    filled = np.where(given[rows], area[rows], box_area)
    counts = np.bincount(image[rows], minlength=len(kept_images))
    has_area = np.bincount(image[rows], weights=given[rows], minlength=len(kept_images)) > 0
    ends = np.cumsum(counts).tolist()
    samples = []
    for k, (image_id, builder) in enumerate(kept_images):
        if builder is None:
            continue
        s, e = ends[k] - counts[k], ends[k]
        samples.append(
            Sample(paths[image_id], builder.width, builder.height, boxes[s:e], labels[s:e], image_id, crowd[s:e], filled[s:e] if has_area[k] else None)
        )  # fmt: skip
    return samples


def _read_annotations(
    data: dict, file: Path, builders: dict[int, BoxBuilder | None], class_of: dict[int, int], report: LoadReport
) -> None:
    seen_ids: Counter = Counter()
    for i, ann in enumerate(data["annotations"]):
        _check_annotation(i, ann, file, builders, class_of, report, seen_ids)


def _check_annotation(
    i: int, ann: object, file: Path, builders: dict[int, BoxBuilder | None], class_of: dict[int, int], report: LoadReport, seen_ids: Counter
) -> None:
    """Check annotation ``i`` (reporting what is wrong) and add its box to its image's builder."""
    if not isinstance(ann, dict):
        report.add("error", "malformed_annotation", file, f"annotations[{i}]", f"not an object: {ann!r:.80}")
        return
    ann_id = ann.get("id")
    where = f"annotation id {ann_id}" if ann_id is not None else f"annotations[{i}]"
    if isinstance(ann_id, (int, str)):
        seen_ids[ann_id] += 1
        if seen_ids[ann_id] == 2:
            report.add(
                "warning", "duplicate_annotation_id", file, where,
                f"annotation id {ann_id!r} is used more than once; all are kept",
            )
    image_id, category_id, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
    if type(image_id) is not int or type(category_id) is not int:
        message = f"'image_id' and 'category_id' must be integers, got {image_id!r:.40} and {category_id!r:.40}"
        report.add("error", "malformed_annotation", file, where, message)
        return
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        message = f"'bbox' must be 4 finite numbers, got {bbox!r:.80}"
        report.add("error", "malformed_annotation", file, where, message)
        return
    area = ann.get("area")
    if area is not None and not (is_number(area) and area >= 0):
        report.add("error", "malformed_annotation", file, where, f"'area' must be a number >= 0, got {area!r:.40}")
        return
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):  # True and False compare equal to 1 and 0
        report.add("error", "malformed_annotation", file, where, f"'iscrowd' must be 0 or 1, got {crowd!r:.40}")
        return
    if image_id not in builders:
        message = f"image_id {image_id!r} is not in 'images'; box dropped"
        report.add("error", "unknown_image_id", file, where, message)
        return
    if category_id not in class_of:
        report.add(
            "error", "bad_class_id", file, where,
            f"category_id {category_id!r} is not in 'categories'; box dropped",
        )
        return
    builder = builders[image_id]
    if builder is None:
        return  # its image was skipped, which is already reported
    x, y, w, h = (float(v) for v in bbox)
    builder.add(x, y, x + w, y + h, class_of[category_id], where=where, crowd=bool(crowd), area=area)


# --- writing ---------------------------------------------------------------------------------------


def coco_dict(dataset: DetectionDataset, file_names: list[str] | None = None) -> dict:
    """The COCO object of ``dataset``: the one place a dataset becomes COCO (written by ``data convert``,
    read by the evaluator as ground truth).

    - ``images``: every sample (with or without boxes) with its own ``image_id``, ``width``, ``height``
      and ``file_names[i]`` (default: the image file's name).
    - ``categories``: every class, ``{"id": dataset.category_ids[k], "name": dataset.class_names[k]}``,
      including classes without a single box (COCO counts them: their AP is undefined, not 0).
    - ``annotations``: ``bbox`` ``[x, y, w, h]`` from the ``xyxy`` boxes, each value the shortest
      decimal that reads back as the sample's ``float32`` (a box read from a
      COCO file with two decimals is written, and evaluated, with the same two decimals); ``area``
      from ``Sample.areas`` when the dataset has them (COCO's segmentation areas, which decide
      small/medium/large) else the box area; ``iscrowd`` 0/1; ids renumbered ``1..N``.

    Raises:
        DatasetError: duplicate image ids or category ids, or a label outside the class list.
    """
    samples = dataset.samples
    names = [s.image_path.name for s in samples] if file_names is None else list(file_names)
    if len(names) != len(samples):
        raise ValueError(f"{len(names)} file names for {len(samples)} images")
    category_ids = [int(c) for c in dataset.category_ids]
    if len(set(category_ids)) != len(category_ids):
        raise DatasetError(f"dataset category_ids are not unique: {category_ids}")
    lookup = np.asarray(category_ids, dtype=np.int64)
    # Shortest float32 decimals for every box at once (numpy's float32 -> str is the shortest repr).
    all_boxes = np.concatenate([s.boxes.reshape(-1, 4) for s in samples]) if samples else np.zeros((0, 4), np.float32)
    xywh = np.concatenate([all_boxes[:, :2], all_boxes[:, 2:] - all_boxes[:, :2]], axis=1).astype(np.float32)
    xywh = xywh.astype(str).astype(np.float64).tolist()

    images, annotations = [], []
    seen: set[int] = set()
    offset = 0
    for sample, file_name in zip(samples, names):
        image_id = int(sample.image_id)
        if image_id in seen:
            raise DatasetError(f"{sample.image_path}: image_id {image_id} is used by more than one image")
        seen.add(image_id)
        images.append({"id": image_id, "file_name": file_name, "width": int(sample.width), "height": int(sample.height)})
        n = len(sample.labels)
        if n == 0:
            continue
        bad = (sample.labels < 0) | (sample.labels >= len(category_ids))
        if bad.any():
            raise DatasetError(f"{sample.image_path}: label {int(sample.labels[bad][0])} outside the {len(category_ids)} classes")
        boxes = xywh[offset : offset + n]
        offset += n
        areas = sample.areas.tolist() if sample.areas is not None else [w * h for _, _, w, h in boxes]
        for bbox, area, cat, crowd in zip(boxes, areas, lookup[sample.labels].tolist(), sample.iscrowd.tolist()):
            # Ids are renumbered 1..N whatever the dataset used. pycocotools (and the C++ port in
            # faster-coco-eval) records a match by storing the matched ground-truth id in `dtm`, and
            # counts true positives as `dtm & ~dtIg`: an id of 0 reads as "unmatched". Datasets whose
            # annotation ids start at 0 (Roboflow exports do) would silently turn that true positive
            # into a false positive and lower AP.
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": area, "iscrowd": int(crowd)}
            )
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in zip(category_ids, dataset.class_names)]
    info = {"description": f"{dataset.split} split, written by plaindet"}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def write_coco_json(data: dict, file: Path) -> None:
    """Write a COCO object as compact JSON (one image or annotation per line keeps diffs readable)."""
    lines = ["{"]
    for n, key in enumerate(("info", "categories", "images", "annotations")):
        items = data[key]
        end = "," if n < 3 else ""
        if isinstance(items, list):
            body = ",\n".join("    " + json.dumps(item, ensure_ascii=False) for item in items)
            lines.append(f'  "{key}": [\n{body}\n  ]{end}' if items else f'  "{key}": []{end}')
        else:
            lines.append(f'  "{key}": {json.dumps(items, ensure_ascii=False)}{end}')
    lines.append("}")
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")

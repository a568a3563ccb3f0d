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

import json
from collections import Counter
from pathlib import Path

import numpy as np

from plaindet.data.formats import BoxBuilder, image_problem, is_number, match_split, split_order
from plaindet.data.images import ImageReadError, image_size
from plaindet.data.sample import DatasetError, DetectionDataset, LoadReport

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
    try:
        with open(file, encoding="utf-8-sig") as f:  # tolerate a byte-order mark
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{file}: line {e.lineno}, column {e.colno}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{file}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{file}: a COCO file is a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{file}: no {key!r} list; is this a COCO detection file?")
        if not isinstance(data[key], list):
            raise DatasetError(f"{file}: {key!r} must be a list, not {type(data[key]).__name__}")
    return data


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
    data = read_coco_json(file)
    report = LoadReport()
    category_ids, class_names = _categories(data, file)
    class_of = {cid: k for k, cid in enumerate(category_ids)}

    builders, paths = _read_images(data, file, split, report, check_images)
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
        image_path = _find_image(file_name, roots)
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


def _find_image(file_name: str, roots: list[Path]) -> Path | None:
    candidate = Path(file_name.replace("\\", "/"))  # exports made on Windows may use backslashes
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for i, root in enumerate(roots):
        if (root / candidate).is_file():
            # Images of one split almost always share a folder: try this one first from now on.
            roots.insert(0, roots.pop(i))
            return root / candidate
    return None


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


def _read_annotations(
    data: dict, file: Path, builders: dict[int, BoxBuilder | None], class_of: dict[int, int], report: LoadReport
) -> None:
    seen_ids: Counter = Counter()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            report.add("error", "malformed_annotation", file, f"annotations[{i}]", f"not an object: {ann!r:.80}")
            continue
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
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
            message = f"'bbox' must be 4 finite numbers, got {bbox!r:.80}"
            report.add("error", "malformed_annotation", file, where, message)
            continue
        area = ann.get("area")
        if area is not None and not (is_number(area) and area >= 0):
            report.add("error", "malformed_annotation", file, where, f"'area' must be a number >= 0, got {area!r:.40}")
            continue
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):  # True and False compare equal to 1 and 0
            report.add("error", "malformed_annotation", file, where, f"'iscrowd' must be 0 or 1, got {crowd!r:.40}")
            continue
        if image_id not in builders:
            message = f"image_id {image_id!r} is not in 'images'; box dropped"
            report.add("error", "unknown_image_id", file, where, message)
            continue
        if category_id not in class_of:
            report.add(
                "error", "bad_class_id", file, where,
                f"category_id {category_id!r} is not in 'categories'; box dropped",
            )
            continue
        builder = builders[image_id]
        if builder is None:
            continue  # its image was skipped, which is already reported
        x, y, w, h = (float(v) for v in bbox)
        builder.add(x, y, x + w, y + h, class_of[category_id], where=where, crowd=bool(crowd), area=area)


# --- writing ---------------------------------------------------------------------------------------


def short_float(value: float) -> float:
    """``value`` rounded to the shortest decimal that reads back as the same ``float32``.

    Samples hold ``float32`` boxes; writing the shortest such decimal keeps files readable
    (``12.3``, not ``12.300000190734863``) and loses nothing at ``float32`` precision.
    """
    return float(str(np.float32(value)))


def coco_dict(dataset: DetectionDataset, file_names: list[str]) -> dict:
    """The COCO JSON object for ``dataset``; ``file_names[i]`` is written for ``dataset[i]``.

    Keeps image ids, category ids and names, ``iscrowd`` and areas; annotations are numbered from 1.
    """
    images, annotations = [], []
    for sample, file_name in zip(dataset.samples, file_names, strict=True):
        size = {"width": int(sample.width), "height": int(sample.height)}
        images.append({"id": int(sample.image_id), "file_name": file_name, **size})
        for j, (box, label) in enumerate(zip(sample.boxes, sample.labels)):
            x1, y1, x2, y2 = (float(v) for v in box)
            area = float(sample.areas[j]) if sample.areas is not None else (x2 - x1) * (y2 - y1)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": int(sample.image_id),
                "category_id": int(dataset.category_ids[label]),
                "bbox": [short_float(x1), short_float(y1), short_float(x2 - x1), short_float(y2 - y1)],
                "area": short_float(area),
                "iscrowd": int(sample.iscrowd[j]),
            })
    categories = [
        {"id": int(cid), "name": name, "supercategory": ""}
        for cid, name in zip(dataset.category_ids, dataset.class_names)
    ]
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

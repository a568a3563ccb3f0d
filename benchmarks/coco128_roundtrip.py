"""Round-trip check of ``plaindet data convert`` on coco128: YOLO -> COCO -> YOLO -> COCO.

Compares every label line of the original YOLO label files with the label files written after the
round trip (class ids equal; box numbers as differences in normalized units, i.e. fractions of the
image size), and the two COCO files (image ids, category ids, boxes in pixels). Prints a table.

    python benchmarks/coco128_roundtrip.py [path/to/config.yaml]

The default path is the shared coco128 copy (``../shared/data/coco128`` next to the repository).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from plaindet.data.convert import convert_dataset

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "object_detection" / "config.yaml"


def read_labels(folder: Path) -> dict[str, np.ndarray]:
    """``{stem: array (N, 5)}`` of a YOLO labels folder (class, cx, cy, w, h), lines in file order."""
    labels = {}
    for file in sorted(folder.glob("*.txt")):
        rows = [line.split() for line in file.read_text().splitlines() if line.strip()]
        labels[file.stem] = np.array(rows, dtype=np.float64).reshape(-1, 5)
    return labels


def compare_yolo(original: dict[str, np.ndarray], final: dict[str, np.ndarray], images: set[str]) -> dict:
    """Compare the label files of the images that exist (orphan label files have no image to convert)."""
    boxes = class_mismatch = count_mismatch = 0
    max_abs = 0.0
    for stem in sorted(images):
        a, b = original.get(stem, np.zeros((0, 5))), final.get(stem, np.zeros((0, 5)))
        if len(a) != len(b):
            count_mismatch += 1
            continue
        boxes += len(a)
        class_mismatch += int((a[:, 0] != b[:, 0]).sum())
        if len(a):
            max_abs = max(max_abs, float(np.abs(a[:, 1:] - b[:, 1:]).max()))
    return {"images": len(images), "boxes": boxes, "class": class_mismatch, "count": count_mismatch, "max": max_abs}


def compare_coco(first: Path, second: Path) -> dict:
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    ids_a = {img["id"]: img["file_name"] for img in a["images"]}
    ids_b = {img["id"]: img["file_name"] for img in b["images"]}
    key = lambda ann: (ann["image_id"], ann["id"])  # noqa: E731
    anns_a, anns_b = sorted(a["annotations"], key=key), sorted(b["annotations"], key=key)
    same_len = len(anns_a) == len(anns_b)
    boxes_a = np.array([ann["bbox"] for ann in anns_a]).reshape(-1, 4)
    boxes_b = np.array([ann["bbox"] for ann in anns_b]).reshape(-1, 4)
    return {
        "images": len(ids_a),
        "boxes": len(anns_a),
        "ids": ids_a == ids_b,
        "class": sum(x["category_id"] != y["category_id"] for x, y in zip(anns_a, anns_b)) if same_len else -1,
        "max_px": float(np.abs(boxes_a - boxes_b).max()) if same_len and len(boxes_a) else float("nan"),
    }


def main() -> None:
    config = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not config.exists():
        sys.exit(f"{config}: not found (pass the coco128 config.yaml as the first argument)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        convert_dataset(config, "coco", tmp / "coco")
        convert_dataset(tmp / "coco", "yolo", tmp / "yolo")
        convert_dataset(tmp / "yolo", "coco", tmp / "coco2")
        seconds = time.perf_counter() - t0

        print(f"coco128 round trip YOLO -> COCO -> YOLO -> COCO ({seconds:.2f} s for three conversions)")
        print(f"{'split':<6} {'check':<18} {'images':>6} {'boxes':>6} {'class diff':>10} {'count diff':>10} {'max diff':>12}")
        for split, source in (("train", "train2017"), ("val", "val2017")):
            original = read_labels(config.parent / "labels" / source)
            images = {p.stem for p in (tmp / "yolo" / "images" / split).iterdir()}
            y = compare_yolo(original, read_labels(tmp / "yolo" / "labels" / split), images)
            print(
                f"{split:<6} {'YOLO labels':<18} {y['images']:>6} {y['boxes']:>6} {y['class']:>10} {y['count']:>10} "
                f"{y['max']:>12.2e}  (normalized units)"
            )
            c = compare_coco(tmp / "coco" / "annotations" / f"{split}.json", tmp / "coco2" / "annotations" / f"{split}.json")
            print(
                f"{split:<6} {'COCO annotations':<18} {c['images']:>6} {c['boxes']:>6} {c['class']:>10} "
                f"{'ids same' if c['ids'] else 'IDS DIFFER':>10} {c['max_px']:>12.2e}  (px)"
            )


if __name__ == "__main__":
    main()

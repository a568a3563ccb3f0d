"""COCO results, the one format of predictions: reading a results file and validating its entries.

A result is one predicted box, in the dataset's own ids::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}

``bbox`` is absolute pixels of the displayed image. The evaluator (:mod:`plaindet.engine.evaluate`)
and the label audit (:mod:`plaindet.data.audit`) read predictions through this module, so both accept
and reject the same files.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from plaindet.errors import UserError


# The exact-type checks first are a fast path: JSON gives plain int/float, and the ABC isinstance
# checks that accept numpy scalars cost about a microsecond each, a third of the time on 100k results.
def _number(value: object) -> bool:
    kind = type(value)
    return kind is float or kind is int or (isinstance(value, numbers.Real) and kind is not bool)


def _integer(value: object) -> bool:
    kind = type(value)
    return kind is int or (isinstance(value, numbers.Integral) and kind is not bool)


def coco_results(predictions: Sequence[Mapping], image_ids: set[int], category_ids: set[int]) -> list[dict]:
    """Validate COCO results and return them as result annotations for ``COCO()``.

    Each output dict is a new one (the caller's dicts are not modified, unlike ``COCO.loadRes``):
    ``id`` (1-based position), ``image_id``, ``category_id``, ``bbox`` ``[x, y, w, h]`` floats,
    ``area = w * h`` (exactly what ``loadRes`` computes; it decides the area range of a detection),
    ``score`` and ``iscrowd = 0``.

    Raises:
        ValueError: naming the first bad entry by position and what is wrong with it: not a dict, a
            missing key, an image or category id the dataset does not have, a bbox that is not four
            finite numbers, a negative width or height, a non-finite score.
    """
    if isinstance(predictions, (str, bytes, Mapping)) or not isinstance(predictions, Sequence):
        raise ValueError(f"predictions must be a list of result dicts, got {type(predictions).__name__}")
    results: list[dict] = []
    for i, pred in enumerate(predictions):
        where = f"prediction {i}"
        if type(pred) is not dict and not isinstance(pred, Mapping):
            raise ValueError(f"{where}: expected a dict with image_id, category_id, bbox, score; got {pred!r:.80}")
        missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in pred]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)} in {dict(pred)!r:.120}")
        image_id, category_id, bbox, score = pred["image_id"], pred["category_id"], pred["bbox"], pred["score"]
        if not _integer(image_id) or int(image_id) not in image_ids:
            raise ValueError(f"{where}: image_id {image_id!r} is not an image id of the dataset")
        if not _integer(category_id) or int(category_id) not in category_ids:
            raise ValueError(
                f"{where}: category_id {category_id!r} is not a category id of the dataset "
                f"(valid: {sorted(category_ids)!r:.120})"
            )
        if isinstance(bbox, np.ndarray) and bbox.ndim == 1:
            bbox = bbox.tolist()
        if type(bbox) not in (list, tuple) and (isinstance(bbox, (str, bytes)) or not isinstance(bbox, Sequence)):
            raise ValueError(f"{where}: bbox must be [x, y, w, h] (4 numbers), got {bbox!r:.80}")
        if len(bbox) != 4:
            raise ValueError(f"{where}: bbox must be [x, y, w, h] (4 numbers), got {bbox!r:.80}")
        if not all(map(_number, bbox)):
            raise ValueError(f"{where}: bbox must be 4 finite numbers, got {bbox!r:.80}")
        x, y, w, h = map(float, bbox)
        if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h)):
            raise ValueError(f"{where}: bbox must be 4 finite numbers, got {bbox!r:.80}")
        if w < 0 or h < 0:
            raise ValueError(f"{where}: bbox width and height must be >= 0, got {bbox!r:.80} ([x, y, w, h], not xyxy?)")
        if not _number(score) or not math.isfinite(score):
            raise ValueError(f"{where}: score must be a finite number, got {score!r:.40}")
        results.append(
            {
                "id": i + 1,
                "image_id": int(image_id),
                "category_id": int(category_id),
                "bbox": [x, y, w, h],
                "area": w * h,
                "score": float(score),
                "iscrowd": 0,
            }
        )
    return results


def read_predictions(path: str | Path) -> list:
    """Read a COCO results JSON file: a list of ``{image_id, category_id, bbox, score}`` dicts.

    Raises:
        UserError: naming the file: missing, not valid JSON (with line and column), or not a list.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"{path}: cannot read predictions: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    if isinstance(data, dict):
        hint = " (this looks like a ground-truth file)" if "annotations" in data else ""
        raise UserError(f"{path}: expected a JSON list of COCO results, got an object{hint}")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of COCO results, got {type(data).__name__}")
    return data

"""Rules every dataset reader shares: split names and the box contract. Imports no reader.

Split names
-----------
Datasets name their splits their own way (``"valid"`` in a Roboflow export, ``"val2017"`` for
``instances_val2017.json``). :func:`match_split` accepts those names and also their common aliases:
``"val"``, ``"valid"`` and ``"validation"`` mean the same split, and a name may leave out a trailing
year (``"val"`` finds ``"val2017"``) when that is unambiguous.

Box rules (:class:`BoxBuilder`)
-------------------------------
- A box reaching outside the image is clipped to it, with a ``box_clipped`` warning. Overhangs up to
  :data:`CLIP_TOLERANCE` px are rounding noise (normalized YOLO coordinates written with 6 digits, COCO
  boxes with 2 decimals) and are clipped without a warning.
- A box with zero or negative width or height after clipping (in ``float32``, the precision samples
  keep) is dropped with a ``degenerate_box`` error.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from plaindet.data.sample import LoadReport, Sample
from plaindet.errors import DatasetError

# Box overhangs up to this many pixels are rounding, not labeling mistakes: clipped silently.
CLIP_TOLERANCE = 0.5

_VAL_ALIASES = {"val", "valid", "validation"}
_YEAR = re.compile(r"[-_]?\d{4}$")


def canonical_split(name: str) -> str:
    """A split name reduced for matching: lower case, ``valid``/``validation`` -> ``val``, no year."""
    name = name.lower()
    name = _YEAR.sub("", name) or name
    return "val" if name in _VAL_ALIASES else name


def split_order(name: str) -> tuple[int, str]:
    """Sort key putting train first, then validation, then test, then the rest alphabetically."""
    rank = {"train": 0, "val": 1, "test": 2}.get(canonical_split(name), 3)
    return rank, name


def match_split(requested: str, available: list[str], where: str | Path) -> str:
    """The name in ``available`` that ``requested`` means (exactly, or by :func:`canonical_split`).

    Raises :class:`DatasetError` naming ``where`` and the available splits when none or several match.
    """
    if requested in available:
        return requested
    matches = [name for name in available if canonical_split(name) == canonical_split(requested)]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(available) if available else "none"
    if matches:
        raise DatasetError(f"{where}: split {requested!r} is ambiguous: it could be {', '.join(matches)}")
    raise DatasetError(f"{where}: no split {requested!r}; splits found: {listed}")


class BoxBuilder:
    """Collects one image's boxes while enforcing the :class:`Sample` contract.

    Boxes are clipped to the image (warning ``box_clipped`` beyond :data:`CLIP_TOLERANCE`) and those
    left with no area are dropped (error ``degenerate_box``); each problem is reported with ``file``
    and the ``where`` given for the box (``"line 3"``, ``"annotation id 17"``).
    """

    def __init__(self, width: int, height: int, report: LoadReport, file: str | Path) -> None:
        self.width, self.height = width, height
        self.report, self.file = report, str(file)
        self._boxes: list[tuple[float, float, float, float]] = []
        self._labels: list[int] = []
        self._crowd: list[bool] = []
        self._areas: list[float] = []  # NaN where the dataset gave no area

    def add(
        self,
        x1: float,
        y1: float,
        x2: float,
        y2: float,
        label: int,
        *,
        where: str,
        crowd: bool = False,
        area: float | None = None,
    ) -> bool:
        """Add the box ``x1, y1, x2, y2`` (absolute pixels); returns whether it was kept."""
        if x2 <= x1 or y2 <= y1:
            self.report.add(
                "error", "degenerate_box", self.file, where,
                f"box {_fmt_box(x1, y1, x2, y2)} has no area (width {x2 - x1:g}, height {y2 - y1:g}); dropped",
            )
            return False
        cx1, cy1 = min(max(x1, 0.0), self.width), min(max(y1, 0.0), self.height)
        cx2, cy2 = min(max(x2, 0.0), self.width), min(max(y2, 0.0), self.height)
        box32 = np.array([cx1, cy1, cx2, cy2], dtype=np.float32)
        # The contract is x1 < x2 in float32, which a sliver of a box can fail after rounding.
        if not (box32[2] > box32[0] and box32[3] > box32[1]):
            self.report.add(
                "error", "degenerate_box", self.file, where,
                f"box {_fmt_box(x1, y1, x2, y2)} lies outside the {self.width}x{self.height} image "
                "(nothing left after clipping); dropped",
            )
            return False
        overhang = max(-x1, -y1, x2 - self.width, y2 - self.height)
        if overhang > CLIP_TOLERANCE:
            self.report.add(
                "warning", "box_clipped", self.file, where,
                f"box {_fmt_box(x1, y1, x2, y2)} reaches outside the {self.width}x{self.height} image; "
                f"clipped to {_fmt_box(*box32.tolist())}",
            )
        self._boxes.append(tuple(box32.tolist()))
        self._labels.append(int(label))
        self._crowd.append(bool(crowd))
        self._areas.append(math.nan if area is None else float(area))
        return True

    def __len__(self) -> int:
        return len(self._boxes)

    def sample(self, image_path: str | Path, image_id: int) -> Sample:
        """The :class:`Sample` holding the boxes kept so far.

        ``areas`` is ``None`` when no box came with a dataset area; boxes without one get their box area.
        """
        boxes = np.array(self._boxes, dtype=np.float32).reshape(-1, 4)
        areas = None
        given = np.array(self._areas, dtype=np.float64)
        if len(given) and not np.isnan(given).all():
            box_area = (boxes[:, 2] - boxes[:, 0]).astype(np.float64) * (boxes[:, 3] - boxes[:, 1])
            areas = np.where(np.isnan(given), box_area, given)
        return Sample(
            image_path=Path(image_path),
            width=self.width,
            height=self.height,
            boxes=boxes,
            labels=np.array(self._labels, dtype=np.int64),
            image_id=image_id,
            iscrowd=np.array(self._crowd, dtype=bool),
            areas=areas,
        )


def _fmt_box(x1: float, y1: float, x2: float, y2: float) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in (x1, y1, x2, y2)) + "]"


def image_problem(error: Exception, path: str | Path) -> str:
    """The reason in an :class:`ImageReadError` message, without the path it starts with.

    Problems already name the file in their ``file`` field; this keeps it from appearing twice.
    """
    return str(error).removeprefix(f"{path}: ")


def is_number(value: object) -> bool:
    """A finite int or float from parsed JSON/YAML (``bool`` is not a number here)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (JSON and YAML integers have no bound)
        return False


def is_file(path: Path) -> bool:
    """``path.is_file()`` for a path built from a dataset's contents, which may be a name no file
    system holds (longer than its limit, say): ``False`` rather than the ``OSError``."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False

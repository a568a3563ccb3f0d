"""The one internal sample format every dataset reader produces.

A dataset, whatever its format on disk (COCO JSON, YOLO, Pascal VOC, the built-in shapes), is read
into a :class:`DetectionDataset`: a list of :class:`Sample` records plus the class list.

Sample contract
---------------
- ``image_path``: the image file. Pixels are read lazily, only when the sample is used.
- ``width``, ``height``: size of the image *as displayed*, i.e. after its EXIF orientation is applied.
- ``boxes``: ``float32`` array ``(N, 4)``, absolute ``x1, y1, x2, y2`` pixels of the displayed image,
  ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height`` (readers clip and drop, and count it).
- ``labels``: ``int64`` array ``(N,)`` of contiguous class indices in ``[0, len(class_names))``.
- ``iscrowd``: ``bool`` array ``(N,)``; crowd regions (COCO ``iscrowd=1``) are kept for evaluation,
  where they are ignored regions, and skipped as training targets.
- ``areas``: ``float32`` array ``(N,)`` or ``None``; the dataset's own object areas (COCO stores
  segmentation areas, which decide small/medium/large in COCO metrics). ``None`` means box areas.
- ``image_id``: the dataset's own image id (COCO), or the position of the image in sorted file order
  (formats without ids: YOLO, VOC, shapes).

EXIF orientation rule: labels are taken to be drawn on the image as a viewer displays it, i.e. after
its EXIF orientation tag is applied (what browsers, labeling tools and Ultralytics do). Readers report
sizes after orientation and :func:`plaindet.data.images.read_image` returns the oriented pixels, so
boxes and pixels always agree.

The dataset keeps ``category_ids[k]``, the dataset's own category id of contiguous class ``k``, so
predictions can be written back with the dataset's ids.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Sample:
    """One image and its labeled boxes (see the module docstring for the contract)."""

    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    iscrowd: np.ndarray | None = None
    areas: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image_path, Path):  # a reader's Path is kept: parsing it again cost 15 us a sample
            self.image_path = Path(self.image_path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.iscrowd is None:
            self.iscrowd = np.zeros(len(self.labels), dtype=bool)
        self.iscrowd = np.asarray(self.iscrowd, dtype=bool).reshape(-1)
        if self.areas is not None:
            self.areas = np.asarray(self.areas, dtype=np.float32).reshape(-1)
        n = len(self.boxes)
        if len(self.labels) != n or len(self.iscrowd) != n or (self.areas is not None and len(self.areas) != n):
            raise ValueError(f"{self.image_path}: boxes, labels, iscrowd and areas must have the same length")


@dataclass
class Problem:
    """One thing wrong with a dataset, located precisely enough to fix it.

    ``severity`` is ``"error"`` (data was lost or is unusable: a missing image, a class id outside the
    class list), ``"warning"`` (data was repaired: a box clipped to the image) or ``"info"`` (worth
    knowing, nothing lost: a YOLO image without a label file is an image without objects). ``where`` is a line
    number (``"line 12"``) or an id (``"annotation id 7"``), or ``""`` when the whole file is meant.
    """

    severity: str
    kind: str
    file: str
    where: str
    message: str

    def __str__(self) -> str:
        loc = f"{self.file}:{self.where}" if self.where else self.file
        return f"{self.severity}: {loc}: {self.message}"


@dataclass
class LoadReport:
    """Everything a reader repaired or skipped, so nothing is dropped silently.

    ``counts`` tallies problems by kind (``"missing_image"``, ``"box_clipped"``, ...); ``problems``
    keeps each one with its location.
    """

    problems: list[Problem] = field(default_factory=list)

    def add(self, severity: str, kind: str, file: str | Path, where: str, message: str) -> None:
        self.problems.append(Problem(severity, kind, str(file), where, message))

    @property
    def counts(self) -> Counter:
        return Counter(p.kind for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def extend(self, other: LoadReport) -> None:
        self.problems.extend(other.problems)

    def summary(self) -> str:
        if not self.problems:
            return "no problems"
        return ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(self.counts.items()))


class DetectionDataset:
    """A list of :class:`Sample` with its class list; indexing returns the sample (no pixels).

    Attributes:
        samples: the images and their boxes.
        class_names: ``class_names[k]`` names contiguous class ``k``.
        category_ids: ``category_ids[k]`` is the dataset's own category id of class ``k``.
        root: the folder or file the dataset was read from.
        split: the split name (``"train"``, ``"val"``, ...).
        report: what the reader repaired or skipped.
        format: ``"coco"``, ``"yolo"``, ``"voc"`` or ``"shapes"``.
    """

    def __init__(
        self,
        samples: list[Sample],
        class_names: list[str],
        category_ids: list[int] | None = None,
        *,
        root: str | Path = "",
        split: str = "",
        report: LoadReport | None = None,
        format: str = "",
    ) -> None:
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.category_ids = list(range(len(class_names))) if category_ids is None else list(category_ids)
        if len(self.category_ids) != len(self.class_names):
            raise ValueError("category_ids and class_names must have the same length")
        self.root = Path(root)
        self.split = split
        self.report = report if report is not None else LoadReport()
        self.format = format

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self):
        return iter(self.samples)

    def __repr__(self) -> str:
        boxes = sum(len(s.boxes) for s in self.samples)
        return (
            f"DetectionDataset(format={self.format!r}, split={self.split!r}, images={len(self)}, "
            f"boxes={boxes}, classes={self.num_classes}, problems={self.report.summary()!r})"
        )

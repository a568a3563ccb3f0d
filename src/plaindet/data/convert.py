"""``plaindet data convert``: write any readable dataset as COCO JSON, a YOLO dataset or Pascal VOC.

Every split is converted. The output is built in a hidden folder next to ``out`` and renamed to
``out`` only when complete, so an interrupted conversion never leaves a half-written dataset; an
existing ``out`` that is not empty is refused. Images are hard-linked when the file system allows
it (no extra space; the output then shares the image files with the source, so editing one in
place edits both; the summary says so) and copied otherwise, or always with ``copy=True``
(``--copy``).

Layouts written (all read back by :func:`~plaindet.data.formats.load_dataset`):

- ``coco``: ``out/annotations/{split}.json`` and ``out/images/{split}/``; keeps image ids, category
  ids and names, ``iscrowd`` and areas; annotation ids are renumbered from 1 (sources without ids
  have none to keep).
- ``yolo``: ``out/data.yaml``, ``out/images/{split}/`` and ``out/labels/{split}/`` (one ``.txt`` per
  image, empty for an image without objects); split keys are ``train``, ``val``, ``test`` (``valid``
  and ``val2017`` become ``val``). YOLO cannot hold crowd regions (they are left out and counted),
  object areas (box areas are used on reading), image ids (they become positions in sorted file
  order) or category ids: those are kept in an extra ``category_ids`` list in ``data.yaml``, which
  plaindet reads and other tools ignore.
- ``voc``: ``out/Annotations/{stem}.xml`` (one per image, also for an image without objects),
  ``out/JPEGImages/`` (the images of every split) and ``out/ImageSets/Main/{split}.txt``; keeps
  boxes, sizes, class names and crowd regions (as ``difficult`` objects, which the reader makes
  crowd regions again). VOC cannot hold a class list (the reader numbers the object names it finds,
  sorted, so classes without boxes and the class order are lost), category ids, object areas or
  image ids (positions in sorted stem order); the notes say which of those the dataset had. Split
  names with ``_`` (readers take those files for per-class lists) and a ``trainval`` beside
  ``train`` and ``val`` (read as their union) are refused; white space in image names becomes ``_``
  (the lists are split at white space).

Image file names are kept; when two images of a split share a name (stem), the later one gets its
image id appended (``photo_17.jpg``). For VOC, whose images share one folder, that holds across splits.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plaindet.data.coco import coco_dict, write_coco_json
from plaindet.data.formats import list_splits, load_dataset
from plaindet.data.rules import canonical_split
from plaindet.data.sample import DetectionDataset, LoadReport, Sample
from plaindet.data.voc import annotation_xml, voc_file_name
from plaindet.data.yolo import label_text, yaml_text
from plaindet.errors import DatasetError

TARGETS = ("coco", "yolo", "voc")


@dataclass
class SplitResult:
    """What was written for one split, and what the source reader reported."""

    name: str  # the split name written
    source_name: str
    images: int
    boxes: int
    crowd_dropped: int
    report: LoadReport


@dataclass
class ConvertResult:
    """The outcome of :func:`convert_dataset`: per-split counts and notes on what was not kept."""

    out: Path
    to: str
    splits: list[SplitResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    linked: int = 0  # images hard-linked to the source's files
    copied: int = 0

    @property
    def source_errors(self) -> int:
        return sum(len(s.report.errors) for s in self.splits)


def convert_dataset(src: str | Path, to: str, out: str | Path, *, copy: bool = False) -> ConvertResult:
    """Convert every split of the dataset at ``src`` to format ``to`` (``"coco"``, ``"yolo"``, ``"voc"``) in ``out``.

    Images are hard-linked to the source's files where the file system allows (counted in
    ``linked``), else copied (``copied``); ``copy=True`` always copies.

    Problems in the source are not fatal: what the reader could read is written, and each split's
    :class:`SplitResult` carries the reader's report.

    Raises:
        DatasetError: ``to`` is unknown, ``out`` exists and is not empty, a split cannot be read,
            (to YOLO) a split has no ``train``/``val``/``test`` equivalent, or (to VOC) a split name
            or class name that VOC readers would not give back.
    """
    return write_datasets([load_dataset(src, name) for name in list_splits(src)], to, out, copy=copy)


def write_datasets(datasets: list[DetectionDataset], to: str, out: str | Path, *, copy: bool = False) -> ConvertResult:
    """Write ``datasets`` (the splits of one dataset, each named by its ``split``) in format ``to`` in
    ``out``, as :func:`convert_dataset` does (which reads them from disk); for splits built or
    corrected in Python (``plaindet data audit --apply``). Raises as :func:`convert_dataset` does."""
    to = to.lower()
    if to not in TARGETS:
        raise DatasetError(f"unknown target format {to!r}; choose one of: {', '.join(TARGETS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: already exists and is not empty; choose a new folder (nothing was written)")
    names = _target_names([d.split for d in datasets], to)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    result = ConvertResult(out, to)
    voc_taken: set[str] = set()  # VOC keeps every split's images in one folder, so names are unique across splits
    written: list[list[str]] = []  # the image file names of each split
    try:
        for dataset, name in zip(datasets, names):
            if to == "voc":
                file_names = _unique_names(dataset, voc_taken, clean=voc_file_name)
                folder = staging / "JPEGImages"
            else:
                file_names = _unique_names(dataset)
                folder = staging / "images" / name
            written.append(file_names)
            linked = _place_images(dataset, file_names, folder, copy=copy)
            result.linked += linked
            result.copied += len(dataset.samples) - linked
            if to == "coco":
                split = _write_coco_split(dataset, file_names, staging, name)
            elif to == "yolo":
                split = _write_yolo_split(dataset, file_names, staging, name)
            else:
                split = _write_voc_split(dataset, file_names, staging, name)
            result.splits.append(split)
        if to == "yolo":
            _write_yolo_yaml(datasets, names, staging)
            result.notes += _yolo_notes(datasets, result)
        if to == "voc":
            result.notes += _voc_notes(datasets, written)
        if out.exists():
            out.rmdir()  # empty (checked above); rename cannot replace a folder
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def _target_names(splits: list[str], to: str) -> list[str]:
    if to == "coco":
        return list(splits)
    if to == "voc":
        return _voc_split_names(splits)
    names = [canonical_split(s) for s in splits]
    for source, name in zip(splits, names):
        if name not in ("train", "val", "test"):
            raise DatasetError(f"split {source!r} has no YOLO equivalent (data.yaml holds only train, val and test)")
    if len(set(names)) != len(names):
        raise DatasetError(f"splits {', '.join(splits)} would share a YOLO split name; convert them separately")
    return names


def _voc_split_names(splits: list[str]) -> list[str]:
    """The split names, kept, once checked that the VOC reader lists each of them as a split."""
    for name in splits:
        if "_" in name:
            raise DatasetError(
                f"split {name!r} cannot be a VOC split: ImageSets/Main lists named with '_' are per-class lists, "
                "which readers skip; rename the split"
            )
    if {"train", "val", "trainval"} <= set(splits):
        raise DatasetError(
            "split 'trainval' beside 'train' and 'val' would be read as their union; convert it separately"
        )
    return list(splits)


def _unique_names(
    dataset: DetectionDataset, taken: set[str] | None = None, *, clean: Callable[[str], str] | None = None
) -> list[str]:
    """An output file name per sample: its own name unless another image of the split has its stem.

    Stems must be unique, not just names, because YOLO label files and VOC annotations are named by
    stem (``a.jpg`` and ``a.png`` would share ``a.txt``); compared case-insensitively for
    case-insensitive file systems. ``taken`` holds the (lower-case) stems other splits already use
    in the same folder, and gets this split's; ``clean`` rewrites each name first.
    """
    names, taken = [], set() if taken is None else taken
    for sample in dataset.samples:
        own = Path(clean(sample.image_path.name)) if clean else sample.image_path
        stem, suffix = own.stem, own.suffix
        name, n = f"{stem}{suffix}", 0
        while Path(name).stem.lower() in taken:
            n += 1
            name = f"{stem}_{sample.image_id}{suffix}" if n == 1 else f"{stem}_{sample.image_id}_{n}{suffix}"
        taken.add(Path(name).stem.lower())
        names.append(name)
    return names


def _place_images(dataset: DetectionDataset, file_names: list[str], folder: Path, *, copy: bool) -> int:
    """Hard-link (or with ``copy``, copy) each image into ``folder``; returns how many were linked."""
    folder.mkdir(parents=True, exist_ok=True)
    linked = 0
    for sample, name in zip(dataset.samples, file_names):
        target = folder / name
        if not copy:
            try:
                os.link(sample.image_path, target)
                linked += 1
                continue
            except OSError:  # another file system, or links not supported: copy instead
                pass
        shutil.copy2(sample.image_path, target)
    return linked


def _write_coco_split(dataset: DetectionDataset, file_names: list[str], root: Path, name: str) -> SplitResult:
    data = coco_dict(dataset, file_names)
    (root / "annotations").mkdir(exist_ok=True)
    write_coco_json(data, root / "annotations" / f"{name}.json")
    return SplitResult(name, dataset.split, len(dataset), len(data["annotations"]), 0, dataset.report)


def _write_yolo_split(dataset: DetectionDataset, file_names: list[str], root: Path, name: str) -> SplitResult:
    folder = root / "labels" / name
    folder.mkdir(parents=True, exist_ok=True)
    boxes = crowd = 0
    for sample, file_name in zip(dataset.samples, file_names):
        text, dropped = label_text(sample)
        (folder / Path(file_name).with_suffix(".txt").name).write_text(text, encoding="utf-8")
        boxes += len(sample.boxes) - dropped
        crowd += dropped
    return SplitResult(name, dataset.split, len(dataset), boxes, crowd, dataset.report)


def _write_voc_split(dataset: DetectionDataset, file_names: list[str], root: Path, name: str) -> SplitResult:
    _check_voc_class_names(dataset)
    folder = root / "Annotations"
    folder.mkdir(exist_ok=True)
    for sample, file_name in zip(dataset.samples, file_names):
        xml = annotation_xml(sample, file_name, dataset.class_names)
        (folder / Path(file_name).with_suffix(".xml").name).write_text(xml, encoding="utf-8")
    lists = root / "ImageSets" / "Main"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{name}.txt").write_text("".join(Path(f).stem + "\n" for f in file_names), encoding="utf-8")
    boxes = sum(len(s.boxes) for s in dataset.samples)
    return SplitResult(name, dataset.split, len(dataset), boxes, 0, dataset.report)


def _check_voc_class_names(dataset: DetectionDataset) -> None:
    """VOC names classes by name: two classes with boxes and one name would be read back as one."""
    used = sorted({int(k) for s in dataset.samples for k in s.labels})
    seen: dict[str, int] = {}
    for k in used:
        name = dataset.class_names[k]
        if name in seen:
            raise DatasetError(
                f"split {dataset.split!r}: classes {seen[name]} and {k} are both named {name!r}; VOC names classes by "
                "name, so they would become one class; rename one first"
            )
        seen[name] = k


def _write_yolo_yaml(datasets: list[DetectionDataset], names: list[str], root: Path) -> None:
    first = datasets[0]
    for d in datasets[1:]:
        if d.class_names != first.class_names or d.category_ids != first.category_ids:
            raise DatasetError(
                f"splits {first.split!r} and {d.split!r} have different class lists; a YOLO dataset has one"
            )
    splits = {name: f"images/{name}" for name in names}
    (root / "data.yaml").write_text(yaml_text(splits, first.class_names, first.category_ids), encoding="utf-8")


def _yolo_notes(datasets: list[DetectionDataset], result: ConvertResult) -> list[str]:
    notes = []
    crowd = sum(s.crowd_dropped for s in result.splits)
    if crowd:
        notes.append(f"{crowd} crowd boxes left out: YOLO labels have no crowd flag")
    if any(_has_own_areas(s) for d in datasets for s in d.samples):
        notes.append("object areas not kept: YOLO readers use box areas (COCO small/medium/large may shift)")
    if any(s.image_id != i for d in datasets for i, s in enumerate(d.samples)):
        notes.append("image ids not kept: YOLO image ids are positions in sorted file order")
    if datasets and datasets[0].category_ids != list(range(datasets[0].num_classes)):
        notes.append("category ids kept in data.yaml's 'category_ids' (read by plaindet, ignored by other tools)")
    return notes


def _voc_notes(datasets: list[DetectionDataset], file_names: list[list[str]]) -> list[str]:
    notes = []
    used = sorted({d.class_names[k] for d in datasets for s in d.samples for k in s.labels})
    unused = sorted({n for d in datasets for n in d.class_names} - set(used))
    if unused:
        listed = ", ".join(repr(n) for n in unused[:5]) + (", ..." if len(unused) > 5 else "")
        notes.append(f"{len(unused)} classes without boxes left out ({listed}): VOC holds classes only as object names")
    if any([n for n in d.class_names if n in used] != used for d in datasets):
        notes.append(
            "class order not kept: VOC has no class list, so readers number the object names sorted "
            "(load_voc's class_names gives an order back)"
        )
    if any(d.category_ids != list(range(d.num_classes)) for d in datasets):
        notes.append("category ids not kept: VOC names classes and has no ids")
    if any(_has_own_areas(s, crowd=True) for d in datasets for s in d.samples):
        notes.append("object areas not kept: VOC has none, readers use box areas (COCO small/medium/large may shift)")
    if any(_voc_ids_change(d, names) for d, names in zip(datasets, file_names)):
        notes.append("image ids not kept: VOC image ids are positions in sorted file-stem order")
    return notes


def _voc_ids_change(dataset: DetectionDataset, file_names: list[str]) -> bool:
    """Whether the VOC reader's image ids (positions in sorted stem order) differ from the dataset's."""
    stems = [Path(f).stem for f in file_names]  # unique: _unique_names made them so
    rank = {stem: i for i, stem in enumerate(sorted(stems))}
    return any(s.image_id != rank[stem] for s, stem in zip(dataset.samples, stems))


def _has_own_areas(sample: Sample, *, crowd: bool = False) -> bool:
    """Whether the sample's areas differ from its box areas (COCO segmentation areas do); those of
    crowd regions count only with ``crowd`` (YOLO does not write crowd regions; VOC does)."""
    if sample.areas is None:
        return False
    keep = np.ones(len(sample.boxes), dtype=bool) if crowd else ~sample.iscrowd
    boxes = sample.boxes[keep].astype(np.float64)
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return not np.allclose(sample.areas[keep], box_areas, rtol=1e-4, atol=1e-2)


def run_convert(src: str | Path, to: str, out: str | Path, *, copy: bool = False, console=None) -> int:
    """Convert and print a summary (saying how the images were placed: hard links share the source's
    files); return 0, or 1 when the source had errors (what could be read is written). Raises
    :class:`~plaindet.errors.DatasetError` when nothing could be written."""
    from rich.console import Console

    console = console or Console()
    result = convert_dataset(src, to, out, copy=copy)
    for s in result.splits:
        renamed = f" (from {s.source_name})" if s.source_name != s.name else ""
        problems = f"; source problems: {s.report.summary()}" if s.report.problems else ""
        console.print(f"{s.name}{renamed}: {s.images} images, {s.boxes} boxes{problems}", highlight=False)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"wrote {result.to} dataset to {result.out}", highlight=False)
    if result.linked:
        console.print(
            f"images: {result.linked} hard-linked to the source's files (no extra space, but editing one in place edits "
            f"both; --copy makes copies){f', {result.copied} copied' if result.copied else ''}",
            highlight=False,
        )
    elif result.copied:
        console.print(f"images: {result.copied} copied", highlight=False)
    if result.source_errors:
        console.print(
            f"[bold red]{result.source_errors} errors in the source[/]: those images or boxes are not in the "
            f"output; run `plaindet data check {src}` to see them",
            highlight=False,
        )
        return 1
    return 0

"""Reading any supported dataset: :func:`load_dataset` recognizes the format and picks the reader from one table.

The readers (:mod:`~plaindet.data.coco`, :mod:`~plaindet.data.yolo`, :mod:`~plaindet.data.voc`) share
their rules through :mod:`~plaindet.data.rules` and never import this module. Each returns a
:class:`~plaindet.data.sample.DetectionDataset` whose ``report`` lists everything that was repaired
or skipped.

Format detection (:func:`detect_format`)
----------------------------------------
- ``"shapes"`` (when no file or folder of that name exists): the built-in synthetic set
  (:func:`plaindet.data.shapes.builtin_shapes`), written on first use; ``"shapes:classes=star,cross"``
  picks its classes (see :func:`plaindet.data.shapes.parse_builtin`);
- a ``.json`` file: COCO; a ``.yaml``/``.yml`` file: an Ultralytics YOLO dataset yaml;
- a folder holding ``Annotations/`` (XML files): Pascal VOC;
- a folder holding ``data.yaml`` (or ``dataset.yaml``): YOLO;
- a folder holding ``_annotations.coco.json``, or ``train/``, ``valid/``, ``test/`` folders that hold
  one (a Roboflow COCO export), or ``.json`` files directly or in ``annotations/``: COCO;
- a folder holding exactly one ``.yaml`` file: YOLO.

Split names are the dataset's own (:func:`list_splits`); :func:`load_dataset` also accepts their
aliases (``val``/``valid``/``validation``, a missing year: see :mod:`~plaindet.data.rules`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plaindet.data.coco import find_coco_files, list_coco_splits, load_coco
from plaindet.data.sample import DetectionDataset
from plaindet.data.shapes import builtin_shapes, parse_builtin
from plaindet.data.voc import list_voc_splits, load_voc
from plaindet.data.yolo import YAML_NAMES, find_yaml, list_yolo_splits, load_yolo
from plaindet.errors import DatasetError, UserError


@dataclass(frozen=True)
class Reader:
    """A dataset format: ``load(path, split, check_images=...)`` and ``splits(path)``."""

    load: Callable[..., DetectionDataset]
    splits: Callable[[str | Path], list[str]]


READERS: dict[str, Reader] = {
    "coco": Reader(load_coco, list_coco_splits),
    "yolo": Reader(load_yolo, list_yolo_splits),
    "voc": Reader(load_voc, list_voc_splits),
}
FORMATS = tuple(READERS)


def resolve(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path`, with ``"shapes"`` or ``"shapes:classes=..."`` (when nothing
    of that name exists here) replaced by the built-in dataset's folder, written on first use."""
    options = parse_builtin(path)
    if options is not None and not Path(path).exists():
        return builtin_shapes(**options)
    return Path(path)


def detect_format(path: str | Path) -> str:
    """The format of the dataset at ``path``: ``"coco"``, ``"yolo"`` or ``"voc"``.

    Raises :class:`DatasetError` when ``path`` does not exist or holds nothing recognizable; the
    message says what was looked for.
    """
    path = resolve(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (or 'shapes' for the built-in dataset)")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco"
        if suffix in (".yaml", ".yml"):
            return "yolo"
        raise DatasetError(
            f"{path}: not a dataset file; expected a COCO .json file, a YOLO dataset .yaml file, "
            "or a dataset folder"
        )
    if (path / "Annotations").is_dir():
        return "voc"
    # A data.yaml is explicit; loose .json files next to it may be anything (class maps, metadata).
    if any((path / name).is_file() for name in YAML_NAMES):
        return "yolo"
    if find_coco_files(path):
        return "coco"
    if find_yaml(path) is not None:
        return "yolo"
    raise DatasetError(
        f"{path}: no dataset found in this folder; looked for a COCO .json file (here, in "
        "annotations/, or Roboflow's train/valid/test/_annotations.coco.json), a YOLO data.yaml, "
        "and a Pascal VOC Annotations/ folder"
    )


def list_splits(path: str | Path) -> list[str]:
    """The split names present in the dataset at ``path``, as the dataset names them.

    Order: ``train``, then validation, then test, then any other split alphabetically.
    """
    path = resolve(path)
    return READERS[detect_format(path)].splits(path)


def load_dataset(path: str | Path, split: str = "train", *, check_images: bool = True) -> DetectionDataset:
    """Read one split of the dataset at ``path``, whatever its format.

    Args:
        path: a COCO ``.json`` file or folder, a YOLO dataset ``.yaml`` (or its folder), a Pascal
            VOC folder, or ``"shapes"`` (the built-in set). A single COCO ``.json`` file is one
            split, so ``split`` is not used for it.
        split: the split to read; aliases are accepted (see the module docstring).
        check_images: read each image's header to confirm that it opens and to take its size (a
            truncated file with an intact header still passes; ``plaindet data check`` decodes every
            image to find those). ``False`` trusts the sizes stored in COCO and VOC annotations and
            only checks that the files exist; YOLO labels hold no sizes, so YOLO always reads headers.

    Returns:
        The dataset; ``dataset.report`` lists every box or image that was repaired or skipped.

    Raises:
        DatasetError: the dataset cannot be read at all (no such path, unknown split, malformed
            JSON or YAML, duplicate image or category ids); the message names the file.
    """
    path = resolve(path)
    try:
        return READERS[detect_format(path)].load(path, split, check_images=check_images)
    except OSError as e:  # a path the dataset names that the file system refuses (too long, no permission)
        if isinstance(e, UserError):  # NotFound is a FileNotFoundError too, and already says what is missing
            raise
        raise DatasetError(f"{path}: a file of this dataset can't be read ({e})") from None

"""Ultralytics YOLO datasets: reading into :class:`~plaindet.data.sample.DetectionDataset`, and writing.

The dataset yaml
----------------
``names`` (a list, or a dict ``{class id: name}``; without it, ``nc`` classes named ``class_0``...),
``path`` (the dataset root, relative to the yaml's folder; default: that folder) and ``train``,
``val``, ``test``, each a folder of images (searched recursively), a ``.txt`` file listing images
(relative lines are relative to the list's folder), or a list of those. Class ids in label files are
the keys of ``names``; contiguous classes follow their sorted order, and ``dataset.category_ids`` keeps
the ids themselves. An optional ``category_ids`` list (written by ``plaindet data convert``; other
tools ignore it) gives each class the category id of the dataset it was converted from.

Labels
------
The label file of ``.../images/.../x.jpg`` is ``.../labels/.../x.txt`` (the last ``/images/`` becomes
``/labels/``; the Ultralytics rule). Each line is ``class cx cy w h``, normalized to ``[0, 1]`` by
the image size as displayed (after EXIF orientation), which is read from the image header. A
segmentation line ``class x1 y1 x2 y2 ...`` (3 points or more) counts as its bounding box. A missing
label file means an image without objects (reported as ``info`` ``missing_label_file``); an empty one
too (not reported). Image ids are positions in the sorted list of the split's image paths.

Problems are reported in ``dataset.report``: ``missing_image``, ``unreadable_image``,
``unreadable_label_file`` (image skipped), ``malformed_line``, ``bad_class_id``, ``degenerate_box``
(line skipped); ``box_clipped``, ``unsupported_image``, ``no_labels_found`` and ``symlink_stub``
(warnings); ``missing_label_file`` and ``orphan_label_file`` (info: a label file without an image).
A yaml that cannot be parsed, lacks class names or points at missing folders raises
:class:`DatasetError`.

Copied symbolic links: a git checkout without symlink support, or a copy tool that does not keep
links, turns a link such as ``images -> ../images`` into a small text file holding ``../images``.
Such a file on the way to a split folder or label file is followed, with a ``symlink_stub`` warning;
labels are still found from the path as written (through the link), as with a real link.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from plaindet.data.images import IMAGE_SUFFIXES, ImageReadError, image_size
from plaindet.data.rules import BoxBuilder, image_problem, match_split, split_order
from plaindet.data.sample import DetectionDataset, LoadReport, Sample
from plaindet.errors import DatasetError

SPLIT_KEYS = ("train", "val", "test")
YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")

# Image formats other tools accept that we do not read: reported instead of silently ignored.
_OTHER_IMAGE_SUFFIXES = {".tif", ".tiff", ".gif", ".heic", ".heif", ".avif", ".jpe", ".jp2", ".dng", ".mpo", ".pfm"}
_STUB_MAX_BYTES = 1024


@dataclass
class YoloConfig:
    """A parsed dataset yaml.

    Attributes:
        file: the yaml file.
        root: the dataset root (``path``), resolved against the yaml's folder.
        class_names: names of the contiguous classes.
        class_ids: ``class_ids[k]``: the id label files use for class ``k`` (the ``names`` keys).
        category_ids: ``category_ids[k]``: the dataset's own category id of class ``k``.
        splits: ``{split key: [entry, ...]}``, each entry a folder or ``.txt`` file as written.
    """

    file: Path
    root: Path
    class_names: list[str]
    class_ids: list[int]
    category_ids: list[int]
    splits: dict[str, list[str]]


def find_yaml(folder: Path) -> Path | None:
    """The YOLO dataset yaml of a folder: ``data.yaml``/``dataset.yaml``, or its only ``.yaml`` file."""
    for name in YAML_NAMES:
        if (folder / name).is_file():
            return folder / name
    yamls = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml") and p.is_file())
    return yamls[0] if len(yamls) == 1 else None


def yaml_file(path: str | Path) -> Path:
    """The dataset yaml that ``path`` (a yaml file, or a folder holding one) points at."""
    path = Path(path)
    if path.is_file():
        return path
    found = find_yaml(path)
    if found is None:
        raise DatasetError(f"{path}: no data.yaml in this folder (or more than one .yaml file)")
    return found


def read_yolo_yaml(path: str | Path) -> YoloConfig:
    """Parse and validate a YOLO dataset yaml (or the ``data.yaml`` of a folder)."""
    file = yaml_file(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise DatasetError(f"{file}: {where}not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{file}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise DatasetError(f"{file}: YAML nested too deeply to be a dataset yaml") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{file}: a dataset yaml is a mapping with 'names' and 'train'/'val'/'test' keys")

    class_ids, class_names = _names(data, file)
    category_ids = class_ids
    if data.get("category_ids") is not None:
        given = data["category_ids"]
        if not (isinstance(given, list) and len(given) == len(class_ids) and all(type(c) is int for c in given)):
            raise DatasetError(f"{file}: 'category_ids' must be a list of {len(class_ids)} integers")
        if len(set(given)) != len(given):
            raise DatasetError(f"{file}: 'category_ids' has duplicates")
        category_ids = given

    root = Path(str(data.get("path") or "."))
    root = root if root.is_absolute() else file.parent / root
    splits = {}
    for key in SPLIT_KEYS:
        value = data.get(key)
        if value in (None, "", []):
            continue
        entries = value if isinstance(value, list) else [value]
        if not all(isinstance(e, str) and e for e in entries):
            raise DatasetError(f"{file}: {key!r} must be a folder, a .txt file or a list of those; got {value!r}")
        splits[key] = entries
    if not splits:
        raise DatasetError(f"{file}: no 'train', 'val' or 'test' entry")
    return YoloConfig(file, root, class_names, class_ids, list(category_ids), splits)


def _names(data: dict, file: Path) -> tuple[list[int], list[str]]:
    names = data.get("names")
    if names is None:
        nc = data.get("nc")
        if type(nc) is not int or nc <= 0:
            raise DatasetError(f"{file}: no 'names' (and no 'nc'): the class names are needed")
        names = [f"class_{i}" for i in range(nc)]
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DatasetError(f"{file}: 'names' must be a non-empty list or a mapping {{class id: name}}")
    by_id = {}
    for key, name in names.items():
        try:
            class_id = int(key)
        except (TypeError, ValueError):
            raise DatasetError(f"{file}: 'names' key {key!r} is not an integer class id") from None
        if class_id in by_id or class_id < 0:
            raise DatasetError(f"{file}: 'names' class id {key!r} is negative or repeated")
        by_id[class_id] = str(name)
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


def list_yolo_splits(path: str | Path) -> list[str]:
    """The split keys (``train``, ``val``, ``test``) the dataset yaml defines."""
    return sorted(read_yolo_yaml(path).splits, key=split_order)


def label_path(image_path: str | Path) -> Path:
    """The label file of an image: the last ``/images/`` becomes ``/labels/``, the suffix ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(sb.join(str(image_path).rsplit(sa, 1))).with_suffix(".txt")


def follow_stubs(path: Path) -> tuple[Path, list[tuple[Path, str]]]:
    """``path`` with copied symbolic links on the way (small files holding a folder path) followed.

    Returns the path to use (``path`` itself when it exists or nothing could be followed) and the
    ``(stub file, text)`` pairs that were followed.
    """
    if path.exists():
        return path, []
    current, followed = Path(path.parts[0]), []
    for i, part in enumerate(path.parts[1:], start=1):
        current = current / part
        if i == len(path.parts) - 1 or current.is_dir():
            continue
        if not current.is_file() or current.stat().st_size > _STUB_MAX_BYTES:
            return path, []
        try:
            text = current.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return path, []
        target = current.parent / text
        if not text or "\n" in text or not target.is_dir():
            return path, []
        followed.append((current, text))
        current = target
    return current, followed


class _Resolver:
    """:func:`follow_stubs`, reporting each followed stub once as a ``symlink_stub`` warning."""

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        self.seen: set[Path] = set()

    def __call__(self, path: Path) -> Path:
        real, followed = follow_stubs(path)
        for stub, text in followed:
            if stub not in self.seen:
                self.seen.add(stub)
                self.report.add(
                    "warning", "symlink_stub", stub, "",
                    f"is a plain file holding {text!r}, probably a symbolic link copied as a file; followed it",
                )
        return real


@dataclass
class _Entry:
    path: Path  # as written, through links (labels are found from it)
    real: Path  # where the file is (copied links followed)
    source: Path | None = None  # the .txt list naming it
    where: str = ""


def _list_images(cfg: YoloConfig, key: str, report: LoadReport, resolve: _Resolver) -> list[_Entry]:
    entries: list[_Entry] = []
    for entry in cfg.splits[key]:
        written = Path(entry) if Path(entry).is_absolute() else cfg.root / entry
        if not written.exists() and entry.startswith("../") and (cfg.root / entry[3:]).exists():
            # Roboflow writes '../train/images' next to a data.yaml that sits beside train/; Ultralytics
            # accepts it by dropping the '../', and so do we.
            written = cfg.root / entry[3:]
        real = resolve(written)
        if real.is_dir():
            for dirpath, dirnames, filenames in os.walk(real, followlinks=True):
                dirnames.sort()
                rel = Path(dirpath).relative_to(real)
                for name in filenames:
                    if _is_image(Path(dirpath) / name, report):
                        entries.append(_Entry(written / rel / name, Path(dirpath) / name))
        elif real.is_file() and real.suffix.lower() == ".txt":
            entries.extend(_read_list(real, report, resolve))
        elif real.is_file() and real.suffix.lower() in IMAGE_SUFFIXES:
            entries.append(_Entry(written, real))
        else:
            raise DatasetError(f"{cfg.file}: {key}: {written} is not a folder or a .txt list of images (not found)")
    # Ultralytics sorts the image paths; image ids are positions in this order.
    entries.sort(key=lambda e: str(e.path))
    return entries


def _is_image(path: Path, report: LoadReport) -> bool:
    suffix = path.suffix.lower()
    if suffix in _OTHER_IMAGE_SUFFIXES:
        report.add("warning", "unsupported_image", path, "", f"{suffix} images are not supported; skipped")
    return suffix in IMAGE_SUFFIXES


def _read_list(list_file: Path, report: LoadReport, resolve: _Resolver) -> list[_Entry]:
    try:
        lines = list_file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{list_file}: cannot read the image list ({e})") from None
    entries = []
    for lineno, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        written = Path(line) if Path(line).is_absolute() else list_file.parent / line
        if _is_image(written, report):
            entries.append(_Entry(written, resolve(written), list_file, f"line {lineno}"))
        elif written.suffix.lower() not in _OTHER_IMAGE_SUFFIXES:
            report.add("error", "malformed_line", list_file, f"line {lineno}", f"{line!r} is not an image path")
    return entries


def load_yolo(path: str | Path, split: str = "train", *, check_images: bool = True) -> DetectionDataset:
    """Read one split of a YOLO dataset (see the module docstring for the rules).

    Args:
        path: the dataset yaml, or a folder holding ``data.yaml``.
        split: ``"train"``, ``"val"`` (or ``"valid"``) or ``"test"``.
        check_images: taken for the same signature as the other readers; YOLO labels hold no image
            sizes, so every image header is read either way.
    """
    cfg = read_yolo_yaml(path)
    key = match_split(split, list(cfg.splits), cfg.file)
    report = LoadReport()
    class_of = {class_id: k for k, class_id in enumerate(cfg.class_ids)}
    resolve = _Resolver(report)
    entries = _list_images(cfg, key, report, resolve)
    samples: list[Sample] = []
    label_files = 0
    expected_labels: set[Path] = set()
    label_dirs: set[Path] = set()
    for image_id, entry in enumerate(entries):
        label_file = label_path(entry.path)
        real_label = resolve(label_file)
        expected_labels.add(real_label)
        if entry.source is None:
            label_dirs.add(real_label.parent)
        try:
            width, height = image_size(entry.real)
        except ImageReadError as e:
            kind = "missing_image" if not entry.real.exists() else "unreadable_image"
            reason = str(e) if entry.source else image_problem(e, entry.real)
            report.add("error", kind, entry.source or entry.real, entry.where, f"{reason}; image skipped")
            continue
        builder = BoxBuilder(width, height, report, label_file)
        if not real_label.is_file():
            report.add("info", "missing_label_file", label_file, "", f"no label file for {entry.path.name}: no objects")
        else:
            label_files += 1
            try:
                text = real_label.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as e:
                report.add("error", "unreadable_label_file", label_file, "", f"cannot read labels ({e}); image skipped")
                continue
            _parse_labels(text, builder, class_of, report, label_file)
        samples.append(builder.sample(entry.real, image_id))
    if entries and label_files == 0:
        report.add(
            "warning", "no_labels_found", label_path(entries[0].path).parent, "",
            f"none of the {len(entries)} images has a label file; labels are looked for where the last "
            "'/images/' of an image path becomes '/labels/'",
        )
    # Label files that no image claims usually mean a renamed or deleted image: worth knowing. Only
    # for folders of images; a .txt list may name a subset of a folder on purpose.
    for folder in sorted(label_dirs):
        if folder.is_dir():
            for orphan in sorted(set(folder.glob("*.txt")) - expected_labels):
                report.add("info", "orphan_label_file", orphan, "", "label file without a matching image; not used")
    return DetectionDataset(
        samples, cfg.class_names, cfg.category_ids, root=cfg.file, split=key, report=report, format="yolo"
    )


def _parse_labels(text: str, builder: BoxBuilder, class_of: dict[int, int], report: LoadReport, file: Path) -> None:
    w, h = builder.width, builder.height
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"line {lineno}"
        if not (len(fields) == 5 or (len(fields) >= 7 and len(fields) % 2 == 1)):
            report.add(
                "error", "malformed_line", file, where,
                f"expected 'class cx cy w h' (5 fields) or a polygon, found {len(fields)} fields: {line.strip()!r:.80}",
            )
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            bad = next(v for v in fields if not _is_float(v))
            report.add("error", "malformed_line", file, where, f"{bad!r} is not a number: {line.strip()!r:.80}")
            continue
        if not all(math.isfinite(v) for v in values):
            report.add("error", "malformed_line", file, where, f"NaN or infinite value: {line.strip()!r:.80}")
            continue
        if not values[0].is_integer():
            report.add("error", "malformed_line", file, where, f"class id {fields[0]!r} is not an integer")
            continue
        class_id = int(values[0])
        if class_id not in class_of:
            report.add(
                "error", "bad_class_id", file, where,
                f"class id {class_id} is not in the yaml's names ({_id_range(class_of)}); box dropped",
            )
            continue
        if len(fields) == 5:
            cx, cy, bw, bh = values[1:]
            x1, y1, x2, y2 = (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h
        else:
            xs, ys = np.array(values[1::2]) * w, np.array(values[2::2]) * h
            x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
        builder.add(x1, y1, x2, y2, class_of[class_id], where=where)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _id_range(class_of: dict[int, int]) -> str:
    ids = sorted(class_of)
    return f"0..{ids[-1]}" if ids == list(range(len(ids))) else ", ".join(map(str, ids))


# --- writing ---------------------------------------------------------------------------------------


def format_number(value: float) -> str:
    """A normalized coordinate with 7 significant digits.

    Samples hold ``float32`` pixel corners (about 7 significant digits), so more digits would only
    print float noise (``0.47949194`` for a label read as ``0.479492``); 7 digits are within ``5e-7`` of
    the value (relative) and within ``5e-8`` of the image size, well below a pixel.
    """
    return f"{value:.7g}"


def label_text(sample: Sample) -> tuple[str, int]:
    """The YOLO label file of ``sample`` (contiguous class ids) and how many crowd boxes it left out.

    YOLO has no crowd flag, so crowd regions cannot be written; they are counted for the caller to report.
    """
    lines, crowd = [], 0
    for box, label, is_crowd in zip(sample.boxes.astype(np.float64), sample.labels, sample.iscrowd):
        if is_crowd:
            crowd += 1
            continue
        x1, y1, x2, y2 = box
        cx, cy = (x1 + x2) / 2 / sample.width, (y1 + y2) / 2 / sample.height
        bw, bh = (x2 - x1) / sample.width, (y2 - y1) / sample.height
        lines.append(" ".join([str(int(label))] + [format_number(v) for v in (cx, cy, bw, bh)]))
    return "".join(line + "\n" for line in lines), crowd


def yaml_text(splits: dict[str, str], class_names: list[str], category_ids: list[int]) -> str:
    """A dataset yaml for ``{split key: image folder}`` (relative to the yaml's folder).

    There is no ``path`` key: Ultralytics then takes the yaml's own folder as the root, so the dataset
    can be moved. ``category_ids`` is written only when the ids are not ``0..K-1``.
    """
    data: dict = dict(splits)
    data["nc"] = len(class_names)
    data["names"] = dict(enumerate(class_names))
    if list(category_ids) != list(range(len(class_names))):
        data["category_ids"] = [int(c) for c in category_ids]
    header = (
        "# YOLO dataset written by plaindet. Label files use class ids 0..nc-1;\n"
        "# category_ids (if present) are the category ids of the dataset this was converted from.\n"
    )
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

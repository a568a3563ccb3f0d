"""Pascal VOC: a folder with ``Annotations/*.xml`` and ``JPEGImages/``, read into a DetectionDataset.

Splits
------
``ImageSets/Main/{split}.txt`` lists the image ids (file stems) of each split. ``trainval`` is
left out of :func:`list_voc_splits` when ``train`` and ``val`` both exist (it is their union). Without
``ImageSets/Main``, every XML file belongs to one split, ``train``.

Classes
-------
Unless ``class_names`` is given, the classes are the object names found in *all* XML files (not just
the split's), sorted, so every split of a dataset gets the same class numbering.

Boxes
-----
VOC pixel coordinates are 1-based and inclusive: a box covering the whole of a ``W x H`` image is
``xmin=1, ymin=1, xmax=W, ymax=H``. It becomes ``(xmin - 1, ymin - 1, xmax, ymax)`` in the 0-based,
exclusive convention samples use, so that box is ``(0, 0, W, H)``. Objects marked ``difficult`` are
kept with ``iscrowd=True``: like COCO crowd regions they are ignored in evaluation (a detection on
them is neither a true nor a false positive, which is what the VOC metric does with difficult
objects) and skipped as training targets.

Problems are reported in ``dataset.report``: ``malformed_xml`` and ``missing_annotation`` (image
skipped), ``missing_image``, ``unreadable_image``, ``malformed_object`` and ``bad_class_id``
(object skipped), ``degenerate_box``, ``box_clipped`` and ``size_mismatch``.

XML is input from anyone: a file that declares an entity (the "billion laughs" expansion bomb, or an
external entity pointing at a local file or a URL) or names an external DTD is refused as
``malformed_xml`` at the declaration, before anything is expanded, read or fetched. VOC annotations
never need either; a bare ``<!DOCTYPE annotation>`` is accepted.

Writing
-------
:func:`annotation_xml` writes one sample's annotation so that this reader gives the same sample
back: corners as the shortest decimals that read back to the same ``float32`` (integers stay
integers; see :func:`corner_text`), crowd regions as ``difficult`` objects, class names escaped by
ElementTree. A class name the reader would not give back (empty, white space at either end, a
carriage return or a character XML cannot hold) is refused rather than changed.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from xml.parsers import expat

import numpy as np

from plaindet.data.images import IMAGE_SUFFIXES, ImageReadError, image_size
from plaindet.data.rules import BoxBuilder, image_problem, is_file, match_split, split_order
from plaindet.data.sample import DetectionDataset, LoadReport, Sample
from plaindet.errors import DatasetError


@dataclass
class _Object:
    name: str
    box: tuple[float, float, float, float] | None  # 1-based VOC corners; None when malformed
    difficult: bool
    problem: str = ""


@dataclass
class _Annotation:
    file: Path
    filename: str = ""
    size: tuple[int, int] | None = None
    objects: list[_Object] = field(default_factory=list)
    error: str = ""  # set when the XML cannot be parsed


def _voc_root(path: str | Path) -> Path:
    root = Path(path)
    if not (root / "Annotations").is_dir():
        raise DatasetError(f"{root}: not a Pascal VOC folder (no Annotations/ folder)")
    return root


def _split_files(root: Path) -> dict[str, Path]:
    main = root / "ImageSets" / "Main"
    if not main.is_dir():
        return {}
    # Main/ also holds per-class lists such as aeroplane_train.txt; splits have no underscore.
    return {p.stem: p for p in sorted(main.glob("*.txt")) if "_" not in p.stem}


def list_voc_splits(path: str | Path) -> list[str]:
    """The splits of a VOC folder (``["train"]`` when it has no ``ImageSets/Main`` lists)."""
    files = _split_files(_voc_root(path))
    if not files:
        return ["train"]
    names = set(files)
    if {"train", "val"} <= names:
        names.discard("trainval")
    return sorted(names, key=split_order)


def _parse(file: Path) -> _Annotation:
    ann = _Annotation(file)
    try:
        node = read_xml(file.read_bytes())
    except _Refused as e:
        ann.error = f"refused XML: {e}"
        return ann
    except expat.ExpatError as e:
        ann.error = f"malformed XML: {e}"  # the message names the line and column
        return ann
    except OSError as e:
        ann.error = f"cannot read ({e})"
        return ann
    ann.filename = (node.findtext("filename") or "").strip()
    try:
        width, height = int(float(node.findtext("size/width", ""))), int(float(node.findtext("size/height", "")))
        ann.size = (width, height) if width > 0 and height > 0 else None
    except (ValueError, OverflowError):  # not a number, or an infinite one
        ann.size = None
    for obj in node.findall("object"):  # direct children: an object's <part>s are not objects
        name = (obj.findtext("name") or "").strip()
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        try:
            box = tuple(float(obj.findtext(f"bndbox/{k}", "")) for k in ("xmin", "ymin", "xmax", "ymax"))
            ann.objects.append(_Object(name, box, difficult, "" if name else "object has no <name>"))
        except ValueError:
            ann.objects.append(_Object(name, None, difficult, "<bndbox> needs numeric xmin, ymin, xmax, ymax"))
    return ann


class _Refused(Exception):
    """An XML construct refused on sight (see the module docstring)."""


def read_xml(data: bytes) -> ET.Element:
    """The root element of an XML document, parsed by expat with entity declarations and external
    DTDs refused (:class:`_Refused`, naming the line) and never expanded or fetched; malformed XML
    raises ``expat.ExpatError`` naming the line and column."""
    parser = expat.ParserCreate()
    builder = ET.TreeBuilder()

    def doctype(name, system_id, public_id, has_internal_subset):
        if system_id or public_id:
            raise _Refused(f"line {parser.CurrentLineNumber}: an external DTD ({system_id or public_id}) is never fetched")

    def entity(name, *args):
        raise _Refused(f"line {parser.CurrentLineNumber}: declares entity {name!r}; entity declarations are refused, never expanded")

    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = entity
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.Parse(data, True)
    return builder.close()


def load_voc(
    path: str | Path, split: str = "train", *, check_images: bool = True, class_names: list[str] | None = None
) -> DetectionDataset:
    """Read one split of a Pascal VOC folder (see the module docstring for the rules).

    Args:
        path: the folder holding ``Annotations/`` and ``JPEGImages/``.
        split: a split listed in ``ImageSets/Main`` (aliases accepted), or ``"train"`` without lists.
        check_images: read each image's header (size, readability); ``False`` trusts the XML's
            ``<size>`` when it has one and only checks that the image exists.
        class_names: the class list; objects with other names are reported as ``bad_class_id``.
            Default: every object name in the dataset's XML files, sorted.
    """
    root = _voc_root(path)
    report = LoadReport()
    split_files = _split_files(root)
    if split_files:
        split = match_split(split, list(split_files), root / "ImageSets" / "Main")
        list_file = split_files[split]
        try:
            lines = list_file.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{list_file}: cannot read the image id list ({e})") from None
        ids = sorted({line.split()[0] for line in lines if line.strip()})
    else:
        split = match_split(split, ["train"], root)
        list_file = None
        ids = sorted(p.stem for p in (root / "Annotations").glob("*.xml"))

    annotations = {p.stem: _parse(p) for p in sorted((root / "Annotations").glob("*.xml"))}
    if class_names is None:
        names = {obj.name for ann in annotations.values() for obj in ann.objects if obj.name}
        class_names = sorted(names)
    class_of = {name: k for k, name in enumerate(class_names)}

    samples = []
    for image_id, stem in enumerate(ids):
        ann = annotations.get(stem)
        if ann is None:
            message = f"{stem!r} is listed but Annotations/{stem}.xml does not exist"
            report.add("error", "missing_annotation", list_file, "", message)
            continue
        if ann.error:
            report.add("error", "malformed_xml", ann.file, "", f"{ann.error}; image skipped")
            continue
        image_path = _find_image(root, stem, ann.filename)
        if image_path is None:
            message = f"image {ann.filename or stem!r} not found in {root / 'JPEGImages'}"
            report.add("error", "missing_image", ann.file, "", message)
            continue
        size = _size(ann, image_path, report, check_images)
        if size is None:
            continue
        builder = BoxBuilder(size[0], size[1], report, ann.file)
        for n, obj in enumerate(ann.objects, start=1):
            where = f"object {n}"
            if obj.problem:
                report.add("error", "malformed_object", ann.file, where, f"{obj.problem}; object skipped")
                continue
            if obj.name not in class_of:
                message = f"class {obj.name!r} is not in the class list; box dropped"
                report.add("error", "bad_class_id", ann.file, where, message)
                continue
            x1, y1, x2, y2 = obj.box
            builder.add(x1 - 1, y1 - 1, x2, y2, class_of[obj.name], where=where, crowd=obj.difficult)
        samples.append(builder.sample(image_path, image_id))
    return DetectionDataset(samples, class_names, root=root, split=split, report=report, format="voc")


def _find_image(root: Path, stem: str, filename: str) -> Path | None:
    folder = root / "JPEGImages"
    if filename and is_file(folder / filename):
        return folder / filename
    # <filename> is sometimes stale (renamed images); the id names the image too.
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def _size(ann: _Annotation, image_path: Path, report: LoadReport, check_images: bool) -> tuple[int, int] | None:
    if ann.size is not None and not check_images:
        return ann.size
    try:
        actual = image_size(image_path)
    except ImageReadError as e:
        report.add("error", "unreadable_image", image_path, "", f"{image_problem(e, image_path)}; image skipped")
        return None
    if ann.size is not None and ann.size != actual:
        report.add(
            "warning", "size_mismatch", ann.file, "",
            f"<size> says {ann.size[0]}x{ann.size[1]} but {image_path.name} is {actual[0]}x{actual[1]} as "
            "displayed (after EXIF orientation); using the image's size",
        )
    return actual


# --- writing ---------------------------------------------------------------------------------------

# Characters XML 1.0 cannot hold at all (controls other than tab and newlines, lone surrogates, two
# non-characters); ElementTree would write them and expat refuse the file.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def name_problem(name: str) -> str:
    """Why :func:`load_voc` would not read the class name ``name`` back as it is (``""`` when it would)."""
    if not name:
        return "it is empty, and an object without a <name> is skipped"
    if name != name.strip():
        return "it starts or ends with white space, which the reader strips"
    if "\r" in name or NOT_XML.search(name):
        return "it holds a carriage return or a control character, which XML cannot keep"
    return ""


def voc_file_name(name: str) -> str:
    """``name`` with white space and characters XML cannot hold replaced by ``_``: an image's stem is
    its id in the ``ImageSets`` lists, which are split at white space, and its name goes in the XML."""
    return "".join("_" if c.isspace() or NOT_XML.match(c) else c for c in name)


def corner_text(value: float, offset: int) -> str:
    """``value + offset`` as decimal text that the reader turns back into ``float32(value)``.

    The reader computes ``float32(float(text) - offset)`` (``offset`` is 1 for VOC's 1-based
    ``xmin``/``ymin``, 0 for ``xmax``/``ymax``). The shortest decimal of the ``float32`` plus the
    offset nearly always reads back and keeps integers integers (tools that ``int()`` VOC corners
    exist); where float64 rounding would land it on a neighbour, the float64 sum is written, exact
    for a ``float32`` of at least ``2**-29``. A smaller ``xmin`` or ``ymin`` comes back within
    ``2**-53`` px, the step of float64 numbers near 1.
    """
    short = np.format_float_positional(np.float32(value), unique=True, trim="-")
    text = str(Decimal(short) + offset)
    if np.float32(float(text) - offset) == np.float32(value):
        return text
    return repr(float(np.float32(value)) + offset)


def annotation_xml(sample: Sample, file_name: str, class_names: list[str]) -> str:
    """The VOC annotation (XML text) of ``sample``, whose image is ``JPEGImages/{file_name}``.

    Boxes go from the sample's 0-based exclusive corners to VOC's 1-based inclusive ones (the inverse
    of :func:`load_voc`); crowd regions become ``difficult`` objects, which the reader makes crowd
    regions again. Raises :class:`DatasetError` for a class name the reader would not give back.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for key, value in (("width", sample.width), ("height", sample.height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for box, label, crowd in zip(sample.boxes, sample.labels, sample.iscrowd):
        name = class_names[label]
        problem = name_problem(name)
        if problem:
            raise DatasetError(f"class {name!r} cannot be written as a VOC object name: {problem}; rename it first")
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "1" if crowd else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value, offset in zip(("xmin", "ymin", "xmax", "ymax"), box.tolist(), (1, 1, 0, 0)):
            ET.SubElement(bndbox, key).text = corner_text(value, offset)
    ET.indent(root)
    # The declaration is written here: ElementTree's names the locale's encoding for encoding="unicode".
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

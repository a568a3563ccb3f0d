"""Shared fixtures that write small datasets into ``tmp_path``. Fixtures only; no test helpers here.

Each ``make_*`` fixture returns a function, so a test describes exactly the dataset it needs.
Tests never depend on files outside ``tmp_path`` (a fresh clone has no shared data folder).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: the test machines have 2 cores, often shared, and small tensors gain
    nothing from threads. Only speed changes; every test compares results computed in one process."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small shapes dataset (16 train, 8 valid images of 320 px, 3 classes), written once per session.

    Shared by many tests, so tests must only read it.
    """
    from plaindet.data.shapes import ensure_shapes

    return ensure_shapes(tmp_path_factory.mktemp("shapes"), train=16, val=8)


@pytest.fixture
def make_image():
    """``make_image(path, width=64, height=48, orientation=None, mode="RGB") -> Path``.

    Writes an image in the format of ``path``'s suffix (.jpg, .png, .webp, .bmp) with a white
    square in its stored top-left corner (so orientation tests can find it), and an EXIF
    orientation tag when ``orientation`` is given.
    """

    def make(path, width: int = 64, height: int = 48, orientation: int | None = None, mode: str = "RGB") -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.full((height, width, 3), 60, dtype=np.uint8)
        pixels[: height // 4, : width // 4] = 255
        img = Image.fromarray(pixels).convert(mode)
        kwargs = {}
        if orientation is not None:
            exif = Image.Exif()
            exif[0x0112] = orientation
            kwargs["exif"] = exif.tobytes()
        if path.suffix.lower() in (".jpg", ".jpeg"):
            kwargs["quality"] = 95
        img.save(path, **kwargs)
        return path

    return make


@pytest.fixture
def make_yolo(tmp_path, make_image):
    """``make_yolo(splits, names=("cat", "dog"), root=tmp_path / "yolo", extra=None) -> Path`` (the yaml).

    ``splits`` maps a split key to ``{image name: (width, height, label text or None)}``; ``None``
    writes no label file. Images go to ``root/images/{split}/``, labels to ``root/labels/{split}/``,
    and ``root/data.yaml`` names the splits; ``extra`` adds or overrides yaml keys.
    """

    def make(splits: dict, names=("cat", "dog"), root: Path | None = None, extra: dict | None = None) -> Path:
        root = Path(root or tmp_path / "yolo")
        for split, images in splits.items():
            for name, (width, height, labels) in images.items():
                make_image(root / "images" / split / name, width, height)
                if labels is not None:
                    label = root / "labels" / split / (Path(name).stem + ".txt")
                    label.parent.mkdir(parents=True, exist_ok=True)
                    label.write_text(labels)
        data = {split: f"images/{split}" for split in splits}
        data["names"] = list(names) if not isinstance(names, dict) else names
        data.update(extra or {})
        (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return root / "data.yaml"

    return make


@pytest.fixture
def make_coco(tmp_path, make_image):
    """``make_coco(images, annotations, categories, file=..., image_dir=None) -> Path`` (the JSON).

    ``images`` are COCO image dicts; each gets an image file of its ``width``/``height`` (default
    64x48) in ``image_dir`` (default: next to the JSON) unless it has ``"_no_file": True``.
    ``file`` defaults to ``tmp_path / "coco/train/_annotations.coco.json"`` (Roboflow layout).
    """

    def make(images, annotations, categories, file: Path | None = None, image_dir: Path | None = None) -> Path:
        file = Path(file or tmp_path / "coco" / "train" / "_annotations.coco.json")
        folder = Path(image_dir or file.parent)
        written = []
        for img in images:
            img = dict(img)
            if not img.pop("_no_file", False):
                make_image(folder / img["file_name"], img.get("width", 64), img.get("height", 48))
            written.append(img)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps({"images": written, "annotations": annotations, "categories": categories}))
        return file

    return make


@pytest.fixture
def make_voc(tmp_path, make_image):
    """``make_voc(images, splits=None, root=tmp_path / "voc") -> Path`` (the VOC folder).

    ``images`` maps an id to ``(width, height, objects)`` where ``objects`` is a list of
    ``(name, xmin, ymin, xmax, ymax, difficult)`` in VOC's 1-based pixels, or to a string written
    as the XML file as is. ``splits`` maps a split name to ids for ``ImageSets/Main/{split}.txt``.
    """

    def make(images: dict, splits: dict | None = None, root: Path | None = None) -> Path:
        root = Path(root or tmp_path / "voc")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        for image_id, spec in images.items():
            if isinstance(spec, str):
                make_image(root / "JPEGImages" / f"{image_id}.jpg")
                (root / "Annotations" / f"{image_id}.xml").write_text(spec)
                continue
            width, height, objects = spec
            make_image(root / "JPEGImages" / f"{image_id}.jpg", width, height)
            xml_objects = "".join(
                f"<object><name>{name}</name><difficult>{int(difficult)}</difficult><bndbox><xmin>{x1}</xmin>"
                f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                for name, x1, y1, x2, y2, difficult in objects
            )
            (root / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename><size><width>{width}</width>"
                f"<height>{height}</height><depth>3</depth></size>{xml_objects}</annotation>"
            )
        for split, ids in (splits or {}).items():
            main = root / "ImageSets" / "Main"
            main.mkdir(parents=True, exist_ok=True)
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
        return root

    return make


# ----------------------------------------------------------------------------------------------------------------------
# Measured values: tests that measure a figure the README quotes record it here, and pytest prints
# every recorded figure at the end of the run, even under -q (pytest hides a passing test's prints).

_MEASURED: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def measured():
    """``measured(what, value)``: record a figure (a float is printed with 3 significant digits) for
    the "measured values" section at the end of the pytest run. Session-scoped, so a module-scoped
    fixture can report a figure gathered over its module's tests."""

    def record(what: str, value) -> None:
        _MEASURED.append((what, f"{value:.3g}" if isinstance(value, float) else str(value)))

    return record


def pytest_terminal_summary(terminalreporter):
    if _MEASURED:
        terminalreporter.section("measured values")
        for what, value in _MEASURED:
            terminalreporter.write_line(f"{what}: {value}")


# ----------------------------------------------------------------------------------------------------------------------
# A trained model, shared by the command-line tests (tests/test_cli.py, tests/test_cli_commands.py)


@pytest.fixture(scope="session")
def trained_run(tiny_shapes, tmp_path_factory) -> Path:
    """``plaindet train`` of a small plaindet-t (4 blocks, 64 neck channels) fitted to the 8 ``valid``
    images of ``tiny_shapes`` at 128 px (30 steps, no augmentation; evaluated once, at the end, on
    the same images): a model that has learned something (AP measured 0.56; untrained ~0.001) in
    about 6 s. The run folder, written once per session: tests must only read it."""
    import logging
    import re

    from typer.testing import CliRunner

    from plaindet.cli import app

    run = tmp_path_factory.mktemp("cli") / "run"
    args = [
        "train", "--model", "plaindet-t", "--data", tiny_shapes, "--train-split", "valid", "--val-split", "valid",
        "--epochs", 15, "--eval-every", 15, "--batch-size", 4, "--image-size", 128, "--lr", 4e-3, "--warmup-steps", 5,
        "--amp", "off", "--seed", 1, "--out", run,
        "--set", "model_overrides={backbone: {depth: 4, window_size: 8}, neck_channels: 64}",
        "--set", "augment={crop: 0.0, zoom_out: 0.0, jitter: 0.0, hflip: 0.0}",
    ]  # fmt: skip
    # The CLI configures logging for its process; keep that from leaking into other tests.
    root, ours = logging.getLogger(), logging.getLogger("plaindet")
    handlers, level = list(root.handlers), ours.level
    try:
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        root.handlers[:] = handlers
        ours.setLevel(level)
    assert result.exit_code == 0, result.output
    assert re.search(r"^epoch 15/15  loss \d.*  AP 0\.\d{3}", result.stdout, re.MULTILINE), result.stdout
    return run

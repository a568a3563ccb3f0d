"""``plaindet data convert``: lossless round trips, the layouts written, and refusing to overwrite."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import yaml

from plaindet.data import DatasetError, load_dataset
from plaindet.data.convert import convert_dataset, run_convert
from plaindet.data.formats import list_splits


def read_labels(folder):
    """``{stem: array (N, 5)}`` of every label file in a YOLO labels folder."""
    return {
        f.stem: np.array([line.split() for line in f.read_text().splitlines()], dtype=np.float64).reshape(-1, 5)
        for f in sorted(folder.glob("*.txt"))
    }


@pytest.fixture
def yolo_source(make_yolo):
    rng = np.random.default_rng(0)

    def labels(n):
        # Random boxes well inside the image, written with 6 decimals like most YOLO exports.
        cx, cy = rng.uniform(0.3, 0.7, n), rng.uniform(0.3, 0.7, n)
        w, h = rng.uniform(0.001, 0.5, n), rng.uniform(0.001, 0.5, n)
        cls = rng.integers(0, 3, n)
        return "".join(f"{c} {a:.6f} {b:.6f} {d:.6f} {e:.6f}\n" for c, a, b, d, e in zip(cls, cx, cy, w, h))

    return make_yolo(
        {
            "train": {"a.jpg": (640, 480, labels(7)), "b.png": (333, 517, labels(3)), "n.jpg": (64, 48, "")},
            "val": {"c.jpg": (1000, 10, labels(4)), "d.webp": (50, 70, None)},
        },
        names={0: "cat", 1: "dog", 2: "bird"},
    )


def test_yolo_to_coco_to_yolo_is_exact(tmp_path, yolo_source):
    coco = convert_dataset(yolo_source, "coco", tmp_path / "coco")
    assert [(s.name, s.images) for s in coco.splits] == [("train", 3), ("val", 2)]
    assert list_splits(tmp_path / "coco") == ["train", "val"]
    back = convert_dataset(tmp_path / "coco", "yolo", tmp_path / "back")
    assert back.notes == []  # nothing YOLO cannot hold
    for split in ("train", "val"):
        original = read_labels(yolo_source.parent / "labels" / split)
        final = read_labels(tmp_path / "back" / "labels" / split)
        images = {p.stem for p in (yolo_source.parent / "images" / split).iterdir()}
        assert set(final) == images  # every image, negatives as empty label files
        for stem in images:
            a, b = original.get(stem, np.zeros((0, 5))), final[stem]
            assert a.shape == b.shape
            np.testing.assert_array_equal(a[:, 0], b[:, 0])
            # Within 1e-6 of the image size, and 1e-6 of the value itself (float32 pixel corners).
            np.testing.assert_allclose(b[:, 1:], a[:, 1:], rtol=1e-6, atol=1e-6)
    data = yaml.safe_load((tmp_path / "back" / "data.yaml").read_text())
    assert data["names"] == {0: "cat", 1: "dog", 2: "bird"} and data["train"] == "images/train"
    assert "path" not in data and "category_ids" not in data
    a, b = load_dataset(yolo_source, "val"), load_dataset(tmp_path / "back", "val")
    assert [s.image_id for s in a] == [s.image_id for s in b]


def test_coco_to_yolo_to_coco_keeps_boxes_classes_and_ids(tmp_path, make_coco):
    cats = [{"id": 0, "name": "objects"}, {"id": 3, "name": "car"}, {"id": 90, "name": "toothbrush"}]
    images = [{"id": 41, "file_name": "x.jpg", "width": 200, "height": 100}, {"id": 7, "file_name": "y.jpg"}]
    anns = [
        {"id": 1, "image_id": 41, "category_id": 90, "bbox": [10.25, 20.5, 30.125, 40.75], "area": 1000, "iscrowd": 0},
        {"id": 2, "image_id": 41, "category_id": 3, "bbox": [0, 0, 200, 100], "area": 20000, "iscrowd": 0},
        {"id": 3, "image_id": 41, "category_id": 3, "bbox": [50, 50, 60, 40], "area": 2000, "iscrowd": 1},
    ]
    root = tmp_path / "src"
    make_coco(images, anns, cats, file=root / "train" / "_annotations.coco.json")
    make_coco([dict(images[0], id=5)], [], cats, file=root / "valid" / "_annotations.coco.json")

    result = convert_dataset(root, "yolo", tmp_path / "yolo")
    assert [(s.name, s.source_name, s.boxes, s.crowd_dropped) for s in result.splits] == [
        ("train", "train", 2, 1),
        ("val", "valid", 0, 0),
    ]
    assert any("1 crowd boxes left out" in note for note in result.notes)
    assert any("category_ids" in note for note in result.notes)
    assert any("image ids not kept" in note for note in result.notes)
    assert yaml.safe_load((tmp_path / "yolo" / "data.yaml").read_text())["category_ids"] == [0, 3, 90]

    convert_dataset(tmp_path / "yolo", "coco", tmp_path / "coco")
    before = load_dataset(root, "train")
    after = load_dataset(tmp_path / "coco", "train")
    assert after.category_ids == [0, 3, 90] and after.class_names == before.class_names
    by_name = {s.image_path.name: s for s in after}
    for sample in before:
        other = by_name[sample.image_path.name]
        keep = ~sample.iscrowd  # YOLO cannot hold crowd boxes
        np.testing.assert_allclose(other.boxes, sample.boxes[keep], rtol=1e-6, atol=1e-4)
        np.testing.assert_array_equal(other.labels, sample.labels[keep])


def test_coco_to_coco_keeps_everything(tmp_path, make_coco):
    cats = [{"id": 2, "name": "b"}, {"id": 1, "name": "a"}]
    anns = [
        {"id": 9, "image_id": 12, "category_id": 2, "bbox": [1.5, 2.5, 10.1, 20.2], "area": 55.5, "iscrowd": 1},
        {"id": 10, "image_id": 12, "category_id": 1, "bbox": [3, 4, 5, 6], "area": 12.25, "iscrowd": 0},
    ]
    src = make_coco([{"id": 12, "file_name": "img.jpg", "width": 64, "height": 48}], anns, cats)
    convert_dataset(src.parent.parent, "coco", tmp_path / "out")
    data = json.loads((tmp_path / "out" / "annotations" / "train.json").read_text())
    assert data["categories"] == [{"id": 1, "name": "a", "supercategory": ""}, {"id": 2, "name": "b", "supercategory": ""}]
    assert data["images"] == [{"id": 12, "file_name": "img.jpg", "width": 64, "height": 48}]
    assert [(a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in data["annotations"]] == [
        (2, [1.5, 2.5, 10.1, 20.2], 55.5, 1),
        (1, [3.0, 4.0, 5.0, 6.0], 12.25, 0),
    ]
    assert (tmp_path / "out" / "images" / "train" / "img.jpg").is_file()


def test_voc_to_coco_keeps_difficult_as_crowd(tmp_path, make_voc):
    root = make_voc({"1": (64, 48, [("cat", 1, 1, 10, 10, True), ("dog", 5, 5, 20, 20, False)])})
    convert_dataset(root, "coco", tmp_path / "out")
    (sample,) = load_dataset(tmp_path / "out")
    np.testing.assert_array_equal(sample.iscrowd, [True, False])
    np.testing.assert_array_equal(sample.boxes, [[0, 0, 10, 10], [4, 4, 20, 20]])


def test_images_are_hard_linked(tmp_path, yolo_source):
    convert_dataset(yolo_source, "coco", tmp_path / "out")
    src = yolo_source.parent / "images" / "train" / "a.jpg"
    assert os.path.samefile(src, tmp_path / "out" / "images" / "train" / "a.jpg")


def test_refuses_a_non_empty_output_folder(tmp_path, yolo_source):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="already exists and is not empty"):
        convert_dataset(yolo_source, "coco", out)
    assert os.listdir(out) == ["keep.txt"]
    (out / "keep.txt").unlink()  # an empty folder is fine
    convert_dataset(yolo_source, "coco", out)
    assert (out / "annotations" / "train.json").is_file()


def test_failed_conversion_leaves_nothing(tmp_path, yolo_source):
    # A split that cannot be read stops the conversion; no partial output may remain.
    data = yaml.safe_load(yolo_source.read_text())
    data["val"] = "images/nowhere"
    yolo_source.write_text(yaml.safe_dump(data))
    with pytest.raises(DatasetError, match="nowhere"):
        convert_dataset(yolo_source, "coco", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["yolo"]


def test_same_stem_in_one_split_gets_unique_names(tmp_path, make_image):
    for class_id, (folder, suffix) in enumerate((("one", ".jpg"), ("two", ".png"))):
        make_image(tmp_path / "ds" / "images" / folder / f"a{suffix}")
        (tmp_path / "ds" / "labels" / folder).mkdir(parents=True)
        (tmp_path / "ds" / "labels" / folder / "a.txt").write_text(f"{class_id} 0.5 0.5 0.5 0.5\n")
    (tmp_path / "ds" / "data.yaml").write_text("train: [images/one, images/two]\nnames: [x, y]\n")
    convert_dataset(tmp_path / "ds" / "data.yaml", "yolo", tmp_path / "out")
    labels = read_labels(tmp_path / "out" / "labels" / "train")
    assert sorted(labels) == ["a", "a_1"]  # the second image gets its image id appended
    assert labels["a"][0, 0] == 0 and labels["a_1"][0, 0] == 1


def test_run_convert_reports(tmp_path, yolo_source):
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=200)
    with pytest.raises(DatasetError, match="unknown target format 'voc'"):
        run_convert(yolo_source, "voc", tmp_path / "x", console=console)
    assert not (tmp_path / "x").exists()
    assert run_convert(yolo_source, "coco", tmp_path / "ok", console=console) == 0
    assert "train: 3 images, 10 boxes" in out.getvalue() and "wrote coco dataset" in out.getvalue()


def test_convert_says_it_hard_links_and_copy_makes_independent_files(tmp_path, yolo_source):
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, width=200)
    assert run_convert(yolo_source, "coco", tmp_path / "linked", console=console) == 0
    assert "images: 5 hard-linked to the source's files (no extra space, but editing one in place edits both; --copy makes copies)" in out.getvalue()
    linked = sorted((tmp_path / "linked" / "images" / "train").iterdir())
    assert linked and all(p.stat().st_nlink == 2 for p in linked)

    out = io.StringIO()
    assert run_convert(yolo_source, "coco", tmp_path / "copied", copy=True, console=Console(file=out, width=200)) == 0
    assert "images: 5 copied" in out.getvalue() and "hard-linked" not in out.getvalue()
    copied = sorted((tmp_path / "copied" / "images" / "train").iterdir())
    assert [p.read_bytes() for p in copied] == [p.read_bytes() for p in linked]
    assert all(p.stat().st_nlink == 1 for p in copied)

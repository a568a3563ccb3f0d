"""``plaindet data convert``: lossless round trips, the layouts written, and refusing to overwrite."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import yaml

from plaindet.data import DatasetError, load_dataset
from plaindet.data.check import check_dataset
from plaindet.data.convert import convert_dataset, run_convert, write_datasets
from plaindet.data.formats import list_splits
from plaindet.data.sample import DetectionDataset


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
    with pytest.raises(DatasetError, match="unknown target format 'xml'; choose one of: coco, yolo, voc"):
        run_convert(yolo_source, "xml", tmp_path / "x", console=console)
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


# --- Pascal VOC ------------------------------------------------------------------------------------


@pytest.fixture
def coco_for_voc(tmp_path, make_coco):
    """Two splits; classes listed out of name order, one without boxes; float corners, a crowd region,
    segmentation areas and image ids that are not positions: everything VOC must keep or report."""
    cats = [{"id": 2, "name": "zebra"}, {"id": 5, "name": "ant"}, {"id": 9, "name": "unused"}]
    train = [{"id": 41, "file_name": "x.jpg", "width": 200, "height": 100}, {"id": 7, "file_name": "y.png", "width": 64, "height": 48}]
    anns = [
        {"id": 1, "image_id": 41, "category_id": 2, "bbox": [10.25, 20.5, 30.125, 40.75], "area": 1000, "iscrowd": 0},
        {"id": 2, "image_id": 41, "category_id": 5, "bbox": [0, 0, 200, 100], "area": 20000, "iscrowd": 0},
        {"id": 3, "image_id": 41, "category_id": 5, "bbox": [0.1, 0.3, 59.7, 39.9], "area": 2000, "iscrowd": 1},
        {"id": 4, "image_id": 7, "category_id": 2, "bbox": [1 / 3, 2 / 7, 61.123456, 45.000001], "area": 7, "iscrowd": 0},
    ]
    root = tmp_path / "src"
    make_coco(train, anns, cats, file=root / "train" / "_annotations.coco.json")
    make_coco([{"id": 3, "file_name": "z.jpg"}], [], cats, file=root / "valid" / "_annotations.coco.json")
    return root


def assert_same_by_name(before, after):
    """Same images (by file name), sizes, boxes (exact float32), classes by name and crowd flags."""
    assert sorted(s.image_path.name for s in after) == sorted(s.image_path.name for s in before)
    by_name = {s.image_path.name: s for s in after}
    for sample in before:
        other = by_name[sample.image_path.name]
        assert (other.width, other.height) == (sample.width, sample.height)
        np.testing.assert_array_equal(other.boxes, sample.boxes)
        assert [after.class_names[k] for k in other.labels] == [before.class_names[k] for k in sample.labels]
        np.testing.assert_array_equal(other.iscrowd, sample.iscrowd)


def test_coco_to_voc_round_trip_keeps_boxes_names_sizes_splits_and_crowd(tmp_path, coco_for_voc):
    result = convert_dataset(coco_for_voc, "voc", tmp_path / "voc")
    assert [(s.name, s.images, s.boxes, s.crowd_dropped) for s in result.splits] == [("train", 2, 4, 0), ("valid", 1, 0, 0)]
    out = tmp_path / "voc"
    assert sorted(p.name for p in (out / "Annotations").iterdir()) == ["x.xml", "y.xml", "z.xml"]
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == ["x.jpg", "y.png", "z.jpg"]
    assert (out / "ImageSets" / "Main" / "valid.txt").read_text() == "z\n"
    assert list_splits(out) == ["train", "valid"]
    for split in ("train", "valid"):
        before, after = load_dataset(coco_for_voc, split), load_dataset(out, split)
        assert after.format == "voc" and after.class_names == ["ant", "zebra"]
        assert_same_by_name(before, after)
    assert "<difficult>1</difficult>" in (out / "Annotations" / "x.xml").read_text()
    assert [c.failed for c in check_dataset(out)] == [False, False]
    notes = "\n".join(result.notes)
    assert "1 classes without boxes left out ('unused')" in notes
    assert "class order not kept" in notes and "category ids not kept" in notes
    assert "object areas not kept" in notes and "image ids not kept" in notes


def test_voc_corners_are_integers_where_they_were_and_read_back_exactly(tmp_path, make_voc):
    from plaindet.data.voc import corner_text

    assert (corner_text(0.0, 1), corner_text(199.0, 0), corner_text(10.25, 1)) == ("1", "199", "11.25")
    values = np.random.default_rng(0).uniform(0, 5000, 20000).astype(np.float32)
    for value in [*values.tolist(), 2.0**-29, 1e-7, 4095.9998]:
        assert np.float32(float(corner_text(value, 1)) - 1) == np.float32(value)
        assert np.float32(float(corner_text(value, 0))) == np.float32(value)
    assert abs(float(corner_text(1e-20, 1)) - 1 - 1e-20) <= 2.0**-53  # below float64's step near 1

    source = make_voc({"1": (64, 48, [("cat", 1, 1, 64, 48, False), ("dog", 3, 4, 10, 12, True)])}, {"train": ["1"]})
    convert_dataset(source, "voc", tmp_path / "out")
    xml = (tmp_path / "out" / "Annotations" / "1.xml").read_text()
    assert "<xmin>1</xmin>" in xml and "<xmax>64</xmax>" in xml and "<ymin>4</ymin>" in xml


def test_voc_to_voc_keeps_everything_and_notes_nothing(tmp_path, make_voc):
    source = make_voc(
        {"a": (64, 48, [("dog", 1, 1, 10, 10, True), ("cat", 5.5, 5, 20, 20.25, False)]), "b": (32, 32, []), "c": (40, 30, [("cat", 2, 2, 9, 9, False)])},
        {"train": ["a", "b"], "val": ["c"]},
    )
    result = convert_dataset(source, "voc", tmp_path / "out")
    assert result.notes == []
    for split in ("train", "val"):
        before, after = load_dataset(source, split), load_dataset(tmp_path / "out", split)
        assert after.class_names == before.class_names
        assert [s.image_id for s in after] == [s.image_id for s in before]
        assert_same_by_name(before, after)


def test_voc_escapes_names_and_renames_images_with_white_space(tmp_path, make_coco):
    cats = [{"id": 1, "name": "fish & <chips>"}, {"id": 2, "name": "kätzchen 猫 \"quoted\""}]
    images = [{"id": 1, "file_name": "my photo.jpg", "width": 64, "height": 48}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 10], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 20, 10, 10], "iscrowd": 0},
    ]
    src = make_coco(images, anns, cats)
    convert_dataset(src, "voc", tmp_path / "out")
    xml = (tmp_path / "out" / "Annotations" / "my_photo.xml").read_text(encoding="utf-8")
    assert "<name>fish &amp; &lt;chips&gt;</name>" in xml and "<filename>my_photo.jpg</filename>" in xml
    (sample,) = after = load_dataset(tmp_path / "out")
    assert after.class_names == ["fish & <chips>", "kätzchen 猫 \"quoted\""]
    assert sample.image_path.name == "my_photo.jpg" and sample.labels.tolist() == [0, 1]
    assert [c.failed for c in check_dataset(tmp_path / "out")] == [False]


@pytest.mark.parametrize("name, why", [(" cat", "white space"), ("a\rb", "carriage return"), ("bell\x07", "control character"), ("", "empty")])
def test_voc_refuses_class_names_it_cannot_give_back(tmp_path, make_coco, name, why):
    src = make_coco([{"id": 1, "file_name": "a.jpg"}], [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}], [{"id": 1, "name": name}])
    with pytest.raises(DatasetError, match=why):
        convert_dataset(src, "voc", tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["coco"]  # no output, no staging folder


def test_voc_refuses_split_names_the_reader_would_not_list_and_merged_classes(tmp_path, make_coco):
    cats = [{"id": 1, "name": "car"}, {"id": 2, "name": "car"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}, {"id": 2, "image_id": 1, "category_id": 2, "bbox": [9, 9, 5, 5]}]
    src = make_coco([{"id": 1, "file_name": "a.jpg"}], anns, cats, file=tmp_path / "c" / "annotations" / "my_train.json")
    with pytest.raises(DatasetError, match="split 'my_train' cannot be a VOC split"):
        convert_dataset(tmp_path / "c", "voc", tmp_path / "out")
    trainval = [DetectionDataset([], ["car"], split=name) for name in ("train", "val", "trainval")]
    with pytest.raises(DatasetError, match="'trainval' beside 'train' and 'val' would be read as their union"):
        write_datasets(trainval, "voc", tmp_path / "out")
    src.rename(src.with_name("train.json"))
    with pytest.raises(DatasetError, match="classes 0 and 1 are both named 'car'"):
        convert_dataset(tmp_path / "c", "voc", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_voc_image_names_are_unique_across_splits(tmp_path, make_coco):
    cats = [{"id": 1, "name": "cat"}]
    for split, box in (("train", [1, 1, 5, 5]), ("valid", [2, 2, 30, 20])):
        ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": box}
        make_coco([{"id": 1, "file_name": "a.jpg"}], [ann], cats, file=tmp_path / "src" / split / "_annotations.coco.json")
    convert_dataset(tmp_path / "src", "voc", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "JPEGImages").iterdir()) == ["a.jpg", "a_1.jpg"]
    for split in ("train", "valid"):
        (before,), (after,) = load_dataset(tmp_path / "src", split), load_dataset(tmp_path / "out", split)
        np.testing.assert_array_equal(after.boxes, before.boxes)


def test_cli_converts_to_voc(tmp_path, yolo_source):
    from typer.testing import CliRunner

    from plaindet.cli import app

    runner = CliRunner()
    assert "coco, yolo or voc" in runner.invoke(app, ["data", "convert", "--help"]).output
    got = runner.invoke(app, ["data", "convert", str(yolo_source), "--to", "voc", str(tmp_path / "voc")])
    assert got.exit_code == 0, got.output
    assert "wrote voc dataset" in got.output
    for split in ("train", "val"):
        assert_same_by_name(load_dataset(yolo_source, split), load_dataset(tmp_path / "voc", split))

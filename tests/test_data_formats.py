"""Reading COCO, YOLO and Pascal VOC datasets into the one sample format."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from plaindet.data import DatasetError, load_dataset
from plaindet.data.formats import detect_format, list_splits
from plaindet.data.rules import canonical_split
from plaindet.data.yolo import label_path

CATS = [{"id": 0, "name": "animals", "supercategory": "none"}, {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


# --- format detection and splits -------------------------------------------------------------------


def test_detect_format(tmp_path, make_coco, make_yolo, make_voc):
    coco_file = make_coco([{"id": 1, "file_name": "a.jpg"}], [], CATS)
    assert detect_format(coco_file) == "coco"
    assert detect_format(coco_file.parent.parent) == "coco"  # Roboflow folder of splits
    yolo_yaml = make_yolo({"train": {"a.jpg": (64, 48, "")}})
    assert detect_format(yolo_yaml) == "yolo"
    assert detect_format(yolo_yaml.parent) == "yolo"  # folder with data.yaml
    assert detect_format(make_voc({"1": (64, 48, [])})) == "voc"


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match="not a dataset file"):
        load_dataset(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no dataset found"):
        load_dataset(tmp_path / "empty")


@pytest.mark.parametrize(
    ("name", "canonical"), [("valid", "val"), ("validation", "val"), ("val2017", "val"), ("train", "train"), ("Test", "test")]
)
def test_canonical_split(name, canonical):
    assert canonical_split(name) == canonical


def test_unknown_split_lists_the_splits(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, "")}, "val": {"b.jpg": (64, 48, "")}})
    with pytest.raises(DatasetError, match=r"no split 'test'; splits found: train, val"):
        load_dataset(yaml_file, "test")


# --- COCO ------------------------------------------------------------------------------------------


def test_coco_roboflow_layout(tmp_path, make_coco):
    root = tmp_path / "coco"
    for split in ("train", "valid", "test"):
        make_coco(
            [{"id": 7, "file_name": f"{split}.jpg", "width": 64, "height": 48}],
            [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [10, 5, 20, 30], "area": 321.5, "iscrowd": 0}],
            CATS,
            file=root / split / "_annotations.coco.json",
        )
    assert list_splits(root) == ["train", "valid", "test"]
    ds = load_dataset(root, "val")  # "val" finds "valid"
    assert ds.split == "valid" and ds.format == "coco"
    # Roboflow's supercategory (id 0, no annotations) is kept as class 0; classes follow sorted ids.
    assert ds.class_names == ["animals", "cat", "dog"] and ds.category_ids == [0, 1, 2]
    (sample,) = ds.samples
    assert sample.image_id == 7 and sample.image_path == root / "valid" / "valid.jpg"
    np.testing.assert_array_equal(sample.boxes, [[10, 5, 30, 35]])  # xywh -> xyxy
    np.testing.assert_array_equal(sample.labels, [2])
    np.testing.assert_array_equal(sample.areas, [321.5])
    assert not ds.report.problems


def test_coco_annotations_folder_with_sparse_ids(tmp_path, make_coco):
    root = tmp_path / "coco2017"
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    images = [
        {"id": 139, "file_name": "000139.jpg", "width": 64, "height": 48},
        {"id": 285, "file_name": "000285.jpg", "width": 40, "height": 30},
    ]
    anns = [
        {"id": 5, "image_id": 139, "category_id": 90, "bbox": [1, 2, 3, 4], "area": 10.0, "iscrowd": 0},
        {"id": 6, "image_id": 139, "category_id": 1, "bbox": [0, 0, 64, 48], "area": 2000.0, "iscrowd": 1},
    ]
    make_coco(images, anns, cats, file=root / "annotations" / "instances_val2017.json", image_dir=root / "val2017")
    (root / "annotations" / "captions_val2017.json").write_text("{}")  # not a detection file: ignored
    assert list_splits(root) == ["val2017"]
    ds = load_dataset(root, "val")  # the year may be left out
    assert ds.class_names == ["person", "car", "toothbrush"] and ds.category_ids == [1, 3, 90]
    a, b = ds.samples
    assert (a.image_id, b.image_id) == (139, 285) and a.image_path == root / "val2017" / "000139.jpg"
    np.testing.assert_array_equal(a.labels, [2, 0])
    np.testing.assert_array_equal(a.iscrowd, [False, True])
    assert len(b.boxes) == 0  # an image without annotations is a negative
    # A single file is one split: the split argument is not needed.
    assert len(load_dataset(root / "annotations" / "instances_val2017.json")) == 2


def test_coco_check_images_false_trusts_json_sizes(make_coco):
    file = make_coco([{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}], [], CATS)
    # The JSON claims another size; with check_images the image header wins (and is reported).
    data = json.loads(file.read_text())
    data["images"][0]["width"] = 100
    file.write_text(json.dumps(data))
    assert load_dataset(file, check_images=False)[0].width == 100
    ds = load_dataset(file)
    assert ds[0].width == 64 and ds.report.counts["size_mismatch"] == 1


def test_coco_missing_areas_mean_box_areas(make_coco):
    file = make_coco(
        [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20]},  # no area, no iscrowd
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 20]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 7.5},
        ],
        CATS,
    )
    a, b = load_dataset(file).samples
    assert a.areas is None  # the Sample contract: None means box areas
    np.testing.assert_array_equal(a.iscrowd, [False])
    np.testing.assert_array_equal(b.areas, [200.0, 7.5])  # a missing area among given ones: box area


# --- YOLO ------------------------------------------------------------------------------------------


def test_yolo_basic(make_yolo):
    yaml_file = make_yolo(
        {
            "train": {
                "b.png": (100, 50, "1 0.5 0.5 0.2 0.4\n0 0.25 0.25 0.5 0.5\n"),
                "a.jpg": (64, 48, None),  # no label file: a negative
                "c.webp": (80, 60, ""),  # empty label file: a negative
                "d.bmp": (20, 20, "\n0 0.5 0.5 1 1\n\n"),
            },
            "val": {"e.jpg": (64, 48, "1 0.5 0.5 0.5 0.5")},
        }
    )
    assert list_splits(yaml_file) == ["train", "val"]
    ds = load_dataset(yaml_file, "train")
    assert ds.format == "yolo" and ds.class_names == ["cat", "dog"] and ds.category_ids == [0, 1]
    assert [s.image_path.name for s in ds] == ["a.jpg", "b.png", "c.webp", "d.bmp"]
    assert [s.image_id for s in ds] == [0, 1, 2, 3]  # positions in sorted path order
    b = ds[1]
    assert (b.width, b.height) == (100, 50)
    np.testing.assert_allclose(b.boxes, [[40, 15, 60, 35], [0, 0, 50, 25]])
    np.testing.assert_array_equal(b.labels, [1, 0])
    assert len(ds[0].boxes) == len(ds[2].boxes) == 0
    np.testing.assert_allclose(ds[3].boxes, [[0, 0, 20, 20]])
    assert ds.report.counts == {"missing_label_file": 1}
    assert ds.report.problems[0].severity == "info"
    assert not ds.report.errors and not ds.report.warnings


def test_yolo_label_path_rule():
    # The last /images/ becomes /labels/ (the Ultralytics rule), the suffix .txt.
    assert str(label_path("/d/images/x/images/train/a.b.jpg")) == "/d/images/x/labels/train/a.b.txt"
    assert str(label_path("/d/imgs/a.png")) == "/d/imgs/a.txt"  # no images/ folder: next to the image


def test_yolo_names_dict_with_sparse_ids_and_path(tmp_path, make_image):
    root = tmp_path / "ds"
    make_image(root / "data" / "images" / "a.jpg", 10, 10)
    (root / "data" / "labels").mkdir(parents=True)
    (root / "data" / "labels" / "a.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (root / "cfg").mkdir()
    (root / "cfg" / "my.yaml").write_text("path: ../data\ntrain: images\nnames:\n  3: ant\n  7: bee\n")
    ds = load_dataset(root / "cfg" / "my.yaml")
    assert ds.class_names == ["ant", "bee"] and ds.category_ids == [3, 7]
    np.testing.assert_array_equal(ds[0].labels, [1])


def test_yolo_split_as_list_and_txt(tmp_path, make_image):
    root = tmp_path / "ds"
    for sub in ("one", "two"):
        make_image(root / "images" / sub / f"{sub}.jpg")
        (root / "labels" / sub).mkdir(parents=True)
        (root / "labels" / sub / f"{sub}.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "val.txt").write_text("./images/two/two.jpg\n\nimages/one/one.jpg\n")
    (root / "data.yaml").write_text("train: [images/one, images/two]\nval: val.txt\nnames: [thing]\n")
    train = load_dataset(root / "data.yaml", "train")
    assert [s.image_path.name for s in train] == ["one.jpg", "two.jpg"]
    val = load_dataset(root / "data.yaml", "valid")
    assert [s.image_path.name for s in val] == ["one.jpg", "two.jpg"]  # sorted, like Ultralytics
    assert sum(len(s.boxes) for s in val) == 2 and not val.report.problems


def test_yolo_exif_rotated_image_uses_displayed_size(tmp_path, make_image):
    root = tmp_path / "ds"
    make_image(root / "images" / "a.jpg", 64, 48, orientation=6)  # displayed 48 wide, 64 high
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text("train: images\nnames: [thing]\n")
    (sample,) = load_dataset(root / "data.yaml").samples
    assert (sample.width, sample.height) == (48, 64)
    np.testing.assert_allclose(sample.boxes, [[12, 16, 36, 48]])


def test_yolo_polygon_line_counts_as_its_box(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (100, 100, "1 0.1 0.2 0.5 0.1 0.3 0.6\n")}})
    np.testing.assert_allclose(load_dataset(yaml_file)[0].boxes, [[10, 10, 50, 60]], atol=1e-5)


def test_yolo_copied_symlink_is_followed(tmp_path, make_image):
    # A symbolic link copied as a plain file holding its target (git without symlink support).
    make_image(tmp_path / "images" / "train" / "a.jpg")
    ds_root = tmp_path / "ds"
    (ds_root / "labels" / "train").mkdir(parents=True)
    (ds_root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (ds_root / "images").write_text("../images")
    (ds_root / "data.yaml").write_text("train: images/train\nnames: [thing]\n")
    ds = load_dataset(ds_root / "data.yaml")
    assert len(ds) == 1 and len(ds[0].boxes) == 1  # labels found through the link's path
    assert ds.report.counts == {"symlink_stub": 1}


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_yolo_real_symlink_keeps_the_label_rule(tmp_path, make_image):
    make_image(tmp_path / "images" / "train" / "a.jpg")
    ds_root = tmp_path / "ds"
    (ds_root / "labels" / "train").mkdir(parents=True)
    (ds_root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (ds_root / "images").symlink_to(tmp_path / "images")
    (ds_root / "data.yaml").write_text("train: images/train\nnames: [thing]\n")
    ds = load_dataset(ds_root / "data.yaml")
    assert len(ds[0].boxes) == 1 and not ds.report.problems


# --- Pascal VOC ------------------------------------------------------------------------------------


def test_voc_boxes_difficult_and_splits(make_voc):
    root = make_voc(
        {
            "001": (64, 48, [("dog", 1, 1, 64, 48, False), ("cat", 11, 21, 30, 40, True)]),
            "002": (64, 48, [("bird", 5, 5, 10, 10, False)]),
            "003": (64, 48, []),
        },
        splits={"train": ["001", "003"], "val": ["002"], "trainval": ["001", "002", "003"]},
    )
    assert list_splits(root) == ["train", "val"]  # trainval is the union of the two
    train = load_dataset(root, "train")
    # Classes come from every XML file of the dataset, so both splits number them the same.
    assert train.class_names == ["bird", "cat", "dog"] and train.format == "voc"
    first, third = train.samples
    # 1-based inclusive VOC pixels: (1, 1, 64, 48) covers the whole 64x48 image.
    np.testing.assert_array_equal(first.boxes, [[0, 0, 64, 48], [10, 20, 30, 40]])
    np.testing.assert_array_equal(first.labels, [2, 1])
    np.testing.assert_array_equal(first.iscrowd, [False, True])  # difficult -> ignored in eval and training
    assert (first.image_id, third.image_id) == (0, 1) and len(third.boxes) == 0
    val = load_dataset(root, "validation")
    assert val.class_names == train.class_names and val[0].labels.tolist() == [0]


def test_voc_without_imagesets_is_one_train_split(make_voc):
    root = make_voc({"b": (64, 48, [("x", 1, 1, 5, 5, False)]), "a": (64, 48, [])})
    assert list_splits(root) == ["train"]
    ds = load_dataset(root)
    assert [s.image_path.name for s in ds] == ["a.jpg", "b.jpg"] and [s.image_id for s in ds] == [0, 1]


def test_yolo_roboflow_export(tmp_path, make_image):
    # Roboflow: data.yaml beside train/ and valid/, with '../train/images' paths (Ultralytics drops '../').
    root = tmp_path / "export"
    for split in ("train", "valid"):
        make_image(root / split / "images" / "a.jpg")
        (root / split / "labels").mkdir(parents=True)
        (root / split / "labels" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['thing']\nroboflow:\n  version: 1\n"
    )
    (root / "classes.json").write_text("{}")  # a stray .json must not make this look like COCO
    assert detect_format(root) == "yolo"
    ds = load_dataset(root, "valid")
    assert len(ds) == 1 and len(ds[0].boxes) == 1 and not ds.report.problems


def test_coco_windows_file_names_and_single_split_folder(tmp_path, make_coco):
    file = make_coco(
        [{"id": 1, "file_name": "sub\\a.jpg", "_no_file": True}],
        [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        CATS,
    )
    make_coco([{"id": 1, "file_name": "a.jpg"}], [], CATS, file=tmp_path / "x.json", image_dir=file.parent / "sub")
    # A folder holding its own _annotations.coco.json is one split, whatever split is asked for.
    ds = load_dataset(file.parent, "val")
    assert ds.split == "train" and ds[0].image_path == file.parent / "sub" / "a.jpg"

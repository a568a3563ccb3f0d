"""Bad input: every problem is reported with its file and line or id, never a traceback or a silent drop."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from plaindet.data import DatasetError, load_dataset
from plaindet.data import coco as coco_module
from plaindet.data.check import check_dataset, run_check

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def one_problem(ds, kind):
    """The single problem of ``kind`` in ``ds.report`` (and there is exactly one)."""
    found = [p for p in ds.report.problems if p.kind == kind]
    assert len(found) == 1, ds.report.problems
    return found[0]


def coco_ann(ann_id, bbox, image_id=1, category_id=1, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def check_output(path, **kwargs):
    from rich.console import Console

    buffer = io.StringIO()
    code = run_check(path, console=Console(file=buffer, width=200), **kwargs)
    return code, buffer.getvalue()


# --- images ----------------------------------------------------------------------------------------


def test_missing_image_coco(make_coco):
    file = make_coco(
        [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "gone.jpg", "_no_file": True}],
        [coco_ann(1, [0, 0, 5, 5], image_id=2)],
        CATS,
    )
    ds = load_dataset(file)
    assert [s.image_id for s in ds] == [1]
    p = one_problem(ds, "missing_image")
    assert p.severity == "error" and "gone.jpg" in p.message and p.where == "image id 2"


def test_missing_image_yolo_list(tmp_path, make_image):
    make_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "train.txt").write_text("images/a.jpg\nimages/gone.jpg\n")
    (tmp_path / "data.yaml").write_text("train: train.txt\nnames: [x]\n")
    ds = load_dataset(tmp_path / "data.yaml")
    assert len(ds) == 1
    p = one_problem(ds, "missing_image")
    assert p.file.endswith("train.txt") and p.where == "line 2" and "gone.jpg" in p.message


def test_unreadable_image_skipped_at_load(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, ""), "b.jpg": (64, 48, "")}})
    (yaml_file.parent / "images" / "train" / "b.jpg").write_bytes(b"not an image at all")
    ds = load_dataset(yaml_file)
    assert [s.image_path.name for s in ds] == ["a.jpg"]
    p = one_problem(ds, "unreadable_image")
    assert p.severity == "error" and p.file.endswith("b.jpg")


def test_truncated_image_found_by_check_not_by_load(make_yolo):
    yaml_file = make_yolo({"train": {"a.png": (64, 48, "0 0.5 0.5 0.5 0.5")}})
    image = yaml_file.parent / "images" / "train" / "a.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    # load_dataset reads headers only: the truncated file passes.
    assert len(load_dataset(yaml_file)) == 1
    (check,) = check_dataset(yaml_file)
    assert check.report.counts["unreadable_image"] == 1 and check.failed
    code, out = check_output(yaml_file)
    assert code == 1 and "unreadable_image" in out and "a.png" in out


def test_unsupported_image_format_is_reported(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, "")}})
    Image.new("RGB", (8, 8)).save(yaml_file.parent / "images" / "train" / "b.gif")
    ds = load_dataset(yaml_file)
    assert len(ds) == 1 and one_problem(ds, "unsupported_image").file.endswith("b.gif")


# --- boxes -----------------------------------------------------------------------------------------


def test_box_outside_image_is_clipped_yolo(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (100, 100, "0 0.5 0.5 0.2 0.2\n0 0.9 0.5 0.4 0.2\n")}})
    ds = load_dataset(yaml_file)
    np.testing.assert_allclose(ds[0].boxes[1], [70, 40, 100, 60], atol=1e-4)
    p = one_problem(ds, "box_clipped")
    assert p.severity == "warning" and p.where == "line 2" and p.file.endswith("a.txt")


def test_box_outside_image_is_clipped_coco(make_coco):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [coco_ann(17, [-10, 5, 30, 20])], CATS)
    ds = load_dataset(file)
    np.testing.assert_array_equal(ds[0].boxes, [[0, 5, 20, 25]])
    assert one_problem(ds, "box_clipped").where == "annotation id 17"


def test_sub_pixel_overhang_is_clipped_silently(make_coco):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [coco_ann(1, [0, 0, 64.2, 48])], CATS)
    ds = load_dataset(file)
    np.testing.assert_array_equal(ds[0].boxes, [[0, 0, 64, 48]])
    assert not ds.report.problems


@pytest.mark.parametrize(
    ("bbox", "text"), [([5, 5, 0, 10], "no area"), ([5, 5, -3, 10], "no area"), ([70, 5, 10, 10], "outside")]
)
def test_degenerate_box_is_dropped_coco(make_coco, bbox, text):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [coco_ann(3, bbox), coco_ann(4, [1, 1, 2, 2])], CATS)
    ds = load_dataset(file)
    assert len(ds[0].boxes) == 1
    p = one_problem(ds, "degenerate_box")
    assert p.severity == "error" and p.where == "annotation id 3" and text in p.message


def test_degenerate_box_is_dropped_yolo(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, "0 0.5 0.5 0 0.2\n1 0.5 0.5 0.1 -0.2\n")}})
    ds = load_dataset(yaml_file)
    assert len(ds[0].boxes) == 0
    assert [p.where for p in ds.report.problems if p.kind == "degenerate_box"] == ["line 1", "line 2"]


def test_bad_class_id_yolo(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, "0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.1 0.1\n")}})
    ds = load_dataset(yaml_file)
    assert ds[0].labels.tolist() == [0]
    p = one_problem(ds, "bad_class_id")
    assert p.where == "line 2" and "class id 5" in p.message and "0..1" in p.message
    assert str(p).endswith("a.txt:line 2: class id 5 is not in the yaml's names (0..1); box dropped")


def test_bad_class_id_coco(make_coco):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [coco_ann(9, [1, 1, 5, 5], category_id=42)], CATS)
    p = one_problem(load_dataset(file), "bad_class_id")
    assert p.where == "annotation id 9" and "42" in p.message


def test_bad_class_name_voc(make_voc):
    from plaindet.data.voc import load_voc

    root = make_voc({"1": (64, 48, [("cat", 1, 1, 5, 5, False), ("zebra", 1, 1, 5, 5, False)])})
    ds = load_voc(root, class_names=["cat"])
    assert ds[0].labels.tolist() == [0]
    assert one_problem(ds, "bad_class_id").where == "object 2"


@pytest.mark.parametrize(
    ("line", "text"),
    [
        ("0 0.5 0.5 0.1", "found 4 fields"),
        ("0 0.5 0.5 0.1 0.1 0.9", "found 6 fields"),
        ("0 0.5 abc 0.1 0.1", "'abc' is not a number"),
        ("0 0.5 nan 0.1 0.1", "NaN or infinite"),
        ("0.5 0.5 0.5 0.1 0.1", "not an integer"),
    ],
)
def test_malformed_yolo_line(make_yolo, line, text):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, f"1 0.5 0.5 0.2 0.2\n{line}\n")}})
    ds = load_dataset(yaml_file)
    assert ds[0].labels.tolist() == [1]  # the good line is kept
    p = one_problem(ds, "malformed_line")
    assert p.where == "line 2" and text in p.message and p.file.endswith("a.txt")


def test_unreadable_label_file(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, "")}})
    (yaml_file.parent / "labels" / "train" / "a.txt").write_bytes(b"\xff\xfe\x00garbage")
    ds = load_dataset(yaml_file)
    assert len(ds) == 0 and one_problem(ds, "unreadable_label_file").severity == "error"


def test_no_label_files_at_all_is_a_warning(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, None), "b.jpg": (64, 48, None)}})
    ds = load_dataset(yaml_file)
    assert ds.report.counts == {"missing_label_file": 2, "no_labels_found": 1}
    assert "none of the 2 images" in one_problem(ds, "no_labels_found").message


def test_orphan_label_file_is_reported(make_yolo):
    yaml_file = make_yolo({"train": {"a.jpg": (64, 48, "")}})
    (yaml_file.parent / "labels" / "train" / "renamed.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    p = one_problem(load_dataset(yaml_file), "orphan_label_file")
    assert p.severity == "info" and p.file.endswith("renamed.txt")


# --- malformed files -------------------------------------------------------------------------------


def test_malformed_json_names_line_and_column(tmp_path):
    file = tmp_path / "ann.json"
    file.write_text('{\n  "images": [\n    {"id": 1,, "file_name": "a.jpg"}\n  ]\n}\n')
    with pytest.raises(DatasetError, match=r"ann\.json: line 3, column 14: not valid JSON"):
        load_dataset(file)


@pytest.mark.parametrize("missing", ["images", "annotations", "categories"])
def test_json_of_the_wrong_shape(tmp_path, missing):
    data = {"images": [], "annotations": [], "categories": CATS}
    del data[missing]
    file = tmp_path / "ann.json"
    file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=f"no '{missing}' list"):
        load_dataset(file)
    file.write_text("[1, 2]")
    with pytest.raises(DatasetError, match="a COCO file is a JSON object"):
        load_dataset(file)


@pytest.mark.parametrize("bbox", [[1, 2, 3], [1, 2, 3, "4"], None, [1, 2, 3, float("nan")]])
def test_bad_bbox_names_the_annotation(make_coco, bbox):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [coco_ann(11, bbox), coco_ann(12, [1, 1, 5, 5])], CATS)
    ds = load_dataset(file)
    assert len(ds[0].boxes) == 1
    p = one_problem(ds, "malformed_annotation")
    assert p.where == "annotation id 11" and "bbox" in p.message


def test_json_too_large_is_refused(make_coco, monkeypatch):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [], CATS)
    monkeypatch.setattr(coco_module, "MAX_JSON_BYTES", 10)
    with pytest.raises(DatasetError, match="larger than the .* limit"):
        load_dataset(file)


def test_malformed_xml_skips_the_image(make_voc):
    root = make_voc({"1": (64, 48, [("cat", 1, 1, 5, 5, False)]), "2": "<annotation><object></annotation>"})
    ds = load_dataset(root)
    assert len(ds) == 1
    p = one_problem(ds, "malformed_xml")
    assert p.file.endswith("2.xml") and "line 1" in p.message and p.severity == "error"


def test_voc_bad_coordinates_and_missing_image(make_voc):
    root = make_voc(
        {
            "1": "<annotation><filename>1.jpg</filename><object><name>cat</name><bndbox><xmin>a</xmin>"
            "<ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
            "2": (64, 48, []),
        }
    )
    (root / "JPEGImages" / "2.jpg").unlink()
    ds = load_dataset(root)
    assert one_problem(ds, "malformed_object").where == "object 1"
    assert one_problem(ds, "missing_image").file.endswith("2.xml")


def test_malformed_yaml_names_the_line(tmp_path):
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a, b\n")
    with pytest.raises(DatasetError, match=r"data\.yaml: line \d+, column \d+: not valid YAML"):
        load_dataset(tmp_path / "data.yaml")


def test_yaml_without_names_or_folder(tmp_path):
    (tmp_path / "data.yaml").write_text("train: images\n")
    with pytest.raises(DatasetError, match="no 'names'"):
        load_dataset(tmp_path / "data.yaml")
    (tmp_path / "data.yaml").write_text("train: images\nnames: [a]\n")
    with pytest.raises(DatasetError, match="train: .*images is not a folder"):
        load_dataset(tmp_path / "data.yaml")


# --- ids -------------------------------------------------------------------------------------------


def test_duplicate_image_id_is_fatal(make_coco):
    file = make_coco([{"id": 4, "file_name": "a.jpg"}, {"id": 4, "file_name": "b.jpg"}], [], CATS)
    with pytest.raises(DatasetError, match=r"image id 4 is used twice \('a\.jpg' and 'b\.jpg'\)"):
        load_dataset(file)


def test_duplicate_category_id_is_fatal(make_coco):
    cats = [{"id": 1, "name": "cat"}, {"id": 1, "name": "kitten"}]
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [], cats)
    with pytest.raises(DatasetError, match=r"category id 1 appears twice \('cat' and 'kitten'\)"):
        load_dataset(file)


def test_duplicate_annotation_id_keeps_both(make_coco):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [coco_ann(5, [1, 1, 5, 5]), coco_ann(5, [2, 2, 5, 5])], CATS)
    ds = load_dataset(file)
    assert len(ds[0].boxes) == 2
    p = one_problem(ds, "duplicate_annotation_id")
    assert p.severity == "warning" and p.where == "annotation id 5"


def test_unknown_image_id(make_coco):
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [coco_ann(8, [1, 1, 5, 5], image_id=99)], CATS)
    p = one_problem(load_dataset(file), "unknown_image_id")
    assert p.where == "annotation id 8" and "99" in p.message


# --- check -----------------------------------------------------------------------------------------


def test_check_counts_and_exit_codes(make_yolo):
    yaml_file = make_yolo(
        {
            "train": {"a.jpg": (64, 48, "0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.25 0.25\n"), "b.jpg": (64, 48, "")},
            "val": {"c.jpg": (64, 48, "1 0.5 0.5 0.5 0.5\n")},
        }
    )
    train, val = check_dataset(yaml_file)
    stats = train.stats
    assert (stats.images, stats.boxes, stats.negatives) == (2, 2, 1)
    assert stats.boxes_per_class == [1, 1] and stats.images_per_class == [1, 1]
    assert stats.size_ranges == (2, 0, 0)  # 32x24 and 16x12: both small
    assert val.stats.boxes_per_class == [0, 1]
    code, out = check_output(yaml_file)
    assert code == 0 and "no errors found" in out and "negatives" in out

    label = yaml_file.parent / "labels" / "val" / "c.txt"
    label.write_text("".join(f"7 0.5 0.5 0.1 0.1\n" for _ in range(5)))
    code, out = check_output(yaml_file, max_problems=2)
    assert code == 1 and "5 bad_class_id" in out and "c.txt:line 2" in out and "c.txt:line 3" not in out
    assert "and 3 more" in out


def test_check_reports_an_unreadable_dataset(tmp_path):
    from plaindet.errors import DatasetError

    with pytest.raises(DatasetError, match="missing: no such file or folder"):
        check_output(tmp_path / "missing")


def test_cli_has_no_traceback_for_bad_input(tmp_path):
    from typer.testing import CliRunner

    from plaindet.cli import app

    (tmp_path / "bad.json").write_text("{oops")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path / "bad.json")])
    assert result.exit_code == 1
    assert "line 1, column 2" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("field", ["id", "image_id", "category_id"])
def test_annotation_fields_of_the_wrong_type(make_coco, field):
    ann = coco_ann(3, [1, 1, 5, 5])
    ann[field] = [1]  # unhashable: must be reported, not crash
    file = make_coco([{"id": 1, "file_name": "a.jpg"}], [ann, coco_ann(4, [1, 1, 5, 5])], CATS)
    ds = load_dataset(file)
    assert len(ds[0].boxes) == (2 if field == "id" else 1)
    if field != "id":
        assert one_problem(ds, "malformed_annotation").where == "annotation id 3"

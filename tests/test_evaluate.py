"""COCO evaluation: every number is checked against pycocotools itself.

Each case starts from a raw COCO ground-truth dict (what a COCO reader would read) and builds the
DetectionDataset from it, so `coco_dict` (the ground truth the evaluator builds) is checked too, not trusted: the reference is
pycocotools fed with that raw dict (1-based annotation ids) and the same results. Ground-truth
coordinates are multiples of 1/4 pixel so that the float32 round trip through `Sample` is exact.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import plaindet.data
from plaindet.data.coco import coco_dict
from plaindet.data.sample import DetectionDataset, Sample
from plaindet.engine.evaluate import METRIC_NAMES, evaluate_coco, plot_pr_curves, run_eval
from plaindet.errors import UserError

BACKENDS = ["faster", "pycocotools"]


# --------------------------------------------------------------------------------------------------
# helpers


def dataset_from_coco(gt: dict, use_areas: bool = True) -> DetectionDataset:
    """A DetectionDataset from a raw COCO dict, the way a COCO reader builds it."""
    category_ids = [c["id"] for c in gt["categories"]]
    label = {cid: k for k, cid in enumerate(category_ids)}
    by_image: dict[int, list[dict]] = {img["id"]: [] for img in gt["images"]}
    for ann in gt["annotations"]:
        by_image[ann["image_id"]].append(ann)
    samples = []
    for img in gt["images"]:
        anns = by_image[img["id"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns]
        samples.append(
            Sample(
                image_path=img["file_name"],
                width=img["width"],
                height=img["height"],
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=[label[a["category_id"]] for a in anns],
                image_id=img["id"],
                iscrowd=[bool(a.get("iscrowd", 0)) for a in anns],
                areas=[a["area"] for a in anns] if use_areas else None,
            )
        )
    return DetectionDataset(samples, [c["name"] for c in gt["categories"]], category_ids)


def quarter(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x) * 4) / 4


def random_coco_gt(
    rng: np.random.Generator,
    num_images: int = 40,
    category_ids: tuple[int, ...] = (1, 2, 3, 4, 5),
    boxes_per_image: tuple[int, int] = (0, 8),
    crowd_fraction: float = 0.0,
    first_id: int = 1,
) -> dict:
    """Random boxes of all sizes (small, medium, large) on 640x480 images; ids start at ``first_id``."""
    images, annotations = [], []
    for i in range(num_images):
        image_id = first_id + i
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id:06d}.jpg"})
        for _ in range(rng.integers(*boxes_per_image, endpoint=True)):
            w, h = quarter(np.exp(rng.uniform(np.log(4), np.log(300), size=2)))
            x, y = quarter(rng.uniform(0, 640 - w)), quarter(rng.uniform(0, 480 - h))
            annotations.append(
                {
                    "id": first_id + len(annotations),
                    "image_id": image_id,
                    "category_id": int(rng.choice(category_ids)),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": int(rng.random() < crowd_fraction),
                }
            )
    categories = [{"id": cid, "name": f"class{cid}"} for cid in category_ids]
    return {"images": images, "annotations": annotations, "categories": categories}


def jittered_predictions(rng: np.random.Generator, gt: dict, keep: float = 0.85, false_per_image: float = 1.5) -> list:
    """Noisy detections: jittered copies of most boxes, some duplicates, random false positives, shuffled."""
    category_ids = [c["id"] for c in gt["categories"]]
    preds = []
    for ann in gt["annotations"]:
        for _ in range(rng.choice([0, 1, 2], p=[1 - keep, keep * 0.8, keep * 0.2])):
            x, y, w, h = ann["bbox"]
            dx, dy = rng.normal(0, 0.06, size=2) * [w, h]
            sw, sh = np.exp(rng.normal(0, 0.08, size=2))
            preds.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"] if rng.random() < 0.9 else int(rng.choice(category_ids)),
                    "bbox": [float(x + dx), float(y + dy), float(w * sw), float(h * sh)],
                    "score": float(rng.random()),
                }
            )
    for img in gt["images"]:
        for _ in range(rng.poisson(false_per_image)):
            w, h = np.exp(rng.uniform(np.log(4), np.log(300), size=2))
            preds.append(
                {
                    "image_id": img["id"],
                    "category_id": int(rng.choice(category_ids)),
                    "bbox": [float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h)), float(w), float(h)],
                    "score": float(rng.random() * 0.6),
                }
            )
    rng.shuffle(preds)
    return preds


def perfect_predictions(gt: dict) -> list:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]


def pycocotools_eval(gt: dict, results: list) -> COCOeval:
    """The reference: plain pycocotools on the raw dict (loadRes as users call it)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:  # pycocotools' loadRes cannot take an empty list (it reads anns[0])
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def pycocotools_stats(gt: dict, results: list) -> np.ndarray:
    return np.asarray(pycocotools_eval(gt, results).stats[:12], dtype=np.float64)


_LARGEST_DIFF = {"value": 0.0, "stats": 0}  # over every stat compared in this module


@pytest.fixture(scope="module", autouse=True)
def _report_the_largest_difference(measured):
    yield
    if _LARGEST_DIFF["stats"]:
        what = f"COCO eval vs pycocotools, {_LARGEST_DIFF['stats']} stats compared: max abs diff"
        measured(what, _LARGEST_DIFF["value"])


def assert_matches_pycocotools(metrics, gt: dict, results: list) -> None:
    ref = pycocotools_stats(gt, results)
    ours = np.asarray(metrics.coco_stats)
    for name, a, b in zip(METRIC_NAMES, ours, ref):
        assert abs(a - b) <= 1e-6, f"{name}: ours {a} vs pycocotools {b}"
        _LARGEST_DIFF["value"] = max(_LARGEST_DIFF["value"], float(abs(a - b)))
        _LARGEST_DIFF["stats"] += 1
    # The reported stats: -1 (undefined) becomes None, everything else is the same number in [0, 1].
    for name, value in zip(METRIC_NAMES, ours):
        reported = metrics.stats[name]
        if value < 0:
            assert reported is None, name
        else:
            assert 0.0 <= reported <= 1.0 and reported == pytest.approx(value, abs=1e-12), name


# --------------------------------------------------------------------------------------------------
# agreement with pycocotools


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_predictions(backend):
    gt = random_coco_gt(np.random.default_rng(0))
    preds = perfect_predictions(gt)
    metrics = evaluate_coco(dataset_from_coco(gt), preds, backend=backend)
    assert_matches_pycocotools(metrics, gt, preds)
    if backend == "faster":
        assert metrics.stats["AP"] == 1.0 and metrics.stats["AP50"] == 1.0 and metrics.stats["AR100"] == 1.0
    else:  # pycocotools divides by tp + fp + eps, so its "perfect" is 1 - 2e-16
        assert metrics.stats["AP"] == pytest.approx(1.0, abs=1e-12)
    assert all(c.ap == pytest.approx(1.0, abs=1e-12) for c in metrics.per_class if c.num_gt)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
def test_jittered_shuffled_predictions(seed, backend):
    rng = np.random.default_rng(seed)
    gt = random_coco_gt(rng, num_images=60)
    preds = jittered_predictions(rng, gt)
    metrics = evaluate_coco(dataset_from_coco(gt), preds, backend=backend)
    assert_matches_pycocotools(metrics, gt, preds)
    assert 0.2 < metrics.stats["AP"] < 0.9  # a real mix of hits and misses, not a degenerate case
    assert metrics.num_predictions == len(preds)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_predictions(backend):
    gt = random_coco_gt(np.random.default_rng(3))
    metrics = evaluate_coco(dataset_from_coco(gt), [], backend=backend)
    assert_matches_pycocotools(metrics, gt, [])
    assert all(value in (0.0, None) for value in metrics.stats.values())
    assert metrics.stats["AP"] == 0.0 and metrics.num_predictions == 0


def test_images_without_ground_truth_lower_precision():
    rng = np.random.default_rng(4)
    gt = random_coco_gt(rng, num_images=30, boxes_per_image=(1, 6))
    preds = [{**p, "score": 0.9} for p in perfect_predictions(gt)]
    for i in range(10):  # negatives: images with no boxes at all, where every detection is wrong
        image_id = 1000 + i
        gt["images"].append({"id": image_id, "width": 640, "height": 480, "file_name": f"neg{i}.jpg"})
        for cid in (1, 2, 3):
            preds.append({"image_id": image_id, "category_id": cid, "bbox": [10.0, 20.0, 50.0, 60.0], "score": 0.99})
    rng.shuffle(preds)
    metrics = evaluate_coco(dataset_from_coco(gt), preds)
    assert_matches_pycocotools(metrics, gt, preds)
    assert metrics.num_images == 40
    assert metrics.stats["AP"] < 0.9  # the false positives outrank every true positive
    assert metrics.stats["AR100"] == 1.0  # but every object is still found


@pytest.mark.parametrize("backend", BACKENDS)
def test_ids_starting_at_zero(backend):
    rng = np.random.default_rng(5)
    gt = random_coco_gt(rng, num_images=20, category_ids=(0, 1, 2), boxes_per_image=(1, 5), first_id=0)
    assert gt["images"][0]["id"] == 0 and gt["annotations"][0]["id"] == 0
    preds = perfect_predictions(gt)
    metrics = evaluate_coco(dataset_from_coco(gt), preds, backend=backend)

    renumbered = copy.deepcopy(gt)
    for ann in renumbered["annotations"]:
        ann["id"] += 1
    assert_matches_pycocotools(metrics, renumbered, preds)
    assert metrics.stats["AP"] == pytest.approx(1.0, abs=1e-12)

    # Naive pycocotools on the raw 0-based ids: the match with annotation 0 is stored as "0" and
    # read back as "no match", so one true positive becomes a false positive and the numbers drop.
    naive = pycocotools_stats(gt, preds)
    assert naive[0] < metrics.coco_stats[0] - 1e-3
    assert naive[8] < metrics.coco_stats[8] - 1e-3


@pytest.mark.parametrize("backend", BACKENDS)
def test_crowd_annotations(backend):
    rng = np.random.default_rng(6)
    gt = random_coco_gt(rng, num_images=40, crowd_fraction=0.25)
    assert any(a["iscrowd"] for a in gt["annotations"])
    preds = jittered_predictions(rng, gt)  # includes detections on crowd regions: those are ignored
    metrics = evaluate_coco(dataset_from_coco(gt), preds, backend=backend)
    assert_matches_pycocotools(metrics, gt, preds)
    num_gt = {c.category_id: c.num_gt for c in metrics.per_class}
    for cid in num_gt:
        assert num_gt[cid] == sum(1 for a in gt["annotations"] if a["category_id"] == cid and not a["iscrowd"])


def test_sparse_category_ids_and_empty_category():
    rng = np.random.default_rng(7)
    used = (1, 7, 18, 44, 90)
    gt = random_coco_gt(rng, num_images=40, category_ids=used)
    gt["categories"].insert(2, {"id": 33, "name": "never_labeled"})  # a class without one box
    # and in an order that is not sorted by id, as some exports list them
    gt["categories"] = [gt["categories"][i] for i in (3, 0, 5, 2, 1, 4)]
    preds = jittered_predictions(rng, gt)
    preds += [{"image_id": 1, "category_id": 33, "bbox": [5.0, 5.0, 40.0, 40.0], "score": 0.5}]
    dataset = dataset_from_coco(gt)
    metrics = evaluate_coco(dataset, preds)
    assert_matches_pycocotools(metrics, gt, preds)

    by_id = {c.category_id: c for c in metrics.per_class}
    assert [c.category_id for c in metrics.per_class] == dataset.category_ids  # dataset class order
    assert by_id[33].num_gt == 0 and by_id[33].ap is None and by_id[33].ap50 is None
    # the overall AP is the mean of the defined per-class APs, exactly as COCO averages
    aps = [c.ap for c in metrics.per_class if c.ap is not None]
    assert len(aps) == 5 and metrics.stats["AP"] == pytest.approx(np.mean(aps), abs=1e-9)


@pytest.mark.parametrize("use_areas", [True, False])
def test_area_ranges(use_areas):
    rng = np.random.default_rng(8)
    gt = random_coco_gt(rng, num_images=60)
    if use_areas:
        # Segmentation areas differ from box areas and decide small/medium/large; some boxes move range.
        for ann in gt["annotations"]:
            ann["area"] = float(quarter(ann["area"] * rng.uniform(0.4, 1.0)))
    sizes = [a["area"] for a in gt["annotations"]]
    assert min(sizes) < 32**2 and any(32**2 < s < 96**2 for s in sizes) and max(sizes) > 96**2
    preds = jittered_predictions(rng, gt)
    metrics = evaluate_coco(dataset_from_coco(gt, use_areas=use_areas), preds)
    assert_matches_pycocotools(metrics, gt, preds)
    assert all(metrics.stats[k] is not None for k in ("APs", "APm", "APl", "ARs", "ARm", "ARl"))


def test_undefined_area_range_is_none_and_json_null():
    # Only large boxes: COCO reports -1 for APs/APm/ARs/ARm. We report None, and JSON null.
    gt = {
        "images": [{"id": 1, "width": 640, "height": 480, "file_name": "a.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 200.0, 150.0], "area": 30000.0, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    preds = perfect_predictions(gt)
    metrics = evaluate_coco(dataset_from_coco(gt), preds)
    assert_matches_pycocotools(metrics, gt, preds)
    assert metrics.stats["APs"] is None and metrics.stats["APm"] is None and metrics.stats["APl"] == 1.0
    data = json.loads(metrics.to_json())
    assert data["APs"] is None and data["ARm"] is None
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        assert data[key] is None or 0.0 <= data[key] <= 1.0
    assert "-" in metrics.table()


def test_coco_dict_is_the_ground_truth():
    gt = random_coco_gt(np.random.default_rng(9), num_images=5, category_ids=(3, 1), crowd_fraction=0.3, first_id=0)
    gt["categories"].append({"id": 9, "name": "empty"})
    ours = coco_dict(dataset_from_coco(gt))
    assert ours["categories"] == [{**c, "supercategory": ""} for c in gt["categories"]]
    assert [img["id"] for img in ours["images"]] == [img["id"] for img in gt["images"]]
    assert [a["id"] for a in ours["annotations"]] == list(range(1, len(gt["annotations"]) + 1))
    for a, b in zip(ours["annotations"], gt["annotations"]):
        assert (a["image_id"], a["category_id"], a["bbox"], a["area"], a["iscrowd"]) == (
            b["image_id"], b["category_id"], b["bbox"], b["area"], b["iscrowd"]
        )


# --------------------------------------------------------------------------------------------------
# validation


def _valid():
    return {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"image_id": 77}, "prediction 1: image_id 77 is not an image id of the dataset"),
        ({"category_id": 4}, "prediction 1: category_id 4 is not a category id of the dataset"),
        ({"image_id": "1"}, "prediction 1: image_id '1'"),
        ({"bbox": [1.0, 2.0, 3.0]}, "prediction 1: bbox must be [x, y, w, h] (4 numbers)"),
        ({"bbox": [1.0, float("nan"), 3.0, 4.0]}, "prediction 1: bbox must be 4 finite numbers"),
        ({"bbox": [1.0, 2.0, float("inf"), 4.0]}, "prediction 1: bbox must be 4 finite numbers"),
        ({"bbox": [10.0, 20.0, 5.0, -1.0]}, "prediction 1: bbox width and height must be >= 0"),
        ({"score": float("nan")}, "prediction 1: score must be a finite number"),
        ({"score": None}, "prediction 1: score must be a finite number"),
        ({"bbox": None}, "prediction 1: bbox must be [x, y, w, h]"),
    ],
)
def test_invalid_predictions(change, message):
    gt = random_coco_gt(np.random.default_rng(10), num_images=3, category_ids=(1, 2))
    bad = {**_valid(), **change}
    with pytest.raises(ValueError) as info:
        evaluate_coco(dataset_from_coco(gt), [_valid(), bad])
    assert message in str(info.value)


def test_invalid_prediction_structure():
    dataset = dataset_from_coco(random_coco_gt(np.random.default_rng(11), num_images=2, category_ids=(1,)))
    with pytest.raises(ValueError, match="prediction 0: missing bbox, score"):
        evaluate_coco(dataset, [{"image_id": 1, "category_id": 1}])
    with pytest.raises(ValueError, match="prediction 0: expected a dict"):
        evaluate_coco(dataset, [[1, 1, 0, 0, 1, 1, 0.5]])
    with pytest.raises(ValueError, match="predictions must be a list"):
        evaluate_coco(dataset, {"annotations": []})
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate_coco(dataset, [], backend="detectron")


def test_numpy_scalars_are_accepted():
    # Results built from tensors or arrays carry numpy scalars; they mean the same numbers.
    gt = random_coco_gt(np.random.default_rng(15), num_images=10)
    preds = jittered_predictions(np.random.default_rng(15), gt)
    as_numpy = [
        {
            "image_id": np.int64(p["image_id"]),
            "category_id": np.int32(p["category_id"]),
            "bbox": np.asarray(p["bbox"], dtype=np.float64),
            "score": np.float32(p["score"]),
        }
        for p in preds
    ]
    plain = [{**p, "score": float(np.float32(p["score"]))} for p in preds]
    metrics = evaluate_coco(dataset_from_coco(gt), as_numpy)
    assert metrics.coco_stats == evaluate_coco(dataset_from_coco(gt), plain).coco_stats
    with pytest.raises(ValueError, match="prediction 0: category_id True"):
        evaluate_coco(dataset_from_coco(gt), [{**plain[0], "category_id": True}])


def test_predictions_are_not_modified():
    gt = random_coco_gt(np.random.default_rng(12), num_images=5)
    preds = jittered_predictions(np.random.default_rng(12), gt)
    before = copy.deepcopy(preds)
    evaluate_coco(dataset_from_coco(gt), preds)
    evaluate_coco(dataset_from_coco(gt), preds, backend="pycocotools")
    assert preds == before  # loadRes would have added id, area, iscrowd and segmentation


# --------------------------------------------------------------------------------------------------
# per-class table, plots, command line


def _two_class_case():
    rng = np.random.default_rng(13)
    gt = random_coco_gt(rng, num_images=10, category_ids=(5, 9), boxes_per_image=(2, 4))
    gt["categories"][0]["name"], gt["categories"][1]["name"] = "cat", "dog"
    # perfect on "cat" (id 5), nothing at all for "dog" (id 9)
    preds = [p for p in perfect_predictions(gt) if p["category_id"] == 5]
    return gt, preds


def test_per_class_table():
    gt, preds = _two_class_case()
    metrics = evaluate_coco(dataset_from_coco(gt), preds)
    assert_matches_pycocotools(metrics, gt, preds)
    cat, dog = metrics.per_class
    assert (cat.name, cat.category_id, dog.name, dog.category_id) == ("cat", 5, "dog", 9)
    assert cat.num_gt == sum(a["category_id"] == 5 for a in gt["annotations"]) > 0
    assert dog.num_gt == sum(a["category_id"] == 9 for a in gt["annotations"]) > 0
    assert cat.ap == 1.0 and cat.ap50 == 1.0
    assert dog.ap == 0.0 and dog.ap50 == 0.0
    assert metrics.stats["AP"] == pytest.approx(0.5)

    # Per-class AP equals pycocotools' own per-category summary on the same precision array.
    ref = pycocotools_eval(gt, preds)
    for k, c in enumerate(metrics.per_class):
        p = ref.eval["precision"][:, :, k, 0, -1]
        assert c.ap == pytest.approx(p[p > -1].mean(), abs=1e-6)

    text = metrics.table()
    assert "cat" in text and "dog" in text and "AP50" in text and "1.000" in text
    data = json.loads(metrics.to_json())
    assert data["per_class"][1] == {"class": "dog", "category_id": 9, "num_gt": dog.num_gt, "AP": 0.0, "AP50": 0.0}


def test_pr_curves_png(tmp_path):
    gt, preds = _two_class_case()
    gt["categories"].append({"id": 11, "name": "bird"})  # no ground truth: a "no ground truth" panel
    metrics = evaluate_coco(dataset_from_coco(gt), preds)
    paths = plot_pr_curves(metrics, tmp_path / "plots", classes_per_page=2)
    assert [p.name for p in paths] == ["pr_all.png", "pr_classes_01.png", "pr_classes_02.png"]
    for path in paths:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert width > 300 and height > 150


def test_run_eval(tmp_path, monkeypatch, capsys):
    gt, preds = _two_class_case()
    dataset = dataset_from_coco(gt)
    calls = []

    def fake_load_dataset(path, split="train", **kwargs):
        calls.append((path, split))
        return dataset

    monkeypatch.setattr(plaindet.data, "load_dataset", fake_load_dataset)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(preds))
    output = tmp_path / "out" / "metrics.json"
    result = run_eval("some/dataset", split="val", predictions=results, output=output, plots=tmp_path / "plots")
    assert result.metrics.stats["AP"] == pytest.approx(0.5) and calls == [("some/dataset", "val")]
    printed = capsys.readouterr().out
    assert "AP50" in printed and "dog" in printed
    data = json.loads(output.read_text())
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"):
        assert data[key] is None or 0.0 <= data[key] <= 1.0
    assert data["AP"] == pytest.approx(0.5) and len(data["per_class"]) == 2
    assert (tmp_path / "plots" / "pr_all.png").is_file()

    # Inputs that cannot be used: a UserError (the CLI's exit code 2) whose message names the file.
    with pytest.raises(UserError, match="either weights .* or predictions"):
        run_eval("some/dataset", predictions=None)
    for name, text, expected in [
        ("broken.json", '[{"image_id": 1,', "not valid JSON"),
        ("object.json", json.dumps(gt), "got an object (this looks like a ground-truth file)"),
        ("bad_id.json", json.dumps([{**preds[0], "category_id": 77}]), "prediction 0: category_id 77"),
    ]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(UserError) as err:
            run_eval("some/dataset", predictions=path)
        assert name in str(err.value) and expected in str(err.value), err.value
    with pytest.raises(UserError, match="missing.json"):
        run_eval("some/dataset", predictions=tmp_path / "missing.json")


def test_json_has_no_nan_or_negative():
    gt = random_coco_gt(np.random.default_rng(14), num_images=5, category_ids=(1, 2, 3))
    gt["categories"].append({"id": 4, "name": "empty"})
    metrics = evaluate_coco(dataset_from_coco(gt), [])
    text = metrics.to_json()
    assert "NaN" not in text and "-1" not in text
    values = [v for k, v in json.loads(text).items() if k in METRIC_NAMES]
    assert all(v is None or (0.0 <= v <= 1.0 and not math.isnan(v)) for v in values)

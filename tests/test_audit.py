"""``plaindet data audit``: each issue type found on a tiny hand-made case and not on a clean one,
``--apply`` writing a dataset the checker accepts while leaving the original byte-identical, and an
HTML report that needs no network."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from plaindet.data import AuditConfig, audit, load_dataset
from plaindet.data.audit import apply_suggestions, corrected_dataset, read_suggestions
from plaindet.data.check import check_dataset
from plaindet.errors import UserError

# Two classes; images 200x200. Box a (cat) and box b (dog) are far apart.
CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
A = [20, 20, 60, 60]  # xyxy
B = [120, 120, 180, 170]
C = [120, 20, 170, 70]  # background in every image


def xywh(box):
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def pred(box, category_id, score, image_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": xywh(box), "score": score}


@pytest.fixture
def one_image(make_coco):
    """``make(labels) -> dataset``: one 200x200 image with labels ``[(box, category_id), ...]``."""

    def make(labels):
        anns = [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": xywh(b), "area": 1.0, "iscrowd": 0} for k, (b, c) in enumerate(labels)]
        file = make_coco([{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}], anns, CATS)
        return load_dataset(file)

    return make


CLEAN_PREDICTIONS = [pred(A, 1, 0.95), pred(B, 2, 0.9), pred([21, 19, 61, 60], 2, 0.04), pred([0, 0, 30, 30], 1, 0.02)]


def kinds(report):
    return sorted({i.kind for i in report.issues})


def test_clean_labels_report_nothing(one_image):
    report = audit(one_image([(A, 1), (B, 2)]), CLEAN_PREDICTIONS)
    assert report.issues == []
    assert report.image_scores[0][1] >= 0.5
    assert all(0.0 <= c.score <= 1.0 for c in report.candidates)
    assert report.warnings == []


def test_predictions_that_see_almost_nothing_are_called_out(one_image):
    # A model that sees nothing flags every label spurious: the report must say the audit is of the
    # model, not hand the user a ranked list of correct labels to delete.
    blind = [pred([0, 0, 10, 10], 1, 0.01)]
    report = audit(one_image([(A, 1), (B, 2), (C, 1)]), blind)
    assert kinds(report) == ["spurious"] and len(report.issues) == 3
    (warning,) = report.warnings
    assert "support only 0 of the 3 labels" in warning and "backbone_weights" in warning
    assert warning in report.to_json()
    # One spurious label of three is an audit finding, not a blind model.
    assert audit(one_image([(A, 1), (B, 2), (C, 1)]), CLEAN_PREDICTIONS).warnings == []


def test_overlooked_object(one_image):
    report = audit(one_image([(A, 1)]), CLEAN_PREDICTIONS)  # B was never labeled
    assert kinds(report) == ["overlooked"]
    (issue,) = report.issues
    assert issue.suggestion == {"action": "add", "box": B, "label": 1}
    assert issue.score < 0.2 and issue.label_index is None


def test_spurious_label(one_image):
    report = audit(one_image([(A, 1), (B, 2), (C, 1)]), CLEAN_PREDICTIONS)
    assert kinds(report) == ["spurious"]
    assert report.issues[0].label_index == 2 and report.issues[0].suggestion["action"] == "remove"


def test_wrong_class(one_image):
    report = audit(one_image([(A, 2), (B, 2)]), CLEAN_PREDICTIONS)  # A is a cat labeled dog
    assert kinds(report) == ["wrong_class"]
    assert report.issues[0].suggestion == {"action": "relabel", "box": A, "label": 0}


def test_badly_located(one_image):
    shifted = [30, 30, 70, 70]  # IoU 0.39 with A
    report = audit(one_image([(shifted, 1), (B, 2)]), CLEAN_PREDICTIONS)
    assert kinds(report) == ["badly_located"]
    assert report.issues[0].suggestion == {"action": "move", "box": A, "label": 0}


def test_duplicate_label(one_image):
    report = audit(one_image([(A, 1), ([21, 21, 61, 61], 1), (B, 2)]), CLEAN_PREDICTIONS)
    assert kinds(report) == ["duplicate"]
    (issue,) = report.issues
    assert issue.suggestion["action"] == "remove" and issue.label_index == 1  # the one the model supports less
    # Two objects the model sees as two are not duplicates.
    two = [*CLEAN_PREDICTIONS, pred([24, 24, 64, 64], 1, 0.9)]
    assert audit(one_image([(A, 1), ([24, 24, 64, 64], 1), (B, 2)]), two).issues == []


def test_ranking_and_writers(one_image):
    report = audit(one_image([(A, 2), (C, 1)]), CLEAN_PREDICTIONS)  # wrong class, spurious, overlooked B
    assert kinds(report) == ["overlooked", "spurious", "wrong_class"]
    scores = [i.score for i in report.issues]
    assert scores == sorted(scores) and [i.id for i in report.issues] == [1, 2, 3]
    data = json.loads(report.to_json())
    assert data["counts"]["spurious"] == 1 and data["issues"][0]["id"] == 1
    rows = report.to_csv().splitlines()
    assert rows[0].startswith("id,kind,score") and len(rows) == 4


def test_bad_predictions_are_user_errors(one_image, tmp_path):
    dataset = one_image([(A, 1)])
    with pytest.raises(UserError, match="category_id 7"):
        audit(dataset, [pred(A, 7, 0.9)])
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=re.escape(str(bad))):
        audit(dataset, bad)
    with pytest.raises(UserError, match="loc_iou"):
        AuditConfig(overlap_iou=0.7, loc_iou=0.6)


def _hashes(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_apply_writes_a_checked_copy_and_leaves_the_original(one_image, tmp_path):
    dataset = one_image([(A, 2), (C, 1), ([30, 110, 70, 150], 1)])
    original = _hashes(dataset.root)
    predictions = [*CLEAN_PREDICTIONS, pred([30, 110, 70, 150], 1, 0.9)]
    report = audit(dataset, predictions)
    suggestions = tmp_path / "report" / "suggestions.json"
    suggestions.parent.mkdir()
    suggestions.write_text(report.to_json())

    result, applied = apply_suggestions(suggestions, tmp_path / "fixed")
    assert applied == len(report.issues) == 3
    assert _hashes(dataset.root) == original
    checks = check_dataset(tmp_path / "fixed")
    assert [c.failed for c in checks] == [False]
    fixed = checks[0].dataset.samples[0]
    got = sorted((b.tolist(), int(c)) for b, c in zip(fixed.boxes, fixed.labels))
    assert got == sorted([([20.0, 20.0, 60.0, 60.0], 0), ([30.0, 110.0, 70.0, 150.0], 0), ([120.0, 120.0, 180.0, 170.0], 1)])

    # --accept: only the ids listed; --min-score: only the surest.
    data = read_suggestions(suggestions)
    only = corrected_dataset(dataset, [i for i in data["issues"] if i["kind"] == "spurious"])
    assert len(only.samples[0].boxes) == 2 and len(dataset.samples[0].boxes) == 3
    accept = tmp_path / "ids.txt"
    accept.write_text("# the relabel only\n" + "".join(f"{i['id']}\n" for i in data["issues"] if i["kind"] == "wrong_class"))
    from plaindet.data.audit import read_accept

    _, applied = apply_suggestions(suggestions, tmp_path / "fixed2", accept=read_accept(accept))
    assert applied == 1
    _, applied = apply_suggestions(suggestions, tmp_path / "fixed3", min_score=0.0)
    assert applied == 0
    assert _hashes(dataset.root) == original


def test_apply_writes_a_voc_dataset_as_voc(make_voc, tmp_path):
    def voc(box):  # 0-based exclusive corners to VOC's 1-based inclusive ones
        return box[0] + 1, box[1] + 1, box[2], box[3]

    root = make_voc({"a": (200, 200, [("dog", *voc(A), False), ("cat", *voc(C), False), ("cat", *voc([30, 110, 70, 150]), True)])}, {"train": ["a"]})
    original = _hashes(root)
    dataset = load_dataset(root)
    assert dataset.class_names == ["cat", "dog"]
    predictions = [pred(A, 0, 0.95, 0), pred(B, 1, 0.9, 0), pred([21, 19, 61, 60], 1, 0.04, 0), pred([0, 0, 30, 30], 0, 0.02, 0)]
    report = audit(dataset, predictions)
    assert kinds(report) == ["overlooked", "spurious", "wrong_class"]
    suggestions = tmp_path / "report" / "suggestions.json"
    suggestions.parent.mkdir()
    suggestions.write_text(report.to_json())

    result, applied = apply_suggestions(suggestions, tmp_path / "fixed")
    assert applied == 3 and result.to == "voc" and result.notes == []
    assert (tmp_path / "fixed" / "Annotations" / "a.xml").is_file() and not (tmp_path / "fixed" / "annotations").exists()
    assert _hashes(root) == original
    checks = check_dataset(tmp_path / "fixed")
    assert [c.failed for c in checks] == [False] and checks[0].dataset.format == "voc"
    fixed = checks[0].dataset.samples[0]
    got = sorted((b.tolist(), int(c), bool(crowd)) for b, c, crowd in zip(fixed.boxes, fixed.labels, fixed.iscrowd))
    assert got == sorted([(A, 0, False), (B, 1, False), ([30, 110, 70, 150], 0, True)])


def test_cli_report_is_self_contained_and_apply_round_trips(one_image, tmp_path):
    from typer.testing import CliRunner

    from plaindet.cli import app

    dataset = one_image([(A, 2), (C, 1)])
    original = _hashes(dataset.root)
    results = tmp_path / "predictions.json"
    results.write_text(json.dumps(CLEAN_PREDICTIONS))
    runner = CliRunner()
    got = runner.invoke(app, ["data", "audit", "--data", str(dataset.root), "--predictions", str(results), "--out", str(tmp_path / "report")])
    assert got.exit_code == 0, got.output
    assert "3 issues" in got.output
    page = (tmp_path / "report" / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*\shref=|@import|url\(", page)  # nothing external
    assert page.count("src='data:image/jpeg;base64,") == 3
    for kind in ("overlooked", "spurious", "wrong_class"):
        assert f"data-kind='{kind}'" in page
    rows = (tmp_path / "report" / "suggestions.csv").read_text().splitlines()
    assert len(rows) == 4
    from PIL import Image

    assert Image.open(tmp_path / "report" / "top16.jpg").size[0] > 320 * 2  # three cards side by side

    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    got = runner.invoke(app, ["data", "audit", "--apply", str(tmp_path / "report" / "suggestions.json"), "--accept", str(ids), "--out", str(tmp_path / "fixed")])
    assert got.exit_code == 0, got.output
    assert "1 suggestions applied" in got.output
    assert [c.failed for c in check_dataset(tmp_path / "fixed")] == [False]
    assert _hashes(dataset.root) == original
    got = runner.invoke(app, ["data", "audit", "--data", str(dataset.root), "--out", str(tmp_path / "r2")])
    assert got.exit_code == 2 and "give one of --weights" in got.output


def test_folds_train_with_the_engine_and_predict_every_image_out_of_sample(tiny_shapes, tmp_path, monkeypatch):
    from plaindet.engine import label_audit

    settings = {
        "model": "plaindet-t", "max_steps": 2, "batch_size": 4, "image_size": 128, "amp": "off", "warmup_steps": 1,
        "model_overrides": {"backbone": {"depth": 2, "window_size": 8}, "neck_channels": 32},
    }  # fmt: skip
    report = label_audit.run_audit(tiny_shapes, "valid", tmp_path / "audit", folds=2, train_settings=settings)
    dataset = report.dataset
    folds = label_audit.fold_indices(len(dataset), 2)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(dataset)))
    for k, held_out in enumerate(folds):
        fold = json.loads((tmp_path / "audit" / "folds" / f"fold_{k}" / "predictions.json").read_text())
        assert fold and {r["image_id"] for r in fold} <= {int(dataset.samples[i].image_id) for i in held_out}
    assert (tmp_path / "audit" / "report.html").is_file()

    # A second run reuses every fold's predictions: no training.
    monkeypatch.setattr("plaindet.engine.train.train", lambda *a, **k: pytest.fail("trained again"))
    again = label_audit.run_audit(tiny_shapes, "valid", tmp_path / "audit", folds=2, train_settings=settings)
    assert [i.score for i in again.issues] == [i.score for i in report.issues]


def test_weights_give_predictions_and_the_report_warns_they_are_in_sample(trained_run, tiny_shapes, tmp_path):
    from typer.testing import CliRunner

    from plaindet.cli import app

    args = ["data", "audit", "--data", str(tiny_shapes), "--split", "valid", "--weights", str(trained_run / "best.safetensors"), "--device", "cpu", "--out", str(tmp_path / "r")]
    got = CliRunner().invoke(app, args)
    assert got.exit_code == 0, got.output
    data = json.loads((tmp_path / "r" / "suggestions.json").read_text())
    assert data["split"] == "valid" and len(data["images"]) == 8
    assert any("in-sample" in w for w in data["warnings"])
    assert "in-sample" in (tmp_path / "r" / "report.html").read_text()


def test_in_sample_warning_counts_the_audited_images_the_model_trained_on(trained_run, tiny_shapes, tmp_path):
    import shutil

    from plaindet.engine.label_audit import in_sample_warning

    weights = trained_run / "best.safetensors"  # trained on tiny_shapes' 8 valid images
    warning = in_sample_warning(weights, load_dataset(tiny_shapes, "valid"))
    assert warning.startswith("8 of the 8 audited images are in the training split") and "in-sample" in warning
    assert in_sample_warning(weights, load_dataset(tiny_shapes, "train")) is None  # another split: out-of-sample
    # Without its run folder nothing is known: the warning says it may be in-sample.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(weights, alone / "best.safetensors")
    warning = in_sample_warning(alone / "best.safetensors", load_dataset(tiny_shapes, "train"))
    assert "no training record" in warning and "if it trained on these images" in warning

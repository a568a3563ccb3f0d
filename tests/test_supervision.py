"""``Detections.to_supervision()``: supervision's ``sv.Detections`` with the same boxes, scores, class ids
and names, also for no detection; without the package, an error that names the extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from plaindet.detections import Detections
from plaindet.errors import MissingExtra


def test_to_supervision_keeps_every_field():
    sv = pytest.importorskip("supervision", reason="the supervision extra is not installed: pip install -e '.[supervision]'")
    det = Detections(
        boxes=np.array([[1.5, 2.0, 30.0, 40.25], [0.0, 0.0, 5.0, 5.0]], np.float32),
        scores=np.array([0.9, 0.4], np.float32),
        labels=np.array([2, 0], np.int64),
        class_names=["triangle", "circle"],
    )
    out = det.to_supervision()
    assert isinstance(out, sv.Detections) and len(out) == 2
    np.testing.assert_array_equal(out.xyxy, det.boxes)
    np.testing.assert_array_equal(out.confidence, det.scores)
    np.testing.assert_array_equal(out.class_id, det.labels)
    assert out.data["class_name"].tolist() == ["triangle", "circle"]
    assert out[out.confidence > 0.5].data["class_name"].tolist() == ["triangle"]  # supervision's own filtering works on it

    empty = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), []).to_supervision()
    assert len(empty) == 0 and empty.xyxy.shape == (0, 4) and empty.data["class_name"].shape == (0,)


def test_to_supervision_names_its_extra_when_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision now raises ImportError
    det = Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), [])
    with pytest.raises(MissingExtra, match=r"pip install 'plaindet\[supervision\]'"):
        det.to_supervision()

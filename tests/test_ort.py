"""The ONNX Runtime side: ``OnnxDetector.predict`` equals ``Detector.predict``, runs without torch, and
the int8/fp16 variants keep the contract and quantize what they should."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import onnx
import pytest
from PIL import Image

import plaindet
from plaindet.data import load_dataset
from plaindet.export.onnx import export_onnx
from plaindet.export.quantize import (
    activation_matmuls,
    calibration_images,
    output_layers,
    prediction_nodes,
    quantize_onnx,
)

from test_export import CLASSES, SIZE, tiny_model  # the same tiny model both files export


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", dynamic_batch=True)


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    """A square array, a wide PNG file and a tall PIL image: one batch, padded to the same 128 x 128
    by both predictors (the square image sets the batch's size for ``Detector.predict``)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "wide.png"
    Image.fromarray(rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)).save(path)
    return [rng.integers(0, 256, (150, 150, 3), dtype=np.uint8), path, Image.fromarray(rng.integers(0, 256, (240, 100, 3), dtype=np.uint8))]


def test_onnx_detector_predicts_like_detector(model, exported, test_images):
    ours = plaindet.OnnxDetector(exported, threads=1)
    expected = model.predict(test_images, threshold=0.2)
    got = ours.predict(test_images, threshold=0.2)
    assert len(got) == len(expected) == 3
    assert sum(len(d) for d in expected) > 10  # something to compare
    for e, g in zip(expected, got):
        assert len(g) == len(e)
        np.testing.assert_allclose(g.boxes, e.boxes, atol=1e-3)  # original pixels, up to 1.9x the input's
        np.testing.assert_allclose(g.scores, e.scores, atol=1e-5)
        np.testing.assert_array_equal(g.labels, e.labels)
        assert g.class_names == e.class_names
        assert g.boxes.dtype == np.float32 and g.labels.dtype == np.int64


def test_onnx_detector_single_image_and_its_own_checks(exported, tmp_path):
    detector = plaindet.OnnxDetector(exported)
    assert detector.batch_size is None and detector.class_names == CLASSES and detector.input_size == (SIZE, SIZE)
    one = detector.predict(np.zeros((40, 30, 3), np.uint8), threshold=0.0, image_size=96)  # smaller than the input: padded
    assert len(one) == 100 and one.boxes.max() <= 40
    with pytest.raises(ValueError, match="does not fit"):
        detector.predict(np.zeros((40, 30, 3), np.uint8), image_size=160)
    plain = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        ir_version=10,
        opset_imports=[onnx.helper.make_opsetid("", 20)],
    )
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="not a plaindet ONNX file"):
        plaindet.OnnxDetector(tmp_path / "plain.onnx")


def test_onnx_detector_never_imports_torch(exported):
    code = f"""
import sys
import numpy as np
import plaindet
detector = plaindet.OnnxDetector({str(exported)!r}, threads=1)
dets = detector.predict([np.zeros((50, 70, 3), np.uint8), np.full((64, 64), 0.5, np.float32)], threshold=0.0)
assert [len(d) for d in dets] == [100, 100], [len(d) for d in dets]
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


def _run(path, batch):
    return plaindet.OnnxDetector(path, threads=1)(batch)


def _matched_box_errors(ref, out, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """For each of the fp32 graph's ``top`` detections per image (``ref``, the raw outputs): the
    same-class detection of ``out`` whose box is closest, as ``(max abs coordinate difference in
    input pixels, its rank in out)``. Quantization reorders near-equal scores, so detections are
    matched, not compared by position."""
    errors, ranks = [], []
    for ref_boxes, ref_labels, boxes, labels in zip(ref[0], ref[2], out[0], out[2]):
        for box, label in zip(ref_boxes[:top], ref_labels[:top]):
            candidates = np.flatnonzero(labels == label)
            assert len(candidates), f"no detection of class {label}"
            diff = np.abs(boxes[candidates] - box).max(axis=1)
            errors.append(diff.min())
            ranks.append(candidates[diff.argmin()])
    return np.array(errors), np.array(ranks)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(1).integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)


def test_int8_dynamic_quantizes_every_linear_layer(exported, batch, tmp_path):
    path = quantize_onnx(exported, tmp_path / "dyn.onnx", "int8-dynamic")
    ops = _ops(path)
    weight_matmuls = _ops(exported)["MatMul"] - len(activation_matmuls(onnx.load(exported)))
    assert ops["MatMulInteger"] == weight_matmuls == 4 * 4  # qkv, proj, fc1, fc2 per block
    assert ops["Conv"] == _ops(exported)["Conv"]  # convs stay float
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert meta["precision"] == "int8-dynamic" and json.loads(meta["class_names"]) == CLASSES
    ref, out = _run(exported, batch), _run(path, batch)
    assert out[0].shape == ref[0].shape and out[2].dtype == np.int64
    assert np.abs(out[1] - ref[1]).max() < 0.05  # the same detections, roughly
    # Boxes of the top 20 per image (input 128 px), matched: measured at most 0.05 px off, ranks < 20.
    errors, ranks = _matched_box_errors(ref, out)
    assert errors.max() < 0.25 and ranks.max() < 40, (errors.max(), ranks.max())


def test_int8_static_calibrates_on_images_and_keeps_prediction_layers_float(exported, batch, tiny_shapes, tmp_path):
    calib = calibration_images(tiny_shapes, 4)
    assert len(calib) == 4 and all(p.parent.name == "train" for p in calib)
    path = quantize_onnx(exported, tmp_path / "static.onnx", "int8-static", calib_images=calib)
    proto = onnx.load(path)
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    layers = [n for n in proto.graph.node if n.op_type in ("MatMul", "Conv", "ConvTranspose")]
    quantized = {n.name for n in layers if n.input[0] in dequantized and n.input[1] in dequantized}
    kept = set(output_layers(onnx.load(exported)))
    assert quantized == {n.name for n in layers} - kept  # all but the prediction layers ...
    assert set(activation_matmuls(onnx.load(exported))) <= quantized  # ... attention products included
    matmul_outputs = {n.output[0] for n in layers if n.op_type == "MatMul"}
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in matmul_outputs for n in proto.graph.node)  # float outputs
    assert {p.key: p.value for p in proto.metadata_props}["precision"] == "int8-static"
    # 7-bit weights (reduce_range): full-range ones saturate the u8 x s8 kernels of CPUs without
    # VNNI, where boxes moved by up to 6.8 px instead of 0.86 (a 2-core AVX2 EPYC).
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and t.dims and len(t.dims) > 1]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    ref, out = _run(exported, batch), _run(path, batch)
    assert out[1].shape == ref[1].shape
    assert np.abs(out[1] - ref[1]).max() < 0.1
    # Activations are quantized too, so boxes move more: measured at most 1.0 px (median 0.18) of 128
    # on a VNNI Xeon, 0.86 (0.17) on an AVX2 EPYC.
    errors, ranks = _matched_box_errors(ref, out)
    assert errors.max() < 2.0 and np.median(errors) < 0.5 and ranks.max() < 40, (errors.max(), np.median(errors), ranks.max())


def test_int8_static_calibrated_in_the_lean_session_equals_onnxruntimes_own(exported, tiny_shapes, tmp_path, monkeypatch):
    """quantize_onnx calibrates in a session without onnxruntime's memory arena and pattern (half
    the peak memory) and hands quantize_static the ranges: the file is the one onnxruntime's own
    calibration writes, initializer for initializer (scales and zero points included)."""
    import plaindet.export.quantize as quantize

    calib = calibration_images(tiny_shapes, 3)
    ours = onnx.load(quantize_onnx(exported, tmp_path / "ours.onnx", "int8-static", calib_images=calib))
    monkeypatch.setattr(quantize, "_calibrate", lambda *args: None)  # quantize_static calibrates itself
    theirs = onnx.load(quantize_onnx(exported, tmp_path / "theirs.onnx", "int8-static", calib_images=calib))
    a, b = ({t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer} for m in (ours, theirs))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert [(n.op_type, list(n.input)) for n in ours.graph.node] == [(n.op_type, list(n.input)) for n in theirs.graph.node]


def test_int8_static_without_images_is_an_error(exported, tmp_path):
    with pytest.raises(ValueError, match="calibration images"):
        quantize_onnx(exported, tmp_path / "s.onnx", "int8-static")
    with pytest.raises(ValueError, match="unknown quantization mode"):
        quantize_onnx(exported, tmp_path / "s.onnx", "int4")


def test_fp16_halves_the_weights_and_keeps_float32_io(exported, batch, tmp_path):
    path = quantize_onnx(exported, tmp_path / "half.onnx", "fp16")
    proto = onnx.load(path)
    matrices = [i for i in proto.graph.initializer if len(i.dims) >= 2]
    assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in matrices) > 30
    # float32 stay only the prediction layers and post-processing (box decoding overflows float16)
    original = onnx.load(exported)
    post = {name for n in original.graph.node if n.name in set(prediction_nodes(original)) for name in n.input}
    assert {i.name for i in matrices if i.data_type == onnx.TensorProto.FLOAT} <= post
    assert path.stat().st_size < 0.6 * exported.stat().st_size
    ref, out = _run(exported, batch), _run(path, batch)
    assert out[1].dtype == np.float32 and out[0].dtype == np.float32
    assert np.abs(out[1] - ref[1]).max() < 5e-3
    errors, ranks = _matched_box_errors(ref, out)  # measured: at most 0.08 px off
    assert errors.max() < 0.25 and ranks.max() < 40, (errors.max(), ranks.max())


def test_calibration_images_from_a_folder(tiny_shapes):
    folder = tiny_shapes / "train"
    assert len(calibration_images(folder, 100)) == len(load_dataset(tiny_shapes, split="train"))

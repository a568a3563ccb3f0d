"""ONNX export: the graph equals PyTorch's postprocess(forward(x)) (batch 1 and 3 on one file), its
metadata, the exporter's errors and the ``plaindet export`` command."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

import plaindet
from plaindet.cli import app
from plaindet.errors import MissingExtra, require_extra
from plaindet.export.onnx import METADATA_KEYS, ExportWrapper, export_onnx, onnx_parity
from plaindet.export.quantize import output_layers

SIZE = 128
CLASSES = ["circle", "square", "triangle"]


def tiny_model() -> torch.nn.Module:
    """plaindet-t with 4 blocks (2 window, 2 global: both attention paths, and window padding with
    its mask at 128 px), 3 classes. Class logits are spread out so no two detections tie and
    rankings can be compared across backends."""
    torch.manual_seed(0)
    logging.getLogger("plaindet").setLevel(logging.ERROR)
    model = plaindet.create_model("plaindet-t", class_names=CLASSES, image_size=SIZE, backbone=dict(depth=4, global_blocks=(1, 3)))
    torch.nn.init.normal_(model.head.cls_out.weight, std=0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", dynamic_batch=True)


def images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_graph_equals_pytorch_for_every_batch_size(model, exported, batch):
    parity = onnx_parity(model, exported, images(batch, seed=batch))
    assert parity["scores"] < 1e-4
    assert parity["boxes"] < 1e-4
    assert parity["boxes_compared"] >= 0.9 * batch * model.config.max_detections  # hardly any ties left out
    assert parity["labels"] == 0.0


def test_onnx_outputs_have_the_contract_shapes_and_types(model, exported):
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, SIZE, SIZE]
    boxes, scores, labels = session.run(None, {"images": images(2).numpy()})
    k = model.config.max_detections
    assert boxes.shape == (2, k, 4) and boxes.dtype == np.float32
    assert scores.shape == (2, k) and scores.dtype == np.float32
    assert labels.shape == (2, k) and labels.dtype == np.int64
    assert (np.diff(scores, axis=1) <= 0).all()  # sorted high to low
    assert labels.min() >= 0 and labels.max() < len(CLASSES)


def test_metadata_describes_the_model(model, exported):
    proto = onnx.load(exported)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert set(METADATA_KEYS) <= set(meta)
    assert json.loads(meta["class_names"]) == CLASSES
    assert json.loads(meta["input_size"]) == [SIZE, SIZE]
    assert meta["image_size"] == str(SIZE)
    assert meta["plaindet_version"] == plaindet.__version__
    assert meta["model"] == "plaindet-t" and meta["precision"] == "fp32"
    assert json.loads(meta["config"])["backbone"]["depth"] == 4
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)  # one file


def test_output_layers_are_the_prediction_convs(exported):
    """The layers kept in float by int8 quantization: the class and box convs of each pyramid level."""
    proto = onnx.load(exported)
    names = set(output_layers(proto))
    weights = {n.input[1] for n in proto.graph.node if n.name in names}
    assert len(names) == 2 * 3  # cls_out and box_out at strides 8, 16, 32
    assert weights == {"model.head.cls_out.weight", "model.head.box_out.weight"}


def test_a_missing_extra_names_it():
    with pytest.raises(MissingExtra, match=r"pip install 'plaindet\[onnx\]'") as caught:
        require_extra("plaindet_no_such_module", "onnx", "ONNX export")
    assert isinstance(caught.value, ImportError)


runner = CliRunner()


@pytest.fixture
def checkpoint(model, tmp_path):
    return model.save(tmp_path / "tiny.safetensors")


def test_cli_export_fixed_batch_with_image_size_and_max_detections(model, checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    args = ["export", "--weights", checkpoint, "--format", "onnx", "--out", out, "--image-size", 100, "--max-detections", 7]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, SIZE, SIZE]  # 100 px rounded up to the size divisor; batch fixed
    boxes, scores, _ = session.run(None, {"images": images(1).numpy()})
    assert boxes.shape == (1, 7, 4)
    np.testing.assert_allclose(scores, ExportWrapper(model, 7)(images(1))[1].numpy(), atol=1e-5)
    detector = plaindet.OnnxDetector(out)
    assert (detector.batch_size, detector.image_size, detector.max_detections) == (1, 100, 7)
    dets = detector.predict([np.zeros((60, 90, 3), np.uint8)] * 2, threshold=0.0)  # a fixed batch of 1, run twice
    assert len(dets) == 2 and len(dets[0]) == 7


@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "tflite"], "only onnx"),
        (["--quantize", "int4"], "int8-static, int8-dynamic, fp16"),
        (["--quantize", "int8-static"], "--calib-data"),
        (["--quantize", "int8-dynamic", "--calib-data", "x"], "only used with int8-static"),
    ],
)
def test_cli_export_rejects_bad_options(checkpoint, args, message):
    result = runner.invoke(app, ["export", "--weights", str(checkpoint), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_cli_export_missing_weights_is_a_user_error(tmp_path):
    result = runner.invoke(app, ["export", "--weights", str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


# One model per family: the sizes of a family differ only in widths and depths, not in the ops the
# graph holds (each family's other sizes were checked the same way when the families were added).
FAMILIES = ["plaindet-t", "detr-r18", "deperceiver-r18", "patchtok-ti"]


def test_the_families_cover_the_registry():
    assert {name.rsplit("-", 1)[0] for name in plaindet.list_models()} == {name.rsplit("-", 1)[0] for name in FAMILIES}


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_model_family_exports(name, tmp_path):
    """The exporter only relies on the model contract: a model of every registered family, built
    small, exports and its graph equals PyTorch's (batch 2 on a dynamic-batch file)."""
    from test_registry import SIZE as SMALL_SIZE
    from test_registry import SMALL

    torch.manual_seed(0)
    model = plaindet.create_model(name, class_names=CLASSES, image_size=SMALL_SIZE, **SMALL[name]).eval()
    path = export_onnx(model, tmp_path / f"{name}.onnx", dynamic_batch=True)
    batch = torch.randint(0, 256, (2, 3, SMALL_SIZE, SMALL_SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    parity = onnx_parity(model, path, batch)
    assert parity["scores"] < 1e-4 and parity["boxes"] < 1e-3, parity

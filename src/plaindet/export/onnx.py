"""Export any registered model to one ONNX file: normalization, network and post-processing inside.

The graph (see :class:`ExportWrapper`) is the model contract of :mod:`plaindet.models.base` traced
end to end, ``postprocess(forward(images))``:

- input ``images``: ``uint8 (B, 3, H, W)`` RGB, 0..255, each image resized so its long side is
  ``image_size`` and zero-padded at the bottom/right to ``H = W = image_size`` rounded up to the
  model's ``size_divisor``. ``B`` is fixed (1) or dynamic (``dynamic_batch``).
- outputs ``boxes float32 (B, k, 4)`` xyxy in input pixels, ``scores float32 (B, k)`` sorted high to
  low, ``labels int64 (B, k)`` contiguous class indices, ``k = max_detections``.

So deployment needs onnxruntime and an image resize, nothing else (:class:`plaindet.OnnxDetector`
does both). The file's ``metadata_props`` (see :data:`METADATA_KEYS`) hold the class names, input
size and plaindet version, so the file describes itself.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export, then onnxscript), which gives a clean
graph for every op the models use, including the window attention's masks and the dynamic batch;
the TorchScript exporter is not needed. Export is generic over the contract: every registered
family (plaindet, DETR, DePerceiver, patch-token) exports; the patch-token models' autoregressive
decoding is unrolled into ``3 * max_objects + 1`` decoder steps, so their graphs are large and slow
to export.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.errors import require_extra
from plaindet.weights import atomic_write

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores", "labels")
# metadata_props keys, all strings (JSON for lists): read back by plaindet.export.ort.OnnxDetector.
METADATA_KEYS = (
    "plaindet_version",
    "model",
    "class_names",
    "category_ids",
    "image_size",
    "input_size",
    "size_divisor",
    "max_detections",
    "precision",
    "config",
)


class ExportWrapper(nn.Module):
    """``images -> (boxes, scores, labels)``: a model's ``postprocess(forward(images))`` as one module.

    Works for any model that keeps the contract of :class:`plaindet.models.base.DetectionModel`;
    ``max_detections`` fixes ``k`` (default: the model's config).
    """

    def __init__(self, model: nn.Module, max_detections: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.max_detections = max_detections or model.config.max_detections

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.model.postprocess(self.model(images), self.max_detections)


def export_input_size(image_size: int, size_divisor: int) -> int:
    """Side of the square model input: ``image_size`` rounded up to ``size_divisor``."""
    return -(-image_size // size_divisor) * size_divisor


@contextlib.contextmanager
def _quiet_exporter():
    # torch.onnx logs one warning per torchvision op it can't register (torchvision isn't needed
    # here) and torch.export raises FutureWarnings from its internals; neither concerns the user.
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def _deployable(model: nn.Module) -> nn.Module:
    """The model as deployed: in eval mode, LoRA adapters merged (on a copy, the caller's model is untouched)."""
    lora = getattr(model.config, "lora", None)
    if lora is not None and getattr(lora, "rank", 0) > 0:
        from plaindet.models.lora import merge_lora

        model = merge_lora(copy.deepcopy(model))
    return model.eval()


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    image_size: int | None = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
    max_detections: int | None = None,
) -> Path:
    """Write ``model`` as one self-contained ONNX file (see the module docstring for its inputs/outputs).

    Args:
        model: a registered plaindet model (any model keeping the contract).
        path: the ``.onnx`` file to write (weights inside, no external data file).
        image_size: the long side images are resized to (default: the model's ``config.image_size``);
            the input is ``image_size`` rounded up to ``size_divisor``, square.
        dynamic_batch: a dynamic batch dimension instead of a fixed batch of 1.
        opset: ONNX opset (default: the exporter's, 20 with torch 2.13). From 23 the exporter writes
            attention as the ONNX ``Attention`` op, which onnxruntime 1.31's CPU kernel cannot run
            with the window attention's broadcast padding mask (plaindet at sizes whose patch grid
            isn't a multiple of the window): keep the default for onnxruntime.
        max_detections: ``k`` of the top-k (default: the model's config).

    Returns the path. Raises ``ImportError`` naming the extra when onnx/onnxscript are missing.
    """
    require_extra("onnxscript", "onnx", "ONNX export and inference")
    onnx = require_extra("onnx", "onnx", "ONNX export and inference")
    model = _deployable(model)
    config = model.config
    image_size = image_size or config.image_size
    side = export_input_size(image_size, model.size_divisor)
    wrapper = ExportWrapper(model, max_detections).eval()
    # Trace with batch 2 when the batch is dynamic: torch.export specializes a size of 1 to a constant.
    device = next(model.parameters()).device
    example = torch.zeros(2 if dynamic_batch else 1, 3, side, side, dtype=torch.uint8, device=device)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    path = Path(path)
    traced = _trace(wrapper, example, _trace_path(path), list(OUTPUT_NAMES), opset=opset, dynamic_shapes=dynamic_shapes)

    from plaindet.config import to_dict
    from plaindet.version import __version__

    proto = onnx.load(traced)
    traced.unlink()
    onnx.helper.set_model_props(
        proto,
        {
            "plaindet_version": __version__,
            "model": config.name,
            "class_names": json.dumps(list(config.class_names)),
            "category_ids": json.dumps([int(i) for i in config.category_ids]),
            "image_size": str(image_size),
            "input_size": json.dumps([side, side]),
            "size_divisor": str(model.size_divisor),
            "max_detections": str(wrapper.max_detections),
            "precision": "fp32",
            "config": json.dumps(to_dict(config)),
        },
    )
    proto.doc_string = (
        f"plaindet {config.name}: images uint8 (B, 3, {side}, {side}) RGB 0..255, resized to a long side of "
        f"{image_size} and zero-padded at the bottom/right -> boxes float32 (B, k, 4) xyxy input pixels, "
        f"scores float32 (B, k) high to low, labels int64 (B, k); k = {wrapper.max_detections}"
    )
    onnx.checker.check_model(proto)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))  # a kill mid-write leaves the previous file
    return path


def _trace_path(path: Path) -> Path:
    """Where the exporter writes its raw graph before plaindet's metadata is added: a hidden file
    beside ``path``, so ``path`` itself is only ever replaced whole (:func:`plaindet.weights.atomic_write`)."""
    return path.parent / f".{path.name}.trace.tmp"


def _trace(wrapper: nn.Module, example: Tensor, path: str | os.PathLike, output_names: list[str], *, opset: int | None, dynamic_shapes) -> Path:
    """``torch.onnx.export(..., dynamo=True)`` of ``wrapper`` on ``example`` to one file (no external data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=output_names,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )
        program.save(path, external_data=False)
    return path


class GroupExportWrapper(nn.Module):
    """``images -> (boxes_0, scores_0, labels_0, boxes_1, ...)``: a
    :class:`~plaindet.models.group.DetectorGroup`'s forward, flattened for the exporter."""

    def __init__(self, group: nn.Module) -> None:
        super().__init__()
        self.group = group

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(t for out in self.group(images) for t in out)


def group_output_names(n: int) -> list[str]:
    """The output names of a group's graph: ``boxes_i``, ``scores_i``, ``labels_i`` for detector ``i``."""
    return [f"{name}_{i}" for i in range(n) for name in OUTPUT_NAMES]


def export_group_onnx(group: nn.Module, path: str | os.PathLike, *, image_size: int | None = None, opset: int | None = None) -> Path:
    """Write a :class:`~plaindet.models.group.DetectorGroup` as one ONNX graph with one backbone.

    Input ``images`` as :func:`export_onnx`'s (batch 1); outputs :func:`group_output_names`, each
    detector's ``boxes``, ``scores``, ``labels`` as :func:`export_onnx` describes them. The metadata
    holds ``group``: per detector its name, class names, category ids and ``max_detections``.
    """
    require_extra("onnxscript", "onnx", "ONNX export and inference")
    onnx = require_extra("onnx", "onnx", "ONNX export and inference")
    from plaindet.models.lora import has_lora, merge_lora
    from plaindet.version import __version__

    group = copy.deepcopy(group).eval()
    for member in group.members:
        if has_lora(member):
            merge_lora(member)
    sizes = {m.config.image_size for m in group.members}
    image_size = image_size or max(sizes)
    side = export_input_size(image_size, group.size_divisor)
    device = next(group.parameters()).device
    example = torch.zeros(1, 3, side, side, dtype=torch.uint8, device=device)
    names = group_output_names(len(group.members))
    path = Path(path)
    traced = _trace(GroupExportWrapper(group).eval(), example, _trace_path(path), names, opset=opset, dynamic_shapes=None)
    proto = onnx.load(traced)
    traced.unlink()
    members = [
        {"name": n, "model": m.config.name, "class_names": list(m.config.class_names), "category_ids": [int(i) for i in m.config.category_ids], "max_detections": m.config.max_detections}
        for n, m in zip(group.names, group.members)
    ]  # fmt: skip
    onnx.helper.set_model_props(
        proto,
        {
            "plaindet_version": __version__,
            "group": json.dumps(members),
            "image_size": str(image_size),
            "input_size": json.dumps([side, side]),
            "size_divisor": str(group.size_divisor),
        },
    )
    proto.doc_string = f"plaindet group of {len(members)} detectors on one backbone: images uint8 (1, 3, {side}, {side}) -> {', '.join(names)}"
    onnx.checker.check_model(proto)
    atomic_write(path, lambda tmp: onnx.save(proto, tmp))  # a kill mid-write leaves the previous file
    return path


@torch.no_grad()
def onnx_parity(model: nn.Module, path: str | os.PathLike, images: Tensor, max_detections: int | None = None) -> dict[str, float]:
    """How far the ONNX file's outputs are from PyTorch's ``postprocess(forward(images))``.

    ``images``: ``uint8 (B, 3, H, W)`` at the file's input size. Returns

    - ``scores``: max abs difference of the scores rank by rank (sorted lists, so a swap of two
      tied detections doesn't show);
    - ``boxes``: max abs difference of each ONNX detection's box from its PyTorch twin: the detection
      with the same label and a score within ``1e-5``, so detections whose nearly tied scores swap
      ranks between the backends are still compared with each other. Ranks tied with the last one are
      left out (they may fall out of the other backend's top-k); a detection with no twin counts as
      ``inf``; ``boxes_compared`` says how many detections were compared;
    - ``labels``: the fraction of ranks whose label differs (swaps of tied scores, not errors).
    """
    ort = require_extra("onnxruntime", "onnx", "ONNX export and inference")
    wrapper = ExportWrapper(_deployable(model), max_detections).eval()
    ref = [t.numpy() for t in wrapper(images)]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
    matched = [_matched_box_diff(*(o[i] for o in ref), *(o[i] for o in out)) for i in range(len(images))]
    return {
        "boxes": max(diff for diff, _ in matched),
        "boxes_compared": sum(n for _, n in matched),
        "scores": float(abs(out[1] - ref[1]).max()),
        "labels": float((out[2] != ref[2]).mean()),
    }


def _matched_box_diff(ref_boxes, ref_scores, ref_labels, boxes, scores, labels, tol: float = 1e-5) -> tuple[float, int]:
    """``(max abs box difference, detections compared)`` for one image; see :func:`onnx_parity`."""
    worst, compared = 0.0, 0
    last = min(ref_scores[-1], scores[-1])
    for box, score, label in zip(boxes, scores, labels):
        if score <= last + tol:
            break  # scores are sorted: the rest are all tied with the cut-off
        twins = (ref_labels == label) & (abs(ref_scores - score) <= tol)
        if not twins.any():
            return float("inf"), compared
        worst = max(worst, float(abs(ref_boxes[twins] - box).max(axis=1).min()))
        compared += 1
    return worst, compared


def run_export(
    weights: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    dynamic_batch: bool = False,
    opset: int | None = None,
    max_detections: int | None = None,
    quantize: str | None = None,
    calib_data: str | os.PathLike | None = None,
    calib_images: int = 100,
    calib_split: str = "train",
) -> tuple[Path, list[str]]:
    """``plaindet export``: a saved model to one ONNX file, optionally quantized (``int8-static``
    calibrated on ``calib_images`` images of ``calib_data``, ``int8-dynamic`` or ``fp16``).

    The fp32 graph is compared with PyTorch on random images on the way out. Returns the file
    written (default: next to the weights, ``.onnx``) and the lines to tell the user. Raises
    :class:`~plaindet.errors.UserError` for an option or input that can't be used.
    """
    import tempfile

    from plaindet.errors import UserError
    from plaindet.export.quantize import MODES, calibration_images, quantize_onnx
    from plaindet.models.factory import load_model

    if quantize is not None and quantize not in MODES:
        raise UserError(f"unknown quantization {quantize!r}: choose one of {', '.join(MODES)}")
    if quantize == "int8-static" and calib_data is None:
        raise UserError("int8-static quantization needs calibration data (--calib-data: training images)")
    if calib_data is not None and quantize != "int8-static":
        raise UserError("calibration data (--calib-data) is only used with int8-static quantization")
    weights = Path(weights)
    out = Path(out) if out is not None else weights.with_name(weights.stem + (f"-{quantize}" if quantize else "") + ".onnx")
    model = load_model(weights)
    calib = calibration_images(calib_data, calib_images, split=calib_split) if calib_data is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(
            model, out if quantize is None else Path(tmp) / "fp32.onnx", image_size=image_size, dynamic_batch=dynamic_batch, opset=opset, max_detections=max_detections
        )
        side = export_input_size(image_size or model.config.image_size, model.size_divisor)
        images = torch.randint(0, 256, (2 if dynamic_batch else 1, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        parity = onnx_parity(model, fp32, images, max_detections)
        if quantize is not None:
            quantize_onnx(fp32, out, quantize, calib_images=calib)
    lines = [
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB, {quantize or 'fp32'}): input images uint8 "
        f"({'B' if dynamic_batch else 1}, 3, {side}, {side})",
        f"fp32 graph vs PyTorch on random images: max abs diff boxes {parity['boxes']:.2e} px, scores {parity['scores']:.2e}"
        + (f" ({quantize} changes the numbers by design: measure its AP with plaindet eval --weights {out})" if quantize else ""),
    ]
    return out, lines


def run_export_group(weights: list[str | os.PathLike], out: str | os.PathLike, *, image_size: int | None = None, opset: int | None = None) -> tuple[Path, list[str]]:
    """``plaindet export --weights A --weights B ...``: detectors finetuned from one frozen backbone
    (:func:`plaindet.load_group`) to one ONNX graph with one backbone (:func:`export_group_onnx`),
    compared with the PyTorch group on a random image on the way out. Returns the file and the lines
    to tell the user."""
    from plaindet.models.group import load_group

    ort = require_extra("onnxruntime", "onnx", "ONNX export and inference")
    group = load_group(weights)
    out = export_group_onnx(group, out, image_size=image_size, opset=opset)
    sizes = {m.config.image_size for m in group.members}
    side = export_input_size(image_size or max(sizes), group.size_divisor)
    images = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    names = group_output_names(len(group.members))
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(names, {INPUT_NAME: images.numpy()})
    with torch.no_grad():
        ref = [t.numpy() for o in group(images) for t in o]
    worst = max(float(abs(a - b).max()) for n, a, b in zip(names, got, ref) if n.startswith("scores"))
    return out, [
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB): {len(group.members)} detectors on one backbone, input images uint8 (1, 3, {side}, {side}), "
        f"outputs {', '.join(names)}",
        f"graph vs PyTorch on a random image: max abs diff of the scores {worst:.2e}",
    ]

"""Run an exported plaindet ONNX file with ONNX Runtime: the deployment predictor, with no torch.

This module and everything it imports use numpy, Pillow, OpenCV and onnxruntime only (a test checks
that ``torch`` never gets imported), so a deployment installs ``onnxruntime`` and not PyTorch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from plaindet.detections import pad_batch, predict_in_batches
from plaindet.errors import NotFound, UserError, require_extra

__all__ = ["OnnxDetector"]

_REQUIRED_METADATA = ("class_names", "image_size", "input_size")


class OnnxDetector:
    """A plaindet ONNX file (from :func:`plaindet.export.export_onnx` or ``plaindet export``), with the
    same :meth:`predict` as :class:`plaindet.Detector`.

    Args:
        path: the ``.onnx`` file (fp32, int8 or fp16: the inputs and outputs are the same).
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's, one per physical core).
        providers: execution providers (default: ``["CPUExecutionProvider"]``).
        optimization_level: ONNX Runtime graph optimization, ``"all"`` (default), ``"extended"``,
            ``"basic"`` or ``"disabled"``.

    Attributes read from the file's metadata: ``class_names``, ``category_ids``, ``image_size`` (the
    long side images are resized to), ``input_size`` ``(H, W)`` (the fixed model input),
    ``max_detections``, ``precision``, ``model_name``; ``batch_size`` is the fixed batch, or
    ``None`` for a dynamic one. :func:`plaindet.detections.predict_dataset` and ``plaindet eval
    --weights model.onnx`` evaluate it exactly as they evaluate the PyTorch model.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        optimization_level: str = "all",
    ) -> None:
        ort = require_extra("onnxruntime", "onnx", "ONNX export and inference")
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization_level not in levels:
            raise ValueError(f"optimization_level must be one of {sorted(levels)}, got {optimization_level!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise NotFound(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[optimization_level]
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for files it can't parse
            raise UserError(f"{self.path}: not a readable ONNX file ({e})") from None

        try:
            meta = dict(self.session.get_modelmeta().custom_metadata_map)
        except UnicodeDecodeError as e:
            raise UserError(f"{self.path}: its metadata is not UTF-8 text ({e.reason} at byte {e.start})") from None
        missing = [k for k in _REQUIRED_METADATA if k not in meta]
        if missing:
            raise UserError(f"{self.path}: not a plaindet ONNX file (metadata {missing} missing); export it with `plaindet export`")
        self.metadata = meta
        self.class_names: list[str] = _metadata_value(meta, "class_names", self.path, _is_names)
        default_ids = json.dumps(list(range(len(self.class_names))))
        self.category_ids: list[int] = _metadata_value({"category_ids": default_ids, **meta}, "category_ids", self.path, _is_ids)
        if len(self.category_ids) != len(self.class_names):
            raise UserError(f"{self.path}: its metadata has {len(self.class_names)} class_names but {len(self.category_ids)} category_ids")
        self.image_size: int = _metadata_value(meta, "image_size", self.path, _is_side)
        self.input_size: tuple[int, int] = tuple(_metadata_value(meta, "input_size", self.path, _is_pair))
        self.max_detections = _metadata_value({"max_detections": "0", **meta}, "max_detections", self.path, _is_count) or None
        self.precision = meta.get("precision", "fp32")
        self.model_name = meta.get("model", "")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        ranks = [len(o.shape) for o in outputs]
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or ranks != [3, 2, 2]:
            raise UserError(
                f"{self.path}: not a plaindet ONNX graph (it has {len(inputs)} inputs and {len(outputs)} outputs of ranks {ranks}; "
                "a plaindet export has one (B, 3, H, W) image input and three outputs: boxes (B, k, 4), scores (B, k), labels (B, k))"
            )
        self._input = inputs[0]
        batch = self._input.shape[0]
        self.batch_size: int | None = batch if isinstance(batch, int) else None

    def __repr__(self) -> str:
        return (
            f"OnnxDetector({str(self.path)!r}, model={self.model_name!r}, precision={self.precision!r}, "
            f"input={self.input_size}, classes={len(self.class_names)})"
        )

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The raw graph: ``uint8 (B, 3, H, W)`` at :attr:`input_size` -> ``boxes (B, k, 4)`` xyxy input
        pixels, ``scores (B, k)``, ``labels (B, k)``."""
        boxes, scores, labels = self.session.run(None, {self._input.name: np.ascontiguousarray(images, dtype=np.uint8)})
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise UserError(f"{self.path}: its graph gave class {labels.max()}, but its metadata names {len(self.class_names)} classes")
        return boxes, scores, labels

    def predict(self, images: Any, threshold: float = 0.3, image_size: int | None = None, batch_size: int = 8):
        """Detect objects in one image or a list of images, exactly like :meth:`plaindet.Detector.predict`.

        ``images``: a path, PIL image, ``uint8`` ``(H, W, 3)`` RGB array (or a float one in [0, 1]),
        or a list of those. Each is resized so its long side is ``image_size`` (default: the one it
        was exported at; at most the model's input side) and zero-padded at the bottom/right to the
        fixed input size. Returns :class:`~plaindet.detections.Detections` (a list for list input)
        in original-image pixels.
        """
        image_size = image_size or self.image_size
        if image_size > min(self.input_size):
            raise ValueError(
                f"image_size {image_size} does not fit the model's fixed input {self.input_size[0]}x{self.input_size[1]}; "
                "export again with a larger --image-size"
            )

        def run(resized: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            batch = pad_batch(resized, *self.input_size)
            if self.batch_size and len(batch) < self.batch_size:  # a fixed batch: fill it with blank images
                batch = np.concatenate([batch, np.zeros((self.batch_size - len(batch),) + batch.shape[1:], np.uint8)])
            return self(batch)

        return predict_in_batches(
            images, run, image_size=image_size, batch_size=self.batch_size or batch_size, threshold=threshold, class_names=self.class_names
        )


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(n, str) for n in v) and len(v) > 0


def _is_ids(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_side(v: Any) -> bool:
    return _is_count(v) and 0 < v <= _MAX_SIDE


def _is_pair(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_side(x) for x in v)


_MAX_SIDE = 100_000  # an image side no export has; the same bound as a model config's sizes
_EXPECTED = {
    _is_names: "a JSON list of class names",
    _is_ids: "a JSON list of integers",
    _is_count: "a non-negative integer",
    _is_side: f"an integer from 1 to {_MAX_SIDE:,}",
    _is_pair: f"a JSON list [height, width] of integers from 1 to {_MAX_SIDE:,}",
}


def _metadata_value(meta: dict[str, str], key: str, path: Path, valid) -> Any:
    """The JSON value of metadata entry ``key``, when ``valid`` accepts it; else a :class:`UserError`
    naming the file, the entry and what it should hold (the file is input, as any other)."""
    try:
        value = json.loads(meta[key])
    except (ValueError, RecursionError):  # not JSON at all, or nested past the parser's depth
        value = None
    if value is None or not valid(value):
        shown = meta[key] if len(meta[key]) <= 60 else meta[key][:60] + "..."
        raise UserError(f"{path}: its metadata {key}={shown!r} is not {_EXPECTED[valid]}; export the model again with `plaindet export`")
    return value

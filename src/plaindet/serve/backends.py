"""The models a server runs: which files, by which names, on which backend, and the one way every
backend turns an image into the model's input.

Both backends feed the model the same input: the image resized so its long side is the model's
``image_size`` and zero-padded at the bottom/right to a fixed square (``image_size`` rounded up to
the size divisor, as ``plaindet export`` fixes it). So an image's detections do not depend on which
other images share its batch, and PyTorch and ONNX Runtime see the same pixels. This module imports
no torch; the PyTorch backend imports it when a checkpoint is loaded.
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plaindet.detections import pad_batch, resize_long_side
from plaindet.errors import NotFound, UserError

log = logging.getLogger("plaindet.serve")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: its ``name`` in requests, its file, and the backend that runs it."""

    name: str
    path: Path
    backend: str  # "torch" or "onnx"


def parse_model_specs(items: list[str], backend: str = "auto") -> list[ModelSpec]:
    """``--weights`` values (``path`` or ``name=path``; the name defaults to the file's stem) as specs.

    Checks what can be checked without loading: names are unique and URL-safe, files exist, and the
    backend fits the file (``torch`` cannot run an ``.onnx`` file). Raises :class:`UserError`.
    """
    if not items:
        raise UserError("give at least one --weights FILE (.safetensors or .onnx)")
    specs: list[ModelSpec] = []
    for item in items:
        name, sep, path_text = item.partition("=")
        path = Path(path_text if sep else item)
        name = name if sep else (path.parent.name if path.name == "model.safetensors" else path.stem)
        if path.is_dir():
            path = path / "model.safetensors"
        if not _NAME.match(name):
            raise UserError(f"--weights {item!r}: model name {name!r} must be letters, digits, '.', '_' or '-' (give name=path)")
        if not path.is_file():
            raise NotFound(f"--weights {item!r}: {path} does not exist")
        if any(s.name == name for s in specs):
            raise UserError(f"two models are named {name!r}: give one of them another name, --weights NAME=PATH")
        is_onnx = path.suffix.lower() == ".onnx"
        if backend == "torch" and is_onnx:
            raise UserError(f"--weights {item!r}: an ONNX file runs on --backend onnx (or auto), not torch")
        specs.append(ModelSpec(name, path, "onnx" if is_onnx or backend == "onnx" else "torch"))
    return specs


@dataclass
class ServedModel:
    """A loaded model, as the server runs it.

    ``run``: ``uint8 (B, 3, H, W)`` with ``(H, W) = input_size`` -> ``boxes (B, k, 4)`` xyxy in input
    pixels, ``scores (B, k)`` high to low, ``labels (B, k)``, as numpy. ``batch_limit``: the largest
    batch ``run`` takes (an ONNX file exported with a fixed batch takes only that many; ``None``: any).
    """

    name: str
    backend: str
    model: str  # the registered variant, e.g. "plaindet-t"
    class_names: list[str]
    image_size: int
    input_size: tuple[int, int]
    max_detections: int
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
    batch_limit: int | None = None
    keep: list = field(default_factory=list)  # objects that must live as long as the model (a temporary folder)

    @property
    def family(self) -> str:
        """The model family: the registered name before its size (``plaindet-t`` -> ``plaindet``)."""
        return self.model.partition("-")[0] or "unknown"

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """``uint8 (H, W, 3)`` RGB -> the model input ``uint8 (3, *input_size)`` and the resized ``(h, w)``
        (what maps the boxes back to the image's pixels)."""
        resized = resize_long_side(image, self.image_size)
        return pad_batch([resized], *self.input_size)[0], resized.shape[:2]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "family": self.family,
            "backend": self.backend,
            "classes": list(self.class_names),
            "image_size": self.image_size,
            "input_size": list(self.input_size),
            "max_detections": self.max_detections,
        }


def load_served_model(spec: ModelSpec, *, threads: int = 0, device: str = "cpu") -> ServedModel:
    """Load ``spec`` on its backend. A checkpoint on the ``onnx`` backend is exported first, with a
    dynamic batch, into a temporary folder that lives as long as the returned model."""
    if spec.backend == "onnx" and spec.path.suffix.lower() == ".onnx":
        return _onnx_model(spec.name, spec.path, threads=threads)
    import torch

    import plaindet

    model = plaindet.load(spec.path, device=device).eval()
    if spec.backend == "torch":
        return _torch_model(spec.name, model, torch)
    from plaindet.export.onnx import export_onnx

    folder = tempfile.TemporaryDirectory(prefix=f"plaindet-serve-{spec.name}-")
    log.info("%s: exporting %s to ONNX for the onnx backend ...", spec.name, spec.path)
    onnx_path = export_onnx(model, Path(folder.name) / f"{spec.name}.onnx", dynamic_batch=True)
    served = _onnx_model(spec.name, onnx_path, threads=threads)
    served.keep.append(folder)
    return served


def _onnx_model(name: str, path: Path, *, threads: int) -> ServedModel:
    from plaindet.export.ort import OnnxDetector

    detector = OnnxDetector(path, threads=threads or None)
    fixed = detector.batch_size

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if fixed and len(batch) < fixed:  # a fixed-batch file: fill it with blank images
            batch = np.concatenate([batch, np.zeros((fixed - len(batch),) + batch.shape[1:], np.uint8)])
        return detector(batch)

    return ServedModel(
        name=name, backend="onnx", model=detector.model_name or "unknown", class_names=list(detector.class_names),
        image_size=detector.image_size, input_size=tuple(detector.input_size), max_detections=detector.max_detections or 0,
        run=run, batch_limit=fixed, keep=[detector],
    )  # fmt: skip


def _torch_model(name: str, model, torch) -> ServedModel:
    from plaindet.export.onnx import export_input_size

    device = next(model.parameters()).device
    side = export_input_size(model.config.image_size, model.size_divisor)

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.inference_mode():
            outputs = model.postprocess(model(torch.from_numpy(batch).to(device)))
        boxes, scores, labels = (t.cpu().numpy() for t in outputs)
        return boxes, scores, labels

    return ServedModel(
        name=name, backend="torch", model=model.config.name, class_names=list(model.config.class_names),
        image_size=model.config.image_size, input_size=(side, side), max_detections=model.config.max_detections,
        run=run, keep=[model],
    )  # fmt: skip

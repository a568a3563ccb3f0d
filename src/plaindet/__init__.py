"""plaindet: object detection with transformers that is easy to use, finetune and deploy.

The public surface: :func:`create_model`, :func:`list_models`, :func:`load`, :class:`Detector` (the
flagship, :class:`plaindet.models.plaindet.PlainDet`), :func:`merge_lora`, :class:`OnnxDetector`,
:func:`load_group` (detectors that share a frozen backbone, run with one backbone pass).
Heavy modules are imported on first use, so ``import plaindet`` stays fast (and
``plaindet.OnnxDetector`` never imports torch). No module of the package imports this one.
"""

from __future__ import annotations

import os
from pathlib import Path

from plaindet.version import __version__

__all__ = ["Detector", "OnnxDetector", "__version__", "create_model", "list_models", "load", "load_group", "merge_lora"]


def load(path: str | os.PathLike, device: str = "cpu"):
    """Load any model file plaindet writes, ready to ``predict``.

    - ``.onnx`` (from ``plaindet export``): an :class:`OnnxDetector` (ONNX Runtime; torch is not
      imported). ``device="cuda"`` asks for ONNX Runtime's CUDA provider first.
    - ``.safetensors`` (``model.save``, a training run's ``best``/``last``), or a folder holding
      ``model.safetensors``: the PyTorch model on ``device``
      (:func:`plaindet.models.factory.load_model`; no code is unpickled).
    """
    if Path(path).suffix.lower() == ".onnx":
        from plaindet.export.ort import OnnxDetector

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else None
        return OnnxDetector(path, providers=providers)
    from plaindet.models.factory import load_model

    return load_model(path, device=device)


def load_group(paths, device: str = "cpu"):
    """Detectors finetuned from the same frozen backbone, as one predictor that runs the backbone once
    per image and each detector's neck and head on its features
    (:func:`plaindet.models.group.load_group`; ``group.predict(images)`` returns each one's detections).
    Detectors with different backbones are refused, naming the two checkpoints."""
    from plaindet.models.group import load_group as _load_group

    return _load_group(paths, device=device)


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from plaindet.models import factory

        return getattr(factory, name)
    if name == "Detector":
        from plaindet.models.plaindet import PlainDet

        return PlainDet
    if name == "merge_lora":
        from plaindet.models.lora import merge_lora

        return merge_lora
    if name == "OnnxDetector":
        from plaindet.export.ort import OnnxDetector

        return OnnxDetector
    raise AttributeError(f"module 'plaindet' has no attribute {name!r}")

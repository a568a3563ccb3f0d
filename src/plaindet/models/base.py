"""The contract every registered plaindet model keeps, so one engine, API, CLI and exporter serve all.

A model is an ``nn.Module`` subclass of :class:`DetectionModel` whose config is a dataclass with at
least ``name`` (the registered variant), ``num_classes``, ``class_names``, ``category_ids``,
``image_size`` and ``max_detections``, and a ``build(backbone_weights=None)`` method. The model
provides:

- ``forward(images, targets=None)``: ``(B, 3, H, W)`` images, ``uint8`` or float in [0, 255], ``H``
  and ``W`` multiples of ``size_divisor``; normalization is inside the model. Returns a dict of raw
  tensors. The engine passes the training ``targets`` (see ``criterion``) in training mode, for the
  models that need them in the forward pass (teacher forcing); others ignore them.
- ``postprocess(outputs, max_detections=None)``: ``boxes (B, k, 4)`` xyxy in input pixels,
  ``scores (B, k)`` sorted high to low, ``labels (B, k)`` contiguous class indices. Pure tensor ops,
  so the exporter can trace ``postprocess(forward(x))`` into one graph.
- ``criterion()``: a new loss module; ``criterion(outputs, targets)`` returns a dict of scalar
  losses whose ``"loss"`` is what training minimizes. ``targets`` is, per image, a dict with
  ``boxes (N, 4)`` xyxy input pixels, ``labels (N,)`` int64 and ``size`` ``(h, w)``.
- ``no_weight_decay()``: full parameter names kept free of weight decay beyond the 1-d rule
  (position tables, embeddings). Parameters named ``backbone.*`` (not LoRA adapters) learn at the
  engine's ``backbone_lr_mult``.

:class:`DetectionModel` then gives ``predict`` and ``save``; :func:`model_from_state` rebuilds any
saved model from its checkpoint alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

CHECKPOINT_FORMAT = "plaindet-detector"


class DetectionModel(nn.Module):
    """Base of all registered detectors: shared ``predict``, ``save`` and loading. See the module doc."""

    config: Any

    @property
    def size_divisor(self) -> int:
        raise NotImplementedError

    def postprocess(self, outputs: dict[str, Tensor], max_detections: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def criterion(self) -> nn.Module:
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        return set()

    def predict(self, images: Any, threshold: float = 0.3, image_size: int | None = None):
        """Detect objects in one image or a list of images.

        ``images``: a path, PIL image, ``uint8`` ``(H, W, 3)`` RGB array, or tensor ``(3, H, W)``
        (``uint8``, or float in [0, 1]); or a list of those (a ``(B, 3, H, W)`` tensor is a list).
        Each is resized so its long side is ``image_size`` (default: the config's), keeping the
        aspect ratio. Returns :class:`~plaindet.predict.Detections` (a list for list input) in
        original-image pixels.
        """
        from plaindet.predict import predict_images

        return predict_images(self, images, threshold=threshold, image_size=image_size or self.config.image_size)

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights and config to one ``.safetensors`` file, atomically (temp file, fsync, rename)."""
        from plaindet import __version__
        from plaindet.checkpoint import save_safetensors
        from plaindet.config import to_dict

        meta = {"format": CHECKPOINT_FORMAT, "plaindet_version": __version__, "config": json.dumps(to_dict(self.config))}
        return save_safetensors(self.state_dict(), path, meta)

    @classmethod
    def from_state(cls, config: Any, state: dict[str, Tensor]) -> "DetectionModel":
        """Rebuild from a config object and a full state dict (strict), in eval mode."""
        model = cls(config)
        _load_strict(model, state)
        return model.eval()


def _load_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match its config: missing {sorted(missing)}, unexpected {sorted(unexpected)}")


def model_from_state(config: dict, state: dict[str, Tensor]) -> DetectionModel:
    """Rebuild any registered model from a checkpoint's config dict (its ``name`` picks the variant's
    config class) and weights."""
    from plaindet.config import from_dict
    from plaindet.models.registry import model_config

    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError("the checkpoint's config has no model name")
    cfg = from_dict(type(model_config(config["name"])), config)
    return cfg.model_class().from_state(cfg, state)

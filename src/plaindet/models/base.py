"""The contract every registered plaindet model keeps, so one engine, API, CLI and exporter serve all.

A model's config is a dataclass derived from :class:`DetectionConfig` (``name``: the registered
variant, ``num_classes``, ``class_names``, ``category_ids``, ``image_size``, ``max_detections``)
with a ``build(backbone_weights=None)`` method. The model is an ``nn.Module`` subclass of
:class:`DetectionModel` and provides:

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
  engine's ``backbone_lr_mult``; unset, a backbone built from random weights learns at the model's
  ``scratch_backbone_lr_mult`` times the rate (0.1 here; a family whose backbone needs another
  rate from scratch sets its own, with the measurement behind it).

:class:`DetectionModel` then gives ``predict`` and ``save``; :func:`plaindet.models.factory.load_model`
rebuilds any saved model from its checkpoint alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.detections import Detections, pad_batch, predict_in_batches
from plaindet.version import __version__

CHECKPOINT_FORMAT = "plaindet-detector"


@dataclass
class DetectionConfig:
    """What every model's config has. ``class_names`` and ``category_ids`` (the dataset's own id of
    each class) default to ``class_0, ...`` and ``0, 1, ...``; their counts must equal
    ``num_classes``. ``image_size``: the long side images are resized to for prediction.
    ``max_detections``: the top-k the postprocess keeps per image."""

    name: str = ""
    num_classes: int = 80
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    image_size: int = 640
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {self.num_classes}")
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if not self.category_ids:
            self.category_ids = list(range(self.num_classes))
        if len(self.class_names) != self.num_classes or len(self.category_ids) != self.num_classes:
            raise ValueError(
                f"num_classes is {self.num_classes} but {len(self.class_names)} class names and "
                f"{len(self.category_ids)} category ids were given"
            )

    def model_class(self) -> type[DetectionModel]:
        raise NotImplementedError

    def build(self, backbone_weights: Any = None) -> DetectionModel:
        """A new model; ``backbone_weights`` (see the family's config) initializes its backbone."""
        raise NotImplementedError


class DetectionModel(nn.Module):
    """Base of all registered detectors: shared ``predict``, ``save`` and loading. See the module doc."""

    config: Any
    scratch_backbone_lr_mult: float = 0.1

    @property
    def class_names(self) -> list[str]:
        """The class names, by contiguous class index (as :class:`plaindet.OnnxDetector` has them)."""
        return self.config.class_names

    @property
    def category_ids(self) -> list[int]:
        """The dataset's own category id of each class (what COCO results are written with)."""
        return self.config.category_ids

    @property
    def size_divisor(self) -> int:
        raise NotImplementedError

    def check_input(self, images: Tensor) -> None:
        """Raise ``ValueError`` unless the input's height and width are multiples of :attr:`size_divisor`."""
        h, w = images.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"input size {h}x{w} must be a multiple of {self.size_divisor}; pad the images first")

    def postprocess(self, outputs: dict[str, Tensor], max_detections: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def criterion(self) -> nn.Module:
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        return set()

    @torch.no_grad()
    def predict(self, images: Any, threshold: float = 0.3, image_size: int | None = None, batch_size: int = 8) -> Detections | list[Detections]:
        """Detect objects in one image or a list of images.

        ``images``: a path, PIL image, ``uint8`` ``(H, W, 3)`` RGB array, or tensor ``(3, H, W)``
        (``uint8``, or float in [0, 1]); or a list of those (a ``(B, 3, H, W)`` tensor is a list).
        Each is resized so its long side is ``image_size`` (default: the config's), keeping the
        aspect ratio, and ``batch_size`` at a time are padded at the bottom/right to a multiple of
        :attr:`size_divisor` and run in fp32. Returns :class:`~plaindet.detections.Detections` (a
        list for list input) in original-image pixels.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        div = self.size_divisor

        def run(resized: list) -> tuple:
            hmax = max(r.shape[0] for r in resized)
            wmax = max(r.shape[1] for r in resized)
            batch = torch.from_numpy(pad_batch(resized, -(-hmax // div) * div, -(-wmax // div) * div))
            return tuple(t.cpu().numpy() for t in self.postprocess(self(batch.to(device))))

        try:
            return predict_in_batches(
                images,
                run,
                image_size=image_size or self.config.image_size,
                batch_size=batch_size,
                threshold=threshold,
                class_names=self.config.class_names,
            )
        finally:
            self.train(was_training)

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights and config to one ``.safetensors`` file, atomically (temp file, fsync, rename)."""
        from plaindet.config import to_dict
        from plaindet.weights import save_safetensors

        meta = {"format": CHECKPOINT_FORMAT, "plaindet_version": __version__, "config": json.dumps(to_dict(self.config))}
        return save_safetensors(self.state_dict(), path, meta)

    @classmethod
    def from_state(cls, config: Any, state: dict[str, Tensor]) -> DetectionModel:
        """Rebuild from a config object and a full state dict (strict), in eval mode."""
        model = cls(config)
        load_strict(model, state)
        return model.eval()


def load_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """``load_state_dict`` that names every missing and unexpected key in one ``ValueError``."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match its config: missing {sorted(missing)}, unexpected {sorted(unexpected)}")

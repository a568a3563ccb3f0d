"""Many detectors, one backbone pass: :func:`load_group` and :class:`DetectorGroup`.

Detectors finetuned from the same frozen backbone (a trained neck and head, or LoRA on the neck)
differ only after it, so a group runs the backbone once per image and each detector's neck and head
on its features: N custom detectors for about the cost of one backbone pass plus N necks and heads.
Every detector's detections are exactly what its own ``predict`` gives (the same operations on the
same features; equal within float rounding).

A group is only formed from detectors whose backbones are identical: the same backbone settings and
the same weights, compared by the SHA-256 each training checkpoint records (see
:mod:`plaindet.engine.backbone_store`), or computed from the weights for files that record none
(``model.save``). LoRA adapters on a neck stay as they are (merged only for ONNX export); adapters
*on the backbone* make backbones differ (compared merged), so such detectors are refused, as are families that don't split into backbone features and
a decoder (``backbone_features`` / ``decode``; plaindet does).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.errors import CheckpointError

__all__ = ["DetectorGroup", "backbone_digest", "load_group"]


def backbone_digest(model: nn.Module, path: str | os.PathLike | None = None) -> str:
    """SHA-256 of ``model``'s deployed backbone: the one recorded in the training checkpoint at
    ``path`` when the backbone has no adapters (it is then the frozen backbone that record names),
    else computed from the weights (LoRA merged), by the names and rule of
    :func:`plaindet.engine.backbone_store.frozen_backbone`."""
    from plaindet.engine.backbone_store import BackboneRecord
    from plaindet.models.lora import adapter_names, base_name, merge_lora
    from plaindet.weights import read_metadata, state_digest

    if path is not None and not adapter_names(model.backbone):
        meta = read_metadata(path) or {}
        record = BackboneRecord.from_header(meta, path)
        if record is not None:
            return record.sha256
    if adapter_names(model.backbone):
        import copy

        model = merge_lora(copy.deepcopy(model))
    return state_digest({base_name(k): v for k, v in model.backbone.state_dict().items()})


class DetectorGroup(nn.Module):
    """Detectors that share one backbone: ``forward(images)`` runs it once and every detector's
    :meth:`decode` and ``postprocess`` on its features.

    ``forward(images)``: ``images (B, 3, H, W)`` uint8 (or float in [0, 255]), ``H`` and ``W``
    multiples of :attr:`size_divisor`. Returns one ``(boxes (B, k, 4) xyxy input pixels, scores (B, k),
    labels (B, k))`` per detector, in the order given (its own ``max_detections`` as ``k``): the
    graph :func:`plaindet.export.onnx.export_group_onnx` writes.

    ``models`` must share their backbone weights (:func:`load_group` checks; this class trusts it):
    the first detector's backbone is used for all, and the others' are dropped.
    """

    def __init__(self, models: list[nn.Module], names: list[str] | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("a group needs at least one detector")
        for m in models[1:]:
            m.backbone = models[0].backbone  # one module: its weights are held once
        self.members = nn.ModuleList(models)
        self.names = list(names) if names is not None else [m.config.name for m in models]

    @property
    def size_divisor(self) -> int:
        """What every member's input must be a multiple of (the least common multiple of theirs)."""
        return math.lcm(*(m.size_divisor for m in self.members))

    @property
    def class_names(self) -> list[list[str]]:
        return [m.class_names for m in self.members]

    def forward(self, images: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        features = self.members[0].backbone_features(images)
        return [m.postprocess(m.decode(features)) for m in self.members]

    @torch.no_grad()
    def predict(self, images: Any, threshold: float = 0.3, image_size: int | None = None, batch_size: int = 8) -> list:
        """Every detector's detections in ``images``, as each one's own
        :meth:`~plaindet.models.base.DetectionModel.predict` gives them (same arguments), in the
        group's order: a list with one entry per detector (a :class:`~plaindet.detections.Detections`,
        or a list of them for list input). ``image_size`` defaults to the members' common one (a
        group of detectors with different image sizes needs it given)."""
        from plaindet.detections import pad_batch, predict_many_in_batches

        sizes = {m.config.image_size for m in self.members}
        if image_size is None and len(sizes) > 1:
            raise ValueError(f"the group's detectors have different image sizes ({sorted(sizes)}); pass image_size=")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        div = self.size_divisor

        def run(resized: list) -> list:
            hmax, wmax = max(r.shape[0] for r in resized), max(r.shape[1] for r in resized)
            batch = torch.from_numpy(pad_batch(resized, -(-hmax // div) * div, -(-wmax // div) * div)).to(device)
            return [tuple(t.cpu().numpy() for t in out) for out in self(batch)]

        try:
            return predict_many_in_batches(
                images, run, image_size=image_size or sizes.pop(), batch_size=batch_size, threshold=threshold, class_names=self.class_names
            )
        finally:
            self.train(was_training)


def load_group(paths: list[str | os.PathLike], device: str = "cpu") -> DetectorGroup:
    """Load detectors that were finetuned from the same frozen backbone as one :class:`DetectorGroup`.

    ``paths``: files :func:`plaindet.load` reads (``.safetensors``). Raises
    :class:`~plaindet.errors.CheckpointError` naming the two checkpoints when their backbones differ
    (weights or settings), and when a detector can't share its backbone pass (another family).
    """
    from plaindet.config import to_dict
    from plaindet.models.factory import load_model

    if not paths:
        raise ValueError("load_group needs at least one checkpoint")
    models, digests = [], []
    for path in paths:
        model = load_model(path)
        if not (hasattr(model, "backbone_features") and hasattr(model, "decode")):
            raise CheckpointError(f"{path}: a {model.config.name} can't share a backbone pass (only models with backbone_features/decode, such as plaindet, can)")
        digests.append(backbone_digest(model, path))
        models.append(model)  # adapters (on the necks) stay unmerged: each detector computes as its own predict does
    first = Path(paths[0])
    for path, model, digest in zip(paths[1:], models[1:], digests[1:]):
        theirs, ours = to_dict(models[0].config.backbone), to_dict(model.config.backbone)
        if digest != digests[0] or theirs != ours or type(model) is not type(models[0]):
            what = f"SHA-256 {digests[0][:12]}... vs {digest[:12]}..." if digest != digests[0] else "settings " + ", ".join(
                f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)
            )
            raise CheckpointError(
                f"{first} and {path} have different backbones ({what}); a group runs one backbone for all its detectors, so they "
                "must be finetuned from the same frozen backbone"
            )
    return DetectorGroup([m.eval() for m in models], names=[str(p) for p in paths]).to(device).eval()

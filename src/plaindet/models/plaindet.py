"""The flagship detector, plaindet: CLIP ViT backbone -> simple feature pyramid -> dense one-to-one head.

A plain ViT (:mod:`~plaindet.models.vit`, window attention for large inputs), ViTDet's simple feature
pyramid of Mix-FFN blocks (:mod:`~plaindet.models.neck`), and a dense head (:mod:`~plaindet.models.head`)
trained with OneNet's one-to-one assignment (:mod:`~plaindet.models.one_to_one`), so inference is a
top-k with no NMS. With pretrained backbone weights the backbone is frozen; the neck and head train,
and LoRA (:mod:`~plaindet.models.lora`) adapts the backbone and/or the neck.

:class:`PlainDet` (``plaindet.Detector`` for short) is both the ``nn.Module`` (``forward`` returns raw
tensors) and the user-facing object (``predict``, ``save``). The variants, one design at three
sizes of the ViT, are registered at the bottom of this file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.models.base import DetectionConfig, DetectionModel, load_strict
from plaindet.models.head import DenseHead
from plaindet.models.layers import CLIP_MEAN, CLIP_STD, Normalize
from plaindet.models.lora import LoraConfig, add_lora
from plaindet.models.neck import SimpleFeaturePyramid
from plaindet.models.registry import register_model
from plaindet.models.vit import ViT, ViTConfig, clip_config

log = logging.getLogger("plaindet")

__all__ = ["PlainDet", "PlainDetConfig", "topk_detections"]


@dataclass
class PlainDetConfig(DetectionConfig):
    """Everything needed to rebuild a plaindet detector; saved inside every checkpoint.

    ``backbone_trainable`` is resolved when the model is built: ``False`` once pretrained backbone
    weights are loaded (a pretrained backbone is never fully trained again; LoRA adapts it), ``True``
    for a backbone built from random weights, whose frozen features would be of no use.
    ``quality_targets``: train the class scores toward each match's IoU with the varifocal loss
    (see :class:`~plaindet.models.one_to_one.OneToOneCriterion`) instead of toward 1.
    """

    name: str = "plaindet"
    backbone: ViTConfig = field(default_factory=ViTConfig)
    backbone_trainable: bool = True
    neck_channels: int = 256
    neck_blocks: int = 1
    strides: tuple[int, ...] = (8, 16, 32)
    head_depth: int = 2
    aux_head: bool = True
    quality_targets: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)

    def model_class(self) -> type[PlainDet]:
        return PlainDet

    def build(self, backbone_weights: Any = None) -> PlainDet:
        """A new detector; with ``backbone_weights`` (CLIP image-encoder weights in any layout
        :mod:`~plaindet.models.vit_weights` reads) the backbone is loaded and frozen."""
        model = PlainDet(self)
        if backbone_weights is not None:
            from plaindet.models.vit_weights import load_vit_weights

            load_vit_weights(model.backbone, backbone_weights)
            model.set_backbone_trainable(False)
        elif self.backbone_trainable:
            log.warning(
                "%s: built without backbone weights, so the backbone trains too (frozen random features are "
                "of no use); pass backbone_weights= to load CLIP weights and freeze it",
                self.name,
            )
        if self.lora.rank > 0:
            add_lora(model, self.lora)
        return model


class PlainDet(DetectionModel):
    """ViT backbone, simple feature pyramid, dense one-to-one head (plus a training-only auxiliary head).

    ``forward(images)`` takes ``(B, 3, H, W)`` images, ``uint8`` in [0, 255] or float in [0, 255],
    ``H`` and ``W`` multiples of the largest stride (32); normalization is part of the model so a
    deployed model needs no preprocessing beyond resizing. It returns the head's dict (see
    :class:`~plaindet.models.head.DenseHead`): ``logits (B, L, K)``, ``boxes (B, L, 4)`` xyxy input
    pixels, ``centers``, ``strides``; in training mode also ``aux``, the auxiliary head's dict.
    """

    def __init__(self, config: PlainDetConfig) -> None:
        super().__init__()
        self.config = config
        bb = config.backbone
        self.normalize = Normalize(CLIP_MEAN, CLIP_STD)
        self.backbone = ViT(bb)
        self.neck = SimpleFeaturePyramid(bb.width, bb.patch_size, config.strides, config.neck_channels, config.neck_blocks)
        self.head = DenseHead(config.neck_channels, config.num_classes, config.strides, config.head_depth)
        self.aux_head = DenseHead(config.neck_channels, config.num_classes, config.strides, config.head_depth) if config.aux_head else None
        self.set_backbone_trainable(config.backbone_trainable)

    @property
    def size_divisor(self) -> int:
        return max(max(self.config.strides), self.config.backbone.patch_size)

    def set_backbone_trainable(self, trainable: bool) -> None:
        self.config.backbone_trainable = trainable
        for name, p in self.backbone.named_parameters():
            # LoRA adapters (peft's lora_A/lora_B) train either way: they are how a frozen backbone adapts.
            if ".lora_" not in name:
                p.requires_grad_(trainable)

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict[str, Any]:
        return self.decode(self.backbone_features(images))

    def backbone_features(self, images: Tensor) -> Tensor:
        """The backbone's output for ``images`` (as :meth:`forward` takes them): ``(B, width, H / patch,
        W / patch)``. With :meth:`decode` it splits :meth:`forward` in two, so detectors that share a
        frozen backbone can share its pass (:class:`plaindet.models.group.DetectorGroup`)."""
        self.check_input(images)
        return self.backbone(self.normalize(images))

    def decode(self, features: Tensor) -> dict[str, Any]:
        """Neck and head on :meth:`backbone_features`' output; returns what :meth:`forward` returns."""
        pyramid = self.neck(features)
        out = self.head(pyramid)
        if self.training and self.aux_head is not None:
            out["aux"] = self.aux_head(pyramid)
        return out

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Tensor], max_detections: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k over all locations and classes; no NMS (the one-to-one head makes none necessary).

        Returns ``boxes (B, k, 4)`` xyxy input pixels, ``scores (B, k)`` sorted high to low and
        ``labels (B, k)``, with ``k = min(max_detections, L * K)``.
        """
        return topk_detections(outputs["logits"], outputs["boxes"], max_detections or self.config.max_detections)

    def criterion(self) -> nn.Module:
        from plaindet.models.one_to_one import OneToOneCriterion

        return OneToOneCriterion(self.config.num_classes, quality_targets=self.config.quality_targets)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    @classmethod
    def from_state(cls, config: PlainDetConfig, state: dict[str, Tensor]) -> PlainDet:
        model = cls(config)
        if config.lora.rank > 0:
            add_lora(model, config.lora)
        load_strict(model, state)
        model.set_backbone_trainable(config.backbone_trainable)
        return model.eval()


def topk_detections(logits: Tensor, boxes: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``logits (B, L, K)``, ``boxes (B, L, 4)`` -> top-``k`` ``boxes (B, k, 4)``, ``scores (B, k)``, ``labels (B, k)``."""
    b, n, num_classes = logits.shape
    scores = logits.float().sigmoid().flatten(1)
    k = min(k, scores.shape[1])
    top_scores, top_idx = scores.topk(k, dim=1)
    labels = top_idx % num_classes
    loc = torch.div(top_idx, num_classes, rounding_mode="floor")
    top_boxes = boxes.float().gather(1, loc.unsqueeze(-1).expand(b, k, 4))
    return top_boxes, top_scores, labels


# ----------------------------------------------------------------------------------------------------------------------
# Variants


@register_model
def plaindet_b() -> PlainDetConfig:
    """ViT-B/16 (CLIP ViT-B/16 dims): the flagship, about 91M parameters."""
    return PlainDetConfig(name="plaindet-b", backbone=clip_config(768, 12, 12), neck_channels=256)


@register_model
def plaindet_s() -> PlainDetConfig:
    """ViT-S/16 dims, for CPU work."""
    return PlainDetConfig(name="plaindet-s", backbone=clip_config(384, 12, 6), neck_channels=192)


@register_model
def plaindet_t() -> PlainDetConfig:
    """ViT-Ti/16 dims, for CPU work and tests."""
    return PlainDetConfig(name="plaindet-t", backbone=clip_config(192, 12, 3), neck_channels=128)

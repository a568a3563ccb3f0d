"""The flagship detector: CLIP ViT backbone -> simple feature pyramid -> dense one-to-one head.

``Detector`` is both the ``nn.Module`` (``forward`` returns raw tensors) and the user-facing object
(``predict``, ``save``); :func:`plaindet.load` rebuilds one from a single ``.safetensors`` file that
holds its weights and its JSON config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.models.base import DetectionModel, _load_strict
from plaindet.models.head import DenseHead
from plaindet.models.neck import SimpleFeaturePyramid
from plaindet.models.vit import CLIP_MEAN, CLIP_STD, ViT

log = logging.getLogger("plaindet")


@dataclass
class BackboneConfig:
    """The ViT's shape. ``pretrain_size`` is the image size its position embeddings were trained at."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    patch_size: int = 16
    pretrain_size: int = 224
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_blocks: tuple[int, ...] | None = None
    act: str = "quick_gelu"
    drop_path: float = 0.0


@dataclass
class LoraConfig:
    """LoRA adapters (``rank`` 0 means none). ``targets``: ``neck``, ``backbone`` or ``both``."""

    rank: int = 0
    alpha: float | None = None
    targets: str = "neck"
    dropout: float = 0.0


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector; saved inside every checkpoint.

    ``backbone_trainable`` is resolved when the model is built: ``False`` once pretrained backbone
    weights are loaded (a pretrained backbone is never fully trained again; LoRA adapts it), ``True``
    for a backbone built from random weights, whose frozen features would be of no use.
    ``quality_targets``: train the class scores toward each match's IoU with the varifocal loss
    (see :class:`~plaindet.models.criterion.OneToOneCriterion`) instead of toward 1.
    """

    name: str = "plaindet"
    num_classes: int = 80
    class_names: list[str] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    backbone_trainable: bool = True
    neck_channels: int = 256
    neck_blocks: int = 1
    strides: tuple[int, ...] = (8, 16, 32)
    head_depth: int = 2
    aux_head: bool = True
    quality_targets: bool = False
    image_size: int = 640
    max_detections: int = 100
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        if not self.class_names:
            self.class_names = [f"class_{i}" for i in range(self.num_classes)]
        if not self.category_ids:
            self.category_ids = list(range(self.num_classes))
        if len(self.class_names) != self.num_classes or len(self.category_ids) != self.num_classes:
            raise ValueError(
                f"num_classes is {self.num_classes} but {len(self.class_names)} class names and "
                f"{len(self.category_ids)} category ids were given"
            )

    def model_class(self) -> type:
        return Detector

    def build(self, backbone_weights: Any = None) -> "Detector":
        return build_detector(self, backbone_weights=backbone_weights)


class Detector(DetectionModel):
    """ViT backbone, simple feature pyramid, dense one-to-one head (plus a training-only auxiliary head).

    ``forward(images)`` takes ``(B, 3, H, W)`` images, ``uint8`` in [0, 255] or float in [0, 255],
    ``H`` and ``W`` multiples of the largest stride (32); normalization is part of the model so a
    deployed model needs no preprocessing beyond resizing. It returns the head's dict (see
    :class:`~plaindet.models.head.DenseHead`): ``logits (B, L, K)``, ``boxes (B, L, 4)`` xyxy input
    pixels, ``centers``, ``strides``; in training mode also ``aux``, the auxiliary head's dict.
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        bb = config.backbone
        self.backbone = ViT(
            img_size=bb.pretrain_size,
            patch_size=bb.patch_size,
            width=bb.width,
            depth=bb.depth,
            heads=bb.heads,
            mlp_ratio=bb.mlp_ratio,
            window_size=bb.window_size,
            global_blocks=bb.global_blocks,
            act=bb.act,
            drop_path=bb.drop_path,
        )
        self.neck = SimpleFeaturePyramid(bb.width, bb.patch_size, config.strides, config.neck_channels, config.neck_blocks)
        self.head = DenseHead(config.neck_channels, config.num_classes, config.strides, config.head_depth)
        self.aux_head = DenseHead(config.neck_channels, config.num_classes, config.strides, config.head_depth) if config.aux_head else None
        self.register_buffer("pixel_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255, persistent=False)
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
        h, w = images.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"input size {h}x{w} must be a multiple of {self.size_divisor}; pad the images first")
        x = (images.float() - self.pixel_mean) / self.pixel_std
        features = self.neck(self.backbone(x))
        out = self.head(features)
        if self.training and self.aux_head is not None:
            out["aux"] = self.aux_head(features)
        return out

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Tensor], max_detections: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k over all locations and classes; no NMS (the one-to-one head makes none necessary).

        Returns ``boxes (B, k, 4)`` xyxy input pixels, ``scores (B, k)`` sorted high to low and
        ``labels (B, k)``, with ``k = min(max_detections, L * K)``.
        """
        return topk_detections(outputs["logits"], outputs["boxes"], max_detections or self.config.max_detections)

    def criterion(self) -> nn.Module:
        from plaindet.models.criterion import OneToOneCriterion

        return OneToOneCriterion(self.config.num_classes, quality_targets=self.config.quality_targets)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()}

    @classmethod
    def from_state(cls, config: "DetectorConfig", state: dict[str, Tensor]) -> "Detector":
        model = cls(config)
        if config.lora.rank > 0:
            from plaindet.models.lora import add_lora

            model = add_lora(model, config.lora)
        _load_strict(model, state)
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


def build_detector(config: DetectorConfig, backbone_weights: Any = None) -> Detector:
    """Build a detector; with ``backbone_weights`` the CLIP weights are loaded and the backbone frozen."""
    model = Detector(config)
    if backbone_weights is not None:
        from plaindet.models.clip_weights import load_clip_weights

        load_clip_weights(model.backbone, backbone_weights)
        model.set_backbone_trainable(False)
    elif config.backbone_trainable:
        log.warning(
            "%s: built without backbone weights, so the backbone trains too (frozen random features are "
            "of no use); pass backbone_weights= to load CLIP weights and freeze it",
            config.name,
        )
    if config.lora.rank > 0:
        from plaindet.models.lora import add_lora

        model = add_lora(model, config.lora)
    return model

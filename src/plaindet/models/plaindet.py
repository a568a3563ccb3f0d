"""The plaindet variants: one design at three sizes of the CLIP ViT backbone."""

from __future__ import annotations

from plaindet.models.detector import BackboneConfig, DetectorConfig
from plaindet.models.registry import register_model


@register_model
def plaindet_b() -> DetectorConfig:
    """ViT-B/16 (CLIP ViT-B/16 dims): the flagship, about 91M parameters."""
    return DetectorConfig(name="plaindet-b", backbone=BackboneConfig(width=768, depth=12, heads=12), neck_channels=256)


@register_model
def plaindet_s() -> DetectorConfig:
    """ViT-S/16 dims, for CPU work."""
    return DetectorConfig(name="plaindet-s", backbone=BackboneConfig(width=384, depth=12, heads=6), neck_channels=192)


@register_model
def plaindet_t() -> DetectorConfig:
    """ViT-Ti/16 dims, for CPU work and tests."""
    return DetectorConfig(name="plaindet-t", backbone=BackboneConfig(width=192, depth=12, heads=3), neck_channels=128)

"""DePerceiver: DETR with its transformer encoder replaced by a Perceiver IO (Jaegle et al. 2021).

DETR's encoder is self-attention over every feature-map pixel, so its cost grows with the square of
the number of pixels, which keeps it at stride 32. Here a fixed array of ``num_latents`` learned
latents cross-attends to the pixels instead (cost linear in the number of pixels), is refined by
latent self-attention blocks (cost independent of the image), and the object queries then decode
against the latents with DETR's decoder, heads, auxiliary losses, criterion and matcher.

Linear cost lets the model read finer features: ``downsample_factor`` (4, 8, 16 or 32) picks the
backbone stage it reads (the ResNet's ``layer1``..``layer4``, or BiT's ``stages.0``..``stages.3``
with ``backbone="bit"``); with ``multi_scale`` it also reads every coarser
stage, all pixels of all scales concatenated into one sequence with a learned per-scale embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from plaindet.models.detr import SetDetector, SetDetectorConfig, build_backbone, sine_position_embedding, xavier_init
from plaindet.errors import ConfigError
from plaindet.models.layers import Attention, Mlp
from plaindet.models.registry import register_model

STRIDES = (4, 8, 16, 32)  # of the backbone's stages (ResNet layer1..layer4, BiT stages.0..3)


@dataclass
class DePerceiverConfig(SetDetectorConfig):
    """A DePerceiver (see :class:`~plaindet.models.detr.SetDetectorConfig` for the shared fields).

    ``downsample_factor``: the stride of the features the latents read (4, 8, 16 or 32);
    ``multi_scale``: also read the coarser strides up to 32. ``num_latents`` latents of width
    ``hidden_dim`` cross-attend to the pixels once, then go through ``latent_layers``
    self-attention blocks.
    """

    name: str = "deperceiver-r50"
    downsample_factor: int = 32
    multi_scale: bool = False
    num_latents: int = 256
    latent_layers: int = 6

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.downsample_factor not in STRIDES:
            raise ValueError(f"downsample_factor must be one of {STRIDES}, got {self.downsample_factor}")
        if self.spatial_prior:
            raise ConfigError("spatial_prior needs a memory of known positions; DePerceiver's latents have none")

    def strides(self) -> tuple[int, ...]:
        """The feature strides read, finest first."""
        return tuple(s for s in STRIDES if s == self.downsample_factor or (self.multi_scale and s > self.downsample_factor))

    def model_class(self) -> type[DePerceiver]:
        return DePerceiver


class CrossAttentionBlock(nn.Module):
    """Pre-norm latent-to-input cross-attention with a feed-forward (Perceiver's encoder block).

    ``latents (B, N, D)``, ``inputs (B, S, D)``, ``pos (1 or B, S, D)`` (added to the keys) -> ``(B, N, D)``.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_inputs = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, ffn_dim, "relu", dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, latents: Tensor, inputs: Tensor, pos: Tensor) -> Tensor:
        x = self.norm_inputs(inputs)
        latents = latents + self.dropout(self.attn(self.norm_latents(latents), x + pos, x))
        return latents + self.dropout(self.mlp(self.norm_mlp(latents)))


class SelfAttentionBlock(nn.Module):
    """Pre-norm latent self-attention with a feed-forward. ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, ffn_dim, "relu", dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm_attn(x)
        x = x + self.dropout(self.attn(y, y, y))
        return x + self.dropout(self.mlp(self.norm_mlp(x)))


class PerceiverEncoder(nn.Module):
    """Learned latents read the inputs once by cross-attention, then refine by self-attention.

    ``inputs (B, S, D)``, ``pos (1 or B, S, D)`` -> latents ``(B, num_latents, D)`` (after a final
    LayerNorm). Cost: ``O(S * num_latents)`` for the read, ``O(num_latents^2)`` per latent block.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, num_latents: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(num_latents, dim))
        self.cross = CrossAttentionBlock(dim, heads, ffn_dim, dropout)
        self.layers = nn.ModuleList(SelfAttentionBlock(dim, heads, ffn_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        xavier_init(self)
        nn.init.trunc_normal_(self.latents, std=0.02)

    def forward(self, inputs: Tensor, pos: Tensor) -> Tensor:
        latents = self.latents[None].expand(inputs.shape[0], -1, -1)
        latents = self.cross(latents, inputs, pos)
        for layer in self.layers:
            latents = layer(latents)
        return self.norm(latents)


class DePerceiver(SetDetector):
    """ResNet (or BiT) -> per-scale 1x1 projections + sine positions (+ scale embeddings) -> Perceiver IO
    latents -> DETR decoder (queries attend to the latents) -> class/box heads.

    See :class:`~plaindet.models.detr.SetDetector` for the forward contract.
    """

    def __init__(self, config: DePerceiverConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_dim
        strides = config.strides()
        # Build the backbone only as deep as the coarsest stride read.
        self.backbone = build_backbone(config, num_stages=STRIDES.index(strides[-1]) + 1)
        self._stage_index = [STRIDES.index(s) for s in strides]
        self.input_proj = nn.ModuleList(nn.Conv2d(self.backbone.channels[i], d, kernel_size=1) for i in self._stage_index)
        # Sine positions are normalized to the image, so they agree across scales; this tells them apart.
        self.scale_embed = nn.Parameter(torch.zeros(len(strides), d)) if len(strides) > 1 else None
        self.encoder = PerceiverEncoder(d, config.heads, config.ffn_dim, config.num_latents, config.latent_layers, config.dropout)
        self._build_decoder()
        self._init_decoder()
        if self.scale_embed is not None:
            nn.init.normal_(self.scale_embed, std=0.02)
        self._finish_init()

    def encode(self, features: list[Tensor]) -> tuple[Tensor, None]:
        tokens, positions = [], []
        for level, (i, proj) in enumerate(zip(self._stage_index, self.input_proj)):
            x = proj(features[i])  # (B, D, h, w)
            h, w = x.shape[-2:]
            pos = sine_position_embedding(h, w, x.shape[1], x.device).to(x.dtype)
            if self.scale_embed is not None:
                pos = pos + self.scale_embed[level]
            tokens.append(x.flatten(2).transpose(1, 2))
            positions.append(pos)
        inputs = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
        pos = (torch.cat(positions) if len(positions) > 1 else positions[0])[None]
        # The latents carry no position: the queries attend to them by content alone.
        return self.encoder(inputs, pos), None

    def dense_strides(self) -> tuple[int, ...]:
        return self.config.strides()

    def dense_maps(self, features: list[Tensor], memory: Tensor) -> list[Tensor]:
        # The projected maps the latents read (the 1x1 projections again: cheap, and encode stays one path).
        return [proj(features[i]) for i, proj in zip(self._stage_index, self.input_proj)]

    def no_weight_decay(self) -> set[str]:
        names = super().no_weight_decay() | {"encoder.latents"}
        if self.scale_embed is not None:
            names.add("scale_embed")
        return names


@register_model
def deperceiver_r50() -> DePerceiverConfig:
    """DePerceiver with a ResNet-50 reading stride 32: 256 latents, 6 latent blocks, 6 decoder layers."""
    return DePerceiverConfig(name="deperceiver-r50", backbone_depth=50)


@register_model
def deperceiver_r18() -> DePerceiverConfig:
    """DePerceiver with a ResNet-18, for CPU work."""
    return DePerceiverConfig(name="deperceiver-r18", backbone_depth=18, image_size=640)

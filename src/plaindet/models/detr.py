"""DETR (Carion et al. 2020): a ResNet, a transformer encoder-decoder, and a set of object queries.

The backbone's stride-32 features are projected to ``hidden_dim``, given a 2-d sine position
encoding and refined by a post-norm transformer encoder; ``num_queries`` learned query embeddings
then attend to them through the decoder, and every decoder layer's output (after a shared final
LayerNorm) goes through the same class and box heads: the last for predictions, the others for the
auxiliary losses. Attention runs through ``F.scaled_dot_product_attention``, which picks the flash
or memory-efficient kernel on GPU.

The parts that DETR shares with the models built on it (:mod:`~plaindet.models.deperceiver`) live
here: the decoder, the heads, :class:`SetDetectorConfig` (the fields they share), :class:`SetDetector`
(normalization, heads, postprocess, criterion), the backbone choice (:data:`BACKBONES`: torchvision's
ResNet with frozen BatchNorm, or BiT's GroupNorm ResNet-v2) and the backbone freezing rule. Weight conversion from
the published DETR checkpoints and from ``transformers`` is in :mod:`~plaindet.models.detr_weights`.

Inputs are not masked: a padded batch's padding is part of the image the model sees, as for the
flagship detector, and boxes are normalized to the padded input (``image_wh`` in the outputs).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plaindet.errors import ConfigError
from plaindet.models.base import DetectionConfig, DetectionModel
from plaindet.models.bit import BIT_LAYOUTS, BiT
from plaindet.models.bit_weights import load_bit_weights
from plaindet.models.head import DenseHead
from plaindet.models.layers import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Attention, Mlp, Normalize
from plaindet.models.registry import register_model
from plaindet.models.resnet import NORMS as RESNET_NORMS
from plaindet.models.resnet import ResNet, load_resnet_weights
from plaindet.models.set_criterion import SetCriterion, SetLossConfig, pad_targets
from plaindet.ops.boxes import box_iou, cxcywh_to_xyxy

log = logging.getLogger("plaindet")

# DETR's recipe with pretrained ResNet weights: the stem and layer1 stay frozen, the rest fine-tunes
# (at the engine's backbone_lr_mult, 0.1 for trained weights: DETR's 1e-5 against 1e-4). The same for BiT: its first
# filters are as generic, and its GroupNorms (no batch statistics) fine-tune with their stages.
PRETRAINED_FROZEN_STAGES = 2


class Backbone(NamedTuple):
    """A backbone family: ``build(depth, num_stages)``, its weight loader, the input statistics its
    pretrained weights expect, and (for messages) what it is and what its weights are."""

    build: Callable[[int, int], nn.Module]
    load_weights: Callable[[nn.Module, Any], None]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label: str
    weights: str


BACKBONES: dict[str, Backbone] = {
    "resnet": Backbone(ResNet, load_resnet_weights, IMAGENET_MEAN, IMAGENET_STD, "ResNet", "torchvision-layout ResNet weights"),
    "bit": Backbone(BiT, load_bit_weights, INCEPTION_MEAN, INCEPTION_STD, "BiT backbone", "BiT weights: Google's .npz, timm's or transformers' layout"),
}


# The options the published DETR checkpoints (facebookresearch/detr, transformers) were trained
# with: frozen BatchNorm, softmax classes, learned query embeddings, no dense head, query selection,
# query groups or denoising. Pass them to build a model those weights load into:
# create_model("detr-r50", num_classes=91, **DETR_PAPER).
DETR_PAPER: dict[str, Any] = {
    "backbone_norm": "frozen_bn",
    "loss": {"classification": "softmax", "class_weight": 1.0},
    "anchor_queries": False,
    "spatial_prior": False,
    "dense_aux": False,
    "query_selection": False,
    "selected_content": False,
    "query_nms": 0.0,
    "query_groups": 1,
    "denoising": 0,
}


# ------------------------------------------------------------------------------------------------
# Building blocks


def sine_position_embedding(height: int, width: int, dim: int, device: torch.device, temperature: float = 10000.0) -> Tensor:
    """DETR's 2-d sine position encoding of an unmasked ``height x width`` grid: ``(height * width, dim)``.

    Row and column indices ``1..n`` are normalized to ``(0, 2 pi]``; the first ``dim / 2`` channels
    encode the row, the rest the column, each as ``sin, cos`` pairs of geometric frequencies
    (interleaved, the published weights' order). Rows are flattened row-major (``y * width + x``).
    Built from ``arange`` over the feature size, so an exported graph keeps the size symbolic.
    """
    half = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    freq = torch.arange(half, dtype=torch.float32, device=device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)

    def encode(pos: Tensor) -> Tensor:  # (n,) -> (n, half): sin of even channels, cos of odd, interleaved
        angles = pos[:, None] / freq
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, half)
    pos_x = encode(x)[None, :, :].expand(height, width, half)
    return torch.cat((pos_y, pos_x), dim=2).reshape(height * width, dim)


def input_wh(images: Tensor) -> Tensor:
    """``(2,)`` float32 ``[W, H]`` of ``images (B, C, H, W)``, built from tensor ops (not a constant),
    so a traced or exported graph keeps it tied to the input's size."""
    h, w = images.shape[-2:]
    one = torch.ones((), dtype=torch.float32, device=images.device)
    return torch.stack((one * w, one * h))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; the position encoding is added to queries and keys.

    ``x (B, S, D)``, ``pos (1 or B, S, D)`` -> ``(B, S, D)``.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, ffn_dim, "relu", dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        qk = x + pos
        x = self.norm1(x + self.dropout(self.self_attn(qk, qk, x)))
        return self.norm2(x + self.dropout(self.mlp(x)))


class DecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, cross-attention to the memory, feed-forward.

    ``tgt (B, Q, D)``, ``query_pos (1 or B, Q, D)`` (added to queries and self-attention keys),
    ``memory (B, S, D)``, ``memory_pos (1 or B, S, D)`` or ``None`` (added to cross-attention keys),
    ``self_mask (Q, Q)`` bool or ``None`` (which queries each query may see), ``cross_bias`` float
    ``(B, heads, Q, S)`` or ``None`` (added to the cross-attention logits) -> ``(B, Q, D)``.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, ffn_dim, "relu", dropout)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor | None, self_mask: Tensor | None = None, cross_bias: Tensor | None = None) -> Tensor:
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(qk, qk, tgt, self_mask)))
        key = memory if memory_pos is None else memory + memory_pos
        tgt = self.norm2(tgt + self.dropout(self.cross_attn(tgt + query_pos, key, memory, cross_bias)))
        return self.norm3(tgt + self.dropout(self.mlp(tgt)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`EncoderLayer`. ``x (B, S, D)``, ``pos (1 or B, S, D)`` -> ``(B, S, D)``."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, ffn_dim, dropout) for _ in range(depth))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, pos)
        return x


class TransformerDecoder(nn.Module):
    """A stack of :class:`DecoderLayer` with a shared final LayerNorm; DETR's queries start at zero.

    ``query_pos (Q, D)``, ``memory (B, S, D)``, ``memory_pos`` and ``self_mask`` as in
    :class:`DecoderLayer`. Returns ``(L, B, Q, D)``: the normed output of every layer if
    ``all_layers``, else of the last (L = 1). With anchor queries the model runs the layers itself
    (each layer's positions come from the previous layer's boxes), see :meth:`SetDetector.decode_anchors`;
    ``zero_queries=False`` says so.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, depth: int, dropout: float, zero_queries: bool = True) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # The first layer's self-attention values are projections of the all-zero initial queries:
        # only the bias reaches the output, so the weight can never learn. Frozen to say so (the
        # published weights still load into it).
        if depth and zero_queries:
            self.layers[0].self_attn.v_proj.weight.requires_grad_(False)

    def forward(self, query_pos: Tensor, memory: Tensor, memory_pos: Tensor | None, all_layers: bool, self_mask: Tensor | None = None) -> Tensor:
        query_pos = query_pos[None]
        tgt = torch.zeros(memory.shape[0], query_pos.shape[1], memory.shape[2], dtype=memory.dtype, device=memory.device)
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, query_pos, memory, memory_pos, self_mask)
            if all_layers:
                outputs.append(self.norm(tgt))
        return torch.stack(outputs) if all_layers else self.norm(tgt)[None]


class BoxHead(nn.Module):
    """DETR's box MLP: ``layers`` linear layers with ReLU between. ``(..., D) -> (..., 4)`` logits of
    cxcywh (a sigmoid makes them normalized boxes)."""

    def __init__(self, dim: int, layers: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, 4 if i == layers - 1 else dim) for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def sine_box_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """``boxes (..., 4)`` normalized cxcywh -> ``(..., 2 * dim)``: each coordinate times ``2 pi`` encoded
    as ``dim / 2`` interleaved sin/cos channels of geometric frequencies (DAB-DETR's encoding of an
    anchor, the same frequencies as :func:`sine_position_embedding`)."""
    half = dim // 2
    freq = torch.arange(half, dtype=torch.float32, device=boxes.device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / half)
    angles = boxes.float()[..., None] * (2 * math.pi) / freq  # (..., 4, half)
    encoded = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    return encoded.flatten(-2)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[eps, 1 - eps]``."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def xavier_init(module: nn.Module) -> None:
    """DETR's transformer initialization: Xavier-uniform for every matrix, defaults for the rest."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


# ------------------------------------------------------------------------------------------------
# The shared set-prediction detector


@dataclass
class SetDetectorConfig(DetectionConfig):
    """The fields DETR and the models built on it share; saved inside every checkpoint.

    ``backbone``: ``"resnet"`` (:class:`~plaindet.models.resnet.ResNet`, torchvision's layout, frozen
    BatchNorm, ImageNet input statistics) or ``"bit"`` (:class:`~plaindet.models.bit.BiT`, BiT's
    ResNet-v2 with weight-standardized convolutions and GroupNorm, inputs scaled to [-1, 1]).
    ``backbone_depth``: its depth (ResNet 18, 34, 50, 101, 152; BiT 50, 101). ``frozen_stages``:
    leading backbone units that do not train (stem = 1, stem + first stage = 2, ...); ``None`` is
    resolved at build: 2 with pretrained backbone weights (DETR's recipe), 0 without.
    ``backbone_norm`` (ResNet only): ``"frozen_bn"`` (DETR's, what pretrained weights expect) or
    ``"group"`` (GroupNorm, to train from scratch: a random network's frozen BatchNorm normalizes
    nothing, see :mod:`~plaindet.models.resnet`); ``None`` is resolved at build, ``"frozen_bn"``
    with backbone weights and ``"group"`` without (a model rebuilt from a checkpoint that predates
    the field reads ``None`` as ``"frozen_bn"``, what it was trained with). BiT's GroupNorm
    affine terms are parameters that freeze and train with their unit (the ResNet's BatchNorm terms
    are fixed buffers everywhere). The decoder: ``decoder_layers`` of width
    ``hidden_dim`` with ``heads`` heads and ``ffn_dim`` feed-forward channels, ``num_queries`` object
    queries; ``aux_loss`` supervises every decoder layer's output in training.

    Convergence options (DETR itself needs 500 COCO epochs; these are what later work found). On by
    default: focal classes, anchor queries, the dense head and query selection, the combination
    that made detr-r18 score at all when memorizing 16 coco128 images (every other setting stayed at
    AP50 0.000; README, "Every family"), distinct queries (``query_nms`` 0.7), which raised that
    run's best AP from 0.078 to 0.123 and DePerceiver's from 0.627 to 0.679, inside-only dense
    targets (``dense_inside``) and selected content (``selected_content``), with which
    deperceiver-r18 memorizes them (AP50 0.934); :data:`DETR_PAPER` switches them off. Switching
    ``query_selection`` off needs ``query_nms=0`` and ``selected_content=False`` too.

    - ``loss.classification``: ``"focal"`` or ``"varifocal"`` sigmoid classes instead of DETR's softmax
      with "no object" (see :mod:`~plaindet.models.set_criterion`);
    - ``anchor_queries``: each query is a learned box (DAB-DETR, Liu et al. 2022) whose sine encoding,
      through a small MLP, is its position embedding; every decoder layer predicts a correction of
      the previous layer's box (iterative refinement, as Deformable DETR's), and the next layer's
      positions come from the corrected box;
    - ``query_groups``: Group DETR's ``groups`` sets of ``num_queries`` queries in training, each
      matched on its own and blind to the others; inference and export use the first set only;
    - ``spatial_prior`` (DETR only: its memory is a grid of known positions): SMCA's Gaussian prior
      (Gao et al. 2021), a bias ``-gamma_h * ((x - cx)^2 / sx^2 + (y - cy)^2 / sy^2) / 2`` on each
      cross-attention logit from the query's current box (center ``cx, cy``, ``s`` half its size, at
      least half a grid cell), so a query reads the pixels of its box from the first step; each
      layer's head learns its own ``gamma_h >= 0`` (starting at 1), so a head can turn it off. Needs
      ``anchor_queries``;
    - ``dense_aux``: a training-only dense head (:class:`~plaindet.models.head.DenseHead`, one conv
      layer per tower) on the memory grid (DETR) or the features the latents read (DePerceiver),
      trained one-to-many like the flagship's auxiliary head (Co-DETR's collaborative heads): a
      direct, dense signal for the backbone and encoder, dropped at inference and export unless
      ``query_selection`` reads it;
    - ``denoising``: DN-DETR's ``S`` noised copies of every ground-truth box as extra training
      queries (needs ``anchor_queries``, since a noised box is an anchor): centers moved by up to
      ``dn_box_noise`` half-sizes, sizes scaled by up to ``1 +- dn_box_noise``, labels replaced by a
      random class with probability ``dn_label_noise``; they learn to reconstruct the object.
      Matching queries cannot see them, and the copies cannot see each other;
    - ``query_selection``: the dense head's best locations become the queries' anchors (DINO's mixed
      query selection, the two-stage scheme of Deformable DETR and RT-DETR): the ``min(num_queries,
      S)`` memory locations of highest class score give their predicted boxes (detached) as anchors,
      the learned anchors fill the rest (their content is learned; the selected ones' is too unless
      ``selected_content``). The decoder then starts from
      boxes that are already near the objects instead of learning where objects are through 100
      free embeddings, the slow part of DETR's training. The dense head runs at inference too (it
      is part of the exported graph). Needs ``anchor_queries`` and ``dense_aux``;
    - ``selected_content`` (with ``query_selection``): the selected queries' content is the feature
      the dense head read at their location (detached, through a linear layer and LayerNorm), as
      RT-DETR and Deformable DETR's two-stage variant start them, instead of one learned embedding
      shared by every query: a query knows what it looks at before its first cross-attention, so
      the class need not be found by attention alone, and queries on neighbouring locations of one
      object differ from the start, so the decoder can learn which one to score (with a shared
      learned content they differ only in their anchors' position embeddings). On by default:
      memorizing 16 coco128 images, deperceiver-r18 reached AP50 0.934 at epoch 60 with it,
      against 0.096 at epoch 60 and 0.714 at best (epoch 190) without; its decoder's top detections
      then found 56 of the 72 labels, against 22 (``benchmarks/coco128_overfit.py``, README "Every
      family"). Measured before ``identity_init`` existed, when DETR's memory had collapsed, it had
      not helped.
    - ``query_nms`` (with ``query_selection``; 0: off): distinct queries (DDQ, Zhang et al. 2023): of
      the dense head's ``4 * num_queries`` best locations, one whose box overlaps a better one's by
      more than this IoU goes behind every distinct one, so the selected anchors are distinct
      objects rather than the neighbouring cells of one. Nearly equal queries on one object are
      what a one-to-one decoder finds hardest to tell apart (its duplicates); this removes them
      before the decoder instead of after it, so inference still needs no NMS.
    - ``dense_inside`` (with ``dense_aux``): the dense head's positives for an object are only
      locations whose center lies inside its box (its ``aux_topk`` cheapest among them), and an
      object smaller than a cell, with none inside, gets the one nearest its center. Off, an object
      with fewer than ``aux_topk`` centers inside is filled up with outside locations, as the
      flagship's auxiliary head does at stride 8; at DETR's stride 32 that is most objects, and a
      location's box, being distances to its own center, cannot reach an object it lies outside:
      memorizing one batch of 8 shapes images (``benchmarks/dense_head_memorize.py``) detr-r18's
      dense GIoU loss was 0.703 after 20 steps with it off against 0.332 with it on.
    """

    name: str = "detr"
    backbone: str = "resnet"
    backbone_depth: int = 50
    frozen_stages: int | None = None
    backbone_norm: str | None = None
    hidden_dim: int = 256
    heads: int = 8
    decoder_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.1
    num_queries: int = 100
    aux_loss: bool = True
    loss: SetLossConfig = field(default_factory=lambda: SetLossConfig(classification="focal"))
    anchor_queries: bool = True
    spatial_prior: bool = False
    dense_aux: bool = True
    query_groups: int = 1
    denoising: int = 0
    dn_box_noise: float = 0.4
    dn_label_noise: float = 0.2
    query_selection: bool = True
    selected_content: bool = True
    query_nms: float = 0.7
    dense_inside: bool = True
    image_size: int = 800
    # A checkpoint written before distinct queries, inside-only dense targets or selected content
    # existed was trained without them.
    ADDED_FIELDS: ClassVar[dict[str, Any]] = {"query_nms": 0.0, "dense_inside": False, "selected_content": False}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.query_groups < 1:
            raise ConfigError(f"query_groups must be at least 1, got {self.query_groups}")
        if self.denoising < 0:
            raise ConfigError(f"denoising must be 0 (off) or the number of noised copies, got {self.denoising}")
        if self.denoising and not self.anchor_queries:
            raise ConfigError("denoising queries are noised boxes, so they need anchor_queries=True")
        if self.spatial_prior and not self.anchor_queries:
            raise ConfigError("the spatial prior is centered on each query's box, so it needs anchor_queries=True")
        if self.query_selection and not (self.anchor_queries and self.dense_aux):
            raise ConfigError("query_selection takes the dense head's boxes as anchors, so it needs anchor_queries=True and dense_aux=True")
        if self.selected_content and not self.query_selection:
            raise ConfigError("selected_content is the content of the selected queries, so it needs query_selection=True")
        if not 0.0 <= self.query_nms < 1.0:
            raise ConfigError(f"query_nms is an IoU threshold in [0, 1) (0: off), got {self.query_nms}")
        if self.query_nms and not self.query_selection:
            raise ConfigError("query_nms makes the selected queries distinct, so it needs query_selection=True")
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(map(repr, BACKBONES))}, got {self.backbone!r}")
        if self.backbone == "bit" and self.backbone_depth not in BIT_LAYOUTS:
            raise ConfigError(f"a BiT backbone's depth must be one of {sorted(BIT_LAYOUTS)}, got backbone_depth={self.backbone_depth}")
        if self.backbone_norm is not None and self.backbone_norm not in RESNET_NORMS:
            raise ConfigError(f"backbone_norm must be one of {', '.join(map(repr, RESNET_NORMS))} or None, got {self.backbone_norm!r}")
        if self.backbone == "bit" and self.backbone_norm is not None:
            raise ConfigError("backbone_norm is the ResNet's; the BiT backbone always has GroupNorm and weight standardization")
        if self.frozen_stages is not None and not 0 <= self.frozen_stages <= 5:
            raise ValueError(f"frozen_stages must be 0 (nothing frozen) to 5 (stem and 4 stages), got {self.frozen_stages}")

    def build(self, backbone_weights: Any = None) -> SetDetector:
        """A new model; ``backbone_weights`` (a local file or a state dict: torchvision-layout ResNet
        weights for ``backbone="resnet"``, BiT weights in Google's ``.npz``, timm's or transformers'
        layout for ``"bit"``) are loaded with DETR's freezing: stem and first stage frozen once
        pretrained weights are loaded, nothing frozen for a random backbone (whose frozen features
        would be of no use). An explicit ``frozen_stages`` wins."""
        if self.backbone == "resnet" and self.backbone_norm is None:
            self.backbone_norm = "frozen_bn" if backbone_weights is not None else "group"
        model = self.model_class()(self)
        kind = BACKBONES[self.backbone]
        if backbone_weights is not None:
            kind.load_weights(model.backbone, backbone_weights)
            if self.frozen_stages is None:
                self.frozen_stages = PRETRAINED_FROZEN_STAGES
        elif self.frozen_stages is None:
            self.frozen_stages = 0
            log.warning(
                "%s: built without backbone weights, so the whole %s trains from scratch; pass "
                "backbone_weights= (%s) to fine-tune a pretrained one",
                self.name,
                kind.label,
                kind.weights,
            )
        model.backbone.freeze_stages(self.frozen_stages)
        return model


def build_backbone(config: SetDetectorConfig, num_stages: int = 4, dilate_last: bool = False) -> nn.Module:
    """The backbone ``config`` names, with its first ``num_stages`` stages: ``forward`` returns their
    feature maps (strides 4, 8, 16, 32, or 4, 8, 16, 16 with ``dilate_last``, ResNet only);
    ``channels``, ``strides``, ``num_stages`` and ``freeze_stages`` as
    :class:`~plaindet.models.resnet.ResNet` has them."""
    if config.backbone == "resnet":
        return ResNet(config.backbone_depth, num_stages, norm=config.backbone_norm or "frozen_bn", dilate_last=dilate_last)
    return BACKBONES[config.backbone].build(config.backbone_depth, num_stages)


class SetDetector(DetectionModel):
    """What DETR-style models share: pixel normalization, a ResNet or BiT backbone, object queries
    decoded against a memory, class and box heads on every decoder layer, the set criterion and the
    postprocess.

    A subclass builds ``self.backbone`` (with :func:`build_backbone`) and its encoder, calls
    :meth:`_build_decoder` (the decoder, the queries and the class and box heads), implements
    :meth:`encode`, then calls :meth:`_finish_init`.

    ``forward(images, targets=None)``: ``images (B, 3, H, W)`` uint8 or float in [0, 255], ``H`` and
    ``W`` multiples of :attr:`size_divisor`; ``targets`` (per image ``boxes (N, 4)`` xyxy input pixels,
    ``labels (N,)``) are read in training only, to make denoising queries. Returns

    - ``logits (B, Q, C)``: class logits, ``C = K + 1`` with the softmax (the last is "no object"),
      ``K`` with sigmoid classes;
    - ``boxes (B, Q, 4)``: cxcywh normalized to the input (padded) image, in [0, 1];
    - ``image_wh (2,)``: the input's width and height in pixels (postprocess scales boxes by it);
    - in training with ``aux_loss``: ``aux_logits (L - 1, B, Q, C)`` and ``aux_boxes (L - 1, B, Q, 4)``
      of the earlier decoder layers; in training ``Q`` is ``num_queries * query_groups``;
    - in training with ``denoising``: ``dn_logits (L', B, S * G, C)``, ``dn_boxes (L', B, S * G, 4)``
      (``L'`` the supervised layers, ``G`` the most objects in an image of the batch), as
      :class:`~plaindet.models.set_criterion.SetCriterion` reads them.

    From random weights the backbone (a ResNet with GroupNorm, or BiT) learns at ten times the
    decoder's rate (``scratch_backbone_lr_mult``: 1e-3 against 1e-4, the rate it would train at
    alone): at the 0.1 of a pretrained backbone it barely moves. detr-r18 on the shapes
    validation split, 20 CPU minutes (about 245 steps) each: AP 0.000 at 0.1 (after 223 steps),
    0.010 at 1, 0.018 at 10; the mean loss over steps 141-160 20.1, 17.3 and 15.5
    (``benchmarks/bench_models_shapes.py --models detr-r18 --minutes 20 --threads 1 --split valid
    --backbone-lr-mult M``, two runs at a time on a 2-core AVX2 EPYC). deperceiver-r18 the same way,
    0.1 and 10 side by side, 158 steps each: AP 0.000 against 0.018.
    """

    config: Any
    scratch_backbone_lr_mult = 10.0

    def _build_decoder(self) -> None:
        c = self.config
        d, n = c.hidden_dim, c.num_queries * c.query_groups
        self.decoder = TransformerDecoder(d, c.heads, c.ffn_dim, c.decoder_layers, c.dropout, zero_queries=not c.anchor_queries)
        if c.anchor_queries:
            self.anchor_embed = nn.Embedding(n, 4)  # inverse-sigmoid cxcywh
            # Content of the queries: a label's embedding for a denoising query, the extra entry
            # (index K) for every matching query (DN-DETR's "indicator").
            self.label_embed = nn.Embedding(c.num_classes + 1, d)
            self.anchor_pos = nn.Sequential(nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, d))
        else:
            self.query_embed = nn.Embedding(n, d)
        if c.spatial_prior:
            # softplus(0.5413) = 1: every head starts with the full prior.
            self.spatial_gamma = nn.Parameter(torch.full((c.decoder_layers, c.heads), 0.5413))
        self.class_embed = nn.Linear(d, c.num_classes if c.loss.sigmoid else c.num_classes + 1)
        self.bbox_embed = BoxHead(d, 3)
        if c.dense_aux:
            self.dense_head = DenseHead(d, c.num_classes, self.dense_strides(), depth=1)
        if c.selected_content:
            self.content_proj = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))

    def _init_decoder(self) -> None:
        """DETR's Xavier init of the decoder; for sigmoid classes a prior of 0.01 on every class (focal
        loss's init, so the early loss is not swamped by the easy negatives); anchors spread over the
        image with a tenth of its size, each layer's box correction starting at zero."""
        c = self.config
        xavier_init(self.decoder)
        if c.loss.sigmoid:
            nn.init.constant_(self.class_embed.bias, -math.log((1 - 0.01) / 0.01))
        if c.anchor_queries:
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                w = self.anchor_embed.weight
                w[:, :2] = inverse_sigmoid(torch.rand(w.shape[0], 2, generator=g))
                w[:, 2:] = inverse_sigmoid(torch.full((w.shape[0], 2), 0.1))
            nn.init.zeros_(self.bbox_embed.layers[-1].weight)
            nn.init.zeros_(self.bbox_embed.layers[-1].bias)

    def _finish_init(self) -> None:
        kind = BACKBONES[self.config.backbone]
        self.normalize = Normalize(kind.mean, kind.std)
        if self.config.frozen_stages is not None:
            self.backbone.freeze_stages(self.config.frozen_stages)

    @property
    def size_divisor(self) -> int:
        return 32

    def encode(self, features: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Backbone feature maps -> decoder ``memory (B, S, D)`` and its ``memory_pos`` (or ``None``)."""
        raise NotImplementedError

    def dense_strides(self) -> tuple[int, ...]:
        """The strides of the maps :meth:`dense_maps` returns."""
        raise NotImplementedError

    def dense_maps(self, features: list[Tensor], memory: Tensor) -> list[Tensor]:
        """``(B, D, h, w)`` maps the training-only dense head reads, from the backbone ``features`` and
        the decoder's ``memory (B, S, D)``."""
        raise NotImplementedError

    def memory_centers(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """``centers (S, 2)`` normalized ``x, y`` of each memory token's pixel, for the spatial prior (a model
        whose memory has no positions does not offer it) and the grid's ``(2,)`` width and height in cells."""
        raise ConfigError(f"{self.config.name}: spatial_prior needs a memory of known positions, which this model does not have")

    def spatial_bias(self, layer: int, boxes: Tensor, centers: Tensor, grid_wh: Tensor) -> Tensor:
        """The spatial prior's cross-attention bias ``(B, heads, N, S)`` from ``boxes (B, N, 4)``
        normalized cxcywh, the memory's ``centers (S, 2)`` and its grid ``grid_wh (2,)``."""
        sigma = torch.maximum(boxes[..., 2:] / 2, 0.5 / grid_wh)  # (B, N, 2): at least half a cell
        d = (centers[None, None] - boxes[..., None, :2]) / sigma[..., None, :]  # (B, N, S, 2)
        gamma = F.softplus(self.spatial_gamma[layer])  # (heads,)
        return -0.5 * gamma[None, :, None, None] * d.pow(2).sum(-1)[:, None]

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict[str, Tensor]:
        self.check_input(images)
        c = self.config
        features = self.backbone(self.normalize(images))
        memory, memory_pos = self.encode(features)
        image_wh = input_wh(images)
        aux = self.training and c.aux_loss
        groups = c.query_groups if self.training else 1
        n = c.num_queries * groups  # matching queries; denoising ones follow them
        dn_size = 0
        dense = maps = None
        if c.dense_aux and (self.training or c.query_selection):
            maps = self.dense_maps(features, memory)
            dense = self.dense_head(maps)
        if c.anchor_queries:
            b = memory.shape[0]
            anchors = self.anchor_embed.weight[:n][None].expand(b, n, 4)
            content = self.label_embed.weight[-1].to(memory.dtype).expand(b, n, memory.shape[2])
            if c.query_selection:
                anchors, idx = self.selected_anchors(dense, anchors, groups, image_wh)
                if c.selected_content:
                    content = self.selected_queries(maps, idx, content, groups)
            if self.training and c.denoising and targets is not None:
                dn = self.denoising_queries(targets, image_wh)
                if dn is not None:
                    dn_content, dn_anchors = dn
                    dn_size = dn_anchors.shape[1] // c.denoising
                    content = torch.cat([content, dn_content.to(content.dtype)], 1)
                    anchors = torch.cat([anchors, dn_anchors], 1)
            mask = self.query_mask(groups, dn_size, memory.device)
            grid = self.memory_centers(features) if c.spatial_prior else None
            hs, boxes = self.decode_anchors(content, anchors, memory, memory_pos, aux, mask, grid)
        else:
            mask = self.query_mask(groups, 0, memory.device)
            hs = self.decoder(self.query_embed.weight[:n], memory, memory_pos, all_layers=aux, self_mask=mask)  # (L, B, N, D)
            boxes = self.bbox_embed(hs).sigmoid()
        logits = self.class_embed(hs)
        out = {"logits": logits[-1, :, :n], "boxes": boxes[-1, :, :n], "image_wh": image_wh}
        if aux:
            out["aux_logits"] = logits[:-1, :, :n]
            out["aux_boxes"] = boxes[:-1, :, :n]
        if dn_size:
            out["dn_logits"] = logits[:, :, n:]
            out["dn_boxes"] = boxes[:, :, n:]
        if self.training and dense is not None:
            out["dense"] = dense
        return out

    def selected_anchors(self, dense: dict[str, Tensor], learned: Tensor, groups: int, image_wh: Tensor) -> tuple[Tensor, Tensor]:
        """Query selection: ``learned (B, groups * Q, 4)`` inverse-sigmoid anchors with each group's
        first ``k = min(Q, S)`` replaced by the boxes of the dense head's ``k`` best-scoring locations
        (detached, best first), the same for every group; and those locations ``(B, k)``."""
        q = self.config.num_queries
        scores = dense["logits"].detach().float().amax(-1)  # (B, S)
        k = min(q, scores.shape[1])
        if self.config.query_nms:
            idx = distinct_locations(scores, dense["boxes"].detach().float(), k, self.config.query_nms)
        else:
            idx = scores.topk(k, dim=1).indices
        boxes = dense["boxes"].detach().float().gather(1, idx[..., None].expand(-1, -1, 4))  # xyxy pixels
        scale = torch.cat([image_wh, image_wh]).float()
        boxes = (boxes / scale).clamp(0, 1)
        cxcywh = torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, (boxes[..., 2:] - boxes[..., :2]).clamp(min=1e-3)], -1)
        selected = inverse_sigmoid(cxcywh).to(learned.dtype)
        b = learned.shape[0]
        per_group = learned.reshape(b, groups, q, 4)
        merged = torch.cat([selected[:, None].expand(b, groups, k, 4), per_group[:, :, k:]], 2)
        return merged.reshape(b, groups * q, 4), idx

    def selected_queries(self, maps: list[Tensor], idx: Tensor, learned: Tensor, groups: int) -> Tensor:
        """``learned (B, groups * Q, D)`` content with each group's first ``k`` queries replaced by the
        projected, detached dense-head features at the selected locations ``idx (B, k)``."""
        feats = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1).detach()  # (B, S, D), the dense head's order
        picked = self.content_proj(feats.gather(1, idx[..., None].expand(-1, -1, feats.shape[2]))).to(learned.dtype)
        b, k, d = picked.shape
        per_group = learned.reshape(b, groups, -1, d)
        merged = torch.cat([picked[:, None].expand(b, groups, k, d), per_group[:, :, k:]], 2)
        return merged.reshape(b, -1, d)

    def decode_anchors(
        self, content: Tensor, anchors: Tensor, memory: Tensor, memory_pos: Tensor | None, all_layers: bool, mask: Tensor | None, grid: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Decode anchor queries with iterative box refinement.

        ``content (B, N, D)``, ``anchors (B, N, 4)`` inverse-sigmoid cxcywh. Each layer's position
        embedding is the MLP of the sine encoding of the current boxes; its output's box head adds a
        correction to their inverse sigmoid; the corrected box is the layer's prediction and,
        detached (Deformable DETR's rule: each layer learns its own correction), the next layer's anchor.
        ``grid``: the memory's ``(centers (S, 2), grid_wh (2,))`` for the spatial prior, or ``None``.
        Returns ``hs (L, B, N, D)`` (normed) and ``boxes (L, B, N, 4)`` in [0, 1]; ``L = 1`` (the last
        layer) unless ``all_layers``.
        """
        d = memory.shape[2]
        tgt, ref = content, anchors.float()
        states, boxes = [], []
        for i, layer in enumerate(self.decoder.layers):
            current = ref.sigmoid()
            pos = self.anchor_pos(sine_box_embedding(current, d).to(memory.dtype))
            bias = None if grid is None else self.spatial_bias(i, current, *grid).to(memory.dtype)
            tgt = layer(tgt, pos, memory, memory_pos, mask, bias)
            if all_layers or i == len(self.decoder.layers) - 1:
                h = self.decoder.norm(tgt)
                box = ref + self.bbox_embed(h).float()
                states.append(h)
                boxes.append(box.sigmoid())
            else:
                box = ref + self.bbox_embed(self.decoder.norm(tgt)).float()
            ref = box.detach()
        return torch.stack(states), torch.stack(boxes)

    def denoising_queries(self, targets: list[dict], image_wh: Tensor) -> tuple[Tensor, Tensor] | None:
        """DN-DETR's noised ground truth: ``content (B, S * G, D)`` (embeddings of the possibly flipped
        labels) and ``anchors (B, S * G, 4)`` (inverse-sigmoid noised boxes), query ``s * G + j`` made
        from target ``j`` (padding targets too: the criterion ignores them); ``None`` without objects."""
        c = self.config
        boxes, labels, _, _ = pad_targets(targets, image_wh)
        if boxes.shape[1] == 0:
            return None
        boxes = boxes.repeat(1, c.denoising, 1)  # (B, S * G, 4)
        labels = labels.repeat(1, c.denoising)
        wh = boxes[..., 2:]
        shift = (torch.rand_like(wh) * 2 - 1) * wh / 2 * c.dn_box_noise
        scale = 1 + (torch.rand_like(wh) * 2 - 1) * c.dn_box_noise
        noised = torch.cat([(boxes[..., :2] + shift).clamp(0, 1), (wh * scale).clamp(1e-3, 1)], -1)
        flip = torch.rand(labels.shape, device=labels.device) < c.dn_label_noise
        labels = torch.where(flip, torch.randint_like(labels, c.num_classes), labels)
        return self.label_embed(labels), inverse_sigmoid(noised)

    def query_mask(self, groups: int, dn_size: int, device: torch.device) -> Tensor | None:
        """Which queries each query's self-attention may see, ``(N, N)`` bool, or ``None`` when all.

        Query groups see only themselves; each denoising copy (``dn_size`` queries each) sees itself
        and the first group, and no matching query sees a denoising one (they carry the answer)."""
        c = self.config
        if groups == 1 and not dn_size:
            return None
        q = c.num_queries
        segment = torch.cat([
            torch.arange(groups, device=device).repeat_interleave(q),
            groups + torch.arange(c.denoising if dn_size else 0, device=device).repeat_interleave(dn_size),
        ])  # fmt: skip
        is_dn = segment >= groups
        return (segment[:, None] == segment[None, :]) | (is_dn[:, None] & (segment[None, :] == 0))

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Tensor], max_detections: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """DETR's decoding: softmax over classes and "no object", drop "no object", each query's best
        class; the top ``k = min(max_detections, Q)`` queries by that score.

        Returns ``boxes (B, k, 4)`` xyxy input pixels, ``scores (B, k)`` sorted high to low and
        ``labels (B, k)``. Pure tensor ops (exportable).
        """
        k = max_detections or self.config.max_detections
        if self.config.loss.sigmoid:
            return sigmoid_set_detections(outputs["logits"], outputs["boxes"], outputs["image_wh"], k)
        return set_detections(outputs["logits"], outputs["boxes"], outputs["image_wh"], k)

    def criterion(self) -> nn.Module:
        return SetCriterion(self.config.num_classes, self.config.loss, num_queries=self.config.num_queries, dense_inside=self.config.dense_inside)

    def no_weight_decay(self) -> set[str]:
        c = self.config
        names = {"anchor_embed.weight", "label_embed.weight"} if c.anchor_queries else {"query_embed.weight"}
        return names | ({"spatial_gamma"} if c.spatial_prior else set())


def distinct_locations(scores: Tensor, boxes: Tensor, k: int, iou: float) -> Tensor:
    """The ``k`` best locations ``(B, k)`` by ``scores (B, S)``, distinct ones first: of the ``4 * k``
    best, a location whose box (``boxes (B, S, 4)`` xyxy) overlaps a better-scored candidate's by
    more than ``iou`` (Fast NMS's one-pass rule, YOLACT's: a dropped box still drops others) ranks behind
    every distinct one, in score order. Pure tensor ops (exportable)."""
    m = min(4 * k, scores.shape[1])
    _, cand = scores.topk(m, dim=1)  # best first
    cand_boxes = boxes.gather(1, cand[..., None].expand(-1, -1, 4))
    better = torch.ones(m, m, dtype=torch.bool, device=scores.device).triu(1)  # [i, j]: i scored above j
    dropped = ((box_iou(cand_boxes, cand_boxes) > iou) & better).any(1)  # (B, m)
    rank = torch.arange(m, 0, -1, device=scores.device, dtype=torch.float32) - dropped.float() * m  # distinct first, each in score order
    return cand.gather(1, rank.topk(k, dim=1).indices)


def set_detections(logits: Tensor, boxes: Tensor, image_wh: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``logits (B, Q, K + 1)``, ``boxes (B, Q, 4)`` normalized cxcywh, ``image_wh (2,)`` -> top-``k``
    ``boxes (B, k, 4)`` xyxy pixels, ``scores (B, k)``, ``labels (B, k)``."""
    prob = logits.float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    k = min(k, scores.shape[1])
    top_scores, idx = scores.topk(k, dim=1)
    top_labels = labels.gather(1, idx)
    return _gather_boxes(boxes, idx, image_wh), top_scores, top_labels


def sigmoid_set_detections(logits: Tensor, boxes: Tensor, image_wh: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """As :func:`set_detections` for sigmoid classes (``logits (B, Q, K)``): the top ``k`` of all
    ``Q * K`` (query, class) scores (Deformable DETR's decoding), so a query may give two classes."""
    prob = logits.float().sigmoid().flatten(1)  # (B, Q * K)
    num_classes = logits.shape[-1]
    top_scores, idx = prob.topk(min(k, prob.shape[1]), dim=1)
    query = torch.div(idx, num_classes, rounding_mode="floor")
    return _gather_boxes(boxes, query, image_wh), top_scores, idx % num_classes


def _gather_boxes(boxes: Tensor, idx: Tensor, image_wh: Tensor) -> Tensor:
    """``boxes (B, Q, 4)`` normalized cxcywh at ``idx (B, k)`` -> ``(B, k, 4)`` xyxy pixels."""
    top_boxes = boxes.float().gather(1, idx[..., None].expand(-1, -1, 4))
    return cxcywh_to_xyxy(top_boxes) * torch.cat([image_wh, image_wh]).float()


# ------------------------------------------------------------------------------------------------
# DETR


@dataclass
class DetrConfig(SetDetectorConfig):
    """A DETR (see :class:`SetDetectorConfig` for the shared fields): ``encoder_layers`` of
    self-attention over the stride-32 features, or the stride-16 ones with ``dilation`` (the DETR
    paper's DC5 models: the ResNet's last stage dilated instead of strided, four times the memory
    tokens for the same weights; better on small objects, about twice the encoder's cost).

    ``identity_init`` (a convergence option, on by default; weights loaded into the model replace it): every encoder
    layer's self-attention output projection starts at zero, so the encoder starts as the identity
    on what tells its tokens apart. With DETR's Xavier init the untrained attention is uniform: it
    adds the same average to every token, and each post-norm layer halves the share of the
    memory's variance that differs between tokens (0.36 at the input, 0.007 after six layers, on a
    batch of shapes images with a random ResNet-18); the decoder and the dense head then read a
    memory in which every location looks alike, and training at lr 1e-4 did not pull it apart:
    memorizing one batch (``benchmarks/dense_head_memorize.py``) the dense head's GIoU loss was
    0.702 after 20 steps without it (the share stayed at 0.000) and 0.332 with it (0.177). A
    pretrained DETR's weights replace this init."""

    name: str = "detr-r50"
    encoder_layers: int = 6
    dilation: bool = False
    identity_init: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dilation and self.backbone != "resnet":
            raise ConfigError(f"dilation (DC5) is built for the ResNet backbone, not {self.backbone!r}")

    def model_class(self) -> type[DETR]:
        return DETR


class DETR(SetDetector):
    """ResNet (or BiT) -> 1x1 projection + sine positions -> transformer encoder -> decoder -> class/box heads.

    See :class:`SetDetector` for the forward contract. Parameter names follow the published DETR
    closely (``backbone``, ``input_proj``, ``query_embed``, ``class_embed``, ``bbox_embed``), see
    :mod:`~plaindet.models.detr_weights`.
    """

    def __init__(self, config: DetrConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_dim
        self.backbone = build_backbone(config, dilate_last=config.dilation)
        self.input_proj = nn.Conv2d(self.backbone.channels[-1], d, kernel_size=1)
        self.encoder = TransformerEncoder(d, config.heads, config.ffn_dim, config.encoder_layers, config.dropout)
        self._build_decoder()
        xavier_init(self.encoder)
        if config.identity_init:
            for layer in self.encoder.layers:
                nn.init.zeros_(layer.self_attn.out_proj.weight)
                nn.init.zeros_(layer.self_attn.out_proj.bias)
        self._init_decoder()
        self._finish_init()

    def encode(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = self.input_proj(features[-1])  # (B, D, H/32, W/32), or H/16 with dilation
        h, w = x.shape[-2:]
        pos = sine_position_embedding(h, w, x.shape[1], x.device).to(x.dtype)[None]
        memory = self.encoder(x.flatten(2).transpose(1, 2), pos)
        return memory, pos

    def dense_strides(self) -> tuple[int, ...]:
        return (self.backbone.strides[-1],)

    def dense_maps(self, features: list[Tensor], memory: Tensor) -> list[Tensor]:
        h, w = features[-1].shape[-2:]
        return [memory.transpose(1, 2).reshape(memory.shape[0], memory.shape[2], h, w)]

    def memory_centers(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """The memory grid's pixel centers ``(S, 2)`` normalized ``x, y`` (row-major, as the memory)
        and its ``(2,)`` width and height in cells; from ``arange``, so export keeps them symbolic."""
        h, w = features[-1].shape[-2:]
        one = torch.ones((), device=features[-1].device)
        ys = (torch.arange(h, dtype=torch.float32, device=one.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=one.device) + 0.5) / w
        centers = torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), -1).reshape(-1, 2)
        return centers, torch.stack((one * w, one * h))


@register_model
def detr_r50() -> DetrConfig:
    """DETR with a ResNet-50 (the paper's DETR-R50, 41M parameters): 6 + 6 layers, 100 queries."""
    return DetrConfig(name="detr-r50", backbone_depth=50)


@register_model
def detr_bit50() -> DetrConfig:
    """DETR with a BiT-S ResNet-50x1 backbone (GroupNorm, weight standardization): 6 + 6 layers, 100 queries."""
    return DetrConfig(name="detr-bit50", backbone="bit", backbone_depth=50)


@register_model
def detr_r18() -> DetrConfig:
    """DETR with a ResNet-18 and the same transformer, for CPU work."""
    return DetrConfig(name="detr-r18", backbone_depth=18, image_size=640)

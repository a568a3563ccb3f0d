"""The patch-token detector: a DeiT encoder and a causal decoder that writes objects as token triples.

Detection as language modelling (Pix2Seq, Chen et al. 2022), with the coordinate bins replaced by the
encoder's own patches. Each object is written as three tokens,

    [patch holding the top-left corner] [patch holding the bottom-right corner] [class]

and an image is ``BOS, tl1, br1, c1, tl2, br2, c2, ..., EOS`` (``PAD`` after it); ``token_order
"class_corners"`` writes the class first instead (``BOS, c1, tl1, br1, ...``). Corners first is
Pix2Seq's order: the class is read off a box the decoder has already placed, and the class step
gives a probability for every class of that box (``multi_label``). A small regression
head adds each corner's position inside its patch (an offset in [0, 1] per axis), so boxes are not
snapped to the 16-pixel grid.

Vocabulary (:class:`Vocabulary`), with ``K`` classes and ``G = image_size / patch_size``:

    0 .. K-1                  class tokens
    K .. K + G*G - 1          position tokens: patch (row r, column c) is K + r * G + c
    K + G*G                   EOS
    K + G*G + 1               BOS
    K + G*G + 2               PAD

The decoder reads ``BOS`` and the first ``3 * n`` tokens (input index ``t``) and predicts the token
at ``t + 1``, which is at *place* ``t % 3`` of object ``t // 3``: place 0 is an object's first token
(or EOS). The hidden state at a corner token's own input index (``1 + 3j + place``) predicts that
corner's offset: by then the decoder knows which patch it chose.

The decoder scores class and special tokens with its (tied) token embeddings, and position tokens by
pointing: a query from its state against each image token, since position token ``(r, c)`` is the
encoder's token of patch ``(r, c)``.

A grammar (:func:`grammar_mask`) says which tokens may come next: an object's first token or EOS at
place 0 (only EOS after ``max_objects`` objects), a class at the class's place, a top-left patch
inside the input's patch grid, and after it a bottom-right patch at or below-right of it (a box's
corners are ordered). Invalid tokens are masked out of the loss and of decoding, so the model spends
no capacity learning the syntax.

Scores: an object's *objectness* is ``1 - P(EOS)`` where its first token was chosen; its score for
class ``c`` is objectness times ``P(c)`` given that an object follows, times (``score
"class_corners"``) the geometric mean of its two corner tokens' probabilities. ``fill_slots`` never
chooses EOS: all ``max_objects`` slots are decoded, and the objects the model would not have written
rank low by their objectness (recall for AP at the tail of the ranking, nothing lost at its top).

Training can add a dense loss on the image tokens (``patch_weight``, :func:`patch_targets`): which
patches hold a corner or an object's centre, and its class.

``forward(images, targets)`` teacher-forces the target sequences (training); ``forward(images)``
decodes autoregressively with a key/value cache (greedy, top-k or nucleus). Both in any mode: only
the random object order depends on ``training``. Under ``torch.export`` / tracing the decoding loop
is unrolled to all ``3 * max_objects + 1`` steps, so greedy decoding exports to one ONNX graph
(checked against ONNX Runtime with ``max_objects`` 4 and 10; the graph grows with every step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plaindet.models.base import DetectionConfig, DetectionModel
from plaindet.models.layers import IMAGENET_MEAN, IMAGENET_STD, Attention, Mlp, Normalize, SelfAttention, attention, merge_heads
from plaindet.models.registry import register_model
from plaindet.ops.losses import loss_normalizer, sigmoid_focal_loss
from plaindet.models.vit import ViT, ViTConfig, deit_config

__all__ = [
    "PatchTokConfig",
    "PatchTokCriterion",
    "PatchTokDetector",
    "SeqDecoderConfig",
    "Vocabulary",
    "boxes_from_corners",
    "corner_tokens",
    "grammar_mask",
    "object_order",
    "patch_targets",
]

_DECODINGS = ("greedy", "topk", "nucleus")
_ORDERS = ("raster", "area")
_TOKEN_ORDERS = ("corners_class", "class_corners")
_SCORES = ("class", "class_corners")


# ----------------------------------------------------------------------------------------------------------------------
# Config


@dataclass
class SeqDecoderConfig:
    """The causal transformer decoder's shape; ``dropout`` is on the residual branches."""

    width: int = 256
    depth: int = 3
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.1


@dataclass
class PatchTokConfig(DetectionConfig):
    """Everything needed to rebuild a patch-token detector; saved inside every checkpoint.

    ``backbone``: a DeiT-flavoured ViT (:func:`~plaindet.models.vit.deit_config`).

    ``image_size`` fixes the vocabulary's ``(image_size / patch_size) ** 2`` position tokens, so inputs
    may not be larger than it on either side (smaller and non-square are fine).

    Sequences: ``max_objects`` per image (the largest ones when there are more), each as three tokens
    in ``token_order`` (``"corners_class"``: top-left, bottom-right, class; ``"class_corners"``: class
    first), objects in ``object_order`` (``"raster"``: by top-left patch, row by row; ``"area"``: largest first), or in a
    new random order for every sample in training when ``random_order`` is set.

    Decoding: ``decoding`` is ``"greedy"``, ``"topk"`` (sample among the ``top_k`` most likely tokens)
    or ``"nucleus"`` (sample from the smallest set holding probability ``top_p``); ``temperature``
    divides the logits before sampling. Greedy decoding is deterministic. ``fill_slots``: never choose
    EOS, decode all ``max_objects`` objects (ranked by objectness, see the module docstring).
    ``score``: ``"class"`` (objectness times class probability) or ``"class_corners"`` (times the
    corners' geometric mean too). ``multi_label``: every class of every decoded box is a detection
    with its own score (else only the decoded class).

    Measured on the shapes set's validation split (``benchmarks/bench_patchtok.py``, patchtok-ti at
    256 px, lr 1e-3, one set of weights after 490 steps, decoded each way): ``multi_label`` AP 0.005,
    AP50 0.021 against 0.003, 0.012 without; ``fill_slots`` 0.003, 0.009 alone and 0.004, 0.016 with
    ``multi_label`` (so it is off); ``score "class"`` 0.004, 0.011 against 0.004, 0.016 for
    ``"class_corners"``. ``token_order``: after 228 steps at lr 3e-4 the two orders were level
    (teacher-forced top-left / bottom-right / class accuracy 0.077 / 0.183 / 0.326 corners first,
    0.086 / 0.197 / 0.329 class first; AP50 0.001 both); corners first is kept for the reason above.

    Loss: ``eos_weight`` scales the cross-entropy of the EOS tokens (Pix2Seq uses 0.1: a model that
    stops late is cheap for AP, one that stops early loses recall); ``offset_weight`` scales the L1
    loss of the sub-patch offsets; ``patch_weight`` (0: off) the dense focal loss on the image tokens
    (:func:`patch_targets`), an ablation switch: after 228 steps at lr 1e-3 weight 1.0 gave
    teacher-forced accuracies 0.114 / 0.226 / 0.337 and AP 0.000 against 0.131 / 0.257 / 0.346 and
    AP 0.002 without.
    """

    name: str = "patchtok"
    backbone: ViTConfig = field(default_factory=lambda: deit_config(192, 12, 3))
    backbone_trainable: bool = True
    decoder: SeqDecoderConfig = field(default_factory=SeqDecoderConfig)
    max_objects: int = 30
    token_order: str = "corners_class"
    object_order: str = "raster"
    random_order: bool = False
    decoding: str = "greedy"
    top_k: int = 5
    top_p: float = 0.9
    temperature: float = 1.0
    fill_slots: bool = False
    score: str = "class_corners"
    multi_label: bool = True
    eos_weight: float = 0.1
    offset_weight: float = 1.0
    patch_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % self.backbone.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the patch size {self.backbone.patch_size}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {self.max_objects}")
        if self.token_order not in _TOKEN_ORDERS:
            raise ValueError(f"token_order must be one of {_TOKEN_ORDERS}, got {self.token_order!r}")
        if self.score not in _SCORES:
            raise ValueError(f"score must be one of {_SCORES}, got {self.score!r}")
        if self.object_order not in _ORDERS:
            raise ValueError(f"object_order must be one of {_ORDERS}, got {self.object_order!r}")
        if self.decoding not in _DECODINGS:
            raise ValueError(f"decoding must be one of {_DECODINGS}, got {self.decoding!r}")
        if self.top_k < 1 or not 0.0 < self.top_p <= 1.0 or self.temperature <= 0.0:
            raise ValueError(
                f"need top_k >= 1, 0 < top_p <= 1 and temperature > 0; got {self.top_k}, {self.top_p}, {self.temperature}"
            )

    def model_class(self) -> type:
        return PatchTokDetector

    def build(self, backbone_weights: Any = None) -> PatchTokDetector:
        """A new model; ``backbone_weights`` (DeiT weights: a ``.safetensors``/``.pth`` file or state dict
        in timm's layout, see :mod:`~plaindet.models.vit_weights`) initializes the encoder, which keeps
        training unless ``backbone_trainable`` is off."""
        model = PatchTokDetector(self)
        if backbone_weights is not None:
            from plaindet.models.vit_weights import load_vit_weights

            load_vit_weights(model.backbone, backbone_weights)
        return model


@register_model
def patchtok_ti() -> PatchTokConfig:
    """DeiT-Ti/16 encoder (192 wide, 12 deep, 3 heads), 3-layer decoder 256 wide."""
    return PatchTokConfig(name="patchtok-ti", backbone=deit_config(192, 12, 3), decoder=SeqDecoderConfig(depth=3))


@register_model
def patchtok_s() -> PatchTokConfig:
    """DeiT-S/16 encoder (384 wide, 12 deep, 6 heads), 4-layer decoder 256 wide."""
    return PatchTokConfig(name="patchtok-s", backbone=deit_config(384, 12, 6), decoder=SeqDecoderConfig(depth=4))


# ----------------------------------------------------------------------------------------------------------------------
# Tokens: pure tensor math


@dataclass(frozen=True)
class Vocabulary:
    """Token ids for ``num_classes`` classes and a ``grid x grid`` patch grid (see the module docstring)."""

    num_classes: int
    grid: int

    @property
    def eos(self) -> int:
        return self.num_classes + self.grid * self.grid

    @property
    def bos(self) -> int:
        return self.eos + 1

    @property
    def pad(self) -> int:
        return self.eos + 2

    @property
    def size(self) -> int:
        return self.eos + 3

    def position_tokens(self, rows: int, cols: int, device: torch.device | None = None) -> Tensor:
        """``(rows * cols,)`` tokens of the patches of a ``rows x cols`` input grid, row by row."""
        r = torch.arange(rows, device=device)[:, None]
        c = torch.arange(cols, device=device)[None, :]
        return (self.num_classes + r * self.grid + c).flatten()

    def row_col(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Patch row and column of position ``tokens`` (any shape); other tokens give values out of the grid."""
        pos = tokens - self.num_classes
        return torch.div(pos, self.grid, rounding_mode="floor"), pos % self.grid


def corner_tokens(boxes: Tensor, vocab: Vocabulary, patch_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Boxes to corner position tokens and sub-patch offsets.

    Args:
        boxes: ``(N, 4)`` xyxy input pixels with positive width and height, inside
            ``[0, vocab.grid * patch_size]``.

    Returns:
        ``tl (N,)`` and ``br (N,)`` int64 position tokens of the patches holding the top-left corner and
        the bottom-right one, and ``offsets (N, 4)`` float: ``(x1, y1)`` within the top-left patch and
        ``(x2, y2)`` within the bottom-right one, in patch units, in [0, 1].
        :func:`boxes_from_corners` inverts this exactly.
    """
    g = vocab.grid
    x1, y1, x2, y2 = (boxes.float() / patch_size).unbind(-1)
    c1, r1 = x1.floor().clamp(0, g - 1), y1.floor().clamp(0, g - 1)
    # x2 and y2 are exclusive edges: the bottom-right patch is the one holding the point just inside,
    # so a box ending on a patch border (x2 = 32 with 16-px patches) ends in patch 1 at offset 1.0
    # rather than in patch 2 at offset 0. It is never left of / above the top-left patch.
    c2 = torch.maximum(x2.ceil() - 1, c1).clamp(max=g - 1)
    r2 = torch.maximum(y2.ceil() - 1, r1).clamp(max=g - 1)
    offsets = torch.stack([x1 - c1, y1 - r1, x2 - c2, y2 - r2], dim=-1).clamp(0.0, 1.0)
    k = vocab.num_classes
    tl = (k + r1 * g + c1).long()
    br = (k + r2 * g + c2).long()
    return tl, br, offsets


def boxes_from_corners(tl: Tensor, br: Tensor, offsets: Tensor, vocab: Vocabulary, patch_size: int) -> Tensor:
    """Inverse of :func:`corner_tokens`: ``tl (...)``, ``br (...)``, ``offsets (..., 4)`` -> boxes ``(..., 4)``
    xyxy input pixels (not clipped)."""
    r1, c1 = vocab.row_col(tl)
    r2, c2 = vocab.row_col(br)
    corners = torch.stack([c1, r1, c2, r2], dim=-1).to(offsets.dtype)
    return (corners + offsets) * patch_size


def object_order(boxes: Tensor, tl: Tensor, rule: str, max_objects: int, shuffle: bool = False) -> Tensor:
    """Indices of the objects to write, in writing order.

    The ``max_objects`` largest boxes are kept (the ones that matter most to a detector when an image
    has too many), then ordered by ``rule``: ``"area"`` largest first, or ``"raster"`` by top-left patch
    token ``tl`` (row by row; ties largest first). ``shuffle`` orders them randomly instead (torch's
    global generator).
    """
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = area.argsort(descending=True, stable=True)[:max_objects]
    if shuffle:
        return keep[torch.randperm(len(keep), device=keep.device)]
    if rule == "raster":
        return keep[tl[keep].argsort(stable=True)]
    if rule == "area":
        return keep
    raise ValueError(f"unknown object order {rule!r}; expected one of {_ORDERS}")


def patch_targets(
    tokens: Tensor, offset_targets: Tensor, vocab: Vocabulary, grid: tuple[int, int], tl_place: int, class_place: int
) -> Tensor:
    """Dense targets of the encoder's patches, read off the target sequences.

    Args:
        tokens: ``(B, T + 1)`` target sequences (BOS first, see ``PatchTokDetector.build_sequences``),
            objects written as triples with the top-left corner at ``tl_place`` (bottom-right after
            it) and the class at ``class_place``.
        offset_targets: ``(B, T, 2)`` the corners' sub-patch offsets, at each corner's input index.
        grid: ``(h, w)`` the input's patch grid.

    Returns:
        ``(B, h * w, 2 + K)`` float, patches row by row: 1 in channel 0 where a patch holds an
        object's top-left corner, in channel 1 its bottom-right corner, and in channel ``2 + c`` the
        patch holding the centre of an object of class ``c``; 0 elsewhere.
    """
    h, w = grid
    B, K = tokens.shape[0], vocab.num_classes
    n = (tokens.shape[1] - 1) // 3
    triples = tokens[:, 1 : 1 + 3 * n].reshape(B, n, 3)
    tl, br, cls = triples[..., tl_place], triples[..., tl_place + 1], triples[..., class_place]
    real = (tl >= K) & (tl < vocab.eos)  # slots after EOS hold EOS or PAD
    at = 1 + 3 * torch.arange(n, device=tokens.device) + tl_place  # (n,) input index of each top-left corner
    (r1, c1), (r2, c2) = vocab.row_col(tl), vocab.row_col(br)
    corner_offsets = torch.cat([offset_targets[:, at], offset_targets[:, at + 1]], dim=-1)  # (B, n, 4)
    cx = (c1 + corner_offsets[..., 0] + c2 + corner_offsets[..., 2]) / 2
    cy = (r1 + corner_offsets[..., 1] + r2 + corner_offsets[..., 3]) / 2
    centre = cy.floor().long().clamp(0, h - 1) * w + cx.floor().long().clamp(0, w - 1)
    image = torch.arange(B, device=tokens.device)[:, None].expand(B, n)[real]
    target = torch.zeros(B, h * w, 2 + K, device=tokens.device)
    ones = torch.ones(len(image), device=tokens.device)
    target.index_put_((image, (r1 * w + c1)[real], torch.zeros_like(image)), ones)
    target.index_put_((image, (r2 * w + c2)[real], torch.ones_like(image)), ones)
    target.index_put_((image, centre[real], 2 + cls[real]), ones)
    return target


def grammar_mask(
    inputs: Tensor, steps: Tensor, vocab: Vocabulary, grid: tuple[int, int], max_objects: int, class_first: bool = False
) -> Tensor:
    """Which tokens may follow, per step.

    Args:
        inputs: ``(B, T)`` the token at each step's input index (for a bottom-right step, the
            top-left token it must not precede).
        steps: ``(T,)`` the input indices ``t`` (the step predicts token ``t + 1`` of the sequence,
            at place ``t % 3`` of its object).
        grid: ``(h, w)`` the input's patch grid, at most ``vocab.grid`` on each side.
        max_objects: after this many objects only EOS may come.
        class_first: objects are ``class, tl, br`` (else ``tl, br, class``).

    Returns:
        ``(B, T, vocab.size)`` bool, True where allowed. BOS and PAD are never allowed. For a
        bottom-right step whose input isn't a position token (a step after EOS) nothing is allowed.
    """
    h, w = grid
    device = inputs.device
    tokens = torch.arange(vocab.size, device=device)
    row, col = vocab.row_col(tokens)
    is_pos = (tokens >= vocab.num_classes) & (tokens < vocab.eos)
    in_grid = is_pos & (row < h) & (col < w)  # (V,)
    kind = (steps % 3)[None, :, None]  # (1, T, 1)

    may_add = (steps < 3 * max_objects)[:, None]  # (T, 1)
    is_class, is_eos = (tokens < vocab.num_classes)[None, :], (tokens == vocab.eos)[None, :]
    tl_row, tl_col = vocab.row_col(inputs)
    br_ok = in_grid & (row >= tl_row[..., None]) & (col >= tl_col[..., None])  # (B, T, V)
    # An object's first token, or EOS (T, V); then its other two.
    if class_first:
        first, second, third = (is_class & may_add) | is_eos, in_grid[None], br_ok
    else:
        first, second, third = (in_grid[None] & may_add) | is_eos, br_ok, is_class
    # Boolean algebra rather than torch.where: ONNX Runtime has no Where kernel for booleans.
    return ((kind == 0) & first[None]) | ((kind == 1) & second) | ((kind == 2) & third)


# ----------------------------------------------------------------------------------------------------------------------
# Decoder


class CausalSelfAttention(SelfAttention):
    """Causal self-attention with a key/value cache for decoding one token at a time."""

    def forward(self, x: Tensor, past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x (B, L, C)``; ``past``: the cached ``(k, v)``, each ``(B, heads, S, C / heads)``, of the ``S``
        earlier tokens (then ``L`` must be 1). Returns the output and the keys/values to cache."""
        q, k, v = self.qkv_heads(x)
        if past is None:
            out = attention(q, k, v, is_causal=True)
        else:
            if x.shape[1] != 1:
                raise ValueError("with a cache, decode one token at a time")
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
            # The one new token comes last: it may see every cached token, so no mask.
            out = attention(q, k, v)
        return self.proj(merge_heads(out)), (k, v)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: causal self-attention, cross-attention to the image, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        # Attends from the decoder's tokens to the image's; the keys and values of the image tokens
        # are projected once per image (Attention.keys_values), not once per decoded token.
        self.cross_attn = Attention(width, heads)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), "gelu")
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, memory_kv: tuple[Tensor, Tensor], past: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        attn, present = self.self_attn(self.norm1(x), past)
        x = x + self.dropout(attn)
        x = x + self.dropout(self.cross_attn.attend(self.norm2(x), *memory_kv))
        return x + self.dropout(self.mlp(self.norm3(x))), present


# ----------------------------------------------------------------------------------------------------------------------
# Model


class PatchTokDetector(DetectionModel):
    """DeiT encoder and causal token decoder (see the module docstring).

    ``forward(images, targets=None)``: ``images (B, 3, H, W)`` ``uint8`` or float in [0, 255], ``H`` and
    ``W`` multiples of the patch size and at most ``config.image_size``.

    With ``targets`` (a list of ``B`` dicts with ``boxes (N, 4)`` xyxy input pixels and ``labels (N,)``)
    the target sequences are teacher-forced; returns, with ``T = 1 + 3 * n`` for the most objects
    ``n`` in the batch:

    - ``logits (B, T, V)``: next-token logits over the whole vocabulary, not masked (see :meth:`_logits`);
    - ``allowed (B, T, V)`` bool: the grammar (:func:`grammar_mask`);
    - ``tokens (B, T + 1)`` int64: the target sequences, BOS first (their order, random or not, is
      the one the loss must use);
    - ``offsets (B, T, 2)``: predicted sub-patch offsets ``(x, y)`` in [0, 1] at every input index,
      meaningful at corner tokens; ``offset_targets (B, T, 2)`` and ``offset_mask (B, T)`` bool.

    Without ``targets`` the sequences are decoded (``config.decoding``) and it returns, per object slot
    (``M = config.max_objects``): ``boxes (B, M, 4)`` xyxy input pixels, clipped; ``scores (B, M)``,
    the class probability times the geometric mean of the two corner probabilities; ``labels (B, M)``
    int64; ``tokens (B, 3 * M + 2)`` the decoded sequences. Empty slots, and boxes left empty because
    their offsets crossed within one patch, are all zeros, score included.
    """

    def __init__(self, config: PatchTokConfig) -> None:
        super().__init__()
        self.config = config
        bb, dec = config.backbone, config.decoder
        self.patch_size = bb.patch_size
        self.vocab = Vocabulary(config.num_classes, config.image_size // bb.patch_size)
        # Where the class and the top-left corner sit in an object's three tokens (bottom-right follows top-left).
        self.class_first = config.token_order == "class_corners"
        self.class_place, self.tl_place = (0, 1) if self.class_first else (2, 0)
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.backbone = ViT(bb)
        self.memory_proj = nn.Linear(bb.width, dec.width)
        self.memory_norm = nn.LayerNorm(dec.width)
        # One table embeds the tokens the decoder reads, scores the class and special tokens it writes
        # (tied output, as in GPT-2) and marks each image patch in the memory with its position
        # token's vector, so the decoder knows where each image token it attends to lies.
        self.token_embed = nn.Embedding(self.vocab.size, dec.width)
        # Position tokens are scored by pointing: a query from the decoder state against every image
        # token. A position token *is* an encoder token, so its logit can come from that token's own
        # features rather than a fixed row of a table. On 400 shapes images, after 300 steps, held-out
        # top-left patches were exactly right 20% of the time this way and 6% with tied logits.
        self.position_query = nn.Linear(dec.width, dec.width)
        self.seq_pos_embed = nn.Parameter(torch.empty(1 + 3 * config.max_objects, dec.width))
        self.layers = nn.ModuleList(
            [DecoderLayer(dec.width, dec.heads, dec.mlp_ratio, dec.dropout) for _ in range(dec.depth)]
        )
        self.norm = nn.LayerNorm(dec.width)
        # Offsets from the decoder state and the image feature of the chosen patch: where in the patch
        # an edge lies is local evidence.
        self.offset_head = nn.Sequential(nn.Linear(2 * dec.width, dec.width), nn.GELU(), nn.Linear(dec.width, 2))
        # Training only: a dense loss on the image tokens (corners and centres of the objects, see
        # patch_targets) gives the encoder a signal at every patch, where the sequence loss reaches
        # it only through the decoder's few pointers per image.
        self.patch_head = nn.Linear(dec.width, 2 + config.num_classes) if config.patch_weight > 0 else None
        self._reset_decoder()
        self.set_backbone_trainable(config.backbone_trainable)

    def _reset_decoder(self) -> None:
        # Unit-variance embeddings: the same vectors mark the memory's patches, next to unit-variance
        # normalized features. The tied logits are scaled by width ** -0.5, so they start at unit spread.
        nn.init.normal_(self.token_embed.weight, std=1.0)
        nn.init.normal_(self.seq_pos_embed, std=1.0)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("backbone."):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.patch_head is not None:  # the focal loss's prior: about 1 patch in 100 is positive
            nn.init.constant_(self.patch_head.bias, -4.6)

    @property
    def size_divisor(self) -> int:
        return self.patch_size

    def set_backbone_trainable(self, trainable: bool) -> None:
        self.config.backbone_trainable = trainable
        for p in self.backbone.parameters():
            p.requires_grad_(trainable)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in self.backbone.no_weight_decay()} | {"token_embed.weight", "seq_pos_embed"}

    # --- pieces ---

    def encode(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``images (B, 3, H, W)`` in [0, 255] -> ``memory (B, h * w, width)`` and the grid ``(h, w)``."""
        H, W = images.shape[-2:]
        p, g = self.patch_size, self.vocab.grid
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} must be a multiple of {p}; pad the images first")
        h, w = H // p, W // p
        if h > g or w > g:
            raise ValueError(
                f"input size {H}x{W} is larger than the model's image_size {self.config.image_size}: its position "
                f"vocabulary covers {g}x{g} patches; resize the images so the long side is at most {self.config.image_size}"
            )
        tokens = self.backbone.forward_features(self.normalize(images))[:, 1:]
        memory = self.memory_norm(self.memory_proj(tokens))
        return memory + self.token_embed.weight[self.vocab.position_tokens(h, w, images.device)], (h, w)

    def _decode(
        self, tokens: Tensor, start: int, memory_kv: list[tuple[Tensor, Tensor]], past: list | None = None
    ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """``tokens (B, L)`` at input indices ``start ..`` -> normalized hidden states ``(B, L, width)`` and
        each layer's keys/values. ``past``: the cache of the earlier tokens (then ``L`` is 1)."""
        x = self.token_embed(tokens) + self.seq_pos_embed[start : start + tokens.shape[1]]
        presents = []
        for i, layer in enumerate(self.layers):
            x, present = layer(x, memory_kv[i], None if past is None else past[i])
            presents.append(present)
        return self.norm(x), presents

    def _logits(self, hidden: Tensor, memory: Tensor, grid: tuple[int, int]) -> Tensor:
        """Logits ``(B, L, V)`` over the whole vocabulary for ``hidden (B, L, C)``.

        Class and special tokens: tied to their embeddings. The position tokens of the input's
        ``h x w`` grid: scaled dot products of a query with the ``memory (B, h * w, C)`` token of each
        patch. Position tokens outside that grid keep their tied logits; the grammar masks them.
        """
        scale = hidden.shape[-1] ** -0.5
        logits = F.linear(hidden, self.token_embed.weight) * scale
        pointer = self.position_query(hidden) @ memory.transpose(1, 2).to(hidden.dtype) * scale
        positions = self.vocab.position_tokens(grid[0], grid[1], hidden.device)
        return logits.index_copy(-1, positions, pointer.to(logits.dtype))

    def _offsets(self, hidden: Tensor, memory: Tensor, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Sub-patch offsets ``(B, L, 2)`` in [0, 1] of ``tokens (B, L)`` read as corners, from ``hidden (B, L, C)``."""
        row, col = self.vocab.row_col(tokens)
        index = row.clamp(0, grid[0] - 1) * grid[1] + col.clamp(0, grid[1] - 1)  # any patch for non-corners
        patch = memory.gather(1, index[..., None].expand(-1, -1, memory.shape[-1]))
        return self.offset_head(torch.cat([hidden, patch.to(hidden.dtype)], dim=-1)).sigmoid()

    def build_sequences(
        self, targets: list[dict], input_size: tuple[int, int], shuffle: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Target token sequences of a batch.

        Args:
            targets: per image ``boxes (N, 4)`` xyxy input pixels and ``labels (N,)``.
            input_size: ``(H, W)`` of the batch; boxes are clipped to it and empty ones dropped.
            shuffle: a random object order per image instead of ``config.object_order``.

        Returns:
            ``tokens (B, T + 1)`` int64 (BOS, triples, EOS, PAD), ``offset_targets (B, T, 2)`` and
            ``offset_mask (B, T)`` bool, set at each corner token's input index (where the corner is
            read, so its offset is predicted once its patch is known); ``T = 1 + 3 * n``
            for the most objects ``n`` of any image (at most ``max_objects``).
        """
        vocab, p = self.vocab, self.patch_size
        device = self.token_embed.weight.device
        H, W = input_size
        limit = torch.tensor([W, H, W, H], dtype=torch.float32, device=device).clamp(max=vocab.grid * p)
        bodies, corner_offsets = [], []
        for target in targets:
            boxes = target["boxes"].to(device, torch.float32).reshape(-1, 4).clamp(min=0)
            boxes = torch.minimum(boxes, limit)
            labels = target["labels"].to(device, torch.int64).reshape(-1)
            if len(labels) != len(boxes):
                raise ValueError(f"a target has {len(boxes)} boxes but {len(labels)} labels")
            if len(labels) and (labels.min() < 0 or labels.max() >= vocab.num_classes):
                raise ValueError(f"labels must be in [0, {vocab.num_classes}), got {labels.unique().tolist()}")
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
            tl, br, offsets = corner_tokens(boxes, vocab, p)
            order = object_order(boxes, tl, self.config.object_order, self.config.max_objects, shuffle)
            triple = [labels[order], tl[order], br[order]] if self.class_first else [tl[order], br[order], labels[order]]
            bodies.append(torch.stack(triple, dim=1).flatten())
            corner_offsets.append(offsets[order])
        n_max = max(len(b) // 3 for b in bodies)
        T = 1 + 3 * n_max
        tokens = torch.full((len(targets), T + 1), vocab.pad, dtype=torch.int64, device=device)
        tokens[:, 0] = vocab.bos
        offset_targets = torch.zeros(len(targets), T, 2, device=device)
        offset_mask = torch.zeros(len(targets), T, dtype=torch.bool, device=device)
        for i, (body, offsets) in enumerate(zip(bodies, corner_offsets)):
            n = len(offsets)
            tokens[i, 1 : 1 + 3 * n] = body
            tokens[i, 1 + 3 * n] = vocab.eos
            tl_index = 3 * torch.arange(n, device=device) + 1 + self.tl_place  # object j's top-left is token 1 + 3j + place
            offset_targets[i, tl_index] = offsets[:, :2]
            offset_targets[i, tl_index + 1] = offsets[:, 2:]
            offset_mask[i, tl_index] = True
            offset_mask[i, tl_index + 1] = True
        return tokens, offset_targets, offset_mask

    # --- forward ---

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict[str, Tensor]:
        memory, grid = self.encode(images)
        memory_kv = [layer.cross_attn.keys_values(memory, memory) for layer in self.layers]
        if targets is None:
            return self._generate(memory, memory_kv, grid, tuple(images.shape[-2:]))
        shuffle = self.training and self.config.random_order
        tokens, offset_targets, offset_mask = self.build_sequences(targets, tuple(images.shape[-2:]), shuffle)
        inputs = tokens[:, :-1]
        hidden, _ = self._decode(inputs, 0, memory_kv)
        steps = torch.arange(inputs.shape[1], device=inputs.device)
        dense = {}
        if self.patch_head is not None:
            dense = {
                "patch_logits": self.patch_head(memory),
                "patch_targets": patch_targets(tokens, offset_targets, self.vocab, grid, self.tl_place, self.class_place),
            }
        return dense | {
            "logits": self._logits(hidden, memory, grid),
            "allowed": grammar_mask(inputs, steps, self.vocab, grid, self.config.max_objects, self.class_first),
            "tokens": tokens,
            "offsets": self._offsets(hidden, memory, inputs, grid),
            "offset_targets": offset_targets,
            "offset_mask": offset_mask,
        }

    def _generate(
        self, memory: Tensor, memory_kv: list[tuple[Tensor, Tensor]], grid: tuple[int, int], input_size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Autoregressive decoding with a key/value cache: one token per step, ``3 * M + 1`` steps at most."""
        cfg, vocab = self.config, self.vocab
        B, M, K, device = memory.shape[0], cfg.max_objects, vocab.num_classes, memory.device
        labels = torch.zeros(B, M, dtype=torch.int64, device=device)
        corners = torch.full((B, M, 2), vocab.pad, dtype=torch.int64, device=device)  # tl, br tokens
        offsets = torch.zeros(B, M, 4, device=device)
        corner_probs = torch.zeros(B, M, 2, device=device)  # of the tl and br tokens chosen
        class_probs = torch.zeros(B, M, K, device=device)  # every class, given that there is an object
        objectness = torch.zeros(B, M, device=device)  # 1 - P(EOS) where the object's first token came
        emitted = torch.zeros(B, M, dtype=torch.bool, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        token = torch.full((B,), vocab.bos, dtype=torch.int64, device=device)
        is_eos = torch.arange(vocab.size, device=device) == vocab.eos
        corner_place = {self.tl_place: 0, self.tl_place + 1: 1}  # place in the triple -> corner (tl 0, br 1)
        sequence = [token]
        past = None
        for t in range(3 * M + 1):
            hidden, past = self._decode(token[:, None], t, memory_kv, past)
            if t > 0 and (t - 1) % 3 in corner_place:  # the input is a corner: predict its offset within the patch
                col = 2 * corner_place[(t - 1) % 3]
                offset = self._offsets(hidden, memory, token[:, None], grid)[:, 0]
                offsets[:, (t - 1) // 3, col : col + 2] = offset.float()
            if t == 3 * M:  # M objects written: only EOS may follow
                sequence.append(torch.where(done, vocab.pad, vocab.eos))
                break
            place, j = t % 3, t // 3
            allowed = grammar_mask(token[:, None], torch.tensor([t], device=device), vocab, grid, M, self.class_first)[:, 0]
            logits = self._logits(hidden, memory, grid)[:, 0].float()
            logits = logits.masked_fill(~(allowed | done[:, None]), float("-inf"))
            # Probabilities given that an object follows: EOS's share is the objectness, kept apart.
            probs = logits.masked_fill(is_eos, float("-inf")).softmax(-1)
            # fill_slots: EOS is never chosen; the objects after the model would have stopped then
            # carry its low objectness, so they rank below the ones it is sure of.
            choice = self._choose(logits.masked_fill(is_eos, float("-inf")) if cfg.fill_slots else logits)
            choice = torch.where(done, vocab.pad, choice)
            if place == 0:
                objectness[:, j] = 1.0 - logits.softmax(-1)[:, vocab.eos]
                done = done | (choice == vocab.eos)
                emitted[:, j] = ~done
            if place == self.class_place:
                labels[:, j] = choice.clamp(max=K - 1)
                class_probs[:, j] = probs[:, :K]
            else:
                corner = corner_place[place]
                corners[:, j, corner] = choice
                corner_probs[:, j, corner] = probs.gather(1, choice.clamp(max=vocab.size - 1)[:, None])[:, 0]
            sequence.append(choice)
            token = choice
            # Stop once every sequence has ended, except when tracing or exporting (a graph can't
            # branch on data) or on the meta device (counting FLOPs: no data to branch on): there
            # the loop is unrolled to its full length (the ended rows just keep writing PAD).
            unrolled = torch.jit.is_tracing() or torch.compiler.is_exporting() or done.is_meta
            if not unrolled and bool(done.all()):
                break
        tokens = torch.full((B, 3 * M + 2), vocab.pad, dtype=torch.int64, device=device)
        tokens[:, : len(sequence)] = torch.stack(sequence, dim=1)

        boxes = boxes_from_corners(corners[..., 0], corners[..., 1], offsets, vocab, self.patch_size)
        H, W = input_size
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([W, H, W, H], dtype=boxes.dtype, device=device))
        valid = emitted & (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        # The class probability says what, the corners' say where; their geometric mean keeps a
        # box's score from shrinking just because it takes two tokens to place.
        certainty = objectness * valid
        if cfg.score == "class_corners":
            certainty = certainty * (corner_probs[..., 0] * corner_probs[..., 1]).sqrt()
        class_scores = class_probs * certainty[..., None]
        # Empty slots and boxes whose offsets crossed (both corners in one patch) become zero boxes.
        return {
            "boxes": boxes * valid[..., None],
            "scores": class_scores.gather(2, labels[..., None])[..., 0],
            "labels": labels * valid,
            "class_scores": class_scores,
            "tokens": tokens,
        }

    def _choose(self, logits: Tensor) -> Tensor:
        """One token per row of masked ``logits (B, V)``: greedy, top-k or nucleus sampling."""
        cfg = self.config
        if cfg.decoding == "greedy":
            return logits.argmax(-1)
        logits = logits / cfg.temperature
        if cfg.decoding == "topk":
            kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        else:  # nucleus: the most likely tokens until their probability reaches top_p (at least one)
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            p = sorted_logits.softmax(-1)
            outside = p.cumsum(-1) - p >= cfg.top_p
            sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
        return torch.multinomial(logits.softmax(-1), 1)[:, 0]

    @torch.no_grad()
    def postprocess(self, outputs: dict[str, Tensor], max_detections: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Decoded objects sorted by score, padded with score-0 detections to a fixed size.

        Returns ``boxes (B, k, 4)`` xyxy input pixels, ``scores (B, k)`` sorted high to low and
        ``labels (B, k)``, with ``k = max_detections`` (default ``config.max_detections``).
        """
        k = max_detections or self.config.max_detections
        if self.config.multi_label:  # every (slot, class) pair is a detection, as in DETR's postprocess
            flat = outputs["class_scores"].float().flatten(1)
            num_classes = outputs["class_scores"].shape[-1]
            scores, order = flat.topk(min(k, flat.shape[1]), dim=1)
            labels, order = order % num_classes, torch.div(order, num_classes, rounding_mode="floor")
        else:
            # topk, not sort: ONNX has no stable sort, and the order of tied (zero) scores doesn't matter.
            scores, order = outputs["scores"].float().topk(min(k, outputs["scores"].shape[1]), dim=1)
            labels = outputs["labels"].gather(1, order)
        boxes = outputs["boxes"].float().gather(1, order[..., None].expand(-1, -1, 4))
        pad = k - scores.shape[1]
        if pad > 0:
            scores, labels = F.pad(scores, (0, pad)), F.pad(labels, (0, pad))
            boxes = F.pad(boxes, (0, 0, 0, pad))
        return boxes, scores, labels

    def criterion(self) -> nn.Module:
        return PatchTokCriterion(self.vocab, self.config.eos_weight, self.config.offset_weight, self.config.patch_weight)


class PatchTokCriterion(nn.Module):
    """Grammar-masked token cross-entropy plus L1 on the sub-patch offsets.

    ``forward(outputs, targets)`` takes the teacher-forced outputs of :class:`PatchTokDetector` (which
    carry the target sequences, so ``targets`` is not read again) and returns ``loss``, ``loss_ce``
    (mean over the non-PAD targets, EOS weighted by ``eos_weight``) and ``loss_offset`` (mean absolute
    error over the real corners' ``x, y`` offsets, in patch units).
    """

    def __init__(self, vocab: Vocabulary, eos_weight: float = 0.1, offset_weight: float = 1.0, patch_weight: float = 0.0) -> None:
        super().__init__()
        self.vocab = vocab
        self.eos_weight = eos_weight
        self.offset_weight = offset_weight
        self.patch_weight = patch_weight

    def forward(self, outputs: dict[str, Tensor], targets: list[dict] | None = None) -> dict[str, Tensor]:
        target = outputs["tokens"][:, 1:]
        valid = target != self.vocab.pad
        # Only the real steps: a step after EOS may allow no token at all, and its all -inf row
        # would turn the loss into NaN even with zero weight.
        logits = outputs["logits"][valid].float().masked_fill(~outputs["allowed"][valid], float("-inf"))
        target = target[valid]
        ce = F.cross_entropy(logits, target, reduction="none")
        weight = torch.where(target == self.vocab.eos, self.eos_weight, 1.0)
        loss_ce = (ce * weight).sum() / weight.sum()
        mask = outputs["offset_mask"]
        error = (outputs["offsets"].float() - outputs["offset_targets"]).abs() * mask[..., None]
        loss_offset = error.sum() / (2 * mask.sum()).clamp(min=1)
        losses = {"loss": loss_ce + self.offset_weight * loss_offset, "loss_ce": loss_ce, "loss_offset": loss_offset}
        if self.patch_weight > 0:
            patch = outputs["patch_targets"]
            # Per object, as the focal loss of dense detectors is: its three positives' share.
            loss_patch = sigmoid_focal_loss(outputs["patch_logits"], patch) / loss_normalizer(patch[..., 0].sum().item(), patch.device)
            losses["loss_patch"] = loss_patch
            losses["loss"] = losses["loss"] + self.patch_weight * loss_patch
        return losses

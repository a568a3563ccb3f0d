"""Building blocks shared by every model family: input normalization, MLP, attention, stochastic depth.

Each is written once here (as ``timm.layers`` does for timm) and composed by the models:

- :class:`Normalize`: images in [0, 255] to a backbone's normalized input, inside the model so a
  deployed graph takes raw pixels. :data:`CLIP_MEAN`/:data:`CLIP_STD`,
  :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` and :data:`INCEPTION_MEAN`/:data:`INCEPTION_STD` are the
  statistics of the pretrained backbones.
- :class:`Mlp`: ``fc2(dropout(act(fc1(x))))``, the feed-forward of every transformer here.
- :class:`SelfAttention`: multi-head self-attention with one fused ``qkv`` projection (the ViT, and
  the patch-token decoder's causal attention, which extend it).
- :class:`Attention`: multi-head attention with separate ``q/k/v`` projections, for queries that
  attend to other tokens or whose keys carry position encodings the values don't (DETR's encoder and
  decoder, DePerceiver's latents, the patch-token decoder's cross-attention).
- :class:`LayerNorm2d`: LayerNorm over the channels of a feature map (the neck and the dense head).
- :func:`drop_path`: stochastic depth of a residual branch.

Every attention here goes through :func:`attention`: ``F.scaled_dot_product_attention`` (a fused
flash or memory-efficient kernel where the device has one), except where two batched matrix
products and a softmax are measured to be faster (training on CPU: see :func:`attention`). Tensors
are ``(B, L, C)``; heads are split into ``(B, heads, L, C / heads)`` by :func:`split_heads` and
merged back by :func:`merge_heads`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per-channel RGB mean and std for pixel values scaled to [0, 1]: OpenAI CLIP's preprocessing, and
# the ImageNet statistics of torchvision's ResNets and of DeiT.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Pixels scaled to [-1, 1]: Google's BiT (and Inception) preprocessing; timm calls them IMAGENET_INCEPTION_*.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class Normalize(nn.Module):
    """``(images - mean * 255) / (std * 255)``: ``uint8`` or float images in [0, 255] -> float32.

    The statistics are buffers that are not saved (they are fixed by the backbone's pretraining).
    """

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return (images.float() - self.mean) / self.std


_QUICK_GELU = 1.702


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``: OpenAI's weights were trained with it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(_QUICK_GELU * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"quick_gelu": QuickGELU, "gelu": nn.GELU, "relu": nn.ReLU}


class Mlp(nn.Module):
    """``fc2(dropout(act(fc1(x))))``: ``(..., dim) -> (..., dim)`` through ``hidden`` channels.

    ``act`` is a key of :data:`ACTIVATIONS`. The names ``fc1``/``fc2`` are timm's and DETR's.
    """

    def __init__(self, dim: int, hidden: int, act: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.act, QuickGELU) and type(self.fc1) is nn.Linear and type(self.fc2) is nn.Linear and not _exporting():
            return self._quick_gelu_forward(x)
        return self.fc2(self.dropout(self.act(self.fc1(x))))

    def _quick_gelu_forward(self, x: Tensor) -> Tensor:
        """The same function with QuickGELU's three elementwise passes as one: ``z sigmoid(1.702 z)`` is
        ``silu(1.702 z) / 1.702``, and both factors ride in the matrix products' ``alpha`` for free, so
        no weight is copied or rescaled. Plain ``nn.Linear`` layers only (a LoRA-wrapped one runs the
        module path), and never while exporting, so ONNX graphs keep their plain products."""
        shape = x.shape
        z = torch.addmm(self.fc1.bias * _QUICK_GELU, x.reshape(-1, shape[-1]), self.fc1.weight.t(), alpha=_QUICK_GELU)
        out = torch.addmm(self.fc2.bias, self.dropout(F.silu(z)), self.fc2.weight.t(), alpha=1.0 / _QUICK_GELU)
        return out.view(*shape[:-1], out.shape[-1])


def _exporting() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a ``(B, C, H, W)`` map (as in ViTDet and ConvNeXt)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """``(B, L, C) -> (B, heads, L, C / heads)``."""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, heads, L, d) -> (B, L, heads * d)``, the inverse of :func:`split_heads`."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# Below this many keys, fp32 training on CPU is faster through two matrix products than through the
# flash kernel; in bf16 they are faster at every length measured (benchmarks/bench_attention.py --train).
MATMUL_MAX_KEYS_FP32 = 128


def _use_matmul(q: Tensor, k: Tensor) -> bool:
    """Whether :func:`attention` takes the matmul path: on CPU, when a backward pass will follow."""
    if q.device.type != "cpu" or not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
        return False
    return q.dtype == torch.bfloat16 or k.shape[-2] <= MATMUL_MAX_KEYS_FP32


def attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0) -> Tensor:
    """``softmax(q k^T / sqrt(d) + mask) v`` for ``q (..., Lq, d)``, ``k``, ``v (..., Lk, d)``; ``attn_mask``
    bool (True = may attend) or additive, broadcastable to ``(..., Lq, Lk)``; as ``F.scaled_dot_product_attention``.

    On CPU in training (a backward pass will follow) this runs as two batched matrix products and a
    softmax: the CPU flash kernel's backward is slow at the sequence lengths of windowed ViTs and in
    bf16 (``python benchmarks/bench_attention.py --size 256 --window 8 --batch 8 --train --models Ti``,
    forward and backward in bf16: windows of 64 patches 20.9 ms -> 3.5 ms, global blocks over 257
    tokens 14.2 -> 11.7 ms). The scores and the softmax are float32, as in the fused kernel, so the two paths differ
    by rounding only; inference and export always use ``F.scaled_dot_product_attention``, the faster there.
    """
    if not _use_matmul(q, k):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal)
    return matmul_attention(q, k, v, attn_mask, is_causal, dropout_p)


def matmul_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0) -> Tensor:
    """:func:`attention`'s path for CPU training: two batched matrix products and a softmax, same arguments."""
    # Scores and softmax in float32, as the fused kernel keeps them (bf16 scores lose the small
    # differences between large logits); autocast off so the float32 product stays float32.
    with torch.autocast(q.device.type, enabled=False):
        scores = torch.matmul(q.float(), k.float().transpose(-2, -1)) * (q.shape[-1] ** -0.5)
        if is_causal:
            # top-left aligned, as F.scaled_dot_product_attention's is_causal
            attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        weights = scores.softmax(-1).to(v.dtype)
        if dropout_p > 0.0:
            weights = F.dropout(weights, dropout_p)
        return torch.matmul(weights, v)


def _check_heads(dim: int, heads: int) -> None:
    if dim % heads:
        raise ValueError(f"width {dim} is not divisible by {heads} heads")


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused projection ``qkv`` (q, k, v stacked) and ``proj``.

    ``forward(x, attn_mask=None, is_causal=False)``: ``x (B, L, C) -> (B, L, C)``; ``attn_mask`` as
    in ``F.scaled_dot_product_attention`` (bool, True = may attend). Subclasses change how the heads
    attend (windows, a key/value cache) through :meth:`qkv_heads`.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        _check_heads(dim, heads)
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (B, L, C)`` -> ``q, k, v``, each ``(B, heads, L, C / heads)``."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        q, k, v = self.qkv_heads(x)
        return self.proj(merge_heads(attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)))


class Attention(nn.Module):
    """Multi-head attention with separate ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``.

    ``forward(query, key, value, mask=None)``: ``query (B, Lq, D)``, ``key (B, Lk, D)``, ``value (B, Lk, D)`` ->
    ``(B, Lq, D)``. The three inputs may differ (DETR adds position encodings to queries and keys,
    not to values). :meth:`keys_values` and :meth:`attend` split the work, so keys and values that
    many queries read (an image's tokens, while a decoder writes one token at a time) are projected
    once. ``dropout`` is on the attention weights, in training only.
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_heads(dim, heads)
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def keys_values(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """``key``, ``value (B, Lk, D)`` -> projected ``k``, ``v``, each ``(B, heads, Lk, D / heads)``."""
        return split_heads(self.k_proj(key), self.heads), split_heads(self.v_proj(value), self.heads)

    def attend(self, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """``query (B, Lq, D)`` against projected ``k``, ``v`` (from :meth:`keys_values`) -> ``(B, Lq, D)``;
        ``mask``: bool ``(Lq, Lk)``, True where a query may attend, or ``None``."""
        q = split_heads(self.q_proj(query), self.heads)
        out = attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(merge_heads(out))

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.attend(query, *self.keys_values(key, value), mask)

"""The plain ViT backbone of every ViT model here: CLIP's image encoder and DeiT, with ViTDet's window attention.

One module in timm's parameter layout serves both pretrained families (``ViTConfig`` says which
one a model is), so timm's CLIP and DeiT checkpoints load by name and the others are renamed by
:mod:`plaindet.models.vit_weights`::

    patch_embed.proj.weight                      (width, 3, p, p); ``.bias`` with patch_bias (DeiT)
    cls_token                                    (1, 1, width)
    pos_embed                                    (1, 1 + grid * grid, width), class token first
    norm_pre.{weight,bias}                       with pre_norm (CLIP's ln_pre)
    blocks.{i}.norm1.{weight,bias}
    blocks.{i}.attn.qkv.{weight,bias}            (3 * width, width), q, k, v stacked
    blocks.{i}.attn.proj.{weight,bias}
    blocks.{i}.norm2.{weight,bias}
    blocks.{i}.mlp.fc1.{weight,bias}
    blocks.{i}.mlp.fc2.{weight,bias}
    norm.{weight,bias}                           (CLIP's ln_post)

=====================  ===================================  ==================================
setting                CLIP (:func:`clip_config`)           DeiT (:func:`deit_config`)
=====================  ===================================  ==================================
patch embedding bias   no                                   yes
norm before blocks     yes (``ln_pre``)                     no
activation             ``quick_gelu``                       ``gelu`` (exact)
LayerNorm eps          1e-5                                 1e-6
input statistics       :data:`~plaindet.models.layers.CLIP_MEAN`  :data:`~plaindet.models.layers.IMAGENET_MEAN`
=====================  ===================================  ==================================

Additions for detection:

- **Any input size.** The position embedding of the pretraining grid (``pretrain_size /
  patch_size`` squared) is kept as the parameter; for other inputs its patch part is resized
  bicubically on the fly. Height and width must be multiples of ``patch_size``.
- **Window attention** (ViTDet, Li et al. 2022) in all blocks except ``global_blocks``. The patch grid
  is cut into ``window_size x window_size`` windows; when the grid isn't a multiple of the window it
  is padded at the bottom/right, and padded positions are masked out as keys, so the features don't
  depend on how much padding there was. ``window_size=0`` makes every block global: the network is
  then exactly CLIP's (or DeiT's).
- **The class token is a global token in window blocks.** It can't belong to one window, and the
  patch tokens were trained with it always in view, so in a window block it is appended as an extra
  key/value to every window, and as a query it attends to all tokens. One extra key per window and
  one extra query row cost almost nothing.
- **Outputs.** :meth:`ViT.forward_tokens` returns the residual stream after the last block (what
  transformers' ``CLIPVisionModel`` calls ``last_hidden_state``); :meth:`ViT.forward_features`
  applies the final ``norm`` to it (timm's ``forward_features``; transformers' ``ViTModel``
  ``last_hidden_state``); :meth:`ViT.forward`, the detector neck's input, is its patch tokens as a
  feature map. CLIP trained ``ln_post`` on the class token only, but the channel statistics of the
  residual stream are shared by all tokens, and normalizing tames the few very large channels of the
  last CLIP blocks (OWL-ViT does the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from plaindet.models.layers import ACTIVATIONS, Mlp, SelfAttention, attention, drop_path, merge_heads

__all__ = ["ViT", "ViTConfig", "clip_config", "deit_config", "default_global_blocks", "resize_pos_embed"]


@dataclass
class ViTConfig:
    """The ViT's shape and flavour (defaults: CLIP ViT-B/16). See the module docstring.

    ``pretrain_size``: the image size the position embeddings were trained at. ``global_blocks``:
    indices of the global-attention blocks (``None``: four evenly spaced ones ending at the last,
    :func:`default_global_blocks`). ``drop_path``: stochastic depth of the last block, rising
    linearly from 0 at the first.
    """

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
    patch_bias: bool = False
    pre_norm: bool = True
    norm_eps: float = 1e-5


def clip_config(width: int, depth: int, heads: int, **overrides) -> ViTConfig:
    """A CLIP-flavoured ViT (OpenAI's image encoders: no patch bias, ``ln_pre``, QuickGELU)."""
    return ViTConfig(width=width, depth=depth, heads=heads, **overrides)


def deit_config(width: int, depth: int, heads: int, **overrides) -> ViTConfig:
    """A DeiT-flavoured ViT (patch bias, no pre-norm, exact GELU, LayerNorm eps 1e-6), global attention.

    DeiT-Ti is ``192, 12, 3``, DeiT-S ``384, 12, 6``, DeiT-B ``768, 12, 12``.
    """
    settings = dict(window_size=0, act="gelu", patch_bias=True, pre_norm=False, norm_eps=1e-6)
    return ViTConfig(width=width, depth=depth, heads=heads, **{**settings, **overrides})


def default_global_blocks(depth: int, num_global: int = 4) -> tuple[int, ...]:
    """Indices of ``num_global`` evenly spaced blocks, the last one being ``depth - 1``.

    ViTDet's choice: ``(2, 5, 8, 11)`` for depth 12, ``(5, 11, 17, 23)`` for 24, ``(7, 15, 23, 31)``
    for 32. Depths below ``num_global`` get all blocks global.
    """
    n = min(num_global, depth)
    return tuple(sorted({depth * (i + 1) // n - 1 for i in range(n)}))


def resize_pos_embed(patch_pos: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubically resize a grid of position embeddings.

    Args:
        patch_pos: ``(gh, gw, C)`` embeddings of the patch positions (no class token).
        size: the new grid ``(h, w)``.

    Returns:
        ``(h, w, C)``; the input itself when the size doesn't change. Computed in float32 (bicubic
        isn't implemented for half precision on every device) and returned in the input's dtype.
    """
    if tuple(patch_pos.shape[:2]) == tuple(size):
        return patch_pos
    grid = patch_pos.permute(2, 0, 1).unsqueeze(0).float()
    grid = F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=False)
    return grid.squeeze(0).permute(1, 2, 0).to(patch_pos.dtype)


class WindowAttention(SelfAttention):
    """Self-attention over the whole token sequence, or within windows of the patch grid with the class
    token as a global token (``window_size > 0``; see the module docstring)."""

    def __init__(self, width: int, heads: int, window_size: int) -> None:
        super().__init__(width, heads)
        self.window_size = window_size

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """``x``: ``(B, 1 + h * w, C)``, class token first, patches row-major; ``grid``: ``(h, w)``."""
        if self.window_size <= 0:
            return super().forward(x)
        q, k, v = self.qkv_heads(x)
        return self.proj(merge_heads(self._window_attention(q, k, v, grid)))

    def _window_attention(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        B, nh, L, d = q.shape
        h, w = grid
        ws = self.window_size
        pad_h, pad_w = -h % ws, -w % ws
        nwh, nww = (h + pad_h) // ws, (w + pad_w) // ws

        # The class token queries every token, as in a global block.
        cls_out = attention(q[:, :, :1], k, v)

        def windows(t: Tensor) -> Tensor:
            # (B, nh, h*w, d) -> (B * nwh * nww, nh, ws*ws, d), zero-padded at the bottom/right
            t = t.reshape(B, nh, h, w, d)
            t = F.pad(t, (0, 0, 0, pad_w, 0, pad_h))
            t = t.view(B, nh, nwh, ws, nww, ws, d).permute(0, 2, 4, 1, 3, 5, 6)
            return t.reshape(B * nwh * nww, nh, ws * ws, d)

        qw = windows(q[:, :, 1:])
        # Every window also sees the class token as its first key/value.
        kw = torch.cat([k[:, :, :1].repeat_interleave(nwh * nww, dim=0), windows(k[:, :, 1:])], dim=2)
        vw = torch.cat([v[:, :, :1].repeat_interleave(nwh * nww, dim=0), windows(v[:, :, 1:])], dim=2)

        mask = None
        if pad_h or pad_w:
            # True = may attend. Built from Python ints, so it is a constant in exported graphs.
            valid = torch.zeros(h + pad_h, w + pad_w, dtype=torch.bool, device=q.device)
            valid[:h, :w] = True
            valid = valid.view(nwh, ws, nww, ws).permute(0, 2, 1, 3).reshape(nwh * nww, ws * ws)
            valid = torch.cat([valid.new_ones(nwh * nww, 1), valid], dim=1)  # the class token
            mask = valid.repeat(B, 1)[:, None, None, :]  # (B * windows, 1, 1, 1 + ws*ws)
        out = attention(qw, kw, vw, attn_mask=mask)

        # Back to (B, nh, h*w, d), dropping the padding.
        out = out.view(B, nwh, nww, nh, ws, ws, d).permute(0, 3, 1, 4, 2, 5, 6)
        out = out.reshape(B, nh, nwh * ws, nww * ws, d)[:, :, :h, :w].reshape(B, nh, h * w, d)
        return torch.cat([cls_out, out], dim=2)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, window_size: int, act: str, drop_path: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = WindowAttention(width, heads, window_size)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), act)
        self.drop_path = drop_path

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x), grid), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches, linearly embedded (a strided convolution)."""

    def __init__(self, patch_size: int, width: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, H / p * W / p, width)``, patches row by row."""
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """Plain ViT backbone (see the module docstring); built from a :class:`ViTConfig`.

    Input: ``(B, 3, H, W)`` float images normalized with the statistics of the pretrained weights
    (:class:`~plaindet.models.layers.Normalize`), ``H`` and ``W`` multiples of ``patch_size``.

    Set ``grad_checkpointing = True`` to recompute block activations in the backward pass.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = config
        if c.pretrain_size % c.patch_size:
            raise ValueError(f"pretrain_size {c.pretrain_size} is not a multiple of patch_size {c.patch_size}")
        if c.window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: global attention everywhere), got {c.window_size}")
        if c.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {c.act!r}")
        global_blocks = default_global_blocks(c.depth) if c.global_blocks is None else tuple(c.global_blocks)
        if any(not 0 <= i < c.depth for i in global_blocks):
            raise ValueError(f"global_blocks {global_blocks} must be block indices in [0, {c.depth})")

        self.config = config
        self.patch_size = c.patch_size
        self.grid_size = c.pretrain_size // c.patch_size
        self.width = c.width
        self.depth = c.depth
        self.global_blocks = global_blocks
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(c.patch_size, c.width, bias=c.patch_bias)
        self.cls_token = nn.Parameter(torch.empty(1, 1, c.width))
        self.pos_embed = nn.Parameter(torch.empty(1, self.grid_size**2 + 1, c.width))
        self.norm_pre = nn.LayerNorm(c.width, eps=c.norm_eps) if c.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(
                c.width,
                c.heads,
                c.mlp_ratio,
                window_size=0 if i in global_blocks else c.window_size,
                act=c.act,
                drop_path=c.drop_path * i / max(c.depth - 1, 1),
                eps=c.norm_eps,
            )
            for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.width, eps=c.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A from-scratch init (CLIP's embedding scale, truncated normal 0.02 for linear layers).

        Normally replaced by pretrained weights (:func:`plaindet.models.vit_weights.load_vit_weights`).
        """
        nn.init.normal_(self.cls_token, std=self.width**-0.5)
        nn.init.normal_(self.pos_embed, std=self.width**-0.5)
        proj = self.patch_embed.proj
        nn.init.trunc_normal_(proj.weight, std=1.0 / math.sqrt(proj.weight[0].numel()))  # like a linear layer over a patch
        if proj.bias is not None:
            nn.init.zeros_(proj.bias)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters to train without weight decay (the learned embeddings)."""
        return {"cls_token", "pos_embed"}

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """``(1, 1 + h * w, width)`` position embeddings for a ``grid = (h, w)`` of patches."""
        g = self.grid_size
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        patch_pos = resize_pos_embed(patch_pos.reshape(g, g, -1), grid).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Tokens after the last block, before the final ``norm``.

        Args:
            x: ``(B, 3, H, W)`` normalized images, ``H`` and ``W`` multiples of ``patch_size``.

        Returns:
            ``(B, 1 + h * w, width)`` with ``h, w = H / patch_size, W / patch_size``: the class token,
            then the patch tokens row by row. For a CLIP config with ``window_size=0`` at the
            pretraining size this is transformers' ``CLIPVisionModel(...).last_hidden_state``.
        """
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {p}; pad or resize the image")
        grid = (H // p, W // p)
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.norm_pre(x + self._pos_embed(grid).to(x.dtype))
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, grid, use_reentrant=False)
            else:
                x = block(x, grid)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """:meth:`forward_tokens` after the final ``norm``: ``(B, 1 + h * w, width)``. For a DeiT config
        at the pretraining size this is timm's ``forward_features`` and transformers' ``ViTModel``
        ``last_hidden_state``."""
        return self.norm(self.forward_tokens(x))

    def forward(self, x: Tensor) -> Tensor:
        """The feature map for a detector's neck: ``(B, width, H / patch_size, W / patch_size)``, the
        patch tokens after the final ``norm``."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.forward_features(x)[:, 1:]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


"""A plain ViT in the layout of CLIP's image encoder, with ViTDet-style window attention.

Parameter names are those of OpenAI CLIP's ``VisionTransformer`` (and of open_clip's ``visual``
tower) but for one: the fused q/k/v projection is an ``nn.Linear`` named ``attn.in_proj`` (OpenAI's raw
``attn.in_proj_weight``/``in_proj_bias`` parameters become ``attn.in_proj.weight``/``bias``), so that LoRA,
which adapts modules, can adapt it. :mod:`plaindet.models.clip_weights` converts OpenAI's, Hugging Face
transformers' and timm's layouts to these names::

    conv1.weight                                 (width, 3, p, p), no bias
    class_embedding                              (width,)
    positional_embedding                         (grid * grid + 1, width), class token first
    ln_pre.{weight,bias}
    transformer.resblocks.{i}.ln_1.{weight,bias}
    transformer.resblocks.{i}.attn.in_proj.weight  (3 * width, width), q, k, v stacked
    transformer.resblocks.{i}.attn.in_proj.bias    (3 * width,)
    transformer.resblocks.{i}.attn.out_proj.{weight,bias}
    transformer.resblocks.{i}.ln_2.{weight,bias}
    transformer.resblocks.{i}.mlp.c_fc.{weight,bias}
    transformer.resblocks.{i}.mlp.c_proj.{weight,bias}
    ln_post.{weight,bias}

Differences from CLIP, all for detection:

- **Any input size.** The position embedding of the pretraining grid (``img_size / patch_size``
  squared) is kept as the parameter; for other inputs its patch part is resized bicubically on the
  fly. Height and width must be multiples of ``patch_size``.
- **Window attention** (ViTDet, Li et al. 2022) in all blocks except ``global_blocks``. The patch grid
  is cut into ``window_size x window_size`` windows; when the grid isn't a multiple of the window it
  is padded at the bottom/right, and padded positions are masked out as keys, so the features don't
  depend on how much padding there was.
- **The class token is a global token in window blocks.** It can't belong to one window, and CLIP's
  patch tokens were trained with it always in view, so in a window block it is appended as an extra
  key/value to every window, and as a query it attends to all tokens (itself and every patch). One
  extra key per window and one extra query row cost almost nothing. In global blocks everything is
  as in CLIP. With ``window_size=0`` all blocks are global and the network is exactly CLIP's.
- **Output.** :meth:`ViT.forward_features` returns the raw residual stream of the last block (what
  transformers' ``CLIPVisionModel`` calls ``last_hidden_state``). :meth:`ViT.forward`, the input of
  the detector's neck, applies ``ln_post`` to the patch tokens: CLIP trained it on the class token
  only, but the channel statistics of the residual stream are shared by all tokens, and normalizing
  tames the few very large channels of the last CLIP blocks (OWL-ViT does the same).
- There is no ``proj`` (projection into the joint image-text space); the detector doesn't use it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

# Per-channel RGB mean and std of CLIP's preprocessing, for pixel values scaled to [0, 1].
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["CLIP_MEAN", "CLIP_STD", "ViT", "default_global_blocks", "resize_pos_embed"]


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


class QuickGELU(nn.Module):
    """CLIP's GELU approximation ``x * sigmoid(1.702 x)``: OpenAI's weights were trained with it."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {"quick_gelu": QuickGELU, "gelu": nn.GELU}


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection ``in_proj`` (CLIP's ``in_proj_weight``).

    With ``window_size > 0`` the patch tokens attend within non-overlapping windows and the class
    token acts as a global token (see the module docstring).
    """

    def __init__(self, width: int, heads: int, window_size: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.window_size = window_size
        # A module rather than CLIP's two raw parameters: LoRA (peft) can only adapt modules.
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """``x``: ``(B, 1 + h * w, C)``, class token first, patches row-major; ``grid``: ``(h, w)``."""
        B, L, C = x.shape
        # (B, L, 3C) -> three (B, heads, L, head_dim)
        qkv = self.in_proj(x)
        q, k, v = qkv.view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if self.window_size <= 0:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = self._window_attention(q, k, v, grid)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, C))

    def _window_attention(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        B, nh, L, d = q.shape
        h, w = grid
        ws = self.window_size
        pad_h, pad_w = -h % ws, -w % ws
        nwh, nww = (h + pad_h) // ws, (w + pad_w) // ws

        # The class token queries every token, as in a global block.
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)

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
        out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask)

        # Back to (B, nh, h*w, d), dropping the padding.
        out = out.view(B, nwh, nww, nh, ws, ws, d).permute(0, 3, 1, 4, 2, 5, 6)
        out = out.reshape(B, nh, nwh * ws, nww * ws, d)[:, :, :h, :w].reshape(B, nh, h * w, d)
        return torch.cat([cls_out, out], dim=2)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.act = _ACTIVATIONS[act]()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, window_size: int, act: str, drop_path: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, window_size)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio), act)
        self.drop_path = drop_path

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + _drop_path(self.attn(self.ln_1(x), grid), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.ln_2(x)), self.drop_path, self.training)


class Transformer(nn.Module):
    """Holds the blocks under CLIP's name ``transformer.resblocks``."""

    def __init__(self, blocks: Sequence[ResidualAttentionBlock]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


class ViT(nn.Module):
    """CLIP-layout ViT backbone for detection.

    Args:
        img_size: pretraining image size; sets the grid of ``positional_embedding``.
        patch_size: side of the square patches, which is also the output stride.
        width, depth, heads: embedding size, number of blocks, attention heads.
        mlp_ratio: MLP hidden size is ``int(width * mlp_ratio)``.
        window_size: window side in patches for the window-attention blocks; 0 makes every block
            global (exactly CLIP).
        global_blocks: indices of the global-attention blocks; ``None`` picks four evenly spaced
            ones ending at the last block (:func:`default_global_blocks`).
        act: ``"quick_gelu"`` (OpenAI CLIP) or ``"gelu"`` (some open_clip models).
        drop_path: stochastic depth rate of the last block, rising linearly from 0 at the first.

    Input: ``(B, 3, H, W)`` float images normalized with :data:`CLIP_MEAN` / :data:`CLIP_STD` (pixel
    values in [0, 1] first), ``H`` and ``W`` multiples of ``patch_size``.

    Set ``grad_checkpointing = True`` to recompute block activations in the backward pass.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        window_size: int = 14,
        global_blocks: Sequence[int] | None = None,
        act: str = "quick_gelu",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: global attention everywhere), got {window_size}")
        if act not in _ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(_ACTIVATIONS)}, got {act!r}")
        global_blocks = default_global_blocks(depth) if global_blocks is None else tuple(global_blocks)
        if any(not 0 <= i < depth for i in global_blocks):
            raise ValueError(f"global_blocks {global_blocks} must be block indices in [0, {depth})")

        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.out_channels = width
        self.depth = depth
        self.window_size = window_size
        self.global_blocks = global_blocks
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size**2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(
            [
                ResidualAttentionBlock(
                    width,
                    heads,
                    mlp_ratio,
                    window_size=0 if i in global_blocks else window_size,
                    act=act,
                    drop_path=drop_path * i / max(depth - 1, 1),
                )
                for i in range(depth)
            ]
        )
        self.ln_post = nn.LayerNorm(width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """A from-scratch init (CLIP's embedding scale, truncated normal 0.02 for linear layers).

        Normally replaced by CLIP weights (:func:`plaindet.models.clip_weights.load_clip_weights`).
        """
        width = self.out_channels
        nn.init.normal_(self.class_embedding, std=width**-0.5)
        nn.init.normal_(self.positional_embedding, std=width**-0.5)
        # Like a linear layer over the flattened patch.
        nn.init.trunc_normal_(self.conv1.weight, std=1.0 / math.sqrt(self.conv1.weight[0].numel()))
        for block in self.transformer.resblocks:
            for linear in (block.attn.in_proj, block.attn.out_proj, block.mlp.c_fc, block.mlp.c_proj):
                nn.init.trunc_normal_(linear.weight, std=0.02)
                nn.init.zeros_(linear.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters to train without weight decay (the learned embeddings)."""
        return {"class_embedding", "positional_embedding"}

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """``(1 + h * w, width)`` position embeddings for a ``grid = (h, w)`` of patches."""
        g = self.grid_size
        cls_pos, patch_pos = self.positional_embedding[:1], self.positional_embedding[1:]
        patch_pos = resize_pos_embed(patch_pos.reshape(g, g, -1), grid)
        return torch.cat([cls_pos, patch_pos.reshape(grid[0] * grid[1], -1)])

    def forward_features(self, x: Tensor) -> Tensor:
        """Tokens after the last block, before ``ln_post``.

        Args:
            x: ``(B, 3, H, W)`` normalized images, ``H`` and ``W`` multiples of ``patch_size``.

        Returns:
            ``(B, 1 + h * w, width)`` with ``h, w = H / patch_size, W / patch_size``: the class token,
            then the patch tokens row by row. With ``window_size=0`` and a CLIP input size this is
            transformers' ``CLIPVisionModel(...).last_hidden_state``.
        """
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {p}; pad or resize the image")
        grid = (H // p, W // p)
        x = self.conv1(x).flatten(2).transpose(1, 2)  # (B, h*w, width)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        x = self.ln_pre(x + self._pos_embed(grid).to(x.dtype))
        for block in self.transformer.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, grid, use_reentrant=False)
            else:
                x = block(x, grid)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Feature map for the detector's neck.

        Args:
            x: ``(B, 3, H, W)`` normalized images, ``H`` and ``W`` multiples of ``patch_size``.

        Returns:
            ``(B, width, H / patch_size, W / patch_size)``: the patch tokens after ``ln_post``.
        """
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.ln_post(self.forward_features(x)[:, 1:])
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

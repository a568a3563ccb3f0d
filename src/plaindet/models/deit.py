"""A plain ViT encoder in the key layout of timm's and facebookresearch's DeiT, so their weights load as is.

Parameter names (those of ``timm.models.vision_transformer.VisionTransformer`` for DeiT-Ti/S/B)::

    patch_embed.proj.{weight,bias}       (width, 3, p, p), (width,)
    cls_token                            (1, 1, width)
    pos_embed                            (1, 1 + grid * grid, width), class token first
    blocks.{i}.norm1.{weight,bias}
    blocks.{i}.attn.qkv.{weight,bias}    (3 * width, width), q, k, v stacked
    blocks.{i}.attn.proj.{weight,bias}
    blocks.{i}.norm2.{weight,bias}
    blocks.{i}.mlp.fc1.{weight,bias}
    blocks.{i}.mlp.fc2.{weight,bias}
    norm.{weight,bias}

GELU (the exact, erf one) and LayerNorm eps 1e-6 as in DeiT. Inputs are normalized with the ImageNet
mean and std (:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`). Unlike DeiT the input may be any size whose
sides are multiples of the patch size: the patch part of ``pos_embed`` (kept at its pretraining grid)
is resized bicubically on the fly, as transformers' ``interpolate_pos_encoding`` does.

:func:`load_deit_weights` loads a published checkpoint (``deit_tiny_patch16_224``, ...) from a local
``.safetensors`` or ``.pth`` file; the classifier ``head`` is dropped and every other key must match.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from plaindet.models.vit import resize_pos_embed

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DeiT", "DeiTConfig", "DeiTWeightsError", "load_deit_weights"]

# Per-channel RGB mean and std of DeiT's preprocessing, for pixel values scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Checkpoint keys that the encoder doesn't use: the ImageNet classifier.
_DROPPED = re.compile(r"head\.(weight|bias)")


@dataclass
class DeiTConfig:
    """The encoder's shape. ``pretrain_size`` is the image size its position embeddings were trained at.

    DeiT-Ti is ``width=192, heads=3``, DeiT-S ``384, 6``, DeiT-B ``768, 12``, all ``depth=12``.
    """

    width: int = 192
    depth: int = 12
    heads: int = 3
    patch_size: int = 16
    pretrain_size: int = 224
    mlp_ratio: float = 4.0
    drop_path: float = 0.0


class DeiTWeightsError(ValueError):
    """Weights that don't fit the encoder; the message lists the missing, unexpected or misshapen keys."""


class Attention(nn.Module):
    """Global multi-head self-attention with a fused ``qkv`` projection (timm's names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, L, C)`` -> ``(B, L, C)``."""
        B, L, C = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero a residual branch for a random subset of samples, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        x = x + _drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    """Non-overlapping ``p x p`` patches, linearly embedded (a strided convolution, with bias as in timm)."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` -> ``(B, H / p * W / p, width)``, patches row by row."""
        return self.proj(x).flatten(2).transpose(1, 2)


class DeiT(nn.Module):
    """DeiT / plain ViT encoder (timm layout, see the module docstring).

    Args:
        img_size: pretraining image size; sets the grid of ``pos_embed``.
        patch_size: side of the square patches.
        width, depth, heads: embedding size, number of blocks, attention heads.
        mlp_ratio: MLP hidden size is ``int(width * mlp_ratio)``.
        drop_path: stochastic depth rate of the last block, rising linearly from 0 at the first.

    Set ``grad_checkpointing = True`` to recompute block activations in the backward pass.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        width: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = img_size // patch_size
        self.width = width
        self.depth = depth
        self.grad_checkpointing = False

        self.patch_embed = PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2 + 1, width))
        self.blocks = nn.ModuleList(
            [Block(width, heads, mlp_ratio, drop_path * i / max(depth - 1, 1)) for i in range(depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.reset_parameters()

    @classmethod
    def from_config(cls, config: DeiTConfig) -> DeiT:
        return cls(
            img_size=config.pretrain_size,
            patch_size=config.patch_size,
            width=config.width,
            depth=config.depth,
            heads=config.heads,
            mlp_ratio=config.mlp_ratio,
            drop_path=config.drop_path,
        )

    def reset_parameters(self) -> None:
        """timm's from-scratch init (truncated normal 0.02); normally replaced by DeiT weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters to train without weight decay (the learned embeddings)."""
        return {"cls_token", "pos_embed"}

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        """``(1, 1 + h * w, width)`` position embeddings for a ``grid = (h, w)`` of patches."""
        g = self.grid_size
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[0, 1:]
        patch_pos = resize_pos_embed(patch_pos.reshape(g, g, -1), grid).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens after the final ``norm``.

        Args:
            x: ``(B, 3, H, W)`` images normalized with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`
                (pixel values in [0, 1] first), ``H`` and ``W`` multiples of ``patch_size``.

        Returns:
            ``(B, 1 + h * w, width)`` with ``h, w = H / patch_size, W / patch_size``: the class token,
            then the patch tokens row by row. At the pretraining size this is timm's
            ``forward_features`` and transformers' ``ViTModel(...).last_hidden_state``.
        """
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"input size {H}x{W} is not a multiple of the patch size {p}; pad or resize the image")
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self._pos_embed((H // p, W // p)).to(x.dtype)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


def load_deit_weights(model: DeiT, source: str | Path | Mapping[str, Tensor]) -> None:
    """Load DeiT weights (timm / facebookresearch layout) into ``model`` in place.

    Args:
        model: the encoder; its pretraining grid is the one ``pos_embed`` is resized to when the
            checkpoint was trained at another resolution (e.g. ``deit_base_patch16_384``).
        source: a ``.safetensors`` file, a ``.pth``/``.pt``/``.bin`` file of tensors only (read with
            ``torch.load(weights_only=True)``; facebookresearch's ``{"model": ...}`` is unwrapped), or a
            state dict.

    Raises:
        DeiTWeightsError: keys missing or unexpected once the classifier ``head`` is dropped, or tensors
            of the wrong shape (all listed). Distilled DeiT checkpoints (``dist_token``) are not supported.
    """
    from plaindet.models.clip_weights import read_state_dict

    sd = {k: v for k, v in read_state_dict(source).items() if not _DROPPED.fullmatch(k)}
    ours = model.state_dict()
    missing, unexpected = sorted(ours.keys() - sd.keys()), sorted(sd.keys() - ours.keys())
    if missing or unexpected:
        hint = ""
        if any(k.startswith(("embeddings.", "vit.", "deit.", "encoder.")) for k in unexpected):
            hint = " (this looks like a Hugging Face transformers checkpoint; use timm's or facebookresearch's DeiT file)"
        raise DeiTWeightsError(
            f"checkpoint doesn't fit the DeiT encoder{hint}: missing keys {_listing(missing)}; "
            f"unexpected keys {_listing(unexpected)}"
        )
    pos = sd["pos_embed"]
    if pos.dim() == 3 and pos.shape[-1] == model.width and pos.shape[1] != model.pos_embed.shape[1]:
        sd["pos_embed"] = _resize_checkpoint_pos(pos, model.grid_size)
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(ours[k].shape)})" for k, v in sd.items() if v.shape != ours[k].shape]
    if wrong:
        raise DeiTWeightsError(f"checkpoint has tensors of the wrong shape: {_listing(wrong)}")
    model.load_state_dict(sd)


def _resize_checkpoint_pos(pos: Tensor, grid: int) -> Tensor:
    """``(1, 1 + g * g, w)`` position embedding of another pretraining size -> ``(1, 1 + grid * grid, w)``."""
    g = math.isqrt(pos.shape[1] - 1)
    if g * g != pos.shape[1] - 1:
        raise DeiTWeightsError(f"pos_embed {tuple(pos.shape)} is not a class token plus a square grid")
    patch_pos = resize_pos_embed(pos[0, 1:].reshape(g, g, -1), (grid, grid)).reshape(1, grid * grid, -1)
    return torch.cat([pos[:, :1], patch_pos], dim=1)


def _listing(names: list[str], limit: int = 12) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more

"""Loading pretrained ViT weights (CLIP image encoders, DeiT) into :class:`plaindet.models.vit.ViT`.

Sources: anything :func:`plaindet.weights.read_state_dict` reads (a local file, a folder, a state
dict or a Hugging Face Hub id such as ``openai/clip-vit-base-patch16``). Key layouts, detected from
the keys (:func:`convert_vit_state_dict`), all converted to the ViT's own (timm's) names:

- ``openai``: OpenAI CLIP / open_clip, ``visual.*`` of a full CLIP model or a bare visual tower
  (``conv1.weight``, ``transformer.resblocks.*``, ...); ``proj`` is dropped.
- ``transformers``: Hugging Face ``CLIPModel`` / ``CLIPVisionModel`` (``vision_model.*``, or
  unprefixed ``embeddings.*`` as transformers 5 names ``CLIPVisionModel``). Separate q/k/v
  projections are fused; ``visual_projection`` and the text tower are dropped.
- ``timm``: timm's CLIP ViTs (``vit_base_patch16_clip_224.openai`` ...) and DeiTs
  (``deit_tiny_patch16_224`` ..., and facebookresearch's DeiT files), which are the ViT's names
  already; the classifier ``head`` is dropped.

A checkpoint pretrained at another resolution (e.g. 336 px) is fine: its position embedding is
resized bicubically to the model's ``pretrain_size`` grid. Width, depth or patch size mismatches,
and any missing or unexpected key once the known-unused ones are dropped (a CLIP checkpoint given
to a DeiT-flavoured ViT, say), raise :class:`~plaindet.errors.WeightsError`. The number of heads
can't be read from the weights: it must match the checkpoint's (``width // 64`` for all OpenAI and
open_clip ViTs).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from plaindet.errors import WeightsError
from plaindet.models.vit import ViT, resize_pos_embed
from plaindet.weights import listing, load_exact, read_state_dict

__all__ = ["convert_vit_state_dict", "load_vit_weights"]

# Rules are (pattern, replacement) tried in order against the whole key; the first full match wins.
_OPENAI_RULES = [
    (r"conv1\.weight", "patch_embed.proj.weight"),
    (r"class_embedding", "cls_token"),
    (r"positional_embedding", "pos_embed"),
    (r"ln_pre\.(weight|bias)", r"norm_pre.\1"),
    (r"ln_post\.(weight|bias)", r"norm.\1"),
    (r"transformer\.resblocks\.(\d+)\.ln_([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
]
_TRANSFORMERS_RULES = [
    (r"embeddings\.patch_embedding\.weight", "patch_embed.proj.weight"),
    (r"embeddings\.class_embedding", "cls_token"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"pre_layrnorm\.(weight|bias)", r"norm_pre.\1"),  # sic: transformers' spelling
    (r"post_layernorm\.(weight|bias)", r"norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
]
# Keys that exist in these checkpoints and that the backbone doesn't use (after prefix removal).
_DROPPED = {
    "openai": re.compile(r"proj"),  # image -> joint embedding projection
    "transformers": re.compile(r"embeddings\.position_ids"),  # an index buffer in older checkpoints
    "timm": re.compile(r"head\.(weight|bias)"),  # the classifier (or CLIP's projection as a head)
}


def _detect_layout(sd: Mapping[str, Tensor]) -> tuple[str, str]:
    """``(layout, prefix of the image tower's keys)``; everything outside the prefix is ignored."""
    if any(k.startswith("visual.") for k in sd):
        return "openai", "visual."
    if any(k.startswith("vision_model.") for k in sd):
        return "transformers", "vision_model."
    if "embeddings.patch_embedding.weight" in sd:
        return "transformers", ""
    if "conv1.weight" in sd:
        return "openai", ""
    if "patch_embed.proj.weight" in sd:
        return "timm", ""
    hint = ""
    if any(k.startswith(("embeddings.patch_embeddings", "vit.", "deit.")) for k in sd):
        hint = " (this looks like a transformers ViT/DeiT checkpoint; use timm's or facebookresearch's DeiT file)"
    raise WeightsError(
        "unrecognized ViT checkpoint layout: expected OpenAI/open_clip (visual.conv1.weight), Hugging Face "
        "transformers CLIP (vision_model.embeddings.patch_embedding.weight) or timm (patch_embed.proj.weight) keys"
        f"{hint}; the first keys are {listing(sorted(sd), limit=8)}"
    )


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    for pattern, repl in rules:
        new, n = re.subn(f"^{pattern}$", repl, key)
        if n:
            return new
    return key  # left for the unexpected-keys report


def _fuse_qkv(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """``...attn.{q,k,v}_proj.{weight,bias}`` -> ``...attn.qkv.{weight,bias}`` (q, k, v stacked)."""
    out = dict(sd)
    for key in sd:
        m = re.fullmatch(r"(.*\.attn\.)q_proj\.(weight|bias)", key)
        parts = [f"{m[1]}{c}_proj.{m[2]}" for c in "qkv"] if m else []
        if parts and all(p in out for p in parts):  # an incomplete triple is left for the key report
            out[f"{m[1]}qkv.{m[2]}"] = torch.cat([out.pop(p) for p in parts])
    return out


def convert_vit_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Rename a CLIP or DeiT image-encoder state dict to :class:`~plaindet.models.vit.ViT`'s names.

    Returns:
        ``(state_dict, layout)`` with ``layout`` one of ``"openai"``, ``"transformers"``, ``"timm"``.
        Known-unused keys (text tower, projections, heads) are dropped; unknown keys are kept as they
        are so that :func:`load_vit_weights` can report them. ``cls_token`` is ``(1, 1, width)`` and
        ``pos_embed`` ``(1, 1 + grid * grid, width)``, at the checkpoint's own grid.
    """
    layout, prefix = _detect_layout(state_dict)
    sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    sd = {k: v for k, v in sd.items() if not _DROPPED[layout].fullmatch(k)}
    if layout == "openai":
        sd = {_rename(k, _OPENAI_RULES): v for k, v in sd.items()}
    elif layout == "transformers":
        sd = _fuse_qkv({_rename(k, _TRANSFORMERS_RULES): v for k, v in sd.items()})
    if "cls_token" in sd:
        sd["cls_token"] = sd["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in sd and sd["pos_embed"].dim() == 2:
        sd["pos_embed"] = sd["pos_embed"][None]
    return sd, layout


def load_vit_weights(model: ViT, source: Any) -> None:
    """Load CLIP or DeiT image-encoder weights into ``model`` in place.

    Args:
        model: the backbone; its ``pretrain_size`` sets the grid the position embedding is resized to.
        source: see :func:`plaindet.weights.read_state_dict`.

    Raises:
        WeightsError: the checkpoint can't be read safely, its layout is unknown, its width, depth or
            patch size differ from the model's, or keys are missing or unexpected (all listed).
    """
    sd, layout = convert_vit_state_dict(read_state_dict(source))
    _check_architecture(sd, model, layout)
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape[1] != model.pos_embed.shape[1]:
        sd["pos_embed"] = _resize_checkpoint_pos(pos, model.grid_size)

    load_exact(model, sd, layout=layout, what=f"the ViT ({_flavour(model)})")


def _flavour(model: ViT) -> str:
    c = model.config
    return f"patch bias {'yes' if c.patch_bias else 'no'}, norm before the blocks {'yes' if c.pre_norm else 'no'}"


def _check_architecture(sd: Mapping[str, Tensor], model: ViT, layout: str) -> None:
    """Compare width, depth and patch size first: a clearer message than a hundred shape mismatches."""
    conv = sd.get("patch_embed.proj.weight")
    if conv is None:
        return  # reported as a missing key
    blocks = {int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    ckpt = (conv.shape[0], len(blocks), conv.shape[-1])
    ours = (model.width, model.depth, model.patch_size)
    if ckpt != ours:
        raise WeightsError(
            f"checkpoint ({layout} layout) is a ViT with width {ckpt[0]}, depth {ckpt[1]}, patch size {ckpt[2]}, "
            f"but the model has width {ours[0]}, depth {ours[1]}, patch size {ours[2]}"
        )


def _resize_checkpoint_pos(pos: Tensor, grid: int) -> Tensor:
    """``(1, 1 + g * g, w)`` position embedding of another pretraining size -> ``(1, 1 + grid * grid, w)``."""
    g = math.isqrt(pos.shape[1] - 1)
    if g * g != pos.shape[1] - 1:
        raise WeightsError(f"pos_embed {tuple(pos.shape)} is not a class token plus a square grid")
    patch_pos = resize_pos_embed(pos[0, 1:].reshape(g, g, -1), (grid, grid)).reshape(1, grid * grid, -1)
    return torch.cat([pos[:, :1], patch_pos], dim=1)

"""Load published DETR weights: the original repository's checkpoints and ``transformers``' models.

plaindet's DETR (:class:`~plaindet.models.detr.DETR`) names its parameters close to the original
code, so most keys only lose a prefix. The published weights were trained without the convergence
options (sigmoid classes, anchor queries, ...): build the model with
:data:`~plaindet.models.detr.DETR_PAPER` for them to load. The mapping (``N``: a layer index, ``*``: the rest unchanged):

==========================================================  ============================================
facebookresearch/detr (``detr-r50-e632da11.pth``)           plaindet
==========================================================  ============================================
``backbone.0.body.*`` (torchvision ResNet layout)           ``backbone.*``
``input_proj.*``, ``query_embed.weight``                    same
``class_embed.*``, ``bbox_embed.layers.N.*``                same
``transformer.encoder.layers.N.self_attn.in_proj_weight``   ``encoder.layers.N.self_attn.{q,k,v}_proj.weight``
  (and ``in_proj_bias``; rows ``[q; k; v]``, split in 3)      (and ``.bias``)
``transformer.{en,de}coder.layers.N.self_attn.out_proj.*``  ``{en,de}coder.layers.N.self_attn.out_proj.*``
``transformer.decoder.layers.N.multihead_attn.*``           ``decoder.layers.N.cross_attn.*`` (split as above)
``transformer.*.layers.N.linear1.*``, ``linear2.*``         ``*.layers.N.mlp.fc1.*``, ``mlp.fc2.*``
``transformer.*.layers.N.norm{1,2,3}.*``                    ``*.layers.N.norm{1,2,3}.*``
``transformer.decoder.norm.*``                              ``decoder.norm.*``
==========================================================  ============================================

==============================================================  ========================================
transformers ``DetrForObjectDetection`` (4.x files and 5.x)     plaindet
==============================================================  ========================================
``model.backbone.conv_encoder.model.*`` (4.x) or                ``backbone.*``, through the ResNet
``model.backbone.model.*`` (5.x): timm ResNet (same keys as     names on the left, or as they are
torchvision), or ``transformers``' own ``ResNetBackbone``:      (timm)
``embedder.embedder.{convolution,normalization}``               ``conv1``, ``bn1``
``encoder.stages.S.layers.L.layer.J.{convolution,normalization}``  ``layer{S+1}.L.conv{J+1}``, ``bn{J+1}``
``encoder.stages.S.layers.L.shortcut.{convolution,normalization}`` ``layer{S+1}.L.downsample.{0,1}``
``model.input_projection.*``                                    ``input_proj.*``
``model.query_position_embeddings.weight``                      ``query_embed.weight``
``model.{en,de}coder.layers.N.self_attn.{q,k,v}_proj.*``        ``{en,de}coder.layers.N.self_attn.{q,k,v}_proj.*``
``...self_attn.out_proj`` (4.x) / ``o_proj`` (5.x)              ``...self_attn.out_proj``
``model.decoder.layers.N.encoder_attn.*``                       ``decoder.layers.N.cross_attn.*``
``...layers.N.fc1``, ``fc2`` (4.x) / ``mlp.fc1``, ``mlp.fc2``   ``...layers.N.mlp.fc1``, ``mlp.fc2``
``...layers.N.self_attn_layer_norm``                            ``...layers.N.norm1``
``model.decoder.layers.N.encoder_attn_layer_norm``              ``decoder.layers.N.norm2``
``model.encoder.layers.N.final_layer_norm``                     ``encoder.layers.N.norm2``
``model.decoder.layers.N.final_layer_norm``                     ``decoder.layers.N.norm3``
``model.decoder.layernorm``                                     ``decoder.norm``
``class_labels_classifier.*``, ``bbox_predictor.layers.N.*``    ``class_embed.*``, ``bbox_embed.layers.N.*``
==============================================================  ========================================

BatchNorm step counters (``num_batches_tracked``) are dropped. The COCO checkpoints predict 91
category ids plus "no object" (92 logits): build the model with ``num_classes=91`` to load them.

Usage, with a local file (nothing is downloaded)::

    model = plaindet.create_model("detr-r50", num_classes=91)
    load_detr_weights(model, "detr-r50-e632da11.pth")
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.errors import WeightsError
from plaindet.weights import read_state_dict

# Regex rewrites, applied in order; each key must be rewritten by the first rule that matches.
_ORIGINAL_RULES: list[tuple[str, str]] = [
    (r"^backbone\.0\.body\.", "backbone."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.multihead_attn\.", r"\1.layers.\2.cross_attn."),
    (r"^transformer\.(encoder|decoder)\.layers\.(\d+)\.linear([12])\.", r"\1.layers.\2.mlp.fc\3."),
    (r"^transformer\.(encoder|decoder)\.", r"\1."),
    (r"^(input_proj|query_embed|class_embed|bbox_embed)\.", r"\1."),
]

_HF_RESNET_RULES: list[tuple[str, Any]] = [
    (r"^embedder\.embedder\.convolution\.", "conv1."),
    (r"^embedder\.embedder\.normalization\.", "bn1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
    (r"^(conv1|bn1|layer[1-4])\.", r"\1."),  # timm: torchvision's names already
]

_HF_RULES: list[tuple[str, Any]] = [
    (r"^model\.input_projection\.", "input_proj."),
    (r"^model\.query_position_embeddings\.", "query_embed."),
    (r"^class_labels_classifier\.", "class_embed."),
    (r"^bbox_predictor\.", "bbox_embed."),
    (r"^model\.decoder\.layernorm\.", "decoder.norm."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.(q|k|v)_proj\.", lambda m: f"{m[1]}.layers.{m[2]}.{_HF_ATTN[m[3]]}.{m[4]}_proj."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.(self_attn|encoder_attn)\.(o|out)_proj\.", lambda m: f"{m[1]}.layers.{m[2]}.{_HF_ATTN[m[3]]}.out_proj."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.", r"\1.layers.\2.mlp.fc\3."),
    (r"^model\.(encoder|decoder)\.layers\.(\d+)\.self_attn_layer_norm\.", r"\1.layers.\2.norm1."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.", r"decoder.layers.\1.norm2."),
    (r"^model\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.norm2."),
    (r"^model\.decoder\.layers\.(\d+)\.final_layer_norm\.", r"decoder.layers.\1.norm3."),
]
_HF_ATTN = {"self_attn": "self_attn", "encoder_attn": "cross_attn"}
_HF_BACKBONE = re.compile(r"^model\.backbone\.(?:conv_encoder\.)?model\.")


def _rewrite(key: str, rules: list[tuple[str, Any]]) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key, count=1)
        if n:
            return new
    return None


def _split_in_proj(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``*.in_proj_weight (3D, D)`` / ``*.in_proj_bias (3D,)`` -> ``*.q_proj``, ``*.k_proj``, ``*.v_proj``."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*)\.in_proj_(weight|bias)$", k)
        if m is None:
            out[k] = v
            continue
        for name, part in zip(("q", "k", "v"), v.chunk(3, dim=0)):
            out[f"{m[1]}.{name}_proj.{m[2]}"] = part.clone()
    return out


def resnet_state_from_transformers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A ``transformers`` ``ResNetModel``/``ResNetBackbone`` state dict (keys as the backbone's own,
    ``embedder.*`` and ``encoder.stages.*``; a leading ``resnet.`` is dropped) in torchvision's layout,
    for :func:`~plaindet.models.resnet.load_resnet_weights`. Unknown keys are an error."""
    out, unknown = {}, []
    for k, v in state_dict.items():
        k = k.removeprefix("resnet.")
        if k.endswith("num_batches_tracked") or k.startswith("classifier."):
            continue
        new = _rewrite(k, _HF_RESNET_RULES)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(f"not a transformers ResNet state dict: unknown keys {unknown[:5]}")
    return out


def detr_state_from_original(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert a facebookresearch/detr state dict (or the checkpoint dict holding it under ``model``)
    to plaindet's DETR layout; see the module docstring. Unknown keys are an error."""
    if isinstance(state_dict.get("model"), dict):
        state_dict = state_dict["model"]
    out, unknown = {}, []
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        new = _rewrite(k, _ORIGINAL_RULES)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(f"not a facebookresearch/detr DETR state dict: unknown keys {unknown[:5]}")
    return _split_in_proj(out)


def detr_state_from_transformers(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert a ``transformers`` ``DetrForObjectDetection`` state dict (4.x checkpoint files or the
    5.x in-memory layout; timm or ``transformers`` ResNet backbone) to plaindet's DETR layout; see the
    module docstring. Unknown keys are an error."""
    out, unknown = {}, []
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        m = _HF_BACKBONE.match(k)
        if m:
            new = _rewrite(k[m.end() :], _HF_RESNET_RULES)
            new = None if new is None else "backbone." + new
        else:
            new = _rewrite(k, _HF_RULES)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(f"not a transformers DetrForObjectDetection state dict: unknown keys {unknown[:5]}")
    return out


def detr_state(weights: Any) -> dict[str, Tensor]:
    """plaindet-layout DETR weights from a local file or state dict in any of the three layouts:
    facebookresearch/detr (``.pth``, read with ``weights_only=True``), ``transformers``
    (``model.safetensors`` or ``pytorch_model.bin``) or plaindet's own."""
    state = read_state_dict(weights)
    if any(k.startswith("transformer.") for k in state):
        return detr_state_from_original(state)
    if any(k.startswith(("model.", "class_labels_classifier.")) for k in state):
        return detr_state_from_transformers(state)
    return dict(state)


def load_detr_weights(model: nn.Module, weights: Any) -> None:
    """Load published DETR weights (see :func:`detr_state`) into a plaindet DETR, strictly: every
    tensor must be present with the model's shape (``num_classes`` must match the checkpoint's)."""
    state = detr_state(weights)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise WeightsError(f"these DETR weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    wrong = [f"{k} {tuple(v.shape)} (model: {tuple(own[k].shape)})" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise WeightsError(f"these DETR weights do not fit the model (different num_classes or sizes?): {wrong[:5]}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)

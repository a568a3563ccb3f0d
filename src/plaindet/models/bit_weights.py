"""Loading pretrained BiT weights into :class:`plaindet.models.bit.BiT`, in the layouts users have.

Sources: anything :func:`plaindet.weights.read_state_dict` reads (a local ``.npz``, ``.safetensors``,
``.bin``/``.pt`` file, a folder, a state dict or a Hub id). Layouts, detected from the keys
(:func:`convert_bit_state_dict`), all converted to the model's own names, which are timm's:

======================================================  ===========================================
Google's BiT ``.npz`` (``BiT-S-R50x1.npz``)             plaindet / timm ``resnetv2_50x1_bit``
======================================================  ===========================================
``resnet/root_block/standardized_conv2d/kernel``        ``stem.conv.weight``
``resnet/blockS/unitBB/a/proj/standardized_conv2d/...`` ``stages.{S-1}.blocks.{BB-1}.downsample.conv.weight``
``resnet/blockS/unitBB/{a,b,c}/standardized_conv2d/...`` ``stages.{S-1}.blocks.{BB-1}.conv{1,2,3}.weight``
``resnet/blockS/unitBB/{a,b,c}/group_norm/gamma|beta``  ``stages.{S-1}.blocks.{BB-1}.norm{1,2,3}.weight|bias``
``resnet/group_norm/gamma|beta``                        ``norm.weight|bias``
``resnet/head/conv2d/*`` (the classifier)               dropped
======================================================  ===========================================

(``S`` counts from 1, ``BB`` from ``01``; ``a`` is the block's first unit, whose norm is the
pre-activation ``norm1``.) Google's kernels are TensorFlow's HWIO ``(kh, kw, in, out)`` and are
transposed to PyTorch's OIHW ``(out, in, kh, kw)``.

- transformers ``BitModel`` (and ``BitForImageClassification`` / ``BitBackbone``, prefixed ``bit.``):
  ``embedder.convolution.weight`` <-> ``stem.conv.weight``, ``encoder.stages.S.layers.B.*`` <->
  ``stages.S.blocks.B.*`` (the rest of the name is the same), ``norm.*`` as is; ``classifier.*``
  dropped. :func:`bit_name_to_transformers` and :func:`bit_name_from_transformers` map one name
  each way.
- timm ``resnetv2_50x1_bit`` (``resnetv2_101x1_bit``): the model's names already; ``head.*`` dropped.

Stages the model does not build (a DePerceiver reading stride 8) and the final ``norm`` when the
model has none are skipped. Weights of another depth, missing or unexpected keys and tensors of the
wrong shape raise :class:`~plaindet.errors.WeightsError`, naming them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from plaindet.errors import WeightsError
from plaindet.models.bit import BIT_LAYOUTS, BiT
from plaindet.weights import listing, load_exact, read_state_dict

__all__ = ["bit_name_from_transformers", "bit_name_to_transformers", "bit_state_from_transformers", "bit_state_to_transformers", "convert_bit_state_dict", "load_bit_weights"]

_NPZ_PREFIX = "resnet/"
_NPZ_STEM = "resnet/root_block/standardized_conv2d/kernel"
_NPZ_UNITS = {"a": "1", "b": "2", "c": "3"}


# ------------------------------------------------------------------------------------------------
# transformers <-> plaindet names


def bit_name_to_transformers(name: str) -> str:
    """A :class:`~plaindet.models.bit.BiT` parameter name -> transformers ``BitModel``'s."""
    if name.startswith("stem.conv."):
        return "embedder.convolution." + name.removeprefix("stem.conv.")
    m = re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", name)
    if m:
        return f"encoder.stages.{m[1]}.layers.{m[2]}.{m[3]}"
    if name.startswith("norm."):
        return name
    raise ValueError(f"not a BiT parameter name: {name!r}")


def bit_name_from_transformers(name: str) -> str:
    """A transformers ``BitModel`` parameter name -> :class:`~plaindet.models.bit.BiT`'s (the inverse
    of :func:`bit_name_to_transformers`)."""
    if name.startswith("embedder.convolution."):
        return "stem.conv." + name.removeprefix("embedder.convolution.")
    m = re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", name)
    if m:
        return f"stages.{m[1]}.blocks.{m[2]}.{m[3]}"
    if name.startswith("norm."):
        return name
    raise ValueError(f"not a transformers BitModel parameter name: {name!r}")


def bit_state_to_transformers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our state dict in transformers ``BitModel``'s names (what ``BitModel.load_state_dict`` takes)."""
    return {bit_name_to_transformers(k): v for k, v in state.items()}


def bit_state_from_transformers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A transformers ``BitModel`` state dict (or ``bit.``-prefixed, from ``BitForImageClassification``
    or ``BitBackbone``) in our names; the classifier is dropped. Unknown keys are an error."""
    out = {}
    unknown = []
    for k, v in state.items():
        k = k.removeprefix("bit.")
        if k.startswith("classifier."):
            continue
        try:
            out[bit_name_from_transformers(k)] = v
        except ValueError:
            unknown.append(k)
    if unknown:
        raise WeightsError(f"transformers BiT checkpoint: unknown keys {listing(sorted(unknown))}")
    return out


# ------------------------------------------------------------------------------------------------
# Google's .npz


def _from_npz(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Google's names and HWIO kernels -> ours and OIHW. Keys that match no rule are kept (under
    their own name) for the unexpected-keys report."""
    out = {}
    for key, v in state.items():
        if key.startswith((_NPZ_PREFIX + "head/", "head/")):
            continue
        name = _npz_name(key)
        if name is None:
            out[key] = v
            continue
        if key.endswith("/kernel"):
            if v.dim() != 4:
                raise WeightsError(f"Google BiT checkpoint: {key} has shape {tuple(v.shape)}, expected a 4-d HWIO kernel")
            v = v.permute(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        else:
            v = v.reshape(-1)  # GroupNorm gamma / beta: (C,) (or (1, 1, 1, C) in some exports)
        out[name] = v.contiguous()
    return out


def _npz_name(key: str) -> str | None:
    if key == _NPZ_STEM:
        return "stem.conv.weight"
    m = re.fullmatch(r"resnet/group_norm/(gamma|beta)", key)
    if m:
        return f"norm.{'weight' if m[1] == 'gamma' else 'bias'}"
    m = re.fullmatch(r"resnet/block(\d+)/unit(\d+)/a/proj/standardized_conv2d/kernel", key)
    if m:
        return f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}.downsample.conv.weight"
    m = re.fullmatch(r"resnet/block(\d+)/unit(\d+)/([abc])/standardized_conv2d/kernel", key)
    if m:
        return f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}.conv{_NPZ_UNITS[m[3]]}.weight"
    m = re.fullmatch(r"resnet/block(\d+)/unit(\d+)/([abc])/group_norm/(gamma|beta)", key)
    if m:
        return f"stages.{int(m[1]) - 1}.blocks.{int(m[2]) - 1}.norm{_NPZ_UNITS[m[3]]}.{'weight' if m[4] == 'gamma' else 'bias'}"
    return None


# ------------------------------------------------------------------------------------------------
# Detection and loading


def convert_bit_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """Rename a BiT checkpoint to :class:`~plaindet.models.bit.BiT`'s names.

    Returns ``(state_dict, layout)``, ``layout`` one of ``"google"`` (``.npz``), ``"transformers"``,
    ``"timm"``. Classifier heads are dropped; unknown keys are kept for :func:`load_bit_weights` to
    report (transformers' converter rejects them at once).
    """
    keys = set(state)
    if _NPZ_STEM in keys or any(k.startswith(_NPZ_PREFIX + "block") for k in keys):
        return _from_npz(state), "google"
    if any(k.removeprefix("bit.").startswith(("embedder.", "encoder.stages.")) for k in keys):
        return bit_state_from_transformers(state), "transformers"
    if "stem.conv.weight" in keys or any(k.startswith("stages.") for k in keys):
        return {k: v for k, v in state.items() if not k.startswith("head.")}, "timm"
    hint = ""
    if "conv1.weight" in keys or any(k.startswith("layer1.") for k in keys):
        hint = " (these look like torchvision ResNet weights: they go with backbone='resnet')"
    raise WeightsError(
        "unrecognized BiT checkpoint layout: expected Google's .npz (resnet/root_block/standardized_conv2d/kernel), "
        f"transformers' BitModel (embedder.convolution.weight) or timm's resnetv2_*_bit (stem.conv.weight) keys{hint}; "
        f"the first keys are {listing(sorted(keys), limit=8)}"
    )


def _blocks_per_stage(state: Mapping[str, Tensor]) -> tuple[int, ...]:
    blocks: dict[int, set[int]] = {}
    for k in state:
        m = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    return tuple(len(blocks[s]) for s in sorted(blocks))


def load_bit_weights(model: BiT, source: Any) -> None:
    """Load BiT weights (Google ``.npz``, timm or transformers layout, detected) into ``model`` in place.

    Args:
        model: the backbone; stages it does not build (and the final ``norm`` it then lacks) are
            skipped in the weights.
        source: see :func:`plaindet.weights.read_state_dict`.

    Raises:
        WeightsError: the file can't be read safely (an ``.npz`` holding pickled objects, say), its
            layout is unknown, it is a BiT of another depth, or keys are missing, unexpected or of
            the wrong shape (all named).
    """
    sd, layout = convert_bit_state_dict(read_state_dict(source))
    built = _blocks_per_stage(sd)
    expected = BIT_LAYOUTS[model.depth]
    if built and built[: model.num_stages] != expected[: model.num_stages]:  # the stages not built may differ
        depth = next((d for d, blocks in BIT_LAYOUTS.items() if blocks == built), None)
        name = f"BiT ResNet-{depth}" if depth else "not a BiT ResNet-50 or -101"
        raise WeightsError(
            f"checkpoint ({layout} layout) has {'/'.join(map(str, built))} blocks per stage ({name}), but the model is a "
            f"BiT ResNet-{model.depth} ({'/'.join(map(str, expected))})"
        )
    unused = tuple(f"stages.{i}." for i in range(model.num_stages, 4)) + (("norm.",) if model.norm is None else ())
    sd = {k: v for k, v in sd.items() if not k.startswith(unused)}
    load_exact(model, sd, layout=layout, what=f"a BiT ResNet-{model.depth}")

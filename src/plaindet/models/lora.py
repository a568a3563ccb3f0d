"""LoRA adapters for the detector: add, train, save adapter-only files, merge for deployment.

LoRA (Hu et al. 2021) trains a low-rank update ``W + (alpha / r) * B @ A`` of a frozen weight ``W``,
with ``B`` starting at zero so an adapted model starts exactly where its base model was.

**peft, not our own implementation.** The adapter layers come from Hugging Face peft, the ``lora``
extra (``pip install 'plaindet[lora]'``), imported only inside the functions here. It expresses
everything we need: LoRA for ``nn.Linear`` (the ViT's attention and MLP projections) and for dense
``nn.Conv2d`` (the neck's 1x1 and 3x3 convs, adapted by a ``k x k`` conv down to rank ``r`` and a 1x1
conv back up), with exact merging; and ``inject_adapter_in_model`` adapts our modules *in place*, so
the model stays a :class:`~plaindet.models.plaindet.PlainDet` whose ``predict``, ``save`` and export
work unchanged (``get_peft_model`` would wrap it in a ``PeftModel``). Its layers are the ecosystem's
standard, tested against many models; writing our own would mean owning the initialization, the
dropout, the scaling and the conv merge math for no gain. What peft can't adapt we leave alone:
depthwise (grouped) convs, which it can't merge and whose rank would have to divide the number of
groups, and transposed convs, which it doesn't support; they stay frozen (below). Our own code is only what is specific to the detector:
which modules to adapt, which parameters train, the adapter file, and merging back into a plain
``PlainDet``.

**Which modules get adapters** (``LoraConfig.targets``), picked by module type from the model's
structure, never by name guessing, so the head can never be hit:

- ``backbone``: every ``nn.Linear`` of the ViT's blocks: ``attn.qkv`` (fused q/k/v),
  ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``. Not the patch embedding.
- ``neck``: every dense (``groups == 1``) ``nn.Conv2d`` of the neck: each level's 1x1 and 3x3 conv
  and the Mix-FFN ``fc1``/``fc2``. Not the depthwise or transposed convs.
- ``both``: the two together.

**What trains** after :func:`add_lora` (one rule, :func:`_finetuned_names`, which also decides what
an adapter file holds):

- the adapters, always;
- the head and the auxiliary head, entirely: they are small and the most task-specific part;
- a targeted neck: only its vectors (norm scales and shifts, biases) besides the adapters. Its
  matrices and kernels, adapted or not, stay frozen: that is what keeps the adapter file small.
  Vectors are O(channels), and letting them train (as in BitFit) lets the frozen layers recentre
  and rescale their features for the new data at no cost in file size; merging stays exact because
  a merge changes only weights. A neck that isn't targeted trains entirely, like the head;
- the backbone: only its adapters while it is frozen (pretrained weights: the normal case). A
  backbone built from random weights (``config.backbone_trainable``) keeps training entirely, with
  adapters on top if targeted: allowed, but of little use, and its adapter file holds the whole
  backbone.

LoRA adapts *trained* weights. A freshly built model (``create_model(..., backbone_weights=...)``)
has a pretrained backbone but a randomly initialized neck, so there ``targets="backbone"`` is the
useful choice; ``neck`` and ``both`` are for finetuning a trained detector::

    model = plaindet.load("coco.safetensors")
    add_lora(model, LoraConfig(rank=8, targets="both"))
    ...  # train
    save_adapter(model, "adapter.safetensors")   # a few MB
    deployable = plaindet.merge_lora(model)      # a plain PlainDet; plaindet.load works without peft

    # elsewhere, with the same base model:
    model = load_adapter(plaindet.load("coco.safetensors"), "adapter.safetensors")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from torch import nn

from plaindet.config import from_dict, to_dict
from plaindet.errors import CheckpointError, require_extra
from plaindet.version import __version__
from plaindet.weights import read_config, read_safetensors, save_safetensors

log = logging.getLogger("plaindet")

__all__ = [
    "ADAPTER_FORMAT", "LoraConfig", "adapted_names", "add_lora", "adapter_names", "base_name", "has_lora", "load_adapter", "lora_target_modules",
    "merge_lora", "save_adapter",
]  # fmt: skip

ADAPTER_FORMAT = "plaindet-adapter"
TARGETS = ("neck", "backbone", "both")


@dataclass
class LoraConfig:
    """LoRA adapters (``rank`` 0 means none). ``targets``: ``neck``, ``backbone`` or ``both``;
    ``alpha``: the update is scaled by ``alpha / rank`` (``None``: ``alpha = rank``); ``dropout`` on
    the adapters' input."""

    rank: int = 0
    alpha: float | None = None
    targets: str = "neck"
    dropout: float = 0.0

# Config fields an adapter file may set on the model it is loaded into; every other field describes
# the architecture and must match, so that the adapter and the base weights fit together.
_ADAPTER_FIELDS = {"name", "class_names", "category_ids", "image_size", "max_detections", "lora", "backbone_trainable"}


def _require_peft() -> ModuleType:
    return require_extra("peft", "lora", "LoRA")


def _tuner_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft adapter layers of ``model`` by module name (empty without peft: nothing can be adapted)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return {}
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters."""
    return bool(_tuner_layers(model))


def lora_target_modules(model: nn.Module, targets: str) -> list[str]:
    """Names of the modules that ``targets`` (``neck``, ``backbone`` or ``both``) adapts in ``model``.

    Chosen by type within the part concerned (see the module docstring), so a new layer of the same
    kind is adapted without editing a name list, and no module outside the part ever is.
    """
    if targets not in TARGETS:
        raise ValueError(f"LoRA targets must be one of {', '.join(TARGETS)}, got {targets!r}")
    names = []
    if targets in ("backbone", "both"):
        blocks = model.backbone.blocks
        names += [f"backbone.blocks.{n}" for n, m in blocks.named_modules() if isinstance(m, nn.Linear)]
    if targets in ("neck", "both"):
        # ConvTranspose2d is not a Conv2d subclass; depthwise convs are excluded by their groups.
        names += [f"neck.{n}" for n, m in model.neck.named_modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    return names


# peft keeps an adapted layer's own weights under ``<layer>.base_layer.`` and its adapters under
# ``<layer>.lora_A.<adapter>.`` / ``<layer>.lora_B.<adapter>.``; these two functions are the only
# places that know it, so state dicts of adapted and plain models can be matched key by key.
_BASE = ".base_layer."
_ADAPTER_A = ".lora_A."


def base_name(name: str) -> str:
    """The name a weight of an adapted model has in the same model without adapters
    (``blocks.0.attn.qkv.base_layer.weight`` -> ``blocks.0.attn.qkv.weight``); other names unchanged."""
    return name.replace(_BASE, ".")


def adapted_names(names, adapted_keys) -> dict[str, str]:
    """``{plain name: its name in the adapted model}`` for the weights ``names`` of a model without
    adapters, given ``adapted_keys`` (keys of the adapted model's state dict that include its adapters):
    a weight of a layer that has adapters moves under ``base_layer``, any other keeps its name."""
    adapted_layers = {k.split(_ADAPTER_A, 1)[0] for k in adapted_keys if _ADAPTER_A in k}
    out = {}
    for name in names:
        layer, _, leaf = name.rpartition(".")
        out[name] = f"{layer}{_BASE}{leaf}" if layer in adapted_layers else name
    return out


def adapter_names(model: nn.Module) -> set[str]:
    """Names of ``model``'s adapter parameters (LoRA's ``A`` and ``B``; empty without adapters)."""
    return _adapter_names(model)


def _check_lora_config(cfg: LoraConfig) -> None:
    if cfg.rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {cfg.rank}")
    if cfg.targets not in TARGETS:
        raise ValueError(f"LoRA targets must be one of {', '.join(TARGETS)}, got {cfg.targets!r}")
    if cfg.alpha is not None and cfg.alpha <= 0:
        raise ValueError(f"LoRA alpha must be positive (or None for alpha = rank), got {cfg.alpha}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {cfg.dropout}")


def add_lora(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Add LoRA adapters to ``model`` in place and set what trains; returns ``model``, still a ``PlainDet``.

    Args:
        model: a detector without adapters (merge or rebuild one that has them).
        cfg: ``rank`` (> 0), ``alpha`` (the update is scaled by ``alpha / rank``; ``None`` means
            ``alpha = rank``, a scale of 1), ``targets`` and ``dropout`` (on the adapters' input).

    The adapters start as an exact no-op (``B = 0``): outputs are unchanged until training. What
    trains afterwards is described in the module docstring. ``model.config.lora`` becomes ``cfg``, so
    ``model.save()`` and :func:`plaindet.load` rebuild the adapted model.
    """
    _check_lora_config(cfg)
    peft = _require_peft()
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters; merge them first (plaindet.merge_lora) or rebuild it")
    peft_cfg = peft.LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
        lora_dropout=cfg.dropout,
        target_modules=lora_target_modules(model, cfg.targets),
        bias="none",
    )
    peft.inject_adapter_in_model(peft_cfg, model)
    # peft leaves its config on the model; ours (model.config.lora) is the one that is saved and read.
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.config.lora = dataclasses.replace(cfg)
    _set_trainable(model)
    return model


def _adapter_names(model: nn.Module) -> set[str]:
    """Names of the adapter parameters (LoRA's ``A`` and ``B``), found through peft's layers, not by name."""
    names = set()
    for layer_name, layer in _tuner_layers(model).items():
        for attr in layer.adapter_layer_names:
            for name, _ in getattr(layer, attr).named_parameters():
                names.add(f"{layer_name}.{attr}.{name}")
    return names


def _finetuned_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train with LoRA, in ``named_parameters`` order.

    The single rule behind both ``requires_grad`` after :func:`add_lora` and the contents of an
    adapter file (see the module docstring for the reasons).
    """
    adapters = _adapter_names(model)
    backbone = {id(p) for p in model.backbone.parameters()}
    neck = {id(p) for p in model.neck.parameters()}
    neck_adapted = model.config.lora.targets in ("neck", "both")
    names = []
    for name, p in model.named_parameters():
        if name in adapters:
            trains = True
        elif id(p) in backbone:
            trains = model.config.backbone_trainable
        elif id(p) in neck:
            trains = not neck_adapted or p.dim() <= 1
        else:  # the heads
            trains = True
        if trains:
            names.append(name)
    return names


def _set_trainable(model: nn.Module) -> None:
    trainable = set(_finetuned_names(model))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the weights they adapt, in place, and return the plain ``PlainDet``.

    Each adapted layer's weight becomes ``W + (alpha / rank) * B @ A`` (for convs, the composition
    of the two adapter convs) and the layer is replaced by its base ``nn.Linear`` / ``nn.Conv2d``,
    so the state dict has exactly the keys of a model built without LoRA and ``config.lora.rank``
    is 0: ``save()`` then :func:`plaindet.load` work with no peft installed, and the model exports
    like any other. Outputs match the adapted model's up to float rounding. Parameters train as in
    a model without LoRA afterwards. A model without adapters is returned unchanged. To keep the
    adapted model too, merge a ``copy.deepcopy`` of it.
    """
    layers = _tuner_layers(model)
    for name, layer in layers.items():
        # safe_merge computes the merged weight aside and refuses NaN/inf (a diverged adapter).
        layer.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    model.config.lora = LoraConfig()
    if layers:
        for p in model.parameters():
            p.requires_grad_(True)
        model.set_backbone_trainable(model.config.backbone_trainable)
    return model


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write only what LoRA finetuning changed to one ``.safetensors`` file, atomically.

    The file holds the adapters, the heads and a targeted neck's vectors (everything that trains,
    see the module docstring; the whole backbone too if it trains) and the model's config in its
    header (format ``plaindet-adapter``). :func:`load_adapter` applies it to the base model it was
    trained from. Returns the path.
    """
    if not has_lora(model):
        raise ValueError("the model has no LoRA adapters to save; use model.save() for a full checkpoint")
    if model.config.backbone_trainable:
        log.warning("the backbone trains (it was built from random weights), so the adapter file holds all of it")
    names = set(_finetuned_names(model))
    state = {k: v for k, v in model.state_dict().items() if k in names}
    meta = {"format": ADAPTER_FORMAT, "plaindet_version": __version__, "config": json.dumps(to_dict(model.config))}
    return save_safetensors(state, path, meta)


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Apply an adapter file written by :func:`save_adapter` to its base model, in place; returns ``model``.

    ``model`` is the detector the adapter was trained from (for instance ``plaindet.load(base)``),
    with no adapters or with adapters of the same LoRA config, which are then overwritten. The
    architecture in the adapter's config must match the model's; its class names, image size,
    ``max_detections`` and LoRA settings replace the model's. Raises :class:`CheckpointError` when
    the file is not an adapter or does not fit the model.
    """
    state, meta = read_safetensors(path)
    adapter_cfg = from_dict(type(model.config), read_config(meta, path, ADAPTER_FORMAT))
    ours, theirs = to_dict(model.config), to_dict(adapter_cfg)
    differ = sorted(k for k in theirs if k not in _ADAPTER_FIELDS and ours.get(k) != theirs[k])
    if differ:
        details = "; ".join(f"{k}: adapter {theirs[k]!r}, model {ours.get(k)!r}" for k in differ)
        raise CheckpointError(f"{path}: the adapter was trained on a different architecture ({details})")
    if has_lora(model) and model.config.lora != adapter_cfg.lora:
        raise CheckpointError(
            f"{path}: the model has LoRA adapters {model.config.lora} but the file holds {adapter_cfg.lora}; "
            "load the adapter into a model without adapters"
        )

    for key in _ADAPTER_FIELDS - {"lora"}:
        setattr(model.config, key, getattr(adapter_cfg, key))
    if has_lora(model):
        _set_trainable(model)  # backbone_trainable may have changed
    else:
        add_lora(model, adapter_cfg.lora)

    expected = set(_finetuned_names(model))
    missing, unexpected = sorted(expected - state.keys()), sorted(state.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: adapter does not match its config: missing {missing}, unexpected {unexpected}")
    model.load_state_dict(state, strict=False)
    return model

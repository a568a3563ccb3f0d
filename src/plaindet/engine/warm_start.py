"""Start a run from a trained detector (``plaindet train --init CKPT``): every weight whose name and
shape match is taken, the class layers are re-initialized when the classes differ, and a report says
what was taken and what was not. The way RF-DETR and Ultralytics users finetune a COCO-trained
detector on their own data; ``--resume`` (the exact continuation of one run) is a different thing.

Which tensors are class layers is found from the model's structure, not from names: the tensors
whose shape changes when the config's ``num_classes`` changes by one (built on the meta device, so
free). That covers every registered family (plaindet's two dense heads, DETR's ``class_embed``
with its no-object column, ...). When the source's class names equal the run's (same names, same
order) they are taken like every other weight, so the run starts from the source's predictions;
otherwise they keep the fresh initialization the run's model was built with, even when the class
counts happen to agree.

LoRA either side: a source with adapters is merged first (its deployed weights are what it
learned), and a run with adapters takes the source's weights into the layers under them
(``base_layer``), leaving the adapters at their no-op start. A source with a frozen backbone
(plaindet built on pretrained weights) gives a frozen backbone here too: it is the same pretrained
backbone, and it is never fully trained again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("plaindet")

__all__ = ["InitReport", "class_dependent_keys", "init_from_checkpoint"]


@dataclass
class InitReport:
    """What :func:`init_from_checkpoint` did, by state-dict key of the run's model.

    ``taken``: copied from the source. ``reinitialized``: class layers left at their fresh
    initialization because the classes differ. ``shape_mismatch``: same name, another shape
    (``"name (source shape) vs (model shape)"``), left as initialized. ``not_in_source``: the model's
    keys the source lacks (LoRA adapters, a part the source has not). ``unused``: source keys the
    model lacks. ``kept``: the model's own backbone, left as built (``keep_backbone``).
    """

    source: str
    same_classes: bool
    taken: list[str] = field(default_factory=list)
    reinitialized: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    not_in_source: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    backbone_frozen: bool = False

    def summary(self) -> str:
        from plaindet.weights import listing

        parts = [f"init from {self.source}: took {len(self.taken)} tensors"]
        if self.reinitialized:
            parts.append(f"re-initialized the class layers (the classes differ): {listing(self.reinitialized)}")
        if self.shape_mismatch:
            parts.append(f"not taken, other shape: {listing(self.shape_mismatch)}")
        if self.not_in_source:
            parts.append(f"not in the source (left as initialized): {listing(self.not_in_source)}")
        if self.unused:
            parts.append(f"in the source but not in this model: {listing(self.unused)}")
        if self.kept:
            parts.append(f"kept the model's own backbone ({len(self.kept)} tensors)")
        if self.backbone_frozen:
            parts.append("backbone frozen, as in the source")
        return "; ".join(parts)

    def write(self, path: str | os.PathLike) -> Path:
        from plaindet.weights import atomic_write

        text = json.dumps(dataclasses.asdict(self), indent=1)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def class_dependent_keys(config) -> set[str]:
    """State-dict keys (names without LoRA) of ``config``'s model whose shape depends on the number of
    classes: the model built with ``num_classes`` and with one more, on the meta device, compared."""
    other = dataclasses.replace(config, num_classes=config.num_classes + 1, class_names=[], category_ids=[])
    if any(f.name == "lora" for f in dataclasses.fields(config)):  # the plain architecture: names without LoRA
        config = dataclasses.replace(config, lora=type(config.lora)())
        other = dataclasses.replace(other, lora=type(other.lora)())
    with torch.device("meta"):
        a, b = config.model_class()(config).state_dict(), other.model_class()(other).state_dict()
    return {k for k, v in a.items() if k not in b or b[k].shape != v.shape}


def init_from_checkpoint(model: nn.Module, path: str | os.PathLike, keep_backbone: bool = False) -> InitReport:
    """Copy into ``model``, in place, the weights of the detector saved at ``path`` (any registered
    family: ``model.save``, a run's ``best``/``last``, with or without LoRA) whose name and shape
    match; the class layers only when the class names are the same. ``keep_backbone``: leave the
    model's backbone (``backbone.*``) as it is, e.g. pretrained weights it was built with (listed as
    ``kept``). See the module docstring."""
    from plaindet.engine.backbone_store import frozen_backbone
    from plaindet.models.factory import load_model
    from plaindet.models.lora import adapter_names, base_name, has_lora, merge_lora

    source = load_model(path)
    source_frozen = frozen_backbone(source) is not None and getattr(source.config, "backbone_trainable", True) is False
    if has_lora(source):
        merge_lora(source)
    theirs = source.state_dict()
    same_classes = list(source.config.class_names) == list(model.config.class_names)
    class_keys = class_dependent_keys(model.config)
    report = InitReport(source=str(path), same_classes=same_classes)
    take: dict[str, torch.Tensor] = {}
    ours = model.state_dict()
    used = set()
    for key, value in ours.items():
        plain = base_name(key)
        if keep_backbone and key.startswith("backbone."):
            report.kept.append(key)
            continue
        if plain not in theirs:
            report.not_in_source.append(key)
            continue
        used.add(plain)
        if plain in class_keys and not same_classes:
            report.reinitialized.append(key)
        elif theirs[plain].shape != value.shape:
            report.shape_mismatch.append(f"{key} {tuple(theirs[plain].shape)} vs {tuple(value.shape)}")
        else:
            take[key] = theirs[plain]
            report.taken.append(key)
    report.unused = sorted(set(theirs) - used - {base_name(k) for k in report.kept})
    model.load_state_dict(take, strict=False)
    adapters = adapter_names(model)
    backbone_taken = all(k in take for k in ours if k.startswith("backbone.") and k not in adapters)
    if source_frozen and backbone_taken and not keep_backbone and hasattr(model, "set_backbone_trainable"):
        model.set_backbone_trainable(False)
        report.backbone_frozen = True
    return report

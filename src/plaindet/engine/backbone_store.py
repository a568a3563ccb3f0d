"""A frozen backbone, stored once per training run instead of in every checkpoint.

With pretrained backbone weights the backbone does not train (LoRA adapters on it do, and they are
not part of it here), so a run's ``best``, ``last`` and ``epoch_N`` files need not repeat it: for a
plaindet-b LoRA run that is 344 MB of each 452 MB checkpoint. :class:`~plaindet.engine.train.TrainConfig`'s
``backbone_store`` picks where it lives:

- ``"once"`` (default): ``OUT/backbone.safetensors`` (format :data:`BACKBONE_FORMAT`), written when
  the run starts. Its tensors have the backbone module's own names without LoRA wrappers (for a ViT,
  timm's names), so it is also valid ``backbone_weights`` for another run.
- ``"reference"``: nothing is copied; checkpoints record ``backbone_weights`` (made absolute) and
  the backbone is rebuilt from it at load time. For weights the user keeps anyway (a CLIP file, a
  Hub id).
- ``"every"``: every checkpoint holds the backbone, as before (a file that travels alone).

Every training checkpoint of a frozen backbone records a :class:`BackboneRecord` in its header: the
SHA-256 of the backbone's tensors (:func:`plaindet.weights.state_digest` of the names above), and
where they are. Loading (:func:`plaindet.load`, ``--resume``) verifies the digest, so a changed or
swapped backbone file is an error naming the file, never a silently different model; the digest
also tells :func:`plaindet.load_group` which detectors share a backbone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from plaindet.errors import CheckpointError
from plaindet.version import __version__
from plaindet.weights import read_safetensors, save_safetensors, state_digest

BACKBONE_FILE = "backbone.safetensors"
BACKBONE_FORMAT = "plaindet-backbone"
STORES = ("once", "reference", "every")

__all__ = ["BACKBONE_FILE", "BACKBONE_FORMAT", "STORES", "BackboneRecord", "frozen_backbone", "read_backbone_file", "save_backbone", "with_backbone"]


@dataclass
class BackboneRecord:
    """Which frozen backbone a checkpoint was trained on, and where its tensors are.

    ``sha256``: :func:`~plaindet.weights.state_digest` of the backbone's tensors (plain names, no
    ``backbone.`` prefix). ``file``: a file name next to the checkpoint holding them, or ``None``.
    ``source``: the ``backbone_weights`` the run was given (an absolute path or a Hub id), or ``None``.
    ``inline``: the checkpoint holds the backbone itself (``backbone_store="every"``).
    """

    sha256: str
    file: str | None = None
    source: str | None = None
    inline: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_header(cls, header: dict[str, str], path: str | os.PathLike) -> BackboneRecord | None:
        """The record in a checkpoint's header, or ``None`` if it has none (a trainable backbone)."""
        if "backbone" not in header:
            return None
        try:
            data = json.loads(header["backbone"])
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as e:
            raise CheckpointError(f"{path}: the backbone record in its header is malformed ({e})") from None


def frozen_backbone(model: nn.Module) -> dict[str, Tensor] | None:
    """The backbone's tensors (parameters and buffers) by their names without LoRA wrappers, when the
    backbone is frozen: no parameter of it trains except LoRA adapters, which are left out. ``None``
    when some backbone weight trains (then every checkpoint must hold the backbone)."""
    from plaindet.models.lora import adapter_names, base_name

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        return None
    adapters = adapter_names(backbone)
    if any(p.requires_grad for n, p in backbone.named_parameters() if n not in adapters):
        return None
    return {base_name(k): v for k, v in backbone.state_dict().items() if k not in adapters}


def backbone_keys(model: nn.Module) -> set[str]:
    """The model's state-dict keys that :func:`frozen_backbone` covers (``backbone.`` prefixed, LoRA
    wrappers as they are): what a checkpoint of a run with a stored backbone leaves out."""
    from plaindet.models.lora import adapter_names

    adapters = adapter_names(model.backbone)
    return {f"backbone.{k}" for k in model.backbone.state_dict() if k not in adapters}


def save_backbone(path: str | os.PathLike, state: dict[str, Tensor], *, sha256: str, source: str | None, model_name: str) -> Path:
    """Write the backbone ``state`` (from :func:`frozen_backbone`) to one safetensors file, atomically."""
    meta = {"format": BACKBONE_FORMAT, "plaindet_version": __version__, "sha256": sha256, "source": source or "", "model": model_name}
    return save_safetensors(state, path, meta)


def check_digest(state: dict[str, Tensor], record: BackboneRecord, where: str, checkpoint: str | os.PathLike) -> None:
    """A :class:`CheckpointError` unless ``state`` is the backbone ``record`` names."""
    digest = state_digest(state)
    if digest != record.sha256:
        raise CheckpointError(
            f"{where} is not the backbone {checkpoint} was trained on: its SHA-256 is {digest[:16]}..., the checkpoint "
            f"records {record.sha256[:16]}... (was the file replaced, or another run's backbone copied over it?)"
        )


def read_backbone_file(record: BackboneRecord, checkpoint: str | os.PathLike) -> dict[str, Tensor]:
    """The backbone tensors a checkpoint with a stored backbone needs, read from ``record.file`` next to
    ``checkpoint`` and verified against ``record.sha256``; a missing file is a :class:`CheckpointError`
    naming it."""
    path = Path(checkpoint).parent / record.file
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint} holds only the weights that trained; its frozen backbone is in {path}, which is missing. "
            f"Keep the run folder's {record.file} next to the checkpoint (or export the model to ONNX, which is self-contained)."
        )
    state, meta = read_safetensors(path)
    if meta.get("format") != BACKBONE_FORMAT:
        raise CheckpointError(f"{path}: not a plaindet backbone file (format={meta.get('format')!r})")
    check_digest(state, record, str(path), checkpoint)
    return state


def with_backbone(state: dict[str, Tensor], backbone: dict[str, Tensor]) -> dict[str, Tensor]:
    """A checkpoint's ``state`` (which leaves the frozen backbone out) completed with ``backbone``
    (plain names, as :func:`frozen_backbone` gives them), each under its name in the model that
    ``state`` describes (LoRA-wrapped layers get their ``base_layer`` names)."""
    from plaindet.models.lora import adapted_names

    names = adapted_names([f"backbone.{k}" for k in backbone], state)
    return {**{names[f"backbone.{k}"]: v for k, v in backbone.items()}, **state}


def describe(state: dict[str, Any]) -> str:
    """``N tensors, X MB`` of a state dict, for log lines."""
    n = sum(t.numel() * t.element_size() for t in state.values() if isinstance(t, torch.Tensor))
    return f"{len(state)} tensors, {n / 1e6:.1f} MB"

"""Building and loading registered models: ``create_model``, ``list_models``, ``load_model``.

Importing this module imports every model family, so each family's variants are in
:data:`plaindet.models.registry.REGISTRY` before any lookup; the registry itself imports no model.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any

import torch

from plaindet.config import apply_overrides, from_dict
from plaindet.errors import CheckpointError, ConfigError, MissingExtra, UserError, WeightsError
import plaindet.models.deperceiver  # noqa: F401 (each family registers its variants on import)
import plaindet.models.detr  # noqa: F401
import plaindet.models.patchtok  # noqa: F401
import plaindet.models.plaindet  # noqa: F401
from plaindet.models.base import CHECKPOINT_FORMAT, DetectionConfig, DetectionModel
from plaindet.models.limits import parameter_problem, size_problem
from plaindet.models.registry import REGISTRY
from plaindet.weights import read_config, read_metadata, read_safetensors

__all__ = ["backbone_checkpoint", "count_flops", "count_parameters", "create_model", "describe_model", "list_models", "load_model", "model_config", "model_from_state"]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(REGISTRY)


def describe_model(name: str) -> str:
    """The first line of the variant's docstring."""
    doc = (REGISTRY[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def model_config(name: str, **overrides: Any) -> DetectionConfig:
    """The config of variant ``name`` with ``overrides`` applied strictly (unknown keys are errors)."""
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, list(REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (available: {', '.join(sorted(REGISTRY))})")
    return apply_overrides(REGISTRY[name](), overrides, where=name)


def create_model(name: str, num_classes: int | None = None, backbone_weights: Any = None, **overrides: Any) -> DetectionModel:
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of classes; ``class_names`` (a list) may be given instead or too.
        backbone_weights: pretrained backbone weights (a local file, a Hugging Face Hub id or a state
            dict: CLIP image-encoder weights for plaindet, ResNet weights for DETR and DePerceiver,
            or BiT weights (Google's ``.npz``, timm or transformers) with ``backbone="bit"``, DeiT
            weights for the patch-token models); a pretrained ViT backbone is frozen. A plaindet
            checkpoint (``model.save``, a run's ``best``/``last``) or a training run's folder (its
            ``best``, else ``last``) works too: its backbone is taken (LoRA adapters merged), so a
            backbone trained on one task seeds another (see :func:`backbone_checkpoint`).
        overrides: any config field, checked strictly (nested configs take dicts, e.g.
            ``backbone=dict(window_size=0)``).
    """
    if num_classes is not None:
        overrides["num_classes"] = num_classes
        names = overrides.get("class_names")
        if names is not None and len(names) != num_classes:
            raise ConfigError(f"num_classes={num_classes} but {len(names)} class_names were given")
    elif overrides.get("class_names"):
        overrides["num_classes"] = len(overrides["class_names"])
    if "num_classes" in overrides:
        # Names and ids default to 0..K-1 for the new class count unless given.
        overrides.setdefault("class_names", [])
        overrides.setdefault("category_ids", [])
    problem = size_problem(overrides)  # before the config exists: its __post_init__ allocates per class
    if problem:
        raise ConfigError(f"{name}: {problem}")
    config = model_config(name, **overrides)  # dataclasses.replace re-runs __post_init__'s checks
    problem = parameter_problem(config)
    if problem:
        raise ConfigError(f"{name}: {problem}")
    checkpoint = backbone_checkpoint(backbone_weights)
    if checkpoint is not None:
        return _build_on_backbone_of(config, checkpoint)
    return config.build(backbone_weights=backbone_weights)


def backbone_checkpoint(source: Any) -> Path | None:
    """The plaindet checkpoint ``source`` names, when it names one, else ``None`` (weights of another kind).

    A ``.safetensors`` file whose header says plaindet wrote it (a saved model or a training
    checkpoint), a training run's folder (its ``best.safetensors``, else ``last.safetensors``), or a
    folder holding a plaindet ``model.safetensors``.
    """
    from plaindet.engine.train_state import TRAIN_STATE_FORMAT

    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(source)
    if path.is_dir():
        found = [path / n for n in ("best.safetensors", "last.safetensors", "model.safetensors") if (path / n).is_file()]
        if not found:
            return None
        path = found[0]
    if not path.is_file() or path.suffix.lower() != ".safetensors":
        return None
    meta = read_metadata(path)
    return path if meta is not None and meta.get("format") in (CHECKPOINT_FORMAT, TRAIN_STATE_FORMAT) else None


def _build_on_backbone_of(config: DetectionConfig, path: Path) -> DetectionModel:
    """``config``'s model with the backbone of the detector in ``path``, loaded as pretrained weights
    (so frozen, as any pretrained backbone). A backbone that doesn't fit (another size or family) is a
    :class:`WeightsError` naming the file, both models and what differs."""
    from plaindet.config import to_dict
    from plaindet.models.lora import has_lora, merge_lora

    source = load_model(path)
    if has_lora(source):
        merge_lora(source)  # the backbone the detector ran with: its adapters folded in
    try:
        return config.build(backbone_weights=source.backbone.state_dict())
    except WeightsError as e:
        ours, theirs = getattr(config, "backbone", None), getattr(source.config, "backbone", None)
        differ = ""
        if dataclasses.is_dataclass(ours) and dataclasses.is_dataclass(theirs):
            a, b = to_dict(theirs), to_dict(ours)
            diffs = [f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            differ = f" (backbone settings, checkpoint vs model: {', '.join(diffs)})" if diffs else ""
        raise WeightsError(f"{path}: the backbone of this {source.config.name} checkpoint does not fit {config.name}{differ}: {e}") from None


def count_parameters(config: DetectionConfig) -> int:
    """Parameters of the model ``config`` describes (training-only parts included), counted on the
    meta device: shapes only, no memory, no initialization."""
    with torch.device("meta"):
        return sum(p.numel() for p in config.model_class()(config).parameters())


def count_flops(config: DetectionConfig, size: int | tuple[int, int] = 640, batch: int = 1) -> int:
    """FLOPs of one inference pass (``postprocess(forward(images))``) of the model ``config`` describes,
    on ``batch`` images of ``size`` (``(height, width)``, or a square side; rounded up to the size
    divisor as prediction pads them).

    Counted by :func:`plaindet.flops.flop_counter` on the meta device (shapes only: no memory, no
    weights; 2 FLOPs per multiply-add, see that module for the convention). The
    patch-token decoder is counted at its full length (``3 * max_objects + 1`` steps), an upper
    bound of what an image costs.

    A decoder that writes ``max_objects`` objects a token at a time (a config with that field)
    costs a quadratic in it (step ``t`` attends to ``t`` cached tokens), so three short decodings
    (1, 2 and 3 objects) give the full count exactly, in a tenth of the time of counting all its
    steps (patchtok-ti at 640 px: 9 s); the registry tests check the two agree.
    """
    m = getattr(config, "max_objects", None)
    if m is not None and m > 3:
        f1, f2, f3 = (_count_flops(dataclasses.replace(config, max_objects=k), size, batch) for k in (1, 2, 3))
        # Newton's forward differences: exact for a quadratic.
        return f1 + (m - 1) * (f2 - f1) + (m - 1) * (m - 2) // 2 * (f3 - 2 * f2 + f1)
    return _count_flops(config, size, batch)


def _count_flops(config: DetectionConfig, size: int | tuple[int, int], batch: int) -> int:
    from plaindet.flops import flop_counter

    h, w = (size, size) if isinstance(size, int) else size
    with torch.device("meta"):
        model = config.model_class()(config).eval().requires_grad_(False)  # the counter's module hooks need no autograd
        div = model.size_divisor
        images = torch.zeros(batch, 3, -(-h // div) * div, -(-w // div) * div, dtype=torch.uint8)
        with torch.no_grad(), flop_counter() as counter:
            model.postprocess(model(images))
    return counter.get_total_flops()


def model_from_state(config: dict, state: dict) -> DetectionModel:
    """Rebuild any registered model from a checkpoint's config dict (its ``name`` picks the variant's
    config class) and weights. A config over a size limit (:mod:`plaindet.models.limits`) is a
    ``ValueError`` raised before anything is built."""
    cfg = checked_config(config)
    return cfg.model_class().from_state(cfg, state)


def checked_config(config: dict) -> DetectionConfig:
    """The dataclass config of a checkpoint's config dict, checked against the size limits first
    (:mod:`plaindet.models.limits`); ``ValueError`` (a :class:`ConfigError`) says what is wrong."""
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ConfigError("the checkpoint's config has no model name")
    problem = size_problem(config)
    if problem:
        raise ConfigError(problem)
    cfg = from_dict(type(model_config(config["name"])), config)
    problem = parameter_problem(cfg)
    if problem:
        raise ConfigError(problem)
    return cfg


def load_model(path: str | os.PathLike, device: str = "cpu") -> DetectionModel:
    """Rebuild any plaindet model saved with ``save`` (or a training run's ``best``/``last`` file).

    ``path`` is a ``.safetensors`` file or a folder holding ``model.safetensors``. Nothing but that
    file is needed: the config travels in its header. No code is unpickled. A training checkpoint
    gives its EMA weights (the ones evaluated and deployed). A checkpoint of a run with a frozen
    backbone may hold only what trained; then its backbone is read from the file its header names
    (the run folder's ``backbone.safetensors``) or rebuilt from the recorded ``backbone_weights``,
    and checked against the recorded SHA-256 (see :mod:`plaindet.engine.backbone_store`); a missing
    or different backbone is a :class:`CheckpointError` naming the file it needs. A run's
    ``best`` is in ``save``'s format and may leave its frozen backbone out the same way.
    """
    from plaindet.engine.backbone_store import BackboneRecord, read_backbone_file, with_backbone
    from plaindet.engine.train_state import TRAIN_STATE_FORMAT, inference_weights

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    meta = read_metadata(p)  # the header alone: its config is checked before a tensor is read
    if meta is None:
        _, meta = read_safetensors(p)  # raises the CheckpointError that says why the file can't be read
    train_state = meta.get("format") == TRAIN_STATE_FORMAT
    config = read_config(meta, p, TRAIN_STATE_FORMAT if train_state else CHECKPOINT_FORMAT)
    try:
        cfg = checked_config(config)
    except MissingExtra:
        raise
    except (ValueError, TypeError) as e:  # ConfigError included: unknown family or key, a size over its limit
        raise CheckpointError(f"{p}: {e}") from None
    state, meta = read_safetensors(p)
    if train_state:
        state = inference_weights(state)
    record = BackboneRecord.from_header(meta, p)  # a run's best and last may leave a frozen backbone out
    if record is not None and not record.inline:
        backbone = read_backbone_file(record, p) if record.file else _backbone_from_source(config, record, p)
        state = with_backbone(state, backbone)
    try:
        model = cfg.model_class().from_state(cfg, state)
    except UserError:
        raise  # already says what to do (a missing extra, say)
    except (ValueError, TypeError, RuntimeError) as e:  # weights that don't fit the model (torch: a size mismatch)
        raise CheckpointError(f"{p}: {e}") from None
    return model.to(device)


def _backbone_from_source(config: dict, record, checkpoint: Path) -> dict:
    """The frozen backbone of a checkpoint that records only where it came from (``backbone_store=
    "reference"``): built from ``record.source`` as the run built it, and checked by its SHA-256."""
    from plaindet.engine.backbone_store import check_digest, frozen_backbone

    cfg = from_dict(type(model_config(config["name"])), config)
    if any(f.name == "lora" for f in dataclasses.fields(cfg)):
        cfg = dataclasses.replace(cfg, lora=type(cfg.lora)())  # the backbone alone: adapters come from the checkpoint
    try:
        found = backbone_checkpoint(record.source)
        model = _build_on_backbone_of(cfg, found) if found is not None else cfg.build(backbone_weights=record.source)
    except (OSError, UserError) as e:
        raise CheckpointError(
            f"{checkpoint} holds only the weights that trained; its frozen backbone comes from {record.source}, which can't be read ({e})"
        ) from None
    backbone = frozen_backbone(model)
    if backbone is None:
        raise CheckpointError(f"{checkpoint}: {record.source} did not give a frozen backbone")
    check_digest(backbone, record, str(record.source), checkpoint)
    return backbone

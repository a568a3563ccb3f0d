"""Registered model variants: each is a small function returning its config."""

from __future__ import annotations

import difflib
from typing import Any, Callable

from plaindet.config import apply_overrides

_REGISTRY: dict[str, Callable[[], Any]] = {}


def register_model(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register ``fn`` (a function returning a config) under its name with ``_`` written as ``-``."""
    name = fn.__name__.replace("_", "-")
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    _REGISTRY[name] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    _import_variants()
    return sorted(_REGISTRY)


def describe_model(name: str) -> str:
    """The first line of the variant's docstring."""
    _import_variants()
    doc = (_REGISTRY[name].__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def model_config(name: str, **overrides: Any):
    """The config of variant ``name`` with ``overrides`` applied strictly (unknown keys are errors)."""
    _import_variants()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (available: {', '.join(sorted(_REGISTRY))})")
    return apply_overrides(_REGISTRY[name](), overrides, where=name)


def create_model(name: str, num_classes: int | None = None, backbone_weights: Any = None, **overrides: Any):
    """Build a registered model.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of classes; ``class_names`` (a list) may be given instead or too.
        backbone_weights: pretrained backbone weights (a local file, a Hugging Face Hub id or a state
            dict; CLIP image-encoder weights for plaindet, see :mod:`plaindet.models.clip_weights`);
            when given the backbone is frozen.
        overrides: any config field, checked strictly (nested configs take dicts, e.g.
            ``backbone=dict(window_size=0)``).
    """
    if num_classes is not None:
        overrides["num_classes"] = num_classes
        names = overrides.get("class_names")
        if names is not None and len(names) != num_classes:
            raise ValueError(f"num_classes={num_classes} but {len(names)} class_names were given")
    elif overrides.get("class_names"):
        overrides["num_classes"] = len(overrides["class_names"])
    if "num_classes" in overrides:
        # Names and ids default to 0..K-1 for the new class count unless given.
        overrides.setdefault("class_names", [])
        overrides.setdefault("category_ids", [])
    config = model_config(name, **overrides)  # dataclasses.replace re-runs __post_init__'s checks
    return config.build(backbone_weights=backbone_weights)


def _import_variants() -> None:
    # Variants register themselves when their module is imported; importing here (not at package
    # import) keeps `import plaindet` light and the registry complete before any lookup.
    import plaindet.models.patchtok  # noqa: F401
    import plaindet.models.plaindet  # noqa: F401
    from plaindet.models import deperceiver, detr  # noqa: F401

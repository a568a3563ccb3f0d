"""The table of registered model variants and the decorator that fills it; it imports no model.

A variant is a small function returning its config, registered under its name with ``_`` written as
``-`` (``plaindet_t`` -> ``plaindet-t``). :mod:`plaindet.models.factory` imports every model module, so
each registers on import, and owns the lookups (``create_model``, ``list_models``, ``load``).
"""

from __future__ import annotations

from typing import Any, Callable

REGISTRY: dict[str, Callable[[], Any]] = {}


def register_model(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register ``fn`` (a function returning a config) under its name with ``_`` written as ``-``."""
    name = fn.__name__.replace("_", "-")
    if name in REGISTRY:
        raise ValueError(f"model {name!r} is registered twice")
    REGISTRY[name] = fn
    return fn

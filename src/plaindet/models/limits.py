"""Size limits on a model config, checked before anything is built: a checkpoint's header is input.

A config read from a file (or given as overrides) can ask for any size. Building it as asked would
reach torch's allocator with a width of 10^7 (a 30 GB matrix), or spend hours creating 10^6 blocks
before failing. So a config is checked in two steps, each naming the limit it hit:

1. :func:`size_problem`, on the plain dict (before the dataclass is made: ``__post_init__`` itself
   allocates a list of ``num_classes`` names): every integer setting is at most :data:`MAX_SIZE`
   and every count of layers or blocks (:data:`LAYER_FIELDS`) at most :data:`MAX_LAYERS`.
2. :func:`parameter_problem`, on the dataclass: the model is built on the meta device (shapes only,
   no memory: 2.6 s for 256 ViT-B blocks on one CPU core) and its parameters and buffers counted;
   more than :data:`MAX_PARAMETERS` is refused, as is a config that can't be built at all (a
   negative width, heads that don't divide the width).

The limits are well above every registered variant (the largest, plaindet-b, has 0.1 billion
parameters) and below what would exhaust a machine's memory in fp32.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LAYER_FIELDS", "MAX_LAYERS", "MAX_PARAMETERS", "MAX_SIZE", "parameter_problem", "size_problem"]

MAX_SIZE = 100_000
"""The largest value of any integer setting (a width, a class count, an image side)."""

MAX_LAYERS = 256
"""The largest number of layers or blocks in any one stack."""

LAYER_FIELDS = ("depth", "encoder_layers", "decoder_layers", "latent_layers", "neck_blocks", "head_depth")
"""The settings, in any family's config or its nested configs, that count layers or blocks."""

MAX_PARAMETERS = 2_000_000_000
"""The most parameters and buffer elements a model may have (8 GB in fp32)."""


def size_problem(config: Any, where: str = "") -> str | None:
    """What is over a limit in a config dict (nested dicts included), or ``None`` when nothing is.

    Only integers are checked (a wrong type is the strict config reader's job); a float that is a
    whole number counts as the integer it will become. Lists (``strides``, ``category_ids``) are
    not sizes and are not checked.
    """
    if not isinstance(config, dict):
        return None
    for key, value in config.items():
        name = f"{where}.{key}" if where else str(key)
        if isinstance(value, dict):
            problem = size_problem(value, name)
            if problem:
                return problem
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and not value.is_integer():
            continue
        limit, what = (MAX_LAYERS, "MAX_LAYERS") if key in LAYER_FIELDS else (MAX_SIZE, "MAX_SIZE")
        if abs(value) > limit:
            shown = f"{int(value)}" if abs(value) < 10**15 else f"{value:g}" if isinstance(value, float) else f"(an integer of {value.bit_length()} bits)"
            return f"{name}={shown} is over the limit of {limit:,} (plaindet.models.limits.{what}); refused before building anything"
    return None


def parameter_problem(config: Any) -> str | None:
    """What stops the model of dataclass ``config`` from being built within :data:`MAX_PARAMETERS`,
    or ``None``. Builds it on the meta device: nothing is allocated or initialized."""
    import torch

    try:
        with torch.device("meta"):
            model = config.model_class()(config)
    except Exception as e:  # any failure here is the config's: shapes only, no data, no file
        return f"the config does not describe a model that can be built ({type(e).__name__}: {e})"
    count = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    if count > MAX_PARAMETERS:
        return (
            f"the config describes a model of {count / 1e9:,.1f} billion parameters, over the limit of "
            f"{MAX_PARAMETERS / 1e9:g} billion (plaindet.models.limits.MAX_PARAMETERS); refused before allocating any"
        )
    return None

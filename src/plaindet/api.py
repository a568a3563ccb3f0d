"""The small public surface: load a saved detector."""

from __future__ import annotations

import os

from plaindet.checkpoint import CheckpointError, read_config, read_safetensors


def load(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild any plaindet model saved with ``save`` (or a training run's ``best``/``last`` file).

    ``path`` is a ``.safetensors`` file or a folder holding ``model.safetensors``. Nothing but that
    file is needed: the config travels in its header. No code is unpickled.
    """
    from pathlib import Path

    from plaindet.engine.checkpoint import TRAIN_STATE_FORMAT
    from plaindet.models.base import CHECKPOINT_FORMAT, model_from_state

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    state, meta = read_safetensors(p)
    if meta.get("format") == TRAIN_STATE_FORMAT:  # a training checkpoint: deploy its EMA weights
        from plaindet.engine.checkpoint import TrainState

        ckpt = TrainState(p, (state, meta))
        config, state = ckpt.model_config, ckpt.inference_weights()
    else:
        config = read_config(meta, p, CHECKPOINT_FORMAT)
    try:
        model = model_from_state(config, state)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{p}: {e}") from None
    return model.to(device)

"""The two kinds of file a run writes: the resumable training state (``last``, ``epoch_N``) and the
deployable weights (``best``).

**Training state** (:func:`save_train_state`): everything a run needs to continue bit for bit, in one
safetensors file.

A checkpoint holds the model's raw weights (``model.*``), its EMA (``ema.*``, only the tensors that
differ from the raw ones: a frozen backbone is stored once), the optimizer's tensors
(``optim.<param index>.<name>``), the RNG states (``rng.*``), and as JSON in the header: the model
config (so :func:`plaindet.load` reads a checkpoint like any saved model, taking the EMA weights),
the training config, the optimizer's param groups, the gradient scaler, the EMA's update count, the
Python and NumPy RNG states, and the progress (epoch, batch within the epoch, step, best AP).

With a frozen backbone the header also holds a :class:`~plaindet.engine.backbone_store.BackboneRecord`
(the backbone's SHA-256 and where it is), and unless the run keeps it in every file the ``model.*``
tensors leave the backbone out: the checkpoint holds only what trains (see
:mod:`plaindet.engine.backbone_store`), and loading or resuming finds the backbone by the record.

**Deployable weights** (:func:`save_deployable`): what users predict with, export and share: the
weights the run evaluated (the EMA) and the model config, in the format of ``model.save``
(:data:`~plaindet.models.base.CHECKPOINT_FORMAT`), about a quarter of a training state (no raw
weights, optimizer moments or RNG). With a stored frozen backbone it leaves the backbone out and
records it as the training state does.

Files are written through :func:`plaindet.weights.atomic_write` (temporary file, fsync, rename),
so a kill at any instant leaves the previous checkpoint or the new one, never a torn file. Nothing is
unpickled when reading.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from plaindet.config import to_dict
from plaindet.engine.backbone_store import BackboneRecord, backbone_keys, check_digest, frozen_backbone
from plaindet.models.base import CHECKPOINT_FORMAT
from plaindet.errors import CheckpointError
from plaindet.version import __version__
from plaindet.weights import read_config, read_safetensors, save_safetensors

TRAIN_STATE_FORMAT = "plaindet-train-state"


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every RNG a training step may draw from: torch (CPU and CUDA), NumPy's and Python's globals."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).view(np.int32).copy())
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(gauss)], "python": _py_state(random.getstate())}
    return tensors, meta


def _py_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """``tensors``: the ``rng.*`` tensors of :func:`rng_state`, with the ``rng.`` prefix removed."""
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    keys = tensors["numpy"].numpy().view(np.uint32)
    np.random.set_state((kind, keys, pos, has_gauss, gauss))
    version, internal, py_gauss = meta["python"]
    random.setstate((version, tuple(internal), py_gauss))


def save_train_state(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    ema: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    train_config: dict,
    progress: dict,
    backbone: BackboneRecord | None = None,
) -> Path:
    """Write a resumable checkpoint atomically. ``ema`` is a :class:`~plaindet.engine.ema.ModelEMA` or ``None``.

    ``backbone``: the frozen backbone's record (see :mod:`plaindet.engine.backbone_store`); unless it is
    ``inline`` the backbone's tensors are left out (the EMA of a frozen tensor equals it exactly, so
    none of them is stored as ``ema.*`` either).
    """
    raw = model.state_dict()
    left_out = backbone_keys(model) if backbone is not None and not backbone.inline else set()
    tensors = {f"model.{k}": v for k, v in raw.items() if k not in left_out}
    meta: dict[str, Any] = {}
    if ema is not None:
        for k, v in ema.module.state_dict().items():
            if not torch.equal(v, raw[k]):
                tensors[f"ema.{k}"] = v
        meta["ema"] = {"updates": ema.updates, "decay": ema.decay}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if not isinstance(value, Tensor):
                raise TypeError(f"optimizer state {name!r} is not a tensor; cannot store it safely")
            tensors[f"optim.{idx}.{name}"] = value
    rng_tensors, rng_meta = rng_state()
    tensors.update(rng_tensors)
    meta.update(
        {
            "param_groups": opt["param_groups"],
            "optim_state_keys": sorted(opt["state"]),
            "scaler": scaler.state_dict(),
            "rng": rng_meta,
            "progress": progress,
            "train_config": train_config,
        }
    )
    header = {
        "format": TRAIN_STATE_FORMAT,
        "plaindet_version": __version__,
        "config": json.dumps(to_dict(model.config)),
        "train_state": json.dumps(meta),
    }
    if backbone is not None:
        header["backbone"] = backbone.to_json()
    return save_safetensors(tensors, path, header)


def save_deployable(path: str | os.PathLike, model: torch.nn.Module, *, backbone: BackboneRecord | None = None, record: dict | None = None) -> Path:
    """Write ``model``'s weights and config (``model.save``'s format, read by :func:`plaindet.load`), atomically.

    ``model``: the weights to ship (a run's EMA module). ``backbone``: the frozen backbone's record;
    unless it is ``inline`` the backbone's tensors are left out and the record goes into the header
    (loading finds the backbone by it). ``record``: the epoch's metrics, kept in the header as JSON
    (``metrics``) so a shared file says what it scored.
    """
    left_out = backbone_keys(model) if backbone is not None and not backbone.inline else set()
    tensors = {k: v for k, v in model.state_dict().items() if k not in left_out}
    header = {"format": CHECKPOINT_FORMAT, "plaindet_version": __version__, "config": json.dumps(to_dict(model.config))}
    if backbone is not None:
        header["backbone"] = backbone.to_json()
    if record:
        header["metrics"] = json.dumps(record)
    return save_safetensors(tensors, path, header)


class TrainState:
    """A checkpoint read back: ``tensors`` and ``meta`` (the decoded JSON), with restore helpers."""

    def __init__(self, path: str | os.PathLike, loaded: tuple[dict, dict] | None = None) -> None:
        """``loaded``: the file's ``(tensors, header)`` if already read."""
        self.path = Path(path)
        self.tensors, header = loaded if loaded is not None else read_safetensors(self.path)
        if header.get("format") != TRAIN_STATE_FORMAT or "train_state" not in header:
            raise CheckpointError(f"{self.path}: not a training checkpoint (format={header.get('format')!r}); --resume needs last.safetensors or an epoch checkpoint of a run")
        try:
            self.meta = json.loads(header["train_state"])
            self.model_config = read_config(header, self.path, TRAIN_STATE_FORMAT)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.path}: its training state header is not valid JSON ({e})") from None
        self.backbone = BackboneRecord.from_header(header, self.path)

    @property
    def progress(self) -> dict:
        return self.meta["progress"]

    @property
    def train_config(self) -> dict:
        return self.meta["train_config"]

    def _prefixed(self, prefix: str) -> dict[str, Tensor]:
        return _prefixed(self.tensors, prefix)

    def restore(self, model: torch.nn.Module, ema: Any, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Load weights, EMA, optimizer, scaler and RNG states into freshly built objects.

        A checkpoint without its frozen backbone takes the one ``model`` was built with, after checking
        that it is the backbone the checkpoint trained on (by its SHA-256).
        """
        raw = self._prefixed("model.")
        if self.backbone is not None and not self.backbone.inline:
            current = frozen_backbone(model)
            if current is None:
                raise CheckpointError(f"{self.path}: the run trained on a frozen backbone, but this model's backbone trains")
            check_digest(current, self.backbone, "the backbone this run was built with (its backbone_weights)", self.path)
            ours = model.state_dict()
            raw = {**{k: ours[k] for k in backbone_keys(model)}, **raw}
        missing, unexpected = model.load_state_dict(raw, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{self.path}: weights do not match the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        if ema is not None:
            if "ema" not in self.meta:
                raise CheckpointError(f"{self.path}: the run had no EMA, but this one has ema_decay > 0")
            ema.module.load_state_dict({**raw, **self._prefixed("ema.")})
            ema.updates = int(self.meta["ema"]["updates"])
        opt_state: dict[int, dict[str, Tensor]] = {}
        for key, value in self._prefixed("optim.").items():
            idx, name = key.split(".", 1)
            opt_state.setdefault(int(idx), {})[name] = value
        optimizer.load_state_dict({"state": opt_state, "param_groups": self.meta["param_groups"]})
        if self.meta.get("scaler"):
            scaler.load_state_dict(self.meta["scaler"])
        set_rng_state(self._prefixed("rng."), self.meta["rng"])

    def inference_weights(self) -> dict[str, Tensor]:
        """The weights to deploy: the EMA where there is one, else the raw weights."""
        return inference_weights(self.tensors)


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def inference_weights(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The model weights of a checkpoint's ``tensors``: the EMA (``ema.*``, stored only where it differs)
    over the raw weights (``model.*``)."""
    return {**_prefixed(tensors, "model."), **_prefixed(tensors, "ema.")}

"""The training loop. :func:`_train` reads top to bottom: start (or resume) a run, then epochs of
optimizer steps, each epoch ending with evaluation and checkpoints; each phase is a method of
:class:`_Run`, and only those methods change the run's :class:`Progress`.

A run folder gets:

- ``config.yaml``: the resolved :class:`TrainConfig`, the model config and the plaindet version;
  ``plaindet train --config run/config.yaml`` repeats the run.
- ``last.safetensors`` (every epoch, every ``save_every_steps`` steps and on SIGINT/SIGTERM) and
  ``epoch_NNNN.safetensors`` (every ``save_every`` epochs): full training states (see
  :mod:`plaindet.engine.train_state`), each loadable with :func:`plaindet.load` and resumable with
  ``--resume``.
- ``best.safetensors`` (highest validation AP): the deployable weights only, the EMA the run
  evaluated and the model config (``model.save``'s format, a quarter of a training state), the
  file to predict with, export and share; it does not resume.
- ``backbone.safetensors`` when the backbone is frozen (pretrained weights, LoRA or neck-only
  recipes): the backbone, stored once; the checkpoints then hold only what trains and find it by
  its hash (``backbone_store``, see :mod:`plaindet.engine.backbone_store`).
- ``init.json`` with ``init``: what was taken from the source detector and what was not.
- ``steps.jsonl``/``.csv`` and ``metrics.jsonl``/``.csv`` (see :mod:`plaindet.engine.logs`),
  ``tensorboard/`` with ``tensorboard=True``, and ``plots/`` at the end.

Exact resume: the data order is a function of ``(seed, epoch)`` and per-sample augmentation is
seeded by sample, so a resumed run skips the batches already seen and restores the weights, EMA,
optimizer, scaler and every RNG; on CPU an interrupted-and-resumed run then reproduces the
uninterrupted run's losses and weights bit for bit.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from plaindet.config import from_dict, to_dict
from plaindet.engine.train_config import RESUME_OVERRIDABLE, TrainConfig
from plaindet.errors import ConfigError, NotFound, TrainingDiverged, TrainingInterrupted
from plaindet.version import __version__

log = logging.getLogger("plaindet")


def load_splits(cfg: TrainConfig):
    """The train and validation :class:`DetectionDataset` named by ``cfg.data``."""
    from plaindet.data import load_dataset

    from plaindet.data.shapes import builtin_shapes, parse_builtin

    data: str | Path = cfg.data
    shapes = parse_builtin(cfg.data)  # "shapes" or "shapes:classes=..."
    if shapes is not None:
        data = builtin_shapes(train=cfg.shapes_train, val=cfg.shapes_val, test=cfg.shapes_test, seed=cfg.seed, folder=cfg.shapes_dir or None, **shapes)
    train, val = load_dataset(data, split=cfg.train_split), load_dataset(data, split=cfg.val_split)
    if cfg.max_train_images:
        train.samples = train.samples[: cfg.max_train_images]
    return train, val


def added_fields_missing(model: str, stored: dict) -> dict:
    """The model-config fields added since ``stored`` (a checkpoint's model config) was written, with
    the value that meant (the config class's ``ADDED_FIELDS``): what resuming must rebuild with."""
    from plaindet.models.factory import model_config

    added = getattr(type(model_config(model)), "ADDED_FIELDS", {})
    return {k: v for k, v in added.items() if k not in stored}


def _part(name: str) -> str:
    if ".lora_" in name:
        return "lora"
    for part in ("backbone", "neck", "head"):
        if name.startswith(part + ".") or name.startswith(f"aux_{part}."):
            return part
    return "other"


# The backbone's learning-rate multiplier when it starts from trained weights (DETR's recipe: 1e-5
# for the backbone against 1e-4 for the rest).
PRETRAINED_BACKBONE_LR_MULT = 0.1


def starts_trained(cfg: TrainConfig) -> bool:
    """Whether the backbone starts from trained weights: ``backbone_weights``, or a detector's
    checkpoint through ``init``."""
    return cfg.backbone_weights is not None or bool(cfg.init)


def backbone_lr_mult(model, cfg: TrainConfig) -> float:
    """The backbone's learning-rate multiplier: ``cfg.backbone_lr_mult`` if set, else
    :data:`PRETRAINED_BACKBONE_LR_MULT` when it :func:`starts_trained`, else the model's own
    ``scratch_backbone_lr_mult`` (what its backbone needs from random weights)."""
    if cfg.backbone_lr_mult is not None:
        return cfg.backbone_lr_mult
    return PRETRAINED_BACKBONE_LR_MULT if starts_trained(cfg) else model.scratch_backbone_lr_mult


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """AdamW groups by rule: no weight decay on 1-d tensors (norms, biases, scales) and on the names
    in ``model.no_weight_decay()`` (position tables, embeddings); a learning-rate multiplier per part
    (backbone weights, see :func:`backbone_lr_mult`; LoRA adapters, neck, head; anything else at 1).
    Frozen weights are left out."""
    skip = model.no_weight_decay()
    mult = {"backbone": backbone_lr_mult(model, cfg), "lora": cfg.lora_lr_mult, "neck": cfg.neck_lr_mult, "head": cfg.head_lr_mult, "other": 1.0}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = p.ndim >= 2 and name not in skip
        groups.setdefault((_part(name), decay), []).append(p)
    return [
        {"params": params, "name": f"{part}{'' if decay else '/no_decay'}", "weight_decay": cfg.weight_decay if decay else 0.0, "lr_mult": mult[part]}
        for (part, decay), params in groups.items()
    ]


def lr_factor(step: int, total: int, warmup: int, min_ratio: float, schedule: str = "cosine", milestones: tuple[int, ...] = (), gamma: float = 0.1) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total``, or times ``gamma`` at each
    step in ``milestones``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "step":
        return gamma ** sum(step >= m for m in milestones)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resumed_config(cfg: TrainConfig, stored: dict) -> TrainConfig:
    """The checkpoint's config, with the :data:`RESUME_OVERRIDABLE` fields ``cfg`` sets to non-defaults."""
    resumed = from_dict(TrainConfig, stored)
    defaults = TrainConfig()

    def changed(name: str) -> bool:
        return getattr(cfg, name) != getattr(defaults, name) and getattr(cfg, name) != getattr(resumed, name)

    changes = {k: getattr(cfg, k) for k in RESUME_OVERRIDABLE if changed(k)}
    ignored = [f.name for f in fields(cfg) if f.name not in RESUME_OVERRIDABLE and f.name != "resume" and changed(f.name)]
    if changes:
        log.info("resume: changing %s", ", ".join(f"{k}={v!r}" for k, v in changes.items()))
    if ignored:
        log.warning("resume: keeping the checkpoint's %s (a resumed run computes what the original would)", ", ".join(ignored))
    return dataclasses.replace(resumed, **changes, resume=cfg.resume)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a GPU that supports bf16, or a CPU
    with AVX512-BF16 or AMX (oneDNN's own test). Elsewhere bf16 is emulated and many times slower
    than fp32 (see :attr:`TrainConfig.amp`)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    mkldnn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if mkldnn is not None:
        return bool(mkldnn())
    cpu = torch.cpu
    return any(bool(getattr(cpu, name, lambda: False)()) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a :attr:`TrainConfig.amp` setting on ``device`` (``None``: fp32)."""
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp fp16 needs a CUDA GPU (its gradient scaler does not run on CPU); use bf16 or auto on CPU")
    if amp == "auto":
        if native_bf16(device):
            return torch.bfloat16
        return torch.float16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def _amp_reason(dtype: torch.dtype | None, device: torch.device) -> str:
    if dtype is torch.bfloat16:
        return f"bf16 autocast ({device.type} with native bf16)"
    if dtype is torch.float16:
        return "fp16 autocast with a gradient scaler (this GPU has no native bf16)"
    return "fp32 (this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs many times slower than fp32; --amp bf16 forces it)"


class _StopSignals:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps; a second signal interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s received: saving a checkpoint after this step (send it again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


def _find_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        path = Path(cfg.out) / "last.safetensors"
        if not path.is_file():
            log.info("resume auto: no %s, starting afresh", path)
            return None
        return path
    path = Path(cfg.resume)
    if path.is_dir():
        path = path / "last.safetensors"
    if not path.is_file():
        raise NotFound(f"{path}: no checkpoint to resume from")
    return path


# With a time limit, the optimizer steps that fit are estimated from this many steps' speed.
PROBE_STEPS = 10
# An epoch whose steps waited for batches longer than this share of their time logs a warning.
DATA_WAIT_WARN = 0.1


def _position(progress: dict, epochs: int) -> str:
    """Where a checkpoint's run stands, numbered as the progress bar and the epoch lines are (from 1)."""
    epoch, batch, step = progress["epoch"] + 1, progress["batch"], progress["step"]
    if batch:
        return f"epoch {epoch}/{epochs} after its batch {batch}, step {step}"
    return f"start of epoch {epoch}/{epochs}, step {step}" if epoch <= epochs else f"finished ({epochs} epochs), step {step}"


@dataclass
class Progress:
    """Where a run is: ``epoch`` (0-based, the one in progress or next), ``batch`` (batches of it
    already done), ``step`` (optimizer steps so far), ``best`` (the best epoch's record),
    ``bad_steps`` (non-finite steps in a row), ``schedule_steps`` (where the learning-rate schedule
    ends: the epochs' steps, or fewer to fit ``max_steps`` or ``time_limit``) and ``elapsed``
    (seconds of training before this process, so times add up across resumes). Saved in every
    checkpoint as a JSON dict."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: dict = field(default_factory=dict)
    bad_steps: int = 0
    schedule_steps: int = 0
    elapsed: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Progress:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def train(cfg: TrainConfig, on_epoch: Callable[[dict], None] | None = None, *, datasets: tuple | None = None) -> dict:
    """Train and evaluate; returns the best epoch's metrics. See :class:`TrainConfig`.

    ``datasets``: an optional ``(train, val)`` pair of :class:`~plaindet.data.DetectionDataset` to use
    instead of reading ``cfg.data`` (for datasets built in Python, e.g. a subset).

    Raises :class:`TrainingInterrupted` after saving on SIGINT/SIGTERM, and :class:`TrainingDiverged`
    when ``max_bad_steps`` non-finite steps come in a row.
    """
    from plaindet.engine import distributed as dist_utils

    world = dist_utils.setup(cfg.device or None)
    try:
        return _train(cfg, on_epoch, datasets, world)
    finally:
        dist_utils.cleanup(world)


def _train(cfg: TrainConfig, on_epoch, datasets, world) -> dict:
    run = _Run(cfg, datasets, world)
    with _StopSignals() as stop:
        for epoch in range(run.progress.epoch, run.cfg.epochs):
            if run.out_of_budget:
                break
            for i, batch in run.epoch_batches(epoch):
                run.forward_backward(batch, last_in_window=run.ends_window(i))
                if not run.ends_window(i):
                    continue
                run.optimizer_step(epoch, i)
                run.check_signals(stop)
                run.save_periodically(i)
                if run.check_budget():
                    break
            finished = run.end_epoch(epoch)
            if on_epoch is not None:
                on_epoch(run.record)
            if finished:
                break
    return run.finish()


class CompiledOrEager:
    """``module`` called through ``torch.compile``, or eagerly once compiling has failed.

    Compilation happens at the first call (and again for a new input shape); if it raises (no C++
    compiler, an operator the compiler lacks), a warning names the error and every later call runs
    ``module`` eagerly. The failed call is then repeated eagerly, so an error of the model itself
    still surfaces as the eager error. Parameters are shared: ``module``'s ``state_dict`` is unchanged.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self._call = torch.compile(module)
        self.failed: str = ""

    def __call__(self, *args, **kwargs):
        if not self.failed:
            try:
                return self._call(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager call below decides
                self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                log.warning("compile: torch.compile failed (%s); training continues eagerly", self.failed)
        return self.module(*args, **kwargs)


class _Run:
    """A training run's state and its phases, called in order by :func:`_train`."""

    def __init__(self, cfg: TrainConfig, datasets: tuple | None, world) -> None:
        from plaindet.engine.ema import ModelEMA
        from plaindet.engine.train_state import TrainState

        # Resume: the checkpoint's settings win (see resumed_config).
        resume_path = _find_resume(cfg)
        ckpt = TrainState(resume_path) if resume_path is not None else None
        if ckpt is not None:
            cfg = resumed_config(cfg, ckpt.train_config)
            log.info("resuming %s: %s", resume_path, _position(ckpt.progress, cfg.epochs))
        self.cfg, self.world, self.out = cfg, world, Path(cfg.out)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.device = world.device
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        if world.is_main and cfg.amp == "auto":
            log.info("amp auto: %s", _amp_reason(self.amp_dtype, self.device))

        # Data: every process builds the same datasets and loads its share of each global batch.
        self.train_set, self.val_set = datasets if datasets is not None else load_splits(cfg)
        if world.is_main:
            log.info("train: %s", self.train_set)
            log.info("val:   %s", self.val_set)

        # Model, loss, optimizer, schedule.
        self.model = self._build_model(ckpt.model_config if ckpt is not None else None)
        self.init_report = self._init_from(cfg.init, resuming=ckpt is not None) if cfg.init else None
        self.model.to(self.device)
        self.backbone, self._backbone_state = self._frozen_backbone()
        self.loader = self._train_loader()
        self.criterion = self.model.criterion()
        # The fused kernel updates every tensor in one pass: on CPU 5.7 ms a step for plaindet-t
        # against 32 ms for the per-tensor loop (same update, up to rounding).
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg), lr=cfg.lr, betas=(0.9, 0.999), fused=fused)
        steps_per_epoch = math.ceil(len(self.loader) / cfg.accumulate)
        # The schedule spans the epochs, or max_steps when that ends the run first; with a time limit
        # it is fitted to the limit once the first steps' speed is known (see _fit_schedule).
        self.planned_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps:
            self.planned_steps = min(self.planned_steps, cfg.max_steps)
        self.total_steps = self.planned_steps
        self.milestones = tuple(e * steps_per_epoch for e in cfg.step_epochs)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.progress = Progress()
        if ckpt is not None:
            ckpt.restore(self.model, self.ema, self.optimizer, self.scaler)  # RNG states last: nothing after this may draw
            self.progress = Progress.from_dict(ckpt.progress)
            if cfg.time_limit and self.progress.schedule_steps:  # the fitted schedule, until this process measures its own
                self.total_steps = min(self.planned_steps, max(self.progress.schedule_steps, self.progress.step))
        self.progress.schedule_steps = self.total_steps
        # DDP averages gradients over processes; the criterion's normalizer makes that equal the
        # one-process gradient of the whole global batch (see plaindet.ops.losses.loss_normalizer).
        self.net = (
            torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if world.distributed
            else self.model
        )
        self.final = self.ema.module if self.ema is not None else self.model  # the weights we evaluate and ship
        # The training forward only: evaluation and export always run the eager model.
        self.forward = CompiledOrEager(self.net) if cfg.compile else self.net
        if world.is_main:
            self._log_plan(steps_per_epoch)
        self.runlog = self._open_run_folder(resumed=ckpt is not None) if world.is_main else None
        self.record: dict = {}
        self.start, self._elapsed_before = time.time(), self.progress.elapsed
        self.out_of_budget = bool(cfg.max_steps and self.progress.step >= cfg.max_steps)
        self.stop_reason = f"max_steps {cfg.max_steps} reached" if self.out_of_budget else ""
        self._clock: tuple[float, int] | None = None  # (time, step) after this process's first step
        self._fitted = False
        self._window: list[dict[str, float]] = []  # the losses of the batches accumulated into this step
        self._window_bad = False
        self._bar = None
        # Since the last optimizer step: seconds spent waiting for batches, and when it ended (both
        # reset as each epoch starts, so evaluation and saving count as neither).
        self._data_wait, self._step_end = 0.0, 0.0

    def _train_loader(self):
        """The training split's loader: augmented, shuffled from the seed, this process's share."""
        from plaindet.data.collate import make_loader
        from plaindet.data.transforms import TransformedDataset, train_transform

        cfg, world = self.cfg, self.world
        return make_loader(
            TransformedDataset(self.train_set, train_transform(cfg.image_size, scales=cfg.scales or None, **cfg.augment), seed=cfg.seed),
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            num_workers=cfg.workers,
            drop_last=len(self.train_set) >= 2 * cfg.batch_size,
            size_divisor=self.model.size_divisor,
            rank=world.rank,
            world_size=world.world_size,
        )

    def _log_plan(self, steps_per_epoch: int) -> None:
        """Log the model's size and the steps planned; warn when max_steps ends the run inside warmup."""
        cfg = self.cfg
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        log.info(
            "%s: %.2fM parameters, %.2fM trainable; %d steps of %d images on %d process(es)",
            cfg.model, sum(p.numel() for p in self.model.parameters()) / 1e6, n_train / 1e6, self.total_steps,
            cfg.batch_size * cfg.accumulate, self.world.world_size,
        )  # fmt: skip
        backbone_mults = {g["lr_mult"] for g in self.optimizer.param_groups if g["name"].startswith("backbone")}
        if cfg.backbone_lr_mult is None and backbone_mults:  # a backbone that trains, at the rate chosen for it
            source = "trained" if starts_trained(cfg) else "random"
            log.info("backbone from %s weights: learning rate x%g (--backbone-lr-mult sets it)", source, *backbone_mults)
        if self.total_steps < cfg.epochs * steps_per_epoch:  # max_steps ends the run (and the schedule) early
            self._warn_if_within_warmup(self.total_steps)

    def _build_model(self, stored: dict | None):
        """The registered model with the run's overrides (image size, LoRA); resuming from a
        checkpoint whose model config is ``stored``, the fields added since it was written take the
        value they meant then, so a run begun before a field existed continues without it."""
        from plaindet.models.factory import create_model

        cfg = self.cfg
        overrides = dict(cfg.model_overrides)
        overrides.setdefault("image_size", cfg.image_size)
        if cfg.lora_rank:
            overrides["lora"] = {"rank": cfg.lora_rank, "targets": cfg.lora_targets}
        if stored is not None:
            overrides = {**added_fields_missing(cfg.model, stored), **overrides}
        return create_model(
            cfg.model, class_names=self.train_set.class_names, category_ids=self.train_set.category_ids, backbone_weights=cfg.backbone_weights, **overrides
        )
    def _init_from(self, path: str, resuming: bool):
        """``--init``: the source detector's matching weights (see :mod:`plaindet.engine.warm_start`). On
        resume this only rebuilds the model as the run began; the checkpoint then replaces its weights."""
        from plaindet.engine.warm_start import init_from_checkpoint

        report = init_from_checkpoint(self.model, path, keep_backbone=self.cfg.backbone_weights is not None)
        if self.world.is_main:
            log.info("%s%s", report.summary(), " (resuming: the checkpoint's weights replace these)" if resuming else "")
        return report

    def _frozen_backbone(self):
        """The frozen backbone's :class:`~plaindet.engine.backbone_store.BackboneRecord` and, when the run
        folder is to hold it, its tensors; ``(None, None)`` when the backbone trains."""
        from plaindet.engine.backbone_store import BACKBONE_FILE, BackboneRecord, frozen_backbone
        from plaindet.weights import state_digest

        state = frozen_backbone(self.model)
        if state is None:
            return None, None
        store, source = self.cfg.backbone_store, self.cfg.backbone_weights
        if source is not None and Path(source).exists():
            source = str(Path(source).resolve())  # a checkpoint is read from anywhere, later
        if store == "reference" and source is None:
            log.warning("backbone_store=reference needs backbone_weights to refer to; writing %s instead", BACKBONE_FILE)
            store = "once"
        record = BackboneRecord(sha256=state_digest(state), file=BACKBONE_FILE if store == "once" else None, source=source, inline=store == "every")
        return record, state if store == "once" else None

    def _open_run_folder(self, resumed: bool):
        """Create the run folder (only now: a run that fails on its inputs leaves none), drop writes cut
        short by a kill, write ``config.yaml`` and open the logs."""
        import yaml

        from plaindet.engine.logs import RunLog
        from plaindet.weights import atomic_write

        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        # Checkpoint writes cut short by a kill: ours (.NAME.*.tmp) and safetensors' own (.tmp*).
        for stale in [*out.glob(".*.safetensors.*.tmp"), *out.glob(".tmp*")]:
            if stale.is_file():
                stale.unlink(missing_ok=True)
        run_config = {"plaindet_version": __version__, "seed": self.cfg.seed, "train": self._saved_config(), "model": to_dict(self.model.config)}
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(yaml.safe_dump(run_config, sort_keys=False)))
        if self.init_report is not None:
            self.init_report.write(out / "init.json")
        if self._backbone_state is not None:
            self._write_backbone(out / self.backbone.file)
        p = self.progress
        return RunLog(out, resume_step=p.step if resumed else None, resume_epoch=p.epoch if resumed else None, tensorboard=self.cfg.tensorboard)

    def _write_backbone(self, path: Path) -> None:
        """Write the frozen backbone once (a resumed run finds it there, checked by its hash)."""
        from plaindet.engine.backbone_store import describe, save_backbone
        from plaindet.weights import read_metadata

        meta = read_metadata(path) if path.is_file() else None
        if meta is None or meta.get("sha256") != self.backbone.sha256:
            save_backbone(path, self._backbone_state, sha256=self.backbone.sha256, source=self.backbone.source, model_name=self.cfg.model)
            log.info("frozen backbone (%s) written once to %s; checkpoints hold only what trains", describe(self._backbone_state), path)
        self._backbone_state = None  # views of the model's weights: nothing to free, nothing more to write

    def _saved_config(self) -> dict:
        return {**to_dict(self.cfg), "resume": ""}

    # --- one epoch of steps ---

    def epoch_batches(self, epoch: int):
        """``(index, batch)`` of ``epoch``, from where a resumed run stopped; shows a progress bar on a
        terminal, plain lines now and then otherwise (a log file: see :class:`~plaindet.engine.logs.ProgressLines`)."""
        from tqdm.auto import tqdm

        from plaindet.engine.logs import ProgressLines

        first = self.progress.batch if epoch == self.progress.epoch else 0
        self.net.train()
        self.loader.set_epoch(epoch, start_batch=first)
        desc = f"epoch {epoch + 1}/{self.cfg.epochs}"
        if self.world.is_main and not sys.stderr.isatty():
            self._bar = ProgressLines(total=len(self.loader), initial=first, desc=desc, every=self.cfg.log_every)
        else:
            self._bar = tqdm(total=len(self.loader), initial=first, desc=desc, leave=False, dynamic_ncols=True, disable=not self.world.is_main)
        self._step_end, self._data_wait = time.time(), 0.0
        try:
            asked = time.time()
            for i, batch in enumerate(self.loader, start=first):
                self._data_wait += time.time() - asked  # the model idles while the loader works
                yield i, batch
                self._bar.update(1)
                asked = time.time()
        finally:
            self._bar.close()

    def ends_window(self, i: int) -> bool:
        """Whether batch ``i`` is the last of its window of ``accumulate`` batches (or of the epoch)."""
        return (i + 1) % self.cfg.accumulate == 0 or i + 1 == len(self.loader)

    def _lr_factor(self) -> float:
        c = self.cfg
        return lr_factor(self.progress.step, self.total_steps, c.warmup_steps, c.min_lr_ratio, c.schedule, self.milestones, c.step_gamma)

    def forward_backward(self, batch: dict, last_in_window: bool) -> None:
        """Forward and backward of one batch under autocast, gradients accumulated; a non-finite loss
        (on any process) marks the window bad, and its later batches are not back-propagated."""
        from plaindet.engine.distributed import any_true

        factor = self._lr_factor()
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.lr * g["lr_mult"] * factor
        images = batch["images"].to(self.device, non_blocking=True)
        targets = [{k: v.to(self.device) for k, v in t.items()} for t in batch["targets"]]
        # DDP synchronizes gradients on the window's last backward only.
        sync = last_in_window or not self.world.distributed
        with self.net.no_sync() if not sync else contextlib.nullcontext():
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                outputs = self.forward(images, targets)
            losses = self.criterion(outputs, targets)
            bad = any_true(not bool(torch.isfinite(losses["loss"])), self.world)  # ranks skip together
            if not bad and not self._window_bad:
                self.scaler.scale(losses["loss"] / self.cfg.accumulate).backward()
                self._window.append({k: float(v.detach()) for k, v in losses.items()})
            self._window_bad = self._window_bad or bad

    def optimizer_step(self, epoch: int, i: int) -> None:
        """Clip, step (or skip a non-finite window), update the EMA, advance and log the progress."""
        from plaindet.engine.distributed import mean_over_ranks

        cfg, p = self.cfg, self.progress
        factor = self._lr_factor()
        grad_norm = float("nan")
        bad = self._window_bad
        if not bad:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
            # With fp16 the scaler skips inf gradients itself (that is how it finds its scale).
            bad = not math.isfinite(grad_norm) and not self.scaler.is_enabled()
        if bad:
            p.bad_steps += 1
            log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", p.step + 1, p.bad_steps)
            self.optimizer.zero_grad(set_to_none=True)
            if p.bad_steps >= cfg.max_bad_steps:
                raise TrainingDiverged(
                    f"{p.bad_steps} non-finite steps in a row at step {p.step + 1}: training diverged; "
                    f"lower the learning rate or check the data. The last good checkpoint is {self.out / 'last.safetensors'}"
                )
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
            p.bad_steps = 0
        p.step, p.epoch, p.batch = p.step + 1, epoch, i + 1
        window = self._window
        row = mean_over_ranks({k: sum(w[k] for w in window) / len(window) for k in window[0]}, self.world) if window else {}
        now = time.time()
        timing = {"step_s": now - self._step_end, "data_s": self._data_wait}  # wall time of the step, and its wait for data
        self._step_end, self._data_wait = now, 0.0
        if self.runlog is not None:
            self.runlog.step({"step": p.step, "epoch": epoch + 1, **row, "lr": cfg.lr * factor, "grad_norm": grad_norm, "skipped": bad, **timing})
            self._bar.set_postfix(loss=f"{row.get('loss', float('nan')):.3f}", lr=f"{cfg.lr * factor:.2e}")
        self._window, self._window_bad = [], False

    def check_signals(self, stop: _StopSignals) -> None:
        """After SIGINT/SIGTERM (on any process): save ``last`` and stop with :class:`TrainingInterrupted`."""
        from plaindet.engine.distributed import any_true

        if any_true(stop.signum is not None, self.world):
            saved = self.save(self.out / "last.safetensors")
            where = f"saved {self.out / 'last.safetensors'}" if saved else "could NOT save a checkpoint"
            signum = stop.signum or signal.SIGTERM
            raise TrainingInterrupted(f"{signal.Signals(signum).name} at step {self.progress.step}: {where}; continue with --resume auto", signum)

    def save_periodically(self, i: int) -> None:
        if self.cfg.save_every_steps and self.progress.step % self.cfg.save_every_steps == 0 and i + 1 < len(self.loader):
            self.save(self.out / "last.safetensors")

    def check_budget(self) -> bool:
        """Whether ``max_steps`` or ``time_limit`` (on any process) ends training now; says which in
        ``stop_reason``. With a time limit, fits the schedule once :data:`PROBE_STEPS` steps are timed."""
        from plaindet.engine.distributed import any_true

        cfg, p = self.cfg, self.progress
        over_time = any_true(bool(cfg.time_limit) and time.time() - self.start > 60 * cfg.time_limit, self.world)
        if cfg.max_steps and p.step >= cfg.max_steps:
            self.stop_reason = f"max_steps {cfg.max_steps} reached"
        elif over_time:
            self.stop_reason = f"time limit of {cfg.time_limit:g} min reached"
        self.out_of_budget = bool(self.stop_reason)
        if cfg.time_limit and not self.out_of_budget:
            self._fit_schedule()
        return self.out_of_budget

    def _fit_schedule(self, epoch_end: bool = False) -> None:
        """With a time limit: end the schedule at the step the limit will stop the run at, estimated
        from this process's speed since its first step (which holds start-up costs, so it is not
        timed); first after :data:`PROBE_STEPS` steps, then every :data:`PROBE_STEPS` steps and at
        every epoch's end (``epoch_end``), so it follows the speed, evaluations included. Rank 0's
        estimate is every rank's."""
        from plaindet.engine.distributed import broadcast

        cfg, p, now = self.cfg, self.progress, time.time()
        if self._clock is None:
            self._clock = (now, p.step)
            return
        t0, s0 = self._clock
        timed = p.step - s0
        if timed < PROBE_STEPS or (self._fitted and not epoch_end and timed % PROBE_STEPS):
            return
        seconds_per_step = (now - t0) / timed
        fit = p.step + int(max(0.0, 60 * cfg.time_limit - (now - self.start)) / seconds_per_step)
        total = broadcast(max(p.step + 1, min(self.planned_steps, fit)), self.world)
        if self.world.is_main and (not self._fitted or abs(total - self.total_steps) > 0.1 * self.total_steps):
            log.info(
                "time limit %g min: about %d steps fit at %.2f s/step (measured over steps %d-%d); the learning-rate schedule ends at step %d%s",
                cfg.time_limit, fit, seconds_per_step, s0 + 1, p.step, total, "" if total < self.planned_steps else f" ({cfg.epochs} epochs fit)",
            )  # fmt: skip
            self._warn_if_within_warmup(total)
        self._fitted = True
        self.total_steps = p.schedule_steps = total

    def _warn_if_within_warmup(self, total: int) -> None:
        if total <= self.cfg.warmup_steps:
            log.warning(
                "the schedule ends at step %d, within the %d warmup steps: the learning rate never reaches its peak nor decays; "
                "lower --warmup-steps for a run this short", total, self.cfg.warmup_steps,
            )  # fmt: skip

    # --- the end of an epoch ---

    def end_epoch(self, epoch: int) -> bool:
        """Evaluate (every process predicts its share of the validation set), log, save ``best``,
        ``last`` and ``epoch_N``; print the epoch's line. Returns whether training is finished."""
        cfg, p = self.cfg, self.progress
        if not self.out_of_budget or p.batch == len(self.loader):  # the epoch is complete
            p.epoch, p.batch = epoch + 1, 0
        rows = [r for r in (self.runlog.steps.rows if self.runlog else []) if r.get("epoch") == epoch + 1]
        losses = [r["loss"] for r in rows if "loss" in r]
        record = {"epoch": epoch + 1, "step": p.step, "loss": float(np.mean(losses)) if losses else float("nan")}
        record.update(self._data_wait_share(rows))
        finished = epoch + 1 == cfg.epochs or self.out_of_budget
        if cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or finished):
            metrics = self._evaluate()
            if metrics is not None:
                record.update({k: v for k, v in metrics.stats.items() if k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")})
        record["time"] = round(self.elapsed(), 1)  # since the run began, resumes included
        if cfg.time_limit and not finished:
            # A limit the evaluation went past ends the run now: the weights just evaluated are the last.
            finished = self.check_budget()
            if not finished and self._fitted:
                self._fit_schedule(epoch_end=True)  # the speed now includes an evaluation
        self.record = record
        if self.world.is_main:
            if record.get("AP") is not None and record["AP"] >= p.best.get("AP", -1.0):
                p.best = dict(record)
                self.save_best()  # before last: a kill in between re-runs this epoch
            self.runlog.epoch(record)
            if not self.save(self.out / "last.safetensors") and finished:
                raise OSError(f"training finished but {self.out / 'last.safetensors'} could not be written; see the error above")
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                self.save(self.out / f"epoch_{epoch + 1:04d}.safetensors")
            stopped = ""
            if self.out_of_budget and not (epoch + 1 == cfg.epochs and p.batch == 0):  # not when the limit fell on the last step
                cut = f" after batch {p.batch} of {len(self.loader)}" if p.batch else ""
                stopped = f"  stopped: {self.stop_reason} at step {p.step}{cut}"
            scores = [f"{k} {record[k]:.3f}" for k in ("AP", "AP50", "AP75") if record.get(k) is not None]
            print("  ".join([f"epoch {epoch + 1}/{cfg.epochs}", f"loss {record['loss']:.4f}", *scores, f"({record['time']:.0f}s)"]) + stopped, flush=True)
        return finished

    def _data_wait_share(self, rows: list[dict]) -> dict:
        """``{"data_wait": share}``: the share of this epoch's step time the model spent waiting for
        batches (empty without timed steps); a warning names ``workers`` when it is over a tenth."""
        from plaindet.engine.logs import data_wait_share

        share = data_wait_share(rows)
        if share is None:
            return {}
        if share > DATA_WAIT_WARN and self.world.is_main:
            log.warning(
                "the model waited for data %.0f%% of this epoch's step time (workers=%d): more workers (--workers) "
                "or lighter augmentation would give those seconds to training", 100 * share, self.cfg.workers,
            )  # fmt: skip
        return {"data_wait": round(share, 4)}

    def elapsed(self) -> float:
        """Seconds of training so far, the time before a resume included."""
        return self._elapsed_before + time.time() - self.start

    def _evaluate(self):
        """COCO metrics on the main process; each process predicts every ``world_size``-th image, in
        fp32 through ``predict``, exactly as ``plaindet eval`` does."""
        from plaindet.detections import predict_dataset
        from plaindet.engine.distributed import gather_lists
        from plaindet.engine.evaluate import evaluate_coco

        world, shard = self.world, self.val_set
        if world.distributed:
            shard = copy.copy(self.val_set)
            shard.samples = self.val_set.samples[world.rank :: world.world_size]
        results = gather_lists(predict_dataset(self.final, shard, image_size=self.cfg.image_size, batch_size=self.cfg.batch_size), world)
        return evaluate_coco(self.val_set, results) if world.is_main else None

    def save(self, path: Path) -> bool:
        """Write a checkpoint of the current state (main process only); a failed write keeps the old file."""
        from plaindet.engine.train_state import save_train_state

        if not self.world.is_main:
            return True
        self._check_backbone_frozen()
        try:
            self.progress.elapsed = round(self.elapsed(), 3)
            save_train_state(
                path, model=self.model, ema=self.ema, optimizer=self.optimizer, scaler=self.scaler, train_config=self._saved_config(),
                progress=self.progress.to_dict(), backbone=self.backbone,
            )  # fmt: skip
            return True
        except OSError as e:
            log.error("could not write %s (%s); the previous %s is intact", path, e.strerror or e, path.name)
            return False

    def save_best(self) -> bool:
        """Write ``best.safetensors``: the evaluated weights (EMA) and config, nothing to resume with
        (main process only); a failed write keeps the old file."""
        from plaindet.engine.train_state import save_deployable

        path = self.out / "best.safetensors"
        self._check_backbone_frozen()
        try:
            save_deployable(path, self.final, backbone=self.backbone, record=self.progress.best)
            return True
        except OSError as e:
            log.error("could not write %s (%s); the previous %s is intact", path, e.strerror or e, path.name)
            return False

    def _check_backbone_frozen(self) -> None:
        """A checkpoint that leaves the backbone out is only right if the backbone is still the one
        recorded; hashing it costs about what writing it would (a second for a ViT-B), once per save."""
        from plaindet.engine.backbone_store import frozen_backbone
        from plaindet.weights import state_digest

        if self.backbone is not None and not self.backbone.inline:
            state = frozen_backbone(self.model)
            if state is None or state_digest(state) != self.backbone.sha256:
                raise RuntimeError("the frozen backbone changed during training; its checkpoints would not rebuild the model")

    def finish(self) -> dict:
        """Close the logs and plot; with no evaluated epoch, the last weights are the best. Returns the
        best epoch's record (on every process)."""
        from plaindet.engine.distributed import broadcast

        p = self.progress
        if self.runlog is not None:
            if not p.best:
                p.best = dict(self.record)
                self.save_best()
            self.runlog.plot()
            self.runlog.close()
        return broadcast(p.best or self.record, self.world)
